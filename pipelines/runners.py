"""The four ways to run the pipeline's steps, and what they share.

    run_dvc     `dvc repro` of dvc.yaml in the repository (then `dvc push`)
    run_local   the Kubeflow pipeline under kfp's local SubprocessRunner, in this interpreter's venv
    compile_spec  the spec file the Kubeflow UI uploads
    submit      a run (or a recurring run) on a Kubeflow Pipelines endpoint

CI-triggered retraining is `submit` from a workflow. Nothing here parses command lines
(pipelines/cli.py does) and the library (diffurec/) never imports this package.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from diffurec import prometheus, telemetry
from diffurec.errors import DiffuRecError, located
from diffurec.files import read_params
from diffurec.lineage import GIT_COMMIT_ENV, git_commit
from diffurec.net import call_with_deadline, http_request
from diffurec.train_settings import MAX_LENS, TrainSettings

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[1]
# What `run_dvc` (dvc.yaml) leaves where (paths relative to the repository).
RUN_OUTPUTS = {
    "metrics": "runs/metrics.json",
    "model": "runs/model",
    "gate decision": "runs/decision.json",
    "promotion": "runs/promotion.json",
    "popularity baseline metrics": "runs/popularity_metrics.json",
    "validation reports": "runs/validate/raw/report.json, runs/validate/splits/report.json",
    "lineage": "runs/lineage.json",
}


def repo_root(explicit: str | None = None) -> Path:
    """The repository to run in: `explicit`, the current folder with a dvc.yaml, or this checkout."""
    if explicit:
        root = Path(explicit).resolve()
        if not (root / "dvc.yaml").is_file():
            raise located(root / "dvc.yaml", "not found (is --repo the project's repository?)")
        return root
    if Path("dvc.yaml").is_file():
        return Path.cwd()
    if (CHECKOUT / "dvc.yaml").is_file():
        return CHECKOUT
    raise DiffuRecError("no dvc.yaml here or in the diffurec checkout: run from the repository")


def tool_env() -> dict[str, str]:
    """The environment for the steps: this venv's `diffurec` first on PATH, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    env.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def run_labels(pipeline: str, dataset: str, runner: str) -> dict[str, str]:
    """Set the labels of every step's Prometheus metrics in the environment the steps inherit,
    unless the caller set them (monitoring/README.md): the pipeline (params.yaml's registry.name),
    the dataset and a run id. Returns {"pipeline": ..., "run": ...}."""
    os.environ.setdefault(telemetry.PIPELINE_ENV, pipeline)
    os.environ.setdefault(telemetry.DATASET_ENV, dataset)
    os.environ.setdefault(telemetry.RUN_ENV, f"{runner}-{time.strftime('%Y%m%d-%H%M%S')}")
    return {"pipeline": os.environ[telemetry.PIPELINE_ENV], "run": os.environ[telemetry.RUN_ENV]}


def warn_if_gate_lacks_prometheus(root: Path, params_file: str | None) -> None:
    """Say before the run, not after training, that the gate will fail closed: params.yaml asks
    Prometheus checks (gate.prometheus) and the steps have no $DIFFUREC_PROMETHEUS."""
    checks = (_params(root, params_file).get("gate") or {}).get("prometheus") or []
    if checks and not os.environ.get(prometheus.URL_ENV):
        log.warning(
            "no Prometheus for the gate's %d checks (params.yaml gate.prometheus): the gate step will "
            "fail closed (set $%s, or let the run start one: Debian's prometheus and "
            "prometheus-pushgateway, scripts/setup.sh)",
            len(checks),
            prometheus.URL_ENV,
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _params(root: Path, params_file: str | None) -> dict[str, Any]:
    path = Path(params_file) if params_file else root / "params.yaml"
    return read_params(path if path.is_absolute() else root / path)


# ---- dvc repro -----------------------------------------------------------------------------


def dvc(args: list[str], cwd: Path, check: bool = True) -> int:
    """Run `dvc ARGS` in `cwd` with this venv's tools; its output goes to the terminal."""
    log.info("$ dvc %s", " ".join(args))
    status = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=tool_env()).returncode
    if check and status != 0:
        raise DiffuRecError(
            f"`dvc {' '.join(args)}` failed with status {status} in {cwd} "
            "(the stage's own error is printed above)"
        )
    return status


