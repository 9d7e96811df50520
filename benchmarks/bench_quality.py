"""Quality with the project's one trainer and evaluator.

`short`: a fixed-budget run on ML-100K (optionally a slice: first --users users, each one's last
--last interactions; --max-len sets the history window) of DiffuRec `fast-init` and `paper`,
SASRec+ and popularity; test metrics of each side by side (DiffuRec and SASRec+ should be well
above popularity).

`converge`: one model and preset (DiffuRec by default; SASRec+ or popularity with --model) on
Beauty, Toys or ML-1M toward convergence (early stopping, a time budget, checkpoints so it can be
resumed), then test metrics (DiffuRec: at the preset's and at 32 reverse steps). For a GPU or a
long CPU run; rerunning with the same --checkpoint-dir resumes.

    nice -n 10 .venv/bin/python benchmarks/bench_quality.py short --max-len 20 --epochs 50 --minutes 10 \
        --batch-size 256 --threads 1
    nice -n 10 .venv/bin/python benchmarks/bench_quality.py converge --dataset beauty --preset fast \
        --max-minutes 45 --checkpoint-dir /tmp/beauty_fast_ck
    nice -n 10 .venv/bin/python benchmarks/bench_quality.py converge --dataset toys --model sasrec \
        --max-minutes 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import CACHE, PAPER_TEST, SHARED_DATA, dataset_splits, machine, write_result

from diffurec.models import MODEL_NAMES

MODELS = (
    ("popularity", "default"),
    ("sasrec", "dense"),
    ("diffurec", "fast-init"),
    ("diffurec", "fast"),
    ("diffurec", "paper"),
)


def ml100k_slice(users: int | None, last: int | None, max_len: int | None):
    """ML-100K, optionally cut to the first `users` users and each one's `last` interactions,
    preprocessed with a `max_len` window (default: preprocess's)."""
    from diffurec.data.preprocess import preprocess_frame
    from diffurec.data.readers import read_interactions
    from diffurec.data.splits import DEFAULT_MAX_LEN, load_splits

    if not users and not last and not max_len:
        return dataset_splits("ml-100k")
    max_len = max_len or DEFAULT_MAX_LEN
    folder = CACHE / (
        "ml-100k" + (f"-{users}users" if users else "") + (f"-last{last}" if last else "") + f"-len{max_len}"
    )
    if not (folder / "format.json").is_file():
        frame = read_interactions(SHARED_DATA / "ml-100k" / "ml-100k.inter")
        if users:
            frame = frame[frame["user"].isin(set(frame["user"].drop_duplicates().iloc[:users]))]
        if last:
            frame = (
                frame.sort_values(["user", "timestamp"], kind="stable").groupby("user", sort=False).tail(last)
            )
        preprocess_frame(
            frame,
            folder,
            max_len=max_len,
            source={"path": f"ml-100k slice {users} users x last {last}, max_len {max_len}"},
        )
    return load_splits(folder)


def train_and_test(splits, out: Path, settings, test_steps=(None,)) -> dict:
    from diffurec.evaluate import evaluate
    from diffurec.model_folder import load_model_folder
    from diffurec.train import train

    started = time.perf_counter()
    summary = train(splits, out, settings)
    model = load_model_folder(out)
    tests = {}
    for steps in test_steps:
        if steps is not None and model.config["name"] != "diffurec":
            continue
        result = evaluate(model, splits, "test", reverse_steps=steps, progress=False)
        tests[str(result["settings"]["reverse_steps"])] = {
            "metrics": result["metrics"],
            "seconds": result["seconds"],
        }
    return {
        "model": settings.model,
        "preset": summary["preset"],
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "stop_reason": summary["stop_reason"],
        "train_seconds": summary["train_seconds"],
        "samples_per_second": summary["samples_per_second"],
        "best_valid": summary["best_valid"],
        "test": tests,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def short(args) -> None:
    from diffurec.train import TrainSettings

    splits = ml100k_slice(args.users, args.last, args.max_len)
    rows = []
    models = [m for m in MODELS if f"{m[0]}:{m[1]}" in args.models.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, preset in models:  # the JSON is rewritten after every model
            settings = TrainSettings(
                model=name,
                preset=preset,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                eval_every=1,
                patience=args.epochs,
                max_minutes=args.minutes,
                threads=args.threads,
                progress=False,
            )
            rows.append(train_and_test(splits, Path(tmp) / f"{name}-{preset}", settings))
            print(rows[-1], flush=True)
            write_short(args, splits, rows)


def write_short(args, splits, rows) -> None:
    pop = next((next(iter(r["test"].values()))["metrics"] for r in rows if r["model"] == "popularity"), None)
    for row in rows:
        metrics = next(iter(row["test"].values()))["metrics"]
        if pop:
            row["test_ndcg10_over_popularity"] = round(metrics["NDCG@10"] / pop["NDCG@10"], 3)
    write_result(
        args.out or "quality_ml100k",
        {
            "machine": machine(),
            "mode": "short",
            "data": {
                "dataset": "ml-100k",
                "users": splits.num_users,
                "items": splits.num_items,
                "train_samples": int(len(splits.train_targets)),
                "max_len": splits.max_len,
                "slice": {"users": args.users, "last": args.last},
            },
            "budget": {
                "epochs": args.epochs,
                "max_minutes_per_model": args.minutes,
                "batch_size": args.batch_size,
                "lr": args.lr,
            },
            "note": "shared 2-core machine; fixed small budget, so DiffuRec (lr 1e-3 in the paper, "
            "500 epochs) is far from converged",
            "models": rows,
        },
    )


def converge(args) -> None:
    from diffurec.train import TrainSettings

    splits = dataset_splits(args.dataset)
    preset = args.preset or {"diffurec": "fast", "sasrec": "default", "popularity": "default"}[args.model]
    name = f"{args.dataset}-{preset}" if args.model == "diffurec" else f"{args.dataset}-{args.model}-{preset}"
    out = Path(args.model_out or (CACHE / f"{name}-model"))
    settings = TrainSettings(
        model=args.model,
        preset=preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        patience=args.patience,
        stop_rule=args.stop_rule,
        max_minutes=args.minutes,
        threads=args.threads,
        device=args.device,
        checkpoint_dir=args.checkpoint_dir,
        resume=bool(args.checkpoint_dir),
        progress=False,
    )
    row = train_and_test(splits, out, settings, test_steps=(None, 32))
    paper = PAPER_TEST.get(args.dataset)
    if paper:
        best = next(iter(row["test"].values()))["metrics"]
        row["relative_to_paper"] = {k: round(best[k] / v - 1, 4) for k, v in paper.items()}
    write_result(
        args.out or f"quality_{name.replace('-', '_')}",
        {
            "machine": machine(),
            "mode": "converge",
            "dataset": args.dataset,
            "paper_test": paper,
            "model_folder": str(out),
            "settings": {k: v for k, v in vars(args).items() if k != "func"},
            **row,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("short", help="fixed-budget ML-100K comparison")
    s.add_argument("--users", type=int, default=None)
    s.add_argument("--last", type=int, default=None)
    s.add_argument("--max-len", type=int, default=None, help="history window (default: preprocess's)")
    s.add_argument("--epochs", type=int, default=3)
    s.add_argument("--minutes", type=float, default=None, help="time budget per model")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument(
        "--models",
        default="popularity:default,sasrec:dense,diffurec:fast-init,diffurec:paper",
        help="comma-separated model:preset list, in order",
    )
    s.add_argument("--out", default=None)
    s.set_defaults(func=short)
    c = sub.add_parser("converge", help="one model and preset on Beauty/Toys/ML-1M toward convergence")
    c.add_argument("--dataset", default="beauty", choices=("beauty", "toys", "ml-1m"))
    c.add_argument("--model", default="diffurec", choices=MODEL_NAMES)
    c.add_argument("--preset", default=None, help="default: fast (diffurec), default (sasrec, popularity)")
    c.add_argument("--epochs", type=int, default=500)
    c.add_argument("--batch-size", type=int, default=512)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--eval-every", type=int, default=2)
    c.add_argument("--patience", type=int, default=5)
    c.add_argument("--stop-rule", default="ndcg", choices=("ndcg", "reference"))
    c.add_argument("--minutes", "--max-minutes", dest="minutes", type=float, default=45.0)
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--device", default="auto")
    c.add_argument("--checkpoint-dir", default=None)
    c.add_argument("--model-out", default=None)
    c.add_argument("--out", default=None)
    c.set_defaults(func=converge)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
