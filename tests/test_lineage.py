"""Lineage: the md5s equal DVC's own, the git commit and params are recorded, the CLI writes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffurec import lineage
from diffurec.cli import main
from diffurec.errors import DiffuRecError
from test_promote_cluster import tracking_uri  # noqa: F401 (fixture: a real mlflow server on 127.0.0.1)

DVC = [sys.executable, "-m", "dvc"]
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


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


# ---- the registry's lineage tags and `diffurec lineage` -------------------------------------


@pytest.fixture(scope="module")
def popularity_run(ml100k_splits, tmp_path_factory):
    """A real popularity model on ML-100K with its lineage, trained and evaluated by the CLI."""
    from promotion_models import train_with_cli

    return train_with_cli(ml100k_splits.path, tmp_path_factory.mktemp("lineage") / "candidate")


RUN_IDENTITY = {
    "DIFFUREC_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
    "DIFFUREC_IMAGE_REF": "ghcr.io/example/diffurec:0123456",
    "DIFFUREC_RUN_ID": "5f1c2d3e-kfp-run-uuid",
    "DIFFUREC_RUN_NAME": "retrain 2026-11-29",
    "DIFFUREC_DATA_VERSION": "fedcba9876543210fedcba9876543210fedcba98",
}


@pytest.mark.parametrize("store", ["sqlite", pytest.param("mlflow server", marks=pytest.mark.slow)])
def test_lineage_command_prints_the_chain(
    store, popularity_run, ml100k_splits, tmp_path, monkeypatch, capsys, request
):
    """register -> gate -> promote with the real commands on a sqlite MLflow store and on a real
    `mlflow server` on 127.0.0.1 (test_promote_cluster's), the run's identity in the environment
    as a Kubeflow task has it; `diffurec lineage` reads the chain back, by number and by
    @champion, as text and as JSON."""
    from promotion_models import fresh_tracking_uri

    model_dir, metrics = popularity_run
    uri = fresh_tracking_uri(tmp_path) if store == "sqlite" else request.getfixturevalue("tracking_uri")
    for name, value in RUN_IDENTITY.items():
        monkeypatch.setenv(name, value)
    # params.yaml's gate without its Prometheus checks; the candidate is its own baseline.
    gate_section = {key: value for key, value in yaml.safe_load(PARAMS.read_text())["gate"].items()}
    gate_section.pop("prometheus", None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gate": gate_section}))
    registered, decision_file = tmp_path / "registered.json", tmp_path / "decision.json"
    assert main(["register", "--model", str(model_dir), "--metrics", str(metrics), "--name", "rec",
                 "--tracking-uri", uri, "--out", str(registered)]) == 0  # fmt: skip
    version = json.loads(registered.read_text())["version"]
    assert main(["gate", "--candidate", str(metrics), "--baseline", str(metrics),
                 "--params", str(tmp_path / "params.yaml"),
                 "--name", "rec", "--version", version, "--tracking-uri", uri,
                 "--out", str(decision_file)]) == 0  # fmt: skip
    decision = json.loads(decision_file.read_text())
    assert decision["passed"] is True
    assert main(["promote", "--name", "rec", "--decision", str(decision_file), "--tracking-uri", uri]) == 0
    capsys.readouterr()

    assert main(["lineage", "--name", "rec", "--version", "@champion", "--tracking-uri", uri, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    recorded = json.loads((model_dir / "train_summary.json").read_text())["lineage"]
    assert chain["version"] == version and chain["aliases"] == ["champion"]
    # The commit of the code that trained the model (the fixture's, recorded in its lineage).
    assert chain["git_commit"] == recorded["git_commit"] and len(recorded["git_commit"]) == 40
    assert chain["image"] == RUN_IDENTITY["DIFFUREC_IMAGE_REF"]
    assert chain["kfp_run_id"] == RUN_IDENTITY["DIFFUREC_RUN_ID"]
    assert chain["kfp_run_name"] == RUN_IDENTITY["DIFFUREC_RUN_NAME"]
    assert chain["data_revision"] == RUN_IDENTITY["DIFFUREC_DATA_VERSION"]
    # The data's md5s are DVC's, computed here from the splits folder itself.
    assert chain["splits_md5"] == lineage.dir_md5(ml100k_splits.path) == recorded["splits_md5"]
    assert chain["raw_data_md5"] == str(recorded["raw_data_md5"] or "unknown")
    assert chain["params"] == recorded["params"]
    assert chain["registered"]["version"] == version and chain["registered"]["mlflow_run_id"]
    assert chain["gate"] == {
        "decision_id": decision["decision_id"],
        "passed": True,
        "reason": decision["reason"],
        "decided_at": decision["decided_at"],
    }
    assert chain["promotion"]["decision_id"] == decision["decision_id"]
    assert chain["promotion"]["promoted_from"] == "none" and chain["promotion"]["override"] is False

    assert main(["lineage", "--name", "rec", "--version", version, "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    for expected in (
        f"rec version {version} (@champion)",
        f"git commit     {recorded['git_commit']}",
        f"image          {RUN_IDENTITY['DIFFUREC_IMAGE_REF']}",
        f"splits md5     {chain['splits_md5']}",
        f"KFP run        {RUN_IDENTITY['DIFFUREC_RUN_ID']} ({RUN_IDENTITY['DIFFUREC_RUN_NAME']})",
        f"gate           passed by decision {decision['decision_id']}",
        f"by decision {decision['decision_id']}",
    ):
        assert expected in text, (expected, text)


def test_lineage_command_bad_version_is_one_line(popularity_run, tmp_path, capsys):
    """No champion yet, a version that does not exist, a malformed version: one line each, exit 2."""
    from promotion_models import fresh_tracking_uri

    model_dir, metrics = popularity_run
    uri = fresh_tracking_uri(tmp_path)
    assert main(["register", "--model", str(model_dir), "--metrics", str(metrics), "--name", "rec",
                 "--tracking-uri", uri]) == 0  # fmt: skip
    capsys.readouterr()
    for version, expected in (("@champion", "has no alias 'champion'"), ("7", "rec"), ("v1", "'v1'")):
        assert main(["lineage", "--name", "rec", "--version", version, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (version, err)
    # An old version without the new tags: the chain says unknown, not a crash.
    assert main(["lineage", "--name", "rec", "--version", "1", "--tracking-uri", uri, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["gate"] is None and chain["promotion"] is None


def test_fill_run_identity_keeps_what_is_set(monkeypatch):
    """The pod's (or local runner's) run id wins over the placeholder value; unresolved
    placeholders and empty values set nothing; unknown names are refused."""
    monkeypatch.setenv("DIFFUREC_RUN_ID", "from-the-pod")
    # setenv first so that monkeypatch restores (removes) what fill_run_identity sets below:
    # delenv of an absent variable records nothing, and the value would leak into later tests.
    for name in ("DIFFUREC_RUN_NAME", "DIFFUREC_DATASET"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    identity = lineage.fill_run_identity(
        DIFFUREC_RUN_ID="from-the-placeholder",
        DIFFUREC_RUN_NAME="{{$.pipeline_job_name}}",
        DIFFUREC_DATASET="ml-100k",
    )
    assert identity["DIFFUREC_RUN_ID"] == "from-the-pod" and identity["DIFFUREC_DATASET"] == "ml-100k"
    assert "DIFFUREC_RUN_NAME" not in identity
    lineage.fill_run_identity(DIFFUREC_RUN_NAME="run-7")
    assert lineage.os.environ["DIFFUREC_RUN_NAME"] == "run-7"
    with pytest.raises(ValueError, match="DIFFUREC_NOPE"):
        lineage.fill_run_identity(DIFFUREC_NOPE="x")


def test_source_md5_changes_with_the_code(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code\n")
    first = lineage.source_md5(tmp_path)
    (tmp_path / "pkg" / "notes.txt").write_text("changed, still not code\n")
    assert lineage.source_md5(tmp_path) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert lineage.source_md5(tmp_path) != first


def test_lineage_command_pushes_to_its_own_step():
    """A read command must not replace the Prometheus group of `pipeline lineage`, a pipeline step."""
    from diffurec.cli import build_parser

    parser = build_parser()
    read = parser.parse_args(["lineage", "--version", "@champion"])
    write = parser.parse_args(["pipeline", "lineage", "--out", "x"])
    assert read.describe(read)["step"] == "version_lineage" != write.describe(write)["step"]
