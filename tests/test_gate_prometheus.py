"""Prometheus in the gate: params.yaml's `gate.prometheus` checks, asked of a real Prometheus.

Series are pushed with prometheus_client to the real Pushgateway that the real Prometheus
scrapes every second (tests/prometheus_servers.py); each test uses its own pipeline label, so
tests sharing the servers never see each other's series. Failures to reach Prometheus are
tested against a closed port and against small servers on 127.0.0.1 that accept a connection
and then never answer, or answer one byte at a time forever.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_servers import Servers, free_port, start_servers

from diffurec import gate, prometheus
from diffurec.cli import main
from diffurec.errors import DiffuRecError

NDCG10 = 3.6812345678  # the candidate's NDCG@10 (percent), as in its metrics JSON

NO_CRITICAL_ALERT = {
    "name": "no critical alert firing for this pipeline",
    "query": 'count(ALERTS{alertstate="firing", severity="critical", pipeline="$pipeline"}) or vector(0)',
    "max": 0,
}
NO_NAN_LOSS = {
    "name": "training produced no NaN loss",
    "query": 'max(diffurec_train_nan_loss{pipeline="$pipeline", step="train", model="$model"})',
    "max": 0,
}
PUSHED_NDCG = {
    "name": "pushed NDCG@10 equals the metrics JSON",
    "query": 'diffurec_ndcg{k="10", pipeline="$pipeline", step="evaluate", model="$model"}',
    "equals_metric": "NDCG@10",
}
RULES = [NO_CRITICAL_ALERT, NO_NAN_LOSS, PUSHED_NDCG]


def metrics_json(ndcg10: float = NDCG10) -> dict:
    values = {"HR@5": 4.0, "HR@10": 8.0, "HR@20": 12.0, "NDCG@5": 2.0, "NDCG@10": ndcg10, "NDCG@20": 4.5}
    return {
        "metrics": values,
        "unit": "percent",
        "split": "test",
        "users": 943,
        "model": {"name": "diffurec", "preset": "fast-init"},
        "lineage": {"splits_md5": "abc.dir"},
    }


# A gate needs a floor and the margin over popularity (issue 12); run_gate's baseline is the
# candidate itself, so the margin holds.
FLOORS = {"min": {"HR@10": 3.0}, "min_margin_over_popularity": {"NDCG@10": 0.0}}


def write_params(folder: Path, rules: object) -> str:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"gate": FLOORS | {"prometheus": rules}}, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def servers() -> Servers:
    """The session's Prometheus + Pushgateway (started once, stopped at exit)."""
    return start_servers()


@pytest.fixture
def candidate(tmp_path) -> str:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics_json()))
    return str(path)


@pytest.fixture
def pipeline(monkeypatch) -> str:
    """A pipeline label of this test's own; the gate's step is not pushed anywhere."""
    name = f"gate-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DIFFUREC_PIPELINE", name)
    monkeypatch.delenv("DIFFUREC_PUSHGATEWAY", raising=False)
    monkeypatch.delenv(prometheus.URL_ENV, raising=False)
    monkeypatch.delenv("DIFFUREC_RUN_ID", raising=False)
    return name


