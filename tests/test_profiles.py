"""Profiles of parameters (params.yaml `profiles:`): the committed spec trains with the cluster
profile, `pipeline local` with the laptop one, the run's lineage and the registered version
name the profile, and the train step passes `workers` to `diffurec train-job`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from diffurec.cli import main
from diffurec.errors import DiffuRecError
from diffurec.lineage import version_tags
from diffurec.train_settings import TrainSettings


@pytest.fixture(scope="module")
def params(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def _spec_defaults(spec_file: Path) -> tuple[dict, dict]:
    spec = next(yaml.safe_load_all(spec_file.read_text()))
    inputs = {
        name: value.get("defaultValue")
        for name, value in spec["root"]["inputDefinitions"]["parameters"].items()
    }
    return inputs, spec["root"]["dag"]["tasks"]


def test_the_cluster_profile_trains_like_the_paper_to_early_stopping(params):
    cluster = params["profiles"]["cluster"]
    settings = TrainSettings.from_mapping({**params["train"], **cluster["train"]})
    assert settings.preset == "paper" and settings.max_minutes is None
    assert (settings.batch_size, settings.lr, cluster["data"]["max_len"]) == (512, 0.001, 50)
    assert settings.epochs >= 200 and settings.patience >= 1
    assert params["profiles"]["laptop"] == {}  # laptop: params.yaml's sections as they are
    assert params["train"]["max_minutes"] == 3.0


def test_compile_defaults_to_the_cluster_profile_and_laptop_on_request(tmp_path, params, capsys):
    from pipelines.diffurec_pipeline import COMPILED

    laptop_file, cluster_file = tmp_path / "laptop.yaml", tmp_path / "cluster.yaml"
    assert main(["pipeline", "compile", "--out", str(cluster_file)]) == 0
    assert main(["pipeline", "compile", "--profile", "laptop", "--out", str(laptop_file)]) == 0
    cluster, tasks = _spec_defaults(cluster_file)
    laptop, _ = _spec_defaults(laptop_file)
    assert cluster_file.read_text() == COMPILED.read_text()  # the committed spec is the cluster's
    assert cluster["train"]["preset"] == "paper" and "max_minutes" not in cluster["train"]
    assert cluster["max_len"] == 50
    assert laptop["train"] == params["train"] and laptop["max_len"] == params["data"]["max_len"]
    assert cluster["workers"] == laptop["workers"] == 1
    train_inputs = tasks["train"]["inputs"]["parameters"]
    assert train_inputs["profile"] == {"runtimeValue": {"constant": "cluster"}}
    assert train_inputs["workers"] == {"componentInputParameter": "workers"}
    assert "laptop profile" in laptop_file.read_text().splitlines()[2]

    assert main(["pipeline", "compile", "--profile", "gpu", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "diffurec pipeline: error: parameters: no profile 'gpu' under profiles: (known: cluster, laptop)"
    ]
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(
    "profile, message",
    [
        ({"train": {"epochs": 0}}, "profiles.cluster.train: epochs must be at least 1"),
        ({"gate": {"min": {}}}, "profiles.cluster.gate: a profile overrides keys of data, train"),
        ({"data": {"maxlen": 50}}, "profiles.cluster.data.maxlen: not a key of the data section"),
        ({"data": {"max_len": 0}}, "profiles.cluster.data.max_len must be in [1, 4096]"),
    ],
)
def test_a_bad_profile_is_one_line(params, profile, message):
    from pipelines.diffurec_pipeline import profile_params

    with pytest.raises(DiffuRecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        profile_params({**params, "profiles": {"cluster": profile}}, "cluster")


def test_local_runs_use_the_laptop_profile_unless_told(repo_root, params):
    from pipelines.runners import pipeline_arguments

    laptop, _ = pipeline_arguments(repo_root, None, [], local=True)
    cluster, _ = pipeline_arguments(repo_root, None, ["train.epochs=7"], local=True, profile="cluster")
    assert laptop["train"] == params["train"] and laptop["max_len"] == params["data"]["max_len"]
    assert cluster["train"]["preset"] == "paper" and cluster["train"]["epochs"] == 7
    assert cluster["max_len"] == 50


def _run_train_component(tmp_path: Path, monkeypatch, **inputs) -> tuple[list[str], dict]:
    from components.train import train as train_component

    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "train_summary.json").write_text(json.dumps({"model": "diffurec", "preset": "paper"}))
        return 0

    monkeypatch.setattr("diffurec.cli.main", fake_main)
    tmp_path.mkdir()
    raw, splits = tmp_path / "raw", tmp_path / "splits"
    raw.mkdir()
    (raw / "r.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    splits.mkdir()
    (splits / "stats.json").write_text("{}")
    train_component.python_func(
        raw=SimpleNamespace(path=str(raw), metadata={"file": "r.inter"}),
        splits=SimpleNamespace(path=str(splits), metadata={}),
        data_params={"dataset": "x", "source": "", "max_len": 50},
        model=SimpleNamespace(path=str(tmp_path / "model"), metadata={}),
        curves=SimpleNamespace(path=str(tmp_path / "curves.html"), metadata={}),
        **inputs,
    )
    (argv,) = seen
    return argv, json.loads((tmp_path / "model.lineage.json").read_text())


def test_the_train_step_records_its_profile_and_hands_workers_to_a_pytorchjob(tmp_path, monkeypatch):
    argv, lineage = _run_train_component(
        tmp_path / "one", monkeypatch, settings={"preset": "paper"}, profile="cluster"
    )
    assert argv[0] == "train" and "--workers" not in argv
    assert lineage["params"]["profile"] == "cluster"
    assert version_tags(lineage)["profile"] == "cluster"
    assert version_tags({"params": {"train": {}}})["profile"] == "unknown"

    argv, _ = _run_train_component(
        tmp_path / "gpu", monkeypatch, settings={"preset": "paper"}, profile="cluster", workers=4
    )
    assert argv[0] == "train-job"
    assert argv[argv.index("--workers") + 1] == "4" and argv[argv.index("--gpus-per-worker") + 1] == "1"
    argv, _ = _run_train_component(tmp_path / "cpu", monkeypatch, settings={"device": "cpu"}, workers=2)
    assert argv[argv.index("--gpus-per-worker") + 1] == "0"
