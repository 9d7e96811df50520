"""The promotion gate: explicit, explainable checks a candidate must pass to become champion.

Thresholds live in params.yaml under `gate:` (metric values are percent, as in metrics JSON):

    gate:
      min:                          # absolute floors (0..100): candidate >= value; one at least
        HR@10: 3.0
        NDCG@10: 1.5
      min_margin_over_popularity:   # candidate - popularity baseline >= value (percent points);
        NDCG@10: 0.0                #   required: a gate without it is refused
      max_drop_vs_champion:         # change against the current champion, higher is better
        NDCG@10: {relative: 0.02}   #   candidate >= champion * (1 - 0.02), relative in [0, 1)
        HR@10: {absolute: 0.5}      #   candidate >= champion - 0.5 percent points
                                    #   (a negative absolute drop demands an improvement)
        NDCG@20: {relative: 0.02, confidence: 0.95}
                                    #   fails only when the paired bootstrap's whole 95 %
                                    #   interval of the change lies below -2 % (docs/gate.md)
      prometheus:                   # PromQL checks, evaluated now by Prometheus (instant queries)
        - name: training produced no NaN loss
          query: max(diffurec_train_nan_loss{pipeline="$pipeline", step="train", model="$model"})
          max: 0                    #   one of  min: V (value >= V), max: V (value <= V),
                                    #   equals_metric: NDCG@10 (within 1e-6 of the candidate's)

Floors and the popularity margin always apply (a gate without them is refused: it could not
reject anything); the champion checks apply only when a champion exists, so with no champion
yet the floors and the margin decide. The champion must have been measured on the same users
as the candidate (same split of the same data version); `decide` refuses to compare otherwise,
and `gate_candidate` re-evaluates the champion first (diffurec.champion). Given both models'
per-user ranks (the candidate's `.ranks.npz`; the champion's from its re-evaluation on the
candidate's splits), each champion check records a paired bootstrap of the change (`paired`).

A Prometheus check's query may use the placeholders $pipeline ($DIFFUREC_PIPELINE, as the
steps' pushes label it), $model (the candidate's architecture, e.g. diffurec), $run
($DIFFUREC_RUN_ID) and $version (the registered version decided on); each is replaced by the
value quoted for a PromQL string, so write them inside quotes. The query must give one sample
(aggregate with max/min/count...): no sample, several, or NaN fail the check. Prometheus that
cannot be reached fails the gate closed, unless allowed: then the checks are skipped, and the
decision says so (`prometheus.skipped`, `reason`).

Thresholds other than the configured ones (`--thresholds JSON`, the pipeline's `gate_override`)
are an override: refused without a reason and who gave it, recorded in the decision and tagged.

`decide` is pure: metrics in, decision dict out (docs/formats.md, "Gate decision JSON").
`gate_candidate` is the whole step: read the metrics, find the champion, decide, stamp the
decision (id, time, version), write it, then tag the registered version with it.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from diffurec import bootstrap, prometheus
from diffurec.errors import DiffuRecError, located
from diffurec.files import read_json_object, read_params, write_json_atomic
from diffurec.metrics import METRIC_KEYS, check_metric_values

METRIC_SECTIONS = ("min", "min_margin_over_popularity", "max_drop_vs_champion")
THRESHOLD_SECTIONS = (*METRIC_SECTIONS, "prometheus")
DROP_KINDS = ("relative", "absolute")
# Allowed values (percent points; a relative drop is a fraction): a floor outside 0..100 can
# never fail or never pass, a relative drop of 1 or more lets any candidate through.
FLOOR_RANGE = (0.0, 100.0)
POINTS_RANGE = (-100.0, 100.0)  # margins and absolute drops (negative: demand an improvement)
REQUIRED_SECTIONS = ("min", "min_margin_over_popularity")
# A Prometheus check: a name, a query and exactly one limit (value >= min, value <= max, or
# value within EQUALS_TOLERANCE of the candidate's metric of that name).
PROMETHEUS_LIMITS = ("min", "max", "equals_metric")
COMPARISONS = {"min": ">=", "max": "<=", "equals_metric": "=="}
EQUALS_TOLERANCE = 1e-6
PLACEHOLDERS = ("pipeline", "model", "run", "version")
PLACEHOLDER = re.compile(r"\$(?:\{(\w+)\}|([A-Za-z_]\w*))")


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
    for section in METRIC_SECTIONS:
        entries = gate.get(section) or {}
        if not isinstance(entries, dict):
            raise DiffuRecError(f"{source}.{section}: expected a mapping metric -> threshold")
        checked[section] = {}
        for metric, threshold in entries.items():
            where = f"{source}.{section}.{metric}"
            if metric not in METRIC_KEYS:
                raise DiffuRecError(f"{where}: unknown metric (expected one of {', '.join(METRIC_KEYS)})")
            if section == "max_drop_vs_champion":
                checked[section][metric] = _check_drop(threshold, where)
            else:
                limits = FLOOR_RANGE if section == "min" else POINTS_RANGE
                checked[section][metric] = _number(threshold, where, limits)
    checked["prometheus"] = _check_prometheus_rules(gate.get("prometheus") or [], f"{source}.prometheus")
    for section in REQUIRED_SECTIONS:
        if not checked[section]:
            example = "{NDCG@10: 1.5}" if section == "min" else "{NDCG@10: 0.0}"
            raise DiffuRecError(
                f"{source}.{section}: required, with one metric at least (e.g. {example}): "
                f"a gate without it cannot reject a useless model"
            )
    return checked


def _check_drop(rule: object, where: str) -> dict:
    """{relative: FRACTION in [0, 1)} or {absolute: POINTS}, optionally with confidence: LEVEL."""
    kinds = [kind for kind in DROP_KINDS if isinstance(rule, dict) and kind in rule]
    if not isinstance(rule, dict) or len(kinds) != 1 or set(rule) - {*kinds, "confidence"}:
        raise DiffuRecError(
            f"{where}: expected {{relative: FRACTION}} or {{absolute: POINTS}}, optionally with "
            f"confidence: LEVEL (e.g. {{relative: 0.02, confidence: 0.95}})"
        )
    (kind,) = kinds
    value = _number(rule[kind], f"{where}.{kind}", POINTS_RANGE if kind == "absolute" else None)
    if kind == "relative" and not 0.0 <= value < 1.0:
        raise DiffuRecError(f"{where}.relative: expected a fraction in [0, 1) (0.02 = 2 %), got {value!r}")
    checked = {kind: value}
    if "confidence" in rule:
        confidence = _number(rule["confidence"], f"{where}.confidence")
        if not 0.5 <= confidence < 1.0:
            raise DiffuRecError(
                f"{where}.confidence: expected a level in [0.5, 1) (e.g. 0.95), got {confidence!r}"
            )
        checked["confidence"] = confidence
    return checked


def _check_prometheus_rules(rules: object, source: str) -> list[dict]:
    """Validate the `prometheus:` list; each rule as {"name", "query", LIMIT: value}."""
    if not isinstance(rules, list):
        raise DiffuRecError(f"{source}: expected a list of checks {{name, query, min|max|equals_metric}}")
    checked: list[dict] = []
    for index, rule in enumerate(rules):
        where = f"{source}[{index}]"
        if not isinstance(rule, dict):
            raise DiffuRecError(
                f"{where}: expected a mapping with name, query and one of min, max, equals_metric"
            )
        unknown = set(rule) - {"name", "query", *PROMETHEUS_LIMITS}
        if unknown:
            raise DiffuRecError(
                f"{where}: unknown key {sorted(unknown)[0]!r} "
                f"(expected name, query and one of {', '.join(PROMETHEUS_LIMITS)})"
            )
        for key in ("name", "query"):
            if not isinstance(rule.get(key), str) or not rule[key].strip():
                raise DiffuRecError(f"{where}.{key}: expected a non-empty string")
        name, query = rule["name"].strip(), rule["query"].strip()
        if name in (other["name"] for other in checked):
            raise DiffuRecError(f"{where}.name: {name!r} names another check already")
        for match in PLACEHOLDER.finditer(query):
            placeholder = match.group(1) or match.group(2)
            if placeholder not in PLACEHOLDERS:
                raise DiffuRecError(
                    f"{where}.query: unknown placeholder ${placeholder} "
                    f"(expected {', '.join('$' + known for known in PLACEHOLDERS)})"
                )
        limits = [key for key in PROMETHEUS_LIMITS if key in rule]
        if len(limits) != 1:
            raise DiffuRecError(f"{where}: expected exactly one of {', '.join(PROMETHEUS_LIMITS)}")
        (limit,) = limits
        if limit == "equals_metric":
            if rule[limit] not in METRIC_KEYS:
                raise DiffuRecError(
                    f"{where}.equals_metric: unknown metric {rule[limit]!r} "
                    f"(expected one of {', '.join(METRIC_KEYS)})"
                )
            value: float | str = rule[limit]
        else:
            value = _number(rule[limit], f"{where}.{limit}")
        checked.append({"name": name, "query": query, limit: value})
    return checked


def _number(value: object, where: str, limits: tuple[float, float] | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DiffuRecError(f"{where}: expected a finite number, got {value!r}")
    if limits is not None and not limits[0] <= value <= limits[1]:
        raise DiffuRecError(f"{where}: expected a value in {limits[0]:g}..{limits[1]:g}, got {value!r}")
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
    check_metric_values(data, str(path))
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
    candidate: dict,
    thresholds: dict,
    baseline: dict | None = None,
    champion: dict | None = None,
    prometheus_outcome: dict | None = None,
    paired_ranks: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Run every check; return {"passed", "checks", "candidate", "champion", ...}.

    candidate, baseline: metrics JSON dicts. champion: {"version": str, "metrics": {...},
    "split", "users", "data_version", "re_evaluated": bool} or None (no champion yet).
    prometheus_outcome: what `run_prometheus_checks` returned (needed when the thresholds have
    Prometheus checks). paired_ranks: (candidate's, champion's) per-user ranks on the same
    users, giving each champion check a paired bootstrap (needed for a `confidence` rule).
    """
    thresholds = check_thresholds(thresholds)
    if thresholds["prometheus"] and prometheus_outcome is None:
        raise DiffuRecError(
            "the gate has Prometheus checks: evaluate them first (diffurec.gate.run_prometheus_checks)"
        )
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
            checks.append(_champion_check(metric, rule, values[metric], champion, paired_ranks))

    if thresholds["prometheus"] and prometheus_outcome is not None:
        checks.extend(prometheus_outcome["checks"])
        prometheus_record = {key: prometheus_outcome[key] for key in ("url", "skipped")}
    else:
        prometheus_record = None

    failed = [check["name"] for check in checks if not check["passed"]]
    reason = _reason(checks, failed, champion)
    if prometheus_record is not None and prometheus_record["skipped"]:
        reason += (
            f"; {len(thresholds['prometheus'])} Prometheus checks skipped ({prometheus_record['skipped']})"
        )
    return {
        "passed": not failed,
        "checks": checks,
        "failed": failed,
        "reason": reason,
        "candidate": {
            key: candidate.get(key) for key in ("metrics", "split", "users", "model", "settings", "lineage")
        },
        "baseline": None
        if baseline is None
        else {key: baseline.get(key) for key in ("metrics", "split", "users", "model")},
        "champion": champion,
        "thresholds": thresholds,
        "prometheus": prometheus_record,
    }


