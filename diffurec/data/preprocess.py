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

from diffurec.data.readers import LoadedLog, duckdb_session, load_frame, load_interactions
from diffurec.data.splits import DEFAULT_MAX_LEN, MIN_SEQUENCE_LENGTH, build_splits, write_splits
from diffurec.errors import DiffuRecError
from diffurec.files import file_md5, scratch_folder

log = logging.getLogger(__name__)

DEDUP_POLICIES = ("keep-all", "keep-first")
TIE_RULE_STABLE = "stable sort by timestamp: equal timestamps keep file order"
TIE_RULE_FILE = "no timestamps: file order is the chronological order"


def _count(con, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _replace(con, table: str, select: str) -> int:
    """Table `table` := the query (which may read the table itself); returns its row count."""
    con.execute(f"CREATE OR REPLACE TABLE {table}_next AS {select}")
    con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(f"ALTER TABLE {table}_next RENAME TO {table}")
    return _count(con, table)


def clean_interactions(
    con,
    loaded: LoadedLog,
    min_rating: float | None = None,
    dedup: str = "keep-all",
    kcore_k: int = 0,
    source: str = "input",
) -> dict[str, int]:
    """Apply steps 1-5 in DuckDB to the view `interactions`; returns the dropped counts and
    leaves tables `users` (user, ufirst: its first position as read, the key users are
    ordered by), `items` (item, icode) and `cleaned` (ufirst, icode, timestamp, seq: integers
    only, so the heavy steps never touch the string ids). Raises when no user is left."""
    if dedup not in DEDUP_POLICIES:
        raise DiffuRecError(f"unknown duplicate policy {dedup!r}: use {' or '.join(DEDUP_POLICIES)}")
    has_time, has_rating = "timestamp" in loaded.roles, "rating" in loaded.roles
    dropped = {}
    kept = loaded.rows
    where = ""
    if min_rating is not None:
        if not has_rating:
            raise DiffuRecError(f"{source}: --min-rating given but the file has no rating column")
        where = f"WHERE rating >= {float(min_rating)!r}"
    _replace(con, "users", f'SELECT "user", min(pos) AS ufirst FROM interactions {where} GROUP BY "user"')
    _replace(con, "items", f"SELECT item, min(pos) AS icode FROM interactions {where} GROUP BY item")
    values = ", t.timestamp" if has_time else ""
    values += ", t.rating" if has_rating and has_time else ""  # the rating only tells exact duplicates
    left = _replace(
        con,
        "cleaned",
        f"SELECT u.ufirst, i.icode{values}, t.seq FROM interactions t "
        f'JOIN users u USING ("user") JOIN items i USING (item) {where}',
    )
    if min_rating is not None:
        dropped["below_min_rating"], kept = kept - left, left
    if has_time:  # the first of each exact duplicate in file order stays
        exact = "ufirst, icode, timestamp" + (", rating" if has_rating else "")
        left = _replace(con, "cleaned", f"SELECT {exact}, min(seq) AS seq FROM cleaned GROUP BY {exact}")
        dropped["exact_duplicates"], kept = kept - left, left
    order = "timestamp, seq" if has_time else "seq"
    if dedup == "keep-first":
        left = _replace(
            con,
            "cleaned",
            "SELECT * FROM cleaned QUALIFY row_number() OVER "
            f"(PARTITION BY ufirst, icode ORDER BY {order}) = 1",
        )
        dropped["repeated_user_item"], kept = kept - left, left
    if kcore_k and kcore_k > 1:
        before = kept
        while True:
            left = _replace(
                con,
                "cleaned",
                "SELECT * FROM cleaned WHERE ufirst IN (SELECT ufirst FROM cleaned GROUP BY ufirst "
                f"HAVING count(*) >= {int(kcore_k)}) AND icode IN (SELECT icode FROM cleaned GROUP BY icode "
                f"HAVING count(*) >= {int(kcore_k)})",
            )
            if left == kept:
                break
            kept = left
        dropped["kcore"] = before - kept

    short_users, short_rows = con.execute(
        "SELECT count(*), coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM cleaned GROUP BY ufirst) "
        f"WHERE n < {MIN_SEQUENCE_LENGTH}"
    ).fetchone()
    dropped["short_user_interactions"] = int(short_rows)
    dropped["short_users"] = int(short_users)
    if short_rows:
        kept = _replace(
            con,
            "cleaned",
            "SELECT * FROM cleaned WHERE ufirst IN (SELECT ufirst FROM cleaned GROUP BY ufirst "
            f"HAVING count(*) >= {MIN_SEQUENCE_LENGTH})",
        )
    if kept == 0:
        raise DiffuRecError(
            f"{source}: no user has at least {MIN_SEQUENCE_LENGTH} interactions "
            f"after cleaning ({_describe_dropped(dropped)}); nothing to split"
        )
    return dropped


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


def preprocess_loaded(
    con,
    loaded: LoadedLog,
    out,
    max_len: int = DEFAULT_MAX_LEN,
    min_rating: float | None = None,
    dedup: str = "keep-all",
    kcore_k: int = 0,
    source: dict | None = None,
) -> dict:
    """Clean, order, remap and split the log load_interactions/load_frame put into `con`; write
    the splits folder. Everything up to the final integer arrays runs in DuckDB."""
    source = dict(source or {})
    has_time = "timestamp" in loaded.roles
    dropped = clean_interactions(con, loaded, min_rating, dedup, kcore_k, source=source.get("path", "input"))
    order = "timestamp, seq" if has_time else "seq"
    interactions = _count(con, "cleaned")
    key = f"c.ufirst, c.{order.replace(', ', ', c.')}"  # the order of the sequences
    # Item index: rank by first appearance in the ordered sequences (the smallest key of its rows).
    _replace(
        con,
        "item_index",
        "SELECT icode, row_number() OVER (ORDER BY first) AS idx FROM "
        f"(SELECT icode, min(({key})) AS first FROM cleaned c GROUP BY icode)",
    )
    seq_items = con.execute(
        f"SELECT CAST(x.idx AS INTEGER) AS idx FROM cleaned c JOIN item_index x USING (icode) ORDER BY {key}"
    ).fetchnumpy()["idx"]
    found = con.execute("SELECT count(*) AS n FROM cleaned GROUP BY ufirst ORDER BY ufirst").fetchnumpy()
    counts = np.asarray(found["n"], dtype=np.int64)
    # The ids come back only for the two map files (one string per user and per item).
    user_ids = con.execute(
        'SELECT "user" FROM users WHERE ufirst IN (SELECT ufirst FROM cleaned) ORDER BY ufirst'
    ).fetchnumpy()["user"]
    item_ids = con.execute("SELECT item FROM items JOIN item_index USING (icode) ORDER BY idx").fetchnumpy()[
        "item"
    ]
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
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
        np.asarray(seq_items, dtype=np.int32),
        offsets,
        item_ids,
        user_ids,
        max_len=max_len,
        meta=meta,
    )
    num_users, num_items = len(counts), len(item_ids)
    stats = {
        "rows_read": loaded.rows,
        "rows_dropped": loaded.rows - interactions,
        "dropped": dropped,
        "users": num_users,
        "items": num_items,
        "interactions": interactions,
        "train_samples": int((counts - 3).sum()),
        "density": round(interactions / (num_users * num_items), 6),
        "sequence_length": length_distribution(counts),
        "inputs_truncated_to_max_len": int((counts - 2 > max_len).sum()),
        "tie_rule": meta["tie_rule"],
        "source": source,
        "settings": settings,
    }
    if has_time:
        low, high, ties = con.execute(
            "SELECT min(timestamp), max(timestamp), "
            "count(*) - count(DISTINCT (ufirst, timestamp)) FROM cleaned"
        ).fetchone()
        stats["timestamps"] = {"min": float(low), "max": float(high), "ties_within_user": int(ties)}
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
    with scratch_folder(out) as work, duckdb_session(work) as con:
        loaded = load_frame(con, frame, (source or {}).get("path", "input"))
        return preprocess_loaded(con, loaded, out, max_len, min_rating, dedup, kcore_k, source)


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
    with scratch_folder(out) as work, duckdb_session(work) as con:
        loaded = load_interactions(
            con,
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
            "format": loaded.format,
            "columns": loaded.source_columns,
            "md5": file_md5(path),
        }
        stats = preprocess_loaded(con, loaded, out, max_len, min_rating, dedup, kcore_k, source)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return stats