def pull_missing_source(root: Path, params: dict[str, Any]) -> None:
    """`dvc pull` data.source when it is a DVC-tracked log (`diffurec data add`) missing here, as
    in a fresh clone: else the raw stage would fall back to the official download."""
    source = str((params.get("data") or {}).get("source") or "")
    if source and not (root / source).is_file() and (root / f"{source}.dvc").is_file():
        if dvc(["pull", "--quiet", f"{source}.dvc"], cwd=root, check=False) != 0:
            log.warning("could not pull %s from the DVC remote; the raw stage will say what it used", source)


def run_dvc(root: Path, force: bool = False, push: bool = True) -> dict[str, Any]:
    """`dvc repro` (then `dvc push`); returns the seconds taken, the run's results and its
    labels (pipeline, run, candidate model, end time) for the monitoring summary."""
    params = _params(root, None)
    labels = run_labels(
        str((params.get("registry") or {}).get("name") or telemetry.DEFAULT_PIPELINE),
        str((params.get("data") or {}).get("dataset", "")),
        "dvc",
    )
    started = time.perf_counter()
    pull_missing_source(root, params)
    dvc(["repro", *(["--force"] if force else [])], cwd=root)
    if push and dvc(["push", "--quiet"], cwd=root, check=False) != 0:
        log.warning("dvc push to the default remote failed; the run's results are complete")
    return {
        "seconds": time.perf_counter() - started,
        "metrics": _read_json(root / RUN_OUTPUTS["metrics"]).get("metrics") or {},
        "decision": _read_json(root / RUN_OUTPUTS["gate decision"]),
        "promotion": _read_json(root / RUN_OUTPUTS["promotion"]),
        "model": str((params.get("train") or {}).get("model") or TrainSettings().model),
        "ended": time.time(),
        **labels,
    }


# ---- pipeline arguments ---------------------------------------------------------------------


def parse_overrides(pairs: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """NAME=VALUE strings -> pipeline arguments typed like the defaults. NAME.KEY=VALUE sets one
    key of a dict argument (`train.epochs=3`); its value is read as JSON when it parses."""
    from diffurec.train_settings import json_or_text

    arguments: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        outer, dot, key = name.partition(".")
        if not sep or outer not in defaults or (dot and not isinstance(defaults[outer], dict)):
            raise DiffuRecError(
                f"--set {pair!r}: expected NAME=VALUE or DICT.KEY=VALUE with NAME one "
                f"of {', '.join(sorted(defaults))}"
            )
        if dot:
            merged = dict(arguments.get(outer, defaults[outer]))
            merged[key] = json_or_text(value)
            if merged[key] is None:  # Kubeflow parameters cannot hold null: a missing key is the default
                del merged[key]
            arguments[outer] = merged
            continue
        kind = type(defaults[name])
        try:
            arguments[name] = (
                json.loads(value)
                if kind in (dict, list)
                else (value.lower() in ("1", "true", "yes"))
                if kind is bool
                else kind(value)
            )
        except ValueError as error:
            raise DiffuRecError(f"--set {pair!r}: not a {kind.__name__} ({error})") from None
    if "train" in arguments:  # the settings are checked here, not in a pod minutes later
        TrainSettings.from_mapping(arguments["train"], source="--set train")
    if "max_len" in arguments:  # preprocess's --max-len
        MAX_LENS.check(arguments["max_len"], "--set max_len")
    return arguments


def pipeline_arguments(
    root: Path, params_file: str | None, overrides: list[str], local: bool, profile: str = "laptop"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arguments, params): params.yaml's defaults in `profile` with the overrides; for a local
    run also the local data copy and the local registry (`pipeline run`'s runs/mlflow/mlflow.db)."""
    from pipelines.diffurec_pipeline import default_arguments, profile_params

    params = _params(root, params_file)
    arguments = default_arguments(profile_params(params, profile))
    if local:
        source = Path(params["data"].get("source") or "")
        source = source if source.is_absolute() else root / source
        arguments["source"] = (
            str(source.resolve()) if params["data"].get("source") and source.is_file() else ""
        )
        uri = (
            os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(root / 'runs' / 'mlflow' / 'mlflow.db').resolve()}"
        )
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        arguments["tracking_uri"] = uri
    arguments.update(parse_overrides(overrides, arguments))
    return arguments, params


# ---- kfp local runner ------------------------------------------------------------------------


def run_local(
    pipeline_root: str, params_file: str | None, overrides: list[str], profile: str = "laptop"
) -> dict[str, Any]:
    """The Kubeflow pipeline under kfp's SubprocessRunner, its defaults from the parameter
    profile `profile`; returns seconds, run folder, gate."""
    import kfp.local

    from pipelines.diffurec_pipeline import PIPELINE_NAME, build_pipeline

    # Resource requests and the cluster image mean nothing to the local runner: said once here.
    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    log.info("local run: resource requests, GPU and node settings apply on a cluster only")
    root = repo_root()
    arguments, params = pipeline_arguments(root, params_file, overrides, local=True, profile=profile)
    artifacts = Path(pipeline_root) if Path(pipeline_root).is_absolute() else root / pipeline_root
    artifacts.mkdir(parents=True, exist_ok=True)
    # Cached like on a cluster: a rerun on the same data md5 and parameters (and the same
    # diffurec code, diffurec.lineage.source_md5) takes the data and training steps from
    # PIPELINE_ROOT/.kfp_cache and runs register, gate and promote again.
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=str(artifacts.resolve()),
        enable_caching=True,
    )
    # The steps run in subprocesses of this interpreter: make `diffurec` and its settings theirs.
    for name, value in tool_env().items():
        if name == "PATH" or name not in os.environ:
            os.environ[name] = value
    labels = run_labels(str(arguments["registry_name"]), str(arguments["dataset"]), "kfp-local")
    started = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(root)  # relative paths inside steps (runs/...) resolve in the repository
    try:
        build_pipeline(cluster=False, params=params, profile=profile)(**arguments)
    except RuntimeError as error:
        raise DiffuRecError(f"kfp local run failed: {str(error).splitlines()[0]}") from None
    finally:
        os.chdir(cwd)
    run_dir, passed, promoted = _local_outcome(artifacts, PIPELINE_NAME)
    return {
        "seconds": time.perf_counter() - started,
        "run_dir": run_dir,
        "passed": passed,
        "promoted": promoted,
        "model": str(arguments["train"].get("model") or TrainSettings().model),
        "ended": time.time(),
        **labels,
    }


