"""Alerting: promtool checks and unit tests of the rules, amtool checks of the Alertmanager
routing, the runbook links, and alerts that fire and clear in the real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from diffurec import telemetry
from prometheus_servers import prometheus_servers  # noqa: F401 (fixture)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
EXPECTED_ALERTS = {
    "DiffuRecGateFailed",
    "DiffuRecMetricRegression",
    "DiffuRecNoMetrics",
    "DiffuRecNoSuccessfulRetraining",
    "DiffuRecTrainingNaNLoss",
    "DiffuRecValidationFailed",
    "DiffuRecStepFailed",
}
# promtool rule tests: every minute, and over the 8-day window every hour.
RULE_TESTS = ("alerts_test.yml", "alerts_window_test.yml")
SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def run_tool(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    if not Path(tool).exists():
        pytest.fail(f"{tool} not installed: run `bash scripts/setup.sh` (as root)")
    result = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def alert_rules(repo_root: Path) -> dict[str, dict]:
    rules = yaml.safe_load((repo_root / "monitoring" / "alerts.yml").read_text())
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def recorded(repo_root: Path, name: str) -> str:
    rules = yaml.safe_load((repo_root / "monitoring" / "alerts.yml").read_text())
    (expr,) = [
        rule["expr"] for group in rules["groups"] for rule in group["rules"] if rule.get("record") == name
    ]
    return expr


def test_rules_and_config_are_valid(repo_root):
    monitoring = repo_root / "monitoring"
    run_tool(PROMTOOL, "check", "rules", "alerts.yml", cwd=monitoring)
    run_tool(PROMTOOL, "check", "config", "prometheus.yml", cwd=monitoring)
    assert set(alert_rules(repo_root)) == EXPECTED_ALERTS


def test_prometheus_sends_alerts_to_an_alertmanager(repo_root):
    config = yaml.safe_load((repo_root / "monitoring" / "prometheus.yml").read_text())
    targets = [
        target
        for manager in config["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    assert targets == ["localhost:9093"]


def test_promtool_unit_tests_pass(repo_root):
    monitoring = repo_root / "monitoring"
    result = run_tool(PROMTOOL, "test", "rules", *RULE_TESTS, cwd=monitoring)
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)
    tested = set()
    for name in RULE_TESTS:
        for case in yaml.safe_load((monitoring / name).read_text())["tests"]:
            tested |= {check["alertname"] for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert tested == EXPECTED_ALERTS, "every alert has a test where it fires"


def test_promtool_unit_tests_can_fail(repo_root, tmp_path):
    """The rule tests are not vacuous: a rule with a wrong threshold fails them."""
    monitoring = repo_root / "monitoring"
    broken = (monitoring / "alerts.yml").read_text().replace("expr: vector(0.02)", "expr: vector(0.10)")
    assert broken != (monitoring / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    tests = yaml.safe_load((monitoring / "alerts_test.yml").read_text())
    # Only the regression cases: the failure must come from them.
    tests["tests"] = [
        case
        for case in tests["tests"]
        if any(check["alertname"] == "DiffuRecMetricRegression" for check in case["alert_rule_test"])
    ]
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "DiffuRecMetricRegression" in result.stdout + result.stderr


def test_the_retraining_window_is_one_number(repo_root):
    """The window is a recording rule (seconds) and a range in the alert: they must agree."""
    window = float(
        re.fullmatch(r"vector\((\d+)\)", recorded(repo_root, "diffurec:retraining_max_age_seconds"))[1]
    )
    expr = alert_rules(repo_root)["DiffuRecNoSuccessfulRetraining"]["expr"]
    ranges = re.findall(r"\[(\d+)([smhdw])\]", expr)
    assert len(ranges) == 2
    assert {int(count) * SECONDS_PER_UNIT[unit] for count, unit in ranges} == {window}
    assert "absent_over_time(" in expr


def test_every_alert_links_its_runbook_section(repo_root):
    runbook = (repo_root / "docs" / "runbook.md").read_text()
    # GitHub's anchor of "## DiffuRecGateFailed" is "diffurecgatefailed".
    sections = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    for name, rule in alert_rules(repo_root).items():
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
    assert sections == {name.lower() for name in EXPECTED_ALERTS}


def test_alertmanager_config_is_valid_and_routes_by_severity(repo_root):
    monitoring = repo_root / "monitoring"
    run_tool(AMTOOL, "check-config", "alertmanager.yml", cwd=monitoring)
    rules = alert_rules(repo_root)
    for name, rule in rules.items():
        severity = rule["labels"]["severity"]
        result = run_tool(
            AMTOOL,
            "config",
            "routes",
            "test",
            "--config.file=alertmanager.yml",
            f"alertname={name}",
            f"severity={severity}",
            "pipeline=diffurec-ml-100k",
            cwd=monitoring,
        )
        expected = {"critical": "on-call", "warning": "team"}[severity]
        assert result.stdout.split() == [expected], name
    assert {rule["labels"]["severity"] for rule in rules.values()} == {"critical", "warning"}


# ---- the real Prometheus ---------------------------------------------------------------------


@pytest.fixture
def pipeline(monkeypatch, prometheus_servers):  # noqa: F811
    """A pipeline label of its own (groups are per pipeline, model and step), pushing to the
    real Pushgateway."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DIFFUREC_PUSHGATEWAY", prometheus_servers.pushgateway)
    monkeypatch.setenv("DIFFUREC_PIPELINE", name)
    for variable in ("DIFFUREC_STEP", "DIFFUREC_RUN_ID", "DIFFUREC_DATASET"):
        monkeypatch.delenv(variable, raising=False)
    return name


