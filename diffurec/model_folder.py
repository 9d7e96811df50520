"""The model folder (`diffurec-model` version 1, docs/formats.md): save and load.

    config.json          format, version, model, preset, every hyperparameter, num_items, max_len
    model.safetensors    the state dict (popularity: its item counts)
    item_map.tsv         copied from the splits folder
    curve.json/.png      training loss per epoch, validation metrics per validation
    train_summary.json   best epoch, epochs run, seconds, samples/s, device, seed, lineage
    manifest.json        sha256 of every other file, written last (`diffurec-manifest` version 1)

Weights are safetensors only (no pickle), so loading runs no code. A folder is written to a
temporary sibling and renamed at the end: a failed save leaves no half-written folder.

The manifest makes a folder checkable wherever it travels (the registry's artifact store, a
Kubeflow artifact): every reader verifies it first and refuses a folder with a changed,
missing, unlisted or linked file, naming it. Links are never followed, so a folder cannot
smuggle in files from outside it. The sha256 of manifest.json's bytes identifies the model;
metrics JSONs record it (`model.manifest_sha256`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from diffurec.errors import DiffuRecError
from diffurec.files import atomic_folder, read_json_object, write_json_atomic

if TYPE_CHECKING:  # reading a config or summary (register, gate) needs no torch
    import torch

logger = logging.getLogger(__name__)

FORMAT_NAME = "diffurec-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "diffurec-manifest"
MANIFEST_VERSION = 1
MANIFEST_ALGORITHM = "sha256"
ITEM_MAP_FILE = "item_map.tsv"


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


class ManifestMismatch(DiffuRecError):
    """A model folder that does not match its manifest: `file` (relative path) says which file."""

    def __init__(self, folder: Path, file: str, problem: str) -> None:
        super().__init__(f"{folder / file}: {problem}")
        self.file = file
        self.problem = problem


def _folder_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file under `folder` but the manifest, sorted. A link (to a
    file or a folder) or anything else that is not a regular file or folder is refused."""
    found: list[str] = []
    pending = [PurePosixPath()]
    while pending:
        relative = pending.pop()
        with os.scandir(folder / relative) as entries:
            for entry in entries:
                path = relative / entry.name
                if entry.is_symlink():
                    raise ManifestMismatch(
                        folder, str(path), "a symbolic link: a model folder holds only regular files"
                    )
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif entry.is_file(follow_symlinks=False):
                    found.append(str(path))
                else:
                    raise ManifestMismatch(folder, str(path), "not a regular file")
    return sorted(path for path in found if path != MANIFEST_FILE)