def _local_outcome(pipeline_root: Path, name: str) -> tuple[Path, bool | None, bool]:
    """(run folder, the gate's `passed`, whether promote ran) of the newest local run."""
    runs = sorted(pipeline_root.glob(f"{name}-*"), key=lambda path: path.stat().st_mtime)
    if not runs:
        return pipeline_root, None, False
    run_dir = runs[-1]
    gate_output = _read_json(run_dir / "gate" / "executor_output.json")
    passed = (gate_output.get("parameterValues") or {}).get("Output")
    return run_dir, passed, (run_dir / "promote").is_dir()


# ---- Kubeflow ------------------------------------------------------------------------------

# Exit statuses of `pipeline submit` when it waits for the run (docs/pipeline.md, "Submit");
# 2 stays the CLI's one-line error (bad flags, an endpoint that refuses or does not answer).
EXIT_RUN_FAILED = 3
EXIT_GATE_REJECTED = 4
EXIT_TIMEOUT = 5
# KFP v2beta1's V2beta1RuntimeState values after which a run changes no more.
FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")
# Polls of a waiting run that may fail in a row (a restarting API server) before submit gives up.
POLL_FAILURES = 3


def compile_spec(
    out: str | None, params_file: str | None, image: str | None = None, profile: str | None = None
) -> Path:
    """Compile the cluster pipeline (defaults from params.yaml or `params_file`, in the parameter
    `profile`, default the cluster's); `image`: the image every step runs (default
    components.IMAGE: $DIFFUREC_IMAGE, else the release's)."""
    if image:
        # components reads it on its first import (the decorators fix each step's image then)
        os.environ["DIFFUREC_IMAGE"] = image
    from pipelines.diffurec_pipeline import COMPILE_PROFILE, COMPILED, compile_pipeline

    params = read_params(params_file) if params_file else None
    out_path = compile_pipeline(out or COMPILED, params=params, profile=profile or COMPILE_PROFILE)
    found = spec_images(out_path)
    if image and found != {image}:  # components was imported earlier with another image
        raise DiffuRecError(f"--image {image}: the compiled spec names {', '.join(sorted(found))}")
    return out_path


def spec_images(spec: Path) -> set[str]:
    """The container images of a compiled spec's executors."""
    import yaml

    documents = [doc for doc in yaml.safe_load_all(spec.read_text()) if doc]
    executors = (documents[0].get("deploymentSpec") or {}).get("executors") or {}
    return {executor["container"]["image"] for executor in executors.values() if "container" in executor}


