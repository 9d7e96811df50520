"""Time to quality (issue 18): validation NDCG@10 against training seconds under one wall budget,
this project's models side by side with RecBole 1.2.1's SASRec.

    nice -n 10 .venv/bin/python benchmarks/bench_time_to_quality.py --dataset ml-100k --minutes 8 \
        --seeds 1997,1998,1999

Every run trains with one thread, seed-major and alternating between the models (seed 1: A, B, C,
D; seed 2: A, B, C, D; ...), so a slow spell of the shared machine hits every model alike;
`--jobs N` runs N of them at a time in that order (one per core; the JSON records N).

Models are `model:preset` for `diffurec train` (`--eval-every 1 --max-minutes M --patience 1000
--threads 1`, batch 512, lr 1e-3), with optional hyperparameters after a second colon joined by
`+` (`sasrec:pre-ln:norm=post+embedding_norm=true`, passed as `--set`; models are separated by
commas; `popularity:default` is fitted and drawn as a level line), and `recbole:sasrec`
(benchmarks/recbole_sasrec.py in benchmarks/.recbole-venv, made by benchmarks/recbole_env.sh when
missing). Both tools read the same atomic file, ../shared/data/<dataset>/<dataset>.inter.

A run's curve is [(seconds, validation NDCG@10)] with `seconds` = training passes since the start
of training, validations and data loading excluded (curve.json's per-epoch `seconds` summed;
RecBole's the same), one point per validation (after every epoch, and after the epoch the budget
cut short). A model's curve over seeds is the best validation so far (what early stopping keeps)
of each seed, held between validations: the mean over seeds, and min..max as the band, from the
time every seed has validated once. `time_to_recbole_best`: the first time a model's mean curve
reaches RecBole's (the mean over seeds of each seed's best validation NDCG@10 in the budget).

Writes <results-dir>/time_to_quality_<dataset>.json (common.write_result: command, seeds, git
commit, machine, per run its curve, best validation and test metrics) and
time_to_quality_<dataset>.png; --results-dir sets DIFFUREC_BENCH_RESULTS (smoke runs go to /tmp).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DEFAULT_MODELS = "sasrec:recbole,sasrec:pre-ln,diffurec:fast-lite,recbole:sasrec,popularity:default"
RECBOLE_MODEL = "recbole:sasrec"
MAX_LEN = {"ml-100k": 20, "ml-1m": 50}  # the windows
Curve = list[tuple[float, float]]


# Pure functions (tests/test_bench_time_to_quality.py checks them against hand-made curves).


def diffurec_curve(curve: dict[str, Any]) -> Curve:
    """[(training seconds when validated, validation NDCG@10)] from a model folder's curve.json:
    the validation after epoch e is at the sum of the training seconds of epochs 1..e."""
    elapsed, at_epoch = 0.0, {}
    for row in sorted(curve["train"], key=lambda row: row["epoch"]):
        elapsed += row["seconds"]
        at_epoch[row["epoch"]] = elapsed
    return [(at_epoch[row["epoch"]], row["NDCG@10"]) for row in curve["valid"] if row["epoch"] in at_epoch]


def recbole_curve(lines: list[dict[str, Any]]) -> Curve:
    """The same from benchmarks/recbole_sasrec.py's JSON lines."""
    return [(line["seconds"], line["NDCG@10"]) for line in lines if line["event"] == "epoch"]


def best_so_far(curve: Curve, at: float) -> float:
    """The best validation value at time `at` (NaN before the first validation)."""
    values = [value for seconds, value in curve if seconds <= at]
    return max(values) if values else math.nan


def aggregate(curves: list[Curve]) -> dict[str, list[float]]:
    """Mean, min and max over runs of the best-so-far value at every time any run validated,
    from the time every run has validated once (keys `seconds`, `mean`, `low`, `high`)."""
    start = max(curve[0][0] for curve in curves)
    times = sorted({seconds for curve in curves for seconds, _ in curve if seconds >= start})
    out: dict[str, list[float]] = {"seconds": times, "mean": [], "low": [], "high": []}
    for at in times:
        values = [best_so_far(curve, at) for curve in curves]
        out["mean"].append(sum(values) / len(values))
        out["low"].append(min(values))
        out["high"].append(max(values))
    return out


