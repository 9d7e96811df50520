"""Distributed training from the pipeline: the PyTorchJob diffurec.distributed_job builds, and
`diffurec train-job` creating, watching and deleting it through the Kubernetes API.

The API is tests/k8s_server.py: a local HTTP server on 127.0.0.1 speaking the Kubernetes API's
JSON (create, watch events, delete) that records every request; the `kubernetes` client is
pointed at it (--api-host). The schema is the Training Operator's own CRD (tests/schemas/,
tests/crd_schema.py), pod templates are checked with kubernetes_validate.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import jsonschema
import pytest

from crd_schema import validate
from k8s_server import fail, hang, k8s_api, run_master_locally, succeed
from trainer_data import write_ml100k_slice

from diffurec.cli import main
from diffurec.distributed_job import build_pytorchjob, custom_objects_api, run_pytorchjob
from diffurec.errors import DiffuRecError
from diffurec.model_folder import verify_manifest

CRD = "kubeflow.org_pytorchjobs.yaml"
KUBERNETES_VERSION = "1.32.0"  # tests/test_deploy.py's
SETTINGS = {
    "model": "sasrec",
    "preset": "dense",
    "hyper": {"hidden_size": 16, "dropout": 0.0},
    "epochs": 1,
    "batch_size": 128,
    "eval_every": 1,
    "device": "cpu",
    "threads": 1,
}


def job(workers: int = 3, gpus: int = 1) -> dict:
    return build_pytorchjob(
        "diffurec-train-abc-123456",
        image="ghcr.io/diffurec/diffurec@sha256:" + "0" * 64,
        workers=workers,
        work_dir="/data/jobs",
        settings=SETTINGS,
        claim="diffurec-data",
        mount_path="/data",
        gpus_per_worker=gpus,
        deadline_s=3600,
        env={"DIFFUREC_RUN_ID": "run-1"},
    )


def test_the_job_is_valid_for_the_training_operators_crd_and_runs_torchrun_on_the_run_folder():
    import kubernetes_validate

    made = job(workers=3)
    validate(made, CRD)
    specs = made["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 2)
    for replica in specs.values():
        template = replica["template"]
        assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        pod = template["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "diffurec-data"
        assert container["command"][:4] == ["torchrun", "-m", "diffurec", "train"]
        assert "--splits=/data/jobs/diffurec-train-abc-123456/splits" in container["command"]
        assert "--out=/data/jobs/diffurec-train-abc-123456/model" in container["command"]
        settings = next(a for a in container["command"] if a.startswith("--settings="))
        assert json.loads(settings.removeprefix("--settings=")) == SETTINGS
        assert {"name": "DIFFUREC_RUN_ID", "value": "run-1"} in container["env"]
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": {"spec": pod}},
            KUBERNETES_VERSION,
            strict=True,
        )
    assert made["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600
    # The schema check can fail: a field the operator does not know, a count that is no integer.
    broken = copy.deepcopy(made)
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, CRD)
    broken = copy.deepcopy(made)
    broken["spec"]["runPolicy"]["suspended"] = False
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, CRD)


def test_a_cpu_job_asks_for_no_gpu_and_one_worker_is_no_job():
    pod = job(workers=2, gpus=0)["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    with pytest.raises(DiffuRecError, match="--workers must be at least 2"):
        job(workers=1)


@pytest.fixture(scope="module")
def splits_dir(shared_data, tmp_path_factory):
    return write_ml100k_slice(shared_data, tmp_path_factory.mktemp("job") / "splits", 120, 20)


def train_job(splits: Path, tmp_path: Path, host: str, *extra: str) -> list[str]:
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps({"params": {"profile": "cluster"}}))
    return [
        "train-job",
        f"--splits={splits}",
        f"--out={tmp_path / 'model'}",
        f"--settings={json.dumps(SETTINGS)}",
        f"--lineage-json={lineage}",
        "--workers=2",
        "--gpus-per-worker=0",
        f"--work-dir={tmp_path / 'shared' / 'jobs'}",
        f"--mount-path={tmp_path / 'shared'}",
        "--image=diffurec:test",
        "--namespace=team-a",
        f"--api-host={host}",
        "--deadline=100",
        *extra,
    ]


def test_train_job_trains_on_two_processes_and_copies_the_model_out(splits_dir, tmp_path, capsys):
    """The fake operator runs the Master's command here (2 Gloo processes): a real model folder
    comes back through the shared folder, the job is created in the namespace, watched by name
    and deleted after it succeeded, and the run folder is removed."""
    with k8s_api(run_master_locally({"OMP_NUM_THREADS": "1"})) as api:
        assert main(train_job(splits_dir, tmp_path, api.host)) == 0
    out = tmp_path / "model"
    verify_manifest(out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["model"] == "sasrec" and summary["epochs_run"] == 1
    assert summary["lineage"]["params"]["profile"] == "cluster"
    (post,) = api.made("POST")
    assert post.path == "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs"
    validate(post.body, CRD)
    name = post.body["metadata"]["name"]
    watches = api.made("GET")
    assert watches and all(w.query["fieldSelector"] == f"metadata.name={name}" for w in watches)
    (delete,) = api.made("DELETE")
    assert delete.path.endswith(f"/pytorchjobs/{name}")
    assert list((tmp_path / "shared" / "jobs").iterdir()) == []
    said = capsys.readouterr().out
    assert "Running (PyTorchJobRunning)" in said and "Succeeded (PyTorchJobSucceeded)" in said


def test_a_failed_job_fails_the_step_with_one_line_and_is_kept(splits_dir, tmp_path, capsys):
    with k8s_api(fail) as api:
        assert main(train_job(splits_dir, tmp_path, api.host)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "PyTorchJob team-a/diffurec-train-" in err
    assert "failed: Failed (PyTorchJobFailed): PyTorchJob has failed because 1 Master" in err
    assert api.made("DELETE") == []  # kept for its logs
    assert not (tmp_path / "model").exists()
    assert list((tmp_path / "shared" / "jobs").iterdir()) == []


def test_the_watch_ends_at_the_deadline_and_deletes_the_job(tmp_path):
    api_job = job(workers=2, gpus=0)
    with k8s_api(hang) as api:
        started = time.monotonic()
        with pytest.raises(DiffuRecError, match=r"not finished within 2 s \(deleted\)"):
            run_pytorchjob(
                custom_objects_api(api.host), api_job, "team-a", deadline_s=2, say=lambda line: None
            )
        elapsed = time.monotonic() - started
    assert elapsed < 4, elapsed
    (delete,) = api.made("DELETE")
    assert delete.path.endswith("/namespaces/team-a/pytorchjobs/diffurec-train-abc-123456")


def test_a_succeeded_job_returns_its_state_and_is_deleted():
    with k8s_api(succeed) as api:
        last = run_pytorchjob(
            custom_objects_api(api.host),
            job(workers=2, gpus=0),
            "team-a",
            deadline_s=10,
            say=lambda line: None,
        )
    assert last["status"]["conditions"][-1]["type"] == "Succeeded"
    assert len(api.made("DELETE")) == 1


def test_bad_settings_and_a_taken_name_are_refused(splits_dir, tmp_path, capsys):
    with k8s_api(succeed) as api:
        args = train_job(splits_dir, tmp_path, api.host)
        args[3] = "--settings=" + json.dumps({**SETTINGS, "epochs": 0})
        assert main(args) == 2
        assert api.requests == []  # refused before any request
        assert "--settings: epochs must be at least 1" in capsys.readouterr().err
        api.jobs["diffurec-train-abc-123456"] = {"metadata": {"name": "diffurec-train-abc-123456"}}
        with pytest.raises(DiffuRecError, match="not created: 409 .*already exists"):
            run_pytorchjob(custom_objects_api(api.host), job(workers=2), "team-a", deadline_s=5)


def test_the_hand_run_manifest_keeps_the_pods_the_pipeline_creates(repo_root):
    """k8s/base/training/pytorchjob.yaml (applied suspended, for a run by hand) is no second
    definition: its pods are the generator's in everything but the paths and the settings."""
    import yaml

    manifest = yaml.safe_load((repo_root / "k8s" / "base" / "training" / "pytorchjob.yaml").read_text())
    made = job(workers=2, gpus=0)
    assert manifest["spec"]["nprocPerNode"] == made["spec"]["nprocPerNode"]
    policy = {k: v for k, v in manifest["spec"]["runPolicy"].items() if k != "suspend"}
    assert policy == {k: v for k, v in made["spec"]["runPolicy"].items() if k != "activeDeadlineSeconds"}
    for replica in ("Master", "Worker"):
        hand = manifest["spec"]["pytorchReplicaSpecs"][replica]
        ours = made["spec"]["pytorchReplicaSpecs"][replica]
        assert hand["restartPolicy"] == ours["restartPolicy"]
        assert hand["template"]["metadata"]["annotations"] == ours["template"]["metadata"]["annotations"]
        assert (
            hand["template"]["metadata"]["labels"].items() <= ours["template"]["metadata"]["labels"].items()
        )
        hand_pod, our_pod = hand["template"]["spec"], ours["template"]["spec"]
        for key in ("serviceAccountName", "automountServiceAccountToken", "securityContext"):
            assert hand_pod[key] == our_pod[key], key
        assert [v for v in hand_pod["volumes"] if "emptyDir" in v] == [
            v for v in our_pod["volumes"] if "emptyDir" in v
        ]
        (hand_container,), (our_container,) = hand_pod["containers"], our_pod["containers"]
        for key in ("name", "securityContext"):
            assert hand_container[key] == our_container[key], key
        flags = {arg.split("=")[0] for arg in our_container["command"][4:]}
        assert hand_container["command"][:4] == our_container["command"][:4]
        assert {"--splits", "--out", "--checkpoint-dir", "--resume"} <= flags
        assert {arg.split("=")[0] for arg in hand_container["command"][4:]} >= {
            "--splits",
            "--out",
            "--checkpoint-dir",
            "--resume",
        }


