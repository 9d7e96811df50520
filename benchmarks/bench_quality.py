"""Quality results a reviewer can re-run: every number is `diffurec evaluate`'s JSON, verbatim.

`run` preprocesses a dataset once (reused when present), then for every seed and model:preset
runs `diffurec train` and `diffurec evaluate` as subprocesses (the argv recorded is what ran),
and writes benchmarks/results/quality_NAME.json after every run: the bench's argv, the git
commit, the machine, the budget, the preprocess argv and splits md5, and per run the train and
evaluate argv, the model folder and its manifest sha256 (checked against what evaluate
recorded), the training summary and the metrics JSON (settings block included), then per
model:preset the mean over seeds with its standard error (sample std / sqrt(seeds)) and the
mean standard error over users. Model folders go to benchmarks/models/NAME/ (out of git);
`commands` prints the one command that rebuilds each of them. Run from the repository root.

    # ML-100K, 3 seeds, equal epochs; then an equal wall-clock budget per run
    nice -n 10 .venv/bin/python benchmarks/bench_quality.py run --dataset ml-100k --max-len 20 \\
        --seeds 1997,1998,1999 --epochs 2 --batch-size 256 --lr 0.002 --jobs 2 \\
        --name ml100k_equal_epochs
    nice -n 10 .venv/bin/python benchmarks/bench_quality.py run --dataset ml-100k --max-len 20 \\
        --epochs 100 --minutes 4 --batch-size 256 --lr 0.002 --jobs 2 --name ml100k_equal_time
    # the commands that rebuild the model folders behind a result file
    .venv/bin/python benchmarks/bench_quality.py commands quality_ml100k_equal_epochs.json
    # the per model:preset summary recomputed from a result file's runs
    .venv/bin/python benchmarks/bench_quality.py summary quality_ml100k_equal_epochs.json

Folders: --data-dir (splits, default benchmarks/data), --models-dir (default benchmarks/models),
$DIFFUREC_BENCH_RESULTS (result files, default benchmarks/results).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import DATASETS, REPO, RESULTS, SHARED_DATA, machine, write_result

from diffurec.errors import DiffuRecError
from diffurec.models import RENAMED_PRESETS

DIFFUREC = Path(sys.executable).parent / "diffurec"  # the CLI of this interpreter's environment
DEFAULT_MODELS = "diffurec:paper,diffurec:fast,diffurec:fast-init,sasrec:recbole,popularity:default"
# What of train_summary.json a result keeps (samples_trained only where the trainer writes it).
TRAIN_KEYS = (
    "epochs_run",
    "best_epoch",
    "stop_reason",
    "train_seconds",
    "samples_per_second",
    "samples_trained",
    "best_valid",
)


def shown(path: Path) -> str:
    """`path` as the recorded argv names it: relative to the repository root when inside it."""
    path = Path(path).absolute()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Run:
    """One (model, preset, seed): where its outputs go and the two commands that make them."""

    model: str
    preset: str
    seed: int
    folder: Path
    metrics: Path
    log: Path
    train_argv: list[str]
    evaluate_argv: list[str]

    @property
    def label(self) -> str:
        return f"{self.model}:{self.preset}"


def parse_models(text: str) -> list[tuple[str, str]]:
    """`model:preset,...` checked against the model registry."""
    from diffurec.models import MODEL_NAMES, presets

    pairs = []
    for entry in text.split(","):
        model, _, preset = entry.strip().partition(":")
        if model not in MODEL_NAMES:
            raise DiffuRecError(f"--models: unknown model {model!r} in {entry!r}; choose from {MODEL_NAMES}")
        if preset not in presets(model):
            raise DiffuRecError(f"--models: {entry!r} needs a preset of {model}: {', '.join(presets(model))}")
        pairs.append((model, preset))
    if len(set(pairs)) != len(pairs):
        raise DiffuRecError(f"--models: {text!r} names a model:preset twice")
    return pairs


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        raise DiffuRecError(f"--seeds: {text!r} is not a comma-separated list of integers") from None
    if len(set(seeds)) != len(seeds):
        raise DiffuRecError(f"--seeds: {text!r} names a seed twice")
    return seeds


def prepare_splits(args: argparse.Namespace) -> dict[str, Any]:
    """The splits folder of the dataset (preprocessed once, reused when it is the same input and
    window): {folder, argv, reused, splits_md5}."""
    from diffurec.lineage import data_md5, file_md5

    if args.input:
        source, fmt = Path(args.input), None
        name = f"{source.name.split('.')[0]}-len{args.max_len}"
    else:
        relative, fmt = DATASETS[args.dataset]
        source, name = SHARED_DATA / relative, f"{args.dataset}-len{args.max_len}"
    if not source.is_file():
        raise DiffuRecError(f"{'--input' if args.input else '--dataset'}: {source} is not a file")
    folder = Path(args.data_dir) / name
    argv = [shown(DIFFUREC), "preprocess", "--input", shown(source)]
    argv += ["--format", fmt] if fmt else []
    argv += ["--out", shown(folder), "--max-len", str(args.max_len)]
    reused = (folder / "format.json").is_file()
    if reused:
        stored = json.loads((folder / "format.json").read_text())
        if (stored["source"].get("md5"), stored["preprocessing"]["max_len"]) != (
            file_md5(source),
            args.max_len,
        ):
            raise DiffuRecError(
                f"{folder}: splits of another input or window (not {source}, max_len {args.max_len});"
                " remove the folder or pass another --data-dir"
            )
    else:
        print(f"preprocess: {shlex.join(argv)}", file=sys.stderr, flush=True)
        completed = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if completed.returncode != 0:
            raise DiffuRecError(
                f"preprocess failed (exit {completed.returncode}): {last_line(completed.stderr)}"
            )
    return {"folder": shown(folder), "argv": argv, "reused": reused, "splits_md5": data_md5(folder)}


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def plan(args: argparse.Namespace, splits: str) -> list[Run]:
    """Every run, seed-major (one seed's models side by side under --jobs)."""
    models_dir = Path(args.models_dir) / args.name
    budget = ["--epochs", str(args.epochs)]
    budget += ["--max-minutes", str(args.minutes)] if args.minutes is not None else []
    budget += [
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--eval-every",
        str(args.eval_every),
    ]
    budget += ["--patience", str(args.patience if args.patience is not None else args.epochs)]
    force = ["--force"] if args.force else []
    runs = []
    for seed in parse_seeds(args.seeds):
        for model, preset in parse_models(args.models):
            stem = f"{model}-{preset}-seed{seed}"
            folder, metrics = models_dir / stem, models_dir / f"{stem}.test.json"
            train_argv = [shown(DIFFUREC), "train", "--splits", splits, "--out", shown(folder)]
            train_argv += ["--model", model, "--preset", preset, "--seed", str(seed), *budget]
            train_argv += ["--threads", str(args.threads), "--no-progress", *force]
            evaluate_argv = [shown(DIFFUREC), "evaluate", "--model", shown(folder), "--splits", splits]
            evaluate_argv += ["--out", shown(metrics), "--threads", str(args.threads), *force]
            runs.append(
                Run(
                    model,
                    preset,
                    seed,
                    folder,
                    metrics,
                    models_dir / f"{stem}.log",
                    train_argv,
                    evaluate_argv,
                )
            )
    return runs


def refuse_earlier(args: argparse.Namespace, runs: list[Run]) -> None:
    """Without --force, nothing of an earlier run is replaced: one line, nothing started."""
    if args.force:
        return
    for path in [RESULTS / f"quality_{args.name}.json"] + [
        p for run in runs for p in (run.folder, run.metrics)
    ]:
        if path.exists():
            raise DiffuRecError(
                f"{path} exists from an earlier run; pass --force to replace it, or another --name"
            )


def execute(run: Run) -> dict[str, Any]:
    """Train and evaluate one run (subprocesses; their output goes to run.log) and read back what
    they wrote."""
    run.log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with run.log.open("w") as log:
        for argv in (run.train_argv, run.evaluate_argv):
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            code = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
            if code != 0:
                raise DiffuRecError(
                    f"{argv[1]} of {run.label} seed {run.seed} failed (exit {code}); see {run.log}"
                )
    summary = json.loads((run.folder / "train_summary.json").read_text())
    metrics = json.loads(run.metrics.read_text())
    manifest_sha256 = sha256_file(run.folder / "manifest.json")
    if metrics["model"].get("manifest_sha256") != manifest_sha256:
        raise DiffuRecError(
            f"{run.metrics}: evaluated manifest {metrics['model'].get('manifest_sha256')} is not "
            f"{run.folder}/manifest.json's {manifest_sha256}"
        )
    return {
        "model": run.model,
        "preset": run.preset,
        "seed": run.seed,
        "train_argv": run.train_argv,
        "evaluate_argv": run.evaluate_argv,
        "model_folder": shown(run.folder),
        "metrics_file": shown(run.metrics),
        "manifest_sha256": manifest_sha256,
        "splits_md5": metrics.get("splits_md5"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "train": {key: summary[key] for key in TRAIN_KEYS if key in summary},
        "evaluate": metrics,
    }


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def standard_error(values: list[float]) -> float | None:
    """Sample standard deviation (ddof 1) over sqrt(n); None for one value."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per "model:preset" (first-seen order): seeds, the mean test metric over seeds and its
    standard error, the mean of evaluate's standard error over users (null where a run lacks
    it), mean train seconds and epochs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(f"{run['model']}:{run['preset']}", []).append(run)
    summary = {}
    for label, group in groups.items():
        names = list(group[0]["evaluate"]["metrics"])
        over_users = [run["evaluate"].get("standard_error") for run in group]
        summary[label] = {
            "seeds": [run["seed"] for run in group],
            "n": len(group),
            "mean": {k: mean([run["evaluate"]["metrics"][k] for run in group]) for k in names},
            "standard_error_over_seeds": {
                k: standard_error([run["evaluate"]["metrics"][k] for run in group]) for k in names
            },
            "mean_standard_error_over_users": (
                {k: mean([se[k] for se in over_users]) for k in names} if all(over_users) else None
            ),
            "train_seconds": mean([run["train"]["train_seconds"] for run in group]),
            "epochs_run": mean([run["train"]["epochs_run"] for run in group]),
        }
    return summary


def run_bench(args: argparse.Namespace) -> None:
    from diffurec.lineage import git_commit

    for flag in ("epochs", "max_len", "eval_every", "patience", "threads", "jobs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise DiffuRecError(f"--{flag.replace('_', '-')} must be >= 1, not {getattr(args, flag)}")
    splits_plan = plan(args, "")  # checks --models and --seeds before anything is written
    refuse_earlier(args, splits_plan)
    preprocess = prepare_splits(args)
    runs = plan(args, preprocess["folder"])
    commit, dirty = git_commit(REPO)
    head = {
        "argv": [shown(Path(sys.executable)), *sys.argv],
        "git_commit": commit,
        "git_dirty": dirty,
        "machine": machine(),
        "dataset": Path(args.input).name.split(".")[0] if args.input else args.dataset,
        "max_len": args.max_len,
        "budget": {
            "epochs": args.epochs,
            "max_minutes": args.minutes,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "eval_every": args.eval_every,
            "patience": args.patience if args.patience is not None else args.epochs,
            "threads": args.threads,
            "jobs": args.jobs,
        },
        "preprocess": preprocess,
    }
    done: dict[int, dict[str, Any]] = {}

    def write() -> Path:
        ordered = [done[i] for i in sorted(done)]
        return write_result(
            f"quality_{args.name}", {**head, "runs": ordered, "summary": summarize(ordered)}, echo=False
        )

    failure = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(execute, run): i for i, run in enumerate(runs)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            if future.cancelled():  # after a failure
                continue
            try:
                done[i] = future.result()
            except DiffuRecError as error:
                failure = failure or error
                for other in futures:
                    other.cancel()
                continue
            if done[i]["splits_md5"] != preprocess["splits_md5"]:
                failure = failure or DiffuRecError(
                    f"{runs[i].metrics}: splits_md5 is not the preprocessed splits'"
                )
                for other in futures:
                    other.cancel()
            write()
            test = done[i]["evaluate"]["metrics"]
            train = done[i]["train"]
            print(
                f"[{len(done)}/{len(runs)}] {runs[i].label} seed {runs[i].seed}: "
                f"test HR@10 {test['HR@10']:.2f} NDCG@10 {test['NDCG@10']:.2f}, "
                f"{train['epochs_run']} epochs ({train['stop_reason']}), "
                f"train {train['train_seconds']:.0f} s, wall {done[i]['wall_seconds']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    path = write()
    if failure:
        raise failure
    print(path)


def result_path(name: str) -> Path:
    """A result file given as a path or as a name in the results folder."""
    path = Path(name)
    if not path.is_file() and (RESULTS / name).is_file():
        path = RESULTS / name
    if not path.is_file():
        raise DiffuRecError(f"{name}: no such result file (here or in {RESULTS})")
    return path


def read_runs(name: str) -> tuple[Path, dict[str, Any]]:
    path = result_path(name)
    try:
        result = json.loads(path.read_text())
        result["runs"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DiffuRecError(f"{path}: not a result file of 'bench_quality.py run' (no runs)") from None
    return path, result


def current_names(argv: list[str]) -> list[str]:
    """A recorded train argv with a preset renamed since (RENAMED_PRESETS) by today's name."""
    out = list(argv)
    if "--model" in out and "--preset" in out:
        model, at = out[out.index("--model") + 1], out.index("--preset") + 1
        out[at] = RENAMED_PRESETS.get((model, out[at]), out[at])
    return out


def print_commands(args: argparse.Namespace) -> None:
    path, result = read_runs(args.result)
    preprocess = result["preprocess"]
    print(f"# {shown(path)}: run from the repository root ({REPO})")
    print(f"# the splits every run trained on (splits_md5 {preprocess['splits_md5']}):")
    print(shlex.join(preprocess["argv"]))
    for run in result["runs"]:
        print(
            f"# {run['model']}:{run['preset']} seed {run['seed']}: {run['model_folder']} "
            f"(manifest_sha256 {run['manifest_sha256']} of that training)"
        )
        print(shlex.join(current_names(run["train_argv"])))


def print_summary(args: argparse.Namespace) -> None:
    print(json.dumps(summarize(read_runs(args.result)[1]["runs"]), indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run", help="train and evaluate every model:preset and seed; write the result file")
    r.add_argument(
        "--dataset", default="ml-100k", choices=tuple(DATASETS), help="dataset under ../shared/data"
    )
    r.add_argument("--input", default=None, help="interaction file instead of --dataset's (tests, slices)")
    r.add_argument("--max-len", type=int, default=50, help="history window of the splits (default 50)")
    r.add_argument("--models", default=DEFAULT_MODELS, help=f"model:preset list (default {DEFAULT_MODELS})")
    r.add_argument("--seeds", default="1997,1998,1999", help="training seeds (default 1997,1998,1999)")
    r.add_argument("--epochs", type=int, required=True, help="epochs per run")
    r.add_argument("--minutes", type=float, default=None, help="wall budget per run (train --max-minutes)")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--lr", type=float, default=0.002)
    r.add_argument("--eval-every", type=int, default=1)
    r.add_argument("--patience", type=int, default=None, help="default: --epochs (no early stopping)")
    r.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    r.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    r.add_argument("--name", required=True, help="writes quality_NAME.json")
    r.add_argument("--force", action="store_true", help="replace an earlier run's result, folders and files")
    r.add_argument("--data-dir", default=str(REPO / "benchmarks" / "data"))
    r.add_argument("--models-dir", default=str(REPO / "benchmarks" / "models"))
    r.set_defaults(func=run_bench)
    c = sub.add_parser("commands", help="the command that rebuilds each run's model folder")
    c.add_argument("result", help="quality_NAME.json (a path, or a name in the results folder)")
    c.set_defaults(func=print_commands)
    s = sub.add_parser("summary", help="the per model:preset summary recomputed from a result's runs")
    s.add_argument("result", help="quality_NAME.json (a path, or a name in the results folder)")
    s.set_defaults(func=print_summary)
    args = parser.parse_args()
    try:
        args.func(args)
    except DiffuRecError as error:
        print(f"bench_quality: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
