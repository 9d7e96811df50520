"""Shared pieces of the benchmark scripts: datasets, machine facts, FLOP counts, JSON output.

Datasets are preprocessed from ../shared/data (or $DIFFUREC_SHARED_DATA) into a cache folder
outside the repository (default ~/.cache/diffurec-bench); they are never copied into git.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("DIFFUREC_BENCH_RESULTS", REPO / "benchmarks" / "results"))
SHARED_DATA = Path(os.environ.get("DIFFUREC_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("DIFFUREC_BENCH_CACHE", Path.home() / ".cache" / "diffurec-bench"))

DATASETS = {  # name -> (file under shared/data, format)
    "beauty": ("amazon-beauty/Beauty.txt", "sequences"),
    "toys": ("amazon-toys/Toys_and_Games.txt", "sequences"),
    "ml-1m": ("ml-1m/ml-1m_diffurec_sequences.txt", "sequences"),
    "ml-100k": ("ml-100k/ml-100k.inter", "inter"),
}
# The paper's test metrics (diffurec-reference.md section 6), percent.
PAPER_TEST = {"beauty": {"HR@10": 7.9068, "NDCG@10": 4.7494}, "toys": {"HR@10": 7.4587, "NDCG@10": 4.7724}}


def dataset_splits(name: str, cache: Path = CACHE):
    """The splits of a named dataset, preprocessed once into the cache."""
    from diffurec.data.preprocess import preprocess_file
    from diffurec.data.splits import load_splits

    relative, fmt = DATASETS[name]
    folder = cache / name
    if not (folder / "format.json").is_file():
        preprocess_file(SHARED_DATA / relative, folder, format=fmt)
    return load_splits(folder)


def subset(splits, users: int | None = None, samples: int | None = None):
    """The same splits with only their first users: at least `users` of them and enough for
    at least `samples` training samples (the samples and evaluation rows are the users')."""
    count = max(users or 0, int(np.searchsorted(splits.train_sample_offsets, samples or 0)))
    count = min(max(count, 1), splits.num_users)
    offsets = np.asarray(splits.seq_offsets)[: count + 1]
    return dataclasses.replace(
        splits,
        seq_items=splits.seq_items[: offsets[-1]],
        seq_offsets=offsets,
        user_ids=splits.user_ids[:count],
    )


def machine() -> dict:
    """Facts needed to read a timing: CPU, cores, load (the machine here is shared), torch."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def matmul_flops_per_second(
    device: str = "cpu", dtype_name: str = "float32", n: int = 1024, seconds: float = 3.0
) -> float:
    """Best dense n x n matmul throughput over about `seconds` (2 n^3 FLOPs per product)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    for _ in range(3):
        a @ b  # warm-up
    while time.perf_counter() < deadline:
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - started))
    return best


def forward_flops_per_sample(config: dict, length: int) -> float:
    """Analytic forward FLOPs (2 x multiply-adds) of one training sample of history `length`.

    Per block: Q, K, V, output projections 4 L d^2, attention scores and values 2 L^2 d, FFN
    2 L d f; plus the time MLP (DiffuRec, 8 d^2) and the scoring matmul d (N + 1).
    Norms, softmax and element-wise work are left out (they are not matmuls).
    """
    d, f, blocks = config["hidden_size"], config["ffn_size"], config["num_blocks"]
    per_block = 4 * length * d * d + 2 * length * length * d + 2 * length * d * f
    time_mlp = 8 * d * d if config["name"] == "diffurec" else 0
    scoring = d * (config["num_items"] + 1)
    return 2.0 * (blocks * per_block + time_mlp + scoring)


def write_result(name: str, result: dict, echo: bool = True) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {
        "benchmark": name,
        "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        **result,
    }
    temporary = path.with_name(path.name + ".tmp")  # replaced whole: a killed run leaves the last one
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(path)
    if echo:
        print(json.dumps(result, indent=2))
    return path


def batch_lengths(splits, batches, trims: bool) -> np.ndarray:
    """The padded length each batch is computed at (its longest history when trimming)."""
    lengths = splits.train_lengths()
    return np.array([max(int(lengths[b].max()), 1) if trims else splits.max_len for b in batches])
