"""`dvc repro` end to end on a real ML-100K slice in a temporary clone of the repository.

One clone for the module, used in order: the whole pipeline (`diffurec pipeline run`), then a
parameter change through `dvc exp run -S` re-runs only the stages that depend on it, then a
raw log that fails validation stops the pipeline before training and leaves the registry as
it was.
"""

from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import yaml

from diffurec.lineage import data_md5, file_md5

from pipeline_clone import (
    VENV_BIN,
    champion_version,
    clone_repo,
    registered_versions,
    run,
    set_params,
    tool_env,
    write_slice,
)

pytestmark = pytest.mark.slow

SLICE_USERS = 25
NAME = "slice-dvc"
STAGES = (
    "raw",
    "validate_raw",
    "preprocess",
    "validate_splits",
    "train",
    "evaluate",
    "popularity",
    "register",
    "gate",
    "promote",
)
DIFFUREC = str(VENV_BIN / "diffurec")
DVC = str(VENV_BIN / "dvc")


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))


def lock_out_md5(repo, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(out["md5"] for out in lock["stages"][stage]["outs"] if out["path"] == path)


@pytest.fixture(scope="module")
def clone(tmp_path_factory, repo_root, shared_data):
    root = tmp_path_factory.mktemp("dvc-pipeline")
    repo = clone_repo(repo_root, root / "repo")
    source = write_slice(shared_data / "ml-100k" / "ml-100k.inter", root / "slice.inter", users=SLICE_USERS)
    set_params(
        repo,
        **{
            "data.source": str(source),
            "train.epochs": 1,
            "train.max_minutes": 1.0,
            "train.patience": 1,
            "registry.name": NAME,
            # floors every trained model clears: this run must be promoted
            "gate": {
                "min": {"HR@10": 0.0},
                "min_margin_over_popularity": {"NDCG@10": -100.0},
                "max_drop_vs_champion": {"NDCG@10": {"absolute": 100.0}},
            },
        },
    )
    uri = f"sqlite:///{root}/mlflow.db"
    env = tool_env(uri)
    first = run([DIFFUREC, "pipeline", "run", "--no-push"], cwd=repo, env=env)
    return SimpleNamespace(repo=repo, root=root, source=source, uri=uri, env=env, first=first)


def test_repro_runs_every_stage_and_records_lineage(clone):
    repo, first = clone.repo, clone.first
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    output = first.stdout + first.stderr
    assert ran(output) == set(STAGES)
    # The end of `pipeline run` says where the results are.
    for path in ("runs/metrics.json", "runs/model", "runs/decision.json"):
        assert path in first.stdout

    # The raw data is DVC-tracked: dvc.lock holds its md5, and the lineage points at it.
    raw_md5 = lock_out_md5(repo, "raw", "data/raw/ml-100k.inter")
    splits_md5 = lock_out_md5(repo, "preprocess", "runs/splits")
    assert raw_md5 == file_md5(clone.source)
    assert splits_md5 == data_md5(repo / "runs" / "splits")
    summary = json.loads((repo / "runs" / "model" / "train_summary.json").read_text())
    lineage = summary["lineage"]
    assert lineage["raw_data_md5"] == raw_md5 and lineage["splits_md5"] == splits_md5
    assert lineage["preset"] == "fast-lite-pos" and lineage["params"]["train"]["epochs"] == 1
    head = (repo / ".git" / "HEAD").exists()
    assert head and re.fullmatch(r"[0-9a-f]{40}", lineage["git_commit"])

    metrics = json.loads((repo / "runs" / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"}
    assert metrics["users"] == SLICE_USERS
    assert metrics["lineage"]["splits_md5"] == splits_md5  # every evaluation carries lineage
    decision = json.loads((repo / "runs" / "decision.json").read_text())
    assert decision["passed"] is True and decision["version"] == "1"
    assert json.loads((repo / "runs" / "promotion.json").read_text())["promoted"] is True
    assert champion_version(clone.uri, NAME) == "1"

    shown = run([DVC, "metrics", "show", "--json"], cwd=repo, env=clone.env)
    assert shown.returncode == 0 and "runs/metrics.json" in shown.stdout


def test_params_change_reruns_only_dependent_stages(clone):
    repo = clone.repo
    before = (repo / "runs" / "splits" / "format.json").stat().st_mtime_ns
    result = run([DVC, "exp", "run", "-S", "train.seed=7"], cwd=repo, env=clone.env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    dependent = {"train", "evaluate", "register", "gate", "promote"}
    # raw re-checks its source every time (always_changed); its md5 did not change, so the
    # data stages and the baseline are skipped.
    assert ran(output) == dependent | {"raw"}
    assert skipped(output) >= {"validate_raw", "preprocess", "validate_splits", "popularity"}
    assert (repo / "runs" / "splits" / "format.json").stat().st_mtime_ns == before
    summary = json.loads((repo / "runs" / "model" / "train_summary.json").read_text())
    assert summary["lineage"]["params"]["train"]["seed"] == 7
    assert len(registered_versions(clone.uri, NAME)) == 2


def test_failing_validation_stops_before_training_and_leaves_registry(clone, shared_data):
    repo = clone.repo
    model_mtime = (repo / "runs" / "model" / "train_summary.json").stat().st_mtime_ns
    splits_md5 = data_md5(repo / "runs" / "splits")
    versions = len(registered_versions(clone.uri, NAME))
    champion = champion_version(clone.uri, NAME)
    # Same path, new content: one row's timestamp is 1970, outside the suite's range.
    write_slice(
        shared_data / "ml-100k" / "ml-100k.inter", clone.source, users=SLICE_USERS, bad_timestamp_row=5
    )

    result = run([DIFFUREC, "pipeline", "run", "--no-push"], cwd=repo, env=clone.env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "failed to reproduce 'validate_raw'" in output
    assert "timestamp" in output  # the validation's own one-line reason
    assert ran(output) == {"raw", "validate_raw"}
    assert "Traceback" not in output
    assert (repo / "runs" / "model" / "train_summary.json").stat().st_mtime_ns == model_mtime
    assert data_md5(repo / "runs" / "splits") == splits_md5
    assert len(registered_versions(clone.uri, NAME)) == versions
    assert champion_version(clone.uri, NAME) == champion


def test_default_remote_round_trip(clone):
    """The raw data goes to the default local remote (.dvc/config: ../dvc-remote) and back."""
    repo = clone.repo
    raw = repo / "data" / "raw" / "ml-100k.inter"
    expected = lock_out_md5(repo, "raw", "data/raw/ml-100k.inter")
    pushed = run([DVC, "push", "raw"], cwd=repo, env=clone.env)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    remote = repo.parent / "dvc-remote"
    assert any(path.is_file() for path in remote.rglob("*"))
    raw.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")  # only the remote has it now
    pulled = run([DVC, "pull", "raw"], cwd=repo, env=clone.env)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert file_md5(raw) == expected
