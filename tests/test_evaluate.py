"""The evaluator on hand-computed score matrices and on real ML-100K splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffurec.evaluate import (
    METRIC_KEYS,
    evaluate,
    ranking_metrics,
    ranking_standard_errors,
    target_ranks,
)
from diffurec.models import build_model


def test_rank_counts_ties_against_the_target_and_ignores_padding():
    #                      pad   1    2    3    4
    scores = torch.tensor(
        [
            [9.0, 0.5, 0.9, 0.1, 0.9],  # target 2 ties item 4 -> rank 2
            [9.0, 0.5, 0.9, 0.1, 0.8],  # target 2 is the best real item -> 1
            [9.0, 0.5, 0.9, 0.1, 0.8],  # target 3 is last -> 4
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )  # constant scores -> last (4)
    targets = torch.tensor([2, 2, 3, 1])
    assert target_ranks(scores, targets).tolist() == [2, 1, 4, 4]


def test_constant_scores_give_zero():
    num_items = 30
    scores = torch.full((5, num_items + 1), 0.25)
    ranks = target_ranks(scores, torch.tensor([1, 7, 15, 21, 30]))
    assert ranks.tolist() == [num_items] * 5
    assert all(value == 0.0 for value in ranking_metrics(ranks).values())


def test_nan_target_ranks_last():
    scores = torch.tensor([[0.0, float("nan"), 0.2, 0.1]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [3]


def test_any_nan_score_of_a_user_counts_against_the_target():
    nan = float("nan")
    #                      pad   1    2    3    4    5    6
    scores = torch.tensor(
        [
            [0.0, 0.9, nan, 0.1, 0.2, 0.3, 0.4],  # target 1 would be first; NaN on item 2 -> 6
            [0.0, 0.9, 0.8, 0.1, 0.2, 0.3, nan],  # the same with the NaN on the last item -> 6
            [0.0, 0.9, 0.8, 0.1, 0.2, 0.3, 0.4],  # no NaN: rank 1
            [nan, 0.9, 0.8, 0.1, 0.2, 0.3, 0.4],  # NaN only on padding, never ranked: rank 1
            [0.0, 0.1, 0.9, 0.8, nan, 0.2, 0.3],  # NaN on a masked history item still counts -> 6
        ]
    )
    targets = torch.tensor([1, 1, 1, 1, 1])
    masked = torch.zeros_like(scores, dtype=torch.bool)
    masked[4, [2, 3, 4]] = True
    assert target_ranks(scores, targets, masked).tolist() == [6, 6, 1, 1, 6]
    # One NaN per user in a model with more than 20 items: every metric is zero.
    many = torch.rand(3, 31)
    many[:, 5] = nan
    ranks = target_ranks(many, torch.tensor([1, 7, 30]))
    assert ranks.tolist() == [30, 30, 30]
    assert all(value == 0.0 for value in ranking_metrics(ranks).values())


def test_history_mask_removes_items_but_never_the_target():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6, 0.5]])
    target = torch.tensor([4])
    assert target_ranks(scores, target).tolist() == [4]
    masked = torch.zeros_like(scores, dtype=torch.bool)
    masked[0, [1, 3]] = True
    assert target_ranks(scores, target, masked).tolist() == [2]


def test_metrics_from_ranks_by_hand():
    ranks = torch.tensor([1, 2, 6, 11, 21])
    metrics = ranking_metrics(ranks)
    assert set(metrics) == set(METRIC_KEYS)
    assert metrics["HR@5"] == pytest.approx(40.0)
    assert metrics["HR@10"] == pytest.approx(60.0)
    assert metrics["HR@20"] == pytest.approx(80.0)
    assert metrics["NDCG@5"] == pytest.approx(100 * (1 + 1 / math.log2(3)) / 5)
    assert metrics["NDCG@10"] == pytest.approx(100 * (1 + 1 / math.log2(3) + 1 / math.log2(7)) / 5)
    assert metrics["NDCG@20"] == pytest.approx(
        100 * (1 + 1 / math.log2(3) + 1 / math.log2(7) + 1 / math.log2(12)) / 5
    )


def test_standard_errors_by_hand():
    # Users' HR@5 hits are 1, 1, 0, 0, 0 (mean 0.4): sample variance (2 * 0.36 + 3 * 0.16) / 4 = 0.3.
    errors = ranking_standard_errors(torch.tensor([1, 2, 6, 11, 21]))
    assert set(errors) == set(METRIC_KEYS)
    assert errors["HR@5"] == pytest.approx(100 * math.sqrt(0.3 / 5))
    gains = [1.0, 1 / math.log2(3), 0.0, 0.0, 0.0]
    mean = sum(gains) / 5
    variance = sum((g - mean) ** 2 for g in gains) / 4
    assert errors["NDCG@5"] == pytest.approx(100 * math.sqrt(variance / 5))
    assert errors["HR@20"] == pytest.approx(100 * math.sqrt(0.2 / 5))  # hits 1, 1, 1, 1, 0
    assert all(math.isnan(v) for v in ranking_standard_errors(torch.tensor([3])).values())


def numpy_popularity_metrics(splits, mask_history):
    """Pessimistic full-ranking metrics of item counts, computed independently with NumPy."""
    counts = np.bincount(np.asarray(splits.train_targets), minlength=splits.num_items + 1)[1:].astype(float)
    targets = np.asarray(splits.test_targets) - 1
    items, offsets = splits.history("test")
    ranks = []
    for user, target in enumerate(targets):
        scores = counts.copy()
        if mask_history:
            seen = np.asarray(items[offsets[user] : offsets[user + 1]]) - 1
            scores[seen[seen != target]] = -np.inf
        ranks.append(1 + np.sum(scores >= scores[target]) - 1)
    ranks = np.array(ranks)
    out = {}
    for k in (5, 10, 20):
        out[f"HR@{k}"] = 100 * np.mean(ranks <= k)
        out[f"NDCG@{k}"] = 100 * np.mean(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0))
    return out


@pytest.mark.parametrize("mask_history", [False, True])
def test_popularity_on_ml100k_matches_numpy(ml100k_splits, mask_history):
    splits = ml100k_splits
    model = build_model("popularity", splits.num_items, splits.max_len).fit(splits.train_targets)
    result = evaluate(model, splits, "test", mask_history=mask_history, batch_size=100)
    expected = numpy_popularity_metrics(splits, mask_history)
    for key in METRIC_KEYS:
        assert result["metrics"][key] == pytest.approx(expected[key], abs=1e-9), key
    assert result["users"] == splits.num_users == 943
    for k in (5, 10, 20):  # a hit is Bernoulli(p): the sample SE is sqrt(p (1 - p) / (users - 1))
        p = expected[f"HR@{k}"] / 100
        assert result["standard_error"][f"HR@{k}"] == pytest.approx(100 * math.sqrt(p * (1 - p) / 942))
    assert result["settings"]["mask_history"] is mask_history
    assert result["settings"]["exclude_padding"] is True and result["settings"]["ties"] == "pessimistic"
    assert result["unit"] == "percent" and result["split"] == "test"
    assert result["model"] == {"name": "popularity", "preset": "default"}
    assert result["seconds"] > 0 and result["users_per_second"] > 0
    # popularity is a real floor: clearly above random (10/1682 = 0.6 %) on ML-100K
    assert result["metrics"]["HR@10"] > 3.0


def test_batching_and_length_sorting_do_not_change_metrics(ml100k_splits):
    """SASRec+ in eval mode is deterministic, so batch size and sorted, trimmed batches must
    give exactly the metrics of one plain full-width pass."""
    torch.manual_seed(0)
    model = build_model("sasrec", ml100k_splits.num_items, ml100k_splits.max_len, "dense")
    sorted_trimmed = evaluate(model, ml100k_splits, "valid", batch_size=128)
    assert sorted_trimmed["settings"]["sorted_by_length"] is True
    model.trims_padding = False  # instance attribute: plain order, full 50-wide batches
    plain = evaluate(model, ml100k_splits, "valid", batch_size=1000)
    assert plain["settings"]["sorted_by_length"] is False
    for key in METRIC_KEYS:
        assert sorted_trimmed["metrics"][key] == pytest.approx(plain["metrics"][key], abs=1e-9)
    assert model.training  # training mode restored


def first_users(splits, count):
    """The splits of the first `count` users of a real set (same items, same windows)."""
    from diffurec.data.splits import build_splits

    offsets = np.asarray(splits.seq_offsets[: count + 1])
    return build_splits(
        np.asarray(splits.seq_items[: offsets[-1]]),
        offsets,
        splits.item_ids,
        splits.user_ids[:count],
        max_len=splits.max_len,
    )


def test_diffurec_evaluation_is_seeded_and_records_reverse_steps(ml100k_splits):
    splits = first_users(ml100k_splits, 200)
    model = build_model("diffurec", splits.num_items, splits.max_len, "fast")
    first = evaluate(model, splits, "valid", batch_size=64, seed=7)
    again = evaluate(model, splits, "valid", batch_size=64, seed=7)
    assert first["metrics"] == again["metrics"] and first["users"] == 200
    assert first["settings"]["reverse_steps"] == 1
    assert first["settings"]["seed"] == 7
    two = evaluate(model, splits, "valid", batch_size=64, reverse_steps=2)
    assert two["settings"]["reverse_steps"] == 2


def test_unknown_split_is_a_user_error(ml100k_splits):
    from diffurec.errors import DiffuRecError

    model = build_model("popularity", ml100k_splits.num_items, ml100k_splits.max_len)
    with pytest.raises(DiffuRecError, match="split"):
        evaluate(model, ml100k_splits, "train")
