"""Step 9: make the candidate the champion (runs only when the gate passed it)."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(
    decision: Input[Artifact],
    registry_name: str,
    tracking_uri: str,
    dataset: str,
    kfp_run_id: str,
    kfp_run_name: str,
) -> str:
    """Run `diffurec promote` with the gate's decision; returns the champion's version. The run's
    identity (KFP's placeholders, as for register) labels the step's Prometheus series."""
    import json
    import os
    import tempfile

    from diffurec.cli import main
    from diffurec.lineage import fill_run_identity

    fill_run_identity(DIFFUREC_RUN_ID=kfp_run_id, DIFFUREC_RUN_NAME=kfp_run_name, DIFFUREC_DATASET=dataset)

    out = os.path.join(tempfile.mkdtemp(prefix="promote-"), "promotion.json")
    command = ["promote", "--name", registry_name, "--decision", decision.path, "--out", out]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    if main(command) != 0:
        raise RuntimeError("diffurec promote failed (the line above says why)")
    return str(json.load(open(out))["champion"])
