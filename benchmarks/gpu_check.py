"""One script for a CUDA machine: Beauty and Toys `paper` reproductions plus throughput, in
under 8 minutes, written to one JSON file (partial results are written after every section,
so a timeout still leaves the finished sections).

Sections: machine and bf16 matmul peak; training throughput and MFU of `paper` and `fast`
(bf16 autocast, batch 512, and `fast` at a large batch); then per dataset a `paper` run with the
reference's protocol (Adam 1e-3, batch 512, validate every 20 epochs, stop after 5 validations
without improvement on any metric) under a time budget, tested at 32 reverse steps against the
paper's table (target: within 3 %), with SASRec+ (short budget) and popularity beside it.

    .venv/bin/python benchmarks/gpu_check.py                 # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --smoke         # anywhere: tiny budgets on the CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PAPER_TEST, RESULTS, dataset_splits, machine, matmul_flops_per_second, subset


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def reproduce(
    splits,
    dataset: str,
    device: str,
    budget_minutes: float,
    sasrec_minutes: float,
    smoke: bool,
    workdir: Path,
) -> dict:
    from diffurec.evaluate import evaluate
    from diffurec.model_folder import load_model_folder
    from diffurec.train import TrainSettings, train

    rows = {}
    runs = (
        ("diffurec", "paper", budget_minutes, 20, "reference"),
        ("sasrec", "recbole", sasrec_minutes, 5, "ndcg"),
        ("popularity", "default", None, 1, "ndcg"),
    )
    for name, preset, minutes, eval_every, rule in runs:
        settings = TrainSettings(
            model=name,
            preset=preset,
            epochs=2 if smoke else 500,
            batch_size=512,
            lr=1e-3,
            eval_every=1 if smoke else eval_every,
            patience=5,
            stop_rule=rule,
            max_minutes=minutes,
            device=device,
            eval_batch_size=4096,
            progress=False,
        )
        started = time.perf_counter()
        folder = workdir / f"{dataset}-{name}"
        summary = train(splits, folder, settings)
        result = evaluate(load_model_folder(folder, device), splits, "test", batch_size=4096, progress=False)
        row = {
            "preset": preset,
            "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"],
            "stop_reason": summary["stop_reason"],
            "train_seconds": summary["train_seconds"],
            "samples_per_second": summary["samples_per_second"],
            "best_valid": summary["best_valid"],
            "test": result["metrics"],
            "test_reverse_steps": result["settings"]["reverse_steps"],
            "test_seconds": result["seconds"],
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        if name == "diffurec" and dataset in PAPER_TEST:
            paper = PAPER_TEST[dataset]
            row["relative_to_paper"] = {k: round(result["metrics"][k] / v - 1, 4) for k, v in paper.items()}
            row["within_3_percent"] = all(abs(v) <= 0.03 for v in row["relative_to_paper"].values())
        rows[name] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny budgets and data slices; runs on the CPU")
    parser.add_argument("--datasets", default="beauty,toys")
    parser.add_argument("--paper-minutes", type=float, default=2.4, help="training budget of each paper run")
    parser.add_argument(
        "--sasrec-minutes", type=float, default=0.35, help="training budget of each SASRec+ run"
    )
    parser.add_argument("--out", default=str(RESULTS / "gpu_check.json"))
    args = parser.parse_args()

    import torch

    from diffurec import device as devices
    from bench_train_speed import measure_preset

    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("gpu_check.py: no CUDA device here (use --smoke to exercise it on the CPU)")
    device = devices.choose_device("cuda" if torch.cuda.is_available() else "cpu")
    devices.configure(device, None)
    started = time.perf_counter()
    out = Path(args.out)
    result = {
        "benchmark": "gpu_check",
        "smoke": args.smoke,
        "machine": machine(),
        "device": str(device),
        "written_utc": None,
        "sections": {},
    }

    def save(section: str, value) -> None:
        result["sections"][section] = value
        result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        result["written_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write(out, result)

    peak_dtype = "bfloat16" if device.type == "cuda" else "float32"
    peak = matmul_flops_per_second(
        str(device), peak_dtype, n=256 if args.smoke else 8192, seconds=0.3 if args.smoke else 3.0
    )
    save("matmul", {"dtype": peak_dtype, "flops_per_second": peak})

    beauty = dataset_splits("beauty")
    if args.smoke:
        beauty = subset(beauty, users=256, samples=2048)
    throughput = []
    for preset, batch_size in (("paper", 512), ("fast", 512), ("fast", 8192)):
        if args.smoke:
            batch_size = min(batch_size, 256)
        row = measure_preset(
            beauty,
            preset,
            batches_to_time=2 if args.smoke else 40,
            warmup=1 if args.smoke else 5,
            batch_size=batch_size,
            device=str(device),
        )
        row["mfu"] = round(row["model_flops_per_second"] / peak, 4)
        throughput.append(row)
        save("throughput", throughput)

    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets.split(","):
            splits = dataset_splits(dataset)
            if args.smoke:
                splits = subset(splits, users=256, samples=1024)
            save(
                f"reproduction_{dataset}",
                reproduce(
                    splits,
                    dataset,
                    str(device),
                    args.paper_minutes,
                    args.sasrec_minutes,
                    args.smoke,
                    Path(tmp),
                ),
            )
    save("done", True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
