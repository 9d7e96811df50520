"""The MLflow model registry: model folders in, registered model versions out.

Each trained model folder (docs/formats.md) becomes one MLflow run (parameters, metrics, the
folder as artifacts under `model/`) and one version of a registered model, tagged with its
metrics, preset, data version and git commit. Versions are addressed by aliases only
(`champion`, `previous`, `challenger`), never by the deprecated stages.

The tracking URI is `--tracking-uri`, else $MLFLOW_TRACKING_URI, else a local sqlite store
(`sqlite:///runs/mlflow/mlflow.db`); with sqlite the artifacts go to `artifacts/` beside the
database, so one folder holds the whole registry.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from diffurec.errors import DiffuRecError
from diffurec.metrics import METRIC_KEYS

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow/mlflow.db"
EXPERIMENT = "diffurec"
ARTIFACT_PATH = "model"
ALIASES = ("champion", "previous", "challenger")


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a sqlite tracking URI, None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :])


MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
CALL_DEADLINE_ENV = "DIFFUREC_MLFLOW_DEADLINE"
CALL_DEADLINE_SECONDS = 120.0  # one call of the client, retries and artifact transfers included


def call_deadline_seconds() -> float:
    """The total deadline of one MLflow call: $DIFFUREC_MLFLOW_DEADLINE, else 120 s."""
    from diffurec import net

    return net.seconds_from_env(CALL_DEADLINE_ENV, CALL_DEADLINE_SECONDS)


def client(tracking_uri: str | None = None) -> Any:
    """An MlflowClient on the resolved tracking URI (imports mlflow: about 2 s)."""
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    # MLflow's defaults: 7 retries with exponential backoff (minutes) for an unreachable server,
    # 120 s per socket read. Ours are shorter, and every call of the client has a total
    # deadline besides (net.py: a server that trickles or never answers).
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    from diffurec import net

    # MLflow logs a store error with its traceback before raising it; the raised error is
    # what the user gets (one line, from the command line).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

    uri = resolve_tracking_uri(tracking_uri)
    try:
        return net.WithDeadlines(
            MlflowClient(tracking_uri=uri, registry_uri=uri), call_deadline_seconds(), f"MLflow store {uri}"
        )
    except Exception as error:  # mlflow raises many types for a bad URI
        raise DiffuRecError(f"cannot open the MLflow store {uri}: {_first_line(error)}") from error


def _experiment_id(mlflow_client: Any, tracking_uri: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    db = sqlite_path(tracking_uri)
    location = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
    return mlflow_client.create_experiment(EXPERIMENT, artifact_location=location)


def metric_name(key: str) -> str:
    """MLflow names cannot hold '@': HR@10 -> HR_at_10."""
    return key.replace("@", "_at_")


def register_model_folder(
    model_dir: str | Path, metrics_path: str | Path, name: str, tracking_uri: str | None = None
) -> dict:
    """Log the folder and its metrics as a run, register it as a new version of `name`.

    Returns {"name", "version", "run_id", "source", "tracking_uri"}. The new version gets the
    `challenger` alias until it is promoted.
    """
    from diffurec.gate import read_metrics
    from diffurec.lineage import git_commit, version_tags
    from diffurec.metrics import check_identity
    from diffurec.model_folder import MANIFEST_FILE, read_config, read_summary, verify_manifest

    config = read_config(model_dir)
    manifest_sha256 = verify_manifest(model_dir)
    summary = read_summary(model_dir)
    metrics_json = read_metrics(metrics_path)
    # The metrics must describe this folder, measured on the splits it was trained on.
    check_identity(
        metrics_json,
        str(metrics_path),
        manifest_sha256=manifest_sha256,
        splits_md5=(summary.get("lineage") or {}).get("splits_md5"),
        expected_from=f"{Path(model_dir) / MANIFEST_FILE} and its train_summary.json",
    )
    lineage = {**(summary.get("lineage") or {}), **(metrics_json.get("lineage") or {})}
    if not lineage.get("git_commit"):
        lineage["git_commit"] = git_commit()[0]
    preset = config.get("preset") or lineage.get("preset") or ""
    tags = {
        "model": str(config.get("model", "")),
        "preset": str(preset),
        # code, data, parameters and run: git_commit, image, raw_data_md5, splits_md5,
        # data_version, data_revision, params, kfp_run_id, kfp_run_name
        **version_tags(lineage),
        "metrics_split": str(metrics_json.get("split", "")),
        "metrics_users": str(metrics_json.get("users", "")),
        "metrics": json.dumps(metrics_json["metrics"], sort_keys=True),
        "eval_settings": json.dumps(metrics_json.get("settings") or {}, sort_keys=True),
        "lineage": json.dumps(lineage, sort_keys=True, default=str)[:5000],
        "manifest_sha256": manifest_sha256,
    }
    for key in METRIC_KEYS:
        tags[metric_name(key)] = repr(float(metrics_json["metrics"][key]))

    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    run = mlflow_client.create_run(
        _experiment_id(mlflow_client, uri),
        run_name=f"{name}-{config.get('model')}-{preset}",
        tags={"diffurec.registered_model": name, **tags},
    )
    run_id = run.info.run_id
    try:
        from mlflow.entities import Metric, Param

        params = [
            Param(key, str(value)[:6000])
            for key, value in sorted(config.items())
            if key not in ("format", "version") and not isinstance(value, (dict, list))
        ]
        metrics = [Metric(metric_name(key), float(metrics_json["metrics"][key]), 0, 0) for key in METRIC_KEYS]
        mlflow_client.log_batch(run_id, metrics=metrics, params=params)
        _upload_verified(mlflow_client, run_id, model_dir, manifest_sha256)
        mlflow_client.log_dict(run_id, metrics_json, "metrics.json")
        mlflow_client.set_terminated(run_id)
    except Exception:
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise
    _ensure_registered_model(mlflow_client, name)
    source = f"{run.info.artifact_uri}/{ARTIFACT_PATH}"
    version = mlflow_client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    mlflow_client.set_registered_model_alias(name, "challenger", version.version)
    log.info("registered %s version %s (run %s)", name, version.version, run_id)
    return {
        "name": name,
        "version": str(version.version),
        "run_id": run_id,
        "source": source,
        "tracking_uri": uri,
    }


def _upload_verified(mlflow_client: Any, run_id: str, model_dir: str | Path, manifest_sha256: str) -> None:
    """Upload the manifest's files of `model_dir` as the run's `model/` artifacts: a verified
    copy, so exactly the bytes the manifest lists travel (no link followed, no unlisted file)."""
    import tempfile

    from diffurec.model_folder import MANIFEST_FILE, ManifestMismatch, copy_verified

    with tempfile.TemporaryDirectory(prefix="diffurec-register-") as staging:
        copy = Path(staging) / ARTIFACT_PATH
        if copy_verified(model_dir, copy) != manifest_sha256:
            raise ManifestMismatch(Path(model_dir), MANIFEST_FILE, "changed while registering; try again")
        mlflow_client.log_artifacts(run_id, str(copy), ARTIFACT_PATH)


def _ensure_registered_model(mlflow_client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(
            name, description="DiffuRec recommender; aliases champion/previous/challenger"
        )
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def get_version(
    name: str,
    version: str | None = None,
    alias: str | None = None,
    tracking_uri: str | None = None,
    mlflow_client: Any = None,
) -> dict | None:
    """A model version as a plain dict, by number or alias; None if the alias is not set."""
    from mlflow.exceptions import MlflowException

    mlflow_client = mlflow_client or client(tracking_uri)
    try:
        if alias is not None:
            found = mlflow_client.get_model_version_by_alias(name, alias)
        elif version is not None:
            found = mlflow_client.get_model_version(name, str(version))
        else:
            versions = mlflow_client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise DiffuRecError(f"registered model {name!r} has no versions")
            found = max(versions, key=lambda v: int(v.version))
    except MlflowException as error:
        if alias is not None and "not found" in str(error).lower():
            return None
        raise DiffuRecError(
            f"registered model {name!r} version {version or alias}: {_first_line(error)}"
        ) from error
    tags = dict(found.tags or {})
    metrics = json.loads(tags["metrics"]) if "metrics" in tags else {}
    return {
        "name": name,
        "version": str(found.version),
        "run_id": found.run_id,
        "source": found.source,
        "tags": tags,
        "metrics": metrics,
        "data_version": tags.get("data_version"),
        "split": tags.get("metrics_split"),
        "users": int(tags["metrics_users"]) if tags.get("metrics_users", "").isdigit() else None,
        "aliases": list(getattr(found, "aliases", []) or []),
    }


def download_model_folder(
    model_uri: str,
    tracking_uri: str | None = None,
    dst: str | Path | None = None,
    manifest_sha256: str | None = None,
) -> Path:
    """Download a registered model folder, e.g. `models:/diffurec@champion`; return its path
    (`dst`, which must be absent or empty, else a new temporary folder).

    The download must match its manifest (and, when given, have the manifest digest
    `manifest_sha256`, the version's tag): otherwise nothing is left behind and the error names
    the file."""
    import shutil
    import tempfile

    import mlflow

    from diffurec import net
    from diffurec.model_folder import MANIFEST_FILE, ManifestMismatch, verify_manifest

    uri = resolve_tracking_uri(tracking_uri)
    client(uri)  # fails with one clear line on a bad store
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    target = Path(dst) if dst is not None else None
    if target is not None:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise DiffuRecError(f"{target}: exists and is not an empty folder (where the model would go)")
        target.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded into a fresh folder and verified there: a copy that fails leaves nothing behind.
    staging = Path(
        tempfile.mkdtemp(
            prefix=f".{target.name}.download-" if target else "diffurec-model-",
            dir=target.parent if target else None,
        )
    )
    try:
        try:
            path = Path(
                net.call_with_deadline(
                    call_deadline_seconds(),
                    f"MLflow store {uri}",
                    mlflow.artifacts.download_artifacts,
                    artifact_uri=model_uri,
                    dst_path=str(staging),
                )
            )
        except Exception as error:
            raise DiffuRecError(f"cannot load {model_uri}: {_first_line(error)}") from error
        try:
            digest = verify_manifest(path)
        except ManifestMismatch as error:
            raise DiffuRecError(f"{model_uri}: {error.file}: {error.problem} (the stored copy)") from None
        except DiffuRecError as error:
            raise DiffuRecError(f"{model_uri}: {error}") from None
        if manifest_sha256 is not None and digest != manifest_sha256:
            raise DiffuRecError(
                f"{model_uri}: {MANIFEST_FILE} has sha256 {digest}, the registry recorded "
                f"{manifest_sha256}: the stored copy is another model folder"
            )
        if target is None:
            return path
        if target.exists():
            target.rmdir()  # empty, checked above
        path.rename(target)
        shutil.rmtree(staging, ignore_errors=True)  # what is left of it, if `path` was inside
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def set_version_tags(
    name: str, version: str, tags: dict, mlflow_client: Any = None, tracking_uri: str | None = None
) -> None:
    mlflow_client = mlflow_client or client(tracking_uri)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, str(version), key, str(value))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
