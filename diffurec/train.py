"""The one trainer: every model of `diffurec.models` is trained, validated, checkpointed and
saved here, on one CPU/GPU or under `torchrun` (DistributedDataParallel).

Data: batches are read from the splits folder's memory-mapped `train_inputs`/`train_targets`
by index arrays (no per-sample Python objects). When the model's output ignores left padding
(`model.trims_padding`), samples are bucketed by history length and each batch is cut to its
longest real history, which removes most of the compute on short-history data.

Reproducibility: the model is initialised from `seed`; every epoch reseeds torch's RNG from
(seed, epoch, rank) and draws its sample order from (seed, epoch). So the RNG state at the
start of an epoch is a function of those numbers, a checkpoint only has to store the epoch,
and a run resumed from any checkpoint continues exactly like an uninterrupted one.

Distributed: every rank sees the same global batches; rank r trains on the r-th piece of each
(np.array_split), and each piece's mean loss is weighted by its share of the global batch, so
the averaged DDP gradient equals the gradient of the global batch's mean loss (as with one
process). Rank 0 validates, decides when to stop and writes checkpoints and the model folder.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffurec import device as devices
from diffurec.errors import DiffuRecError
from diffurec.train_settings import RESULT_SETTINGS, STOP_RULES, TrainSettings  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1
REFERENCE_METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


# ---- data ---------------------------------------------------------------------------------

def history_lengths(inputs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Number of real (non-padding) items in each row of a left-padded [S, L] array."""
    out = np.empty(len(inputs), dtype=np.int32)
    for lo in range(0, len(inputs), chunk):
        out[lo:lo + chunk] = (np.asarray(inputs[lo:lo + chunk]) > 0).sum(axis=1)
    return out


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int,
                  lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """The global batches (sample index arrays) of one epoch, the same on every rank.

    Without `lengths`: a random permutation cut into batches. With `lengths`: samples sorted by
    length with random tie order (shuffled within equal-length buckets), cut into batches of
    similar length, and the batch order shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    if lengths is None:
        order = rng.permutation(num_samples)
        return [order[lo:lo + batch_size] for lo in range(0, num_samples, batch_size)]
    order = np.lexsort((rng.random(num_samples), lengths))
    batches = [order[lo:lo + batch_size] for lo in range(0, num_samples, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def rank_piece(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s disjoint share of a global batch."""
    return np.array_split(batch, world_size)[rank] if world_size > 1 else batch


