"""The model folder (`diffurec-model` version 1, docs/formats.md): save and load.

    config.json          format, version, model, preset, every hyperparameter, num_items, max_len
    model.safetensors    the state dict (popularity: its item counts)
    item_map.tsv         copied from the splits folder
    curve.json/.png      training loss per epoch, validation metrics per validation
    train_summary.json   best epoch, epochs run, seconds, samples/s, device, seed, lineage

Weights are safetensors only (no pickle), so loading runs no code. A folder is written to a
temporary sibling and renamed at the end: a failed save leaves no half-written folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from diffurec.errors import DiffuRecError
from diffurec.files import atomic_folder, read_json_object, write_json_atomic

if TYPE_CHECKING:  # reading a config or summary (register, gate) needs no torch
    import torch

logger = logging.getLogger(__name__)

FORMAT_NAME = "diffurec-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"


def write_item_map(path: Path, item_ids: list[str]) -> None:
    """`index<TAB>original_id` for items 1..N, the splits folder's format."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("index\toriginal_id\n")
        for index, original in enumerate(item_ids, start=1):
            f.write(f"{index}\t{original}\n")


def read_item_map(path: Path) -> list[str]:
    """Original ids of items 1..N from an item_map.tsv (list position i = item i + 1)."""
    ids = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        if header != "index\toriginal_id":
            raise DiffuRecError(f"{path}, row 1: expected header 'index<TAB>original_id', found {header!r}")
        for row, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t", 1)
            if len(parts) != 2 or parts[0] != str(row - 1):
                raise DiffuRecError(
                    f"{path}, row {row}: expected '{row - 1}<TAB>original_id', found {line.strip()!r}"
                )
            ids.append(parts[1])
    return ids


def plot_curve(curve: dict, path: Path) -> None:
    """Training loss per epoch (left axis) and validation NDCG@10 / HR@10 (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    train = curve.get("train", [])
    loss_axis.plot(
        [r["epoch"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss"
    )
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    valid = curve.get("valid", [])
    if valid:
        metric_axis = loss_axis.twinx()
        for key, color in (("NDCG@10", "tab:red"), ("HR@10", "tab:orange")):
            metric_axis.plot(
                [r["epoch"] for r in valid], [r[key] for r in valid], "o-", color=color, label=f"valid {key}"
            )
        metric_axis.set_ylabel("validation metric (%)")
        metric_axis.legend(loc="center right")
    fig.suptitle(curve.get("title", "training curve"))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_model_folder(
    folder,
    model: torch.nn.Module,
    item_ids: list[str] | None = None,
    item_map_path=None,
    curve: dict | None = None,
    summary: dict | None = None,
) -> Path:
    """Write `model` (its config and state dict) as a model folder, atomically.

    The item map is copied from `item_map_path` (the splits folder's) when given, otherwise
    written from `item_ids`.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        config = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model": model.config["name"],
            **model.config,
        }
        write_json_atomic(tmp / "config.json", config)
        state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        if item_map_path is not None:
            shutil.copyfile(item_map_path, tmp / "item_map.tsv")
        elif item_ids is not None:
            write_item_map(tmp / "item_map.tsv", item_ids)
        else:
            raise ValueError("save_model_folder needs item_ids or item_map_path")
        curve = curve or {"train": [], "valid": []}
        write_json_atomic(tmp / "curve.json", curve)
        plot_curve(curve, tmp / "curve.png")
        summary = dict(summary or {})
        summary.setdefault("lineage", {})
        write_json_atomic(tmp / "train_summary.json", summary)
    logger.info("wrote model folder %s", folder)
    return folder


def read_config(folder: str | Path) -> dict:
    """config.json of a model folder, checked for format and version."""
    folder = Path(folder)
    path = folder / "config.json"
    config = read_json_object(path, "missing: not a model folder; run 'diffurec train' first")
    if config.get("format") != FORMAT_NAME or config.get("version") != FORMAT_VERSION:
        raise DiffuRecError(
            f"{path}: expected {FORMAT_NAME} version {FORMAT_VERSION}, "
            f"found {config.get('format')} version {config.get('version')}"
        )
    return config


def load_model_folder(folder, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a folder with its trained weights (safetensors, strict key check), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from diffurec.models import model_from_config

    folder = Path(folder)
    config = read_config(folder)
    model_config = {k: v for k, v in config.items() if k not in ("format", "version", "model")}
    try:
        model = model_from_config(model_config)
    except (KeyError, ValueError) as error:
        raise DiffuRecError(f"{folder / 'config.json'}: {error}") from None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise DiffuRecError(f"{weights}: missing from the model folder")
    try:
        state = load_file(str(weights))
    except SafetensorError as error:
        raise DiffuRecError(f"{weights}: unreadable safetensors file ({error})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise DiffuRecError(f"{weights}: weights do not match config.json ({' '.join(first[:2])})") from None
    return model.to(device).eval()


def read_summary(folder: str | Path) -> dict:
    """train_summary.json of a model folder, or {} when it has none."""
    path = Path(folder) / "train_summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}