def kfp_client(host: str | None, token: str | None, namespace: str | None, deadline_s: float) -> Any:
    """A kfp.Client for `host` after one health check within `deadline_s` (kfp.Client's own
    retries for minutes). A multi-user Kubeflow needs the profile namespace: refused without."""
    import kfp

    if not host:
        raise DiffuRecError("no Kubeflow endpoint: pass --host URL or set $KFP_HOST")
    url = urlparse(host if "://" in host else f"http://{host}")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise DiffuRecError(f"--host {host!r}: expected an http(s) URL such as http://localhost:8080")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        status, _, body = http_request(
            "GET", f"{host.rstrip('/')}/apis/v2beta1/healthz", headers=headers, deadline_s=deadline_s
        )
    except DiffuRecError as error:
        raise DiffuRecError(
            f"Kubeflow endpoint {host} is unreachable ({error}); check --host / $KFP_HOST"
        ) from None
    if status != 200:
        raise DiffuRecError(f"Kubeflow endpoint {host}: health check answered HTTP {status}")
    try:
        multi_user = bool(json.loads(body or b"{}").get("multi_user"))
    except (ValueError, AttributeError):
        raise DiffuRecError(f"Kubeflow endpoint {host}: the health check's answer is not JSON") from None
    if multi_user and not namespace:
        raise DiffuRecError(
            f"Kubeflow endpoint {host} is multi-user: pass --namespace (your profile's namespace) "
            "or set $KFP_NAMESPACE"
        )
    warnings.filterwarnings("ignore", category=FutureWarning, module="kfp.client")
    # kfp.Client logs a traceback per failed call; callers say it in one line instead.
    logging.disable(logging.ERROR)
    try:
        return kfp_call(
            deadline_s, host, kfp.Client, host=host, existing_token=token, namespace=namespace or "kubeflow"
        )
    finally:
        logging.disable(logging.NOTSET)