def time_to_reach(seconds: list[float], values: list[float], target: float) -> float | None:
    """The first time a curve's value is >= target, or None when it never is."""
    return next((at for at, value in zip(seconds, values, strict=True) if value >= target), None)


def parse_model(spec: str) -> tuple[str, str, dict[str, Any]]:
    """'model:preset[:key=value+key=value...]' -> (model, preset, hyperparameters); values as
    JSON when they parse (numbers, true/false), else strings."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ValueError(f"--models: {spec!r} is not model:preset[:key=value+...]")
    hyper: dict[str, Any] = {}
    for pair in parts[2].split("+") if len(parts) == 3 else []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--models: {pair!r} in {spec!r} is not key=value")
        try:
            hyper[key] = json.loads(value)
        except json.JSONDecodeError:
            hyper[key] = value
    return parts[0], parts[1], hyper


# The training settings for every model; a spec may change them (`diffurec:fast-lite:lr=0.002`).
TRAIN_SETTINGS = {"batch_size": 512, "lr": 0.001, "warmup_steps": 0}


def train_arguments(hyper: dict[str, Any]) -> list[str]:
    """`diffurec train` flags for a spec's key=value pairs: training settings (TrainSettings'
    fields, e.g. lr_step) as their flags after TRAIN_SETTINGS', model hyperparameters as --set."""
    from diffurec.train_settings import TrainSettings

    flags = {field.name for field in dataclasses.fields(TrainSettings)} - {"model", "preset", "hyper"}
    settings = dict(TRAIN_SETTINGS, **{k: v for k, v in hyper.items() if k in flags})
    argv = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
    return argv + [f"--set={key}={json.dumps(value)}" for key, value in hyper.items() if key not in settings]


# Specs of result files written before a preset changed, by file name: the spec that trains the
# same today. (SASRec+ `recbole` took RecBole's FFN, without dropout inside, after these files.)
SPECS_AS_TRAINED = {
    name: {"sasrec:recbole": "sasrec:recbole:ffn_dropout=true"}
    for name in (
        "time_to_quality_ml-100k.json",
        "time_to_quality_ml-1m.json",
        "time_to_quality_ml-100k_screen.json",
    )
}


def canonical(spec: str) -> str:
    """model:preset[:hyper] with a preset renamed since a file was written by today's name."""
    from diffurec.models import RENAMED_PRESETS

    model, preset, *hyper = spec.split(":")
    return ":".join([model, RENAMED_PRESETS.get((model, preset), preset), *hyper])


def as_trained(result: dict[str, Any], name: str) -> dict[str, Any]:
    """A result file's contents with every spec as today's spec of what it trained (canonical,
    SPECS_AS_TRAINED); `name`: the file's name."""
    meant = SPECS_AS_TRAINED.get(name, {})

    def today(spec: str) -> str:
        return canonical(meant.get(spec, spec))

    runs = [dict(run, model=today(run["model"])) for run in result["runs"]]
    renamed = dict(result, models=[today(m) for m in result["models"]], runs=runs)
    if "summary" in result:
        models = {today(m): v for m, v in result["summary"]["models"].items()}
        renamed["summary"] = dict(result["summary"], models=models)
    return renamed


# Running the models.


def prepare_splits(dataset: str, max_len: int, cache: Path, inter: Path) -> Path:
    """The project's splits of `inter` with window `max_len`, preprocessed once into the cache."""
    folder = cache / f"time_to_quality-{dataset}-len{max_len}"
    if not (folder / "format.json").is_file():
        argv = [str(Path(sys.executable).parent / "diffurec"), "preprocess", "--input", str(inter)]
        subprocess.run([*argv, "--out", str(folder), "--max-len", str(max_len)], check=True)
    return folder


