#!/bin/bash
# gpu_check.py on a lent GPU machine, in one call. That machine gets the working tree only
# (not ../shared, not the venv), so this runs with its own python3 (which holds CUDA PyTorch),
# the repo on PYTHONPATH and the two datasets carried in .gpu-data/ (made here by
# `benchmarks/gpu_check.sh --prepare`), with the wheels of what the library needs and that machine's
# image lacks (duckdb, at constraints.txt's version) in .gpu-data/wheels. The JSON goes to $OUT when set (the device tool
# brings that folder back), else to benchmarks/results/. Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
    shared=${DIFFUREC_SHARED_DATA:-../shared/data}
    for file in amazon-beauty/Beauty.txt amazon-toys/Toys_and_Games.txt; do
        mkdir -p ".gpu-data/$(dirname "$file")"
        cp "$shared/$file" ".gpu-data/$file"
    done
    # That machine cannot reach a package registry, so its missing packages travel as wheels.
    rm -rf .gpu-data/wheels
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-data/wheels \
        "$(grep -i '^duckdb==' constraints.txt)"
    echo "copied the Beauty and Toys files into .gpu-data/ (git-ignored); carry it: [\".gpu-data\"]"
    exit 0
fi
site=/tmp/gpu-check-site
if compgen -G ".gpu-data/wheels/*.whl" >/dev/null; then
    "${PYTHON:-python3}" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" .gpu-data/wheels/*.whl
fi
export PYTHONPATH=$PWD:$site PYTHONUNBUFFERED=1
export DIFFUREC_SHARED_DATA=${DIFFUREC_SHARED_DATA:-$PWD/.gpu-data}
export DIFFUREC_BENCH_CACHE=${DIFFUREC_BENCH_CACHE:-/tmp/diffurec-bench}
"${PYTHON:-python3}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"${PYTHON:-python3}" benchmarks/gpu_check.py --out "${OUT:-benchmarks/results}/gpu_check.json" "$@"