def _champion_check(
    metric: str,
    rule: dict,
    value: float,
    champion: dict,
    paired_ranks: tuple[np.ndarray, np.ndarray] | None,
) -> dict:
    """One max_drop_vs_champion check. Without `confidence` the point estimate (candidate's
    value against the champion's) is checked; with it, the upper end of the paired bootstrap's
    interval at that level: the check fails only when the whole interval lies below the
    allowed change, i.e. the candidate is worse than allowed beyond the noise of these users."""
    old = float(champion["metrics"][metric])
    kind = "relative" if "relative" in rule else "absolute"
    allowed, confidence = rule[kind], rule.get("confidence")
    name = f"change vs champion v{champion['version']} {metric} ({kind}"
    name += f", {confidence:.0%} interval)" if confidence is not None else ")"
    paired = None
    if paired_ranks is not None:
        level = confidence if confidence is not None else bootstrap.DEFAULT_CONFIDENCE
        paired = bootstrap.compare_ranks(*paired_ranks, metric, confidence=level)
        paired["champion_mean"] = bootstrap.mean_metric(paired_ranks[1], metric)
        if abs(paired["champion_mean"] - old) > bootstrap.METRIC_TOLERANCE:
            raise DiffuRecError(
                f"champion v{champion['version']}: its per-user ranks give {metric} "
                f"{paired['champion_mean']:.6f}, its metrics {old:.6f}: not the same evaluation"
            )
    elif confidence is not None:
        raise DiffuRecError(
            f"gate.max_drop_vs_champion.{metric}: `confidence` needs both models' per-user ranks on "
            f"the same users (the candidate's .ranks.npz from `diffurec evaluate`, and --splits to "
            f"re-evaluate the champion)"
        )
    relative = kind == "relative" and old > 0
    if relative and confidence is not None and paired is not None and paired["relative_interval"] is None:
        relative = False  # a resample without hits: the relative change is undefined there
    if relative:
        point, threshold, unit = (value - old) / old, -allowed, "fraction"
        interval = paired["relative_interval"] if paired is not None else None
        bound = interval[1] if interval is not None else None  # None: not needed, no `confidence`
    else:
        # absolute, or a zero champion (any candidate >= 0 keeps up; relative is undefined)
        point, threshold, unit = value - old, (-allowed if kind == "absolute" else 0.0), "points"
        bound = paired["interval"][1] if paired is not None else None
    checked = point if confidence is None else bound
    assert checked is not None
    check = _check(name, "change_vs_champion", metric, checked, threshold, reference=old, unit=unit)
    if confidence is not None:
        check.update(confidence=confidence, estimate=round(point, 6))
    if paired is not None:
        check["paired"] = paired
    return check


