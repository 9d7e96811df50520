"""Lineage: the md5s equal DVC's own, the git commit and params are recorded, the CLI writes it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from diffurec import lineage
from diffurec.cli import main
from diffurec.errors import DiffuRecError

DVC = [sys.executable, "-m", "dvc"]


def _git_repo(path):
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run(DVC + ["init", "-q"], cwd=path, check=True)
    return path


def test_md5s_equal_dvc_hashes(tmp_path, shared_data):
    """The raw file's and a folder's md5 are exactly what `dvc add` records."""
    repo = _git_repo(tmp_path / "repo")
    raw = repo / "ml-100k.inter"
    raw.write_bytes((shared_data / "ml-100k" / "ml-100k.inter").read_bytes())
    folder = repo / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second\n")
    (folder / "a.txt").write_text("first\r\n")  # bytes as they are: DVC 3 does no dos2unix
    (folder / "sub" / "c.bin").write_bytes(bytes(range(256)))
    subprocess.run(DVC + ["add", "-q", "ml-100k.inter", "folder"], cwd=repo, check=True)
    recorded = {
        name: yaml.safe_load((repo / f"{name}.dvc").read_text())["outs"][0]["md5"]
        for name in ("ml-100k.inter", "folder")
    }
    assert lineage.data_md5(raw) == recorded["ml-100k.inter"]
    assert lineage.data_md5(folder) == recorded["folder"]
    assert recorded["folder"].endswith(".dir")
    (folder / "sub" / "c.bin").write_bytes(b"changed")
    assert lineage.dir_md5(folder) != recorded["folder"]


def test_build_lineage_records_commit_params_preset(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "tracked.txt").write_text("one\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "add", "tracked.txt"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "one"], cwd=repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    raw = repo / "raw.txt"
    raw.write_text("u\ti\n")
    monkeypatch.delenv(lineage.GIT_COMMIT_ENV, raising=False)

    record = lineage.build_lineage(raw=raw, params={"train": {"epochs": 3}}, preset="fast", repo=repo)
    assert set(lineage.LINEAGE_KEYS) <= set(record)
    assert record["git_commit"] == head and record["git_dirty"] is False
    assert record["raw_data_md5"] == lineage.file_md5(raw) and record["splits_md5"] is None
    assert record["params"] == {"train": {"epochs": 3}} and record["preset"] == "fast"

    (repo / "tracked.txt").write_text("two\n")  # an uncommitted change to code: dirty
    assert lineage.build_lineage(repo=repo)["git_dirty"] is True
    # In a container there is no .git: the image passes the commit in the environment.
    monkeypatch.setenv(lineage.GIT_COMMIT_ENV, "abc123")
    assert lineage.build_lineage(repo=tmp_path)["git_commit"] == "abc123"
    monkeypatch.delenv(lineage.GIT_COMMIT_ENV)
    assert lineage.build_lineage(repo=tmp_path)["git_commit"] is None


def test_cli_lineage_writes_every_key(tmp_path, repo_root, shared_data):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "format.json").write_text("{}\n")
    out = tmp_path / "out" / "lineage.json"
    status = main(
        [
            "pipeline",
            "lineage",
            "--raw",
            str(shared_data / "ml-100k" / "ml-100k.inter"),
            "--splits",
            str(splits),
            "--params",
            str(repo_root / "params.yaml"),
            "--sections",
            "data",
            "train",
            "--preset",
            "fast",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    record = lineage.read_lineage(out)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert record["params"] == {"data": params["data"], "train": params["train"]}
    assert record["splits_md5"] == lineage.dir_md5(splits)
    assert record["raw_data_md5"] == lineage.file_md5(shared_data / "ml-100k" / "ml-100k.inter")
    # Keys sorted, so the same run writes the same bytes (DVC hashes runs/lineage.json).
    assert list(json.loads(out.read_text())) == sorted(record)


def test_write_lineage_sorts_keys_at_every_level(tmp_path):
    record = {"splits_md5": None, "raw_data_md5": "ab", "params": {"train": {"lr": 0.1, "epochs": 3}}}
    path = lineage.write_lineage(tmp_path / "lineage.json", record)
    assert path.read_text() == (
        '{\n  "params": {\n    "train": {\n      "epochs": 3,\n      "lr": 0.1\n'
        '    }\n  },\n  "raw_data_md5": "ab",\n  "splits_md5": null\n}\n'
    )


def test_cli_lineage_bad_input_is_one_line(tmp_path, capsys):
    status = main(
        [
            "pipeline",
            "lineage",
            "--raw",
            str(tmp_path / "missing.inter"),
            "--out",
            str(tmp_path / "lineage.json"),
        ]
    )
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.inter" in err[0] and "not found" in err[0]
    assert not (tmp_path / "lineage.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"raw_data_md5": "x"}))
    with pytest.raises(DiffuRecError, match="bad.json: lineage has no 'splits_md5'"):
        lineage.read_lineage(tmp_path / "bad.json")
