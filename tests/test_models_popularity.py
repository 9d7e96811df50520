"""Most-popular items on real ML-100K."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffurec.models import build_model


def test_counts_are_training_target_frequencies(ml100k_splits):
    splits = ml100k_splits
    model = build_model("popularity", splits.num_items, splits.max_len)
    assert not model.requires_training
    model.fit(splits.train_targets)
    counts = np.bincount(np.asarray(splits.train_targets), minlength=splits.num_items + 1)
    assert model.counts.tolist() == counts.astype(float).tolist()
    assert model.counts.sum().item() == len(splits.train_targets)
    scores = model.score(torch.from_numpy(np.asarray(splits.test_inputs[:3]).astype(np.int64)))
    assert scores.shape == (3, splits.num_items + 1)
    assert torch.equal(scores[0], scores[2])  # same for every user
    top = torch.topk(scores[0, 1:], 10).indices + 1
    assert set(top.tolist()) == set((np.argsort(-counts[1:], kind="stable")[:10] + 1).tolist())
    assert "counts" in model.state_dict()
    with pytest.raises(TypeError):
        model.loss(None, None)


def test_fit_rejects_out_of_range_items(ml100k_splits):
    model = build_model("popularity", ml100k_splits.num_items, ml100k_splits.max_len)
    with pytest.raises(ValueError):
        model.fit(np.array([0, 1, 2]))
    with pytest.raises(ValueError):
        model.fit(np.array([ml100k_splits.num_items + 1]))
