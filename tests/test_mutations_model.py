"""Tests that a broken DiffuRec, trainer or evaluator fails (issue 17; docs/model-evidence.md lists
each mutation and the test that catches it).

Dropout-order and attention-dropout checks run in train mode with fixed or seed-replayed dropout
masks against hand computations; the trainer checks run on a real ML-100K slice.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer_data import tiny_settings

from diffurec.evaluate import evaluate_ranks
from diffurec.model_folder import load_model_folder
from diffurec.models import build_model
from diffurec.models.diffurec import DiffuRec, timestep_embedding
from diffurec.models.layers import last_position
from diffurec.train import train

NUM_ITEMS, MAX_LEN, D = 300, 50, 128


class FixedMask(nn.Module):
    """A dropout whose mask is fixed (kept entries scaled by 1 / (1 - p)), in any mode."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep


def fixed_keep(shape: tuple[int, ...], p: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) >= p).float() / (1 - p)


def paper_inputs(batch: int, seed: int) -> torch.Tensor:
    """Left-padded histories of lengths 1..MAX_LEN, most recent item last."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, NUM_ITEMS + 1, (batch, MAX_LEN), generator=generator)
    lengths = torch.linspace(1, MAX_LEN, batch).long()
    inputs[torch.arange(MAX_LEN)[None, :] < (MAX_LEN - lengths)[:, None]] = 0
    return inputs


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """(x - mean) / sqrt(biased var + eps) * weight + bias, written out."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def hand_attention(
    attention: nn.Module, x: torch.Tensor, real: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference's attention by hand: 4 heads of 32 features, scores q.k / sqrt(32), padded
    query rows set to -1e9 (so uniform), `keep` [B, H, L, L] the attention-dropout mask."""
    batch, length, d = x.shape
    heads, width = 4, d // 4
    q, k, v = (layer(x) for layer in (attention.query, attention.key, attention.value))
    outputs = []
    for head in range(heads):
        part = slice(head * width, (head + 1) * width)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(width)
        scores = torch.where(real[:, :, None], scores, torch.full_like(scores, -1e9))
        probs = torch.exp(scores - scores.amax(-1, keepdim=True))
        probs = probs / probs.sum(-1, keepdim=True)
        if keep is not None:
            probs = probs * keep[:, head]
        outputs.append(probs @ v[..., part])
    return attention.out(torch.cat(outputs, dim=-1))


def gelu_tanh(u: torch.Tensor) -> torch.Tensor:
    return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))


# ---- the model ------------------------------------------------------------------------------


def test_time_embedding_is_cos_then_sin():
    t = torch.tensor([0, 1, 7, 31])
    got = timestep_embedding(t, D, 1000 / 32).numpy()
    s = 31.25 * t.numpy().astype(np.float64)
    freqs = np.exp(-np.log(10000.0) * np.arange(64) / 64)
    expected = np.concatenate([np.cos(s[:, None] * freqs), np.sin(s[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-4)  # float32 arguments up to 969 rad


def test_history_is_layernorm_after_dropout():
    """H = LN(Dropout(E[seq])): with a fixed dropout mask, not Dropout(LN(E[seq]))."""
    torch.manual_seed(0)
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper").train()
    nn.init.normal_(model.history_norm.weight, 1.0, 0.1)
    nn.init.normal_(model.history_norm.bias, 0.0, 0.1)
    inputs = paper_inputs(6, seed=1)
    keep = fixed_keep((6, MAX_LEN, D), 0.3, seed=2)
    model.history_dropout = FixedMask(keep)
    with torch.no_grad():
        expected = layer_norm(model.item_embedding.weight[inputs] * keep, model.history_norm)
        torch.testing.assert_close(model.history(inputs), expected, atol=1e-5, rtol=1e-5)


def test_output_is_layernorm_after_dropout():
    """x0_hat = LN(Dropout(h))[last]: with a fixed dropout mask on the blocks' output."""
    torch.manual_seed(0)
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper").eval()
    nn.init.normal_(model.output_norm.weight, 1.0, 0.1)
    nn.init.normal_(model.output_norm.bias, 0.0, 0.1)
    inputs = paper_inputs(6, seed=1)
    keep = fixed_keep((6, D), 0.1, seed=3)
    model.output_dropout = FixedMask(keep)
    x_t, t = torch.randn(6, D), torch.tensor([0, 3, 9, 17, 25, 31])
    lam = torch.randn(6, MAX_LEN, D) * 0.001 + 0.001
    with torch.no_grad():
        history, mask = model.history(inputs), model.attention_mask(inputs)
        got = model.approximate(history, mask, x_t, t, lam)
        z = x_t + model.time_mlp(timestep_embedding(t, D, 1000 / 32))
        h = last_position(model.blocks, history + lam * z[:, None, :], mask)
        torch.testing.assert_close(got, layer_norm(h * keep, model.output_norm), atol=1e-5, rtol=1e-5)


