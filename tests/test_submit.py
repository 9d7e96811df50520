"""`diffurec pipeline submit` (wait and report) and `diffurec pipeline upload`, against a local
Kubeflow Pipelines API server on 127.0.0.1 that answers the v2beta1 endpoints kfp.Client uses
with KFP's JSON bodies and records the requests (tests/kfp_server.py); the registered version
is read from a real MLflow tracking store (SQLite) by its kfp_run_id tag.

Issue 15 breaks reproduced here: submit POSTed {"namespace": ""} to a multi-user Kubeflow,
returned right after creating the run (no wait, state, metrics, gate decision or version, exit
0 whatever happened), and nothing uploaded the pipeline or its versions.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from kfp_server import KfpServer

from diffurec.cli import main
from pipelines import runners

SHA = "0123456789abcdef0123456789abcdef01234567"
RUN_ID = "5f0c2b8e-8c53-4c6f-9d55-3f4c1a2b7e10"
FAST = ["--poll", "0.05", "--request-timeout", "10"]


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    for name in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIFFUREC_GIT_COMMIT", SHA)  # the checkout's commit, whatever git says


def submit(server: KfpServer, *flags: str) -> int:
    return main(["pipeline", "submit", "--host", server.url, *FAST, *flags])


def test_submit_waits_in_the_namespace_and_reports(capsys):
    """Multi-user: the experiment and the run carry the namespace; the run is polled until it
    ends; its URL, final state and gate decision are printed; exit 0."""
    with KfpServer(multi_user=True, run_id=RUN_ID, run_states=["PENDING", "RUNNING", "SUCCEEDED"]) as server:
        status = submit(server, "--namespace", "team-a", "--experiment", "retrain", "--run-name", "r1")
    out = capsys.readouterr().out
    assert status == 0, out
    [experiment] = server.calls("POST", "/experiments")
    assert experiment.body == {"display_name": "retrain", "namespace": "team-a"}
    [listed] = server.calls("GET", "/experiments")
    assert listed.query["namespace"] == "team-a"
    [run] = server.calls("POST", "/runs")
    created = server.state.experiments[0]["experiment_id"]
    assert run.body["experiment_id"] == created and run.body["display_name"] == "r1"
    assert run.body["service_account"] == "diffurec-pipeline-runner"
    # The data version: the commit CI compiles for ($DIFFUREC_GIT_COMMIT), the spec's default.
    spec_inputs = run.body["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
    assert spec_inputs["data_version"]["defaultValue"] == SHA
    assert (
        run.body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"]
        == "diffurec-train-evaluate-promote"
    )
    assert len(server.calls("GET", f"/runs/{RUN_ID}")) == 3  # PENDING, RUNNING, SUCCEEDED
    assert f"{server.url}/#/runs/details/{RUN_ID}" in out
    assert "run r1: SUCCEEDED" in out and "gate: PASSED" in out


def test_multi_user_without_namespace_posts_nothing(capsys):
    with KfpServer(multi_user=True) as server:
        status = submit(server)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--namespace" in err[0] and "multi-user" in err[0]
    assert not [r for r in server.requests if r.method == "POST"]


def test_single_user_sends_no_empty_namespace():
    with KfpServer(run_id=RUN_ID) as server:
        assert submit(server, "--no-wait") == 0
    [experiment] = server.calls("POST", "/experiments")
    assert "namespace" not in experiment.body
    assert not [r for r in server.requests if r.path.startswith("/apis/v2beta1/runs/")]  # not polled


def test_existing_experiment_is_reused():
    with KfpServer(run_id=RUN_ID) as server:
        assert submit(server, "--no-wait") == 0
        assert submit(server, "--no-wait") == 0
    assert len(server.calls("POST", "/experiments")) == 1
    runs = server.calls("POST", "/runs")
    assert len(runs) == 2 and runs[0].body["experiment_id"] == runs[1].body["experiment_id"]


def test_failed_run_exits_3(capsys, tmp_path):
    summary = tmp_path / "summary.md"
    with KfpServer(run_id=RUN_ID, run_states=["RUNNING", "FAILED"], tasks={"train": "FAILED"}) as server:
        status = submit(server, "--summary", str(summary))
    assert status == runners.EXIT_RUN_FAILED == 3
    assert "FAILED" in capsys.readouterr().out
    assert "| State | FAILED |" in summary.read_text()


def test_gate_rejected_from_the_run_tasks_exits_4(capsys):
    """Without MLflow: the run succeeded but its promote task did not run (the gate said no)."""
    tasks = {"train": "SUCCEEDED", "gate": "SUCCEEDED", "promote": "SKIPPED"}
    with KfpServer(run_id=RUN_ID, run_states=["SUCCEEDED"], tasks=tasks) as server:
        status = submit(server)
    assert status == runners.EXIT_GATE_REJECTED == 4
    assert "gate: REJECTED" in capsys.readouterr().out


def test_timeout_exits_5_and_says_so(capsys, tmp_path):
    summary = tmp_path / "summary.md"
    with KfpServer(run_id=RUN_ID, run_states=["RUNNING"]) as server:
        status = main(
            ["pipeline", "submit", "--host", server.url, "--timeout", "0.5", *FAST, "--summary", str(summary)]
        )
    assert status == runners.EXIT_TIMEOUT == 5
    assert "still running" in capsys.readouterr().out
    assert len(server.calls("GET", f"/runs/{RUN_ID}")) >= 2
    assert "timed out" in summary.read_text()


@pytest.fixture
def registry(tmp_path):
    """A real MLflow store with the version the run registered: tagged by register (metrics,
    lineage: kfp_run_id, data revision, raw md5) and by the gate (rejected)."""
    from mlflow import MlflowClient

    from pipelines.diffurec_pipeline import default_arguments, load_params

    name = default_arguments(load_params())["registry_name"]  # the run's registry_name
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(name)
    client.create_model_version(name, source="file:///unused", tags={"kfp_run_id": "another run"})
    tags = {
        "kfp_run_id": RUN_ID,
        "metrics": json.dumps({"HR@10": 12.5, "NDCG@10": 6.25}),
        "data_revision": SHA,
        "raw_data_md5": "d41d8cd98f00b204e9800998ecf8427e",
        "gate_passed": "false",
        "gate_reason": "NDCG@10 6.25 below the floor 7.0",
    }
    client.create_model_version(name, source="file:///unused", tags=tags)
    return uri, name


def test_report_reads_the_registered_version_from_mlflow(capsys, tmp_path, registry):
    uri, name = registry
    """MLflow's gate tags of the version this run registered (its kfp_run_id) decide, whatever
    the run's tasks say; metrics, version and data version go to the output and the summary."""
    summary = tmp_path / "summary.md"
    with KfpServer(run_id=RUN_ID, run_states=["SUCCEEDED"]) as server:
        status = submit(server, "--tracking-uri", uri, "--summary", str(summary))
    out = capsys.readouterr().out
    assert status == runners.EXIT_GATE_REJECTED, out
    assert "gate: REJECTED - NDCG@10 6.25 below the floor 7.0 (mlflow)" in out
    assert f"registered: {name} version 2" in out and "HR@10 12.50" in out
    text = summary.read_text()
    assert f"| Model version | {name} version 2 |" in text
    assert f"| Data version | {SHA} (raw md5 d41d8cd98f00b204e9800998ecf8427e) |" in text
    assert "| HR@10 | 12.50 |" in text and "| NDCG@10 | 6.25 |" in text
    assert "**rejected**" in text and f"/#/runs/details/{RUN_ID}" in text


