"""The promotion gate: explicit, explainable checks a candidate must pass to become champion.

Thresholds live in params.yaml under `gate:` (metric values are percent, as in metrics JSON):

    gate:
      min:                          # absolute floors: candidate >= value
        HR@10: 3.0
        NDCG@10: 1.5
      min_margin_over_popularity:   # candidate - popularity baseline >= value (percent points)
        NDCG@10: 0.0
      max_drop_vs_champion:         # change against the current champion, higher is better
        NDCG@10: {relative: 0.02}   #   candidate >= champion * (1 - 0.02)
        HR@10: {absolute: 0.5}      #   candidate >= champion - 0.5 percent points
                                    #   (a negative drop demands an improvement)

Floors and the popularity margin always apply; the champion checks apply only when a champion
exists, so with no champion yet the floors alone decide. The champion must have been measured
on the same users as the candidate (same split of the same data version); `decide` refuses to
compare otherwise, and `gate_candidate` re-evaluates the champion first (diffurec.champion).

`decide` is pure: metrics in, decision dict out (docs/formats.md, "Gate decision JSON").
`gate_candidate` is the whole step: read the metrics, find the champion, decide, stamp the
decision (id, time, version), write it, then tag the registered version with it.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path

from diffurec.errors import DiffuRecError, located
from diffurec.files import read_json_object, read_params, write_json_atomic
from diffurec.metrics import METRIC_KEYS

THRESHOLD_SECTIONS = ("min", "min_margin_over_popularity", "max_drop_vs_champion")
DROP_KINDS = ("relative", "absolute")


def load_thresholds(params_path: str | Path) -> dict:
    """Read and check the `gate:` section of params.yaml."""
    path = Path(params_path)
    params = read_params(path)
    if "gate" not in params:
        raise located(path, "no `gate:` section (thresholds for the promotion gate)")
    return check_thresholds(params["gate"], source=f"{path}: gate")


def parse_thresholds(text: str, source: str = "--thresholds") -> dict:
    """Thresholds given as a JSON object (the `gate:` section), checked as load_thresholds does."""
    try:
        gate = json.loads(text)
    except json.JSONDecodeError as error:
        raise DiffuRecError(f"{source}: not valid JSON ({error.msg}, column {error.colno})") from None
    return check_thresholds(gate, source=source)


def check_thresholds(gate: object, source: str = "gate") -> dict:
    """Validate a thresholds dict; return it with every value as float."""
    if not isinstance(gate, dict):
        raise DiffuRecError(f"{source}: expected a mapping with keys {', '.join(THRESHOLD_SECTIONS)}")
    unknown = set(gate) - set(THRESHOLD_SECTIONS)
    if unknown:
        raise DiffuRecError(
            f"{source}: unknown key {sorted(unknown)[0]!r} (expected {', '.join(THRESHOLD_SECTIONS)})"
        )
    checked: dict = {}
    for section in THRESHOLD_SECTIONS:
        entries = gate.get(section) or {}
        if not isinstance(entries, dict):
            raise DiffuRecError(f"{source}.{section}: expected a mapping metric -> threshold")
        checked[section] = {}
        for metric, threshold in entries.items():
            where = f"{source}.{section}.{metric}"
            if metric not in METRIC_KEYS:
                raise DiffuRecError(f"{where}: unknown metric (expected one of {', '.join(METRIC_KEYS)})")
            if section == "max_drop_vs_champion":
                if (
                    not isinstance(threshold, dict)
                    or len(threshold) != 1
                    or next(iter(threshold)) not in DROP_KINDS
                ):
                    raise DiffuRecError(f"{where}: expected {{relative: FRACTION}} or {{absolute: POINTS}}")
                kind, value = next(iter(threshold.items()))
                checked[section][metric] = {kind: _number(value, f"{where}.{kind}")}
            else:
                checked[section][metric] = _number(threshold, where)
    return checked


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DiffuRecError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def read_metrics(path: str | Path) -> dict:
    """Read a metrics JSON (docs/formats.md) and check the fields the gate relies on."""
    path = Path(path)
    data = read_json_object(path, "metrics file not found")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        raise located(path, "no `metrics` object (expected the output of `diffurec evaluate`)")
    for key in METRIC_KEYS:
        if key not in metrics:
            raise located(path, f"metrics has no {key!r}")
        _number(metrics[key], f"{path}: metrics.{key}")
    if data.get("unit", "percent") != "percent":
        raise located(path, f"unit is {data.get('unit')!r}, expected 'percent'")
    return data


def data_version(metrics_json: dict) -> str | None:
    """The data version a metrics JSON was measured on: its splits folder's md5."""
    return (metrics_json.get("lineage") or {}).get("splits_md5")


