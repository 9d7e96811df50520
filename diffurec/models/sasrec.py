"""SASRec+ (Kang & McAuley 2018, trained with full-softmax cross-entropy as in Klenitskiy &
Vasilev, RecSys 2023): the strong baseline every DiffuRec number is compared against.

Causal self-attention over the history with learned position embeddings and tied item
embeddings; the last position's output is scored against every item.

| preset    | hidden | blocks x heads | dropout | architecture                  | for              |
| --------- | ------ | -------------- | ------- | ----------------------------- | ---------------- |
| `recbole` | 64     | 2 x 1          | 0.5     | RecBole 1.2.1's SASRec's      | the default      |
| `pre-ln`  | 64     | 2 x 1          | 0.5     | the first SASRec+'s           | until issue 18   |
| `dense`   | 64     | 2 x 1          | 0.2     | `pre-ln`'s                    | dense data       |
| `d128`    | 128    | 2 x 1          | 0.5     | `pre-ln`'s (FFN 512)          | DiffuRec's width |

`recbole` is the default (models/__init__.py) because it learns faster per epoch: the ablation on
ML-100K in docs/model-evidence.md, "Time to quality". `pre-ln` was called `default` before; model
folders saved under that name load as `pre-ln`.

Six hyperparameters choose between the first SASRec+ (first value: `pre-ln`, `dense`, `d128`)
and RecBole's SASRec (second value: `recbole`), so each difference can be ablated alone:
- `norm`: "pre" (x + Dropout(sublayer(LN(x))), a final LayerNorm) | "post" (x = LN(x +
  Dropout(sublayer(x))), the original SASRec; the last block's LayerNorm is the output);
- `embedding_norm`: False | True (LayerNorm on item + position embeddings before the dropout);
- `embedding_scale`: True (item embeddings times sqrt(d)) | False;
- `init`: "default" (items N(0, 1/d), xavier-normal projections, PyTorch's defaults elsewhere)
  | "normal-0.02" (every Linear and Embedding weight N(0, 0.02), biases 0, LayerNorm 1 and 0);
- `positions`: "right" (the most recent item has position 0) | "left" (the oldest item of the
  window has position 0, as RecBole's left-aligned sequences);
- `ffn_dropout`: True (dropout on the FFN's inner activations too, as DiffuRec's reference
  block) | False (RecBole's FFN: dropout only on its output).

Padded keys are masked and both position anchors count real items only, so cutting left padding
leaves the output exactly unchanged (`trims_padding`).
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
    recent_first_ids,
    preset_config,
    transformer_flops,
)

PRESETS: dict[str, dict[str, Any]] = {
    "pre-ln": dict(
        hidden_size=64,
        num_blocks=2,
        num_heads=1,
        ffn_size=256,
        dropout=0.5,
        layer_norm_eps=1e-8,
        norm="pre",
        embedding_norm=False,
        embedding_scale=True,
        init="default",
        positions="right",
        ffn_dropout=True,
    ),
}
PRESETS["dense"] = dict(PRESETS["pre-ln"], dropout=0.2)
# DiffuRec's width (d = 128, FFN 512), for comparisons at equal width (benchmarks/bench_quality.py).
PRESETS["d128"] = dict(PRESETS["pre-ln"], hidden_size=128, ffn_size=512)
PRESETS["recbole"] = dict(
    PRESETS["pre-ln"],
    norm="post",
    embedding_norm=True,
    embedding_scale=False,
    init="normal-0.02",
    positions="left",
    ffn_dropout=False,
)
# The allowed values of the string hyperparameters (the trainer range-checks the numeric ones).
BOOLEANS = ("embedding_norm", "embedding_scale", "ffn_dropout")
CHOICES = {"norm": ("pre", "post"), "init": ("default", "normal-0.02"), "positions": ("right", "left")}


class PostNormBlock(Block):
    """Block with the LayerNorms after each residual sum (original SASRec, RecBole): the same
    modules, so parameters and their initialisation are those of the pre-LN block."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        attention = self.attention(h, mask, last_only)
        h = self.norm_attention((h[:, -1:] if last_only else h) + self.dropout(attention))
        ffn = self.ffn_out(self.inner_dropout(F.gelu(self.ffn_in(h), approximate="tanh")))
        return self.norm_ffn(h + self.dropout(ffn))


def init_normal_002(module: nn.Module) -> None:
    """RecBole's `_init_weights`: Linear and Embedding weights N(0, 0.02), Linear biases 0,
    LayerNorm weight 1 and bias 0."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SASRec(nn.Module):
    """SASRec with causal attention, learned positions and full-softmax CE; pre- or post-LN."""

    requires_training = True
    trims_padding = True

    def __init__(self, num_items: int, max_len: int, preset: str = "recbole", **overrides: Any) -> None:
        super().__init__()
        cfg = preset_config("SASRec", PRESETS, preset, overrides)
        for key, allowed in CHOICES.items():
            if cfg[key] not in allowed:
                raise ValueError(f"SASRec {key} must be one of {allowed}, got {cfg[key]!r}")
        for key in BOOLEANS:
            if not isinstance(cfg[key], bool):
                raise ValueError(f"SASRec {key} must be true or false, got {cfg[key]!r}")
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
        self.embedding_norm = (
            nn.LayerNorm(d, eps=cfg["layer_norm_eps"]) if cfg["embedding_norm"] else nn.Identity()
        )
        self.input_dropout = nn.Dropout(cfg["dropout"])
        block = PostNormBlock if cfg["norm"] == "post" else Block
        self.blocks = nn.ModuleList(
            block(cfg, use_sdpa=True, output_dropout=False, ffn_dropout=cfg["ffn_dropout"])
            for _ in range(cfg["num_blocks"])
        )
        # Post-LN blocks end in a LayerNorm already.
        self.output_norm = (
            nn.LayerNorm(d, eps=cfg["layer_norm_eps"]) if cfg["norm"] == "pre" else nn.Identity()
        )
        if cfg["init"] == "normal-0.02":
            self.apply(init_normal_002)
            with torch.no_grad():
                self.item_embedding.weight[0].zero_()

    def attention_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """Bool [B, 1, L, L]: causal, padded keys hidden; each position may always see itself
        (so a padded query row is never fully masked, which would give NaN)."""
        length = inputs.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=inputs.device)
        return (causal & (inputs > 0)[:, None, None, :]) | eye

    def position_ids(self, inputs: torch.Tensor) -> torch.Tensor:
        """Position ids, [L] ("right": the last column is 0) or [B, L] ("left": the row's first
        real item is 0, padding 0 too); left padding never changes a real item's id."""
        length = inputs.size(1)
        if self.config["positions"] == "right":
            return recent_first_ids(length, inputs.device)
        return ((inputs > 0).long().cumsum(dim=1) - 1).clamp(min=0)

    def represent(self, inputs: torch.Tensor) -> torch.Tensor:
        """The last position's output, [B, d]."""
        check_length(inputs.size(1), self.max_len)
        items = self.item_embedding(inputs)
        if self.config["embedding_scale"]:
            items = items * self.config["hidden_size"] ** 0.5
        h = self.embedding_norm(items + self.position_embedding(self.position_ids(inputs)))
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