def rbac_verb(request) -> str:
    """The RBAC verb the API server authorises a request as (kubernetes.io/docs: request verbs)."""
    collection = request.path.rstrip("/").endswith("/pytorchjobs")
    if request.method == "GET":
        if request.query.get("watch") in ("true", "1", "True"):
            return "watch"
        return "list" if collection else "get"
    return {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}[request.method]


def test_every_call_the_step_makes_is_granted_by_the_runner_role(repo_root):
    """The pipeline runner's Role (k8s/base/rbac.yaml) grants what the step uses: a success run
    and a deadline run, each request mapped to its RBAC verb, must all be in the Role's
    pytorchjobs rule (a call it does not grant fails only on a real cluster, as Forbidden)."""
    import yaml

    role = next(
        doc
        for doc in yaml.safe_load_all((repo_root / "k8s/base/rbac.yaml").read_text())
        if doc and doc["kind"] == "Role"
    )
    (rule,) = [r for r in role["rules"] if "pytorchjobs" in r["resources"]]
    used: set[str] = set()
    for operator, deadline in ((succeed, 10), (hang, 2)):
        with k8s_api(operator) as api:
            try:
                run_pytorchjob(
                    custom_objects_api(api.host),
                    job(workers=2, gpus=0),
                    "team-a",
                    deadline_s=deadline,
                    say=lambda line: None,
                )
            except DiffuRecError:
                pass
        used |= {rbac_verb(request) for request in api.requests}
    assert used == {"create", "watch", "delete"}
    assert used <= set(rule["verbs"]), sorted(used - set(rule["verbs"]))