def kfp_call(deadline_s: float, endpoint: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One kfp.Client call within `deadline_s`; whatever it raises becomes one line."""
    try:
        return call_with_deadline(deadline_s, f"Kubeflow endpoint {endpoint}", fn, *args, **kwargs)
    except DiffuRecError:
        raise
    except Exception as error:  # kfp raises many types (HTTP, API, connection): one line for all
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = getattr(error, "reason", None)
        status = getattr(error, "status", None)
        said = f"HTTP {status} {reason}" if status else first
        raise DiffuRecError(f"Kubeflow endpoint {endpoint}: {said[:300]}") from None


def _experiment_id(client: Any, host: str, name: str, namespace: str | None, deadline_s: float) -> str:
    """The id of experiment `name`, created when missing. Not kfp.Client.create_experiment: it
    POSTs namespace "" when none is given, which a multi-user Kubeflow rejects."""
    import kfp_server_api

    query = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = kfp_call(deadline_s, host, client.list_experiments, filter=query, namespace=namespace)
    for experiment in found.experiments or []:
        return str(experiment.experiment_id)
    body = kfp_server_api.V2beta1Experiment(display_name=name, namespace=namespace or None)
    created = kfp_call(
        deadline_s, host, client._experiment_api.experiment_service_create_experiment, experiment=body
    )
    return str(created.experiment_id)


def submit_arguments(params: dict[str, Any] | None, overrides: list[str]) -> tuple[dict, dict]:
    """(the run's arguments, every argument's value): the overrides, and the data version this
    checkout is at (pushed, for the cluster to read its dvc.lock) unless the spec names one;
    the spec's defaults (params.yaml's) give the rest."""
    from pipelines.diffurec_pipeline import COMPILE_PROFILE, default_arguments, load_params, profile_params

    # The spec submit compiles has the cluster profile's defaults: overrides go on top of those.
    defaults = default_arguments(profile_params(params or load_params(), COMPILE_PROFILE))
    arguments = parse_overrides(overrides, defaults)
    if "data_version" not in arguments and not os.environ.get(GIT_COMMIT_ENV):
        arguments["data_version"] = git_commit(repo_root())[0] or "HEAD"
    return arguments, {**defaults, **arguments}


def submit(
    host: str | None,
    token: str | None,
    namespace: str | None,
    experiment: str,
    run_name: str | None,
    service_account: str,
    recurring: str | None,
    params_file: str | None,
    overrides: list[str],
    request_timeout: float,
) -> dict[str, Any]:
    """Compile and start a run (or create a recurring run). Returns {"message", "host",
    "run_id", "run_name", "url", "arguments"} (run_id None for a recurring run; arguments:
    every parameter's value, the spec's defaults included)."""
    from pipelines.diffurec_pipeline import PIPELINE_NAME, compile_pipeline

    namespace = namespace or None  # an empty $KFP_NAMESPACE is none
    params = read_params(params_file) if params_file else None
    arguments, values = submit_arguments(params, overrides)
    client = kfp_client(host, token, namespace, request_timeout)
    assert host  # kfp_client refused a missing one
    spec = Path(tempfile.mkdtemp(prefix="diffurec-kfp-")) / "pipeline.yaml"
    compile_pipeline(spec, params=params)
    experiment_id = _experiment_id(client, host, experiment, namespace, request_timeout)
    name = run_name or f"{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    result: dict[str, Any] = {"host": host, "run_name": name, "arguments": values, "run_id": None}
    if recurring:
        job = kfp_call(
            request_timeout,
            host,
            client.create_recurring_run,
            experiment_id=experiment_id,
            job_name=name,
            cron_expression=recurring,
            pipeline_package_path=str(spec),
            params=arguments,
            service_account=service_account,
        )
        ident = getattr(job, "recurring_run_id", None) or getattr(job, "id", "?")
        result["message"] = f"created recurring run {name} ({ident}) on {host}: cron {recurring!r}"
        return result
    with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own link; run_url says it
        run = kfp_call(
            request_timeout,
            host,
            client.run_pipeline,
            experiment_id=experiment_id,
            job_name=name,
            pipeline_package_path=str(spec),
            params=arguments,
            service_account=service_account,
        )
    result.update(
        run_id=str(run.run_id),
        url=run_url(host, str(run.run_id)),
        message=f"submitted run {name} ({run.run_id}) to {host}",
    )
    return result


def run_url(host: str, run_id: str) -> str:
    """The run's page in the Kubeflow UI (the API endpoint's host serves the UI too)."""
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def wait_for_run(
    client: Any, host: str, run_id: str, *, timeout: float, poll: float, request_timeout: float
) -> Any:
    """Poll the run until a final state or `timeout` seconds; the last V2beta1Run seen (its
    state may still be RUNNING after the timeout). A few failed polls in a row are tolerated."""
    ends = time.monotonic() + timeout
    failures, run = 0, None
    while True:
        try:
            run = kfp_call(
                min(request_timeout, max(ends - time.monotonic(), 1.0)), host, client.get_run, run_id
            )
            failures = 0
        except DiffuRecError as error:
            failures += 1
            if failures > POLL_FAILURES:
                raise
            log.warning("polling run %s failed (%s); trying again", run_id, error)
        state = str(getattr(run, "state", None) or "UNKNOWN")
        if state in FINAL_STATES or time.monotonic() + poll > ends:
            return run
        log.info("run %s: %s", run_id, state)
        time.sleep(poll)


def run_outcome(run: Any, registry_name: str, tracking_uri: str | None, deadline_s: float) -> dict[str, Any]:
    """What a finished run did: {"state", "gate": {"passed", "reason", "source"} | None,
    "version", "metrics", "data_revision", "raw_data_md5"}. The registered version, its metrics
    and the gate's decision come from MLflow (register and gate tag the version with the KFP run
    id, kfp_run_id) when a tracking URI is known; without one the gate's outcome is read from the
    run's tasks: the promote task runs only when the gate passed."""
    state = str(getattr(run, "state", None) or "UNKNOWN")
    outcome: dict[str, Any] = {
        "state": state,
        "gate": None,
        "version": None,
        "metrics": {},
        "data_revision": None,
        "raw_data_md5": None,
    }
    tasks = {
        str(task.display_name): str(task.state)
        for task in (getattr(getattr(run, "run_details", None), "task_details", None) or [])
        if getattr(task, "display_name", None)
    }
    if state == "SUCCEEDED" and "gate" in tasks:
        passed = tasks.get("promote") == "SUCCEEDED"
        reason = "the promote step ran" if passed else "the promote step did not run"
        outcome["gate"] = {"passed": passed, "reason": reason, "source": "kfp tasks"}
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and state == "SUCCEEDED":
        version = registered_by_run(registry_name, str(run.run_id), uri, deadline_s)
        if version:
            tags = version["tags"]
            outcome.update(
                version=version["version"],
                metrics=version["metrics"],
                data_revision=tags.get("data_revision"),
                raw_data_md5=tags.get("raw_data_md5"),
            )
            if "gate_passed" in tags:
                outcome["gate"] = {
                    "passed": tags["gate_passed"] == "true",
                    "reason": tags.get("gate_reason", ""),
                    "source": "mlflow",
                }
    return outcome


