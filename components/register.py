"""Step 7: register the model folder and its metrics as a new version in MLflow."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    metrics: Input[Metrics],
    registry_name: str,
    tracking_uri: str,
    dataset: str,
    data_version: str,
    kfp_run_id: str,
    kfp_run_name: str,
) -> str:
    """Run `diffurec register`; returns the new version number. The version is tagged with the
    model's lineage, the image, the data version (the commit resolve_data read the data from)
    and the run (kfp_run_id, kfp_run_name: dsl.PIPELINE_JOB_ID_PLACEHOLDER /
    PIPELINE_JOB_NAME_PLACEHOLDER, unless the environment names the run already)."""
    import json
    import os
    import tempfile

    from diffurec.cli import main
    from diffurec.lineage import fill_run_identity

    fill_run_identity(
        DIFFUREC_RUN_ID=kfp_run_id,
        DIFFUREC_RUN_NAME=kfp_run_name,
        DIFFUREC_DATASET=dataset,
        DIFFUREC_DATA_VERSION=data_version,
    )

    out = os.path.join(tempfile.mkdtemp(prefix="register-"), "registered.json")
    command = [
        "register",
        "--model",
        model.path,
        "--metrics",
        metrics.path,
        "--name",
        registry_name,
        "--out",
        out,
    ]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    if main(command) != 0:
        raise RuntimeError("diffurec register failed (the line above says why)")
    return str(json.load(open(out))["version"])
