"""`diffurec train | evaluate | recommend` (see diffurec/cli/__init__.py for the contract)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from diffurec.cli import add_force, check_flags
from diffurec.errors import DiffuRecError

if TYPE_CHECKING:
    from diffurec.train_settings import TrainSettings


def register(subparsers) -> None:
    """Add this group's subcommands to the `diffurec` parser."""
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_recommend(subparsers)


# ---- train ---------------------------------------------------------------------------------


def _register_train(subparsers) -> None:
    from diffurec import train_settings

    p = subparsers.add_parser(
        "train",
        help="train a model on a splits folder and write a model folder",
        description="Train a model (DiffuRec preset, SASRec+ or popularity) on a splits folder; "
        "validate every --eval-every epochs, stop early on validation NDCG@10, and write "
        "the best validation weights as a model folder (docs/formats.md). Runs under "
        "torchrun for DistributedDataParallel (NCCL on GPUs, Gloo on CPUs). Settings "
        "come from the defaults below, then --params or --settings, then the flags given.",
    )
    p.add_argument("--splits", required=True, help="splits folder written by 'diffurec preprocess'")
    p.add_argument("--out", required=True, help="model folder to write")
    add_force(p, "a non-empty folder that is not a model folder")
    base = p.add_mutually_exclusive_group()
    base.add_argument(
        "--params",
        metavar="YAML",
        help="read the settings from this file's `train:` section (e.g. params.yaml)",
    )
    base.add_argument(
        "--settings",
        metavar="JSON",
        help="read the settings from this JSON object (the pipeline's `train` parameter)",
    )
    p.add_argument(
        "--lineage-json", default=None, help="JSON object stored as 'lineage' in train_summary.json"
    )
    train_settings.add_arguments(p.add_argument_group("training settings (TrainSettings)"))
    p.set_defaults(func=run_train, describe=describe_train)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The run's TrainSettings: defaults, then --params' `train:` or --settings, then the flags."""
    from diffurec import train_settings
    from diffurec.files import read_params

    if args.params:
        base, source = read_params(args.params, ["train"])["train"], f"{args.params}: train"
    elif args.settings:
        base, source = _json_object(args.settings, "--settings"), "--settings"
    else:
        base, source = {}, "train settings"
    return train_settings.from_arguments(args, base, source=source)


def describe_train(args: argparse.Namespace) -> dict:
    """The telemetry labels known before training: the model architecture."""
    return {"labels": {"model": settings_from_args(args).model}}


def describe_model_folder(args: argparse.Namespace) -> dict:
    """The telemetry labels of a step that reads a model folder: its architecture."""
    from diffurec.model_folder import read_config

    return {"labels": {"model": read_config(args.model)["model"]}}


def run_train(args: argparse.Namespace) -> dict:
    from diffurec.data.splits import load_splits
    from diffurec.files import prepare_output, read_json_object
    from diffurec.model_folder import FORMAT_NAME
    from diffurec.train import train

    settings = settings_from_args(args)
    prepare_output(
        args.out,
        kind="folder",
        inputs=[args.splits, args.params, args.lineage_json, settings.checkpoint_dir],
        force=args.force,
        written_by=FORMAT_NAME,
    )
    splits = load_splits(args.splits)
    lineage = read_json_object(args.lineage_json, "lineage JSON not found") if args.lineage_json else {}
    summary = train(splits, args.out, settings, lineage=lineage)
    if not summary:  # a non-zero torchrun rank
        return {}
    labels = {"model": settings.model, "dataset": splits.dataset_label}
    # curve.json's train rows hold each epoch's mean loss (a fitted model has none).
    curve = read_json_object(Path(args.out) / "curve.json", "missing from the model folder")
    losses = [row["loss"] for row in curve["train"]]
    return {
        "gauges": {
            "samples_per_second": summary["samples_per_second"],
            "epochs": summary["epochs_run"],
            "best_epoch": summary["best_epoch"],
            "valid_NDCG@10": summary["best_valid"]["NDCG@10"],
            "train_final_loss": losses[-1] if losses else None,
            "train_nan_loss": 0.0 if all(math.isfinite(loss) for loss in losses) else 1.0,
        },
        "labels": {k: v for k, v in labels.items() if v},
    }


def _json_object(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DiffuRecError(f"{flag}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(value, dict):
        raise DiffuRecError(f"{flag}: expected a JSON object, found {type(value).__name__}")
    return value


# ---- evaluate ------------------------------------------------------------------------------


def _register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="full-ranking HR@K / NDCG@K of a model folder on a split",
        description="Rank every item for every user of a split (padding never ranked, ties against "
        "the target) and write the metrics JSON of docs/formats.md (values in percent).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder written by 'diffurec train'")
    p.add_argument("--splits", required=True, help="splits folder")
    p.add_argument("--split", default="test", choices=("valid", "test"), help="which split")
    p.add_argument(
        "--reverse-steps", type=int, default=None, help="DiffuRec reverse steps (default: the preset's)"
    )
    p.add_argument("--mask-history", action="store_true", help="never rank items of the user's own history")
    p.add_argument("--batch-size", type=int, default=1024, help="users per batch")
    p.add_argument("--seed", type=int, default=1997, help="seed of the model's inference noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument(
        "--out", required=True, help="metrics JSON to write (per-user ranks go beside it: NAME.ranks.npz)"
    )
    add_force(p, "a file that is not a JSON object")
    p.set_defaults(func=run_evaluate, describe=describe_model_folder)


def _check_inference_flags(args: argparse.Namespace) -> None:
    """The numeric flags evaluate and recommend share."""
    from diffurec.train_settings import AT_LEAST_ONE, SEEDS

    check_flags(args, {"batch_size": AT_LEAST_ONE, "reverse_steps": AT_LEAST_ONE, "seed": SEEDS})


def run_evaluate(args: argparse.Namespace) -> dict:
    from diffurec.bootstrap import write_ranks
    from diffurec.evaluate import evaluate_folder
    from diffurec.files import prepare_output, write_json_atomic
    from diffurec.metrics import METRIC_KEYS
    from diffurec.train_settings import AT_LEAST_ONE

    _check_inference_flags(args)
    check_flags(args, {"threads": AT_LEAST_ONE})
    prepare_output(
        args.out, kind="file", inputs=[args.model, args.splits], force=args.force, written_by="json"
    )
    result, splits, ranks = evaluate_folder(
        args.model,
        args.splits,
        split=args.split,
        mask_history=args.mask_history,
        reverse_steps=args.reverse_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    write_ranks(args.out, result, ranks)  # first: the metrics JSON names it
    write_json_atomic(args.out, result)
    labels = {"model": result["model"]["name"], "dataset": splits.dataset_label}
    gauges = {key: result["metrics"][key] for key in METRIC_KEYS}
    gauges["users_per_second"] = result["users_per_second"]
    return {"gauges": gauges, "labels": {k: v for k, v in labels.items() if v}}


# ---- recommend -----------------------------------------------------------------------------


def _register_recommend(subparsers) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="top-K items (original ids) per user",
        description="Write the top-K recommended items (original ids from item_map.tsv) for every user "
        "of a splits folder (their whole known sequence is the history) or for every "
        "history in a file (one line per user: 'user<TAB>item item ...', oldest first, "
        "original item ids).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--splits", help="splits folder: recommend for each of its users")
    source.add_argument("--histories", help="histories file: 'user<TAB>item item ...' per line")
    p.add_argument("--top-k", type=int, default=10, help="items per user")
    p.add_argument(
        "--mask-history", action="store_true", help="do not recommend items already in the history"
    )
    p.add_argument(
        "--reverse-steps", type=int, default=None, help="DiffuRec reverse steps (default: the preset's)"
    )
    p.add_argument("--batch-size", type=int, default=1024, help="users per batch")
    p.add_argument("--seed", type=int, default=1997, help="seed of the model's inference noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="TSV to write: user_id, rank, item_id, score")
    add_force(p, None)
    p.set_defaults(func=run_recommend, describe=describe_model_folder)


def run_recommend(args: argparse.Namespace) -> dict:
    from diffurec import device as devices
    from diffurec import recommend
    from diffurec.files import prepare_output
    from diffurec.train_settings import AT_LEAST_ONE

    _check_inference_flags(args)
    check_flags(args, {"top_k": AT_LEAST_ONE})
    prepare_output(args.out, kind="file", inputs=[args.model, args.splits, args.histories], force=args.force)
    device = devices.choose_device(args.device)
    devices.configure(device)
    result = recommend.recommend_to_file(
        args.model,
        args.out,
        splits_dir=args.splits,
        histories_path=args.histories,
        top_k=args.top_k,
        mask_history=args.mask_history,
        reverse_steps=args.reverse_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
    )
    return {
        "gauges": {"users": result["users"], "users_per_second": result["users_per_second"]},
        "labels": {"model": result["model"]},
    }
