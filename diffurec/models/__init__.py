"""The models and their registry: a new model is a module here and one line in MODELS.

Every model is a torch.nn.Module with
- `config`: dict of plain values (name, preset, every hyperparameter, num_items, max_len);
- `loss(inputs [B, L] long, targets [B] long) -> scalar tensor` (draws its own noise from
  torch's global RNG on the inputs' device);
- `score(inputs [B, L] long, reverse_steps=None) -> [B, num_items + 1]` (column 0 is padding);
- `trims_padding`: True when the output is exactly independent of left padding, so a batch may
  be cut to its longest real history (`inputs[:, -longest:]`);
- `requires_training`: False for popularity, which is fitted with `fit(train_targets)`;
- `flops(batch, length, training, reverse_steps=None)`: matmul FLOPs one `loss` (fwd + bwd)
  or `score` call performs, for throughput and MFU.
Models know tensors, not files: saving and loading folders is the trainer's job.
"""

from __future__ import annotations

from diffurec.models import diffurec, popularity, sasrec

MODELS = {
    "diffurec": (diffurec.DiffuRec, diffurec.PRESETS),
    "sasrec": (sasrec.SASRec, sasrec.PRESETS),
    "popularity": (popularity.Popularity, popularity.PRESETS),
}
MODEL_NAMES = tuple(MODELS)
PRESETS = {name: presets for name, (_, presets) in MODELS.items()}
DEFAULT_PRESETS = {"diffurec": "paper", "sasrec": "default", "popularity": "default"}
CONFIG_KEYS = ("name", "preset", "num_items", "max_len")


def build_model(name: str, num_items: int, max_len: int, preset: str | None = None, **overrides):
    """A fresh model; `overrides` change single hyperparameters of the preset."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    cls, _ = MODELS[name]
    return cls(num_items, max_len, preset=preset or DEFAULT_PRESETS[name], **overrides)


def model_from_config(config: dict):
    """The model a `config` dict (as in model.config / config.json) describes, freshly initialised."""
    hyper = {k: v for k, v in config.items()
             if k not in CONFIG_KEYS and k in PRESETS[config["name"]][config["preset"]]}
    return build_model(config["name"], config["num_items"], config["max_len"], config["preset"], **hyper)
