"""The Grafana dashboard (monitoring/grafana/diffurec-dashboard.json) against real data.

The pipeline's steps run on a slice of ML-100K, pushing to the real Pushgateway that the real
Prometheus on 127.0.0.1 scrapes every second: a raw log that fails validation and then one that
passes, preprocess, tiny trainings, evaluations, and register -> gate -> promote twice (the second
candidate is first rejected, then passed against the first as champion) on a sqlite MLflow. Then
every panel's PromQL, with the template variables substituted the way Grafana does, goes to
Prometheus's /api/v1/query and must return data; every annotation's query must mark the run's
events over its time range (/api/v1/query_range).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffurec.cli import main
from pipeline_clone import write_slice
from prometheus_servers import Servers, prometheus_servers  # noqa: F401 (fixture)
from promotion_models import fresh_tracking_uri
from trainer_data import TINY_DIFFUREC, hyper_args

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "monitoring" / "grafana" / "diffurec-dashboard.json"
CANDIDATE = "diffurec"  # the architecture the run registers; the model variable's selection
USERS = 60  # users of the ML-100K slice: the whole run takes about 30 s on one core
# The gate as the pipeline runs it: floors, the change against a champion, and Prometheus checks
# (they query the Prometheus under test), lenient enough for a tiny model.
PASSING_GATE = {
    "min": {"HR@10": 0.0, "NDCG@10": 0.0},
    "min_margin_over_popularity": {"NDCG@10": -100.0},
    "max_drop_vs_champion": {"NDCG@10": {"relative": 0.02}},
    "prometheus": [
        {
            "name": "training produced no NaN loss",
            "query": 'max(diffurec_train_nan_loss{pipeline="$pipeline", step="train", model="$model"})',
            "max": 0,
        },
        {
            "name": "pushed NDCG@10 equals the metrics JSON",
            "query": 'diffurec_ndcg{k="10", pipeline="$pipeline", step="evaluate", model="$model"}',
            "equals_metric": "NDCG@10",
        },
    ],
}
REJECTING_GATE = {"min": {"HR@10": 100.0}, "min_margin_over_popularity": {"NDCG@10": 0.0}}
# $name, ${name}, ${name:format} and [[name]]: Grafana's variable syntaxes.
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\s*\)", re.DOTALL)
# The series the dashboard must show (issue 14: training loss and throughput, evaluation per
# version, gate outcomes, step durations and failures, the champion's version).
REQUIRED_METRICS = {
    "diffurec_train_final_loss",
    "diffurec_train_nan_loss",
    "diffurec_samples_per_second",
    "diffurec_hr",
    "diffurec_ndcg",
    "diffurec_registered_version",
    "diffurec_gate_passed",
    "diffurec_gate_checks_failed",
    "diffurec_step_success",
    "diffurec_step_duration_seconds",
    "diffurec_step_last_success_timestamp_seconds",
    "diffurec_step_last_failure_timestamp_seconds",
    "diffurec_champion_version",
}


# ---- reading the dashboard ------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data: rows left out, the panels of collapsed rows included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title [refId], expr) of every target of every panel."""
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]