def substitute(query: str, values: dict[str, str]) -> str:
    """`query` with $name / ${name} replaced by values[name], escaped for a PromQL string."""

    def replace(match: re.Match[str]) -> str:
        value = values[match.group(1) or match.group(2)]
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return PLACEHOLDER.sub(replace, query)


def placeholder_values(candidate: dict, version: str | None) -> dict[str, str]:
    """The values of the query placeholders for this candidate (see the module docstring)."""
    from diffurec import telemetry

    return {
        "pipeline": os.environ.get(telemetry.PIPELINE_ENV) or telemetry.DEFAULT_PIPELINE,
        "model": str((candidate.get("model") or {}).get("name") or ""),
        "run": os.environ.get(telemetry.RUN_ENV, ""),
        "version": version or "",
    }


def prometheus_check(rule: dict, query: str, samples: list[prometheus.Sample], metrics: dict) -> dict:
    """One Prometheus check from the samples its query gave (pure: no I/O).

    The query must give exactly one finite sample; otherwise the check fails with a `note`."""
    limit = next(key for key in PROMETHEUS_LIMITS if key in rule)
    check: dict = {"name": rule["name"], "kind": "prometheus", "query": query}
    if limit == "equals_metric":
        check["metric"] = rule[limit]
        threshold = float(metrics[rule[limit]])
    else:
        threshold = float(rule[limit])
    value, note = None, None
    if not samples:
        note = "no data"
    elif len(samples) > 1:
        note = f"{len(samples)} series, expected one (aggregate the query, e.g. max(...))"
    elif not math.isfinite(samples[0].value):
        note = f"value {samples[0].value}"
    else:
        value = samples[0].value
    comparison = COMPARISONS[limit]
    if value is None:
        passed = False
    elif comparison == ">=":
        passed = value >= threshold
    elif comparison == "<=":
        passed = value <= threshold
    else:
        passed = abs(value - threshold) <= EQUALS_TOLERANCE
    check.update(value=value, threshold=threshold, comparison=comparison, passed=passed, unit="value")
    if comparison == "==":
        check["tolerance"] = EQUALS_TOLERANCE
    if note is not None:
        check["note"] = note
    return check


