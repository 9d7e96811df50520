"""The deployment targets (k8s/overlays/) and the pipeline runner's rights, checked offline.

The Role `diffurec-pipeline-runner` must grant exactly what a run's pods call the Kubernetes
API for, no more: Kubeflow Pipelines' driver and launcher (the KFP version this project pins,
2.17), Argo's executor, and our own steps. RUNNER_RULES below is that list, each rule with the
source that needs it; the test holds the rendered Role of every target against it in both
directions. What KFP's code could also call but our pipeline never makes it call is listed in
NOT_GRANTED, and a test checks the compiled spec does not start needing it.

Each target runs everything in the namespace where its runs execute, and binds the Role to the
service account of runs started from Kubeflow's UI as well: multi-user Kubeflow (a Profile's
namespace, account default-editor) and standalone Kubeflow Pipelines (namespace kubeflow,
account pipeline-runner).
"""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
import yaml
from crd_schema import SCHEMAS, validate
from test_deploy import BIN, OVERLAYS, REPO, by_kind, pod_specs, render

KFP = "kubeflow/pipelines 2.17.0 (commit 4a3592cb2dd0a91a4652ab93893ec8beda1f3158)"
# (rule, who needs it and where it says so)
RUNNER_RULES: list[tuple[dict, str]] = [
    (
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kfp-launcher"], "verbs": ["get"]},
        f'KFP driver: backend/src/v2/config/env.go FromConfigMap (ConfigMaps(ns).Get("kfp-launcher"); '
        f"NotFound tolerated, Forbidden fails), called from backend/src/v2/driver/root_dag.go; {KFP}",
    ),
    (
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["mlpipeline-minio-artifact"],
            "verbs": ["get"],
        },
        "KFP launcher/driver: backend/src/v2/objectstore/object_store.go OpenBucket -> "
        "Secrets(ns).Get(secretName), default name minioArtifactSecretName = "
        f'"mlpipeline-minio-artifact" in backend/src/v2/config/env.go; {KFP}',
    ),
    (
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        "KFP driver backend/src/v2/driver/k8s.go publishDriverExecution (Pods(ns).Get(own pod)) and "
        f"launcher backend/src/v2/component/launcher_v2.go retryIndexFromPodAnnotation; {KFP}",
    ),
    (
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]},
        "Argo's executor (wait container) records step outputs as WorkflowTaskResults; KFP grants "
        f"the same in manifests/kustomize/base/pipeline/pipeline-runner-role.yaml; {KFP}",
    ),
    (
        {
            "apiGroups": ["kubeflow.org"],
            "resources": ["pytorchjobs"],
            "verbs": ["create", "watch", "delete"],
        },
        "our train step with workers > 1 (diffurec/distributed_job.py): create_namespaced_custom_object, "
        "a watch (list_namespaced_custom_object with watch=true is the verb watch), "
        "delete_namespaced_custom_object",
    ),
]
# What the KFP code paths could use and why this pipeline does not (see the test below):
NOT_GRANTED = {
    "argoproj.io workflows get": "driver getCurrentWorkflowMetadata (backend/src/v2/cmd/driver/main.go) "
    "only when a task uses the pipeline job create/schedule time placeholders",
    "persistentvolumeclaims create/get/delete": "driver createPVC/deletePVC (backend/src/v2/driver/k8s.go) "
    "only for kfp.kubernetes.CreatePVC/DeletePVC; we mount an existing claim (the kubelet does)",
    "secrets of our own (diffurec-dvc-remote, diffurec-mlflow-auth)": "passed as secretKeyRef env by "
    "the kubelet, never read through the API",
    "coordination.k8s.io leases": "the promotion lock (diffurec/promote.py) is held in the MLflow store, "
    "not in a Kubernetes Lease",
}
# target -> (namespace, the service account of runs started from the UI)
TARGETS = {
    "kubeflow-multiuser": ("diffurec", "default-editor"),
    "standalone-kfp": ("kubeflow", "pipeline-runner"),
}


