"""`diffurec lineage`: where a registered model version came from, read back from the registry.

lineage    NAME + VERSION (or @champion) -> git commit, image, data version, raw and splits md5,
           parameters, KFP run, registered version, gate decision, promotion
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from diffurec.cli.promotion_commands import TRACKING_HELP, _registry_errors


def register(subparsers: Any) -> None:
    """Add this group's subcommands to the `diffurec` parser."""
    parser = subparsers.add_parser(
        "lineage",
        help="print the chain of a registered version: commit, data, params, run, gate, promotion",
        description="Read a registered model version's tags and print where it came from: the git "
        "commit and image of the code, the data version, the raw data's and the splits' md5 (as in "
        "dvc.lock), the parameters, the Kubeflow run, the registered version, its gate decision "
        "(id, passed, reason) and its promotion (when, from which champion, by which decision). "
        "(`diffurec pipeline lineage` writes a run's lineage JSON instead.)",
    )
    parser.add_argument(
        "--model-name",
        "--name",
        dest="name",
        default="diffurec",
        metavar="NAME",
        help="registered model name",
    )
    parser.add_argument(
        "--version", required=True, metavar="V", help="a version number, or @ALIAS such as @champion"
    )
    parser.add_argument(
        "--tracking-uri", "--registry", dest="tracking_uri", metavar="URI", help=TRACKING_HELP
    )
    parser.add_argument("--json", action="store_true", help="print the chain as one JSON object")
    parser.set_defaults(func=_registry_errors(run_lineage), describe=describe_lineage)


def describe_lineage(args: argparse.Namespace) -> dict:
    """Its own Prometheus step: `pipeline lineage` (a pipeline step) pushes to "lineage"."""
    return {"step": "version_lineage"}


def run_lineage(args: argparse.Namespace) -> dict:
    from diffurec.lineage import format_version_lineage, version_lineage

    chain = version_lineage(args.name, args.version, args.tracking_uri)
    print(json.dumps(chain, sort_keys=True) if args.json else format_version_lineage(chain))
    return {"labels": {"version": chain["version"]}}
