"""The one evaluator: full ranking over items 1..N for every user of a split, for every model.

HR@K and NDCG@K (K = 5, 10, 20) are averaged per user and reported in percent (docs/formats.md).
The padding row is never ranked; ties count against the target (rank = 1 + number of other
items scoring >= the target), so a model with constant scores gets zero; history masking is an
option written into the result. Users are scored in batches, so memory is O(batch x N).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffurec.errors import DiffuRecError
from diffurec.metrics import KS, METRIC_KEYS

if TYPE_CHECKING:
    from diffurec.data.splits import Splits

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1024
DEFAULT_SEED = 1997


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based rank of each target among items 1..N, ties counted against the target.

    scores: [B, N+1] (column 0, padding, is ignored); targets: [B] in 1..N; masked: optional
    bool [B, N+1] of items removed from the ranking (never the target itself). A user with any
    NaN score among items 1..N (the target's, another item's, a masked one's) gets the worst rank,
    N: a NaN neither beats nor loses to anything, so it ties everything, and ties count against
    the target.
    """
    scores = scores[:, 1:].float()
    has_nan = torch.isnan(scores).any(dim=1)
    target_index = targets.long() - 1
    rows = torch.arange(scores.size(0), device=scores.device)
    target_score = scores[rows, target_index]
    if masked is not None:
        masked = masked[:, 1:].clone()
        masked[rows, target_index] = False
        scores = scores.masked_fill(masked, -math.inf)
    # Counting the target itself too gives 1 + (others scoring >= it); a uint8 view summed in
    # int32 is about twice as fast on the CPU as count_nonzero or a bool sum (int64).
    ranks = (scores >= target_score[:, None]).view(torch.uint8).sum(dim=1, dtype=torch.int32).long()
    return torch.where(has_nan, torch.full_like(ranks, scores.size(1)), ranks)


def ranking_metrics(ranks: torch.Tensor | np.ndarray, ks=KS) -> dict[str, float]:
    """Per-user mean HR@K and NDCG@K in percent from 1-based ranks (one target per user)."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    totals = ranking_totals(ranks, ks)
    return {key: 100.0 * value / max(len(ranks), 1) for key, value in totals.items()}


def ranking_standard_errors(ranks: torch.Tensor | np.ndarray, ks=KS) -> dict[str, float]:
    """Standard error (percent) of each per-user mean metric over the users: the sample standard
    deviation of the users' hits or gains over sqrt(users). It is the noise of drawing these users
    (one seed); seeds add their own."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    if len(ranks) < 2:
        return {f"{name}@{k}": math.nan for name in ("HR", "NDCG") for k in ks}
    root = math.sqrt(len(ranks))
    return {
        key: 100.0 * float(values.std(correction=1)) / root for key, values in user_values(ranks, ks).items()
    }


def user_values(ranks: torch.Tensor, ks=KS) -> dict[str, torch.Tensor]:
    """Each user's HR@K hit (0/1) and NDCG@K gain, float64, from 1-based ranks."""
    ranks = ranks.double()
    gains = 1.0 / torch.log2(ranks + 1.0)
    values = {f"HR@{k}": (ranks <= k).double() for k in ks}
    values.update({f"NDCG@{k}": torch.where(ranks <= k, gains, 0.0) for k in ks})
    return values


def ranking_totals(ranks: torch.Tensor, ks=KS) -> dict[str, float]:
    """Sums over users of HR@K and NDCG@K (fractions), to be divided by the user count."""
    return {key: float(values.sum()) for key, values in user_values(ranks, ks).items()}


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _history_mask(
    history: tuple[np.ndarray, np.ndarray], users: np.ndarray, targets: np.ndarray, num_columns: int, device
) -> torch.Tensor:
    """Bool [B, N+1]: True at the items each user's input history holds, except the target."""
    items, offsets = history
    starts, ends = offsets[users], offsets[users + 1]
    lengths = ends - starts
    row = np.repeat(np.arange(len(users)), lengths)
    position = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    column = np.asarray(items)[position].astype(np.int64)
    keep = column != targets[row]
    mask = torch.zeros(len(users), num_columns, dtype=torch.bool, device=device)
    mask[torch.from_numpy(row[keep]).to(device), torch.from_numpy(column[keep]).to(device)] = True
    return mask


def evaluate(model, splits, *args: Any, **kwargs: Any) -> dict:
    """Full-ranking metrics of `model` on `split`: evaluate_ranks without the per-user ranks."""
    return evaluate_ranks(model, splits, *args, **kwargs)[0]


