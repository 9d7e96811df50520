"""benchmarks/bench_time_to_quality.py's pure functions against hand-made curves (no training,
no server): curve extraction from curve.json and RecBole's JSON lines, best-so-far aggregation
over seeds, time to reach a target, and the model:preset[:key=value+...] specs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_time_to_quality.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # Loaded from its file: benchmarks/ is a folder of scripts, not a package.
    spec = importlib.util.spec_from_file_location("bench_time_to_quality", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diffurec_curve_sums_training_seconds_up_to_each_validation(bench: ModuleType) -> None:
    curve = {
        "train": [
            {"epoch": 1, "seconds": 10.0},
            {"epoch": 2, "seconds": 12.0},
            {"epoch": 3, "seconds": 5.5},  # cut short by the budget
        ],
        "valid": [
            {"epoch": 1, "NDCG@10": 1.0},
            {"epoch": 2, "NDCG@10": 3.0},
            {"epoch": 3, "NDCG@10": 2.5},
        ],
    }
    assert bench.diffurec_curve(curve) == [(10.0, 1.0), (22.0, 3.0), (27.5, 2.5)]
    popularity = {"train": [], "valid": [{"epoch": 0, "NDCG@10": 0.9}]}
    assert bench.diffurec_curve(popularity) == []


def test_recbole_curve_reads_epoch_lines_only(bench: ModuleType) -> None:
    lines = [
        {"event": "data", "seconds": 4.0},
        {"event": "epoch", "epoch": 1, "seconds": 30.0, "wall_seconds": 33.0, "NDCG@10": 4.0},
        {"event": "epoch", "epoch": 2, "seconds": 61.0, "wall_seconds": 67.0, "NDCG@10": 5.0},
        {"event": "final", "best_epoch": 2},
    ]
    assert bench.recbole_curve(lines) == [(30.0, 4.0), (61.0, 5.0)]


def test_aggregate_holds_each_seeds_best_so_far_from_when_all_seeds_validated(bench: ModuleType) -> None:
    seed_a = [(10.0, 2.0), (20.0, 4.0), (30.0, 3.0)]  # drops at 30: best so far stays 4
    seed_b = [(15.0, 1.0), (25.0, 6.0)]
    got = bench.aggregate([seed_a, seed_b])
    assert got["seconds"] == [15.0, 20.0, 25.0, 30.0]  # 10 s: seed b has not validated yet
    # by hand: at 15 (2, 1), at 20 (4, 1), at 25 (4, 6), at 30 (4, 6)
    assert got["mean"] == [1.5, 2.5, 5.0, 5.0]
    assert got["low"] == [1.0, 1.0, 4.0, 4.0]
    assert got["high"] == [2.0, 4.0, 6.0, 6.0]
    assert math.isnan(bench.best_so_far(seed_b, 14.9))


def test_time_to_reach_is_the_first_time_at_or_above_the_target(bench: ModuleType) -> None:
    seconds, values = [15.0, 20.0, 25.0, 30.0], [1.5, 2.5, 5.0, 5.0]
    assert bench.time_to_reach(seconds, values, 2.5) == 20.0  # reaching counts, not only passing
    assert bench.time_to_reach(seconds, values, 4.9) == 25.0
    assert bench.time_to_reach(seconds, values, 5.1) is None


def test_summary_measures_every_model_against_recboles_mean_best(bench: ModuleType) -> None:
    runs = [
        {
            "model": "recbole:sasrec",
            "seed": 1,
            "curve": [(30.0, 4.0), (60.0, 5.0)],
            "best_valid": {"NDCG@10": 5.0},
        },
        {
            "model": "recbole:sasrec",
            "seed": 2,
            "curve": [(30.0, 6.0), (60.0, 5.0)],
            "best_valid": {"NDCG@10": 6.0},
        },
        {
            "model": "sasrec:default",
            "seed": 1,
            "curve": [(10.0, 5.0), (20.0, 6.0)],
            "best_valid": {"NDCG@10": 6.0},
        },
        {
            "model": "sasrec:default",
            "seed": 2,
            "curve": [(10.0, 5.5), (20.0, 5.0)],
            "best_valid": {"NDCG@10": 5.5},
        },
    ]
    summary = bench.summarise(runs, ["sasrec:default", "recbole:sasrec"])
    assert summary["recbole_best_mean"] == 5.5  # (5 + 6) / 2
    sasrec = summary["models"]["sasrec:default"]
    assert sasrec["mean"] == [5.25, 5.75] and sasrec["time_to_recbole_best"] == 20.0
    assert summary["models"]["recbole:sasrec"]["time_to_recbole_best"] == 60.0  # mean 5.0, then 5.5
    assert sasrec["seeds"] == 2 and sasrec["final_mean"] == 5.75


def test_model_specs(bench: ModuleType) -> None:
    assert bench.parse_model("sasrec:default") == ("sasrec", "default", {})
    assert bench.parse_model("sasrec:default:norm=post+embedding_norm=true+dropout=0.2") == (
        "sasrec",
        "default",
        {"norm": "post", "embedding_norm": True, "dropout": 0.2},
    )
    for bad in ("sasrec", "sasrec::", "sasrec:default:norm"):
        with pytest.raises(ValueError, match="--models"):
            bench.parse_model(bad)
    # training settings go to their flags (the batch 512, lr 1e-3 otherwise), the rest to --set
    assert bench.train_arguments({"lr": 0.004, "warmup_steps": 200, "norm": "post"}) == [
        "--batch-size=512",
        "--lr=0.004",
        "--warmup-steps=200",
        '--set=norm="post"',
    ]
    assert bench.train_arguments({"lr_step": 3, "dropout": 0.3}) == [
        "--batch-size=512",
        "--lr=0.001",
        "--warmup-steps=0",
        "--lr-step=3",
        "--set=dropout=0.3",
    ]
    assert bench.train_arguments({})[:2] == ["--batch-size=512", "--lr=0.001"]


def fake_run(model: str, seed: int, curve: list[tuple[float, float]], test: float) -> dict:
    best = max((value for _, value in curve), default=1.5)  # a fitted model's level: 1.5
    return {
        "model": model,
        "seed": seed,
        "curve": curve,
        "best_valid": {"NDCG@10": best, "HR@10": 2 * best},
        "test": {"NDCG@10": test, "HR@10": 2 * test},
        "epochs": len(curve),
        "samples_per_second": 1000.0 * seed,
    }


def fake_result(dataset: str, minutes: float, models: list[str], runs: list[dict]) -> dict:
    machine = {"cpu_model": "CPU", "cpu_count": 2}
    return {
        **{"dataset": dataset, "max_len": 20, "minutes": minutes, "seeds": [1, 2], "models": models},
        **{"jobs": 2, "git_commit": "abc", "git_dirty": False, "machine": machine, "runs": runs},
    }


def test_readme_time_to_quality_tables_are_the_hand_computation(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    main = [
        fake_run("sasrec:default", 1, [(60.0, 4.0), (200.0, 6.0)], 5.0),
        fake_run("sasrec:default", 2, [(60.0, 5.0), (200.0, 5.0)], 4.0),
        fake_run("recbole:sasrec", 1, [(100.0, 5.0), (300.0, 5.5)], 5.5),
        fake_run("recbole:sasrec", 2, [(100.0, 4.5), (300.0, 5.5)], 5.5),
        fake_run("diffurec:fast-lite", 1, [(100.0, 5.0), (300.0, 5.6)], 4.0),
        fake_run("diffurec:fast-lite", 2, [(100.0, 5.0), (300.0, 5.4)], 4.0),
        fake_run("popularity:default", 1, [], 2.0),
        fake_run("popularity:default", 2, [], 2.0),
        # `recbole` before it took RecBole's FFN: as_trained reads it as ffn_dropout=true
        fake_run("sasrec:recbole", 1, [(60.0, 6.0), (200.0, 7.0)], 6.0),
        fake_run("sasrec:recbole", 2, [(60.0, 6.0), (200.0, 7.0)], 6.0),
    ]
    models = [
        "sasrec:default",
        "recbole:sasrec",
        "diffurec:fast-lite",
        "popularity:default",
        "sasrec:recbole",
    ]
    ablation = [
        fake_run("sasrec:default:norm=post", 1, [(50.0, 3.0), (150.0, 7.0)], 6.0),
        fake_run("sasrec:default:norm=post", 2, [(50.0, 4.0), (130.7, 6.0)], 6.0),
    ]
    main_file = tmp_path / "time_to_quality_ml-100k.json"
    main_file.write_text(json.dumps(fake_result("ml-100k", 8, models, main)))
    (tmp_path / "time_to_quality_ml-100k_ablation.json").write_text(
        json.dumps(fake_result("ml-100k", 4, ["sasrec:default:norm=post"], ablation))
    )
    later = [
        fake_run("sasrec:pre-ln:init=normal-0.02", seed, [(100.0, 5.0), (230.0, 7.0)], 6.5) for seed in (1, 2)
    ] + [fake_run("diffurec:fast-lite-pos", seed, [(100.0, 5.0), (250.0, 6.0)], 5.0) for seed in (1, 2)]
    later_models = ["sasrec:pre-ln:init=normal-0.02", "diffurec:fast-lite-pos"]
    later_file = tmp_path / "time_to_quality_ml-100k_init.json"
    later_file.write_text(json.dumps(fake_result("ml-100k", 8, later_models, later)))
    screen = [
        fake_run("diffurec:fast-lite", 1, [(100.0, 5.0), (250.0, 6.0)], 4.0),
        fake_run("diffurec:fast-lite", 2, [(100.0, 4.0), (240.9, 5.0)], 4.0),
        fake_run("diffurec:fast-lite:batch_size=64", 1, [(100.0, 6.0), (245.0, 7.0)], 5.0),
        fake_run("diffurec:fast-lite:batch_size=64", 2, [(100.0, 6.0), (245.0, 7.0)], 5.0),
        fake_run("sasrec:recbole", 1, [(60.0, 5.0), (200.0, 8.0)], 6.0),
    ]
    screen_models = ["diffurec:fast-lite", "diffurec:fast-lite:batch_size=64", "sasrec:recbole"]
    (tmp_path / "time_to_quality_ml-100k_screen.json").write_text(
        json.dumps(fake_result("ml-100k", 4, screen_models, screen))
    )
    env = dict(os.environ, DIFFUREC_BENCH_RESULTS=str(tmp_path))
    table = BENCH.with_name("quality_table.py")
    out = subprocess.run(
        [sys.executable, str(table)], cwd=BENCH.parent, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # RecBole's best: mean of 5.5 and 5.5. SASRec+ at 240 s: 6 and 5 -> 5.50 ± 0.50; its mean curve
    # is 4.5 at 60 s and 5.5 at 200 s, so it reaches 5.5 at 200 s; RecBole's mean reaches it at 300 s.
    assert "reaches RecBole's best (5.50)" in text
    # `default` was SASRec+'s preset before it was renamed `pre-ln`: labelled by today's name
    assert (
        "| SASRec+ `pre-ln` | 5.50 ± 0.50 | 5.50 ± 0.50 | 200 s | 2.00 ± 0.00 | 1,500 | 4.50 ± 0.50 |" in text
    )
    assert "| RecBole `sasrec` | 4.75 ± 0.25 | 5.50 ± 0.00 | 300 s |" in text
    assert "| popularity `default` | 1.50 ± 0.00 | 1.50 ± 0.00 | never |" in text  # a level below the target
    # DiffuRec's mean curve (5.0, then 5.5 at 300 s) reaches SASRec+'s mean best (6 and 5: 5.5) at 300 s
    assert (
        "- DiffuRec `fast-lite`'s mean curve reaches the best of SASRec+ `pre-ln`'s (5.50) at 300 s" in text
    )
    # the later file's model joins the table, marked, and reaches RecBole's 5.5 at its 230 s validation
    assert "| SASRec+ `pre-ln` `init=normal-0.02` † | 7.00 ± 0.00 | 7.00 ± 0.00 | 230 s |" in text
    assert "- † `time_to_quality_ml-100k_init.json`, a later run: window 20, 8 min per run" in text
    # a later run's DiffuRec (mean curve 5 at 100 s, 6 at 250 s) against the main run's SASRec+ bests
    assert (
        "- DiffuRec `fast-lite-pos` †'s mean curve reaches the best of SASRec+ `pre-ln`'s (5.50) at 250 s,"
        " SASRec+ `recbole` `ffn_dropout=true`'s (7.00) never" in text
    )
    # Ablation at 130 s (the last validation both ablation runs reached, floored): norm=post 3 and 4
    # -> 3.50 ± 0.50, pre-ln (`default` in this file) 4 and 5 -> 4.50: difference -1.00.
    assert "after 130 training seconds" in text
    assert "| SASRec+ `pre-ln` `norm=post` | 3.50 ± 0.50 | -1.00 |" in text
    assert "| SASRec+ `pre-ln` | 4.50 ± 0.50 | +0.00 |" in text
    # older files' `recbole` is today's `recbole` with the FFN's inner dropout: 6 at 130 s, +1.50
    row = "| SASRec+ `recbole` `ffn_dropout=true` | 6.00 ± 0.00 | +1.50 | `time_to_quality_ml-100k.json` |"
    assert row in text
    screen_row = (
        "| SASRec+ `recbole` `ffn_dropout=true` | 5.00 | +0.50 | `time_to_quality_ml-100k_screen.json` |"
    )
    assert screen_row in text  # one seed: no standard error
    # DiffuRec tuning at 240 s (the last validation every DiffuRec screening run reached, floored):
    # fast-lite 5 and 4 (seed 1's 6 comes at 250 s, seed 2's 5 at 240.9 s), batch 64: 6 and 6, +1.50;
    # samples/s 1000 x seed
    assert "after 240 training seconds" in text
    cells = "| 6.00 ± 0.00 | +1.50 | 1,500 | `time_to_quality_ml-100k_screen.json` |"
    assert "| DiffuRec `fast-lite` `batch_size=64` " + cells in text
    assert "| DiffuRec `fast-lite` | 4.50 ± 0.50 | +0.00 |" in text
