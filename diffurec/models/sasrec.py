"""SASRec+ (Kang & McAuley 2018, trained with full-softmax cross-entropy as in Klenitskiy &
Vasilev, RecSys 2023): the strong baseline every DiffuRec number is compared against.

Causal self-attention over the history with learned position embeddings and tied item
embeddings; the last position's output is scored against every item.

| preset    | hidden | blocks x heads | dropout | for                                 |
| --------- | ------ | -------------- | ------- | ----------------------------------- |
| `default` | 64     | 2 x 1          | 0.5     | sparse data (Amazon Beauty, Toys)   |
| `dense`   | 64     | 2 x 1          | 0.2     | dense data (MovieLens)              |

Positions are counted from the right end (the most recent item has position 0) and padded keys
are masked, so cutting left padding leaves the output exactly unchanged (`trims_padding`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffurec.models.layers import (
    Block,
    check_length,
    dot_scores,
    last_position,
    preset_config,
    transformer_flops,
)

PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        hidden_size=64, num_blocks=2, num_heads=1, ffn_size=256, dropout=0.5, layer_norm_eps=1e-8
    ),
}
PRESETS["dense"] = dict(PRESETS["default"], dropout=0.2)


class SASRec(nn.Module):
    """SASRec with causal attention, right-anchored learned positions and full-softmax CE."""

    requires_training = True
    trims_padding = True

    def __init__(self, num_items: int, max_len: int, preset: str = "default", **overrides: Any) -> None:
        super().__init__()
        cfg = preset_config("SASRec", PRESETS, preset, overrides)
        self.config: dict[str, Any] = dict(
            name="sasrec", preset=preset, num_items=num_items, max_len=max_len, **cfg
        )
        self.num_items, self.max_len = num_items, max_len
        d = cfg["hidden_size"]
        self.item_embedding = nn.Embedding(num_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.position_embedding = nn.Embedding(max_len, d)
        self.input_dropout = nn.Dropout(cfg["dropout"])
        self.blocks = nn.ModuleList(
            Block(cfg, use_sdpa=True, output_dropout=False) for _ in range(cfg["num_blocks"])
        )
        self.output_norm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

    def attention_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """Bool [B, 1, L, L]: causal, padded keys hidden; each position may always see itself
        (so a padded query row is never fully masked, which would give NaN)."""
        length = inputs.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=inputs.device)
        return (causal & (inputs > 0)[:, None, None, :]) | eye

    def represent(self, inputs: torch.Tensor) -> torch.Tensor:
        """The last position's output, [B, d]."""
        length = inputs.size(1)
        check_length(length, self.max_len)
        positions = torch.arange(length - 1, -1, -1, device=inputs.device)  # right-anchored
        scale = self.config["hidden_size"] ** 0.5
        h = self.item_embedding(inputs) * scale + self.position_embedding(positions)
        h = self.input_dropout(h) * (inputs > 0)[..., None]
        return self.output_norm(last_position(self.blocks, h, self.attention_mask(inputs)))

    def flops(self, batch: int, length: int, training: bool, reverse_steps: int | None = None) -> float:
        """Matmul FLOPs of one `loss` (3x forward) or `score` call on a [batch, length] input."""
        cfg = self.config
        per_sample = transformer_flops(length, cfg["hidden_size"], cfg["ffn_size"], cfg["num_blocks"])
        per_sample += 2 * cfg["hidden_size"] * (self.num_items + 1)
        return (3.0 if training else 1.0) * batch * per_sample

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Full-softmax cross-entropy of the last position's output against all N+1 rows."""
        logits = self.represent(inputs) @ self.item_embedding.weight.t()
        return F.cross_entropy(logits.float(), targets)

    @torch.no_grad()
    def score(self, inputs: torch.Tensor, reverse_steps: int | None = None) -> torch.Tensor:
        """[B, N+1] scores; `reverse_steps` is accepted for a uniform interface and ignored."""
        return dot_scores(self.represent(inputs), self.item_embedding.weight)
