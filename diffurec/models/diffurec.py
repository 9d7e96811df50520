"""DiffuRec (Li, Sun, Li, TOIS 2023): a diffusion model over item embeddings for next-item
prediction, as the authors' code WHUIR/DiffuRec@f6f70c9 behaves (shared/docs/diffurec-reference.md).

Presets (every other hyperparameter is the same: d=128, 4 blocks x 4 heads, FFN 512, GELU-tanh,
dropout 0.1 in blocks / 0.3 on history, T=32 `trunc_lin`, lambda ~ N(0.001, std 0.001)):

| preset      | attention mask             | attention kernel | reverse steps | item init   | trims_padding |
| ----------- | -------------------------- | ---------------- | ------------- | ----------- | ------------- |
| `paper`     | padded query rows (quirk)  | explicit softmax | 32            | N(0, 1)     | False         |
| `fast`      | padded keys                | SDPA             | 1             | N(0, 1)     | True          |
| `fast-init` | padded keys                | SDPA             | 1             | N(0, 1/d)   | True          |
| `fast-lite` | `fast-init` with 2 blocks instead of 4, reading only the last 10 items (`window`)    |
| `fast-lite-pos` | `fast-lite` with learned positions (`positions`), anchored at the most recent item |

`paper` is the reference, quirks included: no position embeddings, bidirectional attention, a
learned padding row (no padding_idx), N(0,1) item init, LayerNorm eps 1e-12 everywhere, x0 read
from the last position after Dropout -> LayerNorm, full-softmax CE over N+1 rows, 32-step
ancestral reverse with sigma_t^2 = beta_t (t >= 1) and no noise at t = 0.
`fast` differs only where the table says. Masking padded keys makes the output independent of
left padding, so the trainer and evaluator cut batches to their longest real history. One reverse
step is the default because lambda ~ 1e-3 makes the noisy target nearly irrelevant: measured on
the first 4,000 Beauty test users with a 2-epoch `fast-init` model, HR@10 was 1.75 % at 1, 2, 4,
8 and 32 steps and NDCG@10 0.9740 (1 step) vs 0.9735 (32 steps), inside the 0.973-0.974 spread
of two seeds. Any preset accepts `reverse_steps=` at score time.
`fast-init` trains much faster from the start: on Beauty after one epoch (same seed, batches and
trainer) validation HR@10 / NDCG@10 were 2.63 / 1.27 % against `fast`'s 0.94 / 0.49 % (popularity:
1.57 / 0.77 %). Its converged test quality against the paper's numbers is in the README's Models
table; `paper` itself is not yet trained to convergence here (benchmarks/gpu_check.py does it).

Fewer reverse steps than T use evenly spaced timesteps with the respaced posterior (as in
improved DDPM's `space_timesteps`); with all T steps this is exactly the reference process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    recent_first_ids,
    transformer_flops,
)

PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        hidden_size=128,
        num_blocks=4,
        num_heads=4,
        ffn_size=512,
        dropout=0.1,
        emb_dropout=0.3,
        layer_norm_eps=1e-12,
        diffusion_steps=32,
        schedule="trunc_lin",
        lambda_uncertainty=0.001,
        reverse_steps=32,
        mask="query",
        attention="explicit",
        item_init_std=1.0,
        window=None,
        positions=False,
    ),
}
PRESETS["fast"] = dict(PRESETS["paper"], reverse_steps=1, mask="key", attention="sdpa")
# N(0, 1/d) item init: x0_hat leaves a LayerNorm with norm ~sqrt(d), so N(0, 1) rows give logits
# of std ~11 and a first-epoch loss of ~26; unit-scale logits start near log(N).
PRESETS["fast-init"] = dict(PRESETS["fast"], item_init_std=128**-0.5)
# On a CPU budget quality follows samples seen, and half the blocks on the last 10 items train
# ~15x the samples/s of `fast-init` at a 50-item window (docs/model-evidence.md).
PRESETS["fast-lite"] = dict(PRESETS["fast-init"], num_blocks=2, window=10)
# The pipeline's default: without positions the bidirectional blocks see the window as a set (but
# for the last item, read out); the order lifts ML-100K's 8-minute validation NDCG@10 (issue 18).
PRESETS["fast-lite-pos"] = dict(PRESETS["fast-lite"], positions=True)


def trunc_lin_betas(steps: int) -> torch.Tensor:
    """The reference's `trunc_lin` schedule, float64: linspace(s*1e-4 + 0.01, s*0.02 + 0.01)."""
    scale = 1000.0 / steps
    return torch.linspace(scale * 1e-4 + 0.01, scale * 0.02 + 0.01, steps, dtype=torch.float64)


