"""The model registry and the interface every model implements (diffurec/models/__init__.py, base.py).

This module doubles as a model module (`LastItem` and `PRESETS` below) to show that adding a
model is one file and one line in MODELS.
"""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffurec import models
from diffurec.model_folder import load_model_folder, save_model_folder
from diffurec.models import (
    CONFIG_KEYS,
    DEFAULT_PRESETS,
    MODEL_NAMES,
    FittedRecommender,
    ModelEntry,
    SequentialRecommender,
    build_model,
    model_from_config,
    presets,
)
from diffurec.models.layers import preset_config

NUM_ITEMS, MAX_LEN, BATCH = 30, 8, 5


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Histories with left padding of different lengths (the last position is always real)."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, NUM_ITEMS + 1, (BATCH, MAX_LEN), generator=generator)
    for row in range(BATCH):
        inputs[row, : 2 * row] = 0
    targets = torch.randint(1, NUM_ITEMS + 1, (BATCH,), generator=generator)
    return inputs, targets


def test_import_does_not_load_torch() -> None:
    """The command line reads MODEL_NAMES and DEFAULT_PRESETS; `diffurec --help` must stay fast."""
    code = (
        "import sys\n"
        "from diffurec.models import DEFAULT_PRESETS, MODEL_NAMES\n"
        "assert MODEL_NAMES and DEFAULT_PRESETS\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_table_gives_names_defaults_and_presets() -> None:
    assert MODEL_NAMES == ("diffurec", "sasrec", "popularity")
    assert DEFAULT_PRESETS == {"diffurec": "paper", "sasrec": "recbole", "popularity": "default"}
    assert set(presets("diffurec")) == {"paper", "fast", "fast-init", "fast-lite", "fast-lite-pos"}
    assert set(presets("sasrec")) == {"recbole", "pre-ln", "dense", "d128"}
    assert presets("popularity") == {"default": {}}
    assert presets("sasrec")["dense"]["dropout"] == 0.2
    with pytest.raises(ValueError, match="unknown model 'nope'; choose from diffurec, sasrec, popularity"):
        build_model("nope", NUM_ITEMS, MAX_LEN)
    with pytest.raises(ValueError, match="unknown model"):
        presets("nope")


ALL_PRESETS = [(name, preset) for name in MODEL_NAMES for preset in presets(name)]


@pytest.mark.parametrize("name,preset", ALL_PRESETS)
def test_every_registered_model_implements_the_interface(name: str, preset: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, NUM_ITEMS, MAX_LEN, preset)
    assert isinstance(model, SequentialRecommender) and isinstance(model, nn.Module)
    hyper = {k: v for k, v in model.config.items() if k not in CONFIG_KEYS}
    assert hyper == presets(name)[preset]  # every hyperparameter, as plain values
    assert (model.config["name"], model.config["preset"]) == (name, preset)
    assert (model.config["num_items"], model.config["max_len"]) == (NUM_ITEMS, MAX_LEN)
    assert (model.num_items, model.max_len) == (NUM_ITEMS, MAX_LEN)
    assert isinstance(model.trims_padding, bool) and isinstance(model.requires_training, bool)
    assert model_from_config(model.config).config == model.config

    inputs, targets = tiny_batch()
    if model.requires_training:
        assert not isinstance(model, FittedRecommender)
        loss = model.train().loss(inputs, targets)
        assert loss.shape == () and math.isfinite(loss.item())
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    else:
        assert isinstance(model, FittedRecommender)
        assert model.fit(targets.numpy()) is model
        with pytest.raises(TypeError):
            model.loss(inputs, targets)
    scores = model.eval().score(inputs)
    assert scores.shape == (BATCH, NUM_ITEMS + 1) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert model.score(inputs, reverse_steps=1).shape == (BATCH, NUM_ITEMS + 1)
    for training in (True, False):
        flops = model.flops(BATCH, MAX_LEN, training=training)
        assert isinstance(flops, float) and flops >= 0.0
        assert model.flops(2 * BATCH, MAX_LEN, training=training) == 2 * flops  # per sample


def test_build_model_uses_the_entrys_default_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_model("sasrec", NUM_ITEMS, MAX_LEN).config["preset"] == "recbole"
    monkeypatch.setitem(models.MODELS, "sasrec", ModelEntry("diffurec.models.sasrec", "SASRec", "dense"))
    assert build_model("sasrec", NUM_ITEMS, MAX_LEN).config["dropout"] == 0.2


# ---- a model added as one module (this one) and one line in MODELS --------------------------

PRESETS: dict[str, dict[str, Any]] = {"default": {"hidden_size": 8}, "wide": {"hidden_size": 16}}


class LastItem(nn.Module):
    """Scores items by their similarity to the most recent item (a toy, not a recommender to use)."""

    requires_training = True
    trims_padding = True  # only the last position is read

    def __init__(self, num_items: int, max_len: int, preset: str = "default", **overrides: Any) -> None:
        super().__init__()
        cfg = preset_config("LastItem", PRESETS, preset, overrides)
        self.config: dict[str, Any] = dict(
            name="last-item", preset=preset, num_items=num_items, max_len=max_len, **cfg
        )
        self.num_items, self.max_len = num_items, max_len
        self.item_embedding = nn.Embedding(num_items + 1, cfg["hidden_size"])
        self.project = nn.Linear(cfg["hidden_size"], cfg["hidden_size"])

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._logits(inputs), targets)

    @torch.no_grad()
    def score(self, inputs: torch.Tensor, reverse_steps: int | None = None) -> torch.Tensor:
        return self._logits(inputs)

    def flops(self, batch: int, length: int, training: bool, reverse_steps: int | None = None) -> float:
        d = self.config["hidden_size"]
        return (3.0 if training else 1.0) * batch * 2 * (d * d + d * (self.num_items + 1))

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.project(self.item_embedding(inputs[:, -1])) @ self.item_embedding.weight.t()


def test_a_new_model_is_one_module_and_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(models.MODELS, "last-item", ModelEntry(__name__, "LastItem", default_preset="wide"))
    assert presets("last-item") is PRESETS
    torch.manual_seed(0)
    model = build_model("last-item", NUM_ITEMS, MAX_LEN)
    assert isinstance(model, LastItem) and isinstance(model, SequentialRecommender)
    assert model.config["preset"] == "wide" and model.config["hidden_size"] == 16
    small = build_model("last-item", NUM_ITEMS, MAX_LEN, "default", hidden_size=4)
    assert small.item_embedding.weight.shape == (NUM_ITEMS + 1, 4)
    with pytest.raises(ValueError, match="unknown LastItem hyperparameters"):
        build_model("last-item", NUM_ITEMS, MAX_LEN, hiden_size=4)

    # It trains: every item i is followed by item i + 1.
    inputs = torch.arange(1, NUM_ITEMS)[:, None].expand(-1, MAX_LEN).contiguous()
    targets = torch.arange(2, NUM_ITEMS + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        model.loss(inputs, targets).backward()
        optimizer.step()
    top = model.eval().score(inputs).argmax(dim=1)
    assert (top == targets).float().mean() > 0.9

    # The model folder saves and rebuilds it through the registry alone.
    folder = save_model_folder(tmp_path / "model", model, item_ids=[f"i{i}" for i in range(1, NUM_ITEMS + 1)])
    loaded = load_model_folder(folder)
    assert isinstance(loaded, LastItem) and loaded.config == model.config
    assert torch.equal(loaded.score(inputs), model.score(inputs))
