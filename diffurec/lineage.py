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

log = logging.getLogger(__name__)

LINEAGE_KEYS = ("raw_data_md5", "splits_md5", "git_commit", "params", "preset")
# Inside a container there is no .git: the image (or the pipeline) passes the commit instead.
GIT_COMMIT_ENV = "DIFFUREC_GIT_COMMIT"


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
