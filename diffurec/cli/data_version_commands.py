"""`diffurec data ...`: data versions (diffurec/data/remote.py).

    data resolve  a git revision -> the raw log's path and md5 in that revision's dvc.lock
    data pull     the raw log with an md5 from the DVC remote (local folder or S3), md5 checked
    data add      put your own interaction log under DVC control as the pipeline's raw input

See diffurec/cli/__init__.py for the contract. Library imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from diffurec.cli import add_force, check_flags


# The telemetry step of each subcommand (monitoring/README.md): `data pull` is the pipeline's
# fetch step, whichever way it gets the raw log.
DATA_STEPS = {"resolve": "resolve_data", "pull": "fetch_raw", "add": "data_add"}


def register(subparsers: Any) -> None:
    """Add the `data` group to the `diffurec` parser."""
    group = subparsers.add_parser(
        "data",
        help="data versions: resolve a git revision, pull by md5, add your own log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    group.set_defaults(describe=describe_data)

    resolve = commands.add_parser(
        "resolve",
        help="the raw log (path, md5) of a data version: a git revision's dvc.lock",
        description="Read dvc.lock at a git revision of the repository and print (or write "
        "with --out) the raw stage's output as JSON: data_version, commit, path, md5, size. "
        "With --source the run uses that file (its md5) or the official download "
        "('official') instead of a version.",
    )
    resolve.add_argument("--rev", default="HEAD", help="git revision: commit, tag or branch (default: HEAD)")
    resolve.add_argument(
        "--repo",
        metavar="PATH_OR_URL",
        help="the repository: a checkout or a git URL (default: $DIFFUREC_GIT_REPO, else the current folder)",
    )
    resolve.add_argument("--source", default="", help="a raw log path, or 'official' (default: none)")
    resolve.add_argument(
        "--deadline", type=float, default=600.0, help="seconds for a clone at most (default 600)"
    )
    resolve.add_argument("--out", metavar="JSON", help="write the JSON here (default: print it)")
    add_force(resolve, "a file that is not a JSON object")
    resolve.set_defaults(func=run_resolve)

    pull = commands.add_parser(
        "pull",
        help="copy the object with an md5 from the DVC remote, md5 checked",
        description="Read files/md5/XX/YYYY from the DVC remote ($DIFFUREC_DVC_REMOTE_URL with "
        "$DIFFUREC_S3_ENDPOINT_URL and the AWS_* credentials, else the repository's "
        "default remote) into OUT, atomically, and check its md5.",
    )
    pull.add_argument("--md5", required=True, help="the raw log's md5 (from `diffurec data resolve`)")
    pull.add_argument("--out", required=True, metavar="FILE", help="where to write the raw log")
    add_force(pull, None)
    pull.add_argument("--repo", metavar="DIR", help="repository whose default remote to use (default: here)")
    pull.add_argument("--remote", metavar="NAME", help="a remote of that repository's .dvc/config by name")
    pull.add_argument(
        "--deadline", type=float, default=600.0, help="seconds for the whole copy at most (default 600)"
    )
    pull.set_defaults(func=run_pull)

    add = commands.add_parser(
        "add",
        help="put an interaction log under DVC control as the raw input, and push it",
        description="Copy FILE to data/sources/, `dvc add` it, point params.yaml's data.source "
        "(and data.raw) at it, re-run the raw stage so dvc.lock names its md5, and "
        "`dvc push`. Then commit the files it lists and push: that commit is the new "
        "data version (and triggers retraining in CI).",
    )
    add.add_argument(
        "file", metavar="FILE", help="the interaction log (any format `diffurec validate` reads)"
    )
    add.add_argument("--repo", metavar="DIR", default=".", help="the repository (default: here)")
    add.add_argument("--remote", metavar="NAME", help="push to this DVC remote (default: the default remote)")
    add.add_argument("--no-push", action="store_true", help="do not `dvc push`")
    add.set_defaults(func=run_add)


def describe_data(args: argparse.Namespace) -> dict[str, Any]:
    """The telemetry step of a `data` subcommand."""
    return {"step": DATA_STEPS[args.data_command]}


def run_resolve(args: argparse.Namespace) -> dict[str, Any]:
    from diffurec.data.remote import resolve_data
    from diffurec.files import prepare_output, write_json_atomic
    from diffurec.train_settings import POSITIVE

    check_flags(args, {"deadline": POSITIVE})
    if args.out:
        prepare_output(args.out, kind="file", inputs=[args.repo], force=args.force, written_by="json")

    found = resolve_data(args.rev, source=args.source, repo=args.repo, deadline_s=args.deadline)
    if args.out:
        write_json_atomic(args.out, found, sort_keys=True)
        print(f"data version {found['data_version'] or found['source']}: {found['path']} md5 {found['md5']}")
    else:
        print(json.dumps(found, sort_keys=True))
    return {}


def run_pull(args: argparse.Namespace) -> dict[str, Any]:
    from diffurec.data.remote import pull_raw, remote_settings
    from diffurec.files import prepare_output
    from diffurec.train_settings import POSITIVE

    check_flags(args, {"deadline": POSITIVE})
    prepare_output(args.out, kind="file", inputs=[], force=args.force)

    settings = remote_settings(args.repo, args.remote) if args.repo or args.remote else None
    found = pull_raw(args.md5, args.out, remote=settings, deadline_s=args.deadline)
    print(f"raw log {found['path']} (md5 {found['md5']} checked) from {found['remote']}")
    return {"gauges": {"raw_bytes": float(found["bytes"])}}


def run_add(args: argparse.Namespace) -> dict[str, Any]:
    from diffurec.data.remote import add_raw

    found = add_raw(args.file, repo=args.repo, push=not args.no_push, remote=args.remote)
    print(f"{found['source']} is the raw input now: {found['raw']} md5 {found['md5']}")
    print(f"{'pushed to the DVC remote; ' if found['pushed'] else ''}commit the new data version:")
    print(f"  git add {' '.join(found['to_commit'])}")
    print(f"  git commit -m 'data: {found['source']} (md5 {found['md5']})' && git push")
    return {}