def push_run(servers: Servers, pipeline: str, nan_loss: float, ndcg10: float) -> None:
    """What the train and evaluate steps of `pipeline` push (monitoring/README.md), then wait
    until Prometheus has scraped both."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    for step, name, value, labels in (
        ("train", "diffurec_train_nan_loss", nan_loss, {}),
        ("evaluate", "diffurec_ndcg", ndcg10, {"k": "10"}),
    ):
        registry = CollectorRegistry()
        gauge = Gauge(name, "test series", labelnames=list(labels), registry=registry)
        (gauge.labels(**labels) if labels else gauge).set(value)
        key = {"pipeline": pipeline, "model": "diffurec", "step": step}
        push_to_gateway(servers.pushgateway, job="diffurec", registry=registry, grouping_key=key)
    for name in ("diffurec_train_nan_loss", "diffurec_ndcg"):
        servers.wait_for(f'{name}{{pipeline="{pipeline}"}}')


def run_gate(candidate: str, params: str, out: Path, *extra: str) -> int:
    command = ["gate", "--candidate", candidate, "--baseline", candidate, "--params", params]
    return main([*command, "--out", str(out), *extra])


def prometheus_checks(decision: dict) -> dict:
    return {check["name"]: check for check in decision["checks"] if check["kind"] == "prometheus"}


# --- against the real Prometheus ----------------------------------------------------------------


def test_checks_that_hold_pass_and_record_query_value_and_result(
    servers, pipeline, candidate, tmp_path, capsys
):
    push_run(servers, pipeline, nan_loss=0.0, ndcg10=NDCG10)
    out = tmp_path / "decision.json"
    params = write_params(tmp_path, RULES)
    status = run_gate(candidate, params, out, "--prometheus", servers.prometheus)
    assert status == 0
    decision = json.loads(out.read_text())
    assert decision["passed"] is True, decision["reason"]
    assert decision["prometheus"] == {"url": servers.prometheus, "skipped": None}
    checks = prometheus_checks(decision)
    assert list(checks) == [rule["name"] for rule in RULES]
    nan_check = checks[NO_NAN_LOSS["name"]]
    # The query as sent, placeholders filled in from the run.
    assert nan_check["query"] == (
        f'max(diffurec_train_nan_loss{{pipeline="{pipeline}", step="train", model="diffurec"}})'
    )
    assert (nan_check["value"], nan_check["threshold"], nan_check["comparison"], nan_check["passed"]) == (
        0.0,
        0.0,
        "<=",
        True,
    )
    assert checks[NO_CRITICAL_ALERT["name"]]["value"] == 0.0
    ndcg = checks[PUSHED_NDCG["name"]]
    assert (ndcg["value"], ndcg["threshold"], ndcg["metric"]) == (NDCG10, NDCG10, "NDCG@10")
    assert ndcg["passed"] is True
    assert decision["failed"] == [] and "passed all 5 checks" in decision["reason"]
    printed = capsys.readouterr().out
    assert "training produced no NaN loss" in printed and "<= 0" in printed
    # The gate's gauges count the Prometheus checks; MLflow tags would carry them too.
    gauges = gate.decision_gauges(decision)
    assert gauges["gate_checks"] == 5.0 and gauges["gate_prometheus_checks_skipped"] == 0.0
    tags = json.loads(gate.decision_tags(decision)["gate_checks"])
    assert {"name": NO_NAN_LOSS["name"], "value": 0.0, "threshold": 0.0, "passed": True} in tags


def test_failing_checks_reject_the_candidate(servers, pipeline, candidate, tmp_path):
    # NaN loss in training, and a pushed NDCG@10 that is not the metrics JSON's (off by 1e-4).
    push_run(servers, pipeline, nan_loss=1.0, ndcg10=NDCG10 + 1e-4)
    no_data = {"name": "a series nobody pushed", "query": 'max(diffurec_hr{pipeline="$pipeline"})', "min": 1}
    out = tmp_path / "decision.json"
    params = write_params(tmp_path, [NO_NAN_LOSS, PUSHED_NDCG, no_data])
    assert run_gate(candidate, params, out, "--prometheus", servers.prometheus) == 0
    decision = json.loads(out.read_text())
    assert decision["passed"] is False
    assert decision["failed"] == [NO_NAN_LOSS["name"], PUSHED_NDCG["name"], no_data["name"]]
    checks = prometheus_checks(decision)
    assert checks[NO_NAN_LOSS["name"]]["value"] == 1.0
    mismatch = checks[PUSHED_NDCG["name"]]
    assert mismatch["value"] == pytest.approx(NDCG10 + 1e-4, abs=1e-12) and mismatch["threshold"] == NDCG10
    assert checks[no_data["name"]]["value"] is None and checks[no_data["name"]]["note"] == "no data"
    assert "rejected: 3 of 5 checks failed" in decision["reason"]
    # --fail-on-reject turns the rejection into exit status 2 (after writing the decision).
    out.unlink()
    status = run_gate(candidate, params, out, "--prometheus", servers.prometheus, "--fail-on-reject")
    assert status == 2
    assert out.exists()


def test_equals_metric_allows_1e_6_and_no_more(servers, pipeline, tmp_path):
    push_run(servers, pipeline, nan_loss=0.0, ndcg10=NDCG10 + 5e-7)
    params = write_params(tmp_path, [PUSHED_NDCG])
    results = {}
    for label, ndcg10 in (("within", NDCG10), ("beyond", NDCG10 - 1e-6)):
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(metrics_json(ndcg10)))
        out = tmp_path / f"decision-{label}.json"
        assert run_gate(str(path), params, out, "--prometheus", servers.prometheus) == 0
        results[label] = json.loads(out.read_text())["passed"]
    assert results == {"within": True, "beyond": False}


def test_the_repository_checks_hold_on_what_the_steps_push(
    servers, pipeline, candidate, tmp_path, monkeypatch, repo_root
):
    """params.yaml's own checks against pushes made by diffurec.telemetry (the steps' code)."""
    from diffurec import telemetry

    monkeypatch.setenv("DIFFUREC_PUSHGATEWAY", servers.pushgateway)
    monkeypatch.setenv("DIFFUREC_RUN_ID", "gate-test-run")
    telemetry.report_step("train", 1.0, True, {"train_nan_loss": 0.0}, {"model": "diffurec"})
    telemetry.report_step("evaluate", 1.0, True, metrics_json()["metrics"], {"model": "diffurec"})
    servers.wait_for(f'diffurec_ndcg{{pipeline="{pipeline}", step="evaluate"}}')
    servers.wait_for(f'diffurec_train_nan_loss{{pipeline="{pipeline}", step="train"}}')
    monkeypatch.delenv("DIFFUREC_PUSHGATEWAY")
    out = tmp_path / "decision.json"
    params = str(repo_root / "params.yaml")
    extra = ("--prometheus", servers.prometheus)
    assert run_gate(candidate, params, out, *extra) == 0
    decision = json.loads(out.read_text())
    checks = prometheus_checks(decision)
    assert len(checks) == len(gate.load_thresholds(params)["prometheus"]) > 0
    assert all(check["passed"] for check in checks.values()), checks
    assert decision["passed"] is True, decision["reason"]


def test_a_registered_version_fills_version_and_is_tagged_only_when_prometheus_answered(
    servers, pipeline, tmp_path, monkeypatch, ml100k_splits
):
    from diffurec import registry
    from promotion_models import fit_on_first, fresh_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_tracking_uri(tmp_path))
    model_dir, metrics = fit_on_first(ml100k_splits, 20_000, tmp_path / "candidate")
    version = registry.register_model_folder(model_dir, metrics, "rec")["version"]
    rule = {
        "name": "this version was never rejected",
        "query": 'count(diffurec_gate_passed{pipeline="$pipeline", version="$version"} == 0) or vector(0)',
        "max": 0,
    }
    params = write_params(tmp_path, [rule])
    named = ("--model-name", "rec", "--version", version)
    out = tmp_path / "decision.json"
    # Unreachable: exit 2, no decision and no tag on the version.
    refused = ("--prometheus", f"http://127.0.0.1:{free_port()}")
    assert run_gate(str(metrics), params, out, *named, *refused) == 2
    assert not out.exists() and "gate_decision_id" not in registry.get_version("rec", version)["tags"]

    assert run_gate(str(metrics), params, out, *named, "--prometheus", servers.prometheus) == 0
    decision = json.loads(out.read_text())
    (check,) = prometheus_checks(decision).values()
    assert f'version="{version}"' in check["query"] and check["passed"] is True
    tags = registry.get_version("rec", version)["tags"]
    assert tags["gate_decision_id"] == decision["decision_id"]
    assert rule["name"] in tags["gate_checks"]


def test_a_query_prometheus_rejects_fails_even_when_unreachable_is_allowed(
    servers, pipeline, candidate, tmp_path, capsys
):
    params = write_params(tmp_path, [{"name": "broken", "query": "max(diffurec_hr{", "max": 0}])
    out = tmp_path / "decision.json"
    extra = ("--prometheus", servers.prometheus, "--allow-unreachable-prometheus")
    assert run_gate(candidate, params, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad_data" in err and "max(diffurec_hr{" in err
    assert not out.exists()


def test_instant_query_reads_vectors_and_scalars(servers):
    url = servers.prometheus
    assert prometheus.instant_query(url, "vector(2.5)") == [prometheus.Sample({}, 2.5)]
    assert prometheus.instant_query(url, "scalar(vector(3))") == [prometheus.Sample({}, 3.0)]
    assert math.isnan(prometheus.instant_query(url, "vector(0) / 0")[0].value)
    assert prometheus.instant_query(url, 'up{job="no-such-job"}') == []
    with pytest.raises(prometheus.PrometheusQueryError, match="expected an instant vector"):
        prometheus.instant_query(url, "up[1m]")


# --- Prometheus out of reach: fail closed, unless allowed ---------------------------------------


def test_unreachable_prometheus_fails_closed_in_one_line(pipeline, candidate, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "decision.json"
    assert run_gate(candidate, write_params(tmp_path, RULES), out, "--prometheus", url) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert url in err and "connection refused" in err and "--allow-unreachable-prometheus" in err
    assert not out.exists()


def test_no_prometheus_url_fails_closed_and_the_env_var_is_the_default(
    pipeline, candidate, tmp_path, capsys, monkeypatch
):
    params = write_params(tmp_path, RULES)
    out = tmp_path / "decision.json"
    assert run_gate(candidate, params, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Prometheus URL" in err and prometheus.URL_ENV in err
    assert not out.exists()
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(prometheus.URL_ENV, url)
    assert run_gate(candidate, params, out) == 2
    assert url in capsys.readouterr().err
    assert not out.exists()


def test_allowed_unreachable_prometheus_is_recorded_as_skipped(pipeline, candidate, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "decision.json"
    status = run_gate(
        candidate, write_params(tmp_path, RULES), out, "--prometheus", url, "--allow-unreachable-prometheus"
    )
    assert status == 0
    decision = json.loads(out.read_text())
    assert decision["passed"] is True  # the floor and the margin alone decided
    assert [check["kind"] for check in decision["checks"]] == ["floor", "margin_over_popularity"]
    skipped = decision["prometheus"]["skipped"]
    assert url in skipped and "connection refused" in skipped and "--allow-unreachable-prometheus" in skipped
    assert "3 Prometheus checks skipped" in decision["reason"]
    assert "3 Prometheus checks skipped" in capsys.readouterr().out
    assert gate.decision_gauges(decision)["gate_prometheus_checks_skipped"] == 1.0


@pytest.fixture
def silent_server() -> Iterator[str]:
    """127.0.0.1:PORT that completes TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """127.0.0.1:PORT that answers a header line, then one byte every 0.1 s, forever: every
    read gets data, so only a deadline on the whole call ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        connections = []
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
                connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                connections.append(connection)
            except (TimeoutError, OSError):
                pass
            for connection in connections:
                try:
                    connection.sendall(b"a")
                except OSError:
                    pass
            time.sleep(0.1)
        for connection in connections:
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    listener.close()


@pytest.mark.parametrize("server", ["silent_server", "dripping_server"])
def test_a_prometheus_that_never_answers_fails_within_the_deadline(
    server, request, pipeline, candidate, tmp_path, capsys
):
    url = request.getfixturevalue(server)
    out = tmp_path / "decision.json"
    started = time.monotonic()
    status = run_gate(
        candidate, write_params(tmp_path, RULES), out, "--prometheus", url, "--prometheus-timeout", "1"
    )
    elapsed = time.monotonic() - started
    assert status == 2 and not out.exists()
    assert elapsed < 4.0, f"took {elapsed:.1f} s with a 1 s deadline"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no answer within 1 s" in err and url in err
    # With the flag the gate goes on, and the decision says why the checks were skipped.
    allowed = ("--prometheus", url, "--prometheus-timeout", "1", "--allow-unreachable-prometheus")
    assert run_gate(candidate, write_params(tmp_path, RULES), out, *allowed) == 0
    assert "no answer within 1 s" in json.loads(out.read_text())["prometheus"]["skipped"]


def test_an_empty_section_asks_nothing_and_decides_as_before(pipeline, candidate, tmp_path):
    out = tmp_path / "decision.json"
    url = f"http://127.0.0.1:{free_port()}"  # would refuse: it is never asked
    assert run_gate(candidate, write_params(tmp_path, []), out, "--prometheus", url) == 0
    decision = json.loads(out.read_text())
    kinds = [check["kind"] for check in decision["checks"]]
    assert decision["prometheus"] is None and kinds == ["floor", "margin_over_popularity"]
    assert "skipped" not in decision["reason"]
    assert "gate_prometheus_checks_skipped" not in gate.decision_gauges(decision)


# --- the section in params.yaml, placeholders, one check ----------------------------------------


@pytest.mark.parametrize(
    "rules, key, message",
    [
        ({"name": "x"}, "gate.prometheus", "expected a list of checks"),
        (["max(up)"], r"gate.prometheus\[0\]", "expected a mapping"),
        ([{"query": "up", "max": 0}], r"gate.prometheus\[0\].name", "non-empty string"),
        ([{"name": "x", "query": "  ", "max": 0}], r"gate.prometheus\[0\].query", "non-empty string"),
        ([{"name": "x", "query": "up"}], r"gate.prometheus\[0\]", "exactly one of min, max, equals_metric"),
        ([{"name": "x", "query": "up", "min": 0, "max": 1}], r"gate.prometheus\[0\]", "exactly one of"),
        ([{"name": "x", "query": "up", "max": "0"}], r"gate.prometheus\[0\].max", "finite number"),
        ([{"name": "x", "query": "up", "max": 0, "for": "5m"}], r"gate.prometheus\[0\]", "unknown key 'for'"),
        ([{"name": "x", "query": "up", "equals_metric": "NDCG@11"}], r"\.equals_metric", "unknown metric"),
        ([{"name": "x", "query": 'up{run="$runid"}', "max": 0}], r"\.query", r"unknown placeholder \$runid"),
        (
            [{"name": "x", "query": "up", "max": 0}, {"name": "x", "query": "up", "min": 0}],
            r"gate.prometheus\[1\].name",
            "names another check",
        ),
    ],
)
def test_bad_checks_name_params_yaml_and_the_key(tmp_path, rules, key, message):
    params = write_params(tmp_path, rules)
    with pytest.raises(DiffuRecError, match=f"{key}: .*{message}") as error:
        gate.load_thresholds(params)
    assert str(error.value).startswith(f"{params}: gate.prometheus")
    assert len(str(error.value).splitlines()) == 1


def test_the_section_is_checked_the_same_as_json(tmp_path):
    rules = [dict(NO_NAN_LOSS), {"name": "regex anchor", "query": 'up{job=~"diffurec$"}', "min": 1}]
    loaded = gate.load_thresholds(write_params(tmp_path, rules))
    assert loaded["prometheus"] == [
        {"name": NO_NAN_LOSS["name"], "query": NO_NAN_LOSS["query"], "max": 0.0},
        {"name": "regex anchor", "query": 'up{job=~"diffurec$"}', "min": 1.0},
    ]
    assert gate.parse_thresholds(json.dumps(FLOORS | {"prometheus": rules})) == loaded
    with pytest.raises(DiffuRecError, match=r"^--thresholds\.prometheus\[0\]\.query: expected a non-empty"):
        gate.parse_thresholds('{"prometheus": [{"name": "x", "query": "", "max": 0}]}')


def test_placeholders_are_filled_in_and_quoted_for_promql(monkeypatch):
    monkeypatch.setenv("DIFFUREC_PIPELINE", "diffurec-ml-100k")
    monkeypatch.setenv("DIFFUREC_RUN_ID", 'dvc-"1"')
    values = gate.placeholder_values(metrics_json(), "7")
    assert values == {"pipeline": "diffurec-ml-100k", "model": "diffurec", "run": 'dvc-"1"', "version": "7"}
    query = 'x{pipeline="$pipeline", model="${model}", run="$run", version="$version", job=~"a$"}'
    assert gate.substitute(query, values) == (
        'x{pipeline="diffurec-ml-100k", model="diffurec", run="dvc-\\"1\\"", version="7", job=~"a$"}'
    )
    monkeypatch.delenv("DIFFUREC_PIPELINE")
    monkeypatch.delenv("DIFFUREC_RUN_ID")
    assert gate.placeholder_values(metrics_json(), None) == {
        "pipeline": "diffurec",
        "model": "diffurec",
        "run": "",
        "version": "",
    }


def test_one_check_needs_exactly_one_finite_sample():
    rule = {"name": "loss", "query": "q", "max": 0.0}
    sample = prometheus.Sample
    assert gate.prometheus_check(rule, "q", [sample({}, 0.0)], {})["passed"] is True
    assert gate.prometheus_check(rule, "q", [sample({}, 0.5)], {})["passed"] is False
    two = gate.prometheus_check(rule, "q", [sample({"a": "1"}, 0.0), sample({"a": "2"}, 0.0)], {})
    assert two["passed"] is False and two["value"] is None and two["note"].startswith("2 series")
    nan = gate.prometheus_check(rule, "q", [sample({}, math.nan)], {})
    assert nan["passed"] is False and nan["value"] is None and nan["note"] == "value nan"
    floor = gate.prometheus_check({"name": "up", "query": "q", "min": 1.0}, "q", [sample({}, 1.0)], {})
    assert floor["passed"] is True and floor["comparison"] == ">="
    json.dumps([two, nan, floor], allow_nan=False)


def test_decide_refuses_prometheus_rules_that_were_not_evaluated():
    thresholds = FLOORS | {"prometheus": [NO_NAN_LOSS]}
    with pytest.raises(DiffuRecError, match="Prometheus checks: evaluate them first"):
        gate.decide(metrics_json(), thresholds)
