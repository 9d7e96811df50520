"""Distributed training from a pipeline step: a Kubeflow Training Operator PyTorchJob.

The pipeline's train step with `workers` > 1 (docs/pipeline.md, "Distributed training") runs
`diffurec train-job`, which
1. copies the splits artifact to a run folder on the shared data volume (ReadWriteMany, the
   same claim mounted at the same path in the step and in the job's pods):
   WORK_DIR/NAME/{splits, lineage.json}; the job writes WORK_DIR/NAME/model (and checkpoints);
2. creates the PyTorchJob NAME (kubeflow.org/v1, build_pytorchjob): one Master and workers-1
   Workers, one process each, running `torchrun -m diffurec train` (the operator gives every
   pod the PET_* variables torchrun reads; the trainer picks NCCL on GPUs, Gloo on CPUs);
3. follows it with a watch under one total deadline, printing every new condition, and
4. on success copies WORK_DIR/NAME/model into the step's output artifact (its manifest checked).

What is left behind (the rule docs/pipeline.md states): a job that succeeded is deleted; a job
that failed is kept, with its pods, for `kubectl logs` (its ttlSecondsAfterFinished removes it a
day later); a job still running at the deadline, or when the step is stopped, is deleted so
nothing trains unwatched. The run folder is removed in every case.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffurec.errors import DiffuRecError
from diffurec.lineage import RUN_IDENTITY_ENV

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
# The pod's own namespace, where a pipeline step's service account may create jobs.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Labels of the job's pods: the Pushgateway admits this name (monitoring/networkpolicy.yaml).
POD_LABELS = {"app.kubernetes.io/name": "diffurec-training"}
# No Istio sidecar (Kubeflow profile namespaces inject one): it would keep a finished replica
# running and stand between the ranks' rendezvous connections.
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}
SETTINGS_CONFIG_MAP = "diffurec-settings"
TERMINAL = ("Succeeded", "Failed")
# A failed job is kept this long for its logs (and a finished one the operator did not delete).
KEEP_FINISHED_S = 86400


def job_name(run_id: str | None = None) -> str:
    """A new job name (DNS-1123, short enough for the operator's `NAME-worker-N` services):
    diffurec-train-<run id's first 8 characters>-<6 random hex>."""
    run = "".join(c for c in (run_id or "").lower() if c.isalnum())[:8] or "local"
    return f"diffurec-train-{run}-{uuid.uuid4().hex[:6]}"


def build_pytorchjob(
    name: str,
    *,
    image: str,
    workers: int,
    work_dir: str,
    settings: dict[str, Any],
    claim: str,
    mount_path: str,
    gpus_per_worker: int = 1,
    cpu: str = "4",
    memory: str = "16Gi",
    service_account: str = "diffurec-workload",
    deadline_s: int | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The PyTorchJob that trains `settings` (TrainSettings fields) on WORK_DIR/NAME/splits into
    WORK_DIR/NAME/model with `workers` processes, one per pod (Master + workers-1 Workers).
    `work_dir` lies on the claim `claim`, mounted at `mount_path` in every pod; `env` is added
    to every pod (the run's identity); gpus_per_worker 0 trains on CPUs (Gloo)."""
    if workers < 2:
        raise DiffuRecError(f"--workers must be at least 2 for a PyTorchJob, got {workers}")
    if not Path(work_dir).is_relative_to(mount_path):
        raise DiffuRecError(f"--work-dir {work_dir}: not on the shared volume mounted at {mount_path}")
    folder = f"{work_dir.rstrip('/')}/{name}"
    command = [
        "torchrun",
        "-m",
        "diffurec",
        "train",
        f"--splits={folder}/splits",
        f"--out={folder}/model",
        f"--settings={json.dumps(settings, sort_keys=True)}",
        f"--lineage-json={folder}/lineage.json",
        # A restarted pod continues from the last epoch instead of from scratch.
        f"--checkpoint-dir={folder}/checkpoints",
        "--resume",
        "--no-progress",
    ]
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    if gpus_per_worker:  # an extended resource: request = limit
        resources["requests"]["nvidia.com/gpu"] = gpus_per_worker
        resources["limits"]["nvidia.com/gpu"] = gpus_per_worker
    container = {
        "name": "pytorch",  # the operator finds the training container by this name
        "image": image,
        "command": command,
        "envFrom": [{"configMapRef": {"name": SETTINGS_CONFIG_MAP, "optional": True}}],
        "env": [{"name": "HOME", "value": "/tmp"}]
        + [{"name": key, "value": value} for key, value in sorted((env or {}).items())],
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "data", "mountPath": mount_path},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
            {"name": "tmp", "emptyDir": {}},
            # Shared memory for the collective backends (the container default is 64 MiB).
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    if gpus_per_worker:
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    template = {
        "metadata": {"labels": {**POD_LABELS, "diffurec/job": name}, "annotations": dict(POD_ANNOTATIONS)},
        "spec": pod_spec,
    }
    run_policy: dict[str, Any] = {
        "backoffLimit": 3,
        "cleanPodPolicy": "None",  # a failed job's pods stay for `kubectl logs`
        "ttlSecondsAfterFinished": KEEP_FINISHED_S,
    }
    if deadline_s:
        run_policy["activeDeadlineSeconds"] = int(deadline_s)
    replica = {"restartPolicy": "OnFailure", "template": template}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "labels": dict(POD_LABELS)},
        "spec": {
            "nprocPerNode": "1",
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, **replica},
                "Worker": {"replicas": workers - 1, **replica},
            },
        },
    }