def test_block_by_hand_tanh_gelu_and_query_mask():
    """One `paper` block in eval mode equals the reference's pre-LN block written out: hand
    attention with the padded-query mask, FFN with the tanh GELU."""
    torch.manual_seed(0)
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper").eval()
    block = model.blocks[0]
    for norm in (block.norm_attention, block.norm_ffn):
        nn.init.normal_(norm.weight, 1.0, 0.1)
        nn.init.normal_(norm.bias, 0.0, 0.1)
    inputs = paper_inputs(5, seed=4)
    h = torch.randn(5, MAX_LEN, D) * 2  # large enough for tanh-GELU and exact GELU to differ
    with torch.no_grad():
        got = block(h, model.attention_mask(inputs))
        h1 = h + hand_attention(block.attention, layer_norm(h, block.norm_attention), inputs > 0)
        ffn = block.ffn_out(gelu_tanh(block.ffn_in(layer_norm(h1, block.norm_ffn))))
        torch.testing.assert_close(got, h1 + ffn, atol=2e-5, rtol=1e-5)


def test_paper_attention_dropout_in_train_mode():
    """Train mode drops attention probabilities (p = 0.1): the same seed replays its mask."""
    torch.manual_seed(0)
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper")
    attention = model.blocks[0].attention.train()
    inputs = paper_inputs(3, seed=5)
    x = torch.randn(3, MAX_LEN, D)
    mask = model.attention_mask(inputs)
    with torch.no_grad():
        torch.manual_seed(9)
        got = attention(x, mask)
        torch.manual_seed(9)
        keep = F.dropout(torch.ones(3, 4, MAX_LEN, MAX_LEN), 0.1, training=True)
        assert 0.05 < (keep == 0).float().mean() < 0.15
        torch.testing.assert_close(got, hand_attention(attention, x, inputs > 0, keep), atol=1e-5, rtol=1e-5)
        assert (got - hand_attention(attention, x, inputs > 0)).abs().max() > 1e-2


def test_fast_attention_dropout_in_train_mode():
    """SDPA draws its own mask; train mode must differ from eval mode, and not with dropout 0."""
    torch.manual_seed(0)
    for dropout, differs in ((0.1, True), (0.0, False)):
        model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "fast", dropout=dropout)
        attention = model.blocks[0].attention
        inputs = paper_inputs(3, seed=5)
        x, mask = torch.randn(3, MAX_LEN, D), model.attention_mask(inputs)
        with torch.no_grad():
            trained, evaluated = attention.train()(x, mask), attention.eval()(x, mask)
        assert bool((trained - evaluated).abs().max() > 1e-3) == differs, dropout


