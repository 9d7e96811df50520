"""Pieces every model shares: preset handling, the Transformer block, fp32 scoring and FLOPs.

The block is the reference DiffuRec's pre-LN block (shared/docs/diffurec-reference.md); SASRec+
uses it with `output_dropout=False` and SDPA attention.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def preset_config(
    model: str, presets: dict[str, dict[str, Any]], preset: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The preset's hyperparameters with `overrides` applied; unknown names are errors."""
    if preset not in presets:
        raise ValueError(f"unknown {model} preset {preset!r}; choose from {sorted(presets)}")
    unknown = set(overrides) - set(presets[preset])
    if unknown:
        raise ValueError(f"unknown {model} hyperparameters: {sorted(unknown)}")
    return dict(presets[preset], **overrides)


def check_length(length: int, max_len: int) -> None:
    """Inputs longer than the model's max_len are an error (positions or lambda are sized by it)."""
    if length > max_len:
        raise ValueError(f"inputs have {length} positions, more than max_len={max_len}")


def recent_first_ids(length: int, device: torch.device | str) -> torch.Tensor:
    """Position ids of a left-padded window, [L]: the most recent (last) column is 0, so left
    padding never changes a real item's id."""
    return torch.arange(length - 1, -1, -1, device=device)


def dot_scores(representation: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
    """representation @ item_weight^T in fp32 even under autocast: bf16 scores would tie many
    items, and the evaluator counts ties against the target."""
    with torch.autocast(representation.device.type, enabled=False):
        return representation.float() @ item_weight.float().t()


class SelfAttention(nn.Module):
    """Multi-head self-attention; the mask is built by the caller (bool, True = may attend)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, use_sdpa: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        nn.init.xavier_normal_(self.out.weight)  # the reference inits only the output projection
        self.dropout = dropout
        self.use_sdpa = use_sdpa

    def forward(self, h: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Attend from every position, or (last_only) from the last position only, [B, L or 1, d]."""
        batch, length, hidden = h.shape
        queries = h[:, -1:] if last_only else h
        q = self.query(queries).view(batch, queries.size(1), self.num_heads, -1).transpose(1, 2)
        k, v = (
            proj(h).view(batch, length, self.num_heads, -1).transpose(1, 2) for proj in (self.key, self.value)
        )
        if last_only:
            mask = mask[:, :, -1:, :]
        dropout = self.dropout if self.training else 0.0
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
            # -1e9, not -inf: a fully masked row (the reference's padded queries) becomes uniform.
            probs = F.dropout(scores.masked_fill(~mask, -1e9).softmax(dim=-1), dropout, self.training)
            out = probs @ v
        return self.out(out.transpose(1, 2).reshape(batch, queries.size(1), hidden))


class Block(nn.Module):
    """Pre-LN Transformer block; `output_dropout` is the reference's extra dropout on its output,
    `ffn_dropout` its dropout of the FFN's inner activations (RecBole's FFN has none).

    `cfg` needs hidden_size, num_heads, ffn_size, dropout and layer_norm_eps.
    """

    def __init__(
        self, cfg: dict[str, Any], use_sdpa: bool, output_dropout: bool = True, ffn_dropout: bool = True
    ) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.norm_attention = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.attention = SelfAttention(d, cfg["num_heads"], cfg["dropout"], use_sdpa)
        self.norm_ffn = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.ffn_in = nn.Linear(d, cfg["ffn_size"])
        self.ffn_out = nn.Linear(cfg["ffn_size"], d)
        nn.init.xavier_normal_(self.ffn_in.weight)
        nn.init.xavier_normal_(self.ffn_out.weight)
        self.dropout = nn.Dropout(cfg["dropout"])
        self.inner_dropout = self.dropout if ffn_dropout else nn.Identity()
        self.output_dropout = output_dropout

    def forward(self, h: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, L, d] -> [B, L, d], or [B, 1, d] for the last position only (last_only): the
        models read only the last position, so their final block skips the other queries."""
        attention = self.attention(self.norm_attention(h), mask, last_only)
        h = (h[:, -1:] if last_only else h) + self.dropout(attention)
        ffn = self.ffn_out(self.inner_dropout(F.gelu(self.ffn_in(self.norm_ffn(h)), approximate="tanh")))
        h = h + self.dropout(ffn)
        return self.dropout(h) if self.output_dropout else h


def last_position(blocks: nn.ModuleList, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h [B, L, d] through every block, read at the last position, [B, d]; the final block
    computes only that query."""
    for i, block in enumerate(blocks):
        h = block(h, mask, last_only=i == len(blocks) - 1)
    return h[:, -1, :]


def transformer_flops(length: int, d: int, ffn: int, blocks: int) -> float:
    """Forward matmul FLOPs of one sequence through `blocks` blocks whose last block computes
    only the last query (projections, attention scores and values, FFN)."""
    full = 2 * (4 * length * d * d + 2 * length * length * d + 2 * length * d * ffn)
    last = 2 * (2 * length * d * d + 2 * d * d + 2 * length * d + 2 * d * ffn)
    return float((blocks - 1) * full + last)
