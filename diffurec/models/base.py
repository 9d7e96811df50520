"""The interface every model implements; the trainer, evaluator and model folder rely on nothing else.

Importable without torch (the annotations are strings), so the registry can name it cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    import numpy as np
    import torch


@runtime_checkable
class SequentialRecommender(Protocol):
    """A next-item model over items 1..num_items (index 0 is padding), and a torch.nn.Module.

    Built as `cls(num_items, max_len, preset=..., **overrides)`, where `overrides` may name only
    keys of the preset; `config` then holds name, preset, num_items, max_len and every
    hyperparameter as plain values, so `model_from_config(config)` rebuilds it (config.json).
    Models know tensors, not files: saving and loading folders is the trainer's job.
    """

    config: dict[str, Any]
    num_items: int
    max_len: int
    # True when the output is exactly independent of left padding, so a batch may be cut to
    # its longest real history (`inputs[:, -longest:]`).
    trims_padding: bool
    # False for models fitted in one pass with `fit(train_targets)` (FittedRecommender).
    requires_training: bool

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of inputs [B, L] long against targets [B] long; draws its own
        noise from torch's global RNG on the inputs' device."""
        ...

    def score(self, inputs: torch.Tensor, reverse_steps: int | None = None) -> torch.Tensor:
        """[B, num_items + 1] scores of every item for inputs [B, L] long (column 0 is padding);
        `reverse_steps` changes DiffuRec's reverse process and is ignored by other models."""
        ...

    def flops(self, batch: int, length: int, training: bool, reverse_steps: int | None = None) -> float:
        """Matmul FLOPs of one `loss` (forward + backward) or `score` call on a [batch, length]
        input, for throughput and MFU."""
        ...

    # The torch.nn.Module part the trainer, evaluator and model folder use (typed loosely:
    # torch's own signatures are overloaded).
    training: bool

    def to(self, *args: Any, **kwargs: Any) -> Self: ...

    def train(self, mode: bool = True) -> Self: ...

    def eval(self) -> Self: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any: ...


@runtime_checkable
class FittedRecommender(SequentialRecommender, Protocol):
    """A model with `requires_training = False`: fitted in one pass, never trained on `loss`."""

    def fit(self, train_targets: np.ndarray) -> Self:
        """Fit on every training sample's target item (1..num_items); returns the model."""
        ...


class ModelClass(Protocol):
    """What a registry entry names: the class, called as `cls(num_items, max_len, preset, **overrides)`;
    unknown presets or hyperparameter names raise ValueError."""

    def __call__(
        self, num_items: int, max_len: int, preset: str, **overrides: Any
    ) -> SequentialRecommender: ...