def test_loss_uses_the_target_embedding_and_random_t():
    """The loss at a fixed draw depends on t and on x0 = E[target] (through x_t)."""
    torch.manual_seed(0)
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper").eval()
    inputs, targets = paper_inputs(8, seed=6), torch.randint(1, NUM_ITEMS + 1, (8,))
    noise, lam = torch.randn(8, D), torch.randn(8, MAX_LEN, D) * 0.001 + 0.001
    x0 = model.item_embedding.weight[targets].detach()
    t = torch.tensor([0, 3, 5, 9, 12, 20, 27, 31])
    sqrt_ab = torch.cumprod(1 - torch.linspace(0.013125, 0.635, 32, dtype=torch.float64), 0).sqrt()
    expected_x_t = sqrt_ab[t, None].float() * x0 + (1 - sqrt_ab[t, None] ** 2).sqrt().float() * noise
    torch.testing.assert_close(model.q_sample(x0, t, noise), expected_x_t, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        at_t = model.loss(inputs, targets, t=t, noise=noise, lam=lam)
        at_zero = model.loss(inputs, targets, t=torch.zeros_like(t), noise=noise, lam=lam)
    assert abs(at_t.item() - at_zero.item()) > 1e-4
    # The default draw of t is uniform over 0..31 (800 draws: every step appears).
    seen: list[torch.Tensor] = []
    original = model.q_sample
    model.q_sample = lambda x0, t, noise: seen.append(t) or original(x0, t, noise)
    with torch.no_grad():
        for _ in range(100):
            model.loss(inputs, targets)
    assert set(torch.cat(seen).tolist()) == set(range(32))


# ---- the trainer ----------------------------------------------------------------------------


def test_patience_restores_best_weights_that_are_not_the_last(tiny_splits, tmp_path):
    """lr 0.01 for two epochs, then 100x (StepLR gamma 100): validation falls after epoch 2, so
    the best epoch is an early one and the folder must hold its weights, not the last ones."""
    settings = tiny_settings(epochs=10, lr_step=2, lr_gamma=100.0, patience=2)
    summary = train(tiny_splits, tmp_path / "model", settings)
    assert summary["stop_reason"] == "patience"
    assert summary["best_epoch"] in (1, 2) and summary["epochs_run"] == summary["best_epoch"] + 2
    model = load_model_folder(tmp_path / "model")
    result, _ = evaluate_ranks(
        model, tiny_splits, "valid", batch_size=settings.eval_batch_size, seed=settings.seed
    )
    assert result["metrics"] == summary["best_valid"]
    last = json.loads((tmp_path / "model" / "curve.json").read_text())["valid"][-1]
    assert last["NDCG@10"] < summary["best_valid"]["NDCG@10"]


def hand_training_samples(splits, max_len: int) -> Counter:
    """Every prefix of each user's training sequence (all but the last two items) as
    (its last max_len items, next item), from the raw sequences."""
    items, offsets = np.asarray(splits.seq_items), np.asarray(splits.seq_offsets)
    samples: Counter = Counter()
    for user in range(len(offsets) - 1):
        train_sequence = items[offsets[user] : offsets[user + 1] - 2].tolist()
        for k in range(1, len(train_sequence)):
            samples[(tuple(train_sequence[max(0, k - max_len) : k]), train_sequence[k])] += 1
    return samples


def test_an_epoch_trains_every_sample_of_every_batch(tiny_splits, tmp_path, monkeypatch):
    """What reaches the loss in one epoch is exactly every training prefix once, and the curve's
    samples and sample_fingerprint say so (both computed here by hand)."""
    seen: Counter = Counter()
    original = DiffuRec.loss

    def recording_loss(self, inputs, targets, *args, **kwargs):
        for row, target in zip(inputs.tolist(), targets.tolist(), strict=True):
            seen[(tuple(item for item in row if item > 0), target)] += 1
        return original(self, inputs, targets, *args, **kwargs)

    monkeypatch.setattr(DiffuRec, "loss", recording_loss)
    train(tiny_splits, tmp_path / "model", tiny_settings(epochs=1, batch_size=96))
    expected = hand_training_samples(tiny_splits, tiny_splits.max_len)
    assert sum(expected.values()) == 1700
    assert seen == expected
    first = json.loads((tmp_path / "model" / "curve.json").read_text())["train"][0]
    assert first["samples"] == 1700
    assert first["sample_fingerprint"] == sum((i + 1) * 2654435761 % 2**32 for i in range(1700))


# ---- the evaluator --------------------------------------------------------------------------


class TableModel(nn.Module):
    """Scores from a fixed [users, N+1] table, users in order (one batch holding them all)."""

    trims_padding = False

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.config = {"name": "table", "reverse_steps": None}

    def score(self, inputs: torch.Tensor, reverse_steps: int | None = None) -> torch.Tensor:
        assert inputs.size(0) == self.table.size(0)
        return self.table.clone()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_history_masking_uses_only_the_inputs_history(tiny_splits, split):
    """Validation masks the training sequence only; test masks training + validation item.
    Every history item scores 10 (masked, it cannot beat the target), the test target 3, the
    validation target 2: the ranks are counted here by hand from the raw sequences."""
    items, offsets = np.asarray(tiny_splits.seq_items), np.asarray(tiny_splits.seq_offsets)
    users, columns = len(offsets) - 1, tiny_splits.num_items + 1
    drop = {"valid": 2, "test": 1}[split]
    table = torch.zeros(users, columns)
    expected, differs_from_whole_sequence = [], 0
    for user in range(users):
        sequence = items[offsets[user] : offsets[user + 1]].tolist()
        history, target = set(sequence[:-drop]), sequence[-drop]
        table[user, sequence[:-2]] = 10.0
        table[user, sequence[-1]] = 3.0
        table[user, sequence[-2]] = 2.0
        if split == "test":
            table[user, sequence[-2]] = 10.0  # the validation item, part of the test history
        scores = table[user, 1:].tolist()
        rank = 1 + sum(
            1
            for item, value in enumerate(scores, start=1)
            if item != target and item not in history and value >= scores[target - 1]
        )
        expected.append(rank)
        whole = set(sequence) - {target}
        rank_whole = 1 + sum(
            1
            for item, value in enumerate(scores, start=1)
            if item not in whole | {target} and value >= scores[target - 1]
        )
        differs_from_whole_sequence += rank_whole != rank
    result, ranks = evaluate_ranks(TableModel(table), tiny_splits, split, mask_history=True, batch_size=users)
    assert ranks.tolist() == expected
    if split == "valid":
        assert differs_from_whole_sequence > 50  # masking the test item too would change these
    unmasked, _ = evaluate_ranks(TableModel(table), tiny_splits, split, mask_history=False, batch_size=users)
    assert unmasked["metrics"]["NDCG@10"] < result["metrics"]["NDCG@10"]
