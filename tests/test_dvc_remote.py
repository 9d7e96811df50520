"""Data versions with a real S3 remote: moto's S3 server (moto.server.ThreadedMotoServer, the
server mode DVC's own S3 tests use) on 127.0.0.1 is the DVC remote, real ML-100K rows the data.

`diffurec data resolve` reads a git revision's dvc.lock (a checkout, or a clone of a URL),
`diffurec data pull` reads the md5's object from the remote and checks it, `diffurec data add`
puts a log under DVC control and pushes it; end to end, kfp's local runner in a clean clone
fetches by version and the md5 agrees from dvc.lock to the MLflow tags, for two versions."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from diffurec.cli import main

from pipeline_clone import VENV_BIN, clone_repo, registered_versions, run, tool_env, write_slice

DIFFUREC = str(VENV_BIN / "diffurec")
BUCKET = "diffurec-test"
REMOTE_URL = f"s3://{BUCKET}/dvc"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
NAME = "dvc-remote-e2e"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with an empty bucket; its URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys())
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture()
def s3_env(monkeypatch, s3_endpoint):
    """The cluster's settings (diffurec-settings ConfigMap and the remote's Secret) pointing at moto."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DIFFUREC_DVC_REMOTE_URL", REMOTE_URL)
    monkeypatch.setenv("DIFFUREC_S3_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


def _put(endpoint: str, key: str, body: bytes) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys()).put_object(
        Bucket=BUCKET, Key=key, Body=body
    )


