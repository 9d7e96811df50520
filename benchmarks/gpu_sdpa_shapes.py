"""Why `fast` trained slower than `paper` on an H200: the time of each of 50 training batches
(Beauty, batch 512) for `paper`, `fast` and `fast-lite`, split into batches whose trimmed length is
new in the run and batches that repeat one, with PyTorch's attention backends as set by
diffurec.device.configure and with cuDNN's or every fused backend switched off, plus a profile.

    bash benchmarks/gpu_check.sh --prepare   # here: the data and wheels it carries
    # on the GPU machine, carrying .gpu-data:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-data/wheels/*.whl
    PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/site DIFFUREC_SHARED_DATA=$PWD/.gpu-data \
        python3 benchmarks/gpu_sdpa_shapes.py   # writes $OUT/diag.json (or /tmp/diag.json)

results/gpu_sdpa_shapes.json was written by it when configure still left cuDNN's attention on.
"""

import json
import os
import time

import torch
from common import dataset_splits
from diffurec import device as devices
from diffurec.models import build_model
from diffurec.train import LossModule, epoch_batches, train_batches

dev = devices.choose_device("auto")
devices.configure(dev, None)
splits = dataset_splits("beauty")
out = {}


def run(label, preset, batch_size, n=50):
    torch.manual_seed(0)
    model = build_model("diffurec", splits.num_items, splits.max_len, preset).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lengths = splits.train_lengths() if model.trims_padding else None
    batches = epoch_batches(splits.num_train_samples, batch_size, 1997, 1, lengths)[:n]
    lm = LossModule(model)
    times = []
    for b in batches:
        devices.synchronize(dev)
        t = time.perf_counter()
        train_batches(lm, opt, splits, [b], lengths, dev, progress=False)
        devices.synchronize(dev)
        times.append(round(time.perf_counter() - t, 4))
    lens = [int(lengths[b].max()) if lengths is not None else -1 for b in batches]
    rep = [t for i, (n, t) in enumerate(zip(lens, times, strict=True)) if n in lens[:i]]
    new = [t for i, (n, t) in enumerate(zip(lens, times, strict=True)) if n not in lens[:i]]
    out[label] = {
        "times": times,
        "lens": lens,
        "median_new_shape": sorted(new)[len(new) // 2] if new else None,
        "median_repeat_shape": sorted(rep)[len(rep) // 2] if rep else None,
        "total": round(sum(times), 3),
    }
    print(label, json.dumps({k: v for k, v in out[label].items() if k not in ("times", "lens")}), flush=True)
    return lm, opt, batches, lengths


if dev.type == "cuda":  # the "default" rows: the backends as configure set them before the fix
    torch.backends.cuda.enable_cudnn_sdp(True)
run("paper_512", "paper", 512)
lm, opt, batches, lengths = run("fast_512_default", "fast", 512)
if dev.type == "cuda":
    from torch.profiler import profile, ProfilerActivity

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_batches(lm, opt, splits, batches[:8], lengths, dev, progress=False)
        devices.synchronize(dev)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=60))
    torch.backends.cuda.enable_cudnn_sdp(False)
    run("fast_512_no_cudnn_sdp", "fast", 512)
    torch.backends.cuda.enable_cudnn_sdp(True)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    run("fast_512_math_sdp", "fast", 512)
    torch.backends.cuda.enable_mem_efficient_sdp(True)
    torch.backends.cuda.enable_flash_sdp(True)
    torch.backends.cuda.enable_cudnn_sdp(True)
    run("fastlite_512_default", "fast-lite", 512)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "diag.json"), "w"))
