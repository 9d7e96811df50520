"""Telemetry against the real Pushgateway and Prometheus: push through the real code, read the
values back through Prometheus' HTTP API."""

from __future__ import annotations

import json
import logging
import math
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


# ---- the grouping contract (monitoring/README.md, "Series") ----------------------------------


def test_the_group_is_pipeline_model_and_step(monkeypatch):
    for variable in ("DIFFUREC_PIPELINE", "DIFFUREC_STEP"):
        monkeypatch.delenv(variable, raising=False)
    assert telemetry.grouping_key("gate", {"version": "3"}) == {
        "pipeline": "diffurec",
        "model": "any",
        "step": "gate",
    }
    monkeypatch.setenv("DIFFUREC_PIPELINE", "diffurec-ml-100k")
    assert telemetry.grouping_key("train", {"model": "sasrec", "dataset": "x"}) == {
        "pipeline": "diffurec-ml-100k",
        "model": "sasrec",
        "step": "train",
    }
    monkeypatch.setenv("DIFFUREC_STEP", "train_baseline")
    assert telemetry.grouping_key("train", {"model": "popularity"})["step"] == "train_baseline"


def test_run_dataset_and_version_label_every_series(monkeypatch):
    for variable in ("DIFFUREC_RUN_ID", "DIFFUREC_DATASET"):
        monkeypatch.delenv(variable, raising=False)
    assert telemetry.series_labels({"model": "sasrec"}) == {"run": "", "dataset": "", "version": ""}
    monkeypatch.setenv("DIFFUREC_RUN_ID", "r7")
    monkeypatch.setenv("DIFFUREC_DATASET", "ml-1m")
    assert telemetry.series_labels({"dataset": "slice", "version": 4, "suite": "raw", "model": "x"}) == {
        "run": "r7",
        "dataset": "ml-1m",
        "version": "4",
        "suite": "raw",
    }


def pushed_groups(servers) -> list[dict]:
    """Every group the real Pushgateway holds, from its API."""
    with urllib.request.urlopen(f"http://{servers.pushgateway}/api/v1/metrics", timeout=5) as response:
        return json.load(response)["data"]


def group_values(servers, pipeline: str, step: str) -> dict[str, list[tuple[dict, str]]]:
    """The metrics of the pipeline's groups of `step`: name -> [(labels, value)]."""
    (group,) = [
        group
        for group in pushed_groups(servers)
        if group["labels"].get("pipeline") == pipeline and group["labels"]["step"] == step
    ]
    return {
        name: [(sample["labels"], sample["value"]) for sample in family["metrics"]]
        for name, family in group.items()
        if name.startswith("diffurec_")
    }


def test_each_push_replaces_its_group_and_carries_the_times(prometheus_servers, run_id):  # noqa: F811
    pipeline = f"test-{run_id}"
    telemetry.report_step(
        "evaluate", 1.0, True, gauges={"HR@10": 5.0}, labels={"model": "sasrec", "version": "3"}
    )
    first = group_values(prometheus_servers, pipeline, "evaluate")
    assert first["diffurec_step_last_failure_timestamp_seconds"][0][1] == "0"
    succeeded_at = first["diffurec_step_last_success_timestamp_seconds"][0][1]
    assert float(succeeded_at) > 0

    telemetry.report_step("evaluate", 2.0, False, gauges={}, labels={"model": "sasrec"})
    second = group_values(prometheus_servers, pipeline, "evaluate")
    assert "diffurec_hr" not in second  # replaced, not merged
    assert second["diffurec_step_success"] == [
        (
            {
                "job": "diffurec",
                "instance": "",
                "pipeline": pipeline,
                "model": "sasrec",
                "step": "evaluate",
                "run": run_id,
                "dataset": "ml-100k",
                "version": "",
            },
            "0",
        )
    ]
    assert second["diffurec_step_last_success_timestamp_seconds"][0][1] == succeeded_at
    assert float(second["diffurec_step_last_failure_timestamp_seconds"][0][1]) >= float(succeeded_at)
    # Another model's evaluation is a group of its own.
    telemetry.report_step("evaluate", 1.0, True, gauges={}, labels={"model": "popularity"})
    models = sorted(
        group["labels"]["model"]
        for group in pushed_groups(prometheus_servers)
        if group["labels"].get("pipeline") == pipeline
    )
    assert models == ["popularity", "sasrec"]