def one_thread_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_diffurec(spec: str, seed: int, args: argparse.Namespace, splits: Path, work: Path) -> dict[str, Any]:
    """Train (and test) one model:preset with the budget through the CLI; its curve and metrics."""
    model, preset, hyper = parse_model(spec)
    folder = work / f"{spec.replace(':', '_').replace('+', '_')}-seed{seed}"
    cli = str(Path(sys.executable).parent / "diffurec")
    train = [cli, "train", "--splits", str(splits), "--out", str(folder), "--force", "--model", model]
    train += ["--preset", preset, "--seed", str(seed), "--epochs", "100000", "--eval-every", "1"]
    train += ["--max-minutes", str(args.minutes), "--patience", "1000", "--threads", "1", "--no-progress"]
    train += train_arguments(hyper)
    metrics_path = work / f"{folder.name}.test.json"
    evaluate = [cli, "evaluate", "--model", str(folder), "--splits", str(splits), "--out", str(metrics_path)]
    evaluate += ["--threads", "1", "--force"]
    with (work / f"{folder.name}.log").open("w") as log:
        for argv in (train, evaluate):
            subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT, env=one_thread_env())
    summary = json.loads((folder / "train_summary.json").read_text())
    test = json.loads(metrics_path.read_text())["metrics"]
    return {
        "curve": diffurec_curve(json.loads((folder / "curve.json").read_text())),
        "best_valid": {k: summary["best_valid"][k] for k in ("NDCG@10", "HR@10")},
        "test": {k: test[k] for k in ("NDCG@10", "HR@10")},
        "epochs": summary.get("epochs_run"),
        "samples_per_second": summary.get("samples_per_second"),
        "argv": [train, evaluate],
    }


def run_recbole(seed: int, args: argparse.Namespace, inter: Path, work: Path) -> dict[str, Any]:
    """RecBole's SASRec in its own venv with the same budget; its curve and metrics."""
    from common import REPO

    python = REPO / "benchmarks" / ".recbole-venv" / "bin" / "python"
    if not python.is_file():
        subprocess.run(["bash", str(REPO / "benchmarks" / "recbole_env.sh")], check=True)
    lines_path = work / f"recbole_sasrec-seed{seed}.jsonl"
    argv = [str(python), str(REPO / "benchmarks" / "recbole_sasrec.py"), "--inter", str(inter)]
    argv += ["--max-len", str(args.max_len), "--seconds", str(args.minutes * 60), "--seed", str(seed)]
    argv += ["--out", str(lines_path)]
    with (work / f"recbole_sasrec-seed{seed}.log").open("w") as log:
        subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT, env=one_thread_env())
    lines = [json.loads(line) for line in lines_path.read_text().splitlines()]
    final = next(line for line in lines if line["event"] == "final")
    return {
        "curve": recbole_curve(lines),
        "best_valid": final["best_valid"],
        "test": final["test"],
        "epochs": final["epochs"],
        "samples_per_second": final["samples_per_second"],
        "argv": [argv],
    }