def reverse_timesteps(total_steps: int, reverse_steps: int) -> list[int]:
    """Evenly spaced timesteps visited by a reverse process of `reverse_steps` steps, descending.

    One step visits only t = T-1; all T steps visit T-1 .. 0 like the reference.
    """
    if not 1 <= reverse_steps <= total_steps:
        raise ValueError(f"reverse_steps must be in 1..{total_steps}, got {reverse_steps}")
    if reverse_steps == 1:
        return [total_steps - 1]
    spaced = torch.linspace(0, total_steps - 1, reverse_steps, dtype=torch.float64).round().long()
    return sorted(set(spaced.tolist()), reverse=True)


def posterior_coefficients(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c1, c2, beta) of q(x_{t-1} | x_t, x0) for the steps whose cumulative products are alpha_bar.

    mu_t = c1_t x0 + c2_t x_t with alpha_bar_{-1} = 1; beta_t is also the reverse variance
    ("fixed large") used for t >= 1.
    """
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    beta = 1.0 - alpha_bar / alpha_bar_prev
    c1 = beta * alpha_bar_prev.sqrt() / (1.0 - alpha_bar)
    c2 = (1.0 - alpha_bar_prev) * (1.0 - beta).sqrt() / (1.0 - alpha_bar)
    return c1, c2, beta


def timestep_embedding(t: torch.Tensor, dim: int, scale: float, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t * scale, laid out [cos | sin] like the reference."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def from_reference_names(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `paper` state dict from the authors' parameter names (WHUIR/DiffuRec@f6f70c9), e.g. the
    `weights/<name>` arrays of shared/fixtures/diffurec-reference-golden.npz; names the reference's
    forward never reads (position embeddings, the unused fuse layers) are not expected."""
    x, blocks = "diffu.xstart_model.", "diffu.xstart_model.att.transformer_blocks."
    names = {
        "item_embeddings.weight": "item_embedding.weight",
        "LayerNorm.weight": "history_norm.weight",
        "LayerNorm.bias": "history_norm.bias",
        f"{x}norm_diffu_rep.weight": "output_norm.weight",
        f"{x}norm_diffu_rep.bias": "output_norm.bias",
    }
    for layer in (0, 2):
        for kind in ("weight", "bias"):
            names[f"{x}time_embed.{layer}.{kind}"] = f"time_mlp.{layer}.{kind}"
    block_parts = {
        "attention.linear_layers.0": "attention.query",
        "attention.linear_layers.1": "attention.key",
        "attention.linear_layers.2": "attention.value",
        "attention.w_layer": "attention.out",
        "feed_forward.w_1": "ffn_in",
        "feed_forward.w_2": "ffn_out",
        "input_sublayer.norm": "norm_attention",
        "output_sublayer.norm": "norm_ffn",
    }
    block_indices = {int(name[len(blocks) :].split(".")[0]) for name in weights if name.startswith(blocks)}
    num_blocks = 1 + max(block_indices)
    for b in range(num_blocks):
        for theirs, ours in block_parts.items():
            for kind in ("weight", "bias"):
                names[f"{blocks}{b}.{theirs}.{kind}"] = f"blocks.{b}.{ours}.{kind}"
    missing = sorted(set(names) - set(weights))
    if missing:
        raise KeyError(f"reference weights lack {missing}")
    return {ours: torch.as_tensor(weights[theirs]) for theirs, ours in names.items()}