def test_failed_steps_land_in_the_group_their_success_would(prometheus_servers, run_id, tmp_path):  # noqa: F811
    """A step that fails is pushed under the step and model a successful run would use, so the
    next success clears it: the parser's describe() finds them before the handler runs."""
    from diffurec.cli import main
    from diffurec.model_folder import FORMAT_NAME, FORMAT_VERSION

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": "sasrec", "name": "sasrec"})
    )
    missing = str(tmp_path / "missing")
    commands = {
        ("validate_raw", "any"): ["validate", "--input", missing, "--out", str(tmp_path / "v1")],
        ("validate_splits", "any"): ["validate", "--splits", missing, "--out", str(tmp_path / "v2")],
        ("train", "sasrec"): [
            "train",
            "--splits",
            missing,
            "--out",
            str(tmp_path / "m"),
            "--model",
            "sasrec",
        ],
        ("evaluate", "sasrec"): ["evaluate", "--model", str(folder), "--splits", missing, "--out", missing],
        ("evaluate", "any"): ["evaluate", "--model", missing, "--splits", missing, "--out", missing],
        ("lineage", "any"): ["pipeline", "lineage", "--raw", missing, "--out", str(tmp_path / "l.json")],
    }
    for command in commands.values():
        assert main(command) == 2, command
    pipeline = f"test-{run_id}"
    groups = {
        (group["labels"]["step"], group["labels"]["model"]): group["diffurec_step_success"]["metrics"][0][
            "value"
        ]
        for group in pushed_groups(prometheus_servers)
        if group["labels"].get("pipeline") == pipeline
    }
    assert groups == {key: "0" for key in commands}


def test_pipeline_subcommands_have_their_own_steps():
    from diffurec.cli import build_parser

    parser = build_parser()
    steps = {
        "run": "pipeline",
        "local": "pipeline",
        "compile": "compile",
        "fetch-raw": "fetch_raw",
        "lineage": "lineage",
    }
    arguments = {"fetch-raw": ["--dataset", "ml-100k", "--out", "x"], "lineage": ["--out", "x"]}
    for command, step in steps.items():
        args = parser.parse_args(["pipeline", command, *arguments.get(command, [])])
        assert args.describe(args) == {"step": step}, command


def test_train_pushes_its_final_loss_and_whether_any_loss_was_nan(shared_data, tmp_path, monkeypatch):
    """The train handler's gauges come from the model folder's curve.json."""
    from diffurec.cli import build_parser
    from diffurec.cli.model_commands import run_train
    from trainer_data import TINY_SASREC, hyper_args, write_ml100k_slice

    splits = write_ml100k_slice(shared_data, tmp_path / "splits", 60, 12)
    parser = build_parser()
    model = tmp_path / "sasrec"
    flags = ["--model", "sasrec", *hyper_args(TINY_SASREC), "--epochs", "2", "--threads", "1", "--out"]
    gauges = run_train(parser.parse_args(["train", "--splits", str(splits), *flags, str(model)]))["gauges"]
    losses = [row["loss"] for row in json.loads((model / "curve.json").read_text())["train"]]
    assert len(losses) == 2
    assert (gauges["train_final_loss"], gauges["train_nan_loss"]) == (losses[-1], 0.0)

    popularity = tmp_path / "popularity"
    args = parser.parse_args(
        ["train", "--splits", str(splits), "--model", "popularity", "--out", str(popularity)]
    )
    gauges = run_train(args)["gauges"]
    assert (gauges["train_final_loss"], gauges["train_nan_loss"]) == (None, 0.0)  # no epochs, no loss

    # A diverged run: the same handler over a curve with a NaN epoch.
    import diffurec.train

    real_train = diffurec.train.train

    def diverging_train(*arguments, **options):
        summary = real_train(*arguments, **options)
        curve_path = model / "curve.json"
        curve = json.loads(curve_path.read_text())
        curve["train"][0]["loss"] = float("nan")
        curve_path.write_text(json.dumps(curve))
        return summary

    monkeypatch.setattr(diffurec.train, "train", diverging_train)
    gauges = run_train(parser.parse_args(["train", "--splits", str(splits), *flags, str(model)]))["gauges"]
    assert gauges["train_nan_loss"] == 1.0 and math.isfinite(gauges["train_final_loss"])