def upload(server: KfpServer, *flags: str) -> int:
    return main(["pipeline", "upload", "--host", server.url, "--request-timeout", "10", *flags])


def test_upload_creates_the_pipeline_then_the_commit_version_once(capsys):
    with KfpServer(multi_user=True) as server:
        assert upload(server, "--namespace", "team-a") == 0
        assert upload(server, "--namespace", "team-a") == 0
    [created] = server.calls("POST", "/pipelines/upload")
    assert created.query["name"] == "diffurec-train-evaluate-promote"
    assert created.query["namespace"] == "team-a"
    assert created.query["description"].startswith("Validate, preprocess, train")
    # The spec uploaded: the UI shows each parameter's description from it.
    spec = next(doc for doc in yaml.safe_load_all(created.body["file"]) if doc)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert "data_version" in parameters and all(p.get("description") for p in parameters.values())
    [version] = server.calls("POST", "/pipelines/upload_version")  # the second call: nothing
    assert version.query["name"] == SHA[:12]
    assert version.query["pipelineid"] == server.state.pipelines[0]["pipeline_id"]
    out = capsys.readouterr().out
    assert "created the pipeline and created the version" in out and "already there" in out


def test_upload_adds_a_version_to_an_existing_pipeline():
    pipeline = {"pipeline_id": "p-1", "display_name": "diffurec-train-evaluate-promote", "namespace": ""}
    with KfpServer(pipelines=[pipeline]) as server:
        assert upload(server, "--version", "v-manual") == 0
    assert [r.path for r in server.requests if r.method == "POST"] == [
        "/apis/v2beta1/pipelines/upload_version"
    ]
    assert server.requests[-1].query == {
        "name": "v-manual",
        "pipelineid": "p-1",
        "description": server.requests[-1].query["description"],
    }


def test_upload_refuses_a_dirty_checkout_unless_allowed(monkeypatch, capsys):
    monkeypatch.setattr(runners, "git_commit", lambda repo=None: (SHA, True))
    with KfpServer() as server:
        assert upload(server) == 2
        err = capsys.readouterr().err
        assert f"{SHA[:12]}-dirty" in err and "--allow-dirty" in err
        assert not server.requests
        assert upload(server, "--allow-dirty") == 0
    [version] = server.calls("POST", "/pipelines/upload_version")
    assert version.query["name"] == f"{SHA[:12]}-dirty"


def test_run_url_and_exit_statuses_are_distinct():
    assert len({0, 2, runners.EXIT_RUN_FAILED, runners.EXIT_GATE_REJECTED, runners.EXIT_TIMEOUT}) == 5
    assert re.fullmatch(r"http://h:1/#/runs/details/x", runners.run_url("http://h:1/", "x"))
