"""`diffurec train | evaluate | recommend` end to end on an ML-100K slice, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_data import TINY_DIFFUREC, hyper_args, write_ml100k_slice

from diffurec.cli import main

REPO = Path(__file__).resolve().parents[1]
METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


@pytest.fixture(scope="module")
def splits_dir(shared_data, tmp_path_factory):
    return write_ml100k_slice(shared_data, tmp_path_factory.mktemp("cli") / "splits", 150, 20)


@pytest.fixture(autouse=True)
def no_pushgateway(monkeypatch):
    monkeypatch.delenv("DIFFUREC_PUSHGATEWAY", raising=False)


def test_train_evaluate_recommend_end_to_end(splits_dir, tmp_path):
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps({"git_commit": "abc123", "splits_md5": "0" * 32 + ".dir"}))
    model = tmp_path / "model"
    assert (
        main(
            [
                "-q",
                "train",
                "--splits",
                str(splits_dir),
                "--out",
                str(model),
                "--model",
                "diffurec",
                "--preset",
                "fast",
                *hyper_args(TINY_DIFFUREC),
                "--epochs",
                "2",
                "--batch-size",
                "128",
                "--eval-every",
                "1",
                "--threads",
                "1",
                "--no-progress",
                "--lineage-json",
                str(lineage),
                "--seed",
                "7",
            ]
        )
        == 0
    )
    summary = json.loads((model / "train_summary.json").read_text())
    assert summary["lineage"]["git_commit"] == "abc123" and summary["lineage"]["preset"] == "fast"
    assert summary["seed"] == 7 and summary["epochs_run"] == 2 and summary["samples_per_second"] > 0
    assert (model / "curve.png").stat().st_size > 1000
    curve = json.loads((model / "curve.json").read_text())
    assert len(curve["train"]) == 2 and len(curve["valid"]) == 2

    metrics_path = tmp_path / "metrics.json"
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--model",
                str(model),
                "--splits",
                str(splits_dir),
                "--split",
                "test",
                "--reverse-steps",
                "2",
                "--mask-history",
                "--threads",
                "1",
                "--out",
                str(metrics_path),
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics["metrics"]) == set(METRICS) and metrics["unit"] == "percent"
    assert metrics["users"] == 150 and metrics["split"] == "test"
    assert metrics["settings"]["mask_history"] is True and metrics["settings"]["reverse_steps"] == 2
    assert metrics["model"]["name"] == "diffurec" and metrics["model"]["preset"] == "fast"
    assert metrics["lineage"]["git_commit"] == "abc123"

    recs = tmp_path / "recs.tsv"
    assert (
        main(
            [
                "-q",
                "recommend",
                "--model",
                str(model),
                "--splits",
                str(splits_dir),
                "--top-k",
                "10",
                "--out",
                str(recs),
            ]
        )
        == 0
    )
    assert len(recs.read_text().splitlines()) == 1 + 150 * 10

    # the handlers return the gauges the telemetry pushes
    from diffurec.cli import build_parser
    from diffurec.cli.model_commands import run_evaluate

    result = run_evaluate(
        build_parser().parse_args(
            [
                "evaluate",
                "--model",
                str(model),
                "--splits",
                str(splits_dir),
                "--threads",
                "1",
                "--out",
                str(tmp_path / "m2.json"),
            ]
        )
    )
    assert set(METRICS) | {"users_per_second"} <= set(result["gauges"])
    assert result["labels"]["model"] == "diffurec"


def test_popularity_trains_to_the_same_folder_format(splits_dir, tmp_path):
    assert (
        main(
            [
                "-q",
                "train",
                "--model",
                "popularity",
                "--splits",
                str(splits_dir),
                "--out",
                str(tmp_path / "pop"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "pop").iterdir()) == [
        "config.json",
        "curve.json",
        "curve.png",
        "item_map.tsv",
        "manifest.json",
        "model.safetensors",
        "train_summary.json",
    ]
    assert json.loads((tmp_path / "pop" / "config.json").read_text())["model"] == "popularity"


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DIFFUREC_PUSHGATEWAY", None)
    return subprocess.run(
        [sys.executable, "-m", "diffurec", "-q", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_missing_splits_folder_exits_2_with_one_line(tmp_path):
    """The real command line: exit status 2, one line on stderr, nothing written."""
    missing = _cli("train", "--splits", str(tmp_path / "nope"), "--out", str(tmp_path / "m"), cwd=tmp_path)
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope: not a splits folder" in lines[0], missing.stderr
    assert not (tmp_path / "m").exists()


def _main_error(capsys, *args) -> str:
    """Run `diffurec ARGS` in-process; it must return 2 and print exactly one stderr line."""
    capsys.readouterr()
    assert main(["-q", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_input_gives_one_line_and_exit_2(splits_dir, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "format.json").write_text(json.dumps({"format": "something-else", "version": 3}))
    line = _main_error(capsys, "train", "--splits", str(wrong), "--out", str(tmp_path / "m"))
    assert "format.json: expected diffurec-splits version 1" in line
    line = _main_error(
        capsys,
        "evaluate",
        "--model",
        str(tmp_path / "m"),
        "--splits",
        str(wrong),
        "--out",
        str(tmp_path / "x.json"),
    )
    assert "not a model folder" in line  # the model folder is checked first
    line = _main_error(
        capsys, "train", "--splits", str(splits_dir), "--out", str(tmp_path / "m"), "--set", "no_such=1"
    )
    assert "unknown DiffuRec hyperparameters" in line
    line = _main_error(capsys, "train", "--splits", str(splits_dir), "--out", str(tmp_path / "m"), "--resume")
    assert "--resume needs --checkpoint-dir" in line
    line = _main_error(
        capsys,
        "recommend",
        "--model",
        str(tmp_path / "m"),
        "--histories",
        str(tmp_path / "h"),
        "--out",
        str(tmp_path / "r.tsv"),
    )
    assert "not a model folder" in line
    assert not (tmp_path / "m").exists() and not (tmp_path / "x.json").exists()
    assert not (tmp_path / "r.tsv").exists()
