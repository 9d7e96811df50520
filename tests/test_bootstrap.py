"""The paired bootstrap of the gate's champion comparison, and the per-user rank files it reads.

The interval is checked against an independent oracle: for a paired sample whose differences
have a known standard deviation, the normal approximation mean +- 1.96 sd / sqrt(n). The rank
files are the real output of `diffurec evaluate` (popularity on ML-100K, no server involved).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diffurec import bootstrap, gate
from diffurec.cli import main
from diffurec.errors import DiffuRecError
from diffurec.evaluate import ranking_metrics

BASE = {"min": {"HR@10": 0.0}, "min_margin_over_popularity": {"NDCG@10": -100.0}}
WITH_CONFIDENCE = BASE | {"max_drop_vs_champion": {"NDCG@10": {"relative": 0.02, "confidence": 0.95}}}
POINT_ESTIMATE = BASE | {"max_drop_vs_champion": {"NDCG@10": {"relative": 0.02}}}


def test_the_interval_agrees_with_the_normal_approximation_of_known_variance():
    rng = np.random.default_rng(0)
    users, sd = 4000, 2.0
    champion = rng.normal(10.0, 5.0, users)  # the spread between users, shared by both models
    candidate = champion + rng.normal(-0.3, sd, users)
    result = bootstrap.paired_bootstrap(candidate, champion)
    mean = float(np.mean(candidate - champion))
    half_width = 1.959964 * sd / math.sqrt(users)  # the known sd, not estimated from the sample
    low, high = result["interval"]
    assert result["mean_difference"] == pytest.approx(mean)
    assert low == pytest.approx(mean - half_width, abs=0.1 * half_width)
    assert high == pytest.approx(mean + half_width, abs=0.1 * half_width)
    assert (result["users"], result["resamples"], result["confidence"]) == (4000, 2000, 0.95)
    # Pairing is what makes it narrow: the users' spread (sd 5) would give an interval 3.5x wider.
    assert high - low < 2 * 1.1 * half_width
    # The relative interval is the same resamples divided by the champion's mean.
    rel_low, rel_high = result["relative_interval"]
    assert rel_low == pytest.approx(low / champion.mean(), rel=0.05)
    assert rel_high == pytest.approx(high / champion.mean(), rel=0.05)


def test_a_higher_confidence_widens_the_interval_and_the_seed_fixes_it():
    rng = np.random.default_rng(1)
    champion = rng.normal(5.0, 3.0, 900)
    candidate = champion + rng.normal(0.0, 1.0, 900)
    at_90 = bootstrap.paired_bootstrap(candidate, champion, confidence=0.90)
    at_99 = bootstrap.paired_bootstrap(candidate, champion, confidence=0.99)
    assert at_99["interval"][0] < at_90["interval"][0] < at_90["interval"][1] < at_99["interval"][1]
    assert bootstrap.paired_bootstrap(candidate, champion, confidence=0.90) == at_90
    assert bootstrap.paired_bootstrap(candidate, champion, confidence=0.90, seed=7) != at_90
    with pytest.raises(DiffuRecError, match="same users"):
        bootstrap.paired_bootstrap(candidate, champion[:-1])


def test_per_user_values_average_to_the_evaluators_metrics():
    ranks = np.random.default_rng(2).integers(1, 60, 5000)
    expected = ranking_metrics(ranks)
    for metric, value in expected.items():
        assert bootstrap.mean_metric(ranks, metric) == pytest.approx(value, abs=1e-9)
    assert set(bootstrap.per_user_values(np.array([1, 2, 11]), "HR@10")) == {100.0, 0.0}
    assert bootstrap.per_user_values(np.array([3]), "NDCG@5")[0] == pytest.approx(100 / math.log2(4))


# --- the gate's champion check on per-user ranks ---------------------------------------------


def metrics_of(ranks: np.ndarray, users: int | None = None) -> dict:
    return {
        "metrics": ranking_metrics(ranks),
        "unit": "percent",
        "split": "test",
        "users": users or len(ranks),
        "model": {"name": "diffurec"},
        "lineage": {"splits_md5": "abc.dir"},
    }


def champion_of(ranks: np.ndarray) -> dict:
    return {"version": "1", "metrics": ranking_metrics(ranks), "split": "test", "users": len(ranks)} | {
        "data_version": "abc.dir",
        "re_evaluated": True,
    }


def same_quality_pair(users: int = 943) -> tuple[np.ndarray, np.ndarray]:
    """Two models of equal quality (ranks from one distribution; 30 % of users ranked anew):
    with seed 13 the candidate's NDCG@10 is 4.5 % below the champion's by chance alone."""
    rng = np.random.default_rng(13)
    champion = rng.geometric(0.03, users)
    candidate = champion.copy()
    redrawn = rng.random(users) < 0.3
    candidate[redrawn] = rng.geometric(0.03, int(redrawn.sum()))
    return candidate, champion


def decide(thresholds: dict, candidate: np.ndarray, champion: np.ndarray) -> dict:
    baseline = metrics_of(np.full(len(candidate), 1000))
    return gate.decide(
        metrics_of(candidate), thresholds, baseline, champion_of(champion), paired_ranks=(candidate, champion)
    )


def test_a_tied_candidate_passes_with_confidence_where_the_point_estimate_rejects_it():
    candidate, champion = same_quality_pair()
    point = decide(POINT_ESTIMATE, candidate, champion)
    assert point["passed"] is False  # -4.5 % < -2 %: the noise of 943 users decides
    (check,) = [check for check in point["checks"] if check["kind"] == "change_vs_champion"]
    assert check["value"] == pytest.approx(-0.045, abs=0.001) and "paired" in check  # recorded anyway

    decision = decide(WITH_CONFIDENCE, candidate, champion)
    assert decision["passed"] is True, decision["reason"]
    (check,) = [check for check in decision["checks"] if check["kind"] == "change_vs_champion"]
    paired = check["paired"]
    assert check["name"] == "change vs champion v1 NDCG@10 (relative, 95% interval)"
    assert check["value"] == pytest.approx(paired["relative_interval"][1], abs=1e-6)
    assert check["value"] > -0.02 and check["threshold"] == -0.02
    assert check["estimate"] == pytest.approx(-0.045, abs=0.001) and check["confidence"] == 0.95
    assert paired["users"] == 943 and paired["metric"] == "NDCG@10"
    assert paired["interval"][0] < paired["mean_difference"] < 0 < paired["interval"][1]
    json.dumps(decision, allow_nan=False)
    assert "paired bootstrap NDCG@10 (943 users)" in gate.format_table(
        gate.stamp_decision(decision, None, None, None)
    )


def test_a_clearly_worse_candidate_fails_with_confidence():
    _, champion = same_quality_pair()
    worse = champion * 2  # every target ranked twice as far down: NDCG@10 about a third lower
    decision = decide(WITH_CONFIDENCE, worse, champion)
    assert decision["passed"] is False
    (check,) = [check for check in decision["checks"] if check["kind"] == "change_vs_champion"]
    assert check["passed"] is False and check["value"] < -0.2
    assert decision["failed"] == [check["name"]]


def test_an_absolute_rule_with_confidence_uses_the_points_interval():
    candidate, champion = same_quality_pair()
    rule = BASE | {"max_drop_vs_champion": {"NDCG@10": {"absolute": 0.1, "confidence": 0.9}}}
    decision = decide(rule, candidate, champion)
    (check,) = [check for check in decision["checks"] if check["kind"] == "change_vs_champion"]
    assert check["unit"] == "points" and check["value"] == pytest.approx(
        check["paired"]["interval"][1], abs=1e-6
    )
    assert check["paired"]["confidence"] == 0.9 and decision["passed"] is True


def test_a_champion_with_hits_for_few_users_has_no_relative_interval_and_still_decides():
    """60 users, the champion hits one: some resamples miss it, the relative change is undefined
    there. The point-estimate rule still decides; the confidence rule falls back to points
    (zero allowed, as for a zero champion)."""
    champion = np.full(60, 500)
    champion[0] = 1
    candidate = np.full(60, 400)
    candidate[:2] = 3
    point = decide(POINT_ESTIMATE, candidate, champion)
    (check,) = [check for check in point["checks"] if check["kind"] == "change_vs_champion"]
    assert check["paired"]["relative_interval"] is None and check["unit"] == "fraction"
    confident = decide(WITH_CONFIDENCE, candidate, champion)
    (check,) = [check for check in confident["checks"] if check["kind"] == "change_vs_champion"]
    assert check["unit"] == "points" and check["threshold"] == 0.0
    assert check["value"] == pytest.approx(check["paired"]["interval"][1], abs=1e-6)
    json.dumps([point, confident], allow_nan=False)


def test_confidence_needs_both_models_ranks_and_they_must_be_the_champions():
    candidate, champion = same_quality_pair()
    baseline = metrics_of(np.full(len(candidate), 1000))
    with pytest.raises(DiffuRecError, match=r"`confidence` needs both models' per-user ranks"):
        gate.decide(metrics_of(candidate), WITH_CONFIDENCE, baseline, champion_of(champion))
    with pytest.raises(DiffuRecError, match="not the same evaluation"):
        gate.decide(
            metrics_of(candidate),
            WITH_CONFIDENCE,
            baseline,
            champion_of(champion),
            paired_ranks=(candidate, champion + 1),
        )


# --- rank files written by `diffurec evaluate` -----------------------------------------------


@pytest.fixture(scope="module")
def evaluated(ml100k_splits, tmp_path_factory) -> tuple:
    """`diffurec train --model popularity` + `diffurec evaluate` on ML-100K."""
    folder = tmp_path_factory.mktemp("ranks")
    model, metrics = folder / "model", folder / "metrics.json"
    splits = str(ml100k_splits.path)
    assert (
        main(["train", "--model", "popularity", "--splits", splits, "--out", str(model), "--no-progress"])
        == 0
    )
    assert main(["evaluate", "--model", str(model), "--splits", splits, "--out", str(metrics)]) == 0
    return metrics, json.loads(metrics.read_text())


def test_evaluate_writes_per_user_ranks_beside_the_metrics(evaluated):
    path, metrics = evaluated
    assert metrics["ranks_file"] == "metrics.ranks.npz"
    assert bootstrap.ranks_path(path) == path.with_name("metrics.ranks.npz")
    ranks = bootstrap.read_ranks(path, metrics)
    assert ranks.shape == (943,) and ranks.dtype == np.int64 and ranks.min() >= 1
    with np.load(path.with_name("metrics.ranks.npz"), allow_pickle=False) as data:
        assert data["users"].dtype == np.int32 and list(data["users"][:3]) == [0, 1, 2]
        assert str(data["split"]) == "test"
    for key, value in ranking_metrics(ranks).items():
        assert metrics["metrics"][key] == pytest.approx(value, abs=1e-9)


def test_rank_files_that_do_not_match_their_metrics_are_refused(evaluated, tmp_path):
    path, metrics = evaluated
    with np.load(bootstrap.ranks_path(path), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}

    def variant(**changes) -> str:
        target = tmp_path / "variant.ranks.npz"
        np.savez(target, **(arrays | changes))
        return str(target)

    ranks = arrays["ranks"]
    better = np.where(ranks == ranks.max(), 1, ranks)
    cases = {
        variant(ranks=better): "these ranks give HR@5",
        variant(users=arrays["users"][::-1].copy()): "users must be 0..U-1 in order",
        variant(users=arrays["users"][:-1], ranks=ranks[:-1]): "942 users, but the metrics JSON",
        variant(split=np.array("valid")): "split 'valid'",
        variant(ranks=np.zeros_like(ranks)): "ranks must be integers >= 1",
        str(tmp_path / "missing.npz"): "per-user ranks file not found",
    }
    for ranks_file, message in cases.items():
        with pytest.raises(DiffuRecError, match=message) as error:
            bootstrap.read_ranks(path, metrics, ranks_file)
        assert str(error.value).startswith(ranks_file) and len(str(error.value).splitlines()) == 1
    with pytest.raises(DiffuRecError, match="no `ranks_file`"):
        bootstrap.read_ranks(path, {key: value for key, value in metrics.items() if key != "ranks_file"})