def current_namespace() -> str:
    """The namespace of the pod this runs in (its service account's)."""
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        raise DiffuRecError(
            f"no --namespace and not in a Kubernetes pod ({NAMESPACE_FILE} unreadable)"
        ) from None


def custom_objects_api(host: str | None = None) -> Any:
    """CustomObjectsApi for the cluster this runs in, or for `host` (tests: http://127.0.0.1:PORT)."""
    from kubernetes import client, config

    if host:
        configuration = client.Configuration()
        configuration.host = host
        return client.CustomObjectsApi(client.ApiClient(configuration))
    try:
        config.load_incluster_config()
    except config.ConfigException as error:
        raise DiffuRecError(f"no Kubernetes API: {error} (run in a pod, or pass --api-host)") from None
    return client.CustomObjectsApi()


def describe_conditions(job: dict[str, Any]) -> list[str]:
    """The job's conditions as lines: `Type (Reason): message`, oldest first."""
    return [
        f"{c.get('type')} ({c.get('reason', '')}): {c.get('message', '')}".replace(" ()", "")
        for c in (job.get("status") or {}).get("conditions") or []
    ]


def outcome(job: dict[str, Any]) -> str | None:
    """ "Succeeded" or "Failed" once the job has that condition set True, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in TERMINAL and condition.get("status") == "True":
            return str(condition["type"])
    return None


def run_pytorchjob(
    api: Any,
    job: dict[str, Any],
    namespace: str,
    *,
    deadline_s: float,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Create `job` in `namespace`, watch it until it succeeds (returns its last state) or fails
    (DiffuRecError with its last condition; the job is kept), all within `deadline_s` seconds
    (then, or when interrupted, the job is deleted and DiffuRecError says so)."""
    from kubernetes.client.rest import ApiException

    name = job["metadata"]["name"]
    where = f"PyTorchJob {namespace}/{name}"
    deadline = time.monotonic() + deadline_s
    try:
        created = api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, job, _request_timeout=_remaining(deadline, where)
        )
    except ApiException as error:
        raise DiffuRecError(f"{where}: not created: {error.status} {_api_message(error)}") from None
    except Exception as error:  # the connection: refused, reset, timed out
        raise DiffuRecError(f"{where}: not created: {_first_line(error)}") from None
    say(f"{where} created: {job['spec']['pytorchReplicaSpecs']['Worker']['replicas'] + 1} workers")
    try:
        with _stopped_by_sigterm():
            last = _follow(api, created, namespace, deadline, deadline_s, where, say)
    except BaseException:  # the deadline, a lost API, SIGTERM or Ctrl-C: nothing trains unwatched
        _delete(api, name, namespace, where, say)
        raise
    if outcome(last) == "Failed":
        lines = describe_conditions(last)
        raise DiffuRecError(
            f"{where} failed: {lines[-1] if lines else 'no condition'} (job and pods kept for "
            f"`kubectl -n {namespace} logs -l training.kubeflow.org/job-name={name}`)"
        )
    _delete(api, name, namespace, where, say)
    return last


