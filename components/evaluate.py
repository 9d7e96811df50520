"""Step 6: full-ranking HR@K / NDCG@K of a model folder on a split."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model], splits: Input[Dataset], split: str, metrics: Output[Metrics], ranks: Output[Artifact]
):
    """Run `diffurec evaluate`; the Metrics artifact's file is the metrics JSON (docs/formats.md)
    and its six values are logged as scalar metrics for the Kubeflow UI; `ranks` holds the
    per-user ranks written beside it (an artifact of its own: KFP keeps only the metrics file)."""
    import json
    import shutil

    from diffurec.bootstrap import ranks_path
    from diffurec.cli import main
    from diffurec.lineage import fill_run_identity

    fill_run_identity(DIFFUREC_DATASET=splits.metadata.get("dataset"))
    if (
        main(
            [
                "evaluate",
                "--model",
                model.path,
                "--splits",
                splits.path,
                "--split",
                split,
                "--out",
                metrics.path,
            ]
        )
        != 0
    ):
        raise RuntimeError("diffurec evaluate failed (the line above says why)")
    shutil.copyfile(ranks_path(metrics.path), ranks.path)
    for key, value in json.load(open(metrics.path))["metrics"].items():
        metrics.log_metric(key, value)
