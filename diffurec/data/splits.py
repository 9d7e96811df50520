"""The on-disk splits format (version 1) and the leave-one-out split that builds it.

A splits folder holds plain NumPy arrays, so every consumer (trainer, evaluator, validator)
reads it without this package's models and a large set memory-maps instead of loading.
See docs/formats.md for the file-by-file description.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffurec.errors import DiffuRecError
from diffurec.files import atomic_folder

FORMAT_NAME = "diffurec-splits"
FORMAT_VERSION = 1
DEFAULT_MAX_LEN = 50
MIN_SEQUENCE_LENGTH = 3  # train item(s), validation target, test target

ARRAY_FILES = (
    "seq_items",
    "seq_offsets",
    "train_inputs",
    "train_targets",
    "train_users",
    "valid_inputs",
    "valid_targets",
    "test_inputs",
    "test_targets",
)


@dataclass
class Splits:
    """Leave-one-out splits of remapped item ids (1..num_items; 0 is padding).

    seq_items[seq_offsets[u]:seq_offsets[u+1]] is user u's whole chronological sequence;
    its last item is the test target and the one before the validation target.
    """

    num_items: int
    max_len: int
    seq_items: np.ndarray
    seq_offsets: np.ndarray
    train_inputs: np.ndarray
    train_targets: np.ndarray
    train_users: np.ndarray
    valid_inputs: np.ndarray
    valid_targets: np.ndarray
    test_inputs: np.ndarray
    test_targets: np.ndarray
    item_ids: list[str]
    user_ids: list[str]
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_users(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def dataset_label(self) -> str | None:
        """A short name of the data for metric labels: the raw file's stem, else the folder's name."""
        source = self.meta.get("source") or {}
        raw = source.get("path") if isinstance(source, dict) else None
        return Path(raw).stem if raw else (self.path.name if self.path else None)

    def eval_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [U, max_len], targets [U]) of the 'valid' or 'test' split."""
        if split == "valid":
            return self.valid_inputs, self.valid_targets
        if split == "test":
            return self.test_inputs, self.test_targets
        raise DiffuRecError(f"unknown split {split!r}: use 'valid' or 'test'")

    def history(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Each user's whole input history for a split, as (items, offsets) rows of a CSR matrix.

        Validation sees the training sequence; test sees training plus the validation item.
        """
        drop = {"valid": 2, "test": 1}[split]
        starts = self.seq_offsets[:-1]
        ends = self.seq_offsets[1:] - drop
        lengths = ends - starts
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return np.asarray(self.seq_items)[positions], offsets


def left_padded_windows(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int, chunk: int = 65536
) -> np.ndarray:
    """Rows items[max(start, end - max_len):end], left-padded with 0 to max_len, vectorised.

    Row i is a copy of the length-max_len window of [0]*max_len + items that ends at ends[i],
    with the positions before starts[i] (another user's items, or the padding) zeroed.
    """
    padded = np.concatenate([np.zeros(max_len, dtype=np.int32), np.asarray(items, dtype=np.int32)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, max_len)
    ends = np.asarray(ends, dtype=np.int64)
    keep = np.minimum(ends - np.asarray(starts, dtype=np.int64), max_len)
    out = np.empty((len(ends), max_len), dtype=np.int32)
    columns = np.arange(max_len)
    for lo in range(0, len(ends), chunk):
        hi = min(lo + chunk, len(ends))
        block = windows[ends[lo:hi]]
        block[columns[None, :] < (max_len - keep[lo:hi])[:, None]] = 0
        out[lo:hi] = block
    return out


def leave_one_out(seq_items: np.ndarray, seq_offsets: np.ndarray, max_len: int = DEFAULT_MAX_LEN):
    """Build train prefixes and validation/test rows from concatenated user sequences.

    Every user needs at least MIN_SEQUENCE_LENGTH items. Training samples are every prefix of
    the training sequence (all but the last two items): (i1 -> i2), (i1 i2 -> i3), ...
    """
    seq_items = np.ascontiguousarray(seq_items, dtype=np.int32)
    seq_offsets = np.asarray(seq_offsets, dtype=np.int64)
    starts, ends = seq_offsets[:-1], seq_offsets[1:]
    lengths = ends - starts
    if len(lengths) == 0 or lengths.min() < MIN_SEQUENCE_LENGTH:
        raise DiffuRecError(f"leave-one-out needs at least {MIN_SEQUENCE_LENGTH} items per user")

    # A user of length n has n - 2 training items and n - 3 prefix samples; the target of
    # sample j (1-based, j = 1 .. n-3) sits at global position start + j.
    per_user = lengths - 3
    users = np.repeat(np.arange(len(lengths), dtype=np.int32), per_user)
    sample_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(per_user, out=sample_offsets[1:])
    rank = np.arange(sample_offsets[-1], dtype=np.int64) - np.repeat(sample_offsets[:-1], per_user)
    target_pos = np.repeat(starts, per_user) + 1 + rank

    return dict(
        train_inputs=left_padded_windows(seq_items, starts[users], target_pos, max_len),
        train_targets=seq_items[target_pos].astype(np.int32),
        train_users=users,
        valid_inputs=left_padded_windows(seq_items, starts, ends - 2, max_len),
        valid_targets=seq_items[ends - 2].astype(np.int32),
        test_inputs=left_padded_windows(seq_items, starts, ends - 1, max_len),
        test_targets=seq_items[ends - 1].astype(np.int32),
    )


def build_splits(seq_items, seq_offsets, item_ids, user_ids, max_len=DEFAULT_MAX_LEN, meta=None) -> Splits:
    """Splits from remapped sequences (items 1..len(item_ids)) and their original ids."""
    arrays = leave_one_out(seq_items, seq_offsets, max_len)
    return Splits(
        num_items=len(item_ids),
        max_len=max_len,
        seq_items=np.ascontiguousarray(seq_items, dtype=np.int32),
        seq_offsets=np.asarray(seq_offsets, dtype=np.int64),
        item_ids=[str(i) for i in item_ids],
        user_ids=[str(u) for u in user_ids],
        meta=dict(meta or {}),
        **arrays,
    )


def _write_map(path: Path, ids: list[str], first_index: int) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("index\toriginal_id\n")
        for i, original in enumerate(ids, start=first_index):
            f.write(f"{i}\t{original}\n")


def _read_map(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        next(f)
        return [line.rstrip("\n").split("\t", 1)[1] for line in f]


def write_splits(splits: Splits, folder: str | os.PathLike, stats: dict | None = None) -> Path:
    """Write atomically: everything goes to a temporary sibling that is renamed at the end."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        for name in ARRAY_FILES:
            np.save(tmp / f"{name}.npy", np.asarray(getattr(splits, name)))
        _write_map(tmp / "item_map.tsv", splits.item_ids, first_index=1)
        _write_map(tmp / "user_map.tsv", splits.user_ids, first_index=0)
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "num_users": splits.num_users,
            "num_items": splits.num_items,
            "max_len": splits.max_len,
            "num_train_samples": int(len(splits.train_targets)),
            **splits.meta,
        }
        (tmp / "format.json").write_text(json.dumps(header, indent=2) + "\n")
        if stats is not None:
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    splits.path = folder
    return folder


def load_splits(folder: str | os.PathLike, mmap: bool = True) -> Splits:
    """Read a splits folder; arrays are memory-mapped unless mmap=False."""
    folder = Path(folder)
    header_path = folder / "format.json"
    if not header_path.is_file():
        raise DiffuRecError(
            f"{folder}: not a splits folder (no format.json); run 'diffurec preprocess' first"
        )
    header = json.loads(header_path.read_text())
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise DiffuRecError(
            f"{header_path}: expected {FORMAT_NAME} version {FORMAT_VERSION}, "
            f"found {header.get('format')} version {header.get('version')}"
        )
    arrays = {}
    for name in ARRAY_FILES:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise DiffuRecError(f"{path}: missing from the splits folder")
        arrays[name] = np.load(path, mmap_mode="r" if mmap else None)
    meta = {
        k: v
        for k, v in header.items()
        if k not in {"format", "version", "num_users", "num_items", "max_len", "num_train_samples"}
    }
    return Splits(
        num_items=int(header["num_items"]),
        max_len=int(header["max_len"]),
        item_ids=_read_map(folder / "item_map.tsv"),
        user_ids=_read_map(folder / "user_map.tsv"),
        meta=meta,
        path=folder,
        **arrays,
    )
