"""Where training and inference run: CUDA when present (bf16 autocast), the CPU otherwise.

On the CPU the thread count is fixed explicitly and deterministic algorithms are requested, so
the same run twice gives bit-identical metrics (float sums depend on how work is split across
threads, so the thread count is part of the result; it is recorded in train_summary.json).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from diffurec.errors import DiffuRecError

logger = logging.getLogger(__name__)


def choose_device(name: str | None = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when CUDA is available, else cpu; 'cpu'/'cuda'/'cuda:N' as given."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DiffuRecError(f"--device {name}: CUDA is not available on this machine")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise DiffuRecError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def configure(device: torch.device, threads: int | None = None) -> int:
    """Fix CPU threads and, on the CPU, deterministic kernels; TF32 on CUDA.

    Threads default to $OMP_NUM_THREADS, else every core. On a machine shared with other jobs
    set it to 1: two threads that have to wait for each other's core run far slower than one.
    Returns the thread count used.
    """
    threads = int(threads or default_threads())
    torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # cuDNN's attention builds a plan for every new shape (about 160 ms on an H200, torch 2.11),
        # and batches trimmed to their longest history change shape almost every batch: with it on,
        # `fast` trained 13x slower (benchmarks/results/gpu_sdpa_shapes.json).
        torch.backends.cuda.enable_cudnn_sdp(False)
    return threads


def default_threads(processes: int = 1) -> int:
    """$OMP_NUM_THREADS when set, else the cores divided among `processes` local processes."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // max(processes, 1))


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on the CPU (fp32 there is faster and exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
