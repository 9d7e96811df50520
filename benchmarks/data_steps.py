"""Wall time of `diffurec validate` and `diffurec preprocess` on every dataset in ../shared/data.

Each step runs as the real command in a fresh process (import time included, as a pipeline
step pays it), then the splits are validated too. Writes one JSON with per-dataset stats and
seconds. Usage:

    nice -n 10 .venv/bin/python benchmarks/data_steps.py --out benchmarks/results/data_steps.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIFFUREC_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {
    "ml-100k": "ml-100k/ml-100k.inter",
    "ml-1m": "ml-1m/ml-1m.inter",
    "ml-1m-paper-order": "ml-1m/ml-1m_diffurec_sequences.txt",
    "beauty": "amazon-beauty/Beauty.txt",
    "beauty-csv": "amazon-beauty/interactions.csv",
    "toys": "amazon-toys/Toys_and_Games.txt",
}


def timed(args: list[str]) -> tuple[dict, int]:
    """Wall and CPU seconds of one command. CPU time (user + system of the child) is the
    steadier number on a shared machine; wall time is what a pipeline step waits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "diffurec", "-q", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "GX_ANALYTICS_ENABLED": "false"},
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_steps.json"))
    parser.add_argument("--only", nargs="*", choices=list(DATASETS), help="a subset of datasets")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.only or DATASETS:
            source = SHARED / DATASETS[name]
            splits = Path(work) / name / "splits"
            validate_s, validate_rc = timed(
                ["validate", "--input", str(source), "--out", str(Path(work) / name / "raw_report")]
            )
            preprocess_s, preprocess_rc = timed(["preprocess", "--input", str(source), "--out", str(splits)])
            splits_s, splits_rc = timed(
                ["validate", "--splits", str(splits), "--out", str(Path(work) / name / "splits_report")]
            )
            stats = json.loads((splits / "stats.json").read_text()) if preprocess_rc == 0 else {}
            results[name] = {
                "file": DATASETS[name],
                **{
                    k: stats.get(k)
                    for k in ("users", "items", "interactions", "train_samples", "rows_dropped")
                },
                "validate_raw": validate_s,
                "validate_raw_exit": validate_rc,
                "preprocess": preprocess_s,
                "preprocess_exit": preprocess_rc,
                "validate_splits": splits_s,
                "validate_splits_exit": splits_rc,
            }
            print(name, json.dumps(results[name]), flush=True)
    report = {
        "benchmark": "data_steps",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "datasets": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