def annotation_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (annotation["name"], annotation["expr"])
        for annotation in dashboard["annotations"]["list"]
        if "expr" in annotation
    ]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(diffurec_\w+)\s*\{", expr))


# ---- Grafana's interpolation ----------------------------------------------------------------


def regex_escape(value: str) -> str:
    """Grafana's escaping of a multi-value variable's value inside a PromQL regex string."""
    return re.sub(
        r"[$^*{}\[\]'+?.()|]", lambda match: "\\\\" + match.group(0), value.replace("\\", "\\\\\\\\")
    )


def formatted(variable: dict[str, Any], selected: list[str]) -> str:
    """The text Grafana puts in a query for the selected values of a Prometheus variable."""
    if not variable.get("multi") and not variable.get("includeAll"):
        (value,) = selected
        return value.replace("\\", "\\\\").replace("'", "\\\\'")
    escaped = [regex_escape(value) for value in selected]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with every variable replaced; an unknown variable (a typo) fails the test."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"unknown variable ${name} in {expr!r} (known: {sorted(values)})"
        return values[name]

    return VARIABLE.sub(replace, expr)


# ---- Prometheus's HTTP API ------------------------------------------------------------------


def api(servers: Servers, path: str, params: dict[str, Any]) -> Any:
    """GET /api/v1/<path>; the `data`, or the error Prometheus gave (as a string)."""
    url = f"{servers.prometheus}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}: {json.load(error).get('error', '')}"
    return body["data"] if body["status"] == "success" else str(body.get("error"))


def queries_without_data(
    servers: Servers,
    queries: list[tuple[str, str]],
    values: dict[str, str],
    window: tuple[float, float] | None,
) -> list[str]:
    """The queries that return nothing (or an error): instant queries now, or range queries over
    `window` (start, end) with a 1 s step, as Grafana's annotations run them."""
    empty = []
    for name, expr in queries:
        query = substitute(expr, values)
        if window is None:
            data = api(servers, "query", {"query": query})
        else:
            data = api(
                servers, "query_range", {"query": query, "start": window[0], "end": window[1], "step": 1}
            )
        if isinstance(data, str) or not data["result"]:
            empty.append(f"{name}: {query} -> {data if isinstance(data, str) else 'no data'}")
    return empty


def label_values(servers: Servers, definition: str, values: dict[str, str]) -> list[str]:
    """The options of a `label_values(selector, label)` variable, as Grafana asks Prometheus."""
    match = LABEL_VALUES.fullmatch(substitute(definition, values).strip())
    assert match, f"not a label_values(selector, label) query: {definition!r}"
    selector, label = match.groups()
    data = api(servers, f"label/{label}/values", {"match[]": selector, "start": time.time() - 3600})
    assert not isinstance(data, str), data
    return data


# ---- the pipeline run -----------------------------------------------------------------------


def step(*args: object, status: int = 0) -> None:
    argv = [str(arg) for arg in args]
    assert main(argv) == status, f"diffurec {' '.join(argv)}"


@pytest.fixture(scope="module")
def pipeline_run(prometheus_servers, shared_data, tmp_path_factory) -> dict[str, Any]:  # noqa: F811
    """Run the pipeline's steps once, pushing to the real Pushgateway; what the dashboard selects."""
    folder = tmp_path_factory.mktemp("dashboard")
    pipeline = f"diffurec-dashboard-{uuid.uuid4().hex[:8]}"  # this run's series only
    started = time.time()
    source = shared_data / "ml-100k" / "ml-100k.inter"
    raw = write_slice(source, folder / "raw.inter", USERS)
    bad_raw = write_slice(source, folder / "bad.inter", USERS, bad_timestamp_row=3)
    splits, model, popularity = folder / "splits", folder / "model", folder / "popularity"
    metrics, baseline = folder / "metrics.json", folder / "popularity_metrics.json"
    servers = prometheus_servers

    def gate_and_promote(version: int, gate: dict[str, Any], attempt: str) -> None:
        decision = folder / f"decision-{version}-{attempt}.json"
        step(
            "gate", "--candidate", metrics, "--baseline", baseline, "--thresholds", json.dumps(gate),
            "--override-reason", "thresholds of this test", "--override-by", "test_dashboard",
            "--name", pipeline, "--version", version, "--splits", splits, "--out", decision,
        )  # fmt: skip
        step("promote", "--name", pipeline, "--decision", decision, "--if-passed")

    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "DIFFUREC_PUSHGATEWAY": servers.pushgateway,
            "DIFFUREC_PIPELINE": pipeline,
            "DIFFUREC_RUN_ID": f"test-{uuid.uuid4().hex[:8]}",
            "DIFFUREC_DATASET": f"ml-100k-slice-{USERS}",
            "DIFFUREC_PROMETHEUS": servers.prometheus,
            "MLFLOW_TRACKING_URI": fresh_tracking_uri(folder),
            "GX_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "1",
        }.items():
            env.setenv(name, value)
        env.delenv("DIFFUREC_STEP", raising=False)

        step("validate", "--input", bad_raw, "--out", folder / "validate-bad", status=2)
        # scraped before the next run of the step replaces it
        servers.wait_for(f'diffurec_step_success{{pipeline="{pipeline}", step="validate_raw"}} == 0')
        step("validate", "--input", raw, "--out", folder / "validate-raw")
        step("preprocess", "--input", raw, "--out", splits, "--max-len", 20)
        step("validate", "--splits", splits, "--out", folder / "validate-splits")
        step("pipeline", "lineage", "--raw", raw, "--splits", splits, "--out", folder / "lineage.json")
        step(
            "train", "--splits", splits, "--out", model, "--lineage-json", folder / "lineage.json",
            "--model", CANDIDATE, "--preset", "fast-init", "--epochs", 2, "--batch-size", 64,
            *hyper_args(TINY_DIFFUREC), "--no-progress",
        )  # fmt: skip
        step("evaluate", "--model", model, "--splits", splits, "--out", metrics)
        step("train", "--model", "popularity", "--splits", splits, "--out", popularity, "--no-progress")
        step("evaluate", "--model", popularity, "--splits", splits, "--out", baseline)

        # the gate's Prometheus checks read the candidate's evaluation: scraped first
        servers.wait_for(f'diffurec_ndcg{{pipeline="{pipeline}", step="evaluate", model="{CANDIDATE}"}}')
        step("register", "--model", model, "--metrics", metrics, "--name", pipeline)
        gate_and_promote(1, PASSING_GATE, "first")  # the first champion
        servers.wait_for(f'diffurec_champion_version{{pipeline="{pipeline}", step="promote"}} == 1')
        step("register", "--model", model, "--metrics", metrics, "--name", pipeline)
        gate_and_promote(2, REJECTING_GATE, "rejected")
        servers.wait_for(f'diffurec_gate_passed{{pipeline="{pipeline}", step="gate", version="2"}} == 0')
        gate_and_promote(2, PASSING_GATE, "passed")  # against v1 as the champion
        servers.wait_for(f'diffurec_champion_version{{pipeline="{pipeline}", step="promote"}} == 2')
    return {"pipeline": pipeline, "model": CANDIDATE, "started": started, "metrics": metrics}


