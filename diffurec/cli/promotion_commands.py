"""`diffurec` subcommands for the promotion layer (see diffurec/cli/__init__.py for the contract).

    register       model folder + metrics JSON -> a new registered model version (MLflow)
    gate           candidate metrics -> decision JSON (+ tag on the version), a table of checks
    promote        move `champion` to a version whose gate passed (`previous` keeps the old one)
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

from diffurec.errors import DiffuRecError

log = logging.getLogger(__name__)

TRACKING_HELP = ("MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                 "sqlite:///runs/mlflow/mlflow.db)")


def register(subparsers) -> None:
    """Add this group's subcommands to the `diffurec` parser."""
    parser = subparsers.add_parser(
        "register",
        help="register a trained model folder and its metrics in the MLflow registry",
        description="Log a model folder (artifacts), its parameters and metrics as an MLflow run "
                    "and register it as a new version of MODEL_NAME, tagged with metrics, preset, "
                    "data version and git commit. The new version gets the alias `challenger`.")
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (diffurec train)")
    parser.add_argument("--metrics", required=True, metavar="JSON", help="its metrics (diffurec evaluate)")
    _add_registry_args(parser)
    parser.add_argument("--out", metavar="JSON", help="write {name, version, run_id, ...} here")
    parser.set_defaults(func=_registry_errors(run_register))

    parser = subparsers.add_parser(
        "gate",
        help="decide whether a candidate may be promoted (floors, popularity margin, champion)",
        description="Check a candidate's metrics against the thresholds in params.yaml (`gate:`): "
                    "absolute floors, a margin over the popularity baseline and, when a champion "
                    "exists, the allowed change against it. The champion is re-evaluated on the "
                    "candidate's split when its data version differs (needs --splits). Writes the "
                    "decision JSON, tags the model version, prints a table. Exit status 0 whether "
                    "it passed or not (the decision is data) unless --fail-on-reject.")
    parser.add_argument("--candidate", required=True, metavar="JSON", help="candidate metrics JSON")
    parser.add_argument("--baseline", metavar="JSON",
                        help="popularity baseline metrics JSON, same split (for the margin checks)")
    parser.add_argument("--params", default="params.yaml", metavar="YAML",
                        help="file with the `gate:` thresholds (default: params.yaml)")
    parser.add_argument("--out", required=True, metavar="JSON", help="where to write the decision")
    parser.add_argument("--model-name", "--name", dest="name", metavar="NAME",
                        help="registered model: compare with its champion and tag the version "
                             "(without it only the floors and margins are checked, nothing is tagged)")
    parser.add_argument("--version", help="the candidate's version (default: the latest)")
    parser.add_argument("--tracking-uri", "--registry", dest="tracking_uri", metavar="URI",
                        help=TRACKING_HELP)
    parser.add_argument("--splits", metavar="DIR",
                        help="the candidate's splits folder, to re-evaluate the champion on it "
                             "when the champion was measured on another data version")
    parser.add_argument("--fail-on-reject", action="store_true",
                        help="exit with status 2 when the gate rejects the candidate")
    parser.set_defaults(func=_registry_errors(run_gate))

    parser = subparsers.add_parser(
        "promote",
        help="move the `champion` alias to a version that passed its gate",
        description="Make VERSION the champion (the old champion becomes `previous`), under a "
                    "file lock. Refused unless the decision JSON is for this version, passed, is "
                    "the one recorded on the registry, and the champion has not moved since the "
                    "gate ran; --override --reason TEXT skips these checks and is recorded.")
    _add_registry_args(parser)
    parser.add_argument("--version", help="version to promote (default: the decision's)")
    parser.add_argument("--decision", metavar="JSON", help="the gate decision for this version")
    parser.add_argument("--override", action="store_true",
                        help="promote without a passing decision (needs --reason)")
    parser.add_argument("--reason", help="why the override (recorded on the version)")
    parser.add_argument("--if-passed", action="store_true",
                        help="when the decision did not pass, say so and exit 0 without "
                             "promoting (for pipelines that always run this step)")
    parser.add_argument("--out", metavar="JSON", help="write what was done here")
    parser.set_defaults(func=_registry_errors(run_promote))


