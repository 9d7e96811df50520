"""Preprocessing: raw interactions -> cleaned chronological sequences -> splits folder.

Steps, in order (each one counted in stats.json):
1. optional rating threshold (implicit feedback: every remaining interaction counts);
2. exact duplicate rows dropped (same user, item, timestamp and rating; only when the source
   has timestamps: without them a repeat is a real repeated interaction); with
   dedup="keep-first" every later repeat of a (user, item) pair is dropped as well;
3. optional iterative k-core (users and items with at least k interactions);
4. users with fewer than 3 interactions dropped (leave-one-out needs train, valid, test);
5. stable chronological order per user (ties keep file order; no timestamps: file order);
6. users indexed 0..U-1 and items 1..N by first appearance in the ordered sequences
   (0 is padding), so a file whose ids already are 1..N in that order keeps them;
7. leave-one-out split and every-prefix training samples (diffurec.data.splits).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from diffurec.data.readers import read_interactions
from diffurec.data.splits import DEFAULT_MAX_LEN, MIN_SEQUENCE_LENGTH, build_splits, write_splits
from diffurec.errors import DiffuRecError
from diffurec.files import file_md5

log = logging.getLogger(__name__)

DEDUP_POLICIES = ("keep-all", "keep-first")
TIE_RULE_STABLE = "stable sort by timestamp: equal timestamps keep file order"
TIE_RULE_FILE = "no timestamps: file order is the chronological order"


def kcore(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than k interactions until none is left."""
    while True:
        user_counts = frame.groupby("user", sort=False)["item"].transform("size")
        item_counts = frame.groupby("item", sort=False)["user"].transform("size")
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return frame
        frame = frame[keep.to_numpy()]


def clean_interactions(
    frame: pd.DataFrame,
    min_rating: float | None = None,
    dedup: str = "keep-all",
    kcore_k: int = 0,
    source: str = "input",
):
    """Apply steps 1-5; returns (ordered frame, dropped counts). Raises when no user is left."""
    if dedup not in DEDUP_POLICIES:
        raise DiffuRecError(f"unknown duplicate policy {dedup!r}: use {' or '.join(DEDUP_POLICIES)}")
    dropped = {}
    if min_rating is not None:
        if "rating" not in frame:
            raise DiffuRecError(f"{source}: --min-rating given but the file has no rating column")
        keep = frame["rating"].to_numpy() >= min_rating
        dropped["below_min_rating"] = int((~keep).sum())
        frame = frame[keep]

    # Order first, so "first" and "last" mean chronological. lexsort is stable; `row` breaks
    # timestamp ties by file order explicitly.
    user_codes = pd.factorize(frame["user"], sort=False)[0]
    keys = [frame["row"].to_numpy()]
    if "timestamp" in frame:
        keys.append(frame["timestamp"].to_numpy())
    keys.append(user_codes)
    frame = frame.iloc[np.lexsort(keys)]

    if "timestamp" in frame:
        subset = [c for c in ("user", "item", "timestamp", "rating") if c in frame]
        exact = frame.duplicated(subset=subset, keep="first").to_numpy()
        dropped["exact_duplicates"] = int(exact.sum())
        frame = frame[~exact]
    if dedup == "keep-first":
        repeat = frame.duplicated(subset=["user", "item"], keep="first").to_numpy()
        dropped["repeated_user_item"] = int(repeat.sum())
        frame = frame[~repeat]
    if kcore_k and kcore_k > 1:
        before = len(frame)
        frame = kcore(frame, kcore_k)
        dropped["kcore"] = before - len(frame)

    lengths = frame.groupby("user", sort=False)["item"].transform("size").to_numpy()
    short = lengths < MIN_SEQUENCE_LENGTH
    dropped["short_user_interactions"] = int(short.sum())
    dropped["short_users"] = int(frame.loc[short, "user"].nunique())
    frame = frame[~short]
    if len(frame) == 0:
        raise DiffuRecError(
            f"{source}: no user has at least {MIN_SEQUENCE_LENGTH} interactions "
            f"after cleaning ({_describe_dropped(dropped)}); nothing to split"
        )
    return frame, dropped


def _describe_dropped(dropped: dict) -> str:
    text = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in dropped.items() if v)
    return text or "nothing was dropped"


