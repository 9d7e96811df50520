"""`diffurec` subcommands for the promotion layer (see diffurec/cli/__init__.py for the contract).

register       model folder + metrics JSON -> a new registered model version (MLflow)
gate           candidate metrics -> decision JSON (+ tag on the version), a table of checks
promote        move `champion` to a version whose gate passed (`previous` keeps the old one)
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

from diffurec.cli import add_force, check_flags
from diffurec.errors import DiffuRecError
from diffurec.prometheus import DEFAULT_DEADLINE_SECONDS, URL_ENV

Handler = Callable[[argparse.Namespace], dict]

TRACKING_HELP = (
    "MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow/mlflow.db)"
)


def register(subparsers: Any) -> None:
    """Add this group's subcommands to the `diffurec` parser."""
    parser = subparsers.add_parser(
        "register",
        help="register a trained model folder and its metrics in the MLflow registry",
        description="Log a model folder (artifacts), its parameters and metrics as an MLflow run "
        "and register it as a new version of MODEL_NAME, tagged with metrics, preset, "
        "data version and git commit. The new version gets the alias `challenger`.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (diffurec train)")
    parser.add_argument("--metrics", required=True, metavar="JSON", help="its metrics (diffurec evaluate)")
    _add_registry_args(parser)
    parser.add_argument("--out", metavar="JSON", help="write {name, version, run_id, ...} here")
    add_force(parser, "a file that is not a JSON object")
    parser.set_defaults(func=_registry_errors(run_register))

    parser = subparsers.add_parser(
        "gate",
        help="decide whether a candidate may be promoted (floors, popularity margin, champion)",
        description="Check a candidate's metrics against the thresholds in params.yaml (`gate:`, "
        "or --thresholds JSON): "
        "absolute floors, a margin over the popularity baseline and, when a champion "
        "exists, the allowed change against it. The champion is re-evaluated on the "
        "candidate's split when its data version differs (needs --splits). The PromQL "
        "checks of `gate.prometheus` are asked of Prometheus (--prometheus); when it cannot be "
        "reached the gate fails closed (exit 2, nothing written) unless "
        "--allow-unreachable-prometheus. Writes the "
        "decision JSON, tags the model version, prints a table. Exit status 0 whether "
        "it passed or not (the decision is data) unless --fail-on-reject.",
    )
    parser.add_argument("--candidate", required=True, metavar="JSON", help="candidate metrics JSON")
    parser.add_argument(
        "--baseline",
        metavar="JSON",
        help="popularity baseline metrics JSON, same split (for the margin checks)",
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        metavar="YAML",
        help="file with the configured `gate:` thresholds (default: params.yaml)",
    )
    parser.add_argument(
        "--thresholds",
        metavar="JSON",
        help="override: these thresholds (a JSON `gate:` section) instead of the configured ones; "
        "needs --override-reason and --override-by, recorded in the decision and the registry",
    )
    parser.add_argument("--override-reason", metavar="TEXT", help="why --thresholds overrides the configured")
    parser.add_argument("--override-by", metavar="WHO", help="who decided the --thresholds override")
    parser.add_argument(
        "--candidate-ranks",
        metavar="NPZ",
        help="the candidate's per-user ranks (default: the metrics JSON's ranks_file, beside it)",
    )
    parser.add_argument("--out", required=True, metavar="JSON", help="where to write the decision")
    add_force(parser, "a file that is not a JSON object")
    parser.add_argument(
        "--model-name",
        "--name",
        dest="name",
        metavar="NAME",
        help="registered model: compare with its champion and tag the version "
        "(without it only the floors and margins are checked, nothing is tagged)",
    )
    parser.add_argument("--version", help="the candidate's version (default: the latest)")
    parser.add_argument(
        "--tracking-uri", "--registry", dest="tracking_uri", metavar="URI", help=TRACKING_HELP
    )
    parser.add_argument(
        "--splits",
        metavar="DIR",
        help="the candidate's splits folder, to re-evaluate the champion on it "
        "when the champion was measured on another data version",
    )
    parser.add_argument(
        "--prometheus",
        metavar="URL",
        help=f"Prometheus for the `gate.prometheus` checks, e.g. http://127.0.0.1:9090 (default: ${URL_ENV})",
    )
    parser.add_argument(
        "--prometheus-timeout",
        type=float,
        default=DEFAULT_DEADLINE_SECONDS,
        metavar="SECONDS",
        help="total time allowed for each Prometheus query (default: %(default)g)",
    )
    parser.add_argument(
        "--allow-unreachable-prometheus",
        action="store_true",
        help="when Prometheus cannot be reached (or no URL is set), decide without its checks "
        "and record them as skipped, instead of failing",
    )
    parser.add_argument(
        "--fail-on-reject", action="store_true", help="exit with status 2 when the gate rejects the candidate"
    )
    parser.set_defaults(func=_registry_errors(run_gate))

    parser = subparsers.add_parser(
        "promote",
        help="move the `champion` alias to a version that passed its gate",
        description="Make VERSION the champion (the old champion becomes `previous`), under a "
        "lock held in the MLflow store (exclusive across machines) and a file lock. Refused "
        "unless the decision JSON is for this version, passed, is "
        "the one recorded on the registry, and the champion has not moved since the "
        "gate ran; --override --reason TEXT skips these checks and is recorded. An earlier "
        "promotion killed half-way is completed first.",
    )
    _add_registry_args(parser)
    parser.add_argument("--version", help="version to promote (default: the decision's)")
    parser.add_argument("--decision", metavar="JSON", help="the gate decision for this version")
    parser.add_argument(
        "--override", action="store_true", help="promote without a passing decision (needs --reason)"
    )
    parser.add_argument("--reason", help="why the override (recorded on the version)")
    parser.add_argument(
        "--if-passed",
        action="store_true",
        help="when the decision did not pass, say so and exit 0 without "
        "promoting (for pipelines that always run this step)",
    )
    parser.add_argument("--out", metavar="JSON", help="write what was done here")
    add_force(parser, "a file that is not a JSON object")
    parser.set_defaults(func=_registry_errors(run_promote))


