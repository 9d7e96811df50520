#!/usr/bin/env bash
# Creates benchmarks/.recbole-venv: RecBole 1.2.1 in its own venv (its pins clash with the
# project's), for benchmarks/recbole_sasrec.py and bench_time_to_quality.py (issue 18).
# torch comes from the same place as in scripts/setup.sh: pip's configured wheel location
# (the CPU wheel on this machine's disk). Safe to run again: skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="benchmarks/.recbole-venv"
pins=(recbole==1.2.1 numpy==1.26.4 pandas==2.2.3 scipy==1.13.1 "setuptools<81" torch==2.13.0)
stamp="$venv/.pins-$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "recbole_env: creating $venv (a few minutes the first time)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
  # The check that the pins resolve to a RecBole that imports (it imports lazily otherwise).
  "$venv/bin/python" -c 'import recbole, torch; print("recbole", recbole.__version__, "torch", torch.__version__)'
  rm -f "$venv"/.pins-*
  touch "$stamp"
fi
echo "recbole_env: ready ($venv/bin/python)"
