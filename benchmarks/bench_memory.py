"""Peak memory (RSS) of training on ML-1M on the CPU.

Preprocesses ML-1M (the paper's sequence file: 6,040 users, 982 k training samples), trains a
fixed number of the trainer's batches per preset in a fresh subprocess each, and reports the
subprocess's peak resident set size (getrusage ru_maxrss) next to the size of the memory-mapped
training arrays. Batches come from the memory map by index arrays, so memory should not grow with
the number of samples beyond the pages touched.

    nice -n 10 .venv/bin/python benchmarks/bench_memory.py --threads 1 --batches 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import REPO, dataset_splits, machine, write_result

CHILD = r"""
import json, resource, time
import torch
from common import dataset_splits
from diffurec import device as devices
from diffurec.models import build_model
from diffurec.train import LossModule, epoch_batches, train_batches
preset, batches, batch_size, threads = {preset!r}, {batches}, {batch_size}, {threads}
dev = torch.device("cpu"); devices.configure(dev, threads)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
splits = dataset_splits("ml-1m")
torch.manual_seed(1997)
model = build_model("diffurec", splits.num_items, splits.max_len, preset)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
lengths = splits.train_lengths() if model.trims_padding else None
order = epoch_batches(splits.num_train_samples, batch_size, 1997, 1, lengths)[:batches]
started = time.perf_counter()
train_batches(LossModule(model), optimizer, splits, order, lengths, dev,
              progress=False)
print(json.dumps({{"preset": preset, "batches": len(order), "batch_size": batch_size,
                  "seconds": round(time.perf_counter() - started, 2),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "rss_after_imports_mib": round(before / 1024, 1),
                  "parameters": sum(p.numel() for p in model.parameters())}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="paper,fast")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="memory_ml1m")
    args = parser.parse_args()
    splits = dataset_splits("ml-1m")  # preprocess once, outside the measured processes
    # training windows are gathered from the sequences per batch (splits version 2)
    arrays_mib = (splits.seq_items.nbytes + splits.seq_offsets.nbytes) / 2**20
    rows = []
    for preset in args.presets.split(","):
        code = CHILD.format(
            preset=preset, batches=args.batches, batch_size=args.batch_size, threads=args.threads
        )
        # `python -c` imports from its working folder: benchmarks/, for `common`.
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO / "benchmarks"
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    write_result(
        args.out,
        {
            "machine": machine(),
            "dataset": "ml-1m",
            "users": splits.num_users,
            "items": splits.num_items,
            "train_samples": splits.num_train_samples,
            "memory_mapped_sequences_mib": round(arrays_mib, 1),
            "presets": rows,
            "note": "peak RSS includes the memory-mapped pages the batches touched",
        },
    )


if __name__ == "__main__":
    main()