def length_distribution(lengths: np.ndarray) -> dict:
    quantiles = np.percentile(lengths, [10, 25, 50, 75, 90, 99])
    edges = [3, 5, 10, 20, 50, 100, 200, 500, 1000]
    bins = {}
    for lo, hi in zip(edges, edges[1:] + [None], strict=True):
        inside = (lengths >= lo) & ((lengths < hi) if hi else True)
        bins[f"{lo}-{hi - 1}" if hi else f"{lo}+"] = int(inside.sum())
    return {
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 4),
        **{f"p{p}": float(q) for p, q in zip((10, 25, 50, 75, 90, 99), quantiles, strict=True)},
        "histogram": bins,
    }


def preprocess_frame(
    frame: pd.DataFrame,
    out,
    max_len: int = DEFAULT_MAX_LEN,
    min_rating: float | None = None,
    dedup: str = "keep-all",
    kcore_k: int = 0,
    source: dict | None = None,
) -> dict:
    """Clean, order, remap and split a read_interactions frame; write the splits folder."""
    source = dict(source or {})
    rows_read = len(frame)
    has_time = "timestamp" in frame
    ordered, dropped = clean_interactions(
        frame, min_rating, dedup, kcore_k, source=source.get("path", "input")
    )
    user_codes, user_ids = pd.factorize(ordered["user"], sort=False)
    item_codes, item_ids = pd.factorize(ordered["item"], sort=False)
    counts = np.bincount(user_codes, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])

    settings = {"min_rating": min_rating, "dedup": dedup, "kcore": kcore_k, "max_len": max_len}
    meta = {
        "source": source,
        "tie_rule": TIE_RULE_STABLE if has_time else TIE_RULE_FILE,
        "item_index_rule": "1..N by first appearance in the ordered sequences (0 = padding)",
        "user_index_rule": "0..U-1 by first appearance in the file",
        "split": "leave-one-out: last item test, second to last validation, rest train",
        "samples": "every prefix of each training sequence, last max_len items, left-padded",
        "preprocessing": settings,
    }
    splits = build_splits(
        (item_codes + 1).astype(np.int32), offsets, list(item_ids), list(user_ids), max_len=max_len, meta=meta
    )
    stats = {
        "rows_read": rows_read,
        "rows_dropped": rows_read - len(ordered),
        "dropped": dropped,
        "users": splits.num_users,
        "items": splits.num_items,
        "interactions": int(len(ordered)),
        "train_samples": int(len(splits.train_targets)),
        "density": round(len(ordered) / (splits.num_users * splits.num_items), 6),
        "sequence_length": length_distribution(counts),
        "inputs_truncated_to_max_len": int((counts - 2 > max_len).sum()),
        "tie_rule": meta["tie_rule"],
        "source": source,
        "settings": settings,
    }
    if has_time:
        stamps = ordered["timestamp"].to_numpy()
        stats["timestamps"] = {
            "min": float(stamps.min()),
            "max": float(stamps.max()),
            "ties_within_user": int(ordered.duplicated(["user", "timestamp"]).sum()),
        }
    write_splits(splits, out, stats=stats)
    log.info(
        "wrote %s: %d users, %d items, %d interactions, %d training samples",
        out,
        stats["users"],
        stats["items"],
        stats["interactions"],
        stats["train_samples"],
    )
    return stats


def preprocess_file(
    path,
    out,
    max_len: int = DEFAULT_MAX_LEN,
    format: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
    sep: str | None = None,
    min_rating: float | None = None,
    dedup: str = "keep-all",
    kcore_k: int = 0,
) -> dict:
    """Read any supported file and write its splits folder to `out`; returns stats.json's dict."""
    path = Path(path)
    started = time.perf_counter()
    frame = read_interactions(
        path,
        format=format,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        sep=sep,
    )
    source = {
        "path": str(path),
        "format": frame.attrs.get("format"),
        "columns": frame.attrs.get("source_columns", {}),
        "md5": file_md5(path),
    }
    stats = preprocess_frame(
        frame, out, max_len=max_len, min_rating=min_rating, dedup=dedup, kcore_k=kcore_k, source=source
    )
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return stats
