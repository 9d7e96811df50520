"""Telemetry against the real Pushgateway and Prometheus: push through the real code, read the
values back through Prometheus' HTTP API."""

from __future__ import annotations

import logging
import urllib.request
import uuid

import pytest

from diffurec import telemetry
from prometheus_servers import free_port, prometheus_servers  # noqa: F401 (fixture)


@pytest.fixture
def run_id(monkeypatch, prometheus_servers):  # noqa: F811
    """A fresh run label so each test reads only its own series; pushes go to the real gateway."""
    run = uuid.uuid4().hex[:12]
    monkeypatch.setenv("DIFFUREC_PUSHGATEWAY", prometheus_servers.pushgateway)
    monkeypatch.setenv("DIFFUREC_RUN_ID", run)
    # Groups are per (pipeline, model, step): a pipeline of its own keeps tests apart.
    monkeypatch.setenv("DIFFUREC_PIPELINE", f"test-{run}")
    monkeypatch.delenv("DIFFUREC_STEP", raising=False)
    monkeypatch.setenv("DIFFUREC_DATASET", "ml-100k")
    return run


def value(result: list) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_gauge_names_map_to_prometheus_metrics():
    assert telemetry.metric_for("HR@10") == ("diffurec_hr", {"k": "10"})
    assert telemetry.metric_for("candidate_NDCG@20") == ("diffurec_candidate_ndcg", {"k": "20"})
    assert telemetry.metric_for("samples_per_second") == ("diffurec_samples_per_second", {})
    assert telemetry.metric_for("rows-rejected") == ("diffurec_rows_rejected", {})


def test_every_metric_name_becomes_one_metric_per_family_with_a_k_label():
    from diffurec.metrics import METRIC_KEYS

    assert {key: telemetry.metric_for(key) for key in METRIC_KEYS} == {
        "HR@5": ("diffurec_hr", {"k": "5"}),
        "HR@10": ("diffurec_hr", {"k": "10"}),
        "HR@20": ("diffurec_hr", {"k": "20"}),
        "NDCG@5": ("diffurec_ndcg", {"k": "5"}),
        "NDCG@10": ("diffurec_ndcg", {"k": "10"}),
        "NDCG@20": ("diffurec_ndcg", {"k": "20"}),
    }


def test_without_a_pushgateway_steps_run_and_say_so_once(monkeypatch, caplog):
    monkeypatch.delenv("DIFFUREC_PUSHGATEWAY", raising=False)
    monkeypatch.setattr(telemetry, "_warned", False)
    with caplog.at_level(logging.INFO, logger="diffurec.telemetry"):
        telemetry.report_step("gate", 0.5, True, gauges={"gate_passed": 1}, labels={})
        telemetry.report_step("promote", 0.5, True, gauges={}, labels={})
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["metrics not pushed: DIFFUREC_PUSHGATEWAY is not set"]


def test_an_unreachable_pushgateway_costs_a_warning_not_the_step(monkeypatch, caplog):
    monkeypatch.setenv("DIFFUREC_PUSHGATEWAY", f"127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="diffurec.telemetry"):
        telemetry.report_step("train", 1.0, True, gauges={"samples_per_second": 10.0}, labels={})
    assert any("metrics not pushed to 127.0.0.1:" in r.getMessage() for r in caplog.records)


def test_evaluation_metrics_per_k_with_labels_reach_prometheus(prometheus_servers, run_id):  # noqa: F811
    telemetry.report_step(
        "evaluate",
        1.25,
        True,
        gauges={"HR@10": 5.3, "HR@20": 8.27, "NDCG@10": 2.32, "users_per_second": 900.0},
        labels={"model": "popularity", "version": "7"},
    )
    result = prometheus_servers.wait_for(f'diffurec_hr{{run="{run_id}", k="10"}}')
    assert value(result) == pytest.approx(5.3)
    labels = result[0]["metric"]
    keys = ("job", "pipeline", "step", "dataset", "model", "version", "run", "k")
    assert {key: labels[key] for key in keys} == {
        "job": "diffurec",
        "pipeline": f"test-{run_id}",
        "step": "evaluate",
        "dataset": "ml-100k",
        "model": "popularity",
        "version": "7",
        "run": run_id,
        "k": "10",
    }
    assert value(prometheus_servers.query(f'diffurec_hr{{run="{run_id}", k="20"}}')) == pytest.approx(8.27)
    assert value(prometheus_servers.query(f'diffurec_ndcg{{run="{run_id}", k="10"}}')) == pytest.approx(2.32)
    assert value(prometheus_servers.query(f'diffurec_users_per_second{{run="{run_id}"}}')) == 900.0
    assert (
        value(prometheus_servers.query(f'diffurec_step_duration_seconds{{run="{run_id}", step="evaluate"}}'))
        == 1.25
    )
    assert value(prometheus_servers.query(f'diffurec_step_success{{run="{run_id}"}}')) == 1.0


def test_a_failed_run_keeps_the_last_success_time(prometheus_servers, run_id):  # noqa: F811
    telemetry.report_step("train", 30.0, True, gauges={"samples_per_second": 1234.5}, labels={})
    query = f'diffurec_step_last_success_timestamp_seconds{{run="{run_id}", step="train"}}'
    succeeded_at = value(prometheus_servers.wait_for(query))
    telemetry.report_step("train", 2.0, False, gauges={}, labels={})
    failed = prometheus_servers.wait_for(f'diffurec_step_success{{run="{run_id}", step="train"}} == 0')
    assert value(failed) == 0.0
    assert value(prometheus_servers.query(query)) == succeeded_at
    assert (
        value(prometheus_servers.query(f'diffurec_step_duration_seconds{{run="{run_id}", step="train"}}'))
        == 2.0
    )
    # The failed run replaced the group: gauges of the successful run are gone.
    prometheus_servers.wait_for(f'diffurec_samples_per_second{{run="{run_id}"}}', lambda r: not r)


def test_every_cli_step_is_reported(prometheus_servers, run_id, tmp_path):  # noqa: F811
    from diffurec.cli import main

    status = main(
        [
            "gate",
            "--candidate",
            str(tmp_path / "missing.json"),
            "--params",
            str(tmp_path / "params.yaml"),
            "--out",
            str(tmp_path / "decision.json"),
        ]
    )
    assert status == 2
    result = prometheus_servers.wait_for(f'diffurec_step_success{{run="{run_id}", step="gate"}}')
    assert value(result) == 0.0


def test_metrics_endpoint_for_long_runs(monkeypatch):
    port = free_port()
    monkeypatch.setenv("DIFFUREC_METRICS_PORT", str(port))
    monkeypatch.setattr(telemetry, "_metrics_server_tried", False)
    telemetry.training_progress(epoch=3, loss=7.25, samples_per_second=456.0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "diffurec_training_epoch 3.0" in text
    assert "diffurec_training_loss 7.25" in text
    assert "diffurec_training_samples_per_second 456.0" in text
