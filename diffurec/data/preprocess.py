"""Preprocessing: raw interactions -> cleaned chronological sequences -> splits folder.

PLACEHOLDER until issue 2 lands: reads a RecBole .inter file only, every interaction implicit,
stable sort by timestamp. The data issue replaces this with the full reader/cleaning pipeline
(keeping the preprocess_file(path, out, **options) entry point).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffurec.data.splits import build_splits, write_splits


def preprocess_file(path, out, max_len: int = 50):
    frame = pd.read_csv(path, sep="\t")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame = frame.sort_values("timestamp", kind="stable")
    frame = frame.sort_values("user_id", kind="stable")
    users, user_index = np.unique(frame["user_id"].astype(str).to_numpy(), return_inverse=True)
    items, item_index = np.unique(frame["item_id"].astype(str).to_numpy(), return_inverse=True)
    counts = np.bincount(user_index, minlength=len(users))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    splits = build_splits(item_index + 1, offsets, list(items), list(users), max_len=max_len)
    return write_splits(splits, out)
