"""Data versions: which raw log a run trains on, and where its bytes live.

A data version is a git revision of this repository. That revision's dvc.lock names the raw
stage's output (path, md5, size); the bytes live in the DVC remote, content-addressed
(<remote>/files/md5/<first 2 hex>/<other 30>), whether the remote is the local folder of
.dvc/config or an S3-compatible object store (MinIO in the cluster).

    resolve_data     a revision (or an explicit source) -> {"commit", "path", "md5", "size"}
    remote_settings  the DVC remote: $DIFFUREC_DVC_REMOTE_URL (and $DIFFUREC_S3_ENDPOINT_URL)
                     in the cluster, else the repository's default remote
    pull_raw         the object with an md5 from that remote into a file, md5 checked
    add_raw          a new raw log under DVC control: data/sources/NAME + .dvc, params.yaml's
                     data.source/data.raw, the raw stage re-run (dvc.lock), pushed
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffurec.errors import DiffuRecError, located
from diffurec.files import file_md5
from diffurec.net import call_with_deadline

log = logging.getLogger(__name__)

# The cluster's settings (k8s/base/kustomization.yaml's diffurec-settings ConfigMap).
GIT_REPO_ENV = "DIFFUREC_GIT_REPO"  # the repository the data versions are revisions of
REMOTE_URL_ENV = "DIFFUREC_DVC_REMOTE_URL"  # e.g. s3://diffurec/dvc
S3_ENDPOINT_ENV = "DIFFUREC_S3_ENDPOINT_URL"  # e.g. http://minio-service.kubeflow:9000
RAW_STAGE = "raw"  # the dvc.yaml stage whose single output is the raw log
SOURCES_DIR = "data/sources"  # where `diffurec data add` keeps the logs it puts under DVC control
# A whole clone of this repository or one raw log from the object store: generous but finite.
DEADLINE_S = 600.0
MD5 = re.compile(r"^[0-9a-f]{32}$")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


# ---- resolve -----------------------------------------------------------------------------------


@contextmanager
def _git_repository(repo: str, deadline_s: float) -> Iterator[Any]:
    """scmrepo's Git for a local checkout, or for a bare clone of a URL (pygit2/dulwich: no git
    binary needed in the image), removed afterwards."""
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    if "://" not in repo and not repo.startswith("git@"):
        if not (Path(repo) / ".git").exists():
            raise located(repo, "not a git checkout (give the repository with --repo or $DIFFUREC_GIT_REPO)")
        scm = Git(repo)
        try:
            yield scm
        finally:
            scm.close()
        return
    folder = tempfile.mkdtemp(prefix="diffurec-repo-")
    try:
        try:
            call_with_deadline(
                deadline_s, f"git clone {repo}", lambda: Git.clone(repo, folder, bare=True).close()
            )
        except SCMError as error:
            raise DiffuRecError(f"{repo}: cannot clone ({_first_line(error)})") from None
        scm = Git(folder)
        try:
            yield scm
        finally:
            scm.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def raw_output(lock_text: str, where: str) -> dict[str, Any]:
    """{"path", "md5", "size"} of the raw stage's output in a dvc.lock's text."""
    import yaml

    try:
        lock = yaml.safe_load(lock_text) or {}
        outs = lock["stages"][RAW_STAGE]["outs"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise DiffuRecError(
            f"{where}: no `{RAW_STAGE}` stage with outputs (was the pipeline run there?)"
        ) from None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
        raise DiffuRecError(f"{where}: the `{RAW_STAGE}` stage must have exactly one output, the raw log")
    out = outs[0]
    md5 = str(out.get("md5", ""))
    if not MD5.match(md5):
        raise DiffuRecError(f"{where}: the raw log {out.get('path')} has no file md5 (a folder?): {md5!r}")
    return {"path": str(out["path"]), "md5": md5, "size": out.get("size")}


def resolve_data(
    data_version: str,
    source: str = "",
    repo: str | Path | None = None,
    deadline_s: float = DEADLINE_S,
) -> dict[str, Any]:
    """What the run trains on, as {"data_version", "commit", "path", "md5", "size", "source"}.

    Without `source`: `data_version` (a git revision; "" means HEAD) of `repo` (default
    $DIFFUREC_GIT_REPO, else the current folder), its dvc.lock's raw log. With a `source`
    path: that file's md5 (a copy is re-read each run, so its bytes key the cache). With
    source "official": the checksum-pinned official download (md5 "": known after the fetch).
    """
    if source:
        found = Path(source)
        if source != "official" and found.is_file():
            return {
                "data_version": "",
                "commit": "",
                "path": found.name,
                "md5": file_md5(found),
                "size": found.stat().st_size,
                "source": source,
            }
        return {"data_version": "", "commit": "", "path": "", "md5": "", "size": None, "source": source}
    from scmrepo.exceptions import SCMError

    where = str(repo or os.environ.get(GIT_REPO_ENV) or ".")
    rev = data_version or "HEAD"
    with _git_repository(where, deadline_s) as scm:
        try:
            commit = scm.resolve_rev(rev)
        except (SCMError, ValueError, KeyError):
            raise DiffuRecError(f"data version {rev!r}: not a revision of {where}") from None
        try:
            lock_text = scm.get_fs(commit).read_text("dvc.lock")
        except (FileNotFoundError, SCMError):
            raise DiffuRecError(f"{where}: revision {rev} ({commit[:12]}) has no dvc.lock") from None
    found_raw = raw_output(lock_text, f"{where}@{commit[:12]}:dvc.lock")
    return {"data_version": rev, "commit": commit, **found_raw, "source": ""}


# ---- the remote ------------------------------------------------------------------------------


def remote_settings(repo: str | Path | None = None, name: str | None = None) -> dict[str, Any]:
    """The DVC remote's settings ({"url", ...} as in .dvc/config): $DIFFUREC_DVC_REMOTE_URL
    (with $DIFFUREC_S3_ENDPOINT_URL as its endpointurl; credentials from the AWS_* variables)
    when set, else remote `name` (default: the default remote) of the repository at `repo`."""
    url = os.environ.get(REMOTE_URL_ENV)
    if url and not name:
        settings: dict[str, Any] = {"url": url}
        if os.environ.get(S3_ENDPOINT_ENV):
            settings["endpointurl"] = os.environ[S3_ENDPOINT_ENV]
        return settings
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    where = Path(repo or ".")
    try:
        with Repo(str(where)) as dvc_repo:
            config = dvc_repo.config
            chosen = name or config["core"].get("remote")
            if not chosen:
                raise DiffuRecError(
                    f"{where}: no default DVC remote (set ${REMOTE_URL_ENV} or `dvc remote default`)"
                )
            if chosen not in config["remote"]:
                raise DiffuRecError(f"{where}: no DVC remote named {chosen!r} in .dvc/config")
            return dict(config["remote"][chosen])
    except DvcException as error:
        raise DiffuRecError(f"{where}: not a DVC repository ({_first_line(error)})") from None


def pull_raw(
    md5: str,
    out: str | Path,
    remote: dict[str, Any] | None = None,
    deadline_s: float = DEADLINE_S,
) -> dict[str, Any]:
    """Copy the object `md5` from the DVC remote (default: remote_settings()) to `out`,
    atomically, and check the copy's md5. Returns {"path", "md5", "remote", "bytes"}."""
    from dvc.fs import get_cloud_fs

    md5 = md5.strip().lower()
    if not MD5.match(md5):
        raise DiffuRecError(f"--md5 {md5!r}: expected 32 hex digits (the raw log's md5 in dvc.lock)")
    settings = dict(remote or remote_settings())
    url = str(settings.get("url", ""))
    try:
        cls, config, root = get_cloud_fs(None, **settings)
        fs = cls(**config)
    except Exception as error:  # noqa: BLE001 (DVC and fsspec raise many types: one line for all)
        raise DiffuRecError(f"DVC remote {url}: {_first_line(error)}") from None
    key = fs.join(root, "files", "md5", md5[:2], md5[2:])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")

    def copy() -> None:
        if not fs.exists(key):
            raise DiffuRecError(f"DVC remote {url}: has no object {md5} (push that data version: `dvc push`)")
        fs.get_file(key, str(tmp))

    try:
        try:
            call_with_deadline(deadline_s, f"DVC remote {url}", copy)
        except DiffuRecError:
            raise
        except Exception as error:  # noqa: BLE001 (credentials, endpoint, network: one line)
            raise DiffuRecError(f"DVC remote {url}: cannot read {md5} ({_first_line(error)})") from None
        actual = file_md5(tmp)
        if actual != md5:
            raise DiffuRecError(
                f"DVC remote {url}: object {md5} holds bytes with md5 {actual} (corrupt remote)"
            )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "md5": md5, "remote": url, "bytes": out.stat().st_size}


