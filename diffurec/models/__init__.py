"""The models and their registry: a new model is one module here and one line in MODELS.

A model module defines its class, implementing `SequentialRecommender` (diffurec/models/base.py:
config, loss, score, trims_padding, requires_training, flops; `fit` for fitted models such as
popularity), and `PRESETS`, a dict preset name -> hyperparameters. Shared layers are in
diffurec/models/layers.py.

This module does not import torch: the command line builds `--model` choices from MODEL_NAMES
and DEFAULT_PRESETS, and model modules are imported only when a model or its presets are asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from diffurec.models.base import FittedRecommender, ModelClass, SequentialRecommender

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_PRESETS",
    "MODELS",
    "MODEL_NAMES",
    "FittedRecommender",
    "ModelClass",
    "ModelEntry",
    "SequentialRecommender",
    "build_model",
    "model_entry",
    "model_from_config",
    "presets",
]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: `module` (imported on first use) defines `class_name` and PRESETS."""

    module: str
    class_name: str
    default_preset: str

    def model_class(self) -> ModelClass:
        model_class: ModelClass = getattr(importlib.import_module(self.module), self.class_name)
        return model_class

    def presets(self) -> dict[str, dict[str, Any]]:
        presets: dict[str, dict[str, Any]] = importlib.import_module(self.module).PRESETS
        return presets


MODELS: dict[str, ModelEntry] = {
    "diffurec": ModelEntry("diffurec.models.diffurec", "DiffuRec", default_preset="paper"),
    "sasrec": ModelEntry("diffurec.models.sasrec", "SASRec", default_preset="recbole"),
    "popularity": ModelEntry("diffurec.models.popularity", "Popularity", default_preset="default"),
}
MODEL_NAMES = tuple(MODELS)
DEFAULT_PRESETS = {name: entry.default_preset for name, entry in MODELS.items()}
# The keys of a model's config that are not hyperparameters.
CONFIG_KEYS = ("name", "preset", "num_items", "max_len")


def model_entry(name: str) -> ModelEntry:
    """The registry entry of model `name`; ValueError naming the choices when there is none."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def presets(name: str) -> dict[str, dict[str, Any]]:
    """Model `name`'s presets: preset name -> hyperparameters (imports the model's module)."""
    return model_entry(name).presets()


def build_model(
    name: str, num_items: int, max_len: int, preset: str | None = None, **overrides: Any
) -> SequentialRecommender:
    """A fresh model; `overrides` change single hyperparameters of the preset (default: the
    entry's default preset)."""
    entry = model_entry(name)
    return entry.model_class()(num_items, max_len, preset=preset or entry.default_preset, **overrides)


# Presets renamed since folders were saved under the old name. A folder's config holds every
# hyperparameter, so the old name loads as the new one (SASRec+'s `default` became `pre-ln` when
# RecBole's architecture became the default).
RENAMED_PRESETS = {("sasrec", "default"): "pre-ln"}
# Hyperparameters added since folders were saved, with the value those folders trained with.
ADDED_HYPERPARAMETERS = {"sasrec": {"ffn_dropout": True}}


def model_from_config(config: dict[str, Any]) -> SequentialRecommender:
    """The model a `config` dict (as in model.config / config.json) describes, freshly initialised."""
    preset = RENAMED_PRESETS.get((config["name"], config["preset"]), config["preset"])
    known = presets(config["name"]).get(preset, {})  # an unknown preset fails in build_model
    saved = dict(ADDED_HYPERPARAMETERS.get(config["name"], {}), **config)
    hyper = {k: v for k, v in saved.items() if k not in CONFIG_KEYS and k in known}
    return build_model(config["name"], config["num_items"], config["max_len"], preset, **hyper)
