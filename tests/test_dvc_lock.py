"""The committed dvc.lock matches the committed code, params and commands, with DVC as the judge.

A clean copy of HEAD (no pipeline outputs: they are git-ignored) is asked `dvc status --json`.
Outputs and data deps there are missing, so only what the commit itself holds is judged: a
dep that git does not ignore (code, params.yaml) whose md5 differs from the lock's, a changed
params value, or a stage command that differs from the lock's means the lock is stale.
Refresh it with `dvc repro` (or `make run`) and commit dvc.lock with the change.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline_clone import VENV_BIN, set_params

DVC = str(VENV_BIN / "dvc")
# Per-stage statuses of `dvc status` that say nothing about the committed files: the raw stage
# re-checks its source on every run.
IGNORED_STATUSES = {"always changed"}
# Entry kinds that are about outputs, which a clean copy of the commit never has.
OUTPUT_KINDS = {"changed outs"}


def head_copy(repo: Path, dest: Path) -> Path:
    """The files of the commit HEAD (not the working tree) in a fresh git repository."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD"], cwd=repo, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    commit(dest, "HEAD copy")
    return dest


def commit(repo: Path, message: str) -> None:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    if not (repo / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", message], cwd=repo, check=True)


def git_ignored(repo: Path, paths: list[str]) -> set[str]:
    if not paths:
        return set()
    checked = subprocess.run(
        ["git", "check-ignore", "--stdin"],
        cwd=repo,
        text=True,
        input="\n".join(paths) + "\n",
        capture_output=True,
    )
    assert checked.returncode in (0, 1), checked.stderr  # 1: none of them is ignored
    return set(checked.stdout.split())


def stale_lock_entries(repo: Path) -> list[str]:
    """What `dvc status` finds out of date in dvc.lock for the files the commit holds.

    One line per finding: "stage: path: state", "stage: params.yaml: key: state" or
    "stage: changed command". Deps git ignores (pipeline outputs, DVC-tracked data) are
    skipped: a clean copy lacks them by design."""
    status = subprocess.run([DVC, "status", "--json"], cwd=repo, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr[-2000:]
    stages = yaml.safe_load(status.stdout or "{}")
    stale = []
    for stage, entries in stages.items():
        for entry in entries:
            if isinstance(entry, str):
                if entry not in IGNORED_STATUSES:
                    stale.append(f"{stage}: {entry}")
                continue
            for kind, changes in entry.items():
                if kind in OUTPUT_KINDS:
                    continue
                ignored = git_ignored(
                    repo, [path for path, state in changes.items() if not isinstance(state, dict)]
                )
                for path, state in changes.items():
                    if isinstance(state, dict):  # a params file: {key: state}
                        stale.extend(f"{stage}: {path}: {key}: {how}" for key, how in state.items())
                    elif path not in ignored:
                        stale.append(f"{stage}: {path}: {state}")
    return stale


@pytest.fixture()
def copy_of_head(tmp_path: Path, repo_root: Path) -> Path:
    return head_copy(repo_root, tmp_path / "head")


def test_committed_lock_matches_committed_files(copy_of_head: Path) -> None:
    stale = stale_lock_entries(copy_of_head)
    assert stale == [], (
        "dvc.lock is stale for the committed files (refresh it with `dvc repro` "
        "and commit it):\n" + "\n".join(stale)
    )


def test_committed_lock_has_every_stage(copy_of_head: Path) -> None:
    # A stage missing from the lock has no recorded md5s, and `dvc status` then reports only
    # its missing outputs: check the stage names themselves.
    defined = set(yaml.safe_load((copy_of_head / "dvc.yaml").read_text())["stages"])
    locked = set(yaml.safe_load((copy_of_head / "dvc.lock").read_text())["stages"])
    assert defined == locked


def test_stale_lock_entries_reports_changed_code_params_and_command(copy_of_head: Path) -> None:
    """The check can fail: an edit to code a stage runs, or to its params, is reported; an edit
    to the gate's code is not the training's business."""
    repo = copy_of_head
    for name in ("diffurec/gate.py", "diffurec/train.py"):
        with open(repo / name, "a") as handle:
            handle.write("# an edit\n")
    train_seed = yaml.safe_load((repo / "params.yaml").read_text())["train"]["seed"]
    set_params(repo, **{"train.seed": train_seed + 1, "evaluate.split": "valid"})
    commit(repo, "edits")
    stale = stale_lock_entries(repo)

    def reported(stage: str, path: str) -> bool:
        """Whether a changed dep of `stage` is `path` or a folder holding it."""
        return any(
            line.startswith(f"{stage}: ") and (path + "/").startswith(line.split(": ")[1].rstrip("/") + "/")
            for line in stale
        )

    assert reported("gate", "diffurec/gate.py"), stale
    assert reported("train", "diffurec/train.py"), stale
    assert not reported("train", "diffurec/gate.py"), stale
    assert "train: params.yaml: train: modified" in stale
    assert "evaluate: params.yaml: evaluate: modified" in stale
    # ${evaluate.split} is part of the evaluate command
    assert "evaluate: changed command" in stale
