"""The deployment files (k8s/, Dockerfile, .github/workflows) checked offline.

scripts/lint.sh runs the generic linters; these tests check what the project promises about
the manifests: strict API validity of every object (custom kinds' pod templates included),
resources and non-root everywhere, GPU scheduling only in the GPU overlay, no inlined secrets,
least-privilege RBAC, alerting rules identical to monitoring/alerts.yml, and commands that the
real CLIs (diffurec, torchrun, mlflow) accept.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.32.0"
# Every overlay in k8s/overlays (what people apply).
OVERLAYS = tuple(sorted(p.parent.name for p in (REPO / "k8s" / "overlays").glob("*/kustomization.yaml")))
# The deployment targets come in a CPU and a GPU (-gpu) flavour; checks that need one render
# take this target's.
CPU_OVERLAY, GPU_OVERLAY = "standalone-kfp", "standalone-kfp-gpu"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "PyTorchJob")


def render(overlay: str) -> list[dict]:
    result = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if not (BIN / "kubectl").exists():
        pytest.fail(f"{BIN / 'kubectl'} missing: run scripts/setup.sh (requirements-dev.txt)")
    return {overlay: render(overlay) for overlay in OVERLAYS}


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod spec) of every workload, one per PyTorchJob replica type."""
    specs = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            specs.append((f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "PyTorchJob":
            for replica, replica_spec in obj["spec"]["pytorchReplicaSpecs"].items():
                specs.append(
                    (f"PyTorchJob/{obj['metadata']['name']}/{replica}", replica_spec["template"]["spec"])
                )
    return specs


def test_every_object_is_valid_for_the_api_strictly(rendered):
    import kubernetes_validate

    custom = {"PyTorchJob", "PrometheusRule", "ServiceMonitor"}
    for overlay, objects in rendered.items():
        kinds = {o["kind"] for o in objects}
        # The namespace is a Kubeflow Profile's or Kubeflow Pipelines' own, never ours.
        assert "Namespace" not in kinds, overlay
        assert {
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "PersistentVolumeClaim",
            "StatefulSet",
            "Deployment",
            "Service",
            "ConfigMap",
        } <= kinds, overlay
        for obj in objects:
            if obj["kind"] in custom:
                continue
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        # The custom kinds have no bundled schema: their pod templates are checked as
        # PodTemplates, so a typo in a container field fails here too.
        for _name, spec in pod_specs(by_kind(objects, "PyTorchJob")):
            template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "x"},
                "template": {"spec": spec},
            }
            kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field(rendered):
    import kubernetes_validate

    deployment = dict(by_kind(rendered[CPU_OVERLAY], "Deployment")[0])
    deployment["spec"] = dict(deployment["spec"], replicaCount=2)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_container_has_requests_limits_and_runs_unprivileged(rendered):
    for overlay, objects in rendered.items():
        specs = pod_specs(objects)
        assert {name.split("/")[0] for name, _ in specs} == set(WORKLOAD_KINDS)
        for name, spec in specs:
            assert spec["securityContext"]["runAsNonRoot"] is True, (overlay, name)
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
            assert spec.get("automountServiceAccountToken") is False, name
            for container in spec["containers"]:
                where = (overlay, name, container["name"])
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][bound]), where
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"]["drop"] == ["ALL"], where


def test_gpu_overlay_schedules_training_on_gpus_and_cpu_overlay_does_not(rendered):
    for overlay, objects in rendered.items():
        (job,) = by_kind(objects, "PyTorchJob")
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert set(replicas) == {"Master", "Worker"}
        # Applying the manifests must not start a training run.
        assert job["spec"]["runPolicy"]["suspend"] is True
        for replica in replicas.values():
            spec = replica["template"]["spec"]
            (container,) = spec["containers"]
            assert container["name"] == "pytorch"  # the Training Operator's required name
            limits = container["resources"]["limits"]
            if overlay.endswith("-gpu"):
                assert limits["nvidia.com/gpu"] == int(job["spec"]["nprocPerNode"]) >= 1
                assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
                assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
                    "tolerations"
                ]
            else:
                assert "nvidia.com/gpu" not in limits
                assert "nodeSelector" not in spec and "tolerations" not in spec
        # Nothing but training asks for a GPU.
        for name, spec in pod_specs(objects):
            if not name.startswith("PyTorchJob/"):
                assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in spec["containers"])


