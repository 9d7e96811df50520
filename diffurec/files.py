"""Small file helpers every step shares, each the one place for its job: reading a JSON object
or params.yaml with a located error, checking an output path before a step runs
(`prepare_output`), writing a JSON file or a folder atomically (a temporary sibling renamed at
the end, so a failed step leaves nothing half-written, and a killed one leaves nothing the next
run does not remove), and hashing a file."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Literal

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
    _make_parent(path)
    remove_stale_temporaries(path)
    # A name of our own rather than mkstemp: mkstemp's 0600 mode would survive the rename.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}@{_HOST}")
    try:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and _unwritable(error):
            raise _write_error(error, path) from None
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


# ---- outputs ----------------------------------------------------------------------------------

log = logging.getLogger(__name__)

# Temporary siblings carry the writer's PID and host, so a later run can tell a dead writer's
# leftovers (removed) from a live one's (kept), also in a folder several machines share.
_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "localhost"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(-[^@/]*)?@(?P<host>[^@/]+)$")
# Errors of the place written to (not of the data): one line naming the path, not a traceback.
_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
# The file in a folder whose `format` says which command wrote it (docs/formats.md).
FORMAT_FILES = ("format.json", "config.json", "report.json")


def prepare_output(
    path: str | os.PathLike,
    *,
    kind: Literal["folder", "file"],
    inputs: Sequence[str | os.PathLike | None],
    force: bool,
    flag: str = "--out",
    written_by: str | None = None,
) -> Path:
    """Check that a step may write `path` before it reads or computes anything; returns it.

    Refused with one line naming `flag` and the path: the path equal to an input, inside one,
    or holding one; a file where a folder is expected (`kind`) or a folder where a file is; a
    non-empty folder that this kind of command did not write, i.e. without a FORMAT_FILES file
    whose `format` is `written_by`, unless `force` (written_by None: no such check); for a
    file, written_by "json" refuses to replace a file that is not a JSON object, unless
    `force`; an output place that cannot be written. Leftovers of killed writers of `path` are
    removed (remove_stale_temporaries).
    """
    out = Path(path)
    where = f"{flag} {out}"
    target = out.resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(given).resolve()
        if target == source:
            raise DiffuRecError(f"{where}: is the input {given}; write the output elsewhere")
        if source in target.parents:
            raise DiffuRecError(f"{where}: lies inside the input {given}; write the output elsewhere")
        if target in source.parents:
            raise DiffuRecError(
                f"{where}: holds the input {given}, which writing it would delete; write the output elsewhere"
            )
    if kind == "folder":
        if out.exists() and not out.is_dir():
            raise DiffuRecError(f"{where}: is a file, but a folder is expected")
        if written_by and not force and out.is_dir() and any(out.iterdir()):
            if _folder_format(out) != written_by:
                raise DiffuRecError(
                    f"{where}: a non-empty folder that is not a {written_by} folder; "
                    f"refusing to replace it (pass --force to replace it anyway)"
                )
    elif kind == "file":
        if out.is_dir():
            raise DiffuRecError(f"{where}: is a folder, but a file is expected (give a file name)")
        if written_by == "json" and not force and out.is_file() and out.stat().st_size:
            try:
                is_object = isinstance(json.loads(out.read_bytes()), dict)
            except (ValueError, UnicodeDecodeError):
                is_object = False
            if not is_object:
                raise DiffuRecError(
                    f"{where}: an existing file that is not a JSON object; refusing to replace it "
                    f"(pass --force to replace it anyway)"
                )
    else:
        raise ValueError(f"kind must be 'folder' or 'file', not {kind!r}")
    existing = target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DiffuRecError(f"{where}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DiffuRecError(f"{where}: {existing} is not writable (a read-only store?)")
    if target.parent.is_dir():
        remove_stale_temporaries(out)
    return out


def _folder_format(folder: Path) -> str | None:
    """The `format` a folder's FORMAT_FILES file names (the command that wrote it), or None."""
    for name in FORMAT_FILES:
        try:
            value = json.loads((folder / name).read_bytes())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(value, dict) and isinstance(value.get("format"), str):
            return value["format"]
    return None


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of `path` left beside it on this host (temporary siblings of
    processes that no longer run); a replaced `path` that a killed writer had moved aside
    while `path` is missing is moved back instead. Returns the paths removed or restored."""
    path = Path(path)
    handled: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return handled
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or match["name"] != path.name or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        try:
            if match["kind"] == "old" and not path.exists() and not path.is_symlink():
                entry.rename(path)
                log.warning("restored %s, moved aside by a killed writer (pid %s)", path, match["pid"])
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
                log.info("removed %s, left by a killed writer (pid %s)", entry, match["pid"])
            else:
                entry.unlink()
                log.info("removed %s, left by a killed writer (pid %s)", entry, match["pid"])
        except FileNotFoundError:  # another run cleaned it up first
            continue
        handled.append(entry)
    return handled


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if _unwritable(error):
            raise _write_error(error, path) from None
        raise


def _unwritable(error: BaseException) -> bool:
    """An error of the place written to (read-only, no permission, full), not of the data."""
    return isinstance(error, OSError) and error.errno in _WRITE_ERRNOS


def _write_error(error: OSError, path: Path) -> DiffuRecError:
    """One line naming the file that could not be written and why."""
    return DiffuRecError(f"{error.filename or path}: cannot write ({error.strerror})")


@contextmanager
def _termination_raises() -> Iterator[None]:
    """Within: SIGTERM raises SystemExit(143) (as Ctrl-C raises KeyboardInterrupt), so the
    cleanup of a temporary folder runs when a step is stopped (Kubeflow, DVC, kill). Only where
    SIGTERM has its default action (a handler someone else set is left alone) and only in the
    main thread (the only one that may set handlers)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def temporary_sibling(folder: Path) -> Path:
    """A new empty folder beside `folder`, named so that remove_stale_temporaries removes it
    once its writer (this process) is gone."""
    try:
        return Path(
            tempfile.mkdtemp(
                prefix=f".{folder.name}.tmp-{os.getpid()}-", suffix=f"@{_HOST}", dir=folder.parent
            )
        )
    except OSError as error:
        if _unwritable(error):
            raise _write_error(error, folder) from None
        raise


@contextmanager
def scratch_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A working folder beside `path` (on its disk, e.g. for spill files), removed at the end,
    on an exception, Ctrl-C or SIGTERM; named like atomic_folder's temporary, so what a
    kill -9 leaves is removed by the next run writing `path`."""
    path = Path(path)
    _make_parent(path)
    with _termination_raises():
        folder = temporary_sibling(path)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling of `folder`; on success it replaces `folder`.

    On an exception, Ctrl-C or SIGTERM the temporary folder is removed; what a kill -9 leaves
    is removed by the next write of `folder` (remove_stale_temporaries).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DiffuRecError(f"{folder}: is a file, but a folder is expected")
    _make_parent(folder)
    remove_stale_temporaries(folder)
    with _termination_raises():
        tmp = temporary_sibling(folder)
        try:
            yield tmp
            old = None
            if folder.exists():
                old = folder.parent / f".{folder.name}.old-{os.getpid()}@{_HOST}"
                folder.rename(old)
            try:
                tmp.rename(folder)
            except BaseException:
                if old is not None:
                    old.rename(folder)
                raise
            if old is not None:
                shutil.rmtree(old)
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, OSError) and _unwritable(error):
                raise _write_error(error, folder) from None
            raise
