"""`diffurec train | evaluate | recommend` (see diffurec/cli/__init__.py for the contract)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffurec.errors import DiffuRecError


def register(subparsers) -> None:
    """Add this group's subcommands to the `diffurec` parser."""
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_recommend(subparsers)


# ---- helpers -------------------------------------------------------------------------------

def _hyper_value(text: str):
    """KEY=VALUE's value: JSON when it parses (numbers, true/false), the string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_overrides(pairs: list[str]) -> dict:
    hyper = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DiffuRecError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set dropout=0.2")
        hyper[key.replace("-", "_")] = _hyper_value(value)
    return hyper


def _write_json(path: str, value: dict) -> None:
    import os
    import tempfile

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, out)


def _dataset_label(splits) -> str | None:
    source = splits.meta.get("source") or {}
    path = source.get("path") if isinstance(source, dict) else None
    return Path(path).stem if path else (splits.path.name if splits.path else None)


def _check_compatible(model, splits, model_dir) -> None:
    if model.config["num_items"] != splits.num_items:
        raise DiffuRecError(f"{Path(model_dir) / 'config.json'}: model has {model.config['num_items']} items "
                            f"but splits {splits.path} have {splits.num_items}")


# ---- train ---------------------------------------------------------------------------------

def _register_train(subparsers) -> None:
    from diffurec.train_settings import STOP_RULES, TrainSettings

    d = TrainSettings()
    p = subparsers.add_parser(
        "train", help="train a model on a splits folder and write a model folder",
        description="Train a model (DiffuRec preset, SASRec+ or popularity) on a splits folder; "
                    "validate every --eval-every epochs, stop early on validation NDCG@10, and write "
                    "the best validation weights as a model folder (docs/formats.md). Runs under "
                    "torchrun for DistributedDataParallel (NCCL on GPUs, Gloo on CPUs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--splits", required=True, help="splits folder written by 'diffurec preprocess'")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--model", default=d.model, choices=("diffurec", "sasrec", "popularity"), help="model")
    p.add_argument("--preset", default=None,
                   help="preset of the model (diffurec: paper, fast, ...; sasrec: default, dense); default: the model's default")
    p.add_argument("--set", dest="hyper", action="append", default=[], metavar="KEY=VALUE",
                   help="override one model hyperparameter, e.g. --set dropout=0.2 (repeatable)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="maximum number of epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (all ranks)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay")
    p.add_argument("--lr-step", type=int, default=d.lr_step, help="StepLR: multiply the lr by --lr-gamma every N epochs")
    p.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help="StepLR factor")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every N epochs (and after the last)")
    p.add_argument("--patience", type=int, default=d.patience, help="stop after N validations without improvement")
    p.add_argument("--stop-rule", default=d.stop_rule, choices=STOP_RULES,
                   help="ndcg: improvement = higher validation NDCG@10; reference: any of the six metrics higher")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget (over resumed runs too); training stops mid-epoch when it is spent (checked after every batch; every 20 under DDP), then one last validation runs")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores / local ranks)")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="users per validation batch")
    p.add_argument("--eval-reverse-steps", type=int, default=None,
                   help="DiffuRec reverse steps during validation (default: the preset's)")
    p.add_argument("--checkpoint-dir", default=None, help="write a checkpoint here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir's checkpoint if there is one")
    p.add_argument("--lineage-json", default=None, help="JSON object stored as 'lineage' in train_summary.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


def run_train(args) -> dict:
    from diffurec.data.splits import load_splits
    from diffurec.files import read_json_object
    from diffurec.train import TrainSettings, train

    splits = load_splits(args.splits)
    lineage = read_json_object(args.lineage_json, "lineage JSON not found") if args.lineage_json else {}
    settings = TrainSettings(
        model=args.model, preset=args.preset, hyper=_parse_overrides(args.hyper), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, lr_step=args.lr_step,
        lr_gamma=args.lr_gamma, eval_every=args.eval_every, patience=args.patience,
        stop_rule=args.stop_rule, max_minutes=args.max_minutes, seed=args.seed, device=args.device,
        threads=args.threads, eval_batch_size=args.eval_batch_size,
        eval_reverse_steps=args.eval_reverse_steps, checkpoint_dir=args.checkpoint_dir,
        resume=args.resume, progress=False if args.no_progress else None)
    summary = train(splits, args.out, settings, lineage=lineage)
    if not summary:  # a non-zero torchrun rank
        return {}
    labels = {"model": args.model, "dataset": _dataset_label(splits)}
    return {"gauges": {"samples_per_second": summary["samples_per_second"],
                       "epochs": summary["epochs_run"], "best_epoch": summary["best_epoch"],
                       "valid_NDCG@10": summary["best_valid"]["NDCG@10"]},
            "labels": {k: v for k, v in labels.items() if v}}


# ---- evaluate ------------------------------------------------------------------------------

def _register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="full-ranking HR@K / NDCG@K of a model folder on a split",
        description="Rank every item for every user of a split (padding never ranked, ties against "
                    "the target) and write the metrics JSON of docs/formats.md (values in percent).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model folder written by 'diffurec train'")
    p.add_argument("--splits", required=True, help="splits folder")
    p.add_argument("--split", default="test", choices=("valid", "test"), help="which split")
    p.add_argument("--reverse-steps", type=int, default=None, help="DiffuRec reverse steps (default: the preset's)")
    p.add_argument("--mask-history", action="store_true", help="never rank items of the user's own history")
    p.add_argument("--batch-size", type=int, default=1024, help="users per batch")
    p.add_argument("--seed", type=int, default=1997, help="seed of the model's inference noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> dict:
    from diffurec import device as devices
    from diffurec.data.splits import load_splits
    from diffurec.evaluate import METRIC_KEYS, evaluate
    from diffurec.model_folder import load_model_folder, read_summary

    device = devices.choose_device(args.device)
    devices.configure(device, args.threads)
    model = load_model_folder(args.model, device)
    splits = load_splits(args.splits)
    _check_compatible(model, splits, args.model)
    try:
        result = evaluate(model, splits, split=args.split, mask_history=args.mask_history,
                          reverse_steps=args.reverse_steps, batch_size=args.batch_size, seed=args.seed,
                          device=device)
    except ValueError as error:  # e.g. reverse steps out of range
        raise DiffuRecError(f"evaluate {args.model}: {error}") from None
    result["model"]["folder"] = str(args.model)
    result["splits"] = str(args.splits)
    result["lineage"] = read_summary(args.model).get("lineage", {})
    _write_json(args.out, result)
    labels = {"model": model.config["name"], "dataset": _dataset_label(splits)}
    gauges = {key: result["metrics"][key] for key in METRIC_KEYS}
    gauges["users_per_second"] = result["users_per_second"]
    return {"gauges": gauges, "labels": {k: v for k, v in labels.items() if v}}


# ---- recommend -----------------------------------------------------------------------------

def _register_recommend(subparsers) -> None:
    p = subparsers.add_parser(
        "recommend", help="top-K items (original ids) per user",
        description="Write the top-K recommended items (original ids from item_map.tsv) for every user "
                    "of a splits folder (their whole known sequence is the history) or for every "
                    "history in a file (one line per user: 'user<TAB>item item ...', oldest first, "
                    "original item ids).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--splits", help="splits folder: recommend for each of its users")
    source.add_argument("--histories", help="histories file: 'user<TAB>item item ...' per line")
    p.add_argument("--top-k", type=int, default=10, help="items per user")
    p.add_argument("--mask-history", action="store_true", help="do not recommend items already in the history")
    p.add_argument("--reverse-steps", type=int, default=None, help="DiffuRec reverse steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=1024, help="users per batch")
    p.add_argument("--seed", type=int, default=1997, help="seed of the model's inference noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="TSV to write: user_id, rank, item_id, score")
    p.set_defaults(func=run_recommend)


def run_recommend(args) -> dict:
    from diffurec import device as devices
    from diffurec import recommend

    device = devices.choose_device(args.device)
    devices.configure(device)
    result = recommend.recommend_to_file(
        args.model, args.out, splits_dir=args.splits, histories_path=args.histories, top_k=args.top_k,
        mask_history=args.mask_history, reverse_steps=args.reverse_steps, batch_size=args.batch_size,
        seed=args.seed, device=device)
    return {"gauges": {"users": result["users"], "users_per_second": result["users_per_second"]},
            "labels": {"model": result["model"]}}