def _registry_errors(handler: Handler) -> Handler:
    """Turn a failure of the MLflow store (unreachable server, bad URI) into one clear line."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> dict:
        try:
            return handler(args)
        except DiffuRecError:
            raise
        except Exception as error:
            if type(error).__module__.split(".")[0] not in ("mlflow", "requests", "urllib3", "sqlalchemy"):
                raise
            from diffurec import registry

            text = str(error).strip().splitlines()
            raise DiffuRecError(
                f"MLflow store {registry.resolve_tracking_uri(args.tracking_uri)}: "
                f"{text[0] if text else type(error).__name__}"
            ) from error

    return run


def _add_registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-name",
        "--name",
        dest="name",
        default="diffurec",
        metavar="NAME",
        help="registered model name (default: diffurec)",
    )
    parser.add_argument(
        "--tracking-uri", "--registry", dest="tracking_uri", metavar="URI", help=TRACKING_HELP
    )


def run_register(args: argparse.Namespace) -> dict:
    from diffurec import registry
    from diffurec.files import prepare_output, write_json_atomic

    if args.out:
        prepare_output(
            args.out, kind="file", inputs=[args.model, args.metrics], force=args.force, written_by="json"
        )
    result = registry.register_model_folder(args.model, args.metrics, args.name, args.tracking_uri)
    if args.out:
        write_json_atomic(args.out, result)
    print(
        f"registered {result['name']} v{result['version']} (run {result['run_id']}) "
        f"in {result['tracking_uri']}"
    )
    return {
        "gauges": {"registered_version": float(result["version"])},
        "labels": {"version": result["version"]},
    }


def run_gate(args: argparse.Namespace) -> dict:
    from diffurec import gate
    from diffurec.files import prepare_output
    from diffurec.train_settings import POSITIVE

    check_flags(args, {"prometheus_timeout": POSITIVE})
    inputs = [args.candidate, args.baseline, args.splits, args.params]
    prepare_output(args.out, kind="file", inputs=inputs, force=args.force, written_by="json")
    thresholds, params, override = gate.resolve_thresholds(
        args.params, args.thresholds, args.override_reason, args.override_by
    )
    decision = gate.gate_candidate(
        args.candidate,
        thresholds,
        args.out,
        params=params,
        baseline_path=args.baseline,
        name=args.name,
        version=args.version,
        splits_dir=args.splits,
        tracking_uri=args.tracking_uri,
        prometheus_url=args.prometheus,
        allow_unreachable_prometheus=args.allow_unreachable_prometheus,
        prometheus_deadline=args.prometheus_timeout,
        override=override,
        candidate_ranks=args.candidate_ranks,
    )
    print(gate.format_table(decision))
    print(f"decision written to {args.out}")
    name, version = decision["name"], decision["version"]
    if args.fail_on_reject and not decision["passed"]:
        raise DiffuRecError(
            f"gate rejected {name or 'the candidate'}"
            f"{' v' + version if version else ''}: {decision['reason']}"
        )
    return {"gauges": gate.decision_gauges(decision), "labels": {"version": version}}


def run_promote(args: argparse.Namespace) -> dict:
    from diffurec import promote
    from diffurec.files import prepare_output, write_json_atomic

    if args.out:
        prepare_output(args.out, kind="file", inputs=[args.decision], force=args.force, written_by="json")
    result = promote.promote(
        args.name,
        args.version,
        args.decision,
        args.tracking_uri,
        override=args.override,
        reason=args.reason,
        if_passed=args.if_passed,
    )
    if args.out:
        write_json_atomic(args.out, result)
    print(result["message"])
    return {
        "gauges": promote.promotion_gauges(result, args.override),
        "labels": {"version": result["version"]},
    }
