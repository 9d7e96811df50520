"""The ranking metrics every step reports (docs/formats.md): HR@K and NDCG@K in percent, and
the checks that a metrics JSON makes sense and describes the model and data it claims.

No torch here: the gate, the registry and the command line read metric names without loading
a model.
"""

from __future__ import annotations

import math
from itertools import pairwise

from diffurec.errors import DiffuRecError

KS = (5, 10, 20)
METRIC_KEYS = tuple(f"HR@{k}" for k in KS) + tuple(f"NDCG@{k}" for k in KS)
# Sums of up to millions of per-user values: allow for rounding, nothing more.
TOLERANCE = 1e-9


def check_metric_values(metrics: dict, source: str) -> None:
    """Refuse metric values that no evaluation can produce: each a finite number in 0..100,
    NDCG@K <= HR@K (a user's NDCG gain is at most its hit), HR@5 <= HR@10 <= HR@20 and NDCG
    likewise (a hit in the top 5 is one in the top 10), users > 0.

    `metrics` is a metrics JSON (its `metrics` values, and `users` when it has one) or the
    values alone; `source` names it in the error (a file, or "champion v3")."""
    inner = metrics.get("metrics")
    values: dict = inner if isinstance(inner, dict) else metrics
    for key in METRIC_KEYS:
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DiffuRecError(f"{source}: metrics.{key} is {value!r}, expected a finite number")
        if not -TOLERANCE <= value <= 100 + TOLERANCE:
            raise DiffuRecError(f"{source}: metrics.{key} is {value}, outside 0..100 (percent)")
    for k in KS:
        if values[f"NDCG@{k}"] > values[f"HR@{k}"] + TOLERANCE:
            raise DiffuRecError(
                f"{source}: NDCG@{k} {values[f'NDCG@{k}']} exceeds HR@{k} {values[f'HR@{k}']}, "
                "which no ranking gives"
            )
    for name in ("HR", "NDCG"):
        for low, high in pairwise(KS):
            if values[f"{name}@{low}"] > values[f"{name}@{high}"] + TOLERANCE:
                raise DiffuRecError(
                    f"{source}: {name}@{low} {values[f'{name}@{low}']} exceeds {name}@{high} "
                    f"{values[f'{name}@{high}']}, which no ranking gives"
                )
    if values is not metrics and "users" in metrics:
        users = metrics["users"]
        if isinstance(users, bool) or not isinstance(users, int) or users <= 0:
            raise DiffuRecError(f"{source}: users is {users!r}, expected a count > 0")


def manifest_digest(metrics_json: dict, source: str) -> str:
    """The model manifest digest a metrics JSON records (`model.manifest_sha256`)."""
    digest = (metrics_json.get("model") or {}).get("manifest_sha256")
    if not isinstance(digest, str) or not digest:
        raise DiffuRecError(
            f"{source}: no model.manifest_sha256 (which model these metrics describe); "
            "run `diffurec evaluate` again"
        )
    return digest


def splits_digest(metrics_json: dict, source: str) -> str:
    """The md5 of the splits folder a metrics JSON was measured on (`splits_md5`); refuses a
    metrics JSON whose lineage records other splits (the data the model was trained on)."""
    measured = metrics_json.get("splits_md5")
    if not isinstance(measured, str) or not measured:
        raise DiffuRecError(
            f"{source}: no splits_md5 (which data these metrics were measured on); "
            "run `diffurec evaluate` again"
        )
    recorded = (metrics_json.get("lineage") or {}).get("splits_md5")
    if recorded and recorded != measured:
        raise DiffuRecError(
            f"{source}: measured on splits {measured}, but its lineage records splits {recorded}: "
            "metrics of other data than the model's"
        )
    return measured


def check_identity(
    metrics_json: dict,
    source: str,
    manifest_sha256: str | None = None,
    splits_md5: str | None = None,
    expected_from: str = "",
) -> None:
    """Refuse metrics of another model (model.manifest_sha256 differs from `manifest_sha256`) or
    of other data (splits_md5 differs from `splits_md5`, or from the lineage's); `expected_from`
    says where the expected values come from (e.g. the model folder)."""
    where = f" ({expected_from})" if expected_from else ""
    if manifest_sha256 is not None:
        found = manifest_digest(metrics_json, source)
        if found != manifest_sha256:
            raise DiffuRecError(
                f"{source}: metrics of another model: model.manifest_sha256 is {found}, "
                f"the model's manifest is {manifest_sha256}{where}"
            )
    found_splits = splits_digest(metrics_json, source)
    if splits_md5 is not None and found_splits != splits_md5:
        raise DiffuRecError(f"{source}: measured on splits {found_splits}, not on splits {splits_md5}{where}")
