"""`diffurec` subcommands for the data layer: fetch, validate, preprocess.

See diffurec/cli/__init__.py for the contract. Library imports happen inside the handlers so
`diffurec --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from diffurec.cli import add_force, check_flags


def _add_reader_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--input", required=required, metavar="FILE", help="the interaction log to read")
    from diffurec.data.formats import format_help

    # Checked by the reader, which names the choices in its one-line error.
    parser.add_argument("--format", metavar="NAME", help=format_help())
    parser.add_argument("--user-col", metavar="NAME", help="user id column (tables with a header)")
    parser.add_argument("--item-col", metavar="NAME", help="item id column (tables with a header)")
    parser.add_argument(
        "--time-col",
        metavar="NAME",
        help="timestamp column: unix seconds or ISO 8601 dates; without one the "
        "file order is taken as chronological",
    )
    parser.add_argument("--rating-col", metavar="NAME", help="rating column (optional)")
    parser.add_argument("--sep", metavar="DELIM", help="override the format's delimiter")


def _reader_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        format=args.format,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        rating_col=args.rating_col,
        sep=args.sep,
    )


def register(subparsers: Any) -> None:
    """Add this group's subcommands to the `diffurec` parser."""
    from diffurec.data.fetch import DATASETS  # the standard library only: --help stays fast

    fetch = subparsers.add_parser(
        "fetch",
        help="download a MovieLens archive, check its digest, unpack it",
        description=f"Download {' or '.join(DATASETS)} from GroupLens (or a mirror URL, or a local "
        "archive), check its sha256 (md5 where only that is published) and unpack "
        "it into OUT/<name>/.",
    )
    fetch.add_argument("dataset", choices=tuple(DATASETS))
    source = fetch.add_mutually_exclusive_group()
    source.add_argument("--url", help="mirror URL of the zip archive")
    source.add_argument("--from", dest="from_path", metavar="PATH", help="a local zip archive")
    fetch.add_argument("--sha256", help="expected sha256 (overrides the published digest)")
    fetch.add_argument("--md5", help="expected md5 (overrides the published digest)")
    fetch.add_argument(
        "--timeout", type=float, default=60.0, help="total time allowed for the download, seconds"
    )
    fetch.add_argument("--out", required=True, metavar="DIR", help="folder to unpack into")
    add_force(fetch, None)
    fetch.set_defaults(func=run_fetch)

    validate = subparsers.add_parser(
        "validate",
        help="check a raw log or a splits folder with Great Expectations",
        description="Two modes. --input FILE runs the raw-interactions suite (required columns, "
        "no null ids, numeric timestamps in 1990..2100, exact duplicate rows and "
        "users too short for leave-one-out counted as warnings, at least one user "
        "splittable). --splits DIR runs the processed-splits suite (ids contiguous "
        "1..N with 0 for padding, every user has train/validation/test, targets in "
        "range, stored prefixes and rows consistent with the sequences). Writes "
        "OUT/report.json and OUT/data_docs/index.html; exits 2 when a critical "
        "expectation fails or fewer expectations ran than the suite holds.",
    )
    _add_reader_options(validate, required=False)
    validate.add_argument("--splits", metavar="DIR", help="a splits folder from 'diffurec preprocess'")
    validate.add_argument("--out", required=True, metavar="DIR", help="folder for report.json and data_docs/")
    add_force(validate, "a non-empty folder that is not a validation report")
    validate.set_defaults(func=run_validate, describe=describe_validate)

    preprocess = subparsers.add_parser(
        "preprocess",
        help="clean a raw log and write leave-one-out splits",
        description="Read a log, keep interactions as implicit feedback, drop exact duplicate "
        "rows, order each user's interactions by time (ties keep file order), drop "
        "users with fewer than 3 interactions, remap items to 1..N (0 = padding), "
        "split leave-one-out and write every training prefix. Writes the splits "
        "folder (docs/formats.md) and stats.json atomically to OUT.",
    )
    _add_reader_options(preprocess)
    preprocess.add_argument("--out", required=True, metavar="DIR", help="the splits folder to write")
    add_force(preprocess, "a non-empty folder that is not a splits folder")
    preprocess.add_argument(
        "--min-rating",
        type=float,
        metavar="X",
        help="keep only interactions with rating >= X (default: keep all)",
    )
    preprocess.add_argument(
        "--dedup",
        choices=("keep-all", "keep-first"),
        default="keep-all",
        help="repeated (user, item) pairs: keep every one (default), or only "
        "the first in time; exact duplicate rows are always dropped",
    )
    preprocess.add_argument(
        "--kcore",
        type=int,
        default=0,
        metavar="K",
        help="iteratively keep users and items with >= K interactions (0: off)",
    )
    preprocess.add_argument(
        "--max-len",
        type=int,
        default=50,
        metavar="L",
        help="input window: the last L items of each prefix (default 50)",
    )
    preprocess.set_defaults(func=run_preprocess)


