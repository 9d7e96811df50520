"""The settings of a training run, apart from the trainer so the CLI can show its defaults
without importing torch (`diffurec --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from diffurec.errors import DiffuRecError

STOP_RULES = ("ndcg", "reference")

# Settings that change the trained weights: a checkpoint is only resumed when they match.
# (epochs, max_minutes, device, threads and paths may change between the runs.)
RESULT_SETTINGS = ("model", "preset", "hyper", "batch_size", "lr", "weight_decay", "lr_step",
                   "lr_gamma", "eval_every", "patience", "stop_rule", "seed", "eval_batch_size",
                   "eval_reverse_steps")


@dataclass
class TrainSettings:
    """Everything a training run depends on; the defaults are the reference's (diffurec-reference.md §2)."""

    model: str = "diffurec"
    preset: str | None = None           # None: the model's default preset
    hyper: dict = field(default_factory=dict)  # model hyperparameter overrides
    epochs: int = 500
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_step: int = 100                  # StepLR: lr x lr_gamma every lr_step epochs
    lr_gamma: float = 0.1
    eval_every: int = 20                # validate every N epochs (and after the last one)
    patience: int = 5                   # stop after this many validations without improvement
    stop_rule: str = "ndcg"             # "ndcg": valid NDCG@10 improved; "reference": any of six
    max_minutes: float | None = None    # time budget over all (resumed) runs; may end mid-epoch
    seed: int = 1997
    device: str = "auto"
    threads: int | None = None          # CPU threads per process (default: cores / local ranks)
    eval_batch_size: int = 1024
    eval_reverse_steps: int | None = None  # None: the model's default
    checkpoint_dir: str | None = None
    resume: bool = False
    progress: bool | None = None        # tqdm bars; None: only on a terminal

    def check(self) -> None:
        if self.stop_rule not in STOP_RULES:
            raise DiffuRecError(f"--stop-rule {self.stop_rule!r}: choose from {', '.join(STOP_RULES)}")
        for name in ("epochs", "batch_size", "eval_every", "patience", "lr_step", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise DiffuRecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise DiffuRecError(f"--lr must be positive, got {self.lr}")
        if self.resume and not self.checkpoint_dir:
            raise DiffuRecError("--resume needs --checkpoint-dir")