def _registry_errors(handler):
    """Turn a failure of the MLflow store (unreachable server, bad URI) into one clear line."""
    import functools

    @functools.wraps(handler)
    def run(args):
        try:
            return handler(args)
        except DiffuRecError:
            raise
        except Exception as error:
            if type(error).__module__.split(".")[0] not in ("mlflow", "requests", "urllib3", "sqlalchemy"):
                raise
            from diffurec import registry

            text = str(error).strip().splitlines()
            raise DiffuRecError(f"MLflow store {registry.resolve_tracking_uri(args.tracking_uri)}: "
                                f"{text[0] if text else type(error).__name__}") from error
    return run


def _add_registry_args(parser) -> None:
    parser.add_argument("--model-name", "--name", dest="name", default="diffurec", metavar="NAME",
                        help="registered model name (default: diffurec)")
    parser.add_argument("--tracking-uri", "--registry", dest="tracking_uri", metavar="URI",
                        help=TRACKING_HELP)


def run_register(args) -> dict:
    from diffurec import registry

    result = registry.register_model_folder(args.model, args.metrics, args.name, args.tracking_uri)
    if args.out:
        write_json_atomic(args.out, result)
    print(f"registered {result['name']} v{result['version']} (run {result['run_id']}) "
          f"in {result['tracking_uri']}")
    return {"gauges": {"registered_version": float(result["version"])},
            "labels": {"model": result["name"], "version": result["version"]}}