class DiffuRec(nn.Module):
    """DiffuRec: a Transformer approximator f(history, x_t, t) -> x0 inside a DDPM over items."""

    requires_training = True
    sqrt_alpha_bar: torch.Tensor  # [T] float32 buffers for q(x_t | x0)
    sqrt_one_minus_alpha_bar: torch.Tensor

    def __init__(self, num_items: int, max_len: int, preset: str = "paper", **overrides: Any) -> None:
        super().__init__()
        cfg = preset_config("DiffuRec", PRESETS, preset, overrides)
        if cfg["mask"] not in ("query", "key") or cfg["attention"] not in ("explicit", "sdpa"):
            raise ValueError(f"mask must be 'query' or 'key', attention 'explicit' or 'sdpa': {cfg}")
        window = cfg["window"]
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be None or a number of items >= 1, got {window!r}")
        if cfg["schedule"] != "trunc_lin":
            raise ValueError(f"only the 'trunc_lin' schedule is implemented, got {cfg['schedule']!r}")
        self.config: dict[str, Any] = dict(
            name="diffurec", preset=preset, num_items=num_items, max_len=max_len, **cfg
        )
        self.num_items, self.max_len = num_items, max_len
        # With padded keys masked, padded positions cannot reach the last position's output.
        self.trims_padding = cfg["mask"] == "key"

        d = cfg["hidden_size"]
        self.item_embedding = nn.Embedding(num_items + 1, d)  # row 0 is learned padding
        nn.init.normal_(self.item_embedding.weight, std=cfg["item_init_std"])  # paper: N(0, 1)
        if not isinstance(cfg["positions"], bool):
            raise ValueError(f"positions must be true or false, got {cfg['positions']!r}")
        # Not in the reference: learned positions, anchored at the most recent item (id 0).
        self.position_embedding = nn.Embedding(max_len, d) if cfg["positions"] else None
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding.weight, std=cfg["item_init_std"])
        self.history_dropout = nn.Dropout(cfg["emb_dropout"])
        self.history_norm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.time_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.blocks = nn.ModuleList(Block(cfg, cfg["attention"] == "sdpa") for _ in range(cfg["num_blocks"]))
        self.output_dropout = nn.Dropout(cfg["dropout"])
        self.output_norm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

        steps = cfg["diffusion_steps"]
        alpha_bar = torch.cumprod(1.0 - trunc_lin_betas(steps), dim=0)
        # Buffers, not parameters: derived from the config, so not saved in the state dict.
        self.register_buffer("sqrt_alpha_bar", alpha_bar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha_bar", (1.0 - alpha_bar).sqrt().float(), persistent=False)
        self._alpha_bar64 = alpha_bar

    # ---- the approximator -------------------------------------------------------------------

    def recent(self, inputs: torch.Tensor) -> torch.Tensor:
        """The last `window` columns of left-padded inputs (all of them when window is None)."""
        window = self.config["window"]
        return inputs if window is None or inputs.size(1) <= window else inputs[:, -window:]

    def history(self, inputs: torch.Tensor) -> torch.Tensor:
        """H = LayerNorm(Dropout(E[inputs] (+ P, with positions))) (the reference's order), [B, L, d]."""
        h = self.item_embedding(inputs)
        if self.position_embedding is not None:
            h = h + self.position_embedding(recent_first_ids(inputs.size(1), inputs.device))
        return self.history_norm(self.history_dropout(h))

    def attention_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """Bool [B, 1, L, L] or [B, 1, 1, L], True where a query may attend to a key."""
        real = inputs > 0
        if self.config["mask"] == "query":
            # Reference quirk: padded query rows are masked (their softmax becomes uniform),
            # real queries still see padded keys.
            return real[:, None, :, None].expand(-1, 1, -1, inputs.size(1))
        # The last position always counts as real so a row never has every key masked.
        real = real.clone()
        real[:, -1] = True
        return real[:, None, None, :]

    def _lambda(self, batch: int, length: int, device: torch.device | str) -> torch.Tensor:
        """lambda ~ N(delta, std delta), elementwise [B, L, d], fresh on every call."""
        check_length(length, self.max_len)
        delta = self.config["lambda_uncertainty"]
        return torch.randn(batch, length, self.config["hidden_size"], device=device) * delta + delta

    def approximate(
        self,
        history: torch.Tensor,
        mask: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        lam: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x0_hat = f(H, x_t, t), [B, d]: H + lambda * (x_t + time_emb(t)) through the blocks,
        then Dropout -> LayerNorm, read at the last position. `lam` fixes lambda (tests)."""
        batch, length, _ = history.shape
        steps = self.config["diffusion_steps"]
        z = x_t + self.time_mlp(timestep_embedding(t, self.config["hidden_size"], 1000.0 / steps))
        if lam is None:
            lam = self._lambda(batch, length, history.device)
        h = history + lam * z[:, None, :]
        return self.output_norm(self.output_dropout(last_position(self.blocks, h, mask)))

    def flops(self, batch: int, length: int, training: bool, reverse_steps: int | None = None) -> float:
        """Matmul FLOPs this model performs for one `loss` (forward + backward = 3x forward, but
        for the time MLP's first layer, whose input, the sinusoid, needs no gradient) or one
        `score` call on a [batch, length] input (2 per multiply-add; the final block computes
        only the last query). torch.utils.flop_counter counts the same for `paper`."""
        cfg = self.config
        d = cfg["hidden_size"]
        per_pass = transformer_flops(length, d, cfg["ffn_size"], cfg["num_blocks"])
        time_mlp_layer = 2 * d * 4 * d
        per_pass += 2 * time_mlp_layer
        scoring = 2 * d * (self.num_items + 1)
        if training:
            return float(batch * (3 * (per_pass + scoring) - time_mlp_layer))
        steps = len(reverse_timesteps(cfg["diffusion_steps"], reverse_steps or cfg["reverse_steps"]))
        return float(batch * (steps * per_pass + scoring))

    # ---- the interface the trainer and evaluator use ----------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, the forward process, [B, d]."""
        return self.sqrt_alpha_bar[t, None] * x0 + self.sqrt_one_minus_alpha_bar[t, None] * noise

    def loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full-softmax cross-entropy of x0_hat against all N+1 rows, at a uniform random t.

        t [B], noise [B, d] and lam [B, L, d] replace the draws (tests replay the reference's);
        those not given are drawn in this order: t, noise, (history dropout), lambda."""
        batch = inputs.size(0)
        inputs = self.recent(inputs)
        x0 = self.item_embedding(targets)
        if t is None:
            t = torch.randint(0, self.config["diffusion_steps"], (batch,), device=inputs.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        x0_hat = self.approximate(self.history(inputs), self.attention_mask(inputs), x_t, t, lam)
        logits = x0_hat @ self.item_embedding.weight.t()
        return F.cross_entropy(logits.float(), targets)

    @torch.no_grad()
    def represent(
        self,
        inputs: torch.Tensor,
        reverse_steps: int | None = None,
        x_T: torch.Tensor | None = None,
        noise: Sequence[torch.Tensor] | torch.Tensor | None = None,
        lam: Sequence[torch.Tensor] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x0_hat after the ancestral reverse process from x_T ~ N(0, I), [B, d].

        x_T [B, d], noise (one [B, d] per step but the last, which adds none) and lam (one
        [B, L, d] per step) replace the draws (tests replay the reference's); those not given are
        drawn in this order: x_T, then per step lambda and noise."""
        steps = reverse_steps or self.config["reverse_steps"]
        inputs = self.recent(inputs)
        timesteps = reverse_timesteps(self.config["diffusion_steps"], steps)
        alpha_bar = self._alpha_bar64[list(reversed(timesteps))]
        c1, c2, beta = (c.float().flip(0).tolist() for c in posterior_coefficients(alpha_bar))
        history = self.history(inputs)
        mask = self.attention_mask(inputs)
        if x_T is None:
            x_T = torch.randn(inputs.size(0), self.config["hidden_size"], device=inputs.device)
        x_t = x_T
        for i, t in enumerate(timesteps):  # descending; c1/c2/beta are aligned with it
            t_batch = torch.full((inputs.size(0),), t, device=inputs.device, dtype=torch.long)
            x0_hat = self.approximate(history, mask, x_t, t_batch, None if lam is None else lam[i])
            if i + 1 < len(timesteps):  # the last step (t = 0 in the full process) adds no noise
                mean = c1[i] * x0_hat + c2[i] * x_t
                step_noise = torch.randn_like(x_t) if noise is None else noise[i]
                x_t = mean + math.sqrt(beta[i]) * step_noise
        # On the last step c1 = 1 and c2 = 0, so the posterior mean is x0_hat itself.
        return x0_hat

    @torch.no_grad()
    def score(self, inputs: torch.Tensor, reverse_steps: int | None = None) -> torch.Tensor:
        """Dot-product scores of the reverse-process output against every row, [B, N+1]."""
        return dot_scores(self.represent(inputs, reverse_steps), self.item_embedding.weight)