def run_prometheus_checks(
    rules: list[dict],
    url: str | None,
    values: dict[str, str],
    candidate: dict,
    allow_unreachable: bool = False,
    deadline_seconds: float = prometheus.DEFAULT_DEADLINE_SECONDS,
) -> dict:
    """Evaluate the checks of `gate.prometheus` against the Prometheus at `url`.

    Returns {"url", "skipped": None or why, "checks": [...]}. Fails closed: without a URL, or
    when Prometheus cannot be reached, a DiffuRecError, unless allow_unreachable (then every
    check is skipped, and `skipped` says why). A query Prometheus rejects always fails."""
    outcome: dict = {"url": url, "skipped": None, "checks": []}
    if not rules:
        return outcome
    try:
        if url is None:
            raise prometheus.PrometheusUnavailable(
                f"no Prometheus URL (--prometheus or ${prometheus.URL_ENV})"
            )
        for rule in rules:
            query = substitute(rule["query"], values)
            samples = prometheus.instant_query(url, query, deadline_seconds)
            outcome["checks"].append(prometheus_check(rule, query, samples, candidate["metrics"]))
    except prometheus.PrometheusUnavailable as error:
        if not allow_unreachable:
            raise DiffuRecError(
                f"{error}: the gate fails closed with {len(rules)} Prometheus checks "
                f"(--allow-unreachable-prometheus decides without them)"
            ) from None
        outcome.update(skipped=f"{error}; allowed by --allow-unreachable-prometheus", checks=[])
    return outcome


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
                _show(check["value"], check) if check["value"] is not None else check.get("note", "-"),
                check.get("comparison", ">=") + " " + _show(check["threshold"], check),
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
    for check in decision["checks"]:
        paired = check.get("paired")
        if paired is not None:
            low, high = paired["interval"]
            line = (
                f"  paired bootstrap {check['metric']} ({paired['users']} users): candidate - champion "
                f"{paired['mean_difference']:+.3f} points, {paired['confidence']:.0%} interval "
                f"[{low:+.3f}, {high:+.3f}]"
            )
            if paired["relative_interval"] is not None:
                low, high = paired["relative_interval"]
                line += f" = [{low * 100:+.1f}%, {high * 100:+.1f}%]"
            lines.append(line)
    override = decision.get("override")
    if override:
        lines.append(f"thresholds OVERRIDDEN by {override['by']}: {override['reason']}")
    verdict = "PASSED" if decision["passed"] else "REJECTED"
    lines.append(f"decision: {verdict} - {decision['reason']}")
    return "\n".join(lines)


