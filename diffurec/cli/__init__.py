"""The `diffurec` command: parses arguments and calls the library, nothing more.

Each group of subcommands lives in its own module with a `register(subparsers)` function:
the library's own groups are listed in COMMAND_MODULES; other installed packages add groups
through the `diffurec.commands` entry point (the `pipeline` group comes from the project's
`pipelines` package that way, so the library never imports it).
A subcommand's handler takes the parsed arguments and may return a dict
{"gauges": {name: value}, "labels": {name: value}} that is pushed to Prometheus with the
step's duration and outcome (diffurec/telemetry.py), and an "exit_status" (default 0).
A parser may also set a `describe` default: describe(args) -> {"step": name, "labels": {...}},
computed before the handler runs, so that a failed run is pushed to the same step and model
as a successful one would be.
A DiffuRecError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from diffurec import __version__
from diffurec.errors import DiffuRecError

if TYPE_CHECKING:
    from diffurec.train_settings import Range

COMMAND_MODULES = (
    "diffurec.cli.data_commands",
    "diffurec.cli.data_version_commands",
    "diffurec.cli.distributed_commands",
    "diffurec.cli.lineage_commands",
    "diffurec.cli.model_commands",
    "diffurec.cli.promotion_commands",
)
ENTRY_POINT_GROUP = "diffurec.commands"

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffurec",
        description="Train, evaluate and promote DiffuRec sequential recommenders.",
    )
    parser.add_argument("--version", action="version", version=f"diffurec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        entry_point.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    started = time.perf_counter()
    described = _describe(args)
    result, succeeded, status = None, False, EXIT_ERROR
    try:
        result = args.func(args) or {}
        # A handler may end with another status (pipeline submit: the run failed, the gate rejected).
        status = int(result.get("exit_status", 0))
        succeeded = status == 0
    except DiffuRecError as error:
        print(f"diffurec {args.command}: error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"diffurec {args.command}: interrupted", file=sys.stderr)
        status = 130
    finally:
        from diffurec import telemetry

        result = result or {}
        telemetry.report_step(
            described.get("step") or args.command,
            time.perf_counter() - started,
            succeeded,
            gauges=result.get("gauges", {}),
            labels={**described.get("labels", {}), **result.get("labels", {})},
        )
    return status


def add_force(parser: argparse.ArgumentParser, replaces: str | None) -> None:
    """The --force flag every command with --out has (diffurec.files.prepare_output); `replaces`:
    what it lets --out replace (None: nothing more, the output is replaced anyway)."""
    text = f"replace --out even when it is {replaces}" if replaces else "replace --out (it is anyway)"
    parser.add_argument(
        "--force", action="store_true", help=f"{text}; never an input or a folder holding one"
    )


def check_flags(args: argparse.Namespace, ranges: dict[str, Range]) -> None:
    """Check the numeric flags `ranges` names (argparse dests) that were given: one line naming
    the flag for a value out of its range."""
    for dest, allowed in ranges.items():
        value = getattr(args, dest)
        if value is not None:
            allowed.check(value, "--" + dest.replace("_", "-"))


def _describe(args: argparse.Namespace) -> dict[str, Any]:
    """The step name and labels the parser's `describe` finds in the arguments ({} without one).
    A describe that fails leaves the defaults: the handler reports the same problem properly."""
    describe = getattr(args, "describe", None)
    if describe is None:
        return {}
    try:
        return dict(describe(args))
    except Exception:  # noqa: BLE001 (labels are best effort; the handler raises the real error)
        return {}


if __name__ == "__main__":
    sys.exit(main())
