"""The settings of a training run: the one place a training setting is defined.

Each field of `TrainSettings` carries its default and its help text. From it come:
- the flags of `diffurec train` (`add_arguments`, `from_arguments`): one flag per field;
- `TrainSettings.from_mapping(...)`: params.yaml's `train:` section (DVC reads it with
  `diffurec train --params params.yaml`), or the Kubeflow pipeline's `train` dict parameter
  (passed to the command as `--settings JSON`).
Adding a setting is one field here and, to change its default for the pipeline, one line of
params.yaml. Kept apart from the trainer so `diffurec --help` does not import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from diffurec.errors import DiffuRecError
from diffurec.models import MODEL_NAMES

STOP_RULES = ("ndcg", "reference")
# The longest input window: the splits' [samples, max_len] arrays and attention grow with it.
MAX_LEN_LIMIT = 4096
# Seeds seed numpy too, whose seeds are 32-bit.
SEED_LIMIT = 2**32 - 1

# Settings that change the trained weights: a checkpoint is only resumed when they match.
# (epochs, max_minutes, device, threads and paths may change between the runs.)
RESULT_SETTINGS = (
    "model",
    "preset",
    "hyper",
    "batch_size",
    "lr",
    "weight_decay",
    "lr_step",
    "lr_gamma",
    "warmup_steps",
    "eval_every",
    "patience",
    "stop_rule",
    "seed",
    "eval_batch_size",
    "eval_reverse_steps",
)


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: minimum <= value (or minimum < value when `open_min`),
    value <= maximum (or value < maximum when `open_max`); None: no bound on that side."""

    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False

    def check(self, value: Any, where: str) -> None:
        """DiffuRecError naming `where` (a flag, or a file's key) unless `value` lies in the range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DiffuRecError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise DiffuRecError(f"{where} must be a finite number, got {value}")
        low = self.minimum is not None and (value <= self.minimum if self.open_min else value < self.minimum)
        high = self.maximum is not None and (value >= self.maximum if self.open_max else value > self.maximum)
        if low or high:
            raise DiffuRecError(f"{where} must be {self}, got {value}")

    def __str__(self) -> str:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            left, right = "(" if self.open_min else "[", ")" if self.open_max else "]"
            return f"in {left}{_number(low)}, {_number(high)}{right}"
        if low is not None:
            if self.open_min:
                return "positive" if low == 0 else f"greater than {_number(low)}"
            return f"at least {_number(low)}"
        if high is not None:
            return f"{'less than' if self.open_max else 'at most'} {_number(high)}"
        return "a number"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


AT_LEAST_ONE = Range(1)
NOT_NEGATIVE = Range(0)
POSITIVE = Range(0, open_min=True)
FRACTION = Range(0, 1, open_max=True)  # a probability that may not be 1 (dropout)
SEEDS = Range(0, SEED_LIMIT)
MAX_LENS = Range(1, MAX_LEN_LIMIT)

# The models' numeric hyperparameters (--set KEY=VALUE, params.yaml's train.hyper); the models
# check their other (string) hyperparameters themselves.
HYPERPARAMETER_RANGES = {
    "hidden_size": AT_LEAST_ONE,
    "num_blocks": AT_LEAST_ONE,
    "num_heads": AT_LEAST_ONE,
    "ffn_size": AT_LEAST_ONE,
    "diffusion_steps": AT_LEAST_ONE,
    "reverse_steps": AT_LEAST_ONE,
    "dropout": FRACTION,
    "emb_dropout": FRACTION,
    "layer_norm_eps": POSITIVE,
    "lambda_uncertainty": POSITIVE,
    "item_init_std": POSITIVE,
}


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    allowed: Range | None = None,
) -> Any:
    """A TrainSettings field: its default, what `diffurec train --help` says of it and, for a
    number, its allowed range (a None value, where the field allows it, is not checked)."""
    metadata = {"help": help, "choices": choices, "metavar": metavar, "range": allowed}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainSettings:
    """Everything a training run depends on; the defaults are the reference's (diffurec-reference.md §2)."""

    model: str = setting("diffurec", "model to train", choices=MODEL_NAMES)
    preset: str | None = setting(
        None,
        "preset of the model (diffurec: paper, fast, fast-init, fast-lite, fast-lite-pos; "
        "sasrec: recbole, pre-ln, dense, d128); default: the model's default (paper, recbole)",
    )
    hyper: dict[str, Any] = setting(
        {},
        "override one model hyperparameter, e.g. --set dropout=0.2 (repeatable; params.yaml: a mapping)",
        metavar="KEY=VALUE",
    )
    epochs: int = setting(500, "maximum number of epochs", allowed=AT_LEAST_ONE)
    batch_size: int = setting(512, "global batch size (all ranks)", allowed=AT_LEAST_ONE)
    lr: float = setting(1e-3, "Adam learning rate", allowed=POSITIVE)
    weight_decay: float = setting(0.0, "Adam weight decay", allowed=NOT_NEGATIVE)
    lr_step: int = setting(100, "StepLR: multiply the lr by lr_gamma every N epochs", allowed=AT_LEAST_ONE)
    lr_gamma: float = setting(0.1, "StepLR factor", allowed=POSITIVE)
    warmup_steps: int = setting(
        0,
        "raise the lr linearly from lr/N to lr over the first N optimizer steps (0: no warm-up)",
        allowed=NOT_NEGATIVE,
    )
    eval_every: int = setting(20, "validate every N epochs (and after the last)", allowed=AT_LEAST_ONE)
    patience: int = setting(5, "stop after N validations without improvement", allowed=AT_LEAST_ONE)
    stop_rule: str = setting(
        "ndcg",
        "ndcg: improvement = higher validation NDCG@10; reference: any of the six metrics higher",
        choices=STOP_RULES,
    )
    max_minutes: float | None = setting(
        None,
        "time budget (over resumed runs too); training stops "
        "mid-epoch when it is spent (checked after every batch; "
        "every 20 under DDP), then one last validation runs",
        allowed=NOT_NEGATIVE,
    )
    seed: int = setting(1997, "random seed", allowed=SEEDS)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    threads: int | None = setting(
        None, "CPU threads per process (default: cores / local ranks)", allowed=AT_LEAST_ONE
    )
    eval_batch_size: int = setting(1024, "users per validation batch", allowed=AT_LEAST_ONE)
    eval_reverse_steps: int | None = setting(
        None, "DiffuRec reverse steps during validation (default: the preset's)", allowed=AT_LEAST_ONE
    )
    checkpoint_dir: str | None = setting(None, "write a checkpoint here after every epoch", metavar="DIR")
    resume: bool = setting(False, "continue from the checkpoint in checkpoint_dir if there is one")
    progress: bool | None = setting(None, "progress bars (default: only on a terminal)")

    def check(self, source: str | None = None) -> None:
        """Raise a DiffuRecError for a setting out of its range; it names the setting as
        `source: name` (params.yaml's train:, --settings) or, without a source, as its flag."""
        where = f"{source}: model" if source else "--model"
        if self.model not in MODEL_NAMES:
            raise DiffuRecError(f"{where} {self.model!r}: choose from {', '.join(MODEL_NAMES)}")
        where = f"{source}: stop_rule" if source else "--stop-rule"
        if self.stop_rule not in STOP_RULES:
            raise DiffuRecError(f"{where} {self.stop_rule!r}: choose from {', '.join(STOP_RULES)}")
        check_ranges(self.to_mapping(), source)
        if self.resume and not self.checkpoint_dir:
            raise DiffuRecError("--resume needs --checkpoint-dir")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "train settings") -> TrainSettings:
        """Settings from a mapping of field names (params.yaml's `train:`, the pipeline's dict);
        `source` names it in errors. Missing fields keep their defaults."""
        if not isinstance(values, dict):
            raise DiffuRecError(f"{source}: expected a mapping of settings, found {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        checked = {}
        for name, value in values.items():
            if name not in known:
                raise DiffuRecError(f"{source}: unknown setting {name!r} (known: {', '.join(known)})")
            checked[name] = _typed(value, hints[name], f"{source}: {name}")
        settings = cls(**checked)
        settings.check(source)
        return settings

    def to_mapping(self) -> dict[str, Any]:
        """The fields as plain values (what from_mapping reads back)."""
        return dataclasses.asdict(self)


def check_ranges(values: dict[str, Any], source: str | None = None) -> None:
    """Check the numbers among `values` (TrainSettings field names; `hyper`: hyperparameter
    names) against their ranges; errors name `source: name`, or the flag without a source."""
    fields = {f.name: f for f in dataclasses.fields(TrainSettings)}
    for name, value in values.items():
        allowed = fields[name].metadata["range"] if name in fields else None
        if allowed is not None and value is not None:
            allowed.check(value, f"{source}: {name}" if source else f"--{flag(name)}")
    for name, value in (values.get("hyper") or {}).items():
        if name in HYPERPARAMETER_RANGES:
            HYPERPARAMETER_RANGES[name].check(value, f"{source}: hyper.{name}" if source else f"--set {name}")


def flag(name: str) -> str:
    """The command-line spelling of a field: batch_size -> batch-size."""
    return name.replace("_", "-")


def _base_type(hint: Any) -> tuple[type, bool]:
    """(type, optional) of a field's annotation: `int | None` -> (int, True)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _base_type(args[0])[0], True
    return (typing.get_origin(hint) or hint), False


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` checked (and ints widened to floats) against a field's annotation."""
    kind, optional = _base_type(hint)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # JSON through protobuf (a Kubeflow dict parameter) turns every number into a float.
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise DiffuRecError(
            f"{where}: expected {kind.__name__}{' or null' if optional else ''}, got {value!r}"
        )
    return value


def json_or_text(text: str) -> Any:
    """A KEY=VALUE value (--set): JSON when it parses (numbers, true/false, null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_hyper(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs -> {key: value}."""
    hyper = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DiffuRecError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set dropout=0.2")
        hyper[key.replace("-", "_")] = json_or_text(value)
    return hyper


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainSettings field. A flag that is not given stays unset (SUPPRESS), so
    `from_arguments` can tell it from a value of --params/--settings."""
    hints = typing.get_type_hints(TrainSettings)
    defaults = TrainSettings()
    for f in dataclasses.fields(TrainSettings):
        kind, _ = _base_type(hints[f.name])
        default = getattr(defaults, f.name)
        text = f.metadata["help"]
        options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.name == "hyper":
            parser.add_argument("--set", action="append", metavar=f.metadata["metavar"], help=text, **options)
        elif f.name == "progress":
            parser.add_argument(
                "--no-progress",
                action="store_const",
                const=False,
                help="no progress bars (default: only on a terminal)",
                **options,
            )
        elif kind is bool:
            parser.add_argument(f"--{flag(f.name)}", action="store_const", const=True, help=text, **options)
        else:
            shown = "" if default is None else f" (default: {default})"
            parser.add_argument(
                f"--{flag(f.name)}",
                type=kind,
                choices=f.metadata["choices"],
                metavar=f.metadata["metavar"],
                help=text + shown,
                **options,
            )


def from_arguments(
    args: argparse.Namespace, base: dict[str, Any] | None = None, source: str = "train settings"
) -> TrainSettings:
    """Settings from `base` (a params file's section or --settings) with the given flags on top."""
    values = dict(base or {})
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings) if hasattr(args, f.name)
    }
    if "hyper" in given:
        given["hyper"] = parse_hyper(given["hyper"])
    check_ranges(given)  # first the flags alone, so that an error names the flag
    if "hyper" in given:  # --set adds to (does not replace) the base's hyperparameters
        given["hyper"] = {**values.get("hyper", {}), **given["hyper"]}
    values.update(given)
    return TrainSettings.from_mapping(values, source=source)
