"""The on-disk splits format (version 2) and the leave-one-out split it stands for.

A splits folder holds each user's chronological sequence once (`seq_items`, `seq_offsets`) as
plain NumPy arrays, so every consumer (trainer, evaluator, validator) reads it without this
package's models and a large set memory-maps instead of loading. Everything else is a function
of the sequences and is computed when needed, never stored:
- training sample s is (user u, target position p): users in order, each user's samples in
  order of position; user u of length n has the n - 3 samples p = start + 1 .. start + n - 3
  (every prefix of the training sequence, all but the last two items), so the sample index
  is `train_sample_offsets` (a CSR index over users) and costs no bytes per sample;
- a batch's inputs are the left-padded windows of its samples, gathered from `seq_items` on
  the fly (`Splits.train_batch`), identical to the rows version 1 stored in train_inputs.npy;
- validation and test rows: the training sequence (+ the validation item) and the next item.
Version 1 folders also stored those arrays materialised (train_inputs.npy, every prefix as
max_len int32 columns, dominated the folder); they still load, from their sequences alone.
See docs/formats.md for the file-by-file description.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from diffurec.errors import DiffuRecError
from diffurec.files import atomic_folder, read_json_object

log = logging.getLogger(__name__)

FORMAT_NAME = "diffurec-splits"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1's materialised arrays are ignored: both store the same sequences
DEFAULT_MAX_LEN = 50
MIN_SEQUENCE_LENGTH = 3  # train item(s), validation target, test target

ARRAY_FILES = ("seq_items", "seq_offsets")
HEADER_KEYS = {"format", "version", "num_users", "num_items", "max_len", "num_train_samples"}


def left_padded_windows(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int, chunk: int = 65536
) -> np.ndarray:
    """Rows items[max(start, end - width):end], left-padded with 0 to `width`: [len(ends), width] int32.

    A gather from `items` (a memory map stays one: only the rows' items are read), vectorised
    over rows in chunks of `chunk` rows.
    """
    items = np.asarray(items)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    out = np.zeros((len(ends), width), dtype=np.int32)
    columns = np.arange(-width, 0, dtype=np.int64)
    for lo in range(0, len(ends), chunk):
        hi = min(lo + chunk, len(ends))
        positions = ends[lo:hi, None] + columns  # [rows, width]; the last column is end - 1
        real = positions >= starts[lo:hi, None]
        out[lo:hi][real] = items[positions[real]]
    return out


class SampleWindows:
    """A read-only [rows, max_len] int32 array whose rows are built when indexed.

    `bounds(rows)` gives each row's (start, end) in `items`; row r is left_padded_windows of
    it. Supports len(), .shape, .dtype, `[rows]`, `[rows, columns]` (rows: int, slice, index or
    boolean array) and np.asarray() (which builds every row: only for small data).
    """

    dtype = np.dtype(np.int32)
    ndim = 2

    def __init__(
        self,
        items: np.ndarray,
        bounds: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        rows: int,
        max_len: int,
    ) -> None:
        self._items, self._bounds, self._rows, self._max_len = items, bounds, rows, max_len

    def __len__(self) -> int:
        return self._rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self._rows, self._max_len)

    def rows(self, index: np.ndarray) -> np.ndarray:
        starts, ends = self._bounds(np.asarray(index, dtype=np.int64))
        return left_padded_windows(self._items, starts, ends, self._max_len)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, columns = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        scalar = isinstance(rows, int | np.integer)
        if scalar:
            if not -self._rows <= rows < self._rows:
                raise IndexError(f"row {rows} out of range for {self._rows} rows")
            index = np.array([rows % self._rows], dtype=np.int64)
        elif isinstance(rows, slice):
            index = np.arange(*rows.indices(self._rows), dtype=np.int64)
        else:
            index = np.arange(self._rows, dtype=np.int64)[np.asarray(rows)]
        block = self.rows(index)[(slice(None), *columns)]
        return block[0] if scalar else block

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        block = self.rows(np.arange(self._rows, dtype=np.int64))
        return block if dtype is None else block.astype(dtype)


@dataclass
class Splits:
    """Leave-one-out splits of remapped item ids (1..num_items; 0 is padding).

    seq_items[seq_offsets[u]:seq_offsets[u+1]] is user u's whole chronological sequence;
    its last item is the test target and the one before the validation target. The training
    samples, their windows and the validation/test rows are computed from it (module docstring).
    """

    num_items: int
    max_len: int
    seq_items: np.ndarray
    seq_offsets: np.ndarray
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

    # ---- training samples: sample s = (user, target position), built on the fly ----------

    @cached_property
    def train_sample_offsets(self) -> np.ndarray:
        """[U+1] int64: user u's training samples are the indices offsets[u] .. offsets[u+1] - 1."""
        lengths = np.diff(np.asarray(self.seq_offsets, dtype=np.int64))
        if len(lengths) and lengths.min() < MIN_SEQUENCE_LENGTH:
            user = int(np.argmin(lengths))
            raise DiffuRecError(
                f"{self.path or 'splits'}: user {user} has {int(lengths[user])} items; "
                f"leave-one-out needs at least {MIN_SEQUENCE_LENGTH} per user"
            )
        # n - 3 samples: the first item is never a target, the last two are validation and test's
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths - MIN_SEQUENCE_LENGTH, out=offsets[1:])
        return offsets

    @property
    def num_train_samples(self) -> int:
        return int(self.train_sample_offsets[-1])

    def train_sample_bounds(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start of the user's sequence, position of the target) of each sample in `index`;
        the sample's history is seq_items[start:target]."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= self.num_train_samples):
            raise IndexError(f"training sample index out of range for {self.num_train_samples} samples")
        sample_offsets = self.train_sample_offsets
        users = np.searchsorted(sample_offsets, index, side="right") - 1
        starts = np.asarray(self.seq_offsets, dtype=np.int64)[users]
        return starts, starts + 1 + (index - sample_offsets[users])

    def train_batch(self, index: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [B, width], targets [B]) int32 of the samples in `index`, in that order: each
        history's last `width` items (default max_len, at most max_len), left-padded with 0."""
        starts, targets = self.train_sample_bounds(index)
        width = self.max_len if width is None else min(width, self.max_len)
        items = np.asarray(self.seq_items)
        return left_padded_windows(items, starts, targets, width), items[targets].astype(np.int32)

    def train_lengths(self) -> np.ndarray:
        """[S] int32: the number of real (non-padding) items in each sample's window."""
        sample_offsets = self.train_sample_offsets
        per_user = np.diff(sample_offsets)
        rank = np.arange(sample_offsets[-1], dtype=np.int64) - np.repeat(sample_offsets[:-1], per_user)
        return np.minimum(rank + 1, self.max_len).astype(np.int32)

    # Whole-array views of the training samples (version 1's stored arrays), for small data,
    # checks and tests; the trainer reads batches with train_batch.

    @property
    def train_inputs(self) -> SampleWindows:
        """[S, max_len]: every sample's window, built when indexed."""
        return SampleWindows(self.seq_items, self.train_sample_bounds, self.num_train_samples, self.max_len)

    @property
    def train_targets(self) -> np.ndarray:
        """[S] int32: the item following each sample's history (computed on each access)."""
        _, targets = self.train_sample_bounds(np.arange(self.num_train_samples))
        return np.asarray(self.seq_items)[targets].astype(np.int32)

    @property
    def train_users(self) -> np.ndarray:
        """[S] int32: each sample's user (computed on each access)."""
        per_user = np.diff(self.train_sample_offsets)
        return np.repeat(np.arange(self.num_users, dtype=np.int32), per_user)

    # ---- validation and test rows ------------------------------------------------------------

    def eval_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [U, max_len], targets [U]) int32 of the 'valid' or 'test' split, computed:
        validation = the training sequence -> the second-to-last item; test = training sequence
        and validation item -> the last item."""
        if split not in ("valid", "test"):
            raise DiffuRecError(f"unknown split {split!r}: use 'valid' or 'test'")
        offsets = np.asarray(self.seq_offsets, dtype=np.int64)
        targets = offsets[1:] - (2 if split == "valid" else 1)
        items = np.asarray(self.seq_items)
        return (
            left_padded_windows(items, offsets[:-1], targets, self.max_len),
            items[targets].astype(np.int32),
        )

    @property
    def valid_inputs(self) -> np.ndarray:
        return self.eval_arrays("valid")[0]

    @property
    def valid_targets(self) -> np.ndarray:
        return self.eval_arrays("valid")[1]

    @property
    def test_inputs(self) -> np.ndarray:
        return self.eval_arrays("test")[0]

    @property
    def test_targets(self) -> np.ndarray:
        return self.eval_arrays("test")[1]

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


def leave_one_out(
    seq_items: np.ndarray, seq_offsets: np.ndarray, max_len: int = DEFAULT_MAX_LEN
) -> dict[str, np.ndarray]:
    """Every array version 1 stored, materialised from concatenated user sequences (for checks
    and small data: train_inputs is [S, max_len]). Every user needs MIN_SEQUENCE_LENGTH items."""
    splits = build_splits(seq_items, seq_offsets, [], [], max_len)
    return dict(
        train_inputs=np.asarray(splits.train_inputs),
        train_targets=splits.train_targets,
        train_users=splits.train_users,
        valid_inputs=splits.valid_inputs,
        valid_targets=splits.valid_targets,
        test_inputs=splits.test_inputs,
        test_targets=splits.test_targets,
    )


def build_splits(
    seq_items: np.ndarray,
    seq_offsets: np.ndarray,
    item_ids: Sequence[Any],
    user_ids: Sequence[Any],
    max_len: int = DEFAULT_MAX_LEN,
    meta: dict | None = None,
) -> Splits:
    """Splits from remapped sequences (items 1..len(item_ids)) and their original ids.

    Every user needs at least MIN_SEQUENCE_LENGTH items (DiffuRecError otherwise)."""
    seq_offsets = np.asarray(seq_offsets, dtype=np.int64)
    lengths = np.diff(seq_offsets)
    if len(lengths) == 0 or lengths.min() < MIN_SEQUENCE_LENGTH:
        raise DiffuRecError(f"leave-one-out needs at least {MIN_SEQUENCE_LENGTH} items per user")
    return Splits(
        num_items=len(item_ids),
        max_len=max_len,
        seq_items=np.ascontiguousarray(seq_items, dtype=np.int32),
        seq_offsets=seq_offsets,
        item_ids=[str(i) for i in item_ids],
        user_ids=[str(u) for u in user_ids],
        meta=dict(meta or {}),
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
    """Write a version 2 folder atomically: everything goes to a temporary sibling that is
    renamed at the end."""
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
            "num_train_samples": splits.num_train_samples,
            **splits.meta,
        }
        (tmp / "format.json").write_text(json.dumps(header, indent=2) + "\n")
        if stats is not None:
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    splits.path = folder
    return folder


def load_splits(folder: str | os.PathLike, mmap: bool = True) -> Splits:
    """Read a splits folder (version 2, or 1 from its sequences); arrays are memory-mapped
    unless mmap=False."""
    folder = Path(folder)
    header_path = folder / "format.json"
    if not header_path.is_file():
        raise DiffuRecError(
            f"{folder}: not a splits folder (no format.json); run 'diffurec preprocess' first"
        )
    header = read_json_object(header_path, "missing from the splits folder")
    if header.get("format") != FORMAT_NAME or header.get("version") not in READABLE_VERSIONS:
        rebuild = "; rebuild it with 'diffurec preprocess' (or 'dvc repro preprocess')"
        raise DiffuRecError(
            f"{header_path}: expected {FORMAT_NAME} version {' or '.join(map(str, READABLE_VERSIONS))}, "
            f"found {header.get('format')} version {header.get('version')}"
            + (rebuild if header.get("format") == FORMAT_NAME else "")
        )
    if header["version"] != FORMAT_VERSION:
        log.info(
            "%s: splits version %s; its train/valid/test arrays are not read (rebuild it with "
            "'diffurec preprocess' to drop them)",
            folder,
            header["version"],
        )
    arrays = {}
    for name in ARRAY_FILES:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise DiffuRecError(f"{path}: missing from the splits folder")
        arrays[name] = np.load(path, mmap_mode="r" if mmap else None)
    return Splits(
        num_items=int(header["num_items"]),
        max_len=int(header["max_len"]),
        item_ids=_read_map(folder / "item_map.tsv"),
        user_ids=_read_map(folder / "user_map.tsv"),
        meta={k: v for k, v in header.items() if k not in HEADER_KEYS},
        path=folder,
        **arrays,
    )
