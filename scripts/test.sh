#!/usr/bin/env bash
# The test command: offline checks of the deployment files, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" GX_ANALYTICS_ENABLED=false MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1 PYTHONHASHSEED=0
bash scripts/lint.sh
exec .venv/bin/python -m pytest -q "$@"
