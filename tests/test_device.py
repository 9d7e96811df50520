"""diffurec.device.configure: the backend switches it sets for CUDA (settable without a GPU)."""

from __future__ import annotations

import pytest
import torch

from diffurec import device as devices


@pytest.fixture
def restored_backends():
    saved = (
        torch.backends.cuda.cudnn_sdp_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
    )
    yield
    torch.backends.cuda.enable_cudnn_sdp(saved[0])
    torch.backends.cuda.matmul.allow_tf32 = saved[1]
    torch.backends.cudnn.allow_tf32 = saved[2]
    torch.set_num_threads(saved[3])
    torch.use_deterministic_algorithms(saved[4])


def test_cuda_turns_off_cudnn_attention_and_turns_on_tf32(restored_backends):
    # cuDNN's attention builds a plan per new shape (160 ms each on an H200), which made
    # length-trimmed batches train 8x slower (benchmarks/results/gpu_sdpa_shapes.json).
    torch.backends.cuda.enable_cudnn_sdp(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    assert devices.configure(torch.device("cuda"), 1) == 1
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_cpu_leaves_attention_backends_and_asks_for_determinism(restored_backends):
    torch.backends.cuda.enable_cudnn_sdp(True)
    torch.use_deterministic_algorithms(False)
    assert devices.configure(torch.device("cpu"), 1) == 1
    assert torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 1
