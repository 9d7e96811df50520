"""TrainSettings is the one definition of a training setting: every field is reachable, with the
same value, from the command line, from params.yaml (as DVC passes it) and from the Kubeflow
pipeline (compiled spec -> train component -> command line). Bad values give one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from diffurec.cli import build_parser, main
from diffurec.cli.model_commands import settings_from_args
from diffurec.models import MODEL_NAMES
from diffurec.train_settings import TrainSettings

# A value other than the default for every field. A new field without one here fails
# test_every_field_has_a_test_value: then add it, and the three paths below cover it.
NON_DEFAULT = {
    "model": "sasrec",
    "preset": "dense",
    "hyper": {"dropout": 0.25, "num_blocks": 1},
    "epochs": 7,
    "batch_size": 64,
    "lr": 0.005,
    "weight_decay": 0.01,
    "lr_step": 3,
    "lr_gamma": 0.5,
    "warmup_steps": 40,
    "eval_every": 2,
    "patience": 9,
    "stop_rule": "reference",
    "max_minutes": 1.5,
    "seed": 11,
    "device": "cpu",
    "threads": 1,
    "eval_batch_size": 32,
    "eval_reverse_steps": 4,
    "checkpoint_dir": "ckpt",
    "resume": True,
    "progress": False,
}
EXPECTED = TrainSettings(**NON_DEFAULT)


def _parse_train(argv: list[str]) -> TrainSettings:
    args = build_parser().parse_args(["train", "--splits", "s", "--out", "o", *argv])
    return settings_from_args(args)


def test_every_field_has_a_test_value():
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    assert set(NON_DEFAULT) == fields
    default = TrainSettings()
    same = [name for name in fields if getattr(default, name) == NON_DEFAULT[name]]
    assert not same, f"test values equal the defaults for {same}"


def test_every_field_from_the_command_line():
    argv = [
        "--model",
        "sasrec",
        "--preset",
        "dense",
        "--set",
        "dropout=0.25",
        "--set",
        "num_blocks=1",
        "--epochs",
        "7",
        "--batch-size",
        "64",
        "--lr",
        "0.005",
        "--weight-decay",
        "0.01",
        "--lr-step",
        "3",
        "--lr-gamma",
        "0.5",
        "--warmup-steps",
        "40",
        "--eval-every",
        "2",
        "--patience",
        "9",
        "--stop-rule",
        "reference",
        "--max-minutes",
        "1.5",
        "--seed",
        "11",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--eval-batch-size",
        "32",
        "--eval-reverse-steps",
        "4",
        "--checkpoint-dir",
        "ckpt",
        "--resume",
        "--no-progress",
    ]
    assert _parse_train(argv) == EXPECTED
    assert _parse_train([]) == TrainSettings()


def test_every_field_from_params_yaml_as_dvc_passes_it(tmp_path, repo_root):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"dataset": "x"}, "train": NON_DEFAULT}))
    assert _parse_train(["--params", str(params)]) == EXPECTED
    # Flags given on top of the file win; --set adds to the file's hyperparameters.
    mixed = _parse_train(["--params", str(params), "--epochs", "3", "--set", "dropout=0.5"])
    assert mixed == dataclasses.replace(EXPECTED, epochs=3, hyper={"dropout": 0.5, "num_blocks": 1})
    # The DVC train stage passes params.yaml's `train:` section whole and depends on all of it.
    stage = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["train"]
    command = " ".join(stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]])
    train_command = next(part for part in command.split("diffurec ") if part.startswith("train "))
    assert "--params params.yaml" in train_command
    assert "${train." not in train_command, "dvc.yaml lists train settings one by one again"
    assert "train" in stage["params"]
    # And the committed params.yaml's section is valid settings.
    committed = yaml.safe_load((repo_root / "params.yaml").read_text())["train"]
    assert TrainSettings.from_mapping(committed).model in MODEL_NAMES


def test_every_field_through_the_kubeflow_pipeline(tmp_path, repo_root, monkeypatch):
    from components.train import train as train_component
    from pipelines.diffurec_pipeline import compile_pipeline, load_params

    params = load_params(repo_root / "params.yaml")
    params["train"] = NON_DEFAULT
    spec_file = compile_pipeline(tmp_path / "spec.yaml", params=params, profile="laptop")
    spec = next(yaml.safe_load_all(spec_file.read_text()))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["train"]["parameterType"] == "STRUCT"
    assert inputs["train"]["defaultValue"] == NON_DEFAULT
    train_task = spec["root"]["dag"]["tasks"]["train"]
    wired = train_task["inputs"]["parameters"]["settings"]
    assert wired == {"componentInputParameter": "train"}

    # The component body passes the dict to `diffurec train` unchanged.
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "train_summary.json").write_text(json.dumps({"model": "sasrec", "preset": "dense"}))
        return 0

    monkeypatch.setattr("diffurec.cli.main", fake_main)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "r.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "stats.json").write_text("{}")
    model = SimpleNamespace(path=str(tmp_path / "model"), metadata={})
    curves = SimpleNamespace(path=str(tmp_path / "curves.html"), metadata={})
    train_component.python_func(
        raw=SimpleNamespace(path=str(raw), metadata={"file": "r.inter"}),
        splits=SimpleNamespace(path=str(splits), metadata={}),
        settings=NON_DEFAULT,
        data_params={"dataset": "x", "source": "", "max_len": 20},
        model=model,
        curves=curves,
    )
    (argv,) = seen
    assert argv[0] == "train"
    assert _parse_train(argv[5:]) == EXPECTED
    lineage = json.loads((tmp_path / "model.lineage.json").read_text())
    assert lineage["params"]["train"] == NON_DEFAULT and lineage["preset"] == "dense"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"epochs": "many"}, "epochs: expected int"),
        ({"epochs": 2.5}, "epochs: expected int"),
        ({"epoch": 3}, "unknown setting 'epoch'"),
        ({"lr": -1}, "train: lr must be positive, got -1"),
        ({"model": "gpt"}, "train: model 'gpt'"),
        ({"resume": "yes"}, "resume: expected bool"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, capsys, settings, message):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": settings}))
    status = main(["train", "--splits", str(tmp_path), "--out", str(tmp_path / "m"), "--params", str(params)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "m").exists()


def test_settings_json_must_be_an_object(tmp_path, capsys):
    assert main(["train", "--splits", str(tmp_path), "--out", str(tmp_path / "m"), "--settings", "[1]"]) == 2
    assert "--settings: expected a JSON object" in capsys.readouterr().err


def test_whole_floats_are_ints_as_a_kubeflow_dict_parameter_delivers_them():
    # Kubeflow passes a dict parameter through protobuf's Struct: every number is a double.
    through_struct = {k: float(v) if type(v) is int else v for k, v in NON_DEFAULT.items()}
    assert through_struct["epochs"] == 7.0 and isinstance(through_struct["epochs"], float)
    settings = TrainSettings.from_mapping(through_struct)
    assert settings == EXPECTED and isinstance(settings.epochs, int)
