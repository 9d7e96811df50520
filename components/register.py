"""Step 7: register the model folder and its metrics as a new version in MLflow."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(model: Input[Model], metrics: Input[Metrics], registry_name: str, tracking_uri: str) -> str:
    """Run `diffurec register`; returns the new version number."""
    import json
    import os
    import tempfile

    from diffurec.cli import main

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
