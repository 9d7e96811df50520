"""Top-K recommendations from a model folder, in original item ids.

Histories come from a splits folder (each user's whole known sequence, so the recommendation is
for the item after the test item) or from a file with one user per line:

    user_id<TAB>item_id item_id ...        (oldest first, original ids as in item_map.tsv)

Output TSV: `user_id  rank  item_id  score`, K rows per user, best first.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffurec.errors import DiffuRecError

logger = logging.getLogger(__name__)


def windows(items: np.ndarray, offsets: np.ndarray, max_len: int) -> np.ndarray:
    """Each CSR row's last max_len items, left-padded with 0: [U, max_len] int32."""
    from diffurec.data.splits import left_padded_windows

    offsets = np.asarray(offsets, dtype=np.int64)
    return left_padded_windows(np.asarray(items, dtype=np.int32), offsets[:-1], offsets[1:], max_len)


def read_histories(path, item_index: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(user ids, items, offsets) of a histories file; unknown items are an error naming row and column."""
    path = Path(path)
    if not path.is_file():
        raise DiffuRecError(f"{path}: histories file not found")
    users, items, offsets = [], [], [0]
    with open(path, encoding="utf-8") as f:
        for row, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            user, sep, rest = line.partition("\t")
            if not sep or not rest.strip():
                raise DiffuRecError(f"{path}, row {row}: expected 'user_id<TAB>item_id item_id ...'")
            for column, item in enumerate(rest.split(), start=2):
                index = item_index.get(item)
                if index is None:
                    raise DiffuRecError(
                        f"{path}, row {row}, column {column}: item {item!r} is not in the model's "
                        "item_map.tsv"
                    )
                items.append(index)
            users.append(user)
            offsets.append(len(items))
    if not users:
        raise DiffuRecError(f"{path}: no histories in the file")
    return users, np.asarray(items, dtype=np.int32), np.asarray(offsets, dtype=np.int64)


def top_k_items(
    model,
    inputs: np.ndarray,
    top_k: int,
    history: tuple[np.ndarray, np.ndarray] | None = None,
    reverse_steps: int | None = None,
    batch_size: int = 1024,
    seed: int = 1997,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(item indices [U, K], scores [U, K]) of the best items 1..N per input row.

    `history` (CSR items, offsets), when given, removes those items from each row's ranking.
    """
    from diffurec import device as devices

    device = torch.device(device)
    num_items = model.config["num_items"]
    if not 1 <= top_k <= num_items:
        raise DiffuRecError(f"--top-k must be between 1 and the number of items ({num_items}), got {top_k}")
    lengths = (inputs > 0).sum(axis=1)
    trims = bool(getattr(model, "trims_padding", False))
    order = np.argsort(lengths, kind="stable") if trims else np.arange(len(inputs))
    out_items = np.zeros((len(inputs), top_k), dtype=np.int64)
    out_scores = np.zeros((len(inputs), top_k), dtype=np.float32)
    torch.manual_seed(seed)
    model.eval()
    for lo in range(0, len(inputs), batch_size):
        rows = order[lo : lo + batch_size]
        batch = torch.from_numpy(inputs[rows].astype(np.int64))
        if trims:
            batch = batch[:, -max(int(lengths[rows].max()), 1) :]
        with torch.no_grad(), devices.autocast(device):
            scores = model.score(batch.to(device), reverse_steps=reverse_steps).float().contiguous()
        scores[:, 0] = -torch.inf
        if history is not None:
            items, offsets = history
            starts, ends = offsets[rows], offsets[rows + 1]
            row_index = np.repeat(np.arange(len(rows)), ends - starts)
            columns = (
                np.concatenate([items[s:e] for s, e in zip(starts, ends, strict=True)]).astype(np.int64)
                if len(row_index)
                else np.zeros(0, dtype=np.int64)
            )
            scores[torch.from_numpy(row_index).to(device), torch.from_numpy(columns).to(device)] = -torch.inf
        values, indices = scores.topk(top_k, dim=1)
        out_items[rows] = indices.cpu().numpy()
        out_scores[rows] = values.cpu().numpy()
    return out_items, out_scores


def recommend_to_file(
    model_dir: str | Path,
    out: str | Path,
    splits_dir: str | Path | None = None,
    histories_path: str | Path | None = None,
    top_k: int = 10,
    mask_history: bool = False,
    reverse_steps: int | None = None,
    batch_size: int = 1024,
    seed: int = 1997,
    device: str | torch.device = "cpu",
) -> dict:
    """Load a model folder, build the histories, write the recommendations TSV atomically."""
    from diffurec.model_folder import ITEM_MAP_FILE, check_item_map, load_model_folder, read_item_map

    model = load_model_folder(model_dir, device)  # verifies the folder against its manifest
    item_ids = read_item_map(Path(model_dir) / ITEM_MAP_FILE)
    if len(item_ids) != model.config["num_items"]:
        raise DiffuRecError(
            f"{Path(model_dir) / 'item_map.tsv'}: {len(item_ids)} items, config.json says "
            f"{model.config['num_items']}"
        )
    if splits_dir is not None:
        from diffurec.data.splits import load_splits

        splits = load_splits(splits_dir)
        check_item_map(model_dir, splits.item_ids, Path(splits_dir) / ITEM_MAP_FILE)
        users = splits.user_ids
        items, offsets = np.asarray(splits.seq_items), np.asarray(splits.seq_offsets)
    else:
        users, items, offsets = read_histories(
            histories_path, {item: i for i, item in enumerate(item_ids, start=1)}
        )
    inputs = windows(items, offsets, model.config["max_len"])
    started = time.perf_counter()
    try:
        top_items, top_scores = top_k_items(
            model,
            inputs,
            top_k,
            (items, offsets) if mask_history else None,
            reverse_steps,
            batch_size,
            seed,
            device,
        )
    except ValueError as error:
        raise DiffuRecError(f"recommend {model_dir}: {error}") from None
    seconds = time.perf_counter() - started

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("user_id\trank\titem_id\tscore\n")
            for user, row_items, row_scores in zip(users, top_items, top_scores, strict=True):
                for rank, (item, score) in enumerate(zip(row_items, row_scores, strict=True), start=1):
                    f.write(f"{user}\t{rank}\t{item_ids[item - 1]}\t{score:.6g}\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote top-%d items for %d users to %s in %.1f s", top_k, len(users), out, seconds)
    return {
        "users": len(users),
        "seconds": seconds,
        "users_per_second": len(users) / max(seconds, 1e-9),
        "model": model.config["name"],
        "out": str(out),
    }