def test_pull_reads_the_md5s_object_from_s3_and_checks_it(tmp_path, s3_env, capsys):
    body = b"user_id:token\titem_id:token\n1\t2\n"
    md5 = hashlib.md5(body).hexdigest()
    _put(s3_env, f"dvc/files/md5/{md5[:2]}/{md5[2:]}", body)
    out = tmp_path / "raw" / "log.inter"
    assert main(["data", "pull", "--md5", md5, "--out", str(out)]) == 0
    assert out.read_bytes() == body

    # An object whose bytes are not its name's md5: refused, nothing written.
    wrong = "0" * 32
    _put(s3_env, f"dvc/files/md5/00/{'0' * 30}", body)
    bad_out = tmp_path / "bad.inter"
    assert main(["data", "pull", "--md5", wrong, "--out", str(bad_out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt remote" in err[0] and wrong in err[0]
    assert not bad_out.exists() and not list(tmp_path.glob(".bad.inter*"))

    # A version nobody pushed, and a malformed md5: one line each.
    missing = "1" * 32
    assert main(["data", "pull", "--md5", missing, "--out", str(bad_out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"has no object {missing}" in err[0] and REMOTE_URL in err[0]
    assert main(["data", "pull", "--md5", "abc", "--out", str(bad_out)]) == 2
    assert "--md5 'abc'" in capsys.readouterr().err
    assert not bad_out.exists()


@pytest.fixture()
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers; its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        for connection in held:
            connection.close()
        listener.close()


def test_an_endpoint_that_never_answers_ends_at_the_deadline(tmp_path, monkeypatch, silent_server, capsys):
    """S3 clients retry and wait per request, git clients per read: the whole call has 2 s."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DIFFUREC_DVC_REMOTE_URL", REMOTE_URL)
    monkeypatch.setenv("DIFFUREC_S3_ENDPOINT_URL", silent_server)
    for command, said in (
        (["data", "pull", "--md5", "2" * 32, "--out", str(tmp_path / "x")], f"DVC remote {REMOTE_URL}"),
        (["data", "resolve", "--repo", f"{silent_server}/repo.git"], "git clone"),
    ):
        started = time.monotonic()
        assert main([*command, "--deadline", "2"]) == 2
        assert time.monotonic() - started < 10
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0] and "no complete answer within 2 s" in err[0], err
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def _git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _lock(md5: str) -> str:
    out = {"path": "data/raw/log.inter", "hash": "md5", "md5": md5, "size": 10}
    return yaml.safe_dump({"schema": "2.0", "stages": {"raw": {"cmd": "x", "outs": [out]}}})


def test_resolve_reads_each_revisions_dvc_lock(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "README").write_text("no lock yet\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "no lock")
    for md5 in ("a" * 32, "b" * 32):
        (repo / "dvc.lock").write_text(_lock(md5))
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", md5)
    first, second = _git(repo, "rev-parse", "HEAD~1"), _git(repo, "rev-parse", "HEAD")

    def resolve(*args: str) -> dict:
        out = tmp_path / "resolved.json"
        assert main(["data", "resolve", *args, "--out", str(out)]) == 0
        return json.loads(out.read_text())

    # A checkout, and the same repository as a URL (the cluster's way: a bare clone).
    for where in (str(repo), f"file://{repo}"):
        found = resolve("--rev", first, "--repo", where)
        assert (found["md5"], found["commit"], found["path"]) == ("a" * 32, first, "data/raw/log.inter")
        assert resolve("--repo", where)["md5"] == "b" * 32  # default: HEAD
        assert resolve("--rev", second[:8], "--repo", where)["commit"] == second
    # A source path replaces the version: its own md5.
    log_file = tmp_path / "mine.inter"
    log_file.write_text("user_id:token\titem_id:token\n1\t2\n")
    found = resolve("--source", str(log_file), "--repo", str(repo))
    assert (found["md5"], found["commit"]) == (hashlib.md5(log_file.read_bytes()).hexdigest(), "")

    capsys.readouterr()
    for args, said in (
        (["--rev", "no-such-branch"], "'no-such-branch': not a revision of"),
        (["--rev", "HEAD~2"], "has no dvc.lock"),
    ):
        assert main(["data", "resolve", "--repo", str(repo), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err


def _raw_md5_at(repo: Path, commit: str) -> str:
    lock = yaml.safe_load(_git(repo, "show", f"{commit}:dvc.lock"))
    return lock["stages"]["raw"]["outs"][0]["md5"]


def _newest_run(root: Path) -> Path:
    runs = sorted(root.glob("diffurec-train-evaluate-promote-*"), key=lambda path: path.stat().st_mtime)
    assert runs, f"no kfp run under {root}"
    return runs[-1]


def _local_run(clone: Path, env: dict, *extra: str) -> Path:
    command = [
        DIFFUREC,
        "pipeline",
        "local",
        "--no-monitoring",
        "--root",
        "kfp",
        "--set",
        "source=",
        "--set",
        "train.epochs=1",
        "--set",
        "train.max_minutes=0.05",
        "--set",
        "train.patience=1",
        "--set",
        f"registry_name={NAME}",
        "--set",
        "allow_unreachable_prometheus=true",
        *extra,
    ]
    result = run(command, cwd=clone, env=env, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return _newest_run(clone / "kfp")


def _seen_md5s(run_dir: Path) -> dict[str, str]:
    """The raw log's md5 as each step of a local run saw it."""
    resolved = json.loads((run_dir / "resolve-data" / "executor_output.json").read_text())
    fetched = json.loads((run_dir / "fetch-raw" / "executor_output.json").read_text())
    raw_files = list((run_dir / "fetch-raw" / "raw").iterdir())
    summary = json.loads((run_dir / "train" / "model" / "train_summary.json").read_text())
    return {
        "resolve_data output": resolved["parameterValues"]["md5"],
        "fetched artifact metadata": fetched["artifacts"]["raw"]["artifacts"][0]["metadata"]["md5"],
        "fetched bytes": hashlib.md5(raw_files[0].read_bytes()).hexdigest(),
        "model lineage": summary["lineage"]["raw_data_md5"],
    }


@pytest.mark.slow
def test_runs_train_on_the_pushed_version_named_by_git(
    tmp_path, monkeypatch, s3_endpoint, shared_data, repo_root
):
    """Author: `diffurec data add` pushes a real ML-100K slice to the S3 remote and commits the
    version. Pipeline: a clean clone (no DVC cache, no data) runs kfp's local runner by version,
    reading dvc.lock from the author's repository as a URL and the bytes from S3 (the cluster's
    settings). Then rows are appended, added and committed: the next run sees the new md5."""
    author = clone_repo(repo_root, tmp_path / "author")
    env = {**tool_env(f"sqlite:///{tmp_path}/mlflow.db"), **CREDENTIALS}
    env.pop("DIFFUREC_GIT_COMMIT", None)  # the default data version is then HEAD
    env.pop("DIFFUREC_PROMETHEUS", None)
    for args in (
        ["remote", "modify", "--local", "minio", "url", REMOTE_URL],
        ["remote", "modify", "--local", "minio", "endpointurl", s3_endpoint],
        ["remote", "default", "--local", "minio"],
    ):
        subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=author, env=env, check=True)
    params_before = (author / "params.yaml").read_text().splitlines()

    source = shared_data / "ml-100k" / "ml-100k.inter"
    first_log = write_slice(source, tmp_path / "v1" / "ml-100k.inter", users=30)
    added = run([DIFFUREC, "data", "add", str(first_log)], cwd=author, env=env)
    assert added.returncode == 0, added.stderr[-3000:]
    # Only data.source and data.raw changed in params.yaml; its comments are kept.
    params_after = (author / "params.yaml").read_text().splitlines()
    changed = [(old, new) for old, new in zip(params_before, params_after, strict=True) if old != new]
    assert [new.split("#")[0].split() for _, new in changed] == [
        ["source:", "data/sources/ml-100k.inter"]
    ] and "raw: data/raw/ml-100k.inter" in "\n".join(params_after)
    _git(author, "add", "-A")
    _git(author, "commit", "-q", "-m", "data: version 1")
    first_commit = _git(author, "rev-parse", "HEAD")
    first_md5 = _raw_md5_at(author, first_commit)
    assert first_md5 == hashlib.md5(first_log.read_bytes()).hexdigest()

    pipeline = tmp_path / "pipeline"
    subprocess.run(["git", "clone", "-q", str(author), str(pipeline)], check=True)
    assert not (pipeline / "data" / "sources" / "ml-100k.inter").exists()
    env.update(
        {
            "DIFFUREC_GIT_REPO": f"file://{author}",
            "DIFFUREC_DVC_REMOTE_URL": REMOTE_URL,
            "DIFFUREC_S3_ENDPOINT_URL": s3_endpoint,
        }
    )
    first_run = _local_run(pipeline, env, "--set", f"data_version={first_commit}")
    seen = _seen_md5s(first_run)
    assert seen == dict.fromkeys(seen, first_md5), seen
    tags = {str(v.version): v.tags for v in registered_versions(env["MLFLOW_TRACKING_URI"], NAME)}
    assert tags["1"]["raw_data_md5"] == first_md5
    assert tags["1"].get("data_revision") == first_commit

    # `diffurec pipeline run` (dvc repro) in the clean clone pulls the DVC-tracked data.source
    # first, instead of falling back to the official download.
    from pipelines.runners import pull_missing_source

    for args in (
        ["remote", "modify", "--local", "minio", "url", REMOTE_URL],
        ["remote", "modify", "--local", "minio", "endpointurl", s3_endpoint],
        ["remote", "default", "--local", "minio"],
    ):
        subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=pipeline, env=env, check=True)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    pull_missing_source(pipeline, yaml.safe_load((pipeline / "params.yaml").read_text()))
    assert (pipeline / "data" / "sources" / "ml-100k.inter").read_bytes() == first_log.read_bytes()

    # Version 2: ten more users' rows appended to the same log, added and committed.
    second_log = tmp_path / "v2" / "ml-100k.inter"
    second_log.parent.mkdir()
    first_users = {line.split("\t", 1)[0] for line in first_log.read_text().splitlines()[1:]}
    more = write_slice(source, tmp_path / "more.inter", users=40).read_text().splitlines(keepends=True)
    appended = [line for line in more[1:] if line.split("\t", 1)[0] not in first_users]
    assert appended
    second_log.write_text(first_log.read_text() + "".join(appended))
    added = run([DIFFUREC, "data", "add", str(second_log)], cwd=author, env=env)
    assert added.returncode == 0, added.stderr[-3000:]
    _git(author, "add", "-A")
    _git(author, "commit", "-q", "-m", "data: version 2")
    second_commit = _git(author, "rev-parse", "HEAD")
    second_md5 = _raw_md5_at(author, second_commit)
    assert second_md5 == hashlib.md5(second_log.read_bytes()).hexdigest() != first_md5

    # The default data version: the commit the pipeline runs from (here HEAD: the same commit).
    subprocess.run(["git", "pull", "-q"], cwd=pipeline, check=True)
    second_run = _local_run(pipeline, env)
    seen = _seen_md5s(second_run)
    assert seen == dict.fromkeys(seen, second_md5), seen
    tags = {str(v.version): v.tags for v in registered_versions(env["MLFLOW_TRACKING_URI"], NAME)}
    assert tags["2"]["raw_data_md5"] == second_md5
    assert tags["2"].get("data_revision") == second_commit
