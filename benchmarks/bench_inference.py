"""Inference speed and quality per DiffuRec preset on the Beauty test set: users/s at 32 and
1 reverse steps, through the project's evaluator (full ranking, batched).

Without --model-dir the presets are freshly initialised (speed only: quality needs training).
With --model-dir (a trained model folder) that model is also evaluated on the whole test set
at 32 and 1 steps to compare quality. Where a whole-test evaluation would take too long here
(`paper` at 32 steps: about 18 min in the reference), --users limits it to the first N users and
the JSON gives the extrapolated whole-set seconds.

    nice -n 10 .venv/bin/python benchmarks/bench_inference.py --threads 1 --users 2048 \
        --model-dir /path/to/beauty_fast_model
"""

from __future__ import annotations

import argparse

from common import dataset_splits, machine, subset, write_result


def timed_evaluation(model, splits, users: int | None, steps: int, batch_size: int) -> dict:
    from diffurec.evaluate import evaluate

    part = subset(splits, users=users) if users else splits
    result = evaluate(model, part, split="test", reverse_steps=steps, batch_size=batch_size, progress=False)
    total = len(splits.test_targets)
    return {
        "reverse_steps": steps,
        "users": result["users"],
        "seconds": result["seconds"],
        "users_per_second": result["users_per_second"],
        "whole_test_seconds": round(result["seconds"] * total / result["users"], 1),
        "extrapolated": result["users"] < total,
        "metrics": result["metrics"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="paper,fast")
    parser.add_argument("--users", type=int, default=2048, help="users for the speed runs (0 = all)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--model-dir", default=None, help="a trained Beauty model folder for the quality check"
    )
    parser.add_argument("--out", default="inference")
    args = parser.parse_args()

    import torch

    from diffurec import device as devices
    from diffurec.models import build_model

    dev = devices.choose_device(args.device)
    threads = devices.configure(dev, args.threads)
    splits = dataset_splits("beauty")
    speed = []
    for preset in args.presets.split(","):
        torch.manual_seed(1997)
        model = build_model("diffurec", splits.num_items, splits.max_len, preset).to(dev)
        for steps in (32, 1):
            row = timed_evaluation(model, splits, args.users or None, steps, args.batch_size)
            row.pop("metrics")  # untrained: the numbers mean nothing
            speed.append({"preset": preset, **row})
    result = {
        "machine": {**machine(), "threads_used": threads, "device": str(dev)},
        "note": "shared 2-core machine (see load_average); untrained models for speed",
        "speed": speed,
        "reference_anchor": {"users_per_second_32_steps": 21, "whole_test_seconds_1_step": 43},
        "target": "whole Beauty test < 15 s with the fastest preset, within 1 % of its 32-step quality",
    }
    if args.model_dir:
        from diffurec.model_folder import load_model_folder

        model = load_model_folder(args.model_dir, dev)
        quality = {steps: timed_evaluation(model, splits, None, steps, args.batch_size) for steps in (1, 32)}
        ndcg1, ndcg32 = quality[1]["metrics"]["NDCG@10"], quality[32]["metrics"]["NDCG@10"]
        hr1, hr32 = quality[1]["metrics"]["HR@10"], quality[32]["metrics"]["HR@10"]
        result["trained_model"] = {
            "folder": args.model_dir,
            "preset": model.config["preset"],
            "by_steps": quality,
            "relative_difference_1_vs_32": {
                "NDCG@10": round((ndcg1 - ndcg32) / ndcg32, 4),
                "HR@10": round((hr1 - hr32) / hr32, 4),
            },
        }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
