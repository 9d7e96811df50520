"""The champion the gate compares a candidate against, measured on the candidate's users.

A registered version's metrics are only comparable with a candidate's when both were measured on
the same split of the same data version (diffurec.gate.same_users). When the champion was
measured on other data, it is downloaded from the registry and evaluated again on the
candidate's splits folder with the candidate's evaluation settings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from diffurec.errors import DiffuRecError
from diffurec.gate import data_version, same_users
from diffurec.metrics import check_identity, check_metric_values

log = logging.getLogger(__name__)

# The candidate's evaluation settings that the champion's re-evaluation repeats.
REEVALUATION_SETTINGS = ("mask_history", "reverse_steps", "batch_size", "seed")


def champion_for(
    name: str,
    candidate: dict,
    splits_dir: str | Path | None,
    mlflow_client: Any,
    tracking_uri: str | None,
    need_ranks: bool = False,
) -> tuple[dict | None, np.ndarray | None]:
    """The current champion of `name` with its metrics on the candidate's users, or None when
    there is no champion (docs/formats.md, the decision's `champion`), and its per-user ranks
    when it was re-evaluated (else None). need_ranks: re-evaluate it on `splits_dir` even when
    it was measured on the candidate's users, for the paired comparison (diffurec.bootstrap)."""
    from diffurec import registry

    current = registry.get_version(name, alias="champion", mlflow_client=mlflow_client)
    if current is None:
        return None, None
    check_metric_values(current["metrics"], f"champion {name} v{current['version']}'s registered metrics")
    champion = {
        "version": current["version"],
        "metrics": current["metrics"],
        "split": current["split"],
        "users": current["users"],
        "data_version": current["data_version"],
        "re_evaluated": False,
    }
    registered = {
        "split": current["split"],
        "users": current["users"],
        "lineage": {"splits_md5": current["data_version"]},
    }
    if same_users(registered, candidate) and not (need_ranks and splits_dir):
        return champion, None
    if not splits_dir:
        raise DiffuRecError(
            f"champion {name} v{current['version']} was measured on data version "
            f"{current['data_version']} ({current['split']}, {current['users']} users), the candidate "
            f"on {data_version(candidate)} ({candidate.get('split')}, {candidate.get('users')} "
            f"users): pass --splits DIR (the candidate's splits) to re-evaluate the champion"
        )
    folder = registry.download_model_folder(
        f"models:/{name}/{current['version']}",
        tracking_uri=tracking_uri,
        manifest_sha256=registered_manifest(current),
    )
    result, ranks = reevaluate(folder, splits_dir, candidate)
    log.info("re-evaluated champion v%s on %s: %s", current["version"], splits_dir, result["metrics"])
    champion.update(
        metrics=result["metrics"],
        split=result.get("split"),
        users=result.get("users"),
        data_version=data_version(candidate),
        re_evaluated=True,
        registered_metrics=current["metrics"],
    )
    return champion, ranks


def reevaluate(model_dir: str | Path, splits_dir: str | Path, candidate: dict) -> tuple[dict, np.ndarray]:
    """Evaluate a model folder on the candidate's splits folder with the candidate's evaluation
    settings (metrics JSON and per-user ranks); refuses a splits folder that is not the one the
    candidate was measured on."""
    from diffurec.data.splits import load_splits
    from diffurec.evaluate import evaluate_ranks
    from diffurec.lineage import data_md5
    from diffurec.model_folder import ITEM_MAP_FILE, check_item_map, load_model_folder

    splits = load_splits(splits_dir)
    if candidate.get("users") is not None and splits.num_users != candidate["users"]:
        raise DiffuRecError(
            f"{splits_dir}: {splits.num_users} users, but the candidate was "
            f"evaluated on {candidate['users']}: not the candidate's splits"
        )
    expected = candidate.get("splits_md5") or data_version(candidate)
    if expected:
        found = data_md5(splits_dir)
        if found != expected:
            raise DiffuRecError(
                f"{splits_dir}: data version {found}, but the candidate was "
                f"evaluated on {expected}: not the candidate's splits"
            )
    model = load_model_folder(model_dir)  # verifies it against its manifest
    check_item_map(model_dir, splits.item_ids, Path(splits_dir) / ITEM_MAP_FILE)
    settings = candidate.get("settings") or {}
    options = {key: settings[key] for key in REEVALUATION_SETTINGS if settings.get(key) is not None}
    return evaluate_ranks(model, splits, split=candidate.get("split", "test"), **options)


def registered_manifest(version: dict) -> str:
    """The manifest digest a registered version was registered with (its `manifest_sha256` tag)."""
    digest = version["tags"].get("manifest_sha256")
    if not digest:
        raise DiffuRecError(
            f"registered model {version['name']} v{version['version']} has no manifest_sha256 tag "
            "(registered before models carried a checksum): register the model folder again"
        )
    return digest


def check_candidate(
    candidate: dict,
    source: str,
    version: dict | None = None,
    baseline: dict | None = None,
    baseline_source: str = "",
    splits_dir: str | Path | None = None,
) -> None:
    """Refuse a candidate's metrics that do not describe what the gate is asked about: with a
    registered `version`, metrics of another model (manifest digest) or other data than the
    version was registered with; a baseline or `splits_dir` of other data than the candidate's."""
    from diffurec.lineage import UNKNOWN, data_md5

    measured = candidate.get("splits_md5")
    if version is not None:
        recorded = version["tags"].get("splits_md5")
        check_identity(
            candidate,
            source,
            manifest_sha256=registered_manifest(version),
            splits_md5=recorded if recorded not in (None, "", UNKNOWN) else None,
            expected_from=f"registered model {version['name']} v{version['version']}",
        )
    elif measured is not None:
        check_identity(candidate, source)  # its own lineage must record these splits
    if baseline is not None and measured and baseline.get("splits_md5") not in (None, measured):
        raise DiffuRecError(
            f"{baseline_source}: measured on splits {baseline['splits_md5']}, the candidate on "
            f"{measured}: not the candidate's data"
        )
    if splits_dir is not None and measured:
        found = data_md5(splits_dir)
        if found != measured:
            raise DiffuRecError(
                f"{splits_dir}: data version {found}, but the candidate was "
                f"evaluated on {measured}: not the candidate's splits"
            )


def same_metrics(registered: dict, candidate: dict) -> bool:
    """True when every metric both dicts hold is equal (to 1e-9): the candidate's metrics JSON is
    the one registered with the version."""
    return all(
        abs(float(registered[key]) - float(candidate[key])) <= 1e-9 for key in registered if key in candidate
    )