def run_fetch(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from diffurec.data.fetch import DATASETS, fetch_dataset
    from diffurec.files import prepare_output
    from diffurec.train_settings import POSITIVE

    check_flags(args, {"timeout": POSITIVE})
    # The dataset's own folder inside OUT is what gets replaced.
    target = Path(args.out) / DATASETS[args.dataset].folder
    prepare_output(target, kind="folder", inputs=[args.from_path], force=args.force)
    result = fetch_dataset(
        args.dataset,
        args.out,
        url=args.url,
        from_path=args.from_path,
        sha256=args.sha256,
        md5=args.md5,
        timeout=args.timeout,
    )
    print(
        f"fetched {result['dataset']} ({result['bytes']} bytes, {result['checksum']['algorithm']} "
        f"ok) into {result['folder']}; interactions: {result['ratings']}"
    )
    return {"gauges": {"bytes": result["bytes"]}, "labels": {"dataset": args.dataset}}


def describe_validate(args: argparse.Namespace) -> dict:
    """The telemetry step: raw logs and splits folders are validated by different steps."""
    return {"step": "validate_splits" if args.splits else "validate_raw"}


def run_validate(args: argparse.Namespace) -> dict:
    from diffurec.errors import DiffuRecError

    if bool(args.input) == bool(args.splits):
        raise DiffuRecError("give exactly one of --input FILE (raw log) or --splits DIR")
    from diffurec.data import validation
    from diffurec.files import prepare_output

    prepare_output(
        args.out,
        kind="folder",
        inputs=[args.input, args.splits],
        force=args.force,
        written_by=validation.REPORT_FORMAT,
    )
    if args.splits:
        if any(getattr(args, k) for k in ("format", "user_col", "item_col", "time_col", "rating_col", "sep")):
            raise DiffuRecError("reader options (--format, --*-col, --sep) apply to --input only")
        report = validation.validate_splits_folder(args.splits, args.out)
        subject = args.splits
    else:
        report = validation.validate_file(args.input, args.out, **_reader_kwargs(args))
        subject = args.input
    line = (
        f"{report['suite']}: {report['expectations_evaluated']}/{report['expectations_expected']} "
        f"expectations evaluated, {report['failed']} failed, {report['warnings']} warning(s); "
        f"report {args.out}/report.json, data docs {args.out}/data_docs/index.html"
    )
    print(line, file=sys.stdout)
    if not report["success"]:
        raise DiffuRecError(
            f"{subject}: validation failed: {validation.summarize_failures(report)} "
            f"(details in {args.out}/report.json)"
        )
    return {
        "gauges": {
            "rows_validated": report["rows_validated"],
            "rows_rejected": report["rows_rejected"],
            "expectations_evaluated": report["expectations_evaluated"],
            "expectations_failed": report["failed"],
            "expectations_warnings": report["warnings"],
        },
        "labels": {"suite": report["suite"]},
    }


def run_preprocess(args: argparse.Namespace) -> dict:
    from diffurec.data.preprocess import preprocess_file
    from diffurec.data.splits import FORMAT_NAME
    from diffurec.files import prepare_output
    from diffurec.train_settings import MAX_LENS, NOT_NEGATIVE, Range

    check_flags(args, {"max_len": MAX_LENS, "kcore": NOT_NEGATIVE, "min_rating": Range()})
    prepare_output(args.out, kind="folder", inputs=[args.input], force=args.force, written_by=FORMAT_NAME)
    stats = preprocess_file(
        args.input,
        args.out,
        max_len=args.max_len,
        min_rating=args.min_rating,
        dedup=args.dedup,
        kcore_k=args.kcore,
        **_reader_kwargs(args),
    )
    print(
        json.dumps(
            {
                k: stats[k]
                for k in ("users", "items", "interactions", "train_samples", "rows_read", "rows_dropped")
            }
        )
    )
    return {
        "gauges": {
            k: stats[k]
            for k in ("rows_read", "rows_dropped", "users", "items", "interactions", "train_samples")
        },
        "labels": {"format": stats["source"].get("format") or ""},
    }
