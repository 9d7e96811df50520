"""Lineage: which data, code and parameters produced a model or an evaluation.

The `lineage` object (docs/formats.md) travels in train_summary.json, in every metrics JSON
and in the registry's tags:

    {"raw_data_md5": "...",          # DVC's md5 of the raw interaction file
     "splits_md5": "....dir",        # DVC's md5 of the splits folder (the data version)
     "git_commit": "...", "git_dirty": false,
     "params": {...},                # the run's parameters (params.yaml sections or pipeline inputs)
     "preset": "fast"}

The md5s are computed exactly as DVC 3 computes them, so they equal the hashes in dvc.lock
and a model can be traced to the `dvc.lock` (and git commit) that produced its data.

The run that produced a model is named by environment variables (RUN_IDENTITY_ENV): the image
sets DIFFUREC_GIT_COMMIT and DIFFUREC_IMAGE_REF (Dockerfile build arguments), every Kubeflow
task gets the run's id and name, the pipeline and the image, the local runners set theirs.
`register` copies them into the version's tags (`version_tags`) and `diffurec lineage` reads
the chain back from the registry (`version_lineage`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from diffurec.errors import DiffuRecError, located
from diffurec.files import file_md5, read_json_object, write_json_atomic
from diffurec.telemetry import DATASET_ENV, PIPELINE_ENV, RUN_ENV

log = logging.getLogger(__name__)

LINEAGE_KEYS = ("raw_data_md5", "splits_md5", "git_commit", "params", "preset")
# Inside a container there is no .git: the image (or the pipeline) passes the commit instead.
GIT_COMMIT_ENV = "DIFFUREC_GIT_COMMIT"
# The run that is executing: KFP's run id and name (in a cluster from the pod's labels, or from
# dsl.PIPELINE_JOB_ID_PLACEHOLDER / PIPELINE_JOB_NAME_PLACEHOLDER), the image it runs in.
# The run id, pipeline and dataset are also the labels of every Prometheus series (telemetry).
RUN_ID_ENV = RUN_ENV
RUN_NAME_ENV = "DIFFUREC_RUN_NAME"
IMAGE_ENV = "DIFFUREC_IMAGE_REF"
# The git revision the run resolved its data from (the pipeline's resolve_data step).
DATA_VERSION_ENV = "DIFFUREC_DATA_VERSION"
RUN_IDENTITY_ENV = (
    RUN_ID_ENV,
    RUN_NAME_ENV,
    PIPELINE_ENV,
    DATASET_ENV,
    GIT_COMMIT_ENV,
    IMAGE_ENV,
    DATA_VERSION_ENV,
)
UNKNOWN = "unknown"  # a tag's value when the fact was not recorded
# The library's code version for kfp's local runner, whose cache cannot see the code (below).
CODE_MD5_ENV = "DIFFUREC_CODE_MD5"


def dir_md5(path: str | Path) -> str:
    """DVC 3's hash of a folder: the md5 of its sorted JSON manifest of (md5, relpath), + '.dir'."""
    root = Path(path)
    entries = [
        {"md5": file_md5(file), "relpath": file.relative_to(root).as_posix()}
        for file in root.rglob("*")
        if file.is_file()
    ]
    entries.sort(key=lambda entry: entry["relpath"])
    manifest = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(manifest).hexdigest() + ".dir"


def data_md5(path: str | Path) -> str:
    """DVC's md5 of a file or a folder."""
    path = Path(path)
    if path.is_dir():
        return dir_md5(path)
    if path.is_file():
        return file_md5(path)
    raise located(path, "not found (cannot compute its data version)")


