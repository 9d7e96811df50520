"""README's quality tables, rendered from result JSONs in benchmarks/results/ only.

- ML-100K: per model:preset, test HR@10 and NDCG@10 as mean ± standard error over seeds, at
  equal epochs (quality_ml100k_equal_epochs.json) and at an equal wall-clock budget
  (quality_ml100k_equal_time.json), with mean epochs and train seconds.
- ML-1M (quality_ml1m_8min.json): each model:preset beside popularity (ratio of NDCG@10).
- Time to quality (bench_time_to_quality.py's files): per model the best validation NDCG@10 so far
  at half and at the whole budget (training seconds), when the mean curve reaches RecBole's best,
  training samples/s and test NDCG@10; and the ablation of SASRec+'s five RecBole choices, each
  variant's best validation NDCG@10 at one common training time.
- Beauty and Toys: the older one-seed files (quality_beauty_*.json, quality_toys_*.json), with
  the binomial standard error over test users of HR@10 and the paper's numbers in their own
  column.
The means are recomputed from each run's evaluate JSON (bench_quality.summarize); a file not
there yet gives a "(not run)" row.

    .venv/bin/python benchmarks/quality_table.py                    # print the block
    .venv/bin/python benchmarks/quality_table.py --write README.md  # replace README's block
    .venv/bin/python benchmarks/quality_table.py --check README.md  # exit 1 and a diff if stale
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from bench_quality import summarize
from bench_time_to_quality import (
    RECBOLE_MODEL,
    aggregate,
    as_trained,
    best_so_far,
    canonical,
    time_to_reach,
)
from common import PAPER_TEST, RESULTS

START = "<!-- quality-tables:start -->"
END = "<!-- quality-tables:end -->"
ML100K_FILES = (
    ("equal epochs", "quality_ml100k_equal_epochs.json"),
    ("equal wall budget", "quality_ml100k_equal_time.json"),
)
ML1M_FILE = "quality_ml1m_8min.json"
# main file -> later files of more models under the same settings, shown in its table
TIME_TO_QUALITY_FILES = {
    "time_to_quality_ml-100k_tuned.json": (),
    "time_to_quality_ml-100k_decay.json": ("time_to_quality_ml-100k_positions.json",),
    "time_to_quality_ml-100k.json": ("time_to_quality_ml-100k_init.json",),
    "time_to_quality_ml-1m_positions.json": (),
    "time_to_quality_ml-1m_tuned.json": (),
    "time_to_quality_ml-1m.json": (),
}
ML100K_TIME_FILE = "time_to_quality_ml-100k.json"
ABLATION_FILE = "time_to_quality_ml-100k_ablation.json"
ABLATION_BASE = "sasrec:pre-ln"  # the ablation changes one of its hyperparameters at a time
# DiffuRec's tuning (issue 18): variants of training settings, against `fast-lite` as it was
SCREEN_FILES = (
    "time_to_quality_ml-100k_screen.json",
    "time_to_quality_ml-100k_screen2.json",
    "time_to_quality_ml-100k_screen3.json",
)
SCREEN_BASE = "diffurec:fast-lite"
# Test users of the one-seed datasets (one per line of the paper's sequence files, each with >= 3
# items); checked against every HR@K of every file: HR@K x users / 100 must be a whole number.
TEST_USERS = {"beauty": 22363, "toys": 19412}
ONE_SEED_DATASETS = {"beauty": "Amazon Beauty", "toys": "Amazon Toys"}
ONE_SEED_FILES = (
    ("fast_init", "DiffuRec `fast-init`"),
    ("sasrec_default", "SASRec+ `pre-ln`"),
    ("popularity_default", "popularity"),
)
FAST_INIT = (
    "`fast-init`: key masking, 1 reverse step, N(0,1/d) init, bucketed batches, NDCG@10 early"
    " stopping — not the paper's model"
)
MODEL_LABELS = {"diffurec": "DiffuRec", "sasrec": "SASRec+", "popularity": "popularity", "recbole": "RecBole"}


def label(model_preset: str) -> str:
    """Markdown for a model spec: SASRec+ `pre-ln` `norm=post`."""
    model, preset, *hyper = canonical(model_preset).split(":")
    return f"{MODEL_LABELS.get(model, model)} `{preset}`" + "".join(f" `{h}`" for h in hyper)


def mean_se(values: list[float]) -> str:
    """ "mean ± standard error over seeds" (sample standard deviation / sqrt(n))."""
    n = len(values)
    if any(math.isnan(v) for v in values):
        return "– (not validated yet)"
    mean = sum(values) / n
    if n == 1:
        return f"{mean:.2f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return f"{mean:.2f} ± {sd / math.sqrt(n):.2f}"


def best_at(run: dict[str, Any], seconds: float) -> float:
    """A run's best validation NDCG@10 after `seconds` of training (a fitted model's at any time)."""
    return best_so_far(run["curve"], seconds) if run["curve"] else run["best_valid"]["NDCG@10"]


def epochs(mean_epochs: float) -> str:
    """Mean epochs over seeds: whole numbers as they are, others to one decimal."""
    return f"{mean_epochs:g}" if mean_epochs == int(mean_epochs) else f"{mean_epochs:.1f}"


def mean_cell(entry: dict[str, Any], metric: str) -> str:
    """ "mean ± SE (n seeds)"; one seed has no standard error over seeds."""
    m, se, n = entry["mean"][metric], entry["standard_error_over_seeds"][metric], entry["n"]
    if se is None:
        return f"{m:.2f} (1 seed)"
    return f"{m:.2f} ± {se:.2f} ({n} seeds)"


def load(name: str, results: Path) -> dict[str, Any] | None:
    """A result file; a time-to-quality file's specs as today's (bench_time_to_quality.as_trained)."""
    path = results / name
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return as_trained(result, name) if name.startswith("time_to_quality_") else result


def machine_and_commit(result: dict[str, Any]) -> str:
    commit = (result.get("git_commit") or "unknown")[:10] + (" (dirty)" if result.get("git_dirty") else "")
    machine = result["machine"]
    return f"{machine.get('cpu_model', '?')} ({machine['cpu_count']} cores), commit {commit}"


def budget_note(name: str, result: dict[str, Any]) -> str:
    """How a result file was made: data, budget, parallelism, machine, commit."""
    b = result["budget"]
    users = {run["evaluate"]["users"] for run in result["runs"]}
    minutes = f", at most {b['max_minutes']:g} min" if b["max_minutes"] is not None else ""
    return (
        f"`{name}`: {'/'.join(map(str, sorted(users)))} test users, window {result['max_len']}, "
        f"at most {b['epochs']} epochs{minutes}, batch {b['batch_size']}, lr {b['lr']:g}, "
        f"{b['threads']} thread(s) per run, {b['jobs']} run(s) at once on {machine_and_commit(result)}"
    )


def ml100k(results: Path) -> list[str]:
    loaded = [(title, name, load(name, results)) for title, name in ML100K_FILES]
    summaries = {name: summarize(r["runs"]) for _, name, r in loaded if r}
    header = "| model |"
    rule = "| --- |"
    for title, _, _ in loaded:
        header += f" {title}: test HR@10 | {title}: test NDCG@10 | epochs, train s |"
        rule += " --- | --- | --- |"
    lines = ["**ML-100K**, test HR@10 / NDCG@10 (%), mean ± standard error over seeds:", ""]
    lines += [header, rule]
    models = list(dict.fromkeys(key for s in summaries.values() for key in s))
    for key in models or ["(not run)"]:
        row = f"| {label(key) if models else key} |"
        for _, name, _ in loaded:
            entry = summaries.get(name, {}).get(key)
            if entry is None:
                row += " (not run) | (not run) | |"
            else:
                row += (
                    f" {mean_cell(entry, 'HR@10')} | {mean_cell(entry, 'NDCG@10')} |"
                    f" {epochs(entry['epochs_run'])}, {entry['train_seconds']:.0f} s |"
                )
        lines.append(row)
    lines.append("")
    for _, name, result in loaded:
        if result is None:
            lines.append(f"- `{name}`: (not run)")
            continue
        users = [
            e["mean_standard_error_over_users"]["HR@10"]
            for e in summaries[name].values()
            if e["mean_standard_error_over_users"]
        ]
        spread = (
            f"; standard error over users of one model's HR@10: {min(users):.2f}-{max(users):.2f}"
            if users
            else ""
        )
        lines.append(f"- {budget_note(name, result)}{spread}")
    return lines


def ml1m(results: Path) -> list[str]:
    result = load(ML1M_FILE, results)
    lines = ["**ML-1M**, long histories, test metrics (%), mean ± standard error over seeds:", ""]
    lines += ["| model | test HR@10 | test NDCG@10 | NDCG@10 / popularity's | epochs, train s |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    if result is None:
        return lines + ["| (not run) | | | | |", "", f"- `{ML1M_FILE}`: (not run)"]
    summary = summarize(result["runs"])
    floor = next((e["mean"]["NDCG@10"] for k, e in summary.items() if k.startswith("popularity:")), None)
    for key, entry in summary.items():
        ratio = f"{entry['mean']['NDCG@10'] / floor:.2f}x" if floor else "(no popularity run)"
        lines.append(
            f"| {label(key)} | {mean_cell(entry, 'HR@10')} | {mean_cell(entry, 'NDCG@10')} | {ratio} |"
            f" {epochs(entry['epochs_run'])}, {entry['train_seconds']:.0f} s |"
        )
    return lines + ["", f"- {budget_note(ML1M_FILE, result)}"]


def time_note(name: str, result: dict[str, Any]) -> str:
    seeds = ",".join(map(str, result["seeds"]))
    return (
        f"`{name}`: window {result['max_len']}, {result['minutes']:g} min per run (wall, validations"
        f" included), seeds {seeds}, batch 512 and lr 0.001 where a model does not set them, one thread"
        f" per run, {result.get('jobs', 1)} run(s)"
        f" at once on {machine_and_commit(result)}"
    )


def time_row(
    model: str, runs: list[dict[str, Any]], half: float, target: float | None, mark: str = ""
) -> str:
    """One model's row: best validation so far at half and at the end, when its mean curve
    reaches `target`, epochs, training samples/s and test NDCG@10."""
    curves = [run["curve"] for run in runs if run["curve"]]
    if target is None:
        reach = "(no RecBole run)"
    elif curves:
        mean = aggregate(curves)
        at = time_to_reach(mean["seconds"], mean["mean"], target)
        reach = "never" if at is None else f"{at:.0f} s"
    else:
        reach = "at once" if runs[0]["best_valid"]["NDCG@10"] >= target else "never"
    speed = [run["samples_per_second"] or 0 for run in runs]
    return (
        f"| {label(model)}{mark} | {mean_se([best_at(r, half) for r in runs])} |"
        f" {mean_se([best_at(r, math.inf) for r in runs])} | {reach} |"
        f" {mean_se([float(r['epochs'] or 0) for r in runs])} |"
        f" {sum(speed) / len(speed):,.0f} | {mean_se([r['test']['NDCG@10'] for r in runs])} |"
    )


def diffurec_against_sasrec(result: dict[str, Any], later: Sequence[dict[str, Any]] = ()) -> list[str]:
    """When each DiffuRec model's mean curve (of the run, then of `later` runs, marked †)
    reaches each SASRec+ model's mean best of the run."""
    targets = {
        sasrec: fmean(run["best_valid"]["NDCG@10"] for run in result["runs"] if run["model"] == sasrec)
        for sasrec in result["models"]
        if sasrec.startswith("sasrec:")
    }
    if not targets:  # a run without SASRec+ has nothing to say here
        return []
    lines = []
    for table, mark in [(result, "")] + [(r, " †") for r in later]:
        for diffurec in (m for m in table["models"] if m.startswith("diffurec:")):
            curves = [run["curve"] for run in table["runs"] if run["model"] == diffurec and run["curve"]]
            curve = aggregate(curves)
            reached = []
            for sasrec, target in targets.items():
                at = time_to_reach(curve["seconds"], curve["mean"], target)
                reached.append(
                    f"{label(sasrec)}'s ({target:.2f}) {'never' if at is None else f'at {at:.0f} s'}"
                )
            lines.append(f"- {label(diffurec)}{mark}'s mean curve reaches the best of " + ", ".join(reached))
    return lines