def same_users(a: dict, b: dict) -> bool:
    """True when two metrics JSONs were measured on the same users (split + data version)."""
    return (
        a.get("split") == b.get("split")
        and data_version(a) is not None
        and data_version(a) == data_version(b)
        and a.get("users") == b.get("users")
    )


def decide(
    candidate: dict, thresholds: dict, baseline: dict | None = None, champion: dict | None = None
) -> dict:
    """Run every check; return {"passed", "checks", "candidate", "champion", ...}.

    candidate, baseline: metrics JSON dicts. champion: {"version": str, "metrics": {...},
    "split", "users", "data_version", "re_evaluated": bool} or None (no champion yet).
    """
    thresholds = check_thresholds(thresholds)
    values = candidate["metrics"]
    checks = []
    for metric, floor in thresholds["min"].items():
        checks.append(_check(f"floor {metric}", "floor", metric, values[metric], floor))

    margins = thresholds["min_margin_over_popularity"]
    if margins:
        if baseline is None:
            raise DiffuRecError(
                "the gate has min_margin_over_popularity thresholds: "
                "pass the popularity baseline's metrics (--baseline)"
            )
        if (
            baseline.get("split") != candidate.get("split")
            or baseline.get("users") != candidate.get("users")
            or (
                data_version(baseline)
                and data_version(candidate)
                and data_version(baseline) != data_version(candidate)
            )
        ):
            raise DiffuRecError(
                f"the baseline was measured on other users than the candidate "
                f"(split {baseline.get('split')!r}/{candidate.get('split')!r}, users "
                f"{baseline.get('users')}/{candidate.get('users')}, data version "
                f"{data_version(baseline)}/{data_version(candidate)})"
            )
        for metric, margin in margins.items():
            checks.append(
                _check(
                    f"margin over popularity {metric}",
                    "margin_over_popularity",
                    metric,
                    values[metric] - baseline["metrics"][metric],
                    margin,
                    reference=baseline["metrics"][metric],
                )
            )

    drops = thresholds["max_drop_vs_champion"]
    if champion is not None and drops:
        for metric, rule in drops.items():
            old = float(champion["metrics"][metric])
            ((kind, allowed),) = rule.items()
            name = f"change vs champion v{champion['version']} {metric} ({kind})"
            if kind == "absolute":
                checks.append(
                    _check(
                        name,
                        "change_vs_champion",
                        metric,
                        values[metric] - old,
                        -allowed,
                        reference=old,
                        unit="points",
                    )
                )
            elif old > 0:
                checks.append(
                    _check(
                        name,
                        "change_vs_champion",
                        metric,
                        (values[metric] - old) / old,
                        -allowed,
                        reference=old,
                        unit="fraction",
                    )
                )
            else:  # a zero champion: any candidate >= 0 keeps up, a relative change is undefined
                checks.append(
                    _check(
                        name,
                        "change_vs_champion",
                        metric,
                        values[metric] - old,
                        0.0,
                        reference=old,
                        unit="points",
                    )
                )

    failed = [check["name"] for check in checks if not check["passed"]]
    return {
        "passed": not failed,
        "checks": checks,
        "failed": failed,
        "reason": _reason(checks, failed, champion),
        "candidate": {
            key: candidate.get(key) for key in ("metrics", "split", "users", "model", "settings", "lineage")
        },
        "baseline": None
        if baseline is None
        else {key: baseline.get(key) for key in ("metrics", "split", "users", "model")},
        "champion": champion,
        "thresholds": thresholds,
    }


def _check(
    name: str,
    kind: str,
    metric: str,
    value: float,
    threshold: float,
    reference: float | None = None,
    unit: str = "points",
) -> dict:
    check = {
        "name": name,
        "kind": kind,
        "metric": metric,
        "value": round(float(value), 6),
        "threshold": float(threshold),
        "passed": bool(value >= threshold),
        "unit": unit,
    }
    if reference is not None:
        check["reference"] = float(reference)
    return check


def _reason(checks: list[dict], failed: list[str], champion: dict | None) -> str:
    if not checks:
        return "no checks configured: passed by default"
    scope = (
        "floors only (no champion yet)" if champion is None else f"against champion v{champion['version']}"
    )
    if failed:
        return f"rejected: {len(failed)} of {len(checks)} checks failed ({'; '.join(failed)}), {scope}"
    return f"passed all {len(checks)} checks, {scope}"


