"""Alerting rules: promtool checks and unit tests, and a rule firing in the real Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import yaml

from prometheus_servers import prometheus_servers  # noqa: F401 (fixture)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
EXPECTED_ALERTS = {
    "DiffuRecGateFailed",
    "DiffuRecMetricRegression",
    "DiffuRecNoSuccessfulRetraining",
    "DiffuRecValidationFailed",
    "DiffuRecStepFailed",
}


def promtool(*args, cwd) -> subprocess.CompletedProcess:
    result = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_rules_and_config_are_valid(repo_root):
    monitoring = repo_root / "monitoring"
    promtool("check", "rules", "alerts.yml", cwd=monitoring)
    promtool("check", "config", "prometheus.yml", cwd=monitoring)
    rules = yaml.safe_load((monitoring / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert names == EXPECTED_ALERTS


def test_promtool_unit_tests_pass(repo_root):
    result = promtool("test", "rules", "alerts_test.yml", cwd=repo_root / "monitoring")
    assert "SUCCESS" in result.stdout
    tested = set()
    for case in yaml.safe_load((repo_root / "monitoring" / "alerts_test.yml").read_text())["tests"]:
        tested |= {check["alertname"] for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert tested == EXPECTED_ALERTS, "every alert has a test where it fires"


def test_promtool_unit_tests_can_fail(repo_root, tmp_path):
    """The rule tests are not vacuous: a rule with a wrong threshold fails them."""
    monitoring = repo_root / "monitoring"
    broken = (monitoring / "alerts.yml").read_text().replace("expr: vector(0.02)", "expr: vector(0.10)")
    assert broken != (monitoring / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(monitoring / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "DiffuRecMetricRegression" in result.stdout + result.stderr


def test_a_rejected_gate_fires_the_alert_in_prometheus(prometheus_servers, monkeypatch, tmp_path):  # noqa: F811
    from diffurec.cli import main

    run = uuid.uuid4().hex[:12]
    monkeypatch.setenv("DIFFUREC_PUSHGATEWAY", prometheus_servers.pushgateway)
    monkeypatch.setenv("DIFFUREC_RUN_ID", run)
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
    params.write_text("gate:\n  min:\n    HR@10: 3.0\n")
    assert (
        main(
            [
                "gate",
                "--candidate",
                str(candidate),
                "--params",
                str(params),
                "--out",
                str(tmp_path / "decision.json"),
            ]
        )
        == 0
    )

    deadline = time.monotonic() + 20
    while True:
        firing = [
            alert
            for alert in prometheus_servers.alerts()
            if alert["labels"].get("run") == run and alert["state"] == "firing"
        ]
        if firing or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert [alert["labels"]["alertname"] for alert in firing] == ["DiffuRecGateFailed"]
    assert firing[0]["labels"]["step"] == "gate"
    assert firing[0]["annotations"]["summary"] == "Gate rejected popularity"