@pytest.fixture(scope="module")
def options(pipeline_run, prometheus_servers) -> dict[str, list[str]]:  # noqa: F811
    """The options Grafana offers after the run, from the variables' own queries: they must offer
    the run's pipeline and the models it trained (the model-agnostic steps' "any" left out)."""
    variable = variables(load_dashboard())
    values = {"datasource": "prometheus-uid", "mlflow": "http://localhost:5000"}
    pipelines = label_values(prometheus_servers, variable_query(variable["pipeline"]), values)
    assert pipeline_run["pipeline"] in pipelines
    values["pipeline"] = formatted(variable["pipeline"], [pipeline_run["pipeline"]])
    models = label_values(prometheus_servers, variable_query(variable["model"]), values)
    assert sorted(models) == sorted([CANDIDATE, "popularity"])
    return {"pipeline": [pipeline_run["pipeline"]], "model": models}


def selection(options: dict[str, list[str]], models: list[str]) -> dict[str, str]:
    """Every variable's text in the queries when the run's pipeline and `models` are selected."""
    variable = variables(load_dashboard())
    return {
        "datasource": "prometheus-uid",
        "mlflow": variable["mlflow"]["query"],
        "pipeline": formatted(variable["pipeline"], options["pipeline"]),
        "model": formatted(variable["model"], models),
    }


@pytest.fixture(scope="module")
def selected(options) -> dict[str, str]:
    """The candidate's model selected (the strictest view: the baseline's series do not count)."""
    return selection(options, [CANDIDATE])


