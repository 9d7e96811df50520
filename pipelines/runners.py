"""The four ways to run the pipeline's steps, and what they share.

    run_dvc     `dvc repro` of dvc.yaml in the repository (then `dvc push`)
    run_local   the Kubeflow pipeline under kfp's local SubprocessRunner, in this interpreter's venv
    compile_spec  the spec file the Kubeflow UI uploads
    submit      a run (or a recurring run) on a Kubeflow Pipelines endpoint

CI-triggered retraining is `submit` from a workflow. Nothing here parses command lines
(pipelines/cli.py does) and the library (diffurec/) never imports this package.
"""

from __future__ import annotations

import json
import logging
import os
import socket
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
    root: Path, params_file: str | None, overrides: list[str], local: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arguments, params): params.yaml's defaults with the overrides; for a local run also the
    local data copy and the local registry (`pipeline run`'s runs/mlflow/mlflow.db)."""
    from pipelines.diffurec_pipeline import default_arguments

    params = _params(root, params_file)
    arguments = default_arguments(params)
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


def run_local(pipeline_root: str, params_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """The Kubeflow pipeline under kfp's SubprocessRunner; returns seconds, run folder, gate."""
    import kfp.local

    from pipelines.diffurec_pipeline import PIPELINE_NAME, build_pipeline

    # Resource requests and the cluster image mean nothing to the local runner: said once here.
    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    log.info("local run: resource requests, GPU and node settings apply on a cluster only")
    root = repo_root()
    arguments, params = pipeline_arguments(root, params_file, overrides, local=True)
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
        build_pipeline(cluster=False, params=params)(**arguments)
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


def compile_spec(out: str | None, params_file: str | None) -> Path:
    """Compile the cluster pipeline (defaults from params.yaml or `params_file`)."""
    from pipelines.diffurec_pipeline import COMPILED, compile_pipeline

    params = read_params(params_file) if params_file else None
    return compile_pipeline(out or COMPILED, params=params)


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
    timeout: float,
) -> str:
    """Compile and start a run (or create a recurring run); returns what was done, in words."""
    import kfp

    from pipelines.diffurec_pipeline import PIPELINE_NAME, compile_pipeline, default_arguments, load_params

    if not host:
        raise DiffuRecError("no Kubeflow endpoint: pass --host URL or set $KFP_HOST")
    params = read_params(params_file) if params_file else None
    arguments = parse_overrides(overrides, default_arguments(params or load_params()))
    if "data_version" not in arguments and not os.environ.get(GIT_COMMIT_ENV):
        # The commit this checkout is at (pushed, for the cluster to read its dvc.lock).
        arguments["data_version"] = git_commit(repo_root())[0] or "HEAD"
    _check_reachable(host, timeout)
    spec = Path(tempfile.mkdtemp(prefix="diffurec-kfp-")) / "pipeline.yaml"
    compile_pipeline(spec, params=params)
    warnings.filterwarnings("ignore", category=FutureWarning, module="kfp.client")
    # kfp.Client logs a traceback per failed health check; the one line below says it instead.
    logging.disable(logging.ERROR)
    try:
        client = kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")
        logging.disable(logging.NOTSET)
        found = client.create_experiment(experiment, namespace=namespace)
        name = run_name or f"{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
        if recurring:
            job = client.create_recurring_run(
                experiment_id=found.experiment_id,
                job_name=name,
                cron_expression=recurring,
                pipeline_package_path=str(spec),
                params=arguments,
                service_account=service_account,
            )
            ident = getattr(job, "recurring_run_id", None) or getattr(job, "id", "?")
            return f"created recurring run {name} ({ident}) on {host}: cron {recurring!r}"
        run = client.create_run_from_pipeline_package(
            str(spec),
            arguments=arguments,
            run_name=name,
            experiment_name=experiment,
            namespace=namespace,
            service_account=service_account,
        )
        return f"submitted run {name} ({run.run_id}) to {host}"
    except Exception as error:  # kfp raises many types (HTTP, API, connection): one line for all
        logging.disable(logging.NOTSET)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DiffuRecError(f"Kubeflow endpoint {host}: {first[:300]}") from None


def _check_reachable(host: str, timeout: float) -> None:
    """Fail fast with one line when nothing answers at `host` (kfp.Client would retry at length)."""
    url = urlparse(host if "://" in host else f"http://{host}")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise DiffuRecError(f"--host {host!r}: expected an http(s) URL such as http://localhost:8080")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        raise DiffuRecError(
            f"Kubeflow endpoint {host} is unreachable ({error.strerror or error}); check --host / $KFP_HOST"
        ) from None
