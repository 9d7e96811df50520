"""Step 5: train a model (DiffuRec, SASRec+ or the popularity baseline) on the splits."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    raw: Input[Dataset],
    splits: Input[Dataset],
    settings: dict,
    data_params: dict,
    model: Output[Model],
    curves: Output[HTML],
    workers: int = 1,
    profile: str = "",
):
    """Run `diffurec train --settings` with `settings` (params.yaml's `train:` section, the
    fields of diffurec.train_settings.TrainSettings) and the run's lineage (the data parameters,
    the settings and the parameter profile they came from); with `workers` > 1 `diffurec
    train-job` trains on a PyTorchJob of that many pods instead (the data volume at /data holds
    its run folder; one GPU each unless settings.device is cpu). The Model is the model folder,
    `curves` the training curves (curve.png) as a page for the Kubeflow UI."""
    import base64
    import json
    import os

    from diffurec.cli import main
    from diffurec.lineage import build_lineage, fill_run_identity, write_lineage

    fill_run_identity(DIFFUREC_DATASET=data_params.get("dataset"))
    lineage_file = model.path + ".lineage.json"
    write_lineage(
        lineage_file,
        build_lineage(
            raw=os.path.join(raw.path, raw.metadata["file"]),
            splits=splits.path,
            params={"data": data_params, "train": settings, **({"profile": profile} if profile else {})},
            preset=settings.get("preset"),
        ),
    )
    command = [
        "train" if workers <= 1 else "train-job",
        "--splits",
        splits.path,
        "--out",
        model.path,
        "--settings",
        json.dumps(settings),
        "--lineage-json",
        lineage_file,
    ]
    if workers > 1:
        gpus = "0" if settings.get("device") == "cpu" else "1"
        command += ["--workers", str(workers), "--gpus-per-worker", gpus]
    if main(command) != 0:
        raise RuntimeError("diffurec train failed (the line above says why)")
    summary = json.load(open(os.path.join(model.path, "train_summary.json")))
    model.metadata.update(
        {
            "model": summary["model"],
            "preset": summary["preset"],
            "best_epoch": summary.get("best_epoch"),
            "epochs": summary.get("epochs_run", summary.get("epochs")),
            "dataset": data_params.get("dataset"),
        }
    )
    png = os.path.join(model.path, "curve.png")
    with open(curves.path, "w") as page:
        page.write(f"<html><body><h2>{summary['model']} / {summary['preset']}: training curves</h2>")
        if os.path.isfile(png):
            encoded = base64.b64encode(open(png, "rb").read()).decode()
            page.write(f'<img src="data:image/png;base64,{encoded}"/>')
        page.write(f"<pre>{json.dumps(summary, indent=2, default=str)}</pre></body></html>")
