"""The one trainer: every model of `diffurec.models` is trained, validated, checkpointed and
saved here, on one CPU/GPU or under `torchrun` (DistributedDataParallel).

Data: each batch's left-padded windows are gathered from the splits' memory-mapped sequences
by index arrays (`Splits.train_batch`; no per-sample Python objects, no materialised windows).
When the model's output ignores left padding (`model.trims_padding`), samples are bucketed by
history length and each batch is built at its longest real history, which removes most of the
compute on short-history data.

Reproducibility: the model is initialised from `seed`; every epoch reseeds torch's RNG from
(seed, epoch, rank) and draws its sample order from (seed, epoch). So the RNG state at the
start of an epoch is a function of those numbers, a checkpoint only has to store the epoch,
and a run resumed from any checkpoint continues exactly like an uninterrupted one.

Distributed: every rank sees the same global batches; rank r trains on the r-th piece of each
(np.array_split), and each piece's mean loss is weighted by its share of the global batch, so
the averaged DDP gradient equals the gradient of the global batch's mean loss (as with one
process). Rank 0 validates, decides when to stop and writes checkpoints and the model folder.

Structure: `train` builds a `Run` (what the run works with) and either fits a model that needs
no training or trains epoch by epoch (`_train`); what the run has done so far is one
`TrainState`, which is what a checkpoint restores and what train_summary.json reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from diffurec import device as devices
from diffurec.errors import DiffuRecError
from diffurec.metrics import METRIC_KEYS
from diffurec.train_settings import RESULT_SETTINGS, TrainSettings

if TYPE_CHECKING:
    from diffurec.data.splits import Splits
    from diffurec.models import SequentialRecommender

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1
REFERENCE_METRICS = METRIC_KEYS  # the "reference" stop rule: any of the six improved
# Stop reasons after which a resumed run trains no further (unless given more time).
STOPPING_REASONS = ("patience", "time budget")

T = TypeVar("T")


# ---- data ---------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def epoch_batches(
    num_samples: int, batch_size: int, seed: int, epoch: int, lengths: np.ndarray | None = None
) -> list[np.ndarray]:
    """The global batches (sample index arrays) of one epoch, the same on every rank.

    Without `lengths`: a random permutation cut into batches. With `lengths`: samples sorted by
    length with random tie order (shuffled within equal-length buckets), cut into batches of
    similar length, and the batch order shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    if lengths is None:
        order = rng.permutation(num_samples)
        return [order[lo : lo + batch_size] for lo in range(0, num_samples, batch_size)]
    order = np.lexsort((rng.random(num_samples), lengths))
    batches = [order[lo : lo + batch_size] for lo in range(0, num_samples, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def rank_piece(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s disjoint share of a global batch."""
    return np.array_split(batch, world_size)[rank] if world_size > 1 else batch


def batch_tensors(
    splits: Splits, index: np.ndarray, lengths: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [B, L'], targets [B]) as int64 on `device`; L' = the longest history when trimming
    (`lengths`: Splits.train_lengths), else max_len."""
    index = np.sort(index)  # sequential reads from the memory map; the loss is a mean anyway
    width = max(int(lengths[index].max()), 1) if lengths is not None else None
    inputs, targets = splits.train_batch(index, width)
    batch_inputs = torch.from_numpy(inputs.astype(np.int64))
    batch_targets = torch.from_numpy(targets.astype(np.int64))
    if device.type == "cuda":
        return (
            batch_inputs.pin_memory().to(device, non_blocking=True),
            batch_targets.pin_memory().to(device, non_blocking=True),
        )
    return batch_inputs, batch_targets


class LossModule(nn.Module):
    """forward() = model.loss(), so DistributedDataParallel sees the call it hooks into."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.model.loss(inputs, targets)
        return loss


def train_batches(
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    splits: Splits,
    batches: list[np.ndarray],
    lengths: np.ndarray | None,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    desc: str = "train",
    progress: bool | None = None,
    deadline: float | None = None,
    warmup: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[float, int, float, bool]:
    """One pass of optimizer steps over `batches` (sample index arrays of `splits`); `warmup`
    is stepped after every optimizer step.

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
        batch_inputs, batch_targets = batch_tensors(splits, index, lengths, device)
        with devices.autocast(device):
            loss = loss_module(batch_inputs, batch_targets)
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        optimizer.step()
        if warmup is not None and warmup.last_epoch < warmup.total_iters:
            warmup.step()
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


def update_best(best: dict[str, Any], metrics: dict[str, float], epoch: int, rule: str) -> bool:
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


# ---- checkpoint files ---------------------------------------------------------------------


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_checkpoint(path: Path, contents: dict[str, Any]) -> None:
    """Write `contents` (TrainState.to_checkpoint) with the format version: torch.save to a
    temporary file in the same folder, then rename, so it is never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"version": CHECKPOINT_VERSION, **contents}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: say which
        raise DiffuRecError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(contents, dict) or contents.get("version") != CHECKPOINT_VERSION:
        raise DiffuRecError(f"{path}: not a diffurec checkpoint version {CHECKPOINT_VERSION}")
    return contents


def _splits_md5(path: str | os.PathLike[str]) -> str:
    """The splits folder's data version (its DVC md5), recorded in every checkpoint."""
    folder = os.stat(path)
    return _folder_md5(str(path), folder.st_ino, folder.st_mtime_ns)


@functools.cache
def _folder_md5(path: str, inode: int, mtime_ns: int) -> str:
    """Hashed once per folder: a folder written again (atomically: a new inode) is hashed again."""
    from diffurec.lineage import data_md5

    return data_md5(path)


def _result_settings(settings: TrainSettings) -> dict[str, Any]:
    values = asdict(settings)
    # No warm-up is how runs trained before the setting existed: their checkpoints still resume.
    return {key: values[key] for key in RESULT_SETTINGS if key != "warmup_steps" or values[key]}


# ---- distributed --------------------------------------------------------------------------


def distributed_context() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _broadcast(value: T, world_size: int) -> T:
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
    summed: list[float] = tensor.tolist()
    return summed


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def _process_group(device: torch.device, world_size: int) -> Iterator[None]:
    """torchrun's process group for the duration of a run, unless the caller already made one."""
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            try:
                yield
            finally:
                dist.destroy_process_group()
            return
    yield


# ---- the run and its state ----------------------------------------------------------------


@dataclass
class Run:
    """What one training run works with; the same on every rank apart from `rank`."""

    model: SequentialRecommender
    splits: Splits
    settings: TrainSettings  # with the preset resolved
    device: torch.device
    threads: int
    rank: int
    world_size: int
    out: str | os.PathLike[str]
    lineage: dict[str, Any]

    @property
    def module(self) -> nn.Module:
        """The model as the torch module every model also is (state dicts, parameters)."""
        assert isinstance(self.model, nn.Module)
        return self.model

    @property
    def is_writer(self) -> bool:
        """Rank 0 validates, decides when to stop and writes checkpoints and the model folder."""
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path | None:
        directory = self.settings.checkpoint_dir
        return Path(directory) / CHECKPOINT_FILE if directory else None

    def new_curve(self) -> dict[str, Any]:
        """curve.json before the first epoch (docs/formats.md)."""
        return {
            "title": f"{self.model.config['name']} ({self.model.config['preset']})",
            "train": [],
            "valid": [],
        }

    def validate(self) -> dict[str, float]:
        """The six validation metrics of the model as it is now."""
        from diffurec.evaluate import evaluate

        settings = self.settings
        result = evaluate(
            self.model,
            self.splits,
            split="valid",
            reverse_steps=settings.eval_reverse_steps,
            batch_size=settings.eval_batch_size,
            seed=settings.seed,
            device=self.device,
            progress=settings.progress,
        )
        metrics: dict[str, float] = result["metrics"]
        return metrics


@dataclass
class Training:
    """What trains the model: its loss (DDP-wrapped on several ranks), Adam and StepLR, and the
    history length of every training sample when batches are cut to it (None: full length)."""

    loss_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # StepLR, stepped after every epoch
    lengths: np.ndarray | None
    # LinearLR from lr / warmup_steps to lr, stepped after every optimizer step; None without
    # warm-up. Both schedulers scale the lr they find, so their factors multiply.
    warmup: torch.optim.lr_scheduler.LRScheduler | None = None

    @classmethod
    def for_run(cls, run: Run) -> Training:
        settings = run.settings
        loss_module: nn.Module = LossModule(run.module)
        if run.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [run.device.index] if run.device.type == "cuda" else None
            loss_module = DistributedDataParallel(loss_module, device_ids=device_ids)
        optimizer = torch.optim.Adam(
            run.module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma
        )
        warmup = None
        if settings.warmup_steps:
            warmup = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1 / settings.warmup_steps, total_iters=settings.warmup_steps - 1
            )
        if run.splits.num_train_samples == 0:
            raise DiffuRecError(f"{run.splits.path}: no training samples (every user has exactly 3 items?)")
        lengths = run.splits.train_lengths() if run.model.trims_padding else None
        return cls(loss_module, optimizer, scheduler, lengths, warmup)


@dataclass
class TrainState:
    """What a run has done so far. With the model's, optimizer's and scheduler's state dicts it
    is the checkpoint (its field names are the checkpoint's keys, docs/formats.md), and it is
    what train_summary.json reports. Rank 0's holds the validations; the others' do not."""

    curve: dict[str, Any]  # curve.json: train rows per epoch, valid rows per validation
    epoch: int = 0  # epochs finished
    best: dict[str, Any] = field(default_factory=dict)  # update_best's record: epoch, metrics, maxima
    best_model: dict[str, torch.Tensor] | None = None  # state dict of the best validation so far
    bad_validations: int = 0  # validations since the last improvement
    seconds: float = 0.0  # wall time over all (resumed) runs, validations included
    train_seconds: float = 0.0  # of which training passes
    samples_trained: int = 0
    stop_reason: str = "epochs"  # "epochs", "patience", "time budget"; "fitted" without training

    def to_checkpoint(self, run: Run, training: Training) -> dict[str, Any]:
        """The checkpoint's contents (save_checkpoint adds the format version)."""
        return {
            **{name: getattr(self, name) for name in self._keys()},
            "model": _cpu_state(run.module),
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            **({"warmup": training.warmup.state_dict()} if training.warmup else {}),
            **self._run_identity(run),
        }

    @classmethod
    def from_checkpoint(
        cls, checkpoint: dict[str, Any], path: Path, run: Run, training: Training
    ) -> TrainState:
        """The state a checkpoint holds; restores the model, optimizer and scheduler in place."""
        advice = "start without --resume or use another --checkpoint-dir"
        for key, value in cls._run_identity(run).items():
            if key not in checkpoint:
                raise DiffuRecError(f"{path}: a checkpoint without its {key} (an older diffurec); {advice}")
            if checkpoint[key] != value:
                what = {"settings": "other settings", "model_config": "another model config"}.get(
                    key, f"other data (splits md5 {checkpoint[key]}, this run's {value})"
                )
                raise DiffuRecError(f"{path}: written by a run with {what}; {advice}")
        run.module.load_state_dict(checkpoint["model"])
        training.optimizer.load_state_dict(checkpoint["optimizer"])
        training.scheduler.load_state_dict(checkpoint["scheduler"])
        if training.warmup:
            training.warmup.load_state_dict(checkpoint["warmup"])
        return cls(**{name: checkpoint[name] for name in cls._keys()})

    @classmethod
    def _keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @staticmethod
    def _run_identity(run: Run) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed: the result settings, the model and
        the data (the splits folder's DVC md5; None for splits that are not a folder)."""
        path = run.splits.path
        return {
            "settings": _result_settings(run.settings),
            "model_config": run.model.config,
            "splits_md5": _splits_md5(path) if path is not None else None,
        }

    def has_stopped(self, settings: TrainSettings) -> bool:
        """A resumed run that had already stopped trains no further (unless given more time)."""
        return self.epoch > 0 and (
            self.stop_reason == "patience"
            or (
                self.stop_reason == "time budget"
                and settings.max_minutes is not None
                and self.seconds >= settings.max_minutes * 60
            )
        )

    def summary(self, run: Run) -> dict[str, Any]:
        """train_summary.json (docs/formats.md)."""
        splits = run.splits
        summary = {
            "model": run.model.config["name"],
            "preset": run.settings.preset,
            "seed": run.settings.seed,
            "device": str(run.device),
            "threads": run.threads,
            "world_size": run.world_size,
            "splits": str(splits.path) if splits.path is not None else None,
            "num_items": splits.num_items,
            "num_train_samples": splits.num_train_samples,
            "best_epoch": self.best["epoch"],
            "epochs_run": self.epoch,
            "stop_reason": self.stop_reason,
            "seconds": round(self.seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "samples_per_second": round(self.samples_trained / max(self.train_seconds, 1e-9), 1),
            "best_valid": self.best["metrics"],
        }
        if run.model.requires_training:  # the training settings do not apply to a fitted model
            summary["settings"] = _result_settings(run.settings)
        summary["lineage"] = run.lineage
        return summary


# ---- the training run ---------------------------------------------------------------------


def train(
    splits: Splits,
    out: str | os.PathLike[str],
    settings: TrainSettings,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `settings.model` on `splits`, write the model folder `out` (best validation
    weights) and return the training summary (also written as train_summary.json).

    Under torchrun only rank 0 writes and returns the summary; other ranks return {}.
    """
    run = _start_run(splits, out, settings, lineage)
    if not run.model.requires_training:
        # nothing to share out: rank 0 fits and writes
        return _fit_without_training(run) if run.is_writer else {}
    with _process_group(run.device, run.world_size):
        return _train(run)


def _start_run(
    splits: Splits, out: str | os.PathLike[str], settings: TrainSettings, lineage: dict[str, Any] | None
) -> Run:
    """Check the settings, set up the device and threads, and build the model from `seed`."""
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
    run = Run(model, splits, settings, device, threads, rank, world_size, out, dict(lineage or {}))
    run.module.to(device)
    run.lineage["preset"] = run.lineage.get("preset") or preset  # None: the model's default preset
    run.lineage.setdefault(
        "params",
        {k: v for k, v in asdict(settings).items() if k not in ("checkpoint_dir", "resume", "progress")},
    )
    return run


def _write_model_folder(run: Run, state: TrainState) -> dict[str, Any]:
    """Save the model as it is now with the state's curve and summary; returns the summary."""
    from diffurec.model_folder import save_model_folder

    summary = state.summary(run)
    item_map = Path(run.splits.path) / "item_map.tsv" if run.splits.path is not None else None
    save_model_folder(
        run.out,
        run.module,
        item_ids=run.splits.item_ids,
        item_map_path=item_map,
        curve=state.curve,
        summary=summary,
    )
    return summary


def _fit_without_training(run: Run) -> dict[str, Any]:
    """Popularity: fit on the training targets, validate once (as epoch 0), write the same folder."""
    from diffurec.models import FittedRecommender

    assert isinstance(run.model, FittedRecommender)
    started = time.perf_counter()
    run.model.fit(np.asarray(run.splits.train_targets))
    metrics = run.validate()
    seconds = time.perf_counter() - started
    state = TrainState(
        curve=run.new_curve(),
        seconds=seconds,
        train_seconds=seconds,
        samples_trained=run.splits.num_train_samples,
        stop_reason="fitted",
    )
    state.curve["valid"].append({"epoch": 0, **metrics})
    update_best(state.best, metrics, 0, run.settings.stop_rule)
    return _write_model_folder(run, state)


def _train(run: Run) -> dict[str, Any]:
    """Train epoch by epoch until a stop reason, checkpointing after every epoch; rank 0 then
    writes the model folder with the best validation's weights and returns the summary."""
    training = Training.for_run(run)
    state = _initial_state(run, training)
    if run.is_writer:
        logger.info(
            "training %s (%s) on %s: %d samples, batch %d, %d rank(s)%s",
            run.model.config["name"],
            run.model.config["preset"],
            run.device,
            run.splits.num_train_samples,
            run.settings.batch_size,
            run.world_size,
            ", length-bucketed batches" if training.lengths is not None else "",
        )
    if not state.has_stopped(run.settings):
        for epoch in range(state.epoch + 1, run.settings.epochs + 1):
            started = time.perf_counter()
            cut_short = _train_epoch(run, training, state, epoch, started)
            decision = _broadcast(
                _stop_reason(run, state, cut_short, started) if run.is_writer else None, run.world_size
            )
            if decision is not None:
                state.stop_reason = decision
            state.seconds += time.perf_counter() - started
            if run.is_writer and run.checkpoint_path is not None:
                save_checkpoint(run.checkpoint_path, state.to_checkpoint(run, training))
            _barrier(run.world_size)
            if decision in STOPPING_REASONS:
                break
    if not run.is_writer:
        return {}
    if state.best_model is None:  # no validation ran (e.g. resumed a finished run with a larger budget)
        _record_validation(run, state)  # the first validation always counts as the best so far
    assert state.best_model is not None
    run.module.load_state_dict(state.best_model)
    summary = _write_model_folder(run, state)
    logger.info(
        "best validation NDCG@10 %.4f at epoch %d; model folder %s",
        state.best["metrics"]["NDCG@10"],
        state.best["epoch"],
        run.out,
    )
    return summary


def _initial_state(run: Run, training: Training) -> TrainState:
    """A fresh state, or with --resume the checkpoint's (model, optimizer and scheduler restored)."""
    path = run.checkpoint_path
    if run.settings.resume and path is not None and path.is_file():
        state = TrainState.from_checkpoint(load_checkpoint(path), path, run, training)
        if run.is_writer:
            logger.info("resumed from %s after epoch %d", path, state.epoch)
        return state
    if run.settings.resume and run.is_writer:
        logger.info("no checkpoint at %s yet: starting from scratch", path)
    return TrainState(curve=run.new_curve())


def _train_epoch(run: Run, training: Training, state: TrainState, epoch: int, started: float) -> bool:
    """One pass over the training samples (every rank), recorded in `state`; True when the time
    budget ended it early. `started`: its time.perf_counter() start."""
    from diffurec import telemetry

    settings = run.settings
    splits = run.splits
    torch.manual_seed(epoch_seed(settings.seed, epoch, run.rank))
    batches = epoch_batches(
        splits.num_train_samples, settings.batch_size, settings.seed, epoch, training.lengths
    )
    deadline = None if settings.max_minutes is None else started + settings.max_minutes * 60 - state.seconds
    rank_loss_sum, rank_seen, rank_fingerprint, cut_short = train_batches(
        training.loss_module,
        training.optimizer,
        splits,
        batches,
        training.lengths,
        run.device,
        run.rank,
        run.world_size,
        desc=f"epoch {epoch}",
        progress=settings.progress,
        deadline=deadline,
        warmup=training.warmup,
    )
    training.scheduler.step()
    devices.synchronize(run.device)
    loss_sum, seen_sum, fingerprint = _all_sum(
        [rank_loss_sum, float(rank_seen), rank_fingerprint], run.world_size, run.device
    )
    seen = int(seen_sum)  # over all ranks
    seconds = time.perf_counter() - started
    state.epoch = epoch
    state.train_seconds += seconds
    state.samples_trained += seen
    loss = loss_sum / max(seen, 1)
    if cut_short and run.is_writer:
        logger.info(
            "time budget spent during epoch %d after %d of %d samples", epoch, seen, splits.num_train_samples
        )
    state.curve["train"].append(
        {
            "epoch": epoch,
            "loss": loss,
            "samples": seen,
            "sample_fingerprint": int(fingerprint),
            "seconds": round(seconds, 3),
        }
    )
    if run.is_writer:
        rate = seen / max(seconds, 1e-9)
        logger.info("epoch %d: loss %.4f, %.0f samples/s, %.1f s", epoch, loss, rate, seconds)
        telemetry.training_progress(epoch, loss, rate)
    return cut_short


def _stop_reason(run: Run, state: TrainState, cut_short: bool, started: float) -> str | None:
    """Rank 0, after epoch `state.epoch`: validate when due, and say why to stop, or None to go on."""
    settings = run.settings
    epoch = state.epoch
    out_of_time = cut_short or (
        settings.max_minutes is not None
        and state.seconds + time.perf_counter() - started >= settings.max_minutes * 60
    )
    last = epoch == settings.epochs or out_of_time
    reason = "time budget" if out_of_time else "epochs" if last else None
    if epoch % settings.eval_every == 0 or last:
        _record_validation(run, state)
        if state.bad_validations >= settings.patience:
            reason = "patience"
    return reason


def _record_validation(run: Run, state: TrainState) -> None:
    """Validate after epoch `state.epoch`: a curve row, the best so far (and its weights) and the
    count of validations without improvement."""
    metrics = run.validate()
    state.curve["valid"].append({"epoch": state.epoch, **metrics})
    if update_best(state.best, metrics, state.epoch, run.settings.stop_rule):
        state.best_model, state.bad_validations = _cpu_state(run.module), 0
    else:
        state.bad_validations += 1
    logger.info(
        "validation after epoch %d: NDCG@10 %.4f HR@10 %.4f (best %.4f at epoch %d, "
        "%d/%d without improvement)",
        state.epoch,
        metrics["NDCG@10"],
        metrics["HR@10"],
        state.best["metrics"]["NDCG@10"],
        state.best["epoch"],
        state.bad_validations,
        run.settings.patience,
    )
