"""`diffurec train-job`: train on a Kubeflow Training Operator PyTorchJob (diffurec/distributed_job.py).

train-job    SPLITS + SETTINGS -> a PyTorchJob of N workers on the shared volume -> model folder OUT
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from diffurec.cli import add_force, check_flags
from diffurec.cli.model_commands import _json_object
from diffurec.lineage import IMAGE_ENV
from diffurec.train_settings import NOT_NEGATIVE, POSITIVE, Range


def register(subparsers: Any) -> None:
    """Add `train-job` to the `diffurec` parser."""
    parser = subparsers.add_parser(
        "train-job",
        help="train on a PyTorchJob (Kubeflow Training Operator) with N workers",
        description="Copy SPLITS to WORK_DIR/NAME on the shared volume, create the PyTorchJob NAME "
        "(one Master and N-1 Workers running `torchrun -m diffurec train`, NCCL on GPUs, Gloo on "
        "CPUs), print its conditions until it ends or --deadline passes, and copy the model folder "
        "it wrote to OUT. A job that succeeded is deleted; one that failed is kept with its pods "
        "for their logs (removed a day later); one still running at the deadline, or when this "
        "command is stopped, is deleted. Runs in a pipeline step's pod (in-cluster credentials).",
    )
    parser.add_argument("--splits", required=True, help="splits folder")
    parser.add_argument("--out", required=True, help="model folder to write")
    add_force(parser, None)
    parser.add_argument(
        "--settings", required=True, metavar="JSON", help="the training settings (TrainSettings fields)"
    )
    parser.add_argument("--lineage-json", metavar="FILE", help="lineage JSON stored in train_summary.json")
    parser.add_argument("--workers", type=int, required=True, help="processes (pods), at least 2")
    parser.add_argument(
        "--gpus-per-worker", type=int, default=1, help="GPUs per pod; 0 trains on CPUs (default: 1)"
    )
    parser.add_argument(
        "--work-dir",
        default="/data/jobs",
        help="folder on the shared volume for the job's splits and model (default: /data/jobs)",
    )
    parser.add_argument(
        "--claim", default="diffurec-data", help="the shared volume's claim (default: diffurec-data)"
    )
    parser.add_argument(
        "--mount-path",
        default="/data",
        help="where the claim is mounted here and in the job (default: /data)",
    )
    parser.add_argument("--image", default=os.environ.get(IMAGE_ENV), help=f"image (default: ${IMAGE_ENV})")
    parser.add_argument("--namespace", help="namespace of the job (default: this pod's)")
    parser.add_argument(
        "--deadline", type=float, default=6 * 3600.0, help="seconds for the whole job (default: 21600)"
    )
    parser.add_argument(
        "--api-host", metavar="URL", help="Kubernetes API server URL (default: the in-cluster API)"
    )
    parser.set_defaults(func=run_train_job, describe=lambda args: {"step": "train"})


def run_train_job(args: argparse.Namespace) -> dict[str, Any]:
    from diffurec.distributed_job import custom_objects_api, train_with_pytorchjob
    from diffurec.errors import DiffuRecError

    check_flags(args, {"workers": Range(2), "gpus_per_worker": NOT_NEGATIVE, "deadline": POSITIVE})
    if not args.image:
        raise DiffuRecError(f"no image: pass --image or set ${IMAGE_ENV}")
    summary = train_with_pytorchjob(
        args.splits,
        args.out,
        _json_object(args.settings, "--settings"),
        workers=args.workers,
        work_dir=args.work_dir,
        claim=args.claim,
        mount_path=args.mount_path,
        image=args.image,
        lineage_json=args.lineage_json,
        gpus_per_worker=args.gpus_per_worker,
        namespace=args.namespace,
        deadline_s=args.deadline,
        api=custom_objects_api(args.api_host) if args.api_host else None,
        force=args.force,
    )
    return {
        "gauges": {"workers": float(args.workers), "epochs": summary.get("epochs_run")},
        "labels": {"model": summary.get("model")},
    }
