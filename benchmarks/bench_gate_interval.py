"""How wide is the gate's paired bootstrap interval on ML-100K (943 test users) and on Beauty
(22,363)? Real rank files: models trained and evaluated with the command line (`diffurec train`,
`diffurec evaluate`, which writes NAME.ranks.npz), then compared as the gate compares a candidate
with its champion (diffurec.bootstrap.compare_ranks, 2000 resamples, 95 %).

Pairs per dataset:
- `retrained`: SASRec+ trained twice with the same budget (--epochs, --minutes) and seeds 1
  and 2: a retrain that changed nothing but the seed, the noise the champion check must not
  take for a drop (--sasrec-datasets: on the CPU this is the slow part);
- `odd vs even`: popularity fitted on the odd- vs the even-numbered training samples;
- `half data`: popularity fitted on the first half of the training samples vs on all of them.

    cd benchmarks && nice -n 10 ../.venv/bin/python bench_gate_interval.py --epochs 2 --minutes 4

Writes benchmarks/results/gate_interval.json (the docs/gate.md table). `--simulate-users N`
adds, per pair, a simulation stated as such: N users drawn with replacement from the measured
users (their real per-user rank pairs), as if the test set were that large with the same
per-user spread; `--name` writes another result file.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from common import dataset_splits, machine, write_result

from diffurec import bootstrap
from diffurec.cli import main

METRIC = "NDCG@10"
ODD_EVEN = "odd vs even (popularity on the odd vs the even training samples)"
RETRAINED = "retrained (SASRec+ seed 2 vs seed 1)"


def train_and_evaluate(splits_dir: Path, folder: Path, args: list[str]) -> np.ndarray:
    """`diffurec train ARGS` then `diffurec evaluate`; the per-user test ranks it wrote."""
    model, metrics = folder / "model", folder / "metrics.json"
    assert main(["train", "--splits", str(splits_dir), "--out", str(model), "--no-progress", *args]) == 0
    command = ["evaluate", "--model", str(model), "--splits", str(splits_dir), "--out", str(metrics)]
    assert main([*command, "--device", "cpu"]) == 0
    return bootstrap.read_ranks(metrics, json.loads(metrics.read_text()))


def popularity_on(splits, samples: slice, folder: Path) -> np.ndarray:
    """Popularity fitted on these training samples, evaluated by the command: its ranks."""
    from diffurec.model_folder import save_model_folder
    from diffurec.models import build_model

    model = build_model("popularity", splits.num_items, splits.max_len)
    model.fit(np.asarray(splits.train_targets)[samples])
    model_dir = save_model_folder(
        folder / "model", model, item_map_path=Path(splits.path) / "item_map.tsv", summary={}
    )
    metrics = folder / "metrics.json"
    command = ["evaluate", "--model", str(model_dir), "--splits", str(splits.path), "--out", str(metrics)]
    assert main([*command, "--device", "cpu"]) == 0
    return bootstrap.read_ranks(metrics, json.loads(metrics.read_text()))


def comparison(candidate: np.ndarray, champion: np.ndarray, simulate_users: int | None = None) -> dict:
    if simulate_users:  # a simulated test set: the measured users' rank pairs, drawn with replacement
        drawn = np.random.default_rng(0).integers(0, len(candidate), simulate_users)
        return {"simulated": True, **comparison(candidate[drawn], champion[drawn])}
    result = bootstrap.compare_ranks(candidate, champion, METRIC)
    low, high = result["interval"]
    rel_low, rel_high = result["relative_interval"]
    return {
        "candidate": bootstrap.mean_metric(candidate, METRIC),
        "champion": bootstrap.mean_metric(champion, METRIC),
        **result,
        "half_width_points": (high - low) / 2,
        "half_width_relative": (rel_high - rel_low) / 2,
    }


def run(dataset: str, args: argparse.Namespace, work: Path) -> dict:
    splits = dataset_splits(dataset)
    started = time.perf_counter()
    full = train_and_evaluate(splits.path, work / f"{dataset}-popularity", ["--model", "popularity"])
    half = popularity_on(splits, slice(0, splits.num_train_samples // 2), work / f"{dataset}-half")
    even = popularity_on(splits, slice(0, None, 2), work / f"{dataset}-even")
    odd = popularity_on(splits, slice(1, None, 2), work / f"{dataset}-odd")
    pairs = {
        ODD_EVEN: comparison(odd, even),
        "half data (popularity on the first half of the samples vs on all)": comparison(half, full),
    }
    if args.simulate_users:
        pairs[f"{ODD_EVEN}, simulated {args.simulate_users} users"] = comparison(
            odd, even, args.simulate_users
        )
        pairs[f"half data, simulated {args.simulate_users} users"] = comparison(
            half, full, args.simulate_users
        )
    if dataset in args.sasrec_datasets:
        sasrec = ["--model", "sasrec", "--epochs", str(args.epochs), "--patience", str(args.epochs)]
        sasrec += ["--max-minutes", str(args.minutes), "--threads", str(args.threads), "--device", "cpu"]
        seeds = [
            train_and_evaluate(splits.path, work / f"{dataset}-sasrec-{seed}", [*sasrec, "--seed", str(seed)])
            for seed in (1, 2)
        ]
        pairs[RETRAINED] = comparison(seeds[1], seeds[0])
    return {
        "users": splits.num_users,
        "items": splits.num_items,
        "pairs": pairs,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "beauty"])
    parser.add_argument("--sasrec-datasets", nargs="*", default=["ml-100k", "beauty"], help="SASRec+ pairs")
    parser.add_argument("--epochs", type=int, default=2, help="SASRec+ epochs per model")
    parser.add_argument("--minutes", type=float, default=4.0, help="SASRec+ time budget per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--simulate-users", type=int, default=None, help="also simulate this many users")
    parser.add_argument("--name", default="gate_interval", help="result file name (without .json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gate-interval-") as work:
        results = {dataset: run(dataset, args, Path(work)) for dataset in args.datasets}
    retrained = {
        name: result["pairs"][RETRAINED] for name, result in results.items() if RETRAINED in result["pairs"]
    }
    scaling = None
    if {"ml-100k", "beauty"} <= set(retrained):
        small, large = retrained["ml-100k"], retrained["beauty"]
        scaling = {
            "ratio_of_half_widths_points": small["half_width_points"] / large["half_width_points"],
            "sqrt_ratio_of_users": math.sqrt(large["users"] / small["users"]),
            "note": "the half-width falls like 1/sqrt(users) for the same per-user spread; the two "
            "datasets' spreads differ, so the ratio only roughly follows sqrt",
        }
    write_result(
        args.name,
        {
            "metric": METRIC,
            "resamples": bootstrap.DEFAULT_RESAMPLES,
            "confidence": bootstrap.DEFAULT_CONFIDENCE,
            "settings": {"sasrec_epochs": args.epochs, "sasrec_max_minutes": args.minutes},
            "machine": machine(),
            "datasets": results,
            "scaling": scaling,
        },
    )


if __name__ == "__main__":
    main_cli()
