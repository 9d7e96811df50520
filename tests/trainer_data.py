"""Small real data for the trainer's tests: a slice of ML-100K and tiny model settings.

The slice keeps the first `users` users of ml-100k.inter (file order) and each one's last
`last` interactions in time order, so every user contributes `last - 3` training samples of
length <= `last - 2`; with max_len 20 a tiny model trains an epoch in seconds on one thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffurec.train import TrainSettings

# Tiny DiffuRec / SASRec sizes: the tests check the trainer's behaviour, not model quality.
TINY_DIFFUREC = {"hidden_size": 32, "num_blocks": 1, "ffn_size": 64}
TINY_SASREC = {"hidden_size": 32}


def adam_losses(model, inputs, targets, steps: int, lr: float = 1e-3) -> list[float]:
    """The loss before each of `steps` Adam steps of `model` on one fixed batch."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def write_ml100k_slice(shared_data: Path, out: Path, users: int, last: int, max_len: int = 20) -> Path:
    from diffurec.data.preprocess import preprocess_frame
    from diffurec.data.readers import read_interactions

    frame = read_interactions(shared_data / "ml-100k" / "ml-100k.inter")
    keep = set(frame["user"].drop_duplicates().iloc[:users])
    frame = frame[frame["user"].isin(keep)]
    frame = frame.sort_values(["user", "timestamp"], kind="stable").groupby("user", sort=False).tail(last)
    preprocess_frame(frame, out, max_len=max_len, source={"path": f"ml-100k-slice-{users}x{last}"})
    return out


def hyper_args(hyper: dict) -> list[str]:
    """--set KEY=VALUE arguments for the CLI."""
    args = []
    for key, value in hyper.items():
        args += ["--set", f"{key}={value}"]
    return args


def tiny_settings(**changes) -> TrainSettings:
    """A tiny DiffuRec `fast` run (2 epochs, batch 128, lr 0.01, validation every epoch, one
    thread); keyword arguments replace any setting."""
    from diffurec.train import TrainSettings

    base = dict(
        model="diffurec",
        preset="fast",
        hyper=dict(TINY_DIFFUREC),
        epochs=2,
        batch_size=128,
        lr=0.01,
        eval_every=1,
        threads=1,
        progress=False,
    )
    return TrainSettings(**{**base, **changes})