def _show(value: float, check: dict) -> str:
    if check["unit"] == "fraction":
        return f"{value * 100:+.2f}%"
    if check["kind"] == "floor":
        return f"{value:.3f}"
    if check["kind"] == "prometheus":  # all digits an equality check compares
        return f"{value:.10g}"
    return f"{value:+.3f}"


def stamp_decision(
    decision: dict, name: str | None, version: str | None, params: str | None, override: dict | None = None
) -> dict:
    """`decide`'s result as written and recorded: `passed` first, then the registered version it
    is about (or None), a fresh decision_id, decided_at (UTC), the configured thresholds' file
    and the override (override_record's, or None when the configured thresholds decided)."""
    return {
        "passed": decision["passed"],
        "name": name,
        "version": version,
        "decision_id": uuid.uuid4().hex,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": params,
        "override": override,
        **{key: value for key, value in decision.items() if key != "passed"},
    }


def override_record(reason: str | None, by: str | None, configured: dict | None) -> dict:
    """What an override of the configured thresholds records: why, who, and what it replaced
    (None when no configured thresholds were found). Refused without a reason or a name."""
    reason, by = (reason or "").strip(), (by or "").strip()
    if not reason:
        raise DiffuRecError(
            "--thresholds overrides the configured gate thresholds: say why with --override-reason TEXT"
        )
    if not by:
        raise DiffuRecError(
            "--thresholds overrides the configured gate thresholds: say who with --override-by WHO"
        )
    return {"reason": reason, "by": by, "configured": configured}