def evaluate_ranks(
    model,
    splits,
    split: str = "test",
    mask_history: bool = False,
    reverse_steps: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> tuple[dict, np.ndarray]:
    """Full-ranking metrics of `model` on `split` ('valid' or 'test') in the metrics-JSON shape,
    and each user's 1-based target rank (user i at index i; diffurec.bootstrap pairs them).

    `reverse_steps` (DiffuRec) defaults to the model's preset; `device` defaults to where the
    model is; CUDA runs under bf16 autocast (the final scores stay fp32). When the model's
    output ignores padding, users are sorted by history length and each batch is cut to its
    longest history. The model's training mode is restored afterwards.
    """
    from tqdm import tqdm

    inputs, targets = splits.eval_arrays(split)
    inputs, targets = np.asarray(inputs), np.asarray(targets).astype(np.int64)
    num_users, num_columns = len(targets), splits.num_items + 1
    if device is not None:
        model.to(device)
    on = model_device(model)  # where the model is, whatever `device` said
    history = splits.history(split) if mask_history else None
    steps = reverse_steps if reverse_steps is not None else model.config.get("reverse_steps")

    lengths = (inputs > 0).sum(axis=1)
    trims = bool(getattr(model, "trims_padding", False))
    order = np.argsort(lengths, kind="stable") if trims else np.arange(num_users)

    torch.manual_seed(seed)
    if on.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    user_ranks = np.zeros(num_users, dtype=np.int64)
    started = time.perf_counter()
    try:
        batches = range(0, num_users, batch_size)
        disable = None if progress is None else not progress  # None: bar only on a terminal
        for lo in tqdm(batches, desc=f"evaluate {split}", unit="batch", disable=disable, leave=False):
            users = order[lo : lo + batch_size]
            batch = torch.from_numpy(inputs[users].astype(np.int64))
            if trims:
                batch = batch[:, -max(int(lengths[users].max()), 1) :]
            batch = batch.to(on, non_blocking=True)
            batch_targets = torch.from_numpy(targets[users]).to(on)
            with torch.no_grad(), torch.autocast(on.type, dtype=torch.bfloat16, enabled=on.type == "cuda"):
                scores = model.score(batch, reverse_steps=reverse_steps)
            masked = (
                _history_mask(history, users, targets[users], num_columns, on)
                if history is not None
                else None
            )
            ranks = target_ranks(scores, batch_targets, masked)
            user_ranks[users] = ranks.cpu().numpy()
            for key, value in ranking_totals(ranks).items():
                totals[key] += value
        if on.type == "cuda":
            torch.cuda.synchronize(on)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    metrics = {key: 100.0 * totals[key] / num_users for key in METRIC_KEYS}
    logger.info(
        "%s on %s (%d users): HR@10 %.4f NDCG@10 %.4f in %.1f s",
        model.config["name"],
        split,
        num_users,
        metrics["HR@10"],
        metrics["NDCG@10"],
        seconds,
    )
    result = {
        "metrics": metrics,
        "standard_error": ranking_standard_errors(user_ranks),
        "unit": "percent",
        "split": split,
        "users": int(num_users),
        "model": {"name": model.config["name"], "preset": model.config.get("preset")},
        "settings": {
            "mask_history": bool(mask_history),
            "exclude_padding": True,
            "ties": "pessimistic",
            "reverse_steps": steps,
            "batch_size": int(batch_size),
            "seed": int(seed),
            "device": str(on),
            "autocast": "bf16" if on.type == "cuda" else None,
            "sorted_by_length": trims,
        },
        "seconds": round(seconds, 4),
        "users_per_second": round(num_users / seconds, 2) if seconds > 0 else math.inf,
        "lineage": {},
    }
    return result, user_ranks


def evaluate_folder(
    model_dir: str | Path,
    splits_dir: str | Path,
    split: str = "test",
    mask_history: bool = False,
    reverse_steps: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    device: str = "auto",
    threads: int | None = None,
) -> tuple[dict, Splits, np.ndarray]:
    """`evaluate` of a model folder on a splits folder: the metrics JSON (docs/formats.md) with
    the folder, the splits and the model's lineage filled in, the splits it read and the
    per-user ranks (evaluate_ranks).

    The folder must match its manifest and the splits' items must be the model's (same ids at
    the same indices); the result records both identities (model.manifest_sha256, splits_md5)."""
    from diffurec import device as devices
    from diffurec.data.splits import load_splits
    from diffurec.lineage import data_md5
    from diffurec.model_folder import (
        ITEM_MAP_FILE,
        check_item_map,
        load_model_folder,
        read_config,
        read_summary,
        verify_manifest,
    )

    on = devices.choose_device(device)
    devices.configure(on, threads)
    read_config(model_dir)  # a folder of another kind: say so before the manifest's complaint
    manifest_sha256 = verify_manifest(model_dir)
    model = load_model_folder(model_dir, on, verify=False)
    splits = load_splits(splits_dir)
    if model.config["num_items"] != splits.num_items:
        raise DiffuRecError(
            f"{Path(model_dir) / 'config.json'}: model has {model.config['num_items']} items "
            f"but splits {splits.path} have {splits.num_items}"
        )
    check_item_map(model_dir, splits.item_ids, Path(splits_dir) / ITEM_MAP_FILE)
    try:
        result, ranks = evaluate_ranks(
            model,
            splits,
            split=split,
            mask_history=mask_history,
            reverse_steps=reverse_steps,
            batch_size=batch_size,
            seed=seed,
            device=on,
        )
    except ValueError as error:  # e.g. reverse steps out of range
        raise DiffuRecError(f"evaluate {model_dir}: {error}") from None
    result["model"]["folder"] = str(model_dir)
    result["model"]["manifest_sha256"] = manifest_sha256
    result["splits"] = str(splits_dir)
    result["splits_md5"] = data_md5(splits_dir)
    result["lineage"] = read_summary(model_dir).get("lineage", {})
    return result, splits, ranks