def registered_by_run(name: str, kfp_run_id: str, tracking_uri: str, deadline_s: float) -> dict | None:
    """The version of `name` that KFP run `kfp_run_id` registered (its kfp_run_id tag), or None."""
    from diffurec.registry import client, get_version

    mlflow_client = client(tracking_uri)
    found = call_with_deadline(
        deadline_s,
        f"MLflow {tracking_uri}",
        mlflow_client.search_model_versions,
        f"name = '{name}' and tags.kfp_run_id = '{kfp_run_id}'",
    )
    if not found:
        log.warning("MLflow %s has no version of %s tagged kfp_run_id=%s", tracking_uri, name, kfp_run_id)
        return None
    newest = max(found, key=lambda version: int(version.version))
    return get_version(name, version=str(newest.version), mlflow_client=mlflow_client)


def exit_status(outcome: dict[str, Any], timed_out: bool) -> int:
    """0: the run succeeded and the gate passed (or its decision is unknown: said, not failed);
    EXIT_TIMEOUT, EXIT_RUN_FAILED or EXIT_GATE_REJECTED otherwise."""
    if timed_out:
        return EXIT_TIMEOUT
    if outcome["state"] != "SUCCEEDED":
        return EXIT_RUN_FAILED
    if outcome["gate"] is not None and not outcome["gate"]["passed"]:
        return EXIT_GATE_REJECTED
    return 0


def outcome_lines(submitted: dict[str, Any], outcome: dict[str, Any], timed_out: bool) -> list[str]:
    """The final report of a waited-for run, one fact a line."""
    state = f"{outcome['state']} (still running: stopped waiting)" if timed_out else outcome["state"]
    lines = [f"run {submitted['run_name']}: {state}"]
    if outcome["metrics"]:
        lines.append(
            "  test metrics (percent): "
            + "  ".join(f"{key} {float(value):.2f}" for key, value in sorted(outcome["metrics"].items()))
        )
    gate = outcome["gate"]
    if gate:
        lines.append(
            f"  gate: {'PASSED' if gate['passed'] else 'REJECTED'} - {gate['reason']} ({gate['source']})"
        )
    elif outcome["state"] == "SUCCEEDED":
        lines.append("  gate: unknown (no gate task in the run details, no MLflow version)")
    if outcome["version"]:
        lines.append(
            f"  registered: {submitted['arguments'].get('registry_name')} version {outcome['version']}"
        )
    lines.append(f"  data version: {data_version_text(submitted, outcome)}")
    lines.append(f"  {submitted['url']}")
    return lines


def data_version_text(submitted: dict[str, Any], outcome: dict[str, Any]) -> str:
    text = str(outcome.get("data_revision") or submitted["arguments"].get("data_version") or "")
    if outcome.get("raw_data_md5"):
        text += f" (raw md5 {outcome['raw_data_md5']})"
    return text or "unknown"


def summary_markdown(submitted: dict[str, Any], outcome: dict[str, Any], timed_out: bool) -> str:
    """A GitHub job summary of the run: state, decision, version, data version, metrics table."""
    gate = outcome["gate"]
    decision = f"{'passed' if gate['passed'] else '**rejected**'}: {gate['reason']}" if gate else "unknown"
    state = f"{outcome['state']} (timed out waiting)" if timed_out else outcome["state"]
    name = submitted["arguments"].get("registry_name", "")
    rows = [
        ("Run", f"[{submitted['run_name']}]({submitted['url']})"),
        ("State", state),
        ("Gate decision", decision),
        (
            "Model version",
            f"{name} version {outcome['version']}" if outcome["version"] else "none registered",
        ),
        ("Data version", data_version_text(submitted, outcome)),
    ]
    text = ["## DiffuRec retraining", "", "| | |", "|---|---|"]
    text += [f"| {key} | {value.replace('|', '/')} |" for key, value in rows]
    if outcome["metrics"]:
        text += ["", "| Metric (test, percent) | Value |", "|---|---:|"]
        text += [f"| {key} | {float(value):.2f} |" for key, value in sorted(outcome["metrics"].items())]
    return "\n".join(text) + "\n"