def test_secrets_are_referenced_never_inlined(rendered):
    for objects in rendered.values():
        assert not by_kind(objects, "Secret")
        referenced = set()
        for name, spec in pod_specs(objects):
            for container in spec["containers"]:
                for env in container.get("env", []):
                    if any(word in env["name"].upper() for word in ("PASSWORD", "TOKEN", "SECRET", "USER")):
                        assert "value" not in env, (name, env["name"])
                        referenced.add(env["valueFrom"]["secretKeyRef"]["name"])
        assert referenced == {"diffurec-mlflow-db", "diffurec-mlflow-auth"}
        # Only the MLflow server may reach the database.
        (policy,) = [
            p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "mlflow-postgres"
        ]
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow-postgres"}
        (source,) = policy["spec"]["ingress"][0]["from"]
        assert source == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}
    # ... and the source files carry no Secret either (a Secret in an unused file would leak too).
    for path in (REPO / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path


def test_pipeline_runner_rbac_is_namespaced_and_minimal(rendered):
    objects = rendered[CPU_OVERLAY]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    (role,) = by_kind(objects, "Role")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        # Secrets: only KFP's object-store secret, read by name (tests/test_rbac.py lists the rules).
        if "secrets" in rule["resources"]:
            assert rule == {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["mlpipeline-minio-artifact"],
                "verbs": ["get"],
            }
        if rule["resources"] != ["pytorchjobs"] and rule["apiGroups"] != ["argoproj.io"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    (binding,) = by_kind(objects, "RoleBinding")
    accounts = {sa["metadata"]["name"] for sa in by_kind(objects, "ServiceAccount")}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # Ours, and the account of runs started from KFP's UI (tests/test_rbac.py).
    assert [s["name"] for s in binding["subjects"]] == ["diffurec-pipeline-runner", "pipeline-runner"]
    assert "diffurec-pipeline-runner" in accounts
    # Workloads use the account without API rights.
    for name, spec in pod_specs(objects):
        assert spec["serviceAccountName"] == "diffurec-workload", name


def test_alerting_rules_match_monitoring_alerts(rendered):
    source = REPO / "monitoring" / "alerts.yml"
    groups = yaml.safe_load(source.read_text())["groups"]
    for overlay, objects in rendered.items():
        (rule,) = by_kind(objects, "PrometheusRule")
        assert rule["spec"]["groups"] == groups, overlay
        (config,) = [
            c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("prometheus-config")
        ]
        assert config["data"]["alerts.yml"] == source.read_text()


def test_alert_sync_check_fails_when_the_copy_is_stale(tmp_path):
    for relative in (
        "monitoring/alerts.yml",
        "k8s/base/monitoring/alerts.yml",
        "k8s/components/prometheus-operator/prometheusrule.yaml",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, tmp_path / relative)
    script = [sys.executable, str(REPO / "scripts" / "sync_k8s_alerts.py"), "--repo", str(tmp_path)]
    assert subprocess.run(script + ["--check"], capture_output=True).returncode == 0
    with open(tmp_path / "monitoring" / "alerts.yml", "a") as f:
        f.write("      - record: diffurec:extra\n        expr: vector(1)\n")
    stale = subprocess.run(script + ["--check"], capture_output=True, text=True)
    assert stale.returncode == 1 and "out of date" in stale.stderr
    subprocess.run(script, check=True, capture_output=True)
    assert subprocess.run(script + ["--check"], capture_output=True).returncode == 0
    rule = yaml.safe_load((tmp_path / "k8s/components/prometheus-operator/prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"][0]["rules"][-1] == {"record": "diffurec:extra", "expr": "vector(1)"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) not installed")
def test_cluster_prometheus_config_is_valid_and_scrapes_the_pushgateway(rendered, tmp_path):
    objects = rendered[CPU_OVERLAY]
    (config,) = [
        c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("prometheus-config")
    ]
    prometheus = yaml.safe_load(config["data"]["prometheus.yml"])
    (job,) = prometheus["scrape_configs"]
    assert job["honor_labels"] is True
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "pushgateway"]
    # A short name, resolved in Prometheus' own namespace: the Pushgateway's.
    assert config["metadata"]["namespace"] == service["metadata"]["namespace"]
    host = "pushgateway"
    target = f"{host}:{service['spec']['ports'][0]['port']}"
    assert job["static_configs"][0]["targets"] == [target]
    # The mounted file paths, made local, and checked by promtool (rules included).
    (tmp_path / "alerts.yml").write_text(config["data"]["alerts.yml"])
    prometheus["rule_files"] = [str(tmp_path / Path(p).name) for p in prometheus["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus))
    check = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr


def test_pytorchjob_command_is_accepted_by_torchrun_and_diffurec(rendered):
    from torch.distributed.run import get_args_parser

    from diffurec.cli import build_parser

    (job,) = by_kind(rendered[GPU_OVERLAY], "PyTorchJob")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        command = replica["template"]["spec"]["containers"][0]["command"]
        assert command[0] == "torchrun"
        launch = get_args_parser().parse_args(command[1:])
        assert launch.module and launch.training_script == "diffurec"
        args = build_parser().parse_args(launch.training_script_args)
        assert args.command == "train"


def test_mlflow_server_arguments_are_options_of_the_installed_mlflow(rendered):
    from mlflow.cli import cli

    options = {opt for param in cli.commands["server"].params for opt in param.opts}
    (deployment,) = [
        d for d in by_kind(rendered[CPU_OVERLAY], "Deployment") if d["metadata"]["name"] == "mlflow"
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    for arg in container["args"][1:]:
        assert arg.split("=", 1)[0] in options, arg
    # The backend URI comes from the environment (the option's envvar), not from the arguments.
    (backend,) = [p for p in cli.commands["server"].params if p.name == "backend_store_uri"]
    assert backend.envvar == "MLFLOW_BACKEND_STORE_URI"
    assert {e["name"] for e in container["env"]} >= {"DB_USER", "DB_PASSWORD", "MLFLOW_BACKEND_STORE_URI"}


def mlflow_container(objects: list[dict]) -> tuple[dict, dict]:
    (deployment,) = [d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "mlflow"]
    spec = deployment["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def test_mlflow_runs_basic_auth_and_no_password_is_on_a_command_line(rendered):
    import re

    for overlay, objects in rendered.items():
        spec, container = mlflow_container(objects)
        assert "--app-name=basic-auth" in container["args"], overlay
        words = container["command"] + container["args"]
        assert not any(re.search(r"password|\$\(|postgresql://|secret", w, re.IGNORECASE) for w in words), (
            words
        )
        env = container["env"]
        secret_backed = {
            e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in env
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert secret_backed["MLFLOW_AUTH_ADMIN_USERNAME"] == ("diffurec-mlflow-auth", "username")
        assert secret_backed["MLFLOW_AUTH_ADMIN_PASSWORD"] == ("diffurec-mlflow-auth", "password")
        assert secret_backed["MLFLOW_FLASK_SERVER_SECRET_KEY"][0] == "diffurec-mlflow-auth"
        assert secret_backed["DB_PASSWORD"] == ("diffurec-mlflow-db", "password")
        # The kubelet expands $(VAR) only from variables defined before, and every one the
        # backend URI uses must hold a secret, not a literal.
        names = [e["name"] for e in env]
        backend = next(e for e in env if e["name"] == "MLFLOW_BACKEND_STORE_URI")
        references = re.findall(r"\$\((\w+)\)", backend["value"])
        assert references == ["DB_USER", "DB_PASSWORD"], backend
        for name in references:
            assert name in secret_backed and names.index(name) < names.index(backend["name"]), name
        assert backend["value"].startswith("postgresql://$(DB_USER):$(DB_PASSWORD)@")
        # The auth configuration is mounted from the ConfigMap the manifests ship.
        config_path = next(e["value"] for e in env if e["name"] == "MLFLOW_AUTH_CONFIG_PATH")
        (mount,) = [m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        (config_map,) = [
            c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]
        ]
        assert config_path.rsplit("/", 1)[1] in config_map["data"]


def test_mlflow_auth_configuration_is_read_by_the_installed_mlflow(rendered, tmp_path, monkeypatch):
    """The shipped basic_auth.ini through MLflow's own reader, with the Secret's env set."""
    from mlflow.server.auth.config import read_auth_config

    spec, container = mlflow_container(rendered[CPU_OVERLAY])
    (config_map,) = [
        c for c in by_kind(rendered[CPU_OVERLAY], "ConfigMap") if c["metadata"]["name"] == "mlflow-auth"
    ]
    (tmp_path / "basic_auth.ini").write_text(config_map["data"]["basic_auth.ini"])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / "basic_auth.ini"))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin-from-secret")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "password-from-secret")
    config = read_auth_config()
    assert (config.admin_username, config.admin_password) == ("admin-from-secret", "password-from-secret")
    assert config.default_permission == "READ"
    assert "password" not in config_map["data"]["basic_auth.ini"].lower()
    # The users' database is a file on a writable volume of the container.
    database = config.database_uri.removeprefix("sqlite:///")
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert config.database_uri.startswith("sqlite:////") and any(
        database.startswith(w + "/") for w in writable
    )


def test_only_the_pipeline_steps_reach_mlflow(rendered):
    for overlay, objects in rendered.items():
        (policy,) = [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "mlflow"]
        service = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "mlflow")
        assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"], overlay
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        # Kubeflow Pipelines v2 labels every step's pod with this.
        assert rule["from"] == [
            {"podSelector": {"matchLabels": {"pipelines.kubeflow.org/v2_component": "true"}}}
        ]
        assert rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
        # No workload of the manifests carries the label: none of them reaches the server.
        for obj in objects:
            if obj["kind"] in ("Deployment", "StatefulSet"):
                template_labels = obj["spec"]["template"]["metadata"].get("labels", {})
                assert "pipelines.kubeflow.org/v2_component" not in template_labels, obj["metadata"]["name"]


def test_dockerfile_keeps_the_base_torch_and_runs_as_non_root(tmp_path):
    dockerfile = (REPO / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1) for line in dockerfile.splitlines() if line and not line.startswith((" ", "#"))
    ]
    keywords = [k for k, _ in instructions]
    assert keywords[0] == "ARG" and instructions[0][1].startswith("BASE_IMAGE=")
    assert "cuda" in instructions[0][1] and "FROM ${BASE_IMAGE}" in dockerfile
    assert "ARG VERSION=" in dockerfile
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert instructions[-2] == ["ENTRYPOINT", '["diffurec"]']
    # Run the Dockerfile's own filter on the real requirement files: torch goes, all else stays.
    parts = [
        line.strip().removeprefix("RUN").strip().lstrip("&").strip().rstrip("\\").strip()
        for line in dockerfile.splitlines()
    ]
    filters = [part for part in parts if part.startswith("grep -v")]
    assert len(filters) == 2
    for name in ("requirements.txt", "constraints.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    script = "; ".join(f.replace("/tmp/", f"{tmp_path}/out-") for f in filters)
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, check=True)
    for name in ("requirements.txt", "constraints.txt"):
        kept = (tmp_path / f"out-{name}").read_text().splitlines()
        original = (REPO / name).read_text().splitlines()
        assert not any(line.startswith("torch==") for line in kept)
        dropped = set(original) - set(kept)
        assert {line.split("==")[0] for line in dropped if not line.startswith("-c ")} == {"torch"}


def test_workflows_retrain_on_data_params_code_and_schedule_and_test_pull_requests():
    ci = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())
    retrain = yaml.safe_load((REPO / ".github/workflows/retrain.yml").read_text())
    # YAML 1.1 (PyYAML) reads the key "on" as the boolean True.
    ci["on"], retrain["on"] = ci.pop(True), retrain.pop(True)
    ci_steps = " ".join(s.get("run", "") for s in ci["jobs"]["test"]["steps"])
    assert "pull_request" in ci["on"]
    assert "make test" in ci_steps and "diffurec pipeline run" in ci_steps
    triggers = retrain["on"]
    assert triggers["schedule"][0]["cron"]
    paths = triggers["push"]["paths"]
    for needed in ("params.yaml", "dvc.yaml", "data/**", "**.dvc", "diffurec/**", "pipelines/**"):
        assert needed in paths
    runs = [s.get("run", "") for s in retrain["jobs"]["submit"]["steps"]]
    assert any("diffurec pipeline compile" in r for r in runs)
    assert any("diffurec pipeline submit" in r for r in runs)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_lint_fails_on_a_broken_manifest(tmp_path):
    # A copy of what lint.sh reads, with one typo in one Deployment.
    for relative in (
        ".yamllint",
        "Dockerfile",
        ".github",
        "k8s",
        "monitoring",
        "scripts",
        "benchmarks",
        "pyproject.toml",
        "diffurec",
        "pipelines",
        "components",
        "tests",
    ):
        source = REPO / relative
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / relative)
    (tmp_path / ".venv").symlink_to(BIN.parent)
    lint = ["bash", str(tmp_path / "scripts" / "lint.sh")]
    manifest = tmp_path / "k8s/base/monitoring/pushgateway.yaml"
    manifest.write_text(manifest.read_text().replace("  replicas: 1\n", "  replicas: 1\n  replica: 1\n", 1))
    broken = subprocess.run(lint, capture_output=True, text=True)
    assert broken.returncode == 1
    # Exactly the checks that see the typo fail; the rest of the copy passes.
    failed = [line for line in broken.stderr.splitlines() if line.startswith("lint: FAIL")]
    assert sorted(failed) == [
        f"lint: FAIL kubernetes-validate --strict {overlay} (k8s 1.32.0)" for overlay in OVERLAYS
    ], broken.stderr
    assert broken.stdout.count("lint: ok") >= 10


def test_workflow_diffurec_commands_are_accepted_by_the_cli():
    import shlex

    from diffurec.cli import build_parser

    commands = []
    for name in ("ci.yml", "retrain.yml"):
        workflow = yaml.safe_load((REPO / ".github/workflows" / name).read_text())
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                for line in step.get("run", "").splitlines():
                    words = shlex.split(line.strip())
                    if words and words[0] == ".venv/bin/diffurec":
                        commands.append(words[1:])
    assert len(commands) >= 2
    for words in commands:
        # Shell variables stand for strings here; argparse only needs a value.
        args = build_parser().parse_args([w.replace("$", "") for w in words])
        assert args.command == "pipeline", words


def test_retrain_image_reaches_every_compiled_step(tmp_path):
    """retrain.yml passes the commit's image as DIFFUREC_IMAGE: every step of the spec runs it."""
    import os

    retrain = yaml.safe_load((REPO / ".github/workflows/retrain.yml").read_text())
    assert "DIFFUREC_IMAGE" in retrain["jobs"]["submit"]["env"]
    image = "registry.example.org/team/diffurec:0123abcd"
    spec = tmp_path / "pipeline.yaml"
    subprocess.run(
        [str(BIN / "diffurec"), "-q", "pipeline", "compile", "--out", str(spec)],
        env={**os.environ, "DIFFUREC_IMAGE": image},
        check=True,
        capture_output=True,
    )
    executors = yaml.safe_load_all(spec.read_text()).__next__()["deploymentSpec"]["executors"]
    assert executors and {e["container"]["image"] for e in executors.values()} == {image}


def test_images_are_pinned_and_match_the_pipeline_image(rendered, monkeypatch):
    monkeypatch.delenv("DIFFUREC_IMAGE", raising=False)
    monkeypatch.syspath_prepend(str(REPO))
    import importlib

    import components

    pipeline_image = importlib.reload(components).IMAGE
    for overlay, objects in rendered.items():
        images = {c["image"] for _, spec in pod_specs(objects) for c in spec["containers"]}
        for image in images:
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, (overlay, image)
        project = {i for i in images if i.startswith("ghcr.io/diffurec/diffurec")}
        # The MLflow server and the PyTorchJob run the same image as the pipeline's steps.
        assert project == {pipeline_image}, overlay


def test_the_pipelines_registry_steps_log_in_with_the_servers_secret(rendered):
    """The compiled spec gives register, gate and promote (and no other step) the login the
    MLflow server's basic-auth admin is made from."""
    _, container = mlflow_container(rendered[CPU_OVERLAY])
    admin = {
        e["valueFrom"]["secretKeyRef"]["key"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if e["name"] in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")
    }
    _, platform = yaml.safe_load_all((REPO / "pipelines" / "diffurec_pipeline.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    logged_in = set()
    for name, executor in executors.items():
        for secret in executor.get("secretAsEnv", []):
            if secret["secretName"] != admin["username"]:
                continue
            logged_in.add(name)
            keys = {item["secretKey"]: item["envVar"] for item in secret["keyToEnv"]}
            assert keys == {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
            assert secret["optional"] is False
    assert set(admin.values()) == {"diffurec-mlflow-auth"}
    assert logged_in == {"exec-register", "exec-gate", "exec-promote"}
