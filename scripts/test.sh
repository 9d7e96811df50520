#!/usr/bin/env bash
# The test command: offline checks of the deployment files, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" GX_ANALYTICS_ENABLED=false MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1 PYTHONHASHSEED=0
bash scripts/lint.sh
# One worker per core (CI has 2), each test file on one worker: the end-to-end tests spend
# much of their time waiting on subprocesses and servers, so two workers halve the wall time.
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