# ---- bring your own data ---------------------------------------------------------------------


def _dvc(args: list[str], cwd: Path) -> None:
    """`dvc ARGS` in `cwd` with this interpreter's tools (the raw stage calls `diffurec`)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    log.info("$ dvc %s", " ".join(args))
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise DiffuRecError(f"`dvc {' '.join(args)}` failed in {cwd}: {said[-1][:300]}")


def set_data_params(params_file: Path, values: dict[str, str]) -> None:
    """Set keys of params.yaml's `data:` section in place, keeping every comment and the layout
    (yaml.safe_dump would drop the comments that document the parameters)."""
    lines = params_file.read_text().splitlines(keepends=True)
    left = dict(values)
    in_data = False
    for number, line in enumerate(lines):
        if re.match(r"^\S", line):
            in_data = line.startswith("data:")
            continue
        match = re.match(r"^(\s+\w+:\s*)(\S+)(\s*#.*)?$", line.rstrip("\n"))
        key = match.group(1).strip().rstrip(":") if match else None
        if in_data and match and key in left:
            prefix, old, comment = match.groups()
            value = left.pop(key)
            value = value if re.match(r"^[\w./-]+$", value) else json.dumps(value)  # YAML-safe
            if comment:  # the comment stays in its column when the value leaves room
                stripped = comment.lstrip()
                column = len(prefix) + len(old) + len(comment) - len(stripped)
                comment = " " * max(1, column - len(prefix) - len(value)) + stripped
            lines[number] = f"{prefix}{value}{comment or ''}\n"
    if left:
        raise located(params_file, f"no data.{', data.'.join(left)} to set (expected in the data: section)")
    params_file.write_text("".join(lines))


def add_raw(
    file: str | Path, repo: str | Path = ".", push: bool = True, remote: str | None = None
) -> dict[str, Any]:
    """Put the interaction log `file` under DVC control as the pipeline's raw input.

    Copies it to data/sources/NAME and `dvc add`s it, points params.yaml's data.source at it
    (and data.raw at data/raw/NAME: the file name tells the readers its format), re-runs the
    raw stage (dvc.lock then names its md5: the new data version once committed) and pushes
    both to the default remote (or `remote`). Returns {"source", "raw", "md5", "to_commit"}.
    """
    from diffurec.data.readers import read_interactions

    root = Path(repo).resolve()
    file = Path(file)
    if not (root / "dvc.yaml").is_file() or not (root / "params.yaml").is_file():
        raise located(root, "no dvc.yaml and params.yaml here (run in the repository, or give --repo)")
    if not file.is_file():
        raise located(file, "no such file")
    read_interactions(file)  # one clear line now, not a failed validate step in the pipeline
    source = Path(SOURCES_DIR) / file.name
    raw = Path("data/raw") / file.name
    target = root / source
    if file.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            shutil.copyfile(file, tmp)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    _dvc(["add", "--quiet", str(source)], root)
    set_data_params(root / "params.yaml", {"source": str(source), "raw": str(raw)})
    _dvc(["repro", "--quiet", "--single-item", RAW_STAGE], root)
    found = raw_output((root / "dvc.lock").read_text(), str(root / "dvc.lock"))
    if push:
        _dvc(["push", "--quiet", *(["--remote", remote] if remote else []), f"{source}.dvc", RAW_STAGE], root)
    return {
        "source": str(source),
        "raw": found["path"],
        "md5": found["md5"],
        "pushed": push,
        "to_commit": [
            f"{source}.dvc",
            str(source.parent / ".gitignore"),
            str(raw.parent / ".gitignore"),
            "params.yaml",
            "dvc.lock",
        ],
    }
