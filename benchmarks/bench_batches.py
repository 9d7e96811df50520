"""Batch building versus the model step: DiffuRec `fast` on Beauty, windows built on the fly.

Splits version 2 stores each user's sequence once and the trainer gathers every batch's
left-padded windows from it (`Splits.train_batch`). This measures whether that can slow
training: over the trainer's own epoch-1 batches (length-bucketed, shuffled batch order, so a
random sample of batch lengths), after warm-up batches, one loop times alternately

- building the batch exactly as the trainer does (`diffurec.train.batch_tensors`: index sort,
  gather from the memory-mapped sequences, int64 tensors), and
- the model step on it (forward, backward, Adam step, as `train_batches` does).

The ratio (model step time / batch build time, summed over the timed batches) must be at least
10. Also recorded: building every batch of the epoch without the model, the same batches read
from a materialised [S, max_len] array as version 1 stored it (for comparison), and the sizes
of the splits folder and of the arrays version 1 would have added.

    nice -n 10 .venv/bin/python benchmarks/bench_batches.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from common import dataset_splits, machine, write_result

REQUIRED_RATIO = 10.0


def folder_bytes(splits) -> int:
    return sum(p.stat().st_size for p in splits.path.iterdir() if p.is_file())


def version_1_array_bytes(splits) -> int:
    """What version 1 also stored: train inputs/targets/users and the valid/test rows (int32)."""
    samples, users, columns = splits.num_train_samples, splits.num_users, splits.max_len
    return 4 * (samples * (columns + 2) + 2 * users * (columns + 1))


def materialised_batch(inputs: np.ndarray, targets: np.ndarray, index: np.ndarray, width: int):
    """Version 1's batch: rows of the stored arrays, cut to `width` columns, as int64 tensors."""
    import torch

    index = np.sort(index)
    batch = inputs[index][:, inputs.shape[1] - width :]
    return torch.from_numpy(batch.astype(np.int64)), torch.from_numpy(targets[index].astype(np.int64))


def measure(splits, preset: str, batch_size: int, timed: int, warmup: int, device: str, seed: int) -> dict:
    import torch

    from diffurec import device as devices
    from diffurec.models import build_model
    from diffurec.train import LossModule, batch_tensors, epoch_batches

    dev = torch.device(device)
    torch.manual_seed(seed)
    model = build_model("diffurec", splits.num_items, splits.max_len, preset).to(dev)
    loss_module = LossModule(model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    started = time.perf_counter()
    lengths = splits.train_lengths() if model.trims_padding else None
    lengths_seconds = time.perf_counter() - started
    batches = epoch_batches(splits.num_train_samples, batch_size, seed, 1, lengths)

    build, step = [], []
    for number, batch in enumerate(batches[: warmup + timed]):
        devices.synchronize(dev)
        t0 = time.perf_counter()
        inputs, targets = batch_tensors(splits, batch, lengths, dev)
        devices.synchronize(dev)
        t1 = time.perf_counter()
        with devices.autocast(dev):
            loss = loss_module(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        devices.synchronize(dev)
        t2 = time.perf_counter()
        if number >= warmup:
            build.append(t1 - t0)
            step.append(t2 - t1)

    # every batch of the epoch, built and thrown away (what an epoch's data side costs)
    started = time.perf_counter()
    for batch in batches:
        batch_tensors(splits, batch, lengths, dev)
    devices.synchronize(dev)
    epoch_build_seconds = time.perf_counter() - started

    # the same batches from version 1's materialised arrays (built here, in memory)
    stored_inputs, stored_targets = np.asarray(splits.train_inputs), splits.train_targets
    started = time.perf_counter()
    for batch in batches:
        width = max(int(lengths[batch].max()), 1) if lengths is not None else splits.max_len
        materialised_batch(stored_inputs, stored_targets, batch, width)
    materialised_seconds = time.perf_counter() - started

    build_s, step_s = float(np.sum(build)), float(np.sum(step))
    mean_step = step_s / len(step)
    return {
        "preset": preset,
        "device": str(dev),
        "batch_size": batch_size,
        "warmup_batches": warmup,
        "timed_batches": len(step),
        "epoch_batches": len(batches),
        "train_samples": splits.num_train_samples,
        "timed_build_seconds": round(build_s, 6),
        "timed_model_step_seconds": round(step_s, 3),
        "median_build_ms": round(1e3 * float(np.median(build)), 4),
        "median_model_step_ms": round(1e3 * float(np.median(step)), 2),
        "model_step_over_build": round(step_s / build_s, 1),
        "lengths_seconds": round(lengths_seconds, 4),
        "epoch_build_seconds": round(epoch_build_seconds, 4),
        "epoch_model_seconds_extrapolated": round(mean_step * len(batches), 1),
        "epoch_model_over_build": round(mean_step * len(batches) / epoch_build_seconds, 1),
        "epoch_materialised_read_seconds": round(materialised_seconds, 4),
        "extrapolation": f"epoch model time = mean of {len(step)} timed steps x {len(batches)} batches",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--batch-size", type=int, default=512, help="the trainer's default")
    parser.add_argument("--batches", type=int, default=30, help="timed batches")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1997)
    parser.add_argument("--out", default="batches")
    args = parser.parse_args()

    from diffurec import device as devices

    dev = devices.choose_device(args.device)
    threads = devices.configure(dev, args.threads)
    splits = dataset_splits("beauty")
    header = json.loads((splits.path / "format.json").read_text())
    row = measure(splits, args.preset, args.batch_size, args.batches, args.warmup, str(dev), args.seed)
    sequence_bytes = splits.seq_items.nbytes + splits.seq_offsets.nbytes
    path = write_result(
        args.out,
        {
            "machine": machine(),
            "threads": threads,
            "dataset": "beauty",
            "splits_version": header["version"],
            "splits_folder_bytes": folder_bytes(splits),
            "sequence_bytes": sequence_bytes,
            "version_1_extra_array_bytes": version_1_array_bytes(splits),
            "result": row,
            "required_ratio": REQUIRED_RATIO,
            "batch_building_is_not_the_bottleneck": row["model_step_over_build"] >= REQUIRED_RATIO,
        },
    )
    print(f"model step / batch build: {row['model_step_over_build']}x ({path})")


if __name__ == "__main__":
    main()
