"""Per-user ranks and the paired bootstrap the gate compares a candidate with its champion by.

`diffurec evaluate` writes each user's 1-based target rank beside the metrics JSON
(`<metrics without .json>.ranks.npz`, docs/formats.md). Two models ranked on the same users give
paired per-user metric values; the difference of their means is the change the gate checks, and
resampling users with replacement (the same resampled users for both models) gives its
percentile interval. Pairing removes the spread between users, which both models share, so the
interval is far narrower than one from two independent samples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffurec.errors import DiffuRecError, located
from diffurec.metrics import KS, METRIC_KEYS

RANKS_SUFFIX = ".ranks.npz"
RANKS_FORMAT = "diffurec-ranks"
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 1997
# Values of one resample block: bounds memory at about 8 bytes x this, whatever the user count.
BLOCK_VALUES = 4_000_000
# A rank file must reproduce its metrics JSON's values (percent) to this.
METRIC_TOLERANCE = 1e-6


def ranks_path(metrics_path: str | os.PathLike) -> Path:
    """Where the per-user ranks of a metrics JSON live: beside it, `.json` replaced."""
    path = Path(metrics_path)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(stem + RANKS_SUFFIX)


def write_ranks(metrics_path: str | os.PathLike, result: dict, ranks: np.ndarray) -> Path:
    """Write `ranks` (user i's 1-based target rank at index i) beside the metrics JSON that
    `result` will become, with the identity of what was measured, and record the file's name in
    `result["ranks_file"]`. Write the metrics JSON after this: it names a complete file."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.shape != (result["users"],) or (ranks < 1).any():
        raise ValueError(f"expected {result['users']} ranks >= 1, got shape {ranks.shape}")
    path = ranks_path(metrics_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        arrays: dict[str, Any] = {
            **_identity(result),
            "users": np.arange(len(ranks), dtype=np.int32),
            "ranks": ranks,
        }
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    result["ranks_file"] = path.name
    return path


def _identity(result: dict) -> dict[str, np.ndarray]:
    """What a rank file records about what was measured, as 0-d string arrays (no pickles)."""
    model = result.get("model") or {}
    lineage = result.get("lineage") or {}
    return {
        "format": np.array(RANKS_FORMAT),
        "split": np.array(str(result.get("split") or "")),
        "manifest_sha256": np.array(str(model.get("manifest_sha256") or "")),
        "splits_md5": np.array(str(result.get("splits_md5") or lineage.get("splits_md5") or "")),
    }


def read_ranks(
    metrics_path: str | os.PathLike, metrics: dict, ranks_file: str | os.PathLike | None = None
) -> np.ndarray:
    """The per-user ranks of the metrics JSON at `metrics_path` (already read: `metrics`), user i
    at index i. `ranks_file`: another location (default: the JSON's `ranks_file`, beside it).
    Refuses a file of other users, another split, model or data, or one whose ranks do not
    give the JSON's metrics."""
    if ranks_file is None:
        if not metrics.get("ranks_file"):
            raise located(metrics_path, "no `ranks_file` (per-user ranks): evaluate again to write them")
        path = Path(metrics_path).parent / str(metrics["ranks_file"])
    else:
        path = Path(ranks_file)
    if not path.is_file():
        raise located(path, "per-user ranks file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise located(path, f"not a ranks file ({error})") from None
    missing = {"format", "users", "ranks", *_identity({})} - set(arrays)
    if missing or str(arrays["format"]) != RANKS_FORMAT:
        raise located(path, f"not a {RANKS_FORMAT} file (missing {', '.join(sorted(missing)) or 'format'})")
    users, ranks = arrays["users"], arrays["ranks"]
    count = metrics.get("users")
    if users.ndim != 1 or ranks.shape != users.shape or not np.array_equal(users, np.arange(len(users))):
        raise located(path, "users must be 0..U-1 in order, one rank each")
    if len(users) != count:
        raise located(path, f"{len(users)} users, but the metrics JSON {metrics_path} has {count}")
    if not np.issubdtype(ranks.dtype, np.integer) or (ranks < 1).any():
        raise located(path, "ranks must be integers >= 1")
    expected = _identity(metrics)
    for key in ("split", "manifest_sha256", "splits_md5"):
        if str(expected[key]) and str(arrays[key]) != str(expected[key]):
            raise located(path, f"{key} {str(arrays[key])!r}, but {metrics_path} has {str(expected[key])!r}")
    for key in METRIC_KEYS:
        value, stated = mean_metric(ranks, key), float(metrics["metrics"][key])
        if abs(value - stated) > METRIC_TOLERANCE:
            raise located(path, f"these ranks give {key} {value:.6f}, but {metrics_path} says {stated:.6f}")
    return ranks.astype(np.int64)


def per_user_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each user's HR@K or NDCG@K in percent (one target per user), from 1-based ranks."""
    kind, _, k = metric.partition("@")
    if metric not in METRIC_KEYS or int(k) not in KS:
        raise DiffuRecError(f"unknown metric {metric!r} (expected one of {', '.join(METRIC_KEYS)})")
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= int(k)
    gain = 1.0 if kind == "HR" else 1.0 / np.log2(ranks + 1.0)
    return np.where(hit, 100.0 * gain, 0.0)


def mean_metric(ranks: np.ndarray, metric: str) -> float:
    return float(per_user_values(ranks, metric).mean()) if len(ranks) else 0.0


def paired_bootstrap(
    candidate: np.ndarray,
    champion: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Percentile bootstrap of mean(candidate) - mean(champion) over paired per-user values.

    Returns {"users", "mean_difference", "interval": [low, high], "relative_difference",
    "relative_interval", "confidence", "resamples", "seed"}. The relative change is
    (mean candidate - mean champion) / mean champion per resample; it is null when the
    champion's mean is 0, its interval null also when some resample's is.
    """
    candidate, champion = np.asarray(candidate, np.float64), np.asarray(champion, np.float64)
    if candidate.shape != champion.shape or candidate.ndim != 1 or len(candidate) == 0:
        raise DiffuRecError(
            f"paired comparison: expected the same users for both models, got {candidate.shape} and "
            f"{champion.shape} values"
        )
    if not 0.0 < confidence < 1.0 or resamples < 1:
        raise DiffuRecError(f"paired comparison: confidence {confidence} not in (0, 1) or no resamples")
    users = len(candidate)
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, 2))
    block = max(1, BLOCK_VALUES // users)
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        picked = rng.integers(0, users, size=(stop - start, users))  # the same users for both
        # Two 1-d gathers are about 3x faster than one of [users, 2] pairs.
        means[start:stop, 0] = candidate[picked].mean(axis=1)
        means[start:stop, 1] = champion[picked].mean(axis=1)
    differences = means[:, 0] - means[:, 1]
    low_q, high_q = (1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0
    # inverted_cdf: the bounds are resampled values themselves, not interpolations.
    low, high = np.quantile(differences, [low_q, high_q], method="inverted_cdf")
    mean_champion = float(champion.mean())
    relative = relative_interval = None
    if mean_champion > 0:
        relative = (float(candidate.mean()) - mean_champion) / mean_champion
    if mean_champion > 0 and (means[:, 1] > 0).all():
        rel_low, rel_high = np.quantile(differences / means[:, 1], [low_q, high_q], method="inverted_cdf")
        relative_interval = [float(rel_low), float(rel_high)]
    return {
        "users": users,
        "mean_difference": float(candidate.mean() - champion.mean()),
        "interval": [float(low), float(high)],
        "relative_difference": relative,
        "relative_interval": relative_interval,
        "confidence": float(confidence),
        "resamples": int(resamples),
        "seed": int(seed),
    }


def compare_ranks(
    candidate: np.ndarray,
    champion: np.ndarray,
    metric: str,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """paired_bootstrap of `metric` (percent points) from both models' per-user ranks."""
    result = paired_bootstrap(
        per_user_values(candidate, metric), per_user_values(champion, metric), confidence, resamples, seed
    )
    return {"metric": metric, **result}
