"""Step 5: train a model (DiffuRec, SASRec+ or the popularity baseline) on the splits."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(raw: Input[Dataset], splits: Input[Dataset], model_name: str, preset: str,
          epochs: int, max_minutes: float, batch_size: int, lr: float, eval_every: int,
          patience: int, seed: int,
          run_params: dict, model: Output[Model], curves: Output[HTML]):
    """Run `diffurec train` with the run's lineage; the Model is the model folder, `curves` the
    training curves (curve.png) as a page for the Kubeflow UI."""
    import base64
    import json
    import os

    from diffurec.cli import main
    from diffurec.lineage import build_lineage, write_json

    lineage_file = model.path + ".lineage.json"
    write_json(lineage_file, build_lineage(raw=os.path.join(raw.path, raw.metadata["file"]),
                                           splits=splits.path, params=run_params, preset=preset))
    command = ["train", "--model", model_name, "--splits", splits.path, "--out", model.path,
               "--seed", str(seed), "--lineage-json", lineage_file]
    if model_name != "popularity":
        command += ["--preset", preset, "--epochs", str(epochs), "--max-minutes", str(max_minutes),
                    "--batch-size", str(batch_size), "--lr", str(lr), "--eval-every", str(eval_every), "--patience", str(patience)]
    if main(command) != 0:
        raise RuntimeError("diffurec train failed (the line above says why)")
    summary = json.load(open(os.path.join(model.path, "train_summary.json")))
    model.metadata.update({"model": model_name, "preset": preset,
                           "best_epoch": summary.get("best_epoch"),
                           "epochs": summary.get("epochs_run", summary.get("epochs"))})
    png = os.path.join(model.path, "curve.png")
    with open(curves.path, "w") as page:
        page.write(f"<html><body><h2>{model_name} / {preset}: training curves</h2>")
        if os.path.isfile(png):
            encoded = base64.b64encode(open(png, "rb").read()).decode()
            page.write(f'<img src="data:image/png;base64,{encoded}"/>')
        page.write(f"<pre>{json.dumps(summary, indent=2, default=str)}</pre></body></html>")