def _read_no_follow(folder: Path, relative: str) -> bytes:
    """The bytes of a regular file, refusing a link even if one replaced the file since the
    folder was listed (O_NOFOLLOW), so no file outside the folder is ever read."""
    try:
        fd = os.open(folder / relative, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        problem = "a symbolic link" if os.path.islink(folder / relative) else error.strerror
        raise ManifestMismatch(folder, relative, f"cannot be read ({problem})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ManifestMismatch(folder, relative, "not a regular file")
        return handle.read()


def _sha256_no_follow(folder: Path, relative: str) -> str:
    return hashlib.sha256(_read_no_follow(folder, relative)).hexdigest()


def write_manifest(folder: str | Path) -> str:
    """Write `folder`/manifest.json listing the sha256 of every other file; return the sha256 of
    the manifest's bytes (the model's identity, recorded in metrics JSONs)."""
    folder = Path(folder)
    files = {relative: _sha256_no_follow(folder, relative) for relative in _folder_files(folder)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "algorithm": MANIFEST_ALGORITHM,
        "files": files,
    }
    write_json_atomic(folder / MANIFEST_FILE, manifest, sort_keys=True)
    return hashlib.sha256(_read_no_follow(folder, MANIFEST_FILE)).hexdigest()


def _read_manifest(folder: Path) -> tuple[dict[str, str], bytes]:
    """(relative path -> sha256, manifest bytes) of a folder's manifest.json, checked for shape."""
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise DiffuRecError(f"{folder}: no such model folder")
    if not os.path.lexists(path):
        raise DiffuRecError(
            f"{path}: missing: the model folder was written before models carried a checksum "
            "(or not by `diffurec train`); train it again"
        )
    data = _read_no_follow(folder, MANIFEST_FILE)
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DiffuRecError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or (
        manifest.get("format"),
        manifest.get("version"),
        manifest.get("algorithm"),
    ) != (MANIFEST_FORMAT, MANIFEST_VERSION, MANIFEST_ALGORITHM):
        raise DiffuRecError(
            f"{path}: expected {MANIFEST_FORMAT} version {MANIFEST_VERSION}, algorithm {MANIFEST_ALGORITHM}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise DiffuRecError(f"{path}: no `files` object (relative path -> sha256)")
    for relative, digest in files.items():
        pure = PurePosixPath(relative)
        if (
            pure.is_absolute()
            or str(pure) != relative
            or ".." in pure.parts
            or relative in (".", MANIFEST_FILE)
            or not isinstance(digest, str)
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise DiffuRecError(
                f"{path}: bad entry {relative!r}: {digest!r} (expected a relative path and a sha256)"
            )
    return files, data


def verify_manifest(folder: str | Path) -> str:
    """Check every file of `folder` against its manifest.json; return the sha256 of the
    manifest's bytes. Raises ManifestMismatch (a DiffuRecError naming the file) for a file that
    is missing, changed, not listed, or a link; DiffuRecError for a missing or broken manifest."""
    folder = Path(folder)
    files, data = _read_manifest(folder)
    present = _folder_files(folder)
    unlisted = sorted(set(present) - set(files))
    if unlisted:
        raise ManifestMismatch(folder, unlisted[0], f"not listed in {MANIFEST_FILE} (added after training)")
    missing = sorted(set(files) - set(present))
    if missing:
        raise ManifestMismatch(folder, missing[0], f"listed in {MANIFEST_FILE} but missing")
    for relative in sorted(files):
        if _sha256_no_follow(folder, relative) != files[relative]:
            raise ManifestMismatch(
                folder, relative, f"sha256 differs from {MANIFEST_FILE}: the file changed after training"
            )
    return hashlib.sha256(data).hexdigest()


def copy_verified(folder: str | Path, destination: str | Path) -> str:
    """Copy the manifest's files (and the manifest) of `folder` into the new folder
    `destination` and verify the copy; return the manifest digest. What is copied is exactly
    what the manifest lists: no link is followed, no unlisted file travels."""
    folder, destination = Path(folder), Path(destination)
    digest = verify_manifest(folder)
    files, _ = _read_manifest(folder)
    destination.mkdir(parents=True)
    for relative in [*files, MANIFEST_FILE]:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_read_no_follow(folder, relative))
    try:
        copied = verify_manifest(destination)
    except ManifestMismatch as error:
        raise ManifestMismatch(folder, error.file, "changed while it was being copied; try again") from None
    if copied != digest:
        raise ManifestMismatch(folder, MANIFEST_FILE, "changed while the folder was being copied; try again")
    return digest


def check_item_map(folder: str | Path, item_ids: list[str], source: str | Path) -> None:
    """Refuse data (`item_ids` of items 1..N, read from `source`) whose items are not the model's:
    the same ids must sit at the same indices as in the model's item_map.tsv, or every score
    would be credited to another item."""
    path = Path(folder) / ITEM_MAP_FILE
    model_ids = read_item_map(path)
    if model_ids == item_ids:
        return
    if len(model_ids) != len(item_ids):
        raise DiffuRecError(f"{source}: {len(item_ids)} items, but the model's {path} has {len(model_ids)}")
    index = next(i for i, (a, b) in enumerate(zip(model_ids, item_ids, strict=True)) if a != b)
    raise DiffuRecError(
        f"{source}, row {index + 2}: item {index + 1} is {item_ids[index]!r} here but "
        f"{model_ids[index]!r} in the model's {path}: the model was trained on other splits"
    )


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
    folder: str | os.PathLike[str],
    model: torch.nn.Module,
    item_ids: list[str] | None = None,
    item_map_path: str | Path | None = None,
    curve: dict | None = None,
    summary: dict | None = None,
) -> Path:
    """Write `model` (its config and state dict) as a model folder, atomically.

    The item map is copied from `item_map_path` (the splits folder's) when given, otherwise
    written from `item_ids`. The manifest is written last.
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
            shutil.copyfile(item_map_path, tmp / ITEM_MAP_FILE)
        elif item_ids is not None:
            write_item_map(tmp / ITEM_MAP_FILE, item_ids)
        else:
            raise ValueError("save_model_folder needs item_ids or item_map_path")
        curve = curve or {"train": [], "valid": []}
        write_json_atomic(tmp / "curve.json", curve)
        plot_curve(curve, tmp / "curve.png")
        summary = dict(summary or {})
        summary.setdefault("lineage", {})
        write_json_atomic(tmp / "train_summary.json", summary)
        write_manifest(tmp)  # last: it covers every file above
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


def load_model_folder(
    folder: str | Path, device: str | torch.device = "cpu", verify: bool = True
) -> torch.nn.Module:
    """The model of a folder with its trained weights (safetensors, strict key check), in eval mode.

    The folder is checked against its manifest first (verify_manifest); `verify=False` is for a
    caller that has just verified it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from diffurec.models import model_from_config

    folder = Path(folder)
    config = read_config(folder)
    if verify:
        verify_manifest(folder)
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