def git_commit(repo: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at `repo`; the env var DIFFUREC_GIT_COMMIT wins.

    Outside a git checkout (a container) and without the env var: (None, None).
    """
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV], None
    cwd = str(repo) if repo else None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        # Untracked run outputs are not code: only changes to tracked files make the tree dirty.
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def source_md5(folder: str | Path) -> str:
    """md5 of the Python sources under `folder` (their relative paths and bytes, in order).

    kfp's local runner keys its cache on a component's own source, arguments and environment,
    not on the library the component calls: the local pipeline puts this in every step's
    environment, so a changed `diffurec/` is a cache miss (on a cluster the image is the key)."""
    root = Path(folder)
    digest = hashlib.md5()
    for file in sorted(root.rglob("*.py")):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def build_lineage(
    raw: str | Path | None = None,
    splits: str | Path | None = None,
    params: dict | None = None,
    preset: str | None = None,
    repo: str | Path | None = None,
) -> dict:
    """The lineage object for a run on `raw` -> `splits` with `params` and `preset`."""
    commit, dirty = git_commit(repo)
    lineage: dict[str, Any] = {
        "raw_data_md5": data_md5(raw) if raw else None,
        "splits_md5": data_md5(splits) if splits else None,
        "git_commit": commit,
        "params": params or {},
        "preset": preset,
    }
    if dirty is not None:
        lineage["git_dirty"] = dirty
    return lineage


def write_lineage(path: str | Path, lineage: dict) -> Path:
    """Write a lineage JSON atomically, keys sorted (the bytes DVC hashes stay stable)."""
    return write_json_atomic(path, lineage, sort_keys=True)


def read_lineage(path: str | Path) -> dict:
    """Read a lineage JSON file and check it has every key of docs/formats.md."""
    path = Path(path)
    lineage = read_json_object(path, "lineage file not found")
    missing = [key for key in LINEAGE_KEYS if key not in lineage]
    if missing:
        raise DiffuRecError(f"{path}: lineage has no {missing[0]!r}")
    return lineage


# ---- run identity and the registry's lineage tags -------------------------------------------


def fill_run_identity(**values: str | None) -> dict[str, str]:
    """Set the run-identity env vars that are still empty from `values` (keyword = env var name,
    e.g. DIFFUREC_RUN_ID="..."), skipping empty values and placeholders KFP left unresolved
    ("{{$...}}"). What is already set wins: in a cluster the pod's own labels, locally the
    runner's run id, which every step's Prometheus series carry. Returns the identity now set."""
    for name, value in values.items():
        if name not in RUN_IDENTITY_ENV:
            raise ValueError(f"{name} is not a run-identity variable ({', '.join(RUN_IDENTITY_ENV)})")
        if value and not value.startswith("{{") and not os.environ.get(name):
            os.environ[name] = value
    return {name: os.environ[name] for name in RUN_IDENTITY_ENV if os.environ.get(name)}


def version_tags(lineage: dict) -> dict[str, str]:
    """The lineage tags of a registered version: code (git commit, image), data (raw and splits
    md5; data_version is the splits md5 the gate compares; data_revision the git revision the
    pipeline resolved the data from, when the run or its parameters name one), parameters and
    the run."""
    params = lineage.get("params") or {}
    data_params = params.get("data")
    data_params = data_params if isinstance(data_params, dict) else {}
    splits_md5 = str(lineage.get("splits_md5") or UNKNOWN)
    return {
        "git_commit": str(lineage.get("git_commit") or UNKNOWN),
        "image": os.environ.get(IMAGE_ENV) or UNKNOWN,
        "raw_data_md5": str(lineage.get("raw_data_md5") or UNKNOWN),
        "splits_md5": splits_md5,
        "data_version": splits_md5,
        "data_revision": os.environ.get(DATA_VERSION_ENV) or str(data_params.get("data_version") or UNKNOWN),
        "params": json.dumps(params, sort_keys=True, default=str)[:5000],  # MLflow caps a tag
        # the profile of parameters the pipeline's defaults came from (params.yaml profiles:)
        "profile": str(params.get("profile") or UNKNOWN),
        "kfp_run_id": os.environ.get(RUN_ID_ENV) or UNKNOWN,
        "kfp_run_name": os.environ.get(RUN_NAME_ENV) or UNKNOWN,
    }


def version_lineage(name: str, version: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The chain of a registered version, from its tags: code, data, parameters, run, gate
    decision and promotion. `version` is a number or `@alias` (e.g. `@champion`)."""
    from diffurec import registry

    mlflow_client = registry.client(tracking_uri)
    alias = version[1:] if version.startswith("@") else None
    if alias is not None:
        found = registry.get_version(name, alias=alias, mlflow_client=mlflow_client)
        if found is None:
            raise DiffuRecError(f"--version {version}: registered model {name!r} has no alias {alias!r}")
    else:
        if not version.isdigit():
            raise DiffuRecError(f"--version {version!r}: expected a version number or @ALIAS (@champion)")
        found = registry.get_version(name, version=version, mlflow_client=mlflow_client)
    assert found is not None  # by number: a missing version raises
    tags = found["tags"]
    model_version = mlflow_client.get_model_version(name, found["version"])
    try:
        params = json.loads(tags["params"]) if "params" in tags else None
    except json.JSONDecodeError:
        params = tags["params"]  # cut at MLflow's tag length: shown as recorded
    gate = None
    if "gate_decision_id" in tags:
        gate = {
            "decision_id": tags["gate_decision_id"],
            "passed": tags.get("gate_passed") == "true",
            "reason": tags.get("gate_reason"),
            "decided_at": tags.get("gate_decided_at"),
        }
    promotion = None
    if "promoted_at" in tags:
        override = tags.get("promotion_override") == "true"
        promotion = {
            "promoted_at": tags["promoted_at"],
            "promoted_from": tags.get("promoted_from"),
            "override": override,
            "reason": tags.get("promotion_reason"),
            # recorded at promotion; older versions: the decision promote accepted is the one
            # the version carried (promote refuses any other), none under --override
            "decision_id": None
            if tags.get("promotion_decision_id") == "none"
            else tags.get("promotion_decision_id") or (None if override else tags.get("gate_decision_id")),
        }
    return {
        "name": name,
        "version": found["version"],
        "aliases": sorted(found["aliases"]),
        "git_commit": tags.get("git_commit", UNKNOWN),
        "image": tags.get("image", UNKNOWN),
        "data_revision": tags.get("data_revision", UNKNOWN),
        "raw_data_md5": tags.get("raw_data_md5", UNKNOWN),
        "splits_md5": tags.get("splits_md5") or tags.get("data_version") or UNKNOWN,
        "params": params,
        "kfp_run_id": tags.get("kfp_run_id", UNKNOWN),
        "kfp_run_name": tags.get("kfp_run_name", UNKNOWN),
        "registered": {
            "version": found["version"],
            "mlflow_run_id": found["run_id"],
            "created_at": _iso_millis(model_version.creation_timestamp),
            "model": tags.get("model"),
            "preset": tags.get("preset"),
            "metrics": found["metrics"],
        },
        "gate": gate,
        "promotion": promotion,
    }


def format_version_lineage(chain: dict[str, Any]) -> str:
    """The chain as lines for a terminal, from the commit to the promotion."""
    registered, gate, promotion = chain["registered"], chain["gate"], chain["promotion"]
    aliases = f" (@{', @'.join(chain['aliases'])})" if chain["aliases"] else ""
    metrics = registered["metrics"] or {}
    lines = [
        f"{chain['name']} version {chain['version']}{aliases}",
        f"  git commit     {chain['git_commit']}",
        f"  image          {chain['image']}",
        f"  data version   {chain['data_revision']}",
        f"  raw data md5   {chain['raw_data_md5']}",
        f"  splits md5     {chain['splits_md5']}",
        f"  params         {json.dumps(chain['params'], sort_keys=True)}",
        f"  KFP run        {chain['kfp_run_id']} ({chain['kfp_run_name']})",
        f"  registered     version {registered['version']} at {registered['created_at']} "
        f"(MLflow run {registered['mlflow_run_id']}; {registered['model']}/{registered['preset']}"
        + (f"; HR@10 {metrics['HR@10']:.2f}, NDCG@10 {metrics['NDCG@10']:.2f}" if "HR@10" in metrics else "")
        + ")",
    ]
    if gate is None:
        lines.append("  gate           no decision")
    else:
        verdict = "passed" if gate["passed"] else "rejected"
        lines.append(f"  gate           {verdict} by decision {gate['decision_id']} at {gate['decided_at']}")
        lines.append(f"                 {gate['reason']}")
    if promotion is None:
        lines.append("  promotion      never promoted")
    else:
        how = (
            f"by override: {promotion['reason']}"
            if promotion["override"]
            else f"by decision {promotion['decision_id']}"
        )
        now = "" if "champion" in chain["aliases"] else f"; now {', '.join(chain['aliases']) or 'no alias'}"
        lines.append(
            f"  promotion      champion at {promotion['promoted_at']} "
            f"(from {promotion['promoted_from']}) {how}{now}"
        )
    return "\n".join(lines)


def _iso_millis(millis: int | None) -> str | None:
    from datetime import UTC, datetime

    if millis is None:
        return None
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(timespec="seconds")