def target_of(overlay: str) -> str:
    return overlay.removesuffix("-gpu")


def canonical(rule: dict) -> tuple:
    """A rule as a comparable value (order of list entries does not matter to the API server)."""
    return tuple(
        (key, tuple(sorted(rule[key])))
        for key in ("apiGroups", "resources", "resourceNames", "verbs", "nonResourceURLs")
        if key in rule
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if not (BIN / "kubectl").exists():
        pytest.fail(f"{BIN / 'kubectl'} missing: run scripts/setup.sh (requirements-dev.txt)")
    return {overlay: render(overlay) for overlay in OVERLAYS}


def runner_role(objects: list[dict]) -> dict:
    (role,) = [r for r in by_kind(objects, "Role") if r["metadata"]["name"] == "diffurec-pipeline-runner"]
    return role


def test_every_target_comes_in_a_cpu_and_a_gpu_flavour():
    assert sorted(OVERLAYS) == sorted([*TARGETS, *(f"{t}-gpu" for t in TARGETS)])


def test_the_runner_role_grants_exactly_the_listed_rules(rendered):
    expected = sorted(canonical(rule) for rule, _ in RUNNER_RULES)
    for overlay, objects in rendered.items():
        assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding"), overlay
        granted = sorted(canonical(rule) for rule in runner_role(objects)["rules"])
        # Nothing missing (a run fails) and nothing more (least privilege).
        assert granted == expected, overlay
        for rule in runner_role(objects)["rules"]:
            # A rule restricted by name applies to get only (list/watch/create ignore names).
            if "resourceNames" in rule:
                assert rule["verbs"] == ["get"], rule


def test_the_rule_check_sees_a_missing_and_an_extra_right(rendered):
    expected = sorted(canonical(rule) for rule, _ in RUNNER_RULES)
    rules = copy.deepcopy(runner_role(rendered[OVERLAYS[0]])["rules"])
    # main before issue 15: no ConfigMap or Secret reads (KFP's driver fails on Forbidden).
    without = [r for r in rules if r["resources"] not in (["configmaps"], ["secrets"])]
    assert sorted(canonical(r) for r in without) != expected
    # Any secret instead of the object store's.
    broad = [dict(r, resourceNames=[]) if r["resources"] == ["secrets"] else r for r in rules]
    assert sorted(canonical(r) for r in broad) != expected
    extra = rules + [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]
    assert sorted(canonical(r) for r in extra) != expected


def test_the_compiled_spec_needs_nothing_the_role_leaves_out():
    """NOT_GRANTED holds only while the spec uses none of the KFP features that need more."""
    spec = (REPO / "pipelines" / "diffurec_pipeline.yaml").read_text()
    for needs_workflow_get in ("pipeline_job_create_time_utc", "pipeline_job_schedule_time_utc"):
        assert needs_workflow_get not in spec
    _, platform = yaml.safe_load_all(spec)
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert "createPvc" not in executor and "deletePvc" not in executor, name
        for mount in executor.get("pvcMount", []):
            assert mount.get("constant") or mount.get("pvcNameParameter"), (name, mount)
    assert "coordination.k8s.io" not in (REPO / "diffurec" / "promote.py").read_text()
    assert set(NOT_GRANTED)


def test_each_target_binds_the_role_to_its_runs_accounts_in_its_namespace(rendered):
    for overlay, objects in rendered.items():
        namespace, ui_account = TARGETS[target_of(overlay)]
        (binding,) = by_kind(objects, "RoleBinding")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "diffurec-pipeline-runner",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "diffurec-pipeline-runner", "namespace": namespace},
            {"kind": "ServiceAccount", "name": ui_account, "namespace": namespace},
        ], overlay
        # Everything in the runs' namespace: the steps mount the settings and the data volume
        # of their own namespace. No Namespace object: the Profile's or KFP's.
        assert not by_kind(objects, "Namespace"), overlay
        for obj in objects:
            assert obj["metadata"].get("namespace") == namespace, (
                overlay,
                obj["kind"],
                obj["metadata"]["name"],
            )
        names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        assert {
            ("ConfigMap", "diffurec-settings"),
            ("PersistentVolumeClaim", "diffurec-data"),
            ("ServiceAccount", "diffurec-pipeline-runner"),
        } <= names, overlay