def batch_tensors(inputs: np.ndarray, targets: np.ndarray, index: np.ndarray,
                  lengths: np.ndarray | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [B, L'], targets [B]) as int64 on `device`; L' = the longest history when trimming."""
    index = np.sort(index)  # sequential reads from the memory map; the loss is a mean anyway
    batch = np.asarray(inputs[index])
    if lengths is not None:
        batch = batch[:, batch.shape[1] - max(int(lengths[index].max()), 1):]
    batch_inputs = torch.from_numpy(batch.astype(np.int64))
    batch_targets = torch.from_numpy(np.asarray(targets[index]).astype(np.int64))
    if device.type == "cuda":
        return (batch_inputs.pin_memory().to(device, non_blocking=True),
                batch_targets.pin_memory().to(device, non_blocking=True))
    return batch_inputs, batch_targets


class LossModule(nn.Module):
    """forward() = model.loss(), so DistributedDataParallel sees the call it hooks into."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.loss(inputs, targets)


def train_batches(loss_module: nn.Module, optimizer: torch.optim.Optimizer, inputs, targets,
                  batches: list[np.ndarray], lengths: np.ndarray | None, device: torch.device,
                  rank: int = 0, world_size: int = 1, desc: str = "train",
                  progress: bool | None = None, deadline: float | None = None,
                  ) -> tuple[float, int, float, bool]:
    """One pass of optimizer steps over `batches`.

    `deadline` (time.perf_counter() value): stop when it has passed, checked after every step
    on one process and every 20 steps under DDP (where all ranks must agree, an all-reduce).
    Returns this rank's (sum of sample losses, samples trained, sample_fingerprint of them,
    whether the deadline cut the pass short).
    """
    from tqdm import tqdm

    loss_module.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen, fingerprint, started = 0, 0.0, time.perf_counter()
    check_every = 1 if world_size == 1 else 20
    # progress None: a bar only on a terminal (tqdm's disable=None); never on ranks other than 0
    disable = True if rank != 0 or progress is False else None if progress is None else False
    bar = tqdm(batches, desc=desc, unit="batch", disable=disable, leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        index = rank_piece(batch, rank, world_size)
        weight = len(index) * world_size / len(batch)
        if len(index) == 0:  # fewer samples than ranks: take part in the all-reduce with zero weight
            index = batch[:1]
        batch_inputs, batch_targets = batch_tensors(inputs, targets, index, lengths, device)
        with devices.autocast(device):
            loss = loss_module(batch_inputs, batch_targets)
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        optimizer.step()
        count = len(index) if weight > 0 else 0
        loss_sum += loss.detach().double() * count
        seen += count
        if count:
            fingerprint += float(sample_fingerprint(index))
        if not bar.disable and (step % 20 == 0 or step + 1 == len(batches)):
            rate = seen * world_size / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{rate:.0f}")
        if deadline is not None and (step + 1) % check_every == 0 and step + 1 < len(batches):
            if _any_rank(time.perf_counter() >= deadline, world_size, device):
                bar.close()
                return float(loss_sum), seen, fingerprint, True
    return float(loss_sum), seen, fingerprint, False


def _any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    if world_size == 1:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def sample_fingerprint(index: np.ndarray) -> int:
    """Order-independent fingerprint of a set of sample indices: sum of a 32-bit hash of each.

    Summed over ranks it shows that a distributed epoch saw exactly one process's samples
    (exact in float64 up to about two million samples per epoch).
    """
    hashed = (index.astype(np.uint64) + np.uint64(1)) * np.uint64(2654435761) % np.uint64(1 << 32)
    return int(hashed.sum())


# ---- early stopping -----------------------------------------------------------------------

def update_best(best: dict, metrics: dict, epoch: int, rule: str) -> bool:
    """Record a validation in `best`; True when it counts as an improvement under `rule`.

    "ndcg": validation NDCG@10 above the best so far. "reference": any of the six metrics above
    its own best so far (the reference's rule). The best weights are those of the last improvement.
    """
    maxima = best.setdefault("maxima", {})
    if rule == "ndcg":
        improved = not maxima or metrics["NDCG@10"] > maxima["NDCG@10"]
    else:
        improved = not maxima or any(metrics[k] > maxima[k] for k in REFERENCE_METRICS)
    for key in REFERENCE_METRICS:
        maxima[key] = max(maxima.get(key, -math.inf), metrics[key])
    if improved:
        best["epoch"], best["metrics"] = epoch, dict(metrics)
    return improved


# ---- checkpoints --------------------------------------------------------------------------

def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file in the same folder, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: say which
        raise DiffuRecError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise DiffuRecError(f"{path}: not a diffurec checkpoint version {CHECKPOINT_VERSION}")
    return state


def _result_settings(settings: TrainSettings) -> dict:
    values = asdict(settings)
    return {key: values[key] for key in RESULT_SETTINGS}


# ---- distributed --------------------------------------------------------------------------

def distributed_context() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _broadcast(value, world_size: int):
    """Rank 0's `value` on every rank."""
    if world_size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_sum(values: list[float], world_size: int, device: torch.device) -> list[float]:
    if world_size == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ---- the training run ---------------------------------------------------------------------

def train(splits, out, settings: TrainSettings, lineage: dict | None = None) -> dict:
    """Train `settings.model` on `splits`, write the model folder `out` (best validation
    weights) and return the training summary (also written as train_summary.json).

    Under torchrun only rank 0 writes and returns the summary; other ranks return {}.
    """
    from diffurec.models import DEFAULT_PRESETS, build_model

    settings.check()
    rank, world_size, local_rank = distributed_context()
    device = devices.choose_device(settings.device, local_rank)
    threads = settings.threads or devices.default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    devices.configure(device, threads)
    preset = settings.preset or DEFAULT_PRESETS.get(settings.model)
    settings = dataclasses.replace(settings, preset=preset)

    torch.manual_seed(settings.seed)
    try:
        model = build_model(settings.model, splits.num_items, splits.max_len, preset, **settings.hyper)
    except (ValueError, TypeError) as error:
        raise DiffuRecError(f"--model {settings.model} --preset {preset}: {error}") from None
    model.to(device)

    item_map = Path(splits.path) / "item_map.tsv" if splits.path is not None else None
    lineage = dict(lineage or {})
    lineage.setdefault("preset", preset)
    lineage.setdefault("params", {k: v for k, v in asdict(settings).items()
                                  if k not in ("checkpoint_dir", "resume", "progress")})
    base_summary = {"model": model.config["name"], "preset": preset, "seed": settings.seed,
                    "device": str(device), "threads": threads, "world_size": world_size,
                    "splits": str(splits.path) if splits.path is not None else None,
                    "num_items": splits.num_items, "num_train_samples": int(len(splits.train_targets))}

    if not getattr(model, "requires_training", True):
        if rank != 0:  # nothing to share out: rank 0 fits and writes
            return {}
        return _fit_without_training(model, splits, out, settings, device, item_map, lineage, base_summary)

    initialized_group = False
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            initialized_group = True
    try:
        return _train_loop(model, splits, out, settings, device, rank, world_size, item_map,
                           lineage, base_summary)
    finally:
        if initialized_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _validate(model, splits, settings: TrainSettings, device) -> dict:
    from diffurec.evaluate import evaluate

    result = evaluate(model, splits, split="valid", reverse_steps=settings.eval_reverse_steps,
                      batch_size=settings.eval_batch_size, seed=settings.seed, device=device,
                      progress=settings.progress)
    return result


def _fit_without_training(model, splits, out, settings, device, item_map, lineage, base_summary) -> dict:
    """Popularity: fit on the training targets, validate once, write the same folder."""
    started = time.perf_counter()
    model.fit(np.asarray(splits.train_targets))
    result = _validate(model, splits, settings, device)
    seconds = time.perf_counter() - started
    curve = {"title": f"{model.config['name']} ({model.config['preset']})", "train": [],
             "valid": [{"epoch": 0, **result["metrics"]}]}
    summary = {**base_summary, "best_epoch": 0, "epochs_run": 0, "stop_reason": "fitted",
               "seconds": round(seconds, 3), "train_seconds": round(seconds, 3),
               "samples_per_second": round(len(splits.train_targets) / max(seconds, 1e-9), 1),
               "best_valid": result["metrics"], "lineage": lineage}
    from diffurec.model_folder import save_model_folder

    save_model_folder(out, model, item_ids=splits.item_ids, item_map_path=item_map, curve=curve, summary=summary)
    return summary


def _train_loop(model, splits, out, settings: TrainSettings, device, rank, world_size, item_map,
                lineage, base_summary) -> dict:
    from diffurec import telemetry
    from diffurec.model_folder import save_model_folder

    loss_module = LossModule(model)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)

    inputs, targets = splits.train_inputs, splits.train_targets
    num_samples = len(targets)
    if num_samples == 0:
        raise DiffuRecError(f"{splits.path}: no training samples (every user has exactly 3 items?)")
    lengths = history_lengths(inputs) if model.trims_padding else None

    curve = {"title": f"{model.config['name']} ({model.config['preset']})", "train": [], "valid": []}
    best: dict = {}
    best_state = None
    start_epoch, bad_validations, elapsed, train_seconds, samples_trained = 1, 0, 0.0, 0.0, 0
    stop_reason = "epochs"

    checkpoint_path = Path(settings.checkpoint_dir) / CHECKPOINT_FILE if settings.checkpoint_dir else None
    if settings.resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        if state["settings"] != _result_settings(settings) or state["model_config"] != model.config:
            raise DiffuRecError(f"{checkpoint_path}: written by a run with other settings; "
                                f"start without --resume or use another --checkpoint-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best, best_state, curve = state["best"], state["best_model"], state["curve"]
        bad_validations, elapsed = state["bad_validations"], state["seconds"]
        train_seconds, samples_trained = state["train_seconds"], state["samples_trained"]
        start_epoch = state["epoch"] + 1
        stop_reason = state.get("stop_reason")
        if rank == 0:
            logger.info("resumed from %s after epoch %d", checkpoint_path, state["epoch"])
    elif settings.resume and rank == 0:
        logger.info("no checkpoint at %s yet: starting from scratch", checkpoint_path)

    # A resumed run that had already stopped only writes its folder (unless given more time).
    finished = start_epoch > 1 and (stop_reason == "patience" or (
        stop_reason == "time budget" and settings.max_minutes is not None
        and elapsed >= settings.max_minutes * 60))
    last_epoch = start_epoch - 1
    if rank == 0:
        logger.info("training %s (%s) on %s: %d samples, batch %d, %d rank(s)%s", model.config["name"],
                    model.config["preset"], device, num_samples, settings.batch_size, world_size,
                    ", length-bucketed batches" if lengths is not None else "")
    for epoch in range(start_epoch, settings.epochs + 1):
        if finished:
            break
        last_epoch = epoch
        run_started = time.perf_counter()
        torch.manual_seed(epoch_seed(settings.seed, epoch, rank))
        batches = epoch_batches(num_samples, settings.batch_size, settings.seed, epoch, lengths)
        deadline = (run_started + settings.max_minutes * 60 - elapsed) if settings.max_minutes is not None else None
        loss_sum, seen, fingerprint, cut_short = train_batches(
            loss_module, optimizer, inputs, targets, batches, lengths, device, rank, world_size,
            desc=f"epoch {epoch}", progress=settings.progress, deadline=deadline)
        scheduler.step()
        devices.synchronize(device)
        loss_sum, seen, fingerprint = _all_sum([loss_sum, float(seen), fingerprint], world_size, device)
        epoch_train_seconds = time.perf_counter() - run_started
        train_seconds += epoch_train_seconds
        samples_trained += int(seen)
        epoch_loss = loss_sum / max(seen, 1)
        if cut_short and rank == 0:
            logger.info("time budget spent during epoch %d after %d of %d samples", epoch, int(seen), num_samples)
        curve["train"].append({"epoch": epoch, "loss": epoch_loss, "samples": int(seen),
                               "sample_fingerprint": int(fingerprint), "seconds": round(epoch_train_seconds, 3)})

        decision = None
        if rank == 0:
            rate = seen / max(epoch_train_seconds, 1e-9)
            logger.info("epoch %d: loss %.4f, %.0f samples/s, %.1f s", epoch, epoch_loss, rate, epoch_train_seconds)
            telemetry.training_progress(epoch, epoch_loss, rate)
            out_of_time = cut_short or (settings.max_minutes is not None
                                        and elapsed + time.perf_counter() - run_started >= settings.max_minutes * 60)
            last = epoch == settings.epochs or out_of_time
            reason = "time budget" if out_of_time else "epochs" if last else None
            if epoch % settings.eval_every == 0 or last:
                metrics = _validate(model, splits, settings, device)["metrics"]
                curve["valid"].append({"epoch": epoch, **metrics})
                if update_best(best, metrics, epoch, settings.stop_rule):
                    best_state, bad_validations = _cpu_state(model), 0
                else:
                    bad_validations += 1
                logger.info("validation after epoch %d: NDCG@10 %.4f HR@10 %.4f (best %.4f at epoch %d, %d/%d without improvement)",
                            epoch, metrics["NDCG@10"], metrics["HR@10"], best["metrics"]["NDCG@10"],
                            best["epoch"], bad_validations, settings.patience)
                if bad_validations >= settings.patience:
                    reason = "patience"
            decision = reason
        decision = _broadcast(decision, world_size)
        finished = decision in ("patience", "time budget")
        if decision is not None:
            stop_reason = decision
        elapsed += time.perf_counter() - run_started
        if rank == 0 and checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {
                "version": CHECKPOINT_VERSION, "epoch": epoch, "model": _cpu_state(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "best_model": best_state, "best": best, "bad_validations": bad_validations,
                "curve": curve, "seconds": elapsed, "train_seconds": train_seconds,
                "samples_trained": samples_trained, "stop_reason": stop_reason,
                "settings": _result_settings(settings), "model_config": model.config})
        if world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    if rank != 0:
        return {}
    if best_state is None:  # no validation ran (e.g. resumed a finished run with a larger budget)
        metrics = _validate(model, splits, settings, device)["metrics"]
        curve["valid"].append({"epoch": last_epoch, **metrics})
        update_best(best, metrics, last_epoch, settings.stop_rule)
        best_state = _cpu_state(model)
    model.load_state_dict(best_state)
    summary = {**base_summary, "best_epoch": best["epoch"], "epochs_run": last_epoch,
               "stop_reason": stop_reason, "seconds": round(elapsed, 3),
               "train_seconds": round(train_seconds, 3),
               "samples_per_second": round(samples_trained / max(train_seconds, 1e-9), 1),
               "best_valid": best["metrics"], "settings": _result_settings(settings),
               "lineage": lineage}
    save_model_folder(out, model, item_ids=splits.item_ids, item_map_path=item_map, curve=curve, summary=summary)
    logger.info("best validation NDCG@10 %.4f at epoch %d; model folder %s",
                best["metrics"]["NDCG@10"], best["epoch"], out)
    return summary
