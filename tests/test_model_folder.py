"""Model folder round trip: save, load (safetensors, no pickle), same scores; bad folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainer_data import TINY_DIFFUREC, TINY_SASREC

from diffurec.errors import DiffuRecError
from diffurec.model_folder import (
    load_model_folder,
    read_config,
    read_item_map,
    save_model_folder,
    write_manifest,
)
from diffurec.models import build_model

ITEMS, MAX_LEN = 40, 12


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, ITEMS + 1, (6, MAX_LEN), generator=generator)
    inputs[:3, :5] = 0  # some left padding
    return inputs


@pytest.mark.parametrize(
    "name,preset,hyper",
    [
        ("diffurec", "paper", TINY_DIFFUREC),
        ("diffurec", "fast", TINY_DIFFUREC),
        ("sasrec", "dense", TINY_SASREC),
    ],
)
def test_round_trip_gives_the_same_scores(tmp_path, name, preset, hyper):
    torch.manual_seed(3)
    model = build_model(name, ITEMS, MAX_LEN, preset, **hyper).eval()
    with torch.no_grad():  # move away from the initialisation, so loading defaults would show
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    ids = [f"item-{i}" for i in range(1, ITEMS + 1)]
    folder = save_model_folder(
        tmp_path / "model",
        model,
        item_ids=ids,
        curve={
            "train": [{"epoch": 1, "loss": 3.0}],
            "valid": [
                {"epoch": 1, **dict.fromkeys(("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"), 1.0)}
            ],
        },
        summary={"best_epoch": 1},
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "curve.json",
        "curve.png",
        "item_map.tsv",
        "manifest.json",
        "model.safetensors",
        "train_summary.json",
    ]
    config = read_config(folder)
    assert config["format"] == "diffurec-model" and config["version"] == 1
    assert config["model"] == name and config["preset"] == preset and config["num_items"] == ITEMS
    assert all(config[k] == v for k, v in hyper.items())
    assert read_item_map(folder / "item_map.tsv") == ids
    assert json.loads((folder / "train_summary.json").read_text())["lineage"] == {}

    loaded = load_model_folder(folder)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    inputs = _inputs()
    torch.manual_seed(11)
    expected = model.score(inputs)
    torch.manual_seed(11)
    assert torch.equal(loaded.score(inputs), expected)


def test_popularity_round_trip(tmp_path):
    model = build_model("popularity", ITEMS, MAX_LEN)
    model.fit(np.array([1, 2, 2, 5, 5, 5], dtype=np.int32))
    loaded = load_model_folder(
        save_model_folder(tmp_path / "pop", model, item_ids=[str(i) for i in range(ITEMS)])
    )
    assert torch.equal(loaded.score(_inputs()), model.score(_inputs()))
    assert loaded.counts[5] == 3


def test_failed_save_leaves_no_folder(tmp_path):
    model = build_model("popularity", ITEMS, MAX_LEN)
    with pytest.raises(ValueError):
        save_model_folder(tmp_path / "pop", model)  # no item ids
    assert list(tmp_path.iterdir()) == []


def test_bad_folders_give_one_line_errors(tmp_path):
    with pytest.raises(DiffuRecError, match="not a model folder"):
        load_model_folder(tmp_path / "missing")
    model = build_model("diffurec", ITEMS, MAX_LEN, "fast", **TINY_DIFFUREC)
    folder = save_model_folder(tmp_path / "m", model, item_ids=[str(i) for i in range(ITEMS)])
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_items": ITEMS + 1}))
    with pytest.raises(DiffuRecError, match="config.json: sha256 differs from manifest.json"):
        load_model_folder(folder)
    # Sealed again (as if trained so), the loader's own checks speak.
    write_manifest(folder)
    with pytest.raises(DiffuRecError, match="model.safetensors: weights do not match config.json"):
        load_model_folder(folder)
    (folder / "config.json").write_text(json.dumps({**config, "format": "something-else"}))
    with pytest.raises(DiffuRecError, match="config.json: expected diffurec-model version 1"):
        load_model_folder(folder)
    (folder / "config.json").write_text('{\n  "format": oops\n}')
    with pytest.raises(DiffuRecError, match=r"config.json, row 2, column 13: not valid JSON"):
        load_model_folder(folder)
    (folder / "config.json").write_text(json.dumps(config))
    write_manifest(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DiffuRecError, match="model.safetensors: sha256 differs from manifest.json"):
        load_model_folder(folder)
    write_manifest(folder)
    with pytest.raises(DiffuRecError, match="model.safetensors: unreadable"):
        load_model_folder(folder)