def resolve_thresholds(
    params: str | Path,
    thresholds_json: str | None,
    override_reason: str | None = None,
    override_by: str | None = None,
) -> tuple[dict, str | None, dict | None]:
    """The thresholds a gate run uses, their file and the override record, from the command
    line: `params` holds the configured ones; `thresholds_json` replaces them, an override
    (reason and name required; the configured ones are recorded when `params` exists).
    Returns (thresholds, the configured thresholds' file or None, override or None)."""
    if thresholds_json is None:
        if override_reason or override_by:
            raise DiffuRecError("--override-reason/--override-by: only with --thresholds JSON (the override)")
        return load_thresholds(params), str(params), None
    record = override_record(override_reason, override_by, None)  # before anything else: who and why
    thresholds = parse_thresholds(thresholds_json)
    if not Path(params).is_file():
        return thresholds, None, record
    record["configured"] = load_thresholds(params)
    return thresholds, str(params), record


def decision_tags(decision: dict) -> dict[str, str]:
    """The tags a decision leaves on its model version; promote checks gate_decision_id."""
    checks = [
        {key: check[key] for key in ("name", "value", "threshold", "passed")} for check in decision["checks"]
    ]
    override = decision.get("override") or {}
    return {
        "gate_passed": str(decision["passed"]).lower(),
        "gate_decision_id": decision["decision_id"],
        "gate_decided_at": decision["decided_at"],
        "gate_reason": decision["reason"][:4000],  # MLflow caps a tag's value
        "gate_checks": json.dumps(checks)[:5000],
        # Always all three: a later gate run without an override clears an earlier one's.
        "gate_override": "true" if override else "false",
        "gate_override_reason": str(override.get("reason", ""))[:4000],
        "gate_override_by": str(override.get("by", ""))[:250],
    }


