"""The trainer on a real ML-100K slice: batching, early stopping, determinism, kill-and-resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from trainer_data import TINY_DIFFUREC, TINY_SASREC, hyper_args, tiny_settings, write_ml100k_slice

from diffurec.data.splits import load_splits
from diffurec.errors import DiffuRecError
from diffurec.evaluate import evaluate
from diffurec.model_folder import load_model_folder
from diffurec.train import (
    TrainSettings,
    epoch_batches,
    load_checkpoint,
    rank_piece,
    train,
    update_best,
)

REPO = Path(__file__).resolve().parents[1]
FREEZE = 1e-30  # StepLR gamma: after epoch 1 the lr is too small to move a float32 weight


@pytest.fixture(scope="module")
def wide_splits(shared_data, tmp_path_factory):
    """All 943 users x their last 30 interactions: about 24,000 training samples."""
    return load_splits(write_ml100k_slice(shared_data, tmp_path_factory.mktemp("wide") / "splits", 943, 30))


# ---- batching ------------------------------------------------------------------------------


def test_length_buckets_cover_every_sample_once_and_group_similar_lengths(tiny_splits):
    lengths = tiny_splits.train_lengths()
    assert np.array_equal(lengths, (np.asarray(tiny_splits.train_inputs) > 0).sum(axis=1))
    assert lengths.min() >= 1 and lengths.max() <= tiny_splits.max_len
    batches = epoch_batches(len(lengths), 64, seed=1997, epoch=3, lengths=lengths)
    flat = np.concatenate(batches)
    assert np.array_equal(np.sort(flat), np.arange(len(lengths)))
    # sorted by length before cutting: each batch spans at most two adjacent lengths here
    spreads = [lengths[b].max() - lengths[b].min() for b in batches]
    assert max(spreads) <= 1
    # batch order is shuffled (not ascending length), and the same (seed, epoch) gives the same epoch
    firsts = [lengths[b].min() for b in batches]
    assert firsts != sorted(firsts)
    again = epoch_batches(len(lengths), 64, seed=1997, epoch=3, lengths=lengths)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = epoch_batches(len(lengths), 64, seed=1997, epoch=4, lengths=lengths)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_rank_pieces_partition_each_batch():
    batch = np.arange(7)
    pieces = [rank_piece(batch, r, 3) for r in range(3)]
    assert sorted(np.concatenate(pieces).tolist()) == list(range(7))
    assert [len(p) for p in pieces] == [3, 2, 2]


# ---- early stopping ------------------------------------------------------------------------


def _metrics(**values):
    base = dict.fromkeys(("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"), 1.0)
    return {**base, **values}


def test_stop_rules_differ_on_an_improvement_outside_ndcg10():
    for rule, expected in (("ndcg", [True, False, True]), ("reference", [True, True, True])):
        best = {}
        seen = [
            update_best(best, _metrics(), 1, rule),
            update_best(best, _metrics(**{"HR@20": 2.0}), 2, rule),  # only HR@20 improved
            update_best(best, _metrics(**{"NDCG@10": 1.5}), 3, rule),
        ]
        assert seen == expected, rule
        assert best["epoch"] == 3


def test_patience_stops_training_and_keeps_the_best_weights(tiny_splits, tmp_path):
    # lr 1e-32 after the first epoch (StepLR gamma FREEZE; the settings want a positive gamma)
    # moves no float32 weight (Adam steps of about lr, far below their rounding), so validation cannot
    # improve any more: with patience 2 the run must stop after epoch 3, best epoch 1.
    summary = train(
        tiny_splits, tmp_path / "model", tiny_settings(epochs=10, lr_step=1, lr_gamma=FREEZE, patience=2)
    )
    assert summary["stop_reason"] == "patience"
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1
    curve = json.loads((tmp_path / "model" / "curve.json").read_text())
    assert [v["epoch"] for v in curve["valid"]] == [1, 2, 3]
    assert [t["epoch"] for t in curve["train"]] == [1, 2, 3]


def test_time_budget_can_end_an_epoch_early(tiny_splits, tmp_path):
    # a budget already spent: the trainer stops after its first batch (one process checks after
    # every batch), then still validates and writes the folder
    summary = train(tiny_splits, tmp_path / "model", tiny_settings(epochs=5, batch_size=16, max_minutes=1e-6))
    assert summary["stop_reason"] == "time budget" and summary["epochs_run"] == 1
    curve = json.loads((tmp_path / "model" / "curve.json").read_text())
    assert 0 < curve["train"][0]["samples"] <= 16 < len(tiny_splits.train_targets)
    assert len(curve["valid"]) == 1


# ---- quality and reproducibility ----------------------------------------------------------


def test_trained_model_beats_popularity(wide_splits, tmp_path):
    """One epoch of a tiny SASRec+ (measured: valid NDCG@10 about 4.2 vs 1.9, test 3.5 vs 2.3)."""
    train(wide_splits, tmp_path / "pop", TrainSettings(model="popularity", threads=1, progress=False))
    popularity = {
        split: evaluate(load_model_folder(tmp_path / "pop"), wide_splits, split)["metrics"]
        for split in ("valid", "test")
    }
    summary = train(
        wide_splits,
        tmp_path / "sasrec",
        tiny_settings(
            model="sasrec", preset="dense", hyper=dict(TINY_SASREC), epochs=1, lr=0.01, batch_size=64
        ),
    )
    sasrec = {
        "valid": summary["best_valid"],
        "test": evaluate(load_model_folder(tmp_path / "sasrec"), wide_splits, "test")["metrics"],
    }
    assert sasrec["valid"]["NDCG@10"] > 1.5 * popularity["valid"]["NDCG@10"], (sasrec, popularity)
    assert sasrec["valid"]["HR@10"] > 1.5 * popularity["valid"]["HR@10"], (sasrec, popularity)
    assert sasrec["test"]["NDCG@10"] > popularity["test"]["NDCG@10"], (sasrec, popularity)


def test_same_cpu_run_twice_gives_identical_metrics_and_weights(tiny_splits, tmp_path):
    for preset in ("fast", "paper"):  # length-bucketed and full-length batches
        runs = [
            train(tiny_splits, tmp_path / f"{preset}{i}", tiny_settings(preset=preset, epochs=1))
            for i in range(2)
        ]
        assert runs[0]["best_valid"] == runs[1]["best_valid"]
        from safetensors.torch import load_file

        first, second = (load_file(str(tmp_path / f"{preset}{i}" / "model.safetensors")) for i in range(2))
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
    # a different seed gives a different model
    other = train(tiny_splits, tmp_path / "seed2", tiny_settings(preset="paper", epochs=1, seed=2))
    assert other["best_valid"] != runs[0]["best_valid"]


def test_killed_run_resumes_to_the_same_result(tiny_splits, tmp_path):
    """SIGKILL a CLI training run after its second epoch's checkpoint, resume, compare."""
    epochs = 4
    args = [
        sys.executable,
        "-m",
        "diffurec",
        "-q",
        "train",
        "--splits",
        str(tiny_splits.path),
        "--model",
        "diffurec",
        "--preset",
        "fast",
        *hyper_args(TINY_DIFFUREC),
        "--epochs",
        str(epochs),
        "--batch-size",
        "128",
        "--lr",
        "0.01",
        "--eval-every",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--out",
        str(tmp_path / "resumed"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DIFFUREC_PUSHGATEWAY", None)
    process = subprocess.Popen(args, env=env, cwd=tmp_path)
    checkpoint = tmp_path / "ck" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.is_file() and load_checkpoint(checkpoint)["epoch"] >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(checkpoint)["epoch"]
    assert 2 <= killed_at < epochs
    assert not (tmp_path / "resumed").exists()  # nothing downstream written by the killed run

    subprocess.run(args + ["--resume"], env=env, cwd=tmp_path, check=True)
    uninterrupted = train(tiny_splits, tmp_path / "straight", tiny_settings(epochs=epochs, seed=1997))
    resumed = json.loads((tmp_path / "resumed" / "train_summary.json").read_text())
    assert resumed["epochs_run"] == epochs
    assert resumed["best_valid"] == uninterrupted["best_valid"]
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    resumed_curve = json.loads((tmp_path / "resumed" / "curve.json").read_text())
    straight_curve = json.loads((tmp_path / "straight" / "curve.json").read_text())
    assert [r["loss"] for r in resumed_curve["train"]] == [r["loss"] for r in straight_curve["train"]]
    test_metrics = [
        evaluate(load_model_folder(tmp_path / name), tiny_splits)["metrics"]
        for name in ("resumed", "straight")
    ]
    assert test_metrics[0] == test_metrics[1]


# ---- checkpoint and summary contents (docs/formats.md) -------------------------------------

CHECKPOINT_KEYS = {
    "version",
    "epoch",
    "model",
    "optimizer",
    "scheduler",
    "best_model",
    "best",
    "bad_validations",
    "curve",
    "seconds",
    "train_seconds",
    "samples_trained",
    "stop_reason",
    "settings",
    "model_config",
    "splits_md5",
}
SUMMARY_KEYS = [
    "model",
    "preset",
    "seed",
    "device",
    "threads",
    "world_size",
    "splits",
    "num_items",
    "num_train_samples",
    "best_epoch",
    "epochs_run",
    "stop_reason",
    "seconds",
    "train_seconds",
    "samples_per_second",
    "best_valid",
    "settings",
    "lineage",
]


def test_a_run_stopped_by_patience_resumes_to_the_same_folder(tiny_splits, tmp_path):
    # as in the patience test: frozen weights after epoch 1, so the run stops after epoch 3
    settings = tiny_settings(
        epochs=10, lr_step=1, lr_gamma=FREEZE, patience=2, checkpoint_dir=str(tmp_path / "ck")
    )
    first = train(tiny_splits, tmp_path / "first", settings)
    assert list(first) == SUMMARY_KEYS
    assert first["settings"]["patience"] == 2 and "epochs" not in first["settings"]
    checkpoint = load_checkpoint(tmp_path / "ck" / "checkpoint.pt")
    assert set(checkpoint) == CHECKPOINT_KEYS
    assert checkpoint["epoch"] == 3 and checkpoint["stop_reason"] == "patience"
    assert checkpoint["bad_validations"] == 2
    assert checkpoint["best"]["epoch"] == 1
    assert checkpoint["samples_trained"] == 3 * len(tiny_splits.train_targets)

    # more epochs allowed, but patience already stopped it: nothing is trained, the same folder is written
    again = train(tiny_splits, tmp_path / "again", dataclasses.replace(settings, epochs=20, resume=True))
    assert (again["epochs_run"], again["best_epoch"], again["stop_reason"]) == (3, 1, "patience")
    assert again["best_valid"] == first["best_valid"] and again["seconds"] == first["seconds"]
    for name in ("curve.json", "model.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "first" / name).read_bytes(), name
    assert load_checkpoint(tmp_path / "ck" / "checkpoint.pt")["epoch"] == 3  # not rewritten

    # a setting that changes the result makes the checkpoint someone else's
    with pytest.raises(DiffuRecError, match=r"checkpoint\.pt: written by a run with other settings"):
        train(tiny_splits, tmp_path / "other", dataclasses.replace(settings, lr=0.02, resume=True))


def test_popularity_summary_has_no_training_settings(tiny_splits, tmp_path):
    summary = train(
        tiny_splits, tmp_path / "pop", TrainSettings(model="popularity", threads=1, progress=False)
    )
    assert list(summary) == [key for key in SUMMARY_KEYS if key != "settings"]
    assert (summary["best_epoch"], summary["epochs_run"], summary["stop_reason"]) == (0, 0, "fitted")
    assert summary["train_seconds"] == summary["seconds"]
    curve = json.loads((tmp_path / "pop" / "curve.json").read_text())
    assert curve["train"] == [] and curve["valid"] == [{"epoch": 0, **summary["best_valid"]}]
    assert json.loads((tmp_path / "pop" / "train_summary.json").read_text()) == summary


# ---- learning-rate warm-up -----------------------------------------------------------------


def test_warmup_raises_the_lr_linearly_across_epochs_then_steplr_takes_over(tiny_splits, tmp_path):
    lrs: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: lrs.append(optimizer.param_groups[0]["lr"])
    )
    try:
        train(tiny_splits, tmp_path / "w", tiny_settings(epochs=3, warmup_steps=20, lr_step=2, lr_gamma=0.5))
    finally:
        hook.remove()
    per_epoch = -(-len(tiny_splits.train_targets) // 128)  # 1,700 samples, batch 128: 14 steps
    assert len(lrs) == 3 * per_epoch
    # by hand: step k (from 0) of epoch e runs at 0.01 * min(1, (k + 1) / 20) * 0.5 ** (e // 2)
    expected = [0.01 * min(1.0, (k + 1) / 20) * 0.5 ** ((k // per_epoch) // 2) for k in range(len(lrs))]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(0.0005) and lrs[19] == pytest.approx(0.01)


def test_a_run_resumed_inside_its_warmup_trains_like_one_straight_run(tiny_splits, tmp_path):
    settings = tiny_settings(epochs=1, warmup_steps=20, checkpoint_dir=str(tmp_path / "ck"))
    train(tiny_splits, tmp_path / "first", settings)
    assert "warmup" in load_checkpoint(tmp_path / "ck" / "checkpoint.pt")
    train(tiny_splits, tmp_path / "resumed", dataclasses.replace(settings, epochs=2, resume=True))
    train(tiny_splits, tmp_path / "straight", tiny_settings(epochs=2, warmup_steps=20))
    losses = [
        [row["loss"] for row in json.loads((tmp_path / name / "curve.json").read_text())["train"]]
        for name in ("resumed", "straight", "first")
    ]
    assert losses[0] == losses[1]
    # and warm-up changed the training: the same run without it has other losses
    no_warmup = train(tiny_splits, tmp_path / "plain", tiny_settings(epochs=1))
    assert (
        no_warmup["best_valid"]
        != json.loads((tmp_path / "first" / "train_summary.json").read_text())["best_valid"]
    )
