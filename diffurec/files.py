"""Small file helpers every step shares: reading a JSON object with a located error, and
writing a folder atomically (a temporary sibling renamed at the end, so a failed step leaves
nothing half-written)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from diffurec.errors import DiffuRecError, located


def read_json_object(path: str | os.PathLike, missing: str) -> dict:
    """The JSON object in `path`; `missing` is the error text when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        raise located(path, missing)
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise located(path, f"not valid JSON ({error.msg})", row=error.lineno, column=error.colno) from None
    except UnicodeDecodeError as error:
        raise located(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(value, dict):
        raise DiffuRecError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_yaml_mapping(path: str | os.PathLike, missing: str) -> dict:
    """The YAML mapping in `path` (e.g. params.yaml), with located errors like read_json_object."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise located(path, missing)
    try:
        value = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise located(path, f"not valid YAML ({getattr(error, 'problem', error)})",
                      row=mark.line + 1 if mark else None) from None
    if not isinstance(value, dict):
        raise located(path, "expected a mapping of sections at the top level")
    return value


@contextmanager
def atomic_folder(folder: str | os.PathLike):
    """Yield an empty temporary sibling of `folder`; on success it replaces `folder`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