def _follow(
    api: Any,
    job: dict[str, Any],
    namespace: str,
    deadline: float,
    deadline_s: float,
    where: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Watch the job (from the version it was created at) until a terminal condition; each
    watch request ends by the deadline on the server and the client side."""
    from kubernetes import watch
    from kubernetes.client.rest import ApiException

    seen: set[str] = set()
    last = job
    version = job.get("metadata", {}).get("resourceVersion")
    while outcome(last) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DiffuRecError(f"{where}: not finished within {deadline_s:g} s (deleted)")
        options: dict[str, Any] = {
            "field_selector": f"metadata.name={job['metadata']['name']}",
            "timeout_seconds": max(1, int(remaining)),
            "_request_timeout": remaining,
        }
        if version:
            options["resource_version"] = version
        try:
            for event in watch.Watch().stream(
                api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, **options
            ):
                obj = event["object"] if isinstance(event, dict) else None
                if not isinstance(obj, dict) or event.get("type") == "BOOKMARK":
                    continue
                if event.get("type") == "DELETED":
                    raise DiffuRecError(f"{where}: deleted by someone else before it finished")
                last = obj
                version = obj.get("metadata", {}).get("resourceVersion") or version
                for line in describe_conditions(obj):
                    if line not in seen:
                        seen.add(line)
                        say(f"{where}: {line}")
                if outcome(obj) or time.monotonic() >= deadline:
                    break
        except ApiException as error:
            if error.status == 410:  # the version expired: watch again from now
                version = None
                continue
            raise DiffuRecError(f"{where}: watch failed: {error.status} {_api_message(error)}") from None
        except DiffuRecError:
            raise
        except Exception as error:  # a read timeout at the deadline, a dropped connection
            if time.monotonic() >= deadline:
                raise DiffuRecError(f"{where}: not finished within {deadline_s:g} s (deleted)") from None
            raise DiffuRecError(f"{where}: watch failed: {_first_line(error)}") from None
    return last


def _delete(api: Any, name: str, namespace: str, where: str, say: Callable[[str], None]) -> None:
    """Delete the job and its pods (foreground: the operator removes them); a failure to do so
    is said, not raised (the job's ttlSecondsAfterFinished removes a finished one anyway)."""
    from kubernetes import client

    try:
        api.delete_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body=client.V1DeleteOptions(propagation_policy="Foreground"),
            _request_timeout=30,
        )
        say(f"{where} deleted")
    except Exception as error:
        say(f"{where}: could not delete it ({_first_line(error)}); delete it by hand")


@contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM (Kubernetes stopping the step's pod) raises SystemExit here, so the job is deleted."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remaining(deadline: float, where: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DiffuRecError(f"{where}: deadline passed before the request")
    return remaining


def _api_message(error: Any) -> str:
    """The `message` of the API server's Status body, else the HTTP reason."""
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def train_with_pytorchjob(
    splits: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    *,
    workers: int,
    work_dir: str,
    claim: str,
    mount_path: str,
    image: str,
    lineage_json: str | Path | None = None,
    gpus_per_worker: int = 1,
    namespace: str | None = None,
    deadline_s: float = 6 * 3600,
    api: Any = None,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train on a PyTorchJob (module docstring): stage the splits and lineage in WORK_DIR/NAME,
    run the job, copy the model folder to `out` (manifest verified); returns the train summary."""
    from diffurec.files import atomic_folder, prepare_output
    from diffurec.model_folder import FORMAT_NAME, verify_manifest
    from diffurec.train_settings import TrainSettings

    TrainSettings.from_mapping(settings, source="--settings")  # refused here, not in a pod
    prepare_output(out, kind="folder", inputs=[splits, lineage_json], force=force, written_by=FORMAT_NAME)
    namespace = namespace or current_namespace()
    api = api or custom_objects_api()
    name = job_name(os.environ.get(RUN_IDENTITY_ENV[0]))
    folder = Path(work_dir) / name
    job = build_pytorchjob(
        name,
        image=image,
        workers=workers,
        work_dir=work_dir,
        settings=settings,
        claim=claim,
        mount_path=mount_path,
        gpus_per_worker=gpus_per_worker,
        deadline_s=int(deadline_s),
        env={key: os.environ[key] for key in RUN_IDENTITY_ENV if os.environ.get(key)},
    )
    try:
        folder.mkdir(parents=True)
        shutil.copytree(splits, folder / "splits")
        (folder / "lineage.json").write_text(
            Path(lineage_json).read_text() if lineage_json else "{}\n", encoding="utf-8"
        )
        run_pytorchjob(api, job, namespace, deadline_s=deadline_s, say=say)
        model = folder / "model"
        if not model.is_dir():
            raise DiffuRecError(f"PyTorchJob {namespace}/{name} succeeded but wrote no {model}")
        with atomic_folder(out) as copy:  # nothing half-copied at `out`
            shutil.copytree(model, copy, dirs_exist_ok=True)
            verify_manifest(copy)
    except OSError as error:
        raise DiffuRecError(f"{error.filename or work_dir}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return json.loads((Path(out) / "train_summary.json").read_text())