def run_gate(args) -> dict:
    from diffurec import gate

    thresholds = gate.load_thresholds(args.params)
    candidate = gate.read_metrics(args.candidate)
    baseline = gate.read_metrics(args.baseline) if args.baseline else None
    name = version = champion = None
    mlflow_client = None
    if args.name:
        from diffurec import registry

        mlflow_client = registry.client(args.tracking_uri)
        target = registry.get_version(args.name, version=args.version, mlflow_client=mlflow_client)
        name, version = args.name, target["version"]
        if target["metrics"] and not _same_metrics(target["metrics"], candidate["metrics"]):
            raise DiffuRecError(f"{args.candidate}: these metrics are not the ones registered "
                                f"with {name} v{version}; pass the matching --version")
        champion = champion_for(args.name, candidate, args.splits, mlflow_client, args.tracking_uri)

    decision = gate.decide(candidate, thresholds, baseline=baseline, champion=champion)
    decision = {"passed": decision.pop("passed"), "name": name, "version": version,
                "decision_id": uuid.uuid4().hex,
                "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "params": str(args.params), **decision}
    write_json_atomic(args.out, decision)
    if name is not None:
        # Tag after the JSON is written: promote needs both, so an interrupted gate promotes nothing.
        from diffurec import registry

        registry.set_version_tags(name, version, {
            "gate_passed": str(decision["passed"]).lower(),
            "gate_decision_id": decision["decision_id"],
            "gate_decided_at": decision["decided_at"],
            "gate_reason": decision["reason"][:4000],
            "gate_checks": json.dumps([{k: c[k] for k in ("name", "value", "threshold", "passed")}
                                       for c in decision["checks"]])[:5000],
        }, mlflow_client=mlflow_client)
    print(gate.format_table(decision))
    print(f"decision written to {args.out}")

    gauges = {"gate_passed": 1.0 if decision["passed"] else 0.0,
              "gate_checks_failed": float(len(decision["failed"])),
              "gate_checks": float(len(decision["checks"]))}
    for check in decision["checks"]:
        gauges[f"candidate_{check['metric']}"] = candidate["metrics"][check["metric"]]
        if check["kind"] == "change_vs_champion":
            gauges[f"champion_{check['metric']}"] = check["reference"]
            old = check["reference"]
            if old > 0:
                gauges[f"relative_change_vs_champion_{check['metric']}"] = \
                    (candidate["metrics"][check["metric"]] - old) / old
    labels = {"model": name or (candidate.get("model") or {}).get("name"), "version": version}
    if args.fail_on_reject and not decision["passed"]:
        raise DiffuRecError(f"gate rejected {name or 'the candidate'}"
                            f"{' v' + version if version else ''}: {decision['reason']}")
    return {"gauges": gauges, "labels": labels}


def champion_for(name: str, candidate: dict, splits_dir: str | None, mlflow_client,
                 tracking_uri: str | None) -> dict | None:
    """The current champion's metrics on the candidate's users, or None when there is none."""
    from diffurec import gate, registry

    current = registry.get_version(name, alias="champion", mlflow_client=mlflow_client)
    if current is None:
        return None
    champion = {"version": current["version"], "metrics": current["metrics"],
                "split": current["split"], "users": current["users"],
                "data_version": current["data_version"], "re_evaluated": False}
    registered = {"split": current["split"], "users": current["users"],
                  "lineage": {"splits_md5": current["data_version"]}}
    if gate.same_users(registered, candidate):
        return champion
    if not splits_dir:
        raise DiffuRecError(
            f"champion {name} v{current['version']} was measured on data version "
            f"{current['data_version']} ({current['split']}, {current['users']} users), the candidate "
            f"on {gate.data_version(candidate)} ({candidate.get('split')}, {candidate.get('users')} "
            f"users): pass --splits DIR (the candidate's splits) to re-evaluate the champion")
    folder = registry.load_model_folder(f"models:/{name}/{current['version']}",
                                        tracking_uri=tracking_uri)
    result = reevaluate(folder, splits_dir, candidate)
    log.info("re-evaluated champion v%s on %s: %s", current["version"], splits_dir, result["metrics"])
    champion.update(metrics=result["metrics"], split=result.get("split"), users=result.get("users"),
                    data_version=gate.data_version(candidate), re_evaluated=True,
                    registered_metrics=current["metrics"])
    return champion


def reevaluate(model_dir: Path, splits_dir: str, candidate: dict) -> dict:
    """Evaluate a model folder on a splits folder with the candidate's evaluation settings."""
    from diffurec import gate
    from diffurec.data.splits import load_splits
    from diffurec.evaluate import evaluate
    from diffurec.model_folder import load_model_folder

    splits = load_splits(splits_dir)
    if candidate.get("users") is not None and splits.num_users != candidate["users"]:
        raise DiffuRecError(f"{splits_dir}: {splits.num_users} users, but the candidate was "
                            f"evaluated on {candidate['users']}: not the candidate's splits")
    expected = gate.data_version(candidate)
    if expected:
        from diffurec.lineage import data_md5

        found = data_md5(splits_dir)
        if found != expected:
            raise DiffuRecError(f"{splits_dir}: data version {found}, but the candidate was "
                                f"evaluated on {expected}: not the candidate's splits")
    model = load_model_folder(model_dir)
    model = model[0] if isinstance(model, tuple) else model
    settings = candidate.get("settings") or {}
    options = {key: settings[key] for key in ("mask_history", "reverse_steps", "batch_size", "seed")
               if settings.get(key) is not None}
    return evaluate(model, splits, split=candidate.get("split", "test"), **options)


def _same_metrics(a: dict, b: dict) -> bool:
    return all(abs(float(a[key]) - float(b[key])) <= 1e-9 for key in a if key in b)


def run_promote(args) -> dict:
    from diffurec import promote

    version = args.version
    if version is None and args.decision:
        version = promote.read_decision(args.decision).get("version")
    if version is None:
        raise DiffuRecError("which version? pass --version (or --decision with a registered version)")
    if args.if_passed and not args.override:
        if not args.decision:
            raise DiffuRecError("--if-passed needs --decision JSON")
        decision = promote.read_decision(args.decision)
        if not decision["passed"]:
            message = (f"not promoted: gate rejected {args.name} v{version} "
                       f"({decision.get('reason', 'see the decision')})")
            if args.out:
                write_json_atomic(args.out, {"name": args.name, "version": str(version),
                                             "promoted": False, "message": message})
            print(message)
            return {"gauges": {"promoted": 0.0}, "labels": {"model": args.name, "version": str(version)}}
    result = promote.promote(args.name, str(version), args.decision, args.tracking_uri,
                             override=args.override, reason=args.reason)
    if args.out:
        write_json_atomic(args.out, result)
    print(result["message"])
    return {"gauges": {"promoted": 1.0 if result["promoted"] else 0.0,
                       "champion_version": float(result["champion"]),
                       "promotion_override": 1.0 if args.override else 0.0},
            "labels": {"model": args.name, "version": str(version)}}


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON through a temp file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(temp, path)
