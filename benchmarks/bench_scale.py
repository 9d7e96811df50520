"""How far one node goes: validate and preprocess synthetic logs of 1 M, 10 M and 100 M interactions.

Each log is a CSV (user_id,item_id,timestamp) like issue 16's: users with geometric lengths of
mean 20 (at least 3), Zipf item popularity (exponent 1, one item per 41 interactions), timestamps
increasing per user with ties, rows in time order within blocks of 1 M users. It is generated
under --work (default /tmp/diffurec-scale, never in the repository) and reused when present.

For each size, three commands run one after another, each in a fresh process whose peak RSS is
its own (getrusage of a launcher's only child): a plain read-and-sort of the same file (pyarrow
CSV read, stable sort by user, timestamp, row: the least work preprocessing must do), then
`diffurec validate` and `diffurec preprocess`. Recorded: wall seconds, peak RSS, output bytes
(the splits folder against the sequences it stores). Results merge into
benchmarks/results/scale.json (a run of one size keeps the others) and benchmarks/results/scale.png.

    nice -n 10 .venv/bin/python benchmarks/bench_scale.py --sizes 1M 10M
    nice -n 10 .venv/bin/python benchmarks/bench_scale.py --sizes 100M
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SIZES = {"1M": 1_000_000, "10M": 10_000_000, "100M": 100_000_000}
MEAN_LENGTH = 20
INTERACTIONS_PER_ITEM = 41  # issue 16's log: 20.1 M interactions, 488 k items
USERS_PER_BLOCK = 1_000_000
SEED = 16

READ_AND_SORT = r"""
import sys
import numpy as np, pyarrow as pa, pyarrow.compute as pc, pyarrow.csv as csv
table = csv.read_csv(sys.argv[1])
table = table.append_column("row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
order = pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending"),
                                          ("row", "ascending")])
print(table.take(order).num_rows)
"""


def generate(path: Path, interactions: int) -> dict:
    """Write the synthetic log in blocks of users (bounded memory); returns its facts."""
    import pyarrow as pa
    import pyarrow.csv as csv

    rng = np.random.default_rng(SEED)
    items = max(1000, interactions // INTERACTIONS_PER_ITEM)
    popularity = 1.0 / np.arange(1, items + 1)
    cumulative = np.cumsum(popularity / popularity.sum())
    item_ids = rng.permutation(items) + 1  # the most popular item is not id 1
    tmp = path.with_suffix(".tmp")
    written, users = 0, 0
    options = csv.WriteOptions(include_header=True, quoting_style="none")
    with csv.CSVWriter(
        str(tmp),
        pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())]),
        write_options=options,
    ) as writer:
        while written < interactions:
            lengths = 2 + rng.geometric(1.0 / (MEAN_LENGTH - 2), size=USERS_PER_BLOCK)
            total = np.cumsum(lengths)
            keep = int(np.searchsorted(total, interactions - written)) + 1
            lengths = lengths[:keep]
            lengths[-1] -= max(int(lengths.sum()) - (interactions - written), 0)
            lengths = lengths[lengths > 0]
            count = int(lengths.sum())
            user = np.repeat(np.arange(users, users + len(lengths), dtype=np.int64), lengths)
            item = item_ids[np.minimum(np.searchsorted(cumulative, rng.random(count)), items - 1)]
            # Per-user clocks: a start, then steps of 0 (ties) to 2 days.
            steps = rng.integers(0, 2 * 86_400, size=count) * (rng.random(count) > 0.05)
            starts = np.repeat(rng.integers(1_300_000_000, 1_600_000_000, size=len(lengths)), lengths)
            clock = np.cumsum(steps)
            stamp = starts + clock - np.repeat(clock[np.cumsum(lengths) - lengths], lengths)
            order = np.argsort(stamp, kind="stable")  # the block in time order, users interleaved
            writer.write_table(
                pa.table({"user_id": user[order], "item_id": item[order], "timestamp": stamp[order]})
            )
            written += count
            users += len(lengths)
    tmp.rename(path)
    return {"interactions": written, "users": users, "items": items, "bytes": path.stat().st_size}


def measure(command: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak RSS of one command, run under a fresh launcher whose only child
    it is (RUSAGE_CHILDREN's maximum is then that command's own)."""
    launcher = (
        "import json, resource, subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'wall_s': round(time.perf_counter() - started, 2), 'peak_rss_bytes': peak,"
        " 'returncode': done.returncode, 'stderr_tail': done.stderr[-600:]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", launcher, *command],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "GX_ANALYTICS_ENABLED": "false"},
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["returncode"] != 0:
        print(result["stderr_tail"], file=sys.stderr)
    else:
        del result["stderr_tail"]
    result["peak_rss_gb"] = round(result["peak_rss_bytes"] / 1e9, 3)
    return result


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