def firing(servers, pipeline: str) -> dict[str, dict]:
    """The pipeline's firing alerts by name, from /api/v1/alerts (one each, or the test fails)."""
    alerts = [
        alert
        for alert in servers.alerts()
        if alert["labels"].get("pipeline") == pipeline and alert["state"] == "firing"
    ]
    names = [alert["labels"]["alertname"] for alert in alerts]
    assert len(names) == len(set(names)), alerts
    return {alert["labels"]["alertname"]: alert for alert in alerts}


def wait_for_alerts(servers, pipeline: str, expected: set[str], timeout: float = 20.0) -> dict[str, dict]:
    """Poll until exactly `expected` fire for the pipeline (evaluation is every second)."""
    deadline = time.monotonic() + timeout
    while True:
        alerts = firing(servers, pipeline)
        if set(alerts) == expected:
            return alerts
        if time.monotonic() > deadline:
            raise AssertionError(f"firing for {pipeline}: {sorted(alerts)}, expected {sorted(expected)}")
        time.sleep(0.25)


def alerts_series(servers, pipeline: str) -> set[str]:
    """The ALERTS series of the pipeline that are firing now (alertname values)."""
    result = servers.query(f'ALERTS{{pipeline="{pipeline}", alertstate="firing"}}')
    return {series["metric"]["alertname"] for series in result}