def test_the_runs_use_the_account_the_manifests_bind():
    from pipelines.diffurec_pipeline import DATA_PVC, SERVICE_ACCOUNT, SETTINGS_CONFIG_MAP

    base = list(yaml.safe_load_all((REPO / "k8s" / "base" / "rbac.yaml").read_text()))
    assert SERVICE_ACCOUNT in {o["metadata"]["name"] for o in base if o["kind"] == "ServiceAccount"}
    assert (SETTINGS_CONFIG_MAP, DATA_PVC) == ("diffurec-settings", "diffurec-data")


def test_the_multiuser_profile_is_valid_and_names_the_targets_namespace():
    path = REPO / "k8s" / "overlays" / "kubeflow-multiuser" / "profile.yaml"
    profile = yaml.safe_load(path.read_text())
    validate(profile, "kubeflow.org_profiles.yaml")
    assert profile["metadata"]["name"] == TARGETS["kubeflow-multiuser"][0]
    assert "namespace" not in profile["metadata"]  # cluster-scoped
    # Applied before the target (its namespace must exist first), so not one of its resources.
    kustomization = yaml.safe_load((path.parent / "kustomization.yaml").read_text())
    assert "profile.yaml" not in kustomization.get("resources", [])
    broken = copy.deepcopy(profile)
    broken["spec"]["ownr"] = broken["spec"].pop("owner")
    with pytest.raises(Exception, match="ownr"):
        validate(broken, "kubeflow.org_profiles.yaml")


def test_profile_namespaces_run_no_istio_sidecar_in_our_pods(rendered):
    """KFP's step pods run without a sidecar and call the servers in plain HTTP; a sidecar in a
    training replica keeps it from finishing."""
    for overlay, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in ("Deployment", "StatefulSet"):
                templates = {obj["metadata"]["name"]: obj["spec"]["template"]}
            elif obj["kind"] == "PyTorchJob":
                templates = {r: s["template"] for r, s in obj["spec"]["pytorchReplicaSpecs"].items()}
            else:
                continue
            for name, template in templates.items():
                annotation = template["metadata"].get("annotations", {}).get("sidecar.istio.io/inject")
                if obj["kind"] == "PyTorchJob" or target_of(overlay) == "kubeflow-multiuser":
                    assert annotation == "false", (overlay, obj["kind"], name)


def test_the_pytorchjob_validates_against_the_training_operators_crd(rendered):
    for overlay, objects in rendered.items():
        (job,) = by_kind(objects, "PyTorchJob")
        validate(job, "kubeflow.org_pytorchjobs.yaml")
        assert len(pod_specs([job])) == 2, overlay
    (job,) = by_kind(rendered[OVERLAYS[0]], "PyTorchJob")
    typo = copy.deepcopy(job)
    typo["spec"]["runPolicy"]["suspnd"] = typo["spec"]["runPolicy"].pop("suspend")
    with pytest.raises(Exception, match="suspnd"):
        validate(typo, "kubeflow.org_pytorchjobs.yaml")


def test_vendored_schemas_are_the_files_their_sources_name():
    table = (SCHEMAS / "SOURCES.md").read_text()
    rows = re.findall(
        r"^\| `([^`]+)` \| ([\w./-]+) \| `([^`]+)` \| ([0-9a-f]{40}) \([^)]+\) \| ([0-9a-f]{64}) \|$",
        table,
        re.M,
    )
    files = {p.name for p in SCHEMAS.iterdir() if p.name != "SOURCES.md"}
    assert {row[0] for row in rows} == files
    for name, _repo, _path, _commit, digest in rows:
        assert hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest() == digest, name
