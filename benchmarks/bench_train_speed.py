"""Training speed per DiffuRec preset on Beauty: samples/s, model FLOP/s, MFU, epoch wall time.

In one run: this machine's dense fp32 matmul FLOP/s (the MFU denominator; bf16 on CUDA), then
for each preset a fixed number of the trainer's own Beauty batches (epoch 1's shuffled order,
so a random sample of batch lengths) through `diffurec.train.train_batches`, after warm-up
batches. The epoch time is extrapolated from the measured batches to all of the epoch's
batches (the JSON says so). Model FLOPs are counted analytically (common.forward_flops_per_sample)
at each batch's computed length, training = 3 x forward.

    nice -n 10 .venv/bin/python benchmarks/bench_train_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import (
    batch_lengths,
    dataset_splits,
    forward_flops_per_sample,
    machine,
    matmul_flops_per_second,
    write_result,
)


def measure_preset(
    splits,
    preset: str,
    batches_to_time: int,
    warmup: int,
    batch_size: int,
    device: str,
    seed: int = 1997,
    hyper: dict | None = None,
) -> dict:
    import torch

    from diffurec import device as devices
    from diffurec.models import build_model
    from diffurec.train import LossModule, epoch_batches, train_batches

    dev = torch.device(device)
    torch.manual_seed(seed)
    model = build_model("diffurec", splits.num_items, splits.max_len, preset, **(hyper or {})).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lengths = splits.train_lengths() if model.trims_padding else None
    batches = epoch_batches(splits.num_train_samples, batch_size, seed, 1, lengths)
    computed = batch_lengths(splits, batches, model.trims_padding)
    loss_module = LossModule(model)
    train_batches(
        loss_module,
        optimizer,
        splits,
        batches[:warmup],
        lengths,
        dev,
        progress=False,
    )
    timed = batches[warmup : warmup + batches_to_time]
    devices.synchronize(dev)
    started = time.perf_counter()
    train_batches(
        loss_module,
        optimizer,
        splits,
        timed,
        lengths,
        dev,
        desc=f"{preset}",
        progress=False,
    )
    devices.synchronize(dev)
    seconds = time.perf_counter() - started
    samples = sum(len(b) for b in timed)
    flops = sum(
        3 * len(b) * forward_flops_per_sample(model.config, int(length))
        for b, length in zip(timed, computed[warmup : warmup + batches_to_time], strict=True)
    )
    epoch_flops = sum(
        3 * len(b) * forward_flops_per_sample(model.config, int(length))
        for b, length in zip(batches, computed, strict=True)
    )
    # extrapolate by FLOPs share: the timed batches are a random sample of the epoch's lengths
    epoch_seconds = seconds * epoch_flops / flops
    return {
        "preset": preset,
        "batch_size": batch_size,
        "timed_batches": len(timed),
        "warmup_batches": warmup,
        "epoch_batches": len(batches),
        "timed_samples": samples,
        "seconds": round(seconds, 3),
        "samples_per_second": round(samples / seconds, 1),
        "model_flops_per_second": flops / seconds,
        "mean_computed_length": round(float(np.mean(computed)), 2),
        "epoch_tflop": round(epoch_flops / 1e12, 3),
        "beauty_epoch_seconds_extrapolated": round(epoch_seconds, 1),
        "extrapolation": f"{len(timed)} of {len(batches)} batches timed; epoch time = timed seconds x "
        "(epoch FLOPs / timed FLOPs)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="paper,fast")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per preset")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="train_speed")
    args = parser.parse_args()

    from diffurec import device as devices

    dev = devices.choose_device(args.device)
    threads = devices.configure(dev, args.threads)
    splits = dataset_splits("beauty")
    peak_dtype = "bfloat16" if dev.type == "cuda" else "float32"
    peak = matmul_flops_per_second(str(dev), peak_dtype, n=4096 if dev.type == "cuda" else 1024)
    presets = [
        measure_preset(splits, p, args.batches, args.warmup, args.batch_size, str(dev))
        for p in args.presets.split(",")
    ]
    for row in presets:
        row["mfu"] = round(row["model_flops_per_second"] / peak, 4)
    by_name = {row["preset"]: row for row in presets}
    speedups = {}
    if "paper" in by_name:
        for row in presets:
            speedups[f"{row['preset']}_vs_paper_epoch_speedup"] = round(
                by_name["paper"]["beauty_epoch_seconds_extrapolated"]
                / row["beauty_epoch_seconds_extrapolated"],
                2,
            )
    write_result(
        args.out,
        {
            "machine": {**machine(), "threads_used": threads, "device": str(dev)},
            "note": "shared 2-core machine (other jobs running, see load_average): absolute numbers are "
            "pessimistic; ratios within this run are comparable",
            "matmul_peak_flops_per_second": peak,
            "matmul_dtype": peak_dtype,
            "presets": presets,
            **speedups,
            "targets": {"paper_mfu_cpu": ">= 0.3", "trimming_preset_epoch_speedup": ">= 5x vs paper"},
            "reference_anchor": {"samples_per_second": 135, "beauty_epoch_minutes": 16, "mfu": 0.3},
        },
    )


if __name__ == "__main__":
    main()