def decision_gauges(decision: dict) -> dict[str, float]:
    """The gate's Prometheus gauges: outcome, check counts, the candidate's checked metrics and,
    against a champion, its value and the relative change; with Prometheus checks configured,
    whether they were skipped."""
    gauges = {
        "gate_passed": 1.0 if decision["passed"] else 0.0,
        "gate_checks_failed": float(len(decision["failed"])),
        "gate_checks": float(len(decision["checks"])),
    }
    if decision.get("prometheus") is not None:
        gauges["gate_prometheus_checks_skipped"] = 1.0 if decision["prometheus"]["skipped"] else 0.0
    values = decision["candidate"]["metrics"]
    for check in decision["checks"]:
        metric = check.get("metric")
        if metric is None:
            continue
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
    prometheus_url: str | None = None,
    allow_unreachable_prometheus: bool = False,
    prometheus_deadline: float = prometheus.DEFAULT_DEADLINE_SECONDS,
    override: dict | None = None,
    candidate_ranks: str | Path | None = None,
) -> dict:
    """The gate step: decide on the candidate's metrics, write the decision JSON to `out`, and
    return it.

    Without `name` only the floors and margins decide and nothing is tagged. With `name`, the
    candidate is `version` of that registered model (default: the latest); its registered
    metrics must be the candidate's, the champion (re-evaluated on `splits_dir` when it was
    measured on other data) is compared against, and the version is tagged with the decision.
    params: the thresholds' file, recorded in the decision (None when given otherwise).
    override: `override_record`'s, when `thresholds` are not the configured ones.
    candidate_ranks: the candidate's per-user ranks (default: its metrics JSON's `ranks_file`);
    with them and `splits_dir` the champion is re-evaluated for the paired comparison.
    The Prometheus checks (thresholds["prometheus"]) query `prometheus_url` (default:
    $DIFFUREC_PROMETHEUS), each within `prometheus_deadline` seconds; nothing is written or
    tagged when they fail closed (see run_prometheus_checks).
    """
    from diffurec import registry
    from diffurec.champion import champion_for, check_candidate, same_metrics
    from diffurec.promote import finish_interrupted

    if not (math.isfinite(prometheus_deadline) and prometheus_deadline > 0):
        raise DiffuRecError(f"--prometheus-timeout: expected seconds > 0, got {prometheus_deadline!r}")
    thresholds = check_thresholds(thresholds)
    candidate = read_metrics(candidate_path)
    baseline = read_metrics(baseline_path) if baseline_path else None
    champion = mlflow_client = None
    registered: tuple[str, str] | None = None  # (name, version) of the candidate
    if name:
        mlflow_client = registry.client(tracking_uri)
        # A promotion killed half-way is completed first: the champion is then the real one.
        finish_interrupted(name, mlflow_client, tracking_uri)
        target = registry.get_version(name, version=version, mlflow_client=mlflow_client)
        assert target is not None  # by number: a missing version raises
        registered = (name, target["version"])
        if target["metrics"] and not same_metrics(target["metrics"], candidate["metrics"]):
            raise DiffuRecError(
                f"{candidate_path}: these metrics are not the ones registered "
                f"with {name} v{target['version']}; pass the matching --version"
            )
    # Metrics of another model or other data than the version, baseline and --splits: refused.
    check_candidate(
        candidate, str(candidate_path), target if name else None, baseline, str(baseline_path), splits_dir
    )
    # Before the champion's (possibly slow) re-evaluation: an unreachable Prometheus ends it.
    prometheus_outcome = run_prometheus_checks(
        thresholds["prometheus"],
        prometheus.resolve_url(prometheus_url),
        placeholder_values(candidate, registered[1] if registered else None),
        candidate,
        allow_unreachable=allow_unreachable_prometheus,
        deadline_seconds=prometheus_deadline,
    )
    paired_ranks = None
    if registered is not None:
        drops = bool(thresholds["max_drop_vs_champion"])
        ranks = None
        if drops and (candidate_ranks or candidate.get("ranks_file")):
            ranks = bootstrap.read_ranks(candidate_path, candidate, candidate_ranks)
        champion, champion_ranks = champion_for(
            registered[0], candidate, splits_dir, mlflow_client, tracking_uri, need_ranks=ranks is not None
        )
        if ranks is not None and champion_ranks is not None:
            paired_ranks = (ranks, champion_ranks)
    name, version = registered or (None, None)
    decided = decide(candidate, thresholds, baseline, champion, prometheus_outcome, paired_ranks)
    decision = stamp_decision(decided, name, version, params, override)
    write_json_atomic(out, decision)
    if registered is not None:
        # Tag after the JSON is written: promote needs both, so an interrupted gate promotes nothing.
        registry.set_version_tags(*registered, decision_tags(decision), mlflow_client=mlflow_client)
    return decision