def test_a_failure_then_a_success_clears_the_alert(prometheus_servers, pipeline, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DIFFUREC_RUN_ID", "run-1")
    telemetry.report_step("train", 3.0, False, gauges={}, labels={"model": "sasrec", "dataset": "ml-100k"})
    alerts = wait_for_alerts(prometheus_servers, pipeline, {"DiffuRecStepFailed"})
    assert alerts["DiffuRecStepFailed"]["labels"]["run"] == "run-1"
    assert alerts["DiffuRecStepFailed"]["labels"]["model"] == "sasrec"
    assert alerts_series(prometheus_servers, pipeline) == {"DiffuRecStepFailed"}
    where = f'pipeline="{pipeline}", step="train", model="sasrec"'
    (failed,) = prometheus_servers.query(f"diffurec_step_last_failure_timestamp_seconds{{{where}}}")
    assert float(failed["value"][1]) > 0
    assert prometheus_servers.query(f"diffurec_step_last_success_timestamp_seconds{{{where}}} == 0")

    monkeypatch.setenv("DIFFUREC_RUN_ID", "run-2")
    telemetry.report_step(
        "train", 30.0, True, gauges={"train_nan_loss": 0.0}, labels={"model": "sasrec", "dataset": "ml-100k"}
    )
    wait_for_alerts(prometheus_servers, pipeline, set())
    prometheus_servers.wait_for(f'ALERTS{{pipeline="{pipeline}"}}', lambda result: not result)
    # One group: the success replaced the failure, and the failure time survived it.
    (success,) = prometheus_servers.query(f"diffurec_step_success{{{where}}}")
    assert (success["metric"]["run"], success["value"][1]) == ("run-2", "1")
    (still_failed,) = prometheus_servers.query(f"diffurec_step_last_failure_timestamp_seconds{{{where}}}")
    assert still_failed["value"][1] == failed["value"][1]
    (succeeded,) = prometheus_servers.query(f"diffurec_step_last_success_timestamp_seconds{{{where}}}")
    assert float(succeeded["value"][1]) >= float(failed["value"][1])

    # A second failure fires again and keeps the success time.
    telemetry.report_step("train", 2.0, False, gauges={}, labels={"model": "sasrec"})
    wait_for_alerts(prometheus_servers, pipeline, {"DiffuRecStepFailed"})
    prometheus_servers.wait_for(
        f"diffurec_step_last_success_timestamp_seconds{{{where}}}",
        lambda result: [series["value"][1] for series in result] == [succeeded["value"][1]],
    )


def test_a_rejected_v3_then_a_passing_v4_clears_the_gate_alert(prometheus_servers, pipeline):  # noqa: F811
    telemetry.report_step("gate", 1.0, True, gauges={"gate_passed": 0.0}, labels={"version": "3"})
    alerts = wait_for_alerts(prometheus_servers, pipeline, {"DiffuRecGateFailed"})
    assert alerts["DiffuRecGateFailed"]["labels"]["version"] == "3"
    assert alerts["DiffuRecGateFailed"]["annotations"]["summary"] == f"Gate rejected {pipeline} v3"
    assert alerts["DiffuRecGateFailed"]["annotations"]["runbook_url"] == "docs/runbook.md#diffurecgatefailed"

    telemetry.report_step("gate", 1.0, True, gauges={"gate_passed": 1.0}, labels={"version": "4"})
    wait_for_alerts(prometheus_servers, pipeline, set())
    (passed,) = prometheus_servers.query(f'diffurec_gate_passed{{pipeline="{pipeline}"}}')
    assert (passed["metric"]["version"], passed["value"][1]) == ("4", "1")


def test_a_rejected_gate_fires_the_alert_in_prometheus(prometheus_servers, pipeline, tmp_path):  # noqa: F811
    """Through the command line: `diffurec gate` pushes to the pipeline's gate group."""
    from diffurec.cli import main

    metrics = {key: 0.5 for key in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")}
    candidate = tmp_path / "metrics.json"
    candidate.write_text(
        json.dumps(
            {
                "metrics": metrics,
                "unit": "percent",
                "split": "test",
                "users": 943,
                "model": {"name": "popularity"},
            }
        )
    )
    params = tmp_path / "params.yaml"
    params.write_text("gate:\n  min:\n    HR@10: 3.0\n  min_margin_over_popularity:\n    NDCG@10: 0.0\n")
    arguments = ["gate", "--candidate", str(candidate), "--baseline", str(candidate), "--params", str(params)]
    assert main([*arguments, "--out", str(tmp_path / "decision.json")]) == 0

    alerts = wait_for_alerts(prometheus_servers, pipeline, {"DiffuRecGateFailed"})
    labels = alerts["DiffuRecGateFailed"]["labels"]
    assert (labels["step"], labels["model"]) == ("gate", "any")
    assert alerts["DiffuRecGateFailed"]["annotations"]["summary"] == f"Gate rejected {pipeline}"


def test_alertmanager_routes_and_resolves_the_alerts(prometheus_servers, pipeline):  # noqa: F811
    """Prometheus -> the real Alertmanager (monitoring/alertmanager.yml) -> webhooks: a critical
    alert reaches the on-call receiver, a warning the team's, and both are resolved there when
    the next training succeeds."""

    def received(path: str, status: str) -> set[str]:
        return {
            alert["labels"]["alertname"]
            for url_path, payload in list(prometheus_servers.notifications)
            if url_path == path
            for alert in payload["alerts"]
            if alert["labels"].get("pipeline") == pipeline and alert["status"] == status
        }

    def wait_until(condition, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}; received: {prometheus_servers.notifications}")
            time.sleep(0.25)

    telemetry.report_step("train", 1.0, False, gauges={}, labels={"model": "diffurec"})
    telemetry.report_step("train", 1.0, True, gauges={"train_nan_loss": 1.0}, labels={"model": "sasrec"})
    wait_until(
        lambda: (
            received("/diffurec/critical", "firing") == {"DiffuRecTrainingNaNLoss"}
            and received("/diffurec/warning", "firing") == {"DiffuRecStepFailed"}
        ),
        "NaN loss paged on-call and the failed step went to the team",
    )
    telemetry.report_step("train", 1.0, True, gauges={"train_nan_loss": 0.0}, labels={"model": "diffurec"})
    telemetry.report_step("train", 1.0, True, gauges={"train_nan_loss": 0.0}, labels={"model": "sasrec"})
    wait_until(
        lambda: (
            received("/diffurec/critical", "resolved") == {"DiffuRecTrainingNaNLoss"}
            and received("/diffurec/warning", "resolved") == {"DiffuRecStepFailed"}
        ),
        "both alerts resolved after successful trainings",
    )
