"""Real model folders and metrics JSONs for the registry and promotion tests (ML-100K).

Popularity models are real, fitted models that cost well under a second, and their quality is
easy to order: fitted on all training samples (`diffurec train --model popularity`) they beat
the same model fitted on the first 20,000 samples, which beats one fitted on the first 2,000.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffurec.cli import main


def lineage_file(splits_dir: Path, folder: Path) -> Path:
    from diffurec.lineage import build_lineage, write_lineage

    return write_lineage(
        folder / "lineage.json",
        build_lineage(splits=splits_dir, params={"model": "popularity"}, preset="default"),
    )


def train_with_cli(splits_dir: Path, folder: Path) -> tuple[Path, Path]:
    """`diffurec train --model popularity` + `diffurec evaluate`: (model folder, metrics JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    lineage = lineage_file(splits_dir, folder)
    model_dir, metrics = folder / "model", folder / "metrics.json"
    assert (
        main(
            [
                "train",
                "--model",
                "popularity",
                "--splits",
                str(splits_dir),
                "--out",
                str(model_dir),
                "--lineage-json",
                str(lineage),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(["evaluate", "--model", str(model_dir), "--splits", str(splits_dir), "--out", str(metrics)]) == 0
    )
    _ensure_splits_md5(metrics, lineage)
    return model_dir, metrics


def fit_on_first(splits, samples: int, folder: Path) -> tuple[Path, Path]:
    """Popularity fitted on the first `samples` training samples: (model folder, metrics JSON)."""
    from diffurec.evaluate import evaluate_folder
    from diffurec.model_folder import save_model_folder
    from diffurec.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    lineage = json.loads(lineage_file(splits.path, folder).read_text())
    model = build_model("popularity", splits.num_items, splits.max_len)
    model.fit(np.asarray(splits.train_targets)[:samples])
    model_dir = save_model_folder(
        folder / "model",
        model,
        item_map_path=Path(splits.path) / "item_map.tsv",
        summary={"fitted_on_samples": samples, "lineage": lineage},
    )
    # The evaluator's own metrics JSON: bound to the folder's manifest and the splits' md5.
    result = evaluate_folder(model_dir, splits.path, split="test", device="cpu")[0]
    metrics = folder / "metrics.json"
    metrics.write_text(json.dumps(result))
    return model_dir, metrics


def _ensure_splits_md5(metrics: Path, lineage: Path) -> None:
    """The evaluator may not copy splits_md5 yet; the registry needs it as the data version."""
    data = json.loads(metrics.read_text())
    expected = json.loads(lineage.read_text())["splits_md5"]
    if (data.get("lineage") or {}).get("splits_md5") != expected:
        data.setdefault("lineage", {})["splits_md5"] = expected
        metrics.write_text(json.dumps(data))


_template_db: Path | None = None


def fresh_tracking_uri(folder: Path) -> str:
    """A sqlite tracking URI for a new, empty MLflow store in `folder`.

    Creating an MLflow database runs its schema migrations (seconds to tens of seconds on a
    busy machine); the first store is created for real, and later ones are copies of it taken
    before anything was written.
    """
    import shutil
    import tempfile

    from diffurec import registry

    global _template_db
    if _template_db is None or not _template_db.exists():
        template = Path(tempfile.mkdtemp(prefix="diffurec-mlflow-template-")) / "mlflow.db"
        registry.client(f"sqlite:///{template}").search_registered_models()  # runs the migrations
        _template_db = template
    db = folder / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template_db, db)
    return f"sqlite:///{db}"