def summarise(runs: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Per model: the aggregated curve, its final mean, and when it reaches RecBole's best."""
    summary: dict[str, Any] = {}
    for model in models:
        curves = [run["curve"] for run in runs if run["model"] == model and run["curve"]]
        fitted = [run["best_valid"]["NDCG@10"] for run in runs if run["model"] == model and not run["curve"]]
        if curves:
            summary[model] = {"seeds": len(curves), **aggregate(curves)}
        elif fitted:  # fitted without epochs (popularity): one value, a level line in the plot
            summary[model] = {"seeds": len(fitted), "level": sum(fitted) / len(fitted)}
    target = None
    if RECBOLE_MODEL in summary:
        recbole_bests = [run["best_valid"]["NDCG@10"] for run in runs if run["model"] == RECBOLE_MODEL]
        target = sum(recbole_bests) / len(recbole_bests)
    for entry in summary.values():
        if "level" in entry:
            entry["final_mean"] = entry["level"]
            entry["time_to_recbole_best"] = None if target is None or entry["level"] < target else 0.0
            continue
        entry["final_mean"] = entry["mean"][-1]
        entry["time_to_recbole_best"] = (
            None if target is None else time_to_reach(entry["seconds"], entry["mean"], target)
        )
    return {"recbole_best_mean": target, "models": summary}


def plot(summary: dict[str, Any], dataset: str, minutes: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for model, entry in summary["models"].items():
        if "level" in entry:
            ax.axhline(entry["level"], color="black", linestyle="--", linewidth=1, label=model)
            continue
        (line,) = ax.step(
            entry["seconds"],
            entry["mean"],
            where="post",
            marker="o",  # one dot per validation time (a single validation is a dot, not a line)
            markersize=3,
            label=f"{model} ({entry['seeds']} seeds)",
        )
        ax.fill_between(
            entry["seconds"], entry["low"], entry["high"], step="post", alpha=0.2, color=line.get_color()
        )
    if summary["recbole_best_mean"] is not None:
        ax.axhline(
            summary["recbole_best_mean"], color="grey", linestyle=":", label="RecBole SASRec best (mean)"
        )
    ax.set_xlim(left=0)  # where the budget started, also when every run validated only once
    ax.set_xlabel("training seconds (one thread; validations excluded)")
    ax.set_ylabel("validation NDCG@10 (%), best so far")
    ax.set_title(f"Time to quality, {dataset}, {minutes:g} min budget: mean over seeds, band min..max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=tuple(MAX_LEN), default="ml-100k")
    parser.add_argument("--max-len", type=int, default=None, help="window (default: 20 ml-100k, 50 ml-1m)")
    parser.add_argument("--seeds", default="1997,1998,1999", help="comma-separated training seeds")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall budget per run (default 8)")
    parser.add_argument("--tag", default="", help="result name suffix (an ablation beside the main run)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time, one thread each (default 1: one after another)"
    )
    parser.add_argument(
        "--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=None, help="JSON and PNG (default benchmarks/results)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="model folders and logs (default: the cache)"
    )
    parser.add_argument(
        "--replot",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="only redraw the first result file's plot, with the models of later files (same settings) added",
    )
    args = parser.parse_args()
    if args.replot is not None:
        first, *later = (as_trained(json.loads(path.read_text()), path.name) for path in args.replot)
        summary = dict(first["summary"], models=dict(first["summary"]["models"]))
        for result in later:
            summary["models"].update(result["summary"]["models"])
        plot(summary, first["dataset"], first["minutes"], args.replot[0].with_suffix(".png"))
        return
    if args.results_dir is not None:  # common.RESULTS reads it (smoke runs stay out of git)
        os.environ["DIFFUREC_BENCH_RESULTS"] = str(args.results_dir.resolve())
    import common
    from common import CACHE, RESULTS, SHARED_DATA, machine, write_result

    from diffurec.lineage import git_commit

    args.results_dir = RESULTS
    args.max_len = args.max_len or MAX_LEN[args.dataset]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    models = args.models.split(",")
    for spec in models:  # a malformed spec is refused (one line, exit 2) before anything runs
        try:
            parse_model(spec)
        except ValueError as error:
            parser.error(str(error))
    inter = SHARED_DATA / args.dataset / f"{args.dataset}.inter"
    splits = prepare_splits(args.dataset, args.max_len, CACHE, inter)
    work = (args.work_dir or CACHE / "time_to_quality") / (
        f"{args.dataset}_{args.tag}" if args.tag else args.dataset
    )
    work.mkdir(parents=True, exist_ok=True)
    commit, dirty = git_commit(common.REPO)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")

    def one_run(seed: int, spec: str) -> dict[str, Any]:
        started = time.perf_counter()
        if spec == RECBOLE_MODEL:
            result = run_recbole(seed, args, inter, work)
        else:
            result = run_diffurec(spec, seed, args, splits, work)
        best, epochs = result["best_valid"]["NDCG@10"], result["epochs"]
        print(f"{spec} seed {seed}: best valid NDCG@10 {best:.2f} after {epochs} epochs", flush=True)
        wall = round(time.perf_counter() - started, 1)
        return {"model": spec, "seed": seed, "wall_seconds": wall, **result}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # seed-major, alternating between models
        futures = [pool.submit(one_run, seed, spec) for seed in seeds for spec in models]
        runs = [future.result() for future in futures]
    summary = summarise(runs, models)
    name = f"time_to_quality_{args.dataset}" + (f"_{args.tag}" if args.tag else "")
    result = {
        "dataset": args.dataset,
        "input": str(inter),
        "max_len": args.max_len,
        "minutes": args.minutes,
        "seeds": seeds,
        "models": models,
        "jobs": args.jobs,
        "git_commit": commit,
        "git_dirty": dirty,
        "machine": machine(),
        "curve_seconds": "training passes since training start; validations and data loading excluded",
        "summary": summary,
        "runs": runs,
    }
    write_result(name, result, echo=False)
    plot(summary, args.dataset, args.minutes, args.results_dir / f"{name}.png")
    for model, entry in summary["models"].items():
        reach = entry["time_to_recbole_best"]
        reached = "never" if reach is None else f"{reach:.0f} s"
        print(
            f"{model}: mean best valid NDCG@10 {entry['final_mean']:.2f}; RecBole's best reached: {reached}"
        )


if __name__ == "__main__":
    main()