def format_table(decision: dict) -> str:
    """The decision as a readable table (what `diffurec gate` prints)."""
    candidate = decision["candidate"]
    model = candidate.get("model") or {}
    title = f"gate: candidate {decision.get('name') or model.get('name', '?')}"
    if decision.get("version"):
        title += f" v{decision['version']}"
    title += (
        f" ({model.get('name', '?')}/{model.get('preset') or '-'}, {candidate.get('split')} split, "
        f"{candidate.get('users')} users)"
    )
    champion = decision["champion"]
    if champion is None:
        title += " | no champion yet: floors decide"
    else:
        title += f" | champion v{champion['version']}"
        if champion.get("re_evaluated"):
            title += " (re-evaluated on the candidate's split)"
    rows = [("check", "value", "threshold", "result")]
    for check in decision["checks"]:
        rows.append(
            (
                check["name"],
                _show(check["value"], check),
                ">= " + _show(check["threshold"], check),
                "pass" if check["passed"] else "FAIL",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [title]
    for row in rows:
        lines.append(
            "  "
            + "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
    verdict = "PASSED" if decision["passed"] else "REJECTED"
    lines.append(f"decision: {verdict} - {decision['reason']}")
    return "\n".join(lines)


def _show(value: float, check: dict) -> str:
    if check["unit"] == "fraction":
        return f"{value * 100:+.2f}%"
    if check["kind"] == "floor":
        return f"{value:.3f}"
    return f"{value:+.3f}"


def stamp_decision(decision: dict, name: str | None, version: str | None, params: str | None) -> dict:
    """`decide`'s result as written and recorded: `passed` first, then the registered version it
    is about (or None), a fresh decision_id, decided_at (UTC) and the thresholds' file."""
    return {
        "passed": decision["passed"],
        "name": name,
        "version": version,
        "decision_id": uuid.uuid4().hex,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": params,
        **{key: value for key, value in decision.items() if key != "passed"},
    }


def decision_tags(decision: dict) -> dict[str, str]:
    """The tags a decision leaves on its model version; promote checks gate_decision_id."""
    checks = [
        {key: check[key] for key in ("name", "value", "threshold", "passed")} for check in decision["checks"]
    ]
    return {
        "gate_passed": str(decision["passed"]).lower(),
        "gate_decision_id": decision["decision_id"],
        "gate_decided_at": decision["decided_at"],
        "gate_reason": decision["reason"][:4000],  # MLflow caps a tag's value
        "gate_checks": json.dumps(checks)[:5000],
    }


def decision_gauges(decision: dict) -> dict[str, float]:
    """The gate's Prometheus gauges: outcome, check counts, the candidate's checked metrics and,
    against a champion, its value and the relative change."""
    gauges = {
        "gate_passed": 1.0 if decision["passed"] else 0.0,
        "gate_checks_failed": float(len(decision["failed"])),
        "gate_checks": float(len(decision["checks"])),
    }
    values = decision["candidate"]["metrics"]
    for check in decision["checks"]:
        metric = check["metric"]
        gauges[f"candidate_{metric}"] = values[metric]
        if check["kind"] == "change_vs_champion":
            old = check["reference"]
            gauges[f"champion_{metric}"] = old
            if old > 0:
                gauges[f"relative_change_vs_champion_{metric}"] = (values[metric] - old) / old
    return gauges


def gate_candidate(
    candidate_path: str | Path,
    thresholds: dict,
    out: str | Path,
    params: str | None = None,
    baseline_path: str | Path | None = None,
    name: str | None = None,
    version: str | None = None,
    splits_dir: str | Path | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """The gate step: decide on the candidate's metrics, write the decision JSON to `out`, and
    return it.

    Without `name` only the floors and margins decide and nothing is tagged. With `name`, the
    candidate is `version` of that registered model (default: the latest); its registered
    metrics must be the candidate's, the champion (re-evaluated on `splits_dir` when it was
    measured on other data) is compared against, and the version is tagged with the decision.
    params: the thresholds' file, recorded in the decision (None when given otherwise).
    """
    from diffurec import registry

    candidate = read_metrics(candidate_path)
    baseline = read_metrics(baseline_path) if baseline_path else None
    champion = mlflow_client = None
    registered: tuple[str, str] | None = None  # (name, version) of the candidate
    if name:
        from diffurec.champion import champion_for, same_metrics

        mlflow_client = registry.client(tracking_uri)
        target = registry.get_version(name, version=version, mlflow_client=mlflow_client)
        assert target is not None  # by number: a missing version raises
        registered = (name, target["version"])
        if target["metrics"] and not same_metrics(target["metrics"], candidate["metrics"]):
            raise DiffuRecError(
                f"{candidate_path}: these metrics are not the ones registered "
                f"with {name} v{target['version']}; pass the matching --version"
            )
        champion = champion_for(name, candidate, splits_dir, mlflow_client, tracking_uri)
    name, version = registered or (None, None)
    decision = stamp_decision(
        decide(candidate, thresholds, baseline=baseline, champion=champion), name, version, params
    )
    write_json_atomic(out, decision)
    if registered is not None:
        # Tag after the JSON is written: promote needs both, so an interrupted gate promotes nothing.
        registry.set_version_tags(*registered, decision_tags(decision), mlflow_client=mlflow_client)
    return decision