def time_to_quality(results: Path) -> list[str]:
    lines = [
        "**Time to quality**, validation NDCG@10 (%): each seed's best so far after the given training"
        " seconds (validations excluded), mean ± standard error over seeds; RecBole 1.2.1's SASRec in"
        " the same run (`benchmarks/bench_time_to_quality.py`, plots beside each file):",
        "",
    ]
    for name, extra_names in TIME_TO_QUALITY_FILES.items():
        result = load(name, results)
        if result is None:
            lines += [f"- `{name}`: (not run)", ""]
            continue
        half = result["minutes"] * 30
        recbole = [run["best_valid"]["NDCG@10"] for run in result["runs"] if run["model"] == RECBOLE_MODEL]
        target = sum(recbole) / len(recbole) if recbole else None
        tag = Path(name).stem.removeprefix(f"time_to_quality_{result['dataset']}").lstrip("_")
        lines += [
            f"{result['dataset']}" + (f" ({tag})" if tag else "") + ":",
            "",
            f"| model | at {half:.0f} s | at the budget's end | reaches RecBole's best"
            + ("" if target is None else f" ({target:.2f})")
            + " (mean curve) | epochs | training samples/s | test NDCG@10 |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        # a later run of more models under the same settings, marked † and noted below
        extras = [(extra, r) for extra in extra_names if (r := load(extra, results)) is not None]
        tables = [(result, "")] + [(r, " †") for _, r in extras]
        for table, mark in tables:
            for model in table["models"]:
                mine = [run for run in table["runs"] if run["model"] == model]
                lines.append(time_row(model, mine, half, target, mark))
        plot = Path(name).with_suffix(".png").name
        lines += [
            "",
            *diffurec_against_sasrec(result, [r for _, r in extras]),
            f"- {time_note(name, result)}",
        ]
        lines += [
            f"- † `{extra}`, a later run: {time_note(extra, r).split(': ', 1)[1]}" for extra, r in extras
        ]
        lines += ["", f"![validation NDCG@10 against seconds](benchmarks/results/{plot})", ""]
    return lines + ablation(results) + [""] + screening(results)


def common_time(runs: list[dict[str, Any]]) -> int:
    """The last validation time every trained run reached, floored (a run's budget ends with one)."""
    return math.floor(min(run["curve"][-1][0] for run in runs if run["curve"]))


def ablation(results: Path) -> list[str]:
    """Each of SASRec+'s RecBole choices alone (the ablation file) beside `pre-ln`, `recbole` and
    RecBole from the main ML-100K file, and `recbole` with and without the FFN's inner dropout in
    one run (the first screening file), at one training time every ablation run reached."""
    variants, main = load(ABLATION_FILE, results), load(ML100K_TIME_FILE, results)
    if variants is None or main is None:
        return [f"- `{ABLATION_FILE}`: (not run)"]
    common = common_time(variants["runs"])
    screen = load(SCREEN_FILES[0], results) or {"models": [], "runs": []}
    sources = [
        (ML100K_TIME_FILE, main, [m for m in main["models"] if m.split(":")[0] in ("sasrec", "recbole")]),
        (ABLATION_FILE, variants, variants["models"]),
        (SCREEN_FILES[0], screen, [m for m in screen["models"] if m.startswith("sasrec:")]),
    ]
    base = [best_at(r, common) for r in main["runs"] if r["model"] == ABLATION_BASE]
    lines = [
        f"SASRec+ ablation on ML-100K: validation NDCG@10 (%) after {common} training seconds (each"
        " seed's best so far), mean ± standard error over seeds, and the difference from `pre-ln`'s"
        " (each variant changes one of its hyperparameters to RecBole's choice):",
        "",
        "| variant | validation NDCG@10 | minus `pre-ln`'s | from |",
        "| --- | --- | --- | --- |",
    ]
    for source, result, models in sources:
        for model in models:
            values = [best_at(r, common) for r in result["runs"] if r["model"] == model]
            delta = fmean(values) - fmean(base) if base else math.nan
            lines.append(f"| {label(model)} | {mean_se(values)} | {delta:+.2f} | `{source}` |")
    return lines + ["", f"- {time_note(ABLATION_FILE, variants)}"]


def screening(results: Path) -> list[str]:
    """The DiffuRec tuning runs (SCREEN_FILES): each variant's best validation NDCG@10 at one
    training time every run reached, beside `fast-lite` at the issue's settings (SCREEN_BASE)."""
    files = [(name, r) for name in SCREEN_FILES if (r := load(name, results)) is not None]
    if not files:
        return [f"- `{SCREEN_FILES[0]}`: (not run)"]
    runs = [run for _, result in files for run in result["runs"] if run["model"].startswith("diffurec:")]
    common = common_time(runs)
    base = [best_at(run, common) for run in runs if run["model"] == SCREEN_BASE]
    lines = [
        f"DiffuRec tuning on ML-100K (`fast-lite`; batch size, learning rate, warm-up, dropout): validation"
        f" NDCG@10 (%) after {common} training seconds (each seed's best so far), mean ± standard"
        f" error over seeds, and the difference from {label(SCREEN_BASE)}'s at batch 512, lr 0.001:",
        "",
        "| variant | validation NDCG@10 | minus the base's | training samples/s | from |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, result in files:
        for model in (m for m in result["models"] if m.startswith("diffurec:")):
            mine = [run for run in result["runs"] if run["model"] == model]
            values = [best_at(run, common) for run in mine]
            delta = fmean(values) - fmean(base) if base else math.nan
            speed = fmean(run["samples_per_second"] or 0 for run in mine)
            lines.append(f"| {label(model)} | {mean_se(values)} | {delta:+.2f} | {speed:,.0f} | `{name}` |")
    return lines + [""] + [f"- {time_note(name, result)}" for name, result in files]


def binomial_se(hr: float, users: int) -> float:
    """Standard error over users of a hit rate in percent: sqrt(p (1 - p) / users)."""
    p = hr / 100
    return 100 * math.sqrt(p * (1 - p) / users)


def one_seed_cell(dataset: str, result: dict[str, Any], name: str) -> str:
    metrics = next(iter(result["test"].values()))["metrics"]  # at the preset's own reverse steps
    users = TEST_USERS[dataset]
    for key, value in metrics.items():
        if key.startswith("HR@") and abs(value * users / 100 - round(value * users / 100)) > 1e-6:
            raise ValueError(f"{name}: {key} {value} is not a whole number of hits of {users} users")
    if result["stop_reason"] == "fitted":
        budget = "fitted"
    else:
        budget = (
            f"{result['epochs_run']} epochs, {result['stop_reason']}, {result['train_seconds'] / 60:.0f} min"
        )
    hr = metrics["HR@10"]
    return f"{hr:.2f} ± {binomial_se(hr, users):.2f} / {metrics['NDCG@10']:.2f} ({budget})"


def one_seed(results: Path) -> list[str]:
    lines = [
        "**Amazon Beauty and Toys**, one seed each: test HR@10 ± its standard error over users"
        " (binomial) / NDCG@10 (%), beside the paper's reported DiffuRec numbers:",
        "",
        "| dataset | paper's DiffuRec (reported) | " + " | ".join(t for _, t in ONE_SEED_FILES) + " |",
        "| --- | --- |" + " --- |" * len(ONE_SEED_FILES),
    ]
    files = []
    for dataset, title in ONE_SEED_DATASETS.items():
        paper = PAPER_TEST[dataset]
        row = f"| {title} ({TEST_USERS[dataset]:,} users) | {paper['HR@10']:.2f} / {paper['NDCG@10']:.2f} |"
        for suffix, _ in ONE_SEED_FILES:
            name = f"quality_{dataset}_{suffix}.json"
            result = load(name, results)
            row += f" {one_seed_cell(dataset, result, name) if result else '(not run)'} |"
            files.append(name)
        lines.append(row)
    return lines + [
        "",
        f"- {FAST_INIT}.",
        "- These older files were not written by `bench_quality.py run` (no evaluate settings block,"
        " some commands typed by hand); their training settings differ (see each file): "
        + ", ".join(f"`{f}`" for f in files)
        + ". Their `relative_to_paper` field is every model's relative difference from the paper's"
        " DiffuRec numbers, SASRec+'s and popularity's included.",
    ]


def render(results: Path = RESULTS) -> str:
    lines = [START, ""]
    lines += [
        "Test metrics with full ranking and one evaluator, CPU training; every number below is"
        " rendered by `benchmarks/quality_table.py` from `benchmarks/results/` (`bench_quality.py"
        " commands FILE` prints the command that rebuilds each model folder).",
        "",
    ]
    for part in (ml100k, ml1m, time_to_quality, one_seed):
        lines += part(results) + [""]
    return "\n".join(lines + [END])


def replace_block(text: str, block: str, where: str) -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{where}: needs one {START} line followed by one {END} line")
    before, rest = text.split(START)
    return before + block + rest.split(END)[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="README", help="replace the block between the markers in this file")
    mode.add_argument("--check", metavar="README", help="exit 1 with a diff when the file's block is stale")
    args = parser.parse_args()
    block = render()
    target = args.write or args.check
    if not target:
        print(block)
        return
    try:
        text = Path(target).read_text()
        wanted = replace_block(text, block, target)
    except (OSError, ValueError) as error:
        print(f"quality_table: error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.write:
        Path(target).write_text(wanted)
    elif wanted != text:
        sys.stdout.writelines(
            difflib.unified_diff(
                text.splitlines(keepends=True), wanted.splitlines(keepends=True), target, "rendered"
            )
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
