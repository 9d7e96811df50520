"""Most-popular items: the floor every trained model must clear.

Scores each item by how often it is a training target (every prefix sample's target, i.e. each
training interaction after a user's first), the same for every user.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from diffurec.models.layers import preset_config

PRESETS: dict[str, dict[str, Any]] = {"default": {}}


class Popularity(nn.Module):
    """Item counts from the training targets; no gradient training (`fit` instead)."""

    requires_training = False
    trims_padding = True  # the history is ignored entirely
    counts: torch.Tensor  # [N+1] float32 buffer

    def __init__(self, num_items: int, max_len: int, preset: str = "default", **overrides: Any) -> None:
        super().__init__()
        preset_config("popularity", PRESETS, preset, overrides)  # it has no hyperparameters
        self.config: dict[str, Any] = dict(
            name="popularity", preset=preset, num_items=num_items, max_len=max_len
        )
        self.num_items, self.max_len = num_items, max_len
        # A buffer, so it is in the state dict (safetensors) but never seen by an optimizer.
        self.register_buffer("counts", torch.zeros(num_items + 1, dtype=torch.float32))

    def fit(self, train_targets: np.ndarray) -> Popularity:
        """Count how often each item is a training target."""
        targets = np.asarray(train_targets, dtype=np.int64)
        if targets.size and (targets.min() < 1 or targets.max() > self.num_items):
            raise ValueError(f"training targets must lie in 1..{self.num_items}")
        counts = np.bincount(targets, minlength=self.num_items + 1).astype(np.float32)
        self.counts.copy_(torch.from_numpy(counts))
        return self

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise TypeError("popularity is fitted with fit(train_targets), not trained on a loss")

    def flops(self, batch: int, length: int, training: bool, reverse_steps: int | None = None) -> float:
        """No matmuls: scoring copies the counts."""
        return 0.0

    @torch.no_grad()
    def score(self, inputs: torch.Tensor, reverse_steps: int | None = None) -> torch.Tensor:
        """The counts for every user, [B, N+1]; the history and `reverse_steps` are ignored."""
        return self.counts.to(inputs.device).expand(inputs.size(0), -1).clone()