def wait_and_report(
    host: str,
    token: str | None,
    namespace: str | None,
    submitted: dict[str, Any],
    *,
    timeout: float,
    poll: float,
    request_timeout: float,
    tracking_uri: str | None,
) -> tuple[dict[str, Any], bool]:
    """Wait for a submitted run and read what it did: (run_outcome, timed_out)."""
    client = kfp_client(host, token, namespace, request_timeout)
    run = wait_for_run(
        client, host, submitted["run_id"], timeout=timeout, poll=poll, request_timeout=request_timeout
    )
    timed_out = str(getattr(run, "state", None) or "") not in FINAL_STATES
    registry_name = str(submitted["arguments"].get("registry_name") or "")
    return run_outcome(run, registry_name, tracking_uri, request_timeout), timed_out


def commit_version_name(allow_dirty: bool) -> str:
    """The pipeline version name of this checkout: its commit's first 12 hex digits; a checkout
    with uncommitted changes (`<sha>-dirty`) is refused unless allow_dirty."""
    commit, dirty = git_commit(repo_root())
    if not commit:
        raise DiffuRecError("no git commit here (nor $DIFFUREC_GIT_COMMIT): pass --version NAME")
    name = commit[:12] + ("-dirty" if dirty else "")
    if dirty and not allow_dirty:
        raise DiffuRecError(
            f"the checkout has uncommitted changes (version {name}): commit them, or pass --allow-dirty"
        )
    return name


def upload(
    host: str | None,
    token: str | None,
    namespace: str | None,
    version: str,
    params_file: str | None,
    request_timeout: float,
    image: str | None = None,
) -> dict[str, Any]:
    """Upload the compiled pipeline to the Kubeflow UI: the pipeline (named PIPELINE_NAME, with
    the spec's description; its parameters' descriptions travel in the spec) when missing, then
    the version `version` unless it exists. Returns {"pipeline_id", "version_id", "created",
    "message"}; created: which of "pipeline", "version" this call made."""
    import yaml

    namespace = namespace or None  # an empty $KFP_NAMESPACE is none
    client = kfp_client(host, token, namespace, request_timeout)
    assert host
    spec = compile_spec(
        str(Path(tempfile.mkdtemp(prefix="diffurec-kfp-")) / "pipeline.yaml"), params_file, image
    )
    description = str(
        (yaml.safe_load_all(spec.read_text()).__next__().get("pipelineInfo") or {}).get("description") or ""
    )
    from pipelines.diffurec_pipeline import PIPELINE_NAME  # after compile_spec: it sets the image

    by_name = json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": PIPELINE_NAME}]}
    )
    created: list[str] = []
    found = kfp_call(request_timeout, host, client.list_pipelines, filter=by_name, namespace=namespace)
    quiet = contextlib.redirect_stdout(io.StringIO())  # kfp prints links of its own
    if found.pipelines:
        pipeline_id = str(found.pipelines[0].pipeline_id)
    else:
        with quiet:
            pipeline = kfp_call(
                request_timeout,
                host,
                client.upload_pipeline,
                str(spec),
                pipeline_name=PIPELINE_NAME,
                description=description,
                namespace=namespace,
            )
        pipeline_id = str(pipeline.pipeline_id)
        created.append("pipeline")
    by_version = json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version}]}
    )
    versions = kfp_call(
        request_timeout, host, client.list_pipeline_versions, pipeline_id=pipeline_id, filter=by_version
    )
    if versions.pipeline_versions:
        version_id = str(versions.pipeline_versions[0].pipeline_version_id)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            made = kfp_call(
                request_timeout,
                host,
                client.upload_pipeline_version,
                str(spec),
                pipeline_version_name=version,
                pipeline_id=pipeline_id,
                description=description,
            )
        version_id = str(made.pipeline_version_id)
        created.append("version")
    url = f"{host.rstrip('/')}/#/pipelines/details/{pipeline_id}/version/{version_id}"
    did = " and ".join(f"created the {what}" for what in created) or "already there, nothing uploaded"
    return {
        "pipeline_id": pipeline_id,
        "version_id": version_id,
        "created": created,
        "message": f"pipeline {PIPELINE_NAME} version {version} ({did}): {url}",
    }