STEPS = ("read_and_sort", "validate", "preprocess")


def run_size(name: str, work: Path, steps: tuple[str, ...] = STEPS) -> dict:
    log_path = work / f"log-{name}.csv"
    facts_path = work / f"log-{name}.json"
    if not (log_path.is_file() and facts_path.is_file()):
        started = time.perf_counter()
        facts = generate(log_path, SIZES[name])
        facts["generate_s"] = round(time.perf_counter() - started, 1)
        facts_path.write_text(json.dumps(facts))
    facts = json.loads(facts_path.read_text())
    print(f"{name}: {facts}", flush=True)
    diffurec = [sys.executable, "-m", "diffurec", "-q"]
    splits, report = work / f"splits-{name}", work / f"validation-{name}"
    for folder in (splits, report):
        shutil.rmtree(folder, ignore_errors=True)
    result: dict = {"log": facts}
    commands = {
        "read_and_sort": [sys.executable, "-c", READ_AND_SORT, str(log_path)],
        "validate": [*diffurec, "validate", "--input", str(log_path), "--out", str(report)],
        "preprocess": [*diffurec, "preprocess", "--input", str(log_path), "--out", str(splits)],
    }
    for step in steps:
        result[step] = measure(commands[step])
        print(f"  {step}: {result[step]}", flush=True)
    if "validate" in result and result["validate"]["returncode"] == 0:
        validation = json.loads((report / "report.json").read_text())
        result["validate"]["success"] = validation["success"]
        result["validate"]["checked_on"] = validation.get("checked_on")
    if "preprocess" in result and result["preprocess"]["returncode"] == 0:
        sequences = sum((splits / f"{n}.npy").stat().st_size for n in ("seq_items", "seq_offsets"))
        stats = json.loads((splits / "stats.json").read_text())
        result["preprocess"].update(
            splits_bytes=folder_bytes(splits),
            sequences_bytes=sequences,
            splits_over_sequences=round(folder_bytes(splits) / sequences, 3),
            users=stats["users"],
            items=stats["items"],
            train_samples=stats["train_samples"],
        )
    if "preprocess" in result and "read_and_sort" in result:
        result["preprocess_over_read_and_sort"] = round(
            result["preprocess"]["wall_s"] / result["read_and_sort"]["wall_s"], 2
        )
    shutil.rmtree(splits, ignore_errors=True)
    shutil.rmtree(report, ignore_errors=True)
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(results, key=lambda n: results[n]["log"]["interactions"])
    sizes = [results[n]["log"]["interactions"] for n in names]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for step, style in (("read_and_sort", "k--o"), ("validate", "b-s"), ("preprocess", "r-^")):
        measured = [n for n in names if step in results[n]]
        x = [results[n]["log"]["interactions"] for n in measured]
        label = step.replace("_", " ")
        left.plot(x, [results[n][step]["wall_s"] for n in measured], style, label=label)
        right.plot(x, [results[n][step]["peak_rss_gb"] for n in measured], style, label=label)
    right.axhline(6, color="gray", linewidth=1)
    right.text(sizes[0], 6.1, "6 GB target", color="gray")
    for axis, label in ((left, "wall time (s)"), (right, "peak RSS (GB)")):
        axis.set_xscale("log")
        axis.set_yscale("log" if axis is left else "linear")
        axis.set_xlabel("interactions")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle("Synthetic logs (Zipf items, geometric lengths, mean 20) on one node")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["1M", "10M"])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/diffurec-scale"))
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    document = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "scale", "sizes": {}}
    for name in args.sizes:
        document["sizes"][name] = {**document["sizes"].get(name, {}), **run_size(name, args.work, args.steps)}
        document["sizes"][name]["run"] = {
            "command": " ".join(["python", *sys.argv]),
            "seed": SEED,
            "generator": {"mean_length": MEAN_LENGTH, "interactions_per_item": INTERACTIONS_PER_ITEM},
            "duckdb": {
                key: os.environ.get(key, "default")
                for key in ("DIFFUREC_DUCKDB_MEMORY", "DIFFUREC_DUCKDB_THREADS")
            },
            "git_commit": subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
        }
        document["sizes"][name]["machine"] = {
            "cpu_count": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "nice": os.nice(0),
            "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
        plot(document["sizes"], args.out.with_suffix(".png"))
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