# ---- tests ----------------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    variable = variables(dashboard)
    assert variable["datasource"]["type"] == "datasource" and variable["datasource"]["query"] == "prometheus"
    for name in ("pipeline", "model"):
        assert variable[name]["type"] == "query"
        assert variable_query(variable[name]).startswith("label_values(")
        assert variable[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    shown = list(panels(dashboard))
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    ids = [panel["id"] for panel in rows + shown]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in shown:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert 'pipeline="$pipeline"' in target["expr"], f"{panel['title']}: not filtered by pipeline"
    for name, expr in annotation_queries(dashboard):
        assert 'pipeline="$pipeline"' in expr, f"annotation {name}: not filtered by pipeline"
    # Links (to MLflow) use the dashboard's variables or Grafana's own (__data, __field).
    for match in VARIABLE.finditer(json.dumps([panel["fieldConfig"] for panel in shown])):
        name = next(group for group in match.groups() if group)
        assert name in variable or name.startswith("__"), f"unknown variable ${name} in a link"
    shown_metrics = set().union(*(metric_names(expr) for _, expr in panel_queries(dashboard)))
    assert REQUIRED_METRICS <= shown_metrics, sorted(REQUIRED_METRICS - shown_metrics)


@pytest.mark.parametrize("models", ["candidate", "all"])
def test_every_panel_query_returns_data_after_a_pipeline_run(prometheus_servers, options, models):  # noqa: F811
    values = selection(options, [CANDIDATE] if models == "candidate" else options["model"])
    queries = panel_queries(load_dashboard())
    assert len(queries) >= 20
    assert queries_without_data(prometheus_servers, queries, values, window=None) == []


def test_the_panels_show_what_the_run_did(prometheus_servers, pipeline_run, selected):  # noqa: F811
    """Not only data: the values the run produced, under the right version and column."""
    by_title = {panel["title"]: panel for panel in panels(load_dashboard())}

    def result(title: str, ref: str = "A") -> list[tuple[dict[str, str], float]]:
        (target,) = [target for target in by_title[title]["targets"] if target["refId"] == ref]
        data = api(prometheus_servers, "query", {"query": substitute(target["expr"], selected)})
        return [(sample["metric"], float(sample["value"][1])) for sample in data["result"]]

    assert result("Champion version") == [({"pipeline": pipeline_run["pipeline"]}, 2.0)]
    assert result("Last gate decision") == [({"version": "2"}, 1.0)]
    assert result("Gate checks failed", "A") == [({"version": "2"}, 0.0)]
    assert result("Steps failing now") == [({}, 0.0)]
    failed_at = {labels["step"]: value for labels, value in result("Steps: latest run of each", "E")}
    assert failed_at.pop("validate_raw") > pipeline_run["started"] * 1000  # milliseconds
    assert set(failed_at.values()) == {0.0}  # never failed
    # Each column of the per-version table holds the metric it is named after, for version 2.
    metrics = json.loads(Path(pipeline_run["metrics"]).read_text())["metrics"]
    panel = by_title["Evaluation per model version"]
    (organize,) = [step for step in panel["transformations"] if step["id"] == "organize"]
    for target in panel["targets"]:
        column = organize["options"]["renameByName"][f"Value #{target['refId']}"]
        ((labels, value),) = result(panel["title"], target["refId"])
        assert (labels["version"], labels["model"]) == ("2", CANDIDATE), column
        assert value == pytest.approx(metrics[column]), column


def test_every_annotation_marks_the_runs_events(prometheus_servers, pipeline_run, selected):  # noqa: F811
    """A failed step, a rejected gate and a promotion happened: each annotation's query finds its
    event over the run's time range."""
    queries = annotation_queries(load_dashboard())
    assert {name for name, _ in queries} == {"Gate rejections", "Step failures", "Promotions"}
    # The range's steps end exactly now, so the last one sees the last scrape.
    end = time.time()
    window = (end - math.ceil(end - pipeline_run["started"]), end)
    assert queries_without_data(prometheus_servers, queries, selected, window) == []


def test_a_panel_with_a_misspelled_metric_or_variable_fails(prometheus_servers, selected):  # noqa: F811
    """The check above can fail: a misspelled metric or a wrong variable name is caught."""
    dashboard = copy.deepcopy(load_dashboard())
    target = next(panel for panel in panels(dashboard) if panel["title"] == "Step duration")["targets"][0]
    target["expr"] = target["expr"].replace("diffurec_step_duration_seconds", "diffurec_step_duration_second")
    assert queries_without_data(prometheus_servers, panel_queries(dashboard), selected, window=None) == [
        f"Step duration [A]: {substitute(target['expr'], selected)} -> no data"
    ]
    target["expr"] = target["expr"].replace("$pipeline", "$pipline")
    with pytest.raises(AssertionError, match=r"unknown variable \$pipline"):
        queries_without_data(prometheus_servers, panel_queries(dashboard), selected, window=None)
