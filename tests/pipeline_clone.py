"""Helpers for the pipeline tests: a temporary clone of the repository and real data slices.

A clone is a copy of the files git knows (committed or not yet, ignored ones left out) in a
fresh git repository, so `dvc repro` and `diffurec pipeline ...` run there without touching
the real checkout. The installed `diffurec` package is the checkout's (editable install).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent


def clone_repo(repo: Path, dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = repo / name
        if source.is_file():  # listed but deleted in the working tree: skip
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "clone"], cwd=dest, check=True)
    return dest


def write_slice(source: Path, out: Path, users: int, bad_timestamp_row: int | None = None) -> Path:
    """The rows of the first `users` distinct users of a RecBole .inter file (header kept).

    bad_timestamp_row: set that data row's timestamp (1-based, after the header) to 1 (1970),
    which the raw-data suite rejects."""
    keep, lines = set(), []
    with open(source) as handle:
        header = next(handle)
        for line in handle:
            user = line.split("\t", 1)[0]
            if user not in keep and len(keep) < users:
                keep.add(user)
            if user in keep:
                lines.append(line)
    if bad_timestamp_row is not None:
        fields = lines[bad_timestamp_row - 1].rstrip("\n").split("\t")
        fields[-1] = "1"
        lines[bad_timestamp_row - 1] = "\t".join(fields) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + "".join(lines))
    return out


def set_params(repo: Path, **changes) -> dict:
    """Change params.yaml in `repo`: keys like "train.epochs" (dots nest)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            params[section][name] = value
        else:
            params[section] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def tool_env(tracking_uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DIFFUREC_PUSHGATEWAY"}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "MLFLOW_TRACKING_URI": tracking_uri,
            "GX_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "1",
            "PYTHONHASHSEED": "0",
        }
    )
    return env


def run(command: list[str], cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on timeout the whole group (dvc and the stage
    it runs) is killed, so nothing outlives the test."""
    import signal

    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def registered_versions(tracking_uri: str, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.search_model_versions(f"name = '{name}'")


def champion_version(tracking_uri: str, name: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        return str(client.get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None
