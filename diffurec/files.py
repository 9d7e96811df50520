"""Small file helpers every step shares, each the one place for its job: reading a JSON object
or params.yaml with a located error, writing a JSON file or a folder atomically (a temporary
sibling renamed at the end, so a failed step leaves nothing half-written), and hashing a file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
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
        raise located(
            path, f"not valid YAML ({getattr(error, 'problem', error)})", row=mark.line + 1 if mark else None
        ) from None
    if not isinstance(value, dict):
        raise located(path, "expected a mapping of sections at the top level")
    return value


def read_params(path: str | os.PathLike, sections: Sequence[str] | None = None) -> dict:
    """The parameters in a params.yaml: all sections, or only `sections` (each must exist)."""
    path = Path(path)
    params = read_yaml_mapping(path, "params file not found")
    if sections:
        missing = [name for name in sections if name not in params]
        if missing:
            raise located(path, f"no section {missing[0]!r}")
        params = {name: params[name] for name in sections}
    return params


def write_json_atomic(path: str | os.PathLike, value: object, sort_keys: bool = False) -> Path:
    """Write `value` as JSON (indent 2, a trailing newline) through a temporary sibling and
    os.replace, so a reader never sees half a file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of our own rather than mkstemp: mkstemp's 0600 mode would survive the rename.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes (any hashlib algorithm), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file's bytes: DVC 3's hash of a file, and the raw data's provenance."""
    return file_digest(path, "md5")


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
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
