"""SASRec+: causal attention, right-anchored learned positions, full-softmax CE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffurec.models import build_model, model_from_config


def test_causal_attention_last_position_sees_everything_earlier_positions_do_not():
    torch.manual_seed(0)
    model = build_model("sasrec", 100, 20, "dense").eval()
    inputs = torch.randint(1, 101, (4, 20))
    changed = inputs.clone()
    changed[:, -1] = (changed[:, -1] % 100) + 1  # a different most recent item
    with torch.no_grad():
        mask = model.attention_mask(inputs)
    # Position i attends to keys 0..i only.
    assert torch.equal(mask[0, 0], torch.ones(20, 20, dtype=torch.bool).tril())
    assert not torch.allclose(model.score(inputs), model.score(changed))


def test_padded_keys_hidden_and_padding_row_zero():
    model = build_model("sasrec", 100, 10)
    inputs = torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9, 10, 11]])
    mask = model.attention_mask(inputs)[0, 0]
    assert not mask[5, :3].any() and mask[5, 3:6].all()  # real queries never see padding
    assert mask[1, 1] and not mask[1, 0]  # a padded query sees only itself (no NaN rows)
    assert torch.count_nonzero(model.item_embedding.weight[0]) == 0
    assert model.trims_padding and model.requires_training


def test_positions_count_from_the_right():
    """An item's position embedding depends on its distance from the most recent item."""
    torch.manual_seed(1)
    model = build_model("sasrec", 100, 10).eval()
    inputs = torch.tensor([[0, 0, 0, 0, 3, 4, 5]])
    with torch.no_grad():
        model.position_embedding.weight[6:].add_(100.0)  # rows only reachable 6+ from the right
    torch.testing.assert_close(model.score(inputs), model.score(inputs[:, -3:]))


def test_loss_learns_on_real_prefixes(ml100k_splits):
    torch.manual_seed(1997)
    model = build_model("sasrec", ml100k_splits.num_items, ml100k_splits.max_len, "dense")
    inputs = torch.from_numpy(np.asarray(ml100k_splits.train_inputs[-128:]).astype(np.int64))
    targets = torch.from_numpy(np.asarray(ml100k_splits.train_targets[-128:]).astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(inputs, targets).item()
    assert first == pytest.approx(np.log(ml100k_splits.num_items + 1), rel=0.15)  # near uniform
    for _ in range(15):
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.8 * first
    assert model_from_config(model.config).config == model.config
