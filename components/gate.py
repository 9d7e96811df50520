"""Step 8: the promotion gate; its `passed` output decides whether the promote step runs."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(candidate: Input[Metrics], baseline: Input[Metrics], splits: Input[Dataset],
         registry_name: str, version: str, tracking_uri: str, thresholds: dict,
         decision: Output[Artifact]) -> NamedTuple("GateOutputs", [("passed", bool)]):
    """Run `diffurec gate` for `version` with `thresholds` (the `gate:` section of params.yaml);
    the decision JSON is an artifact, `passed` a scalar for dsl.If."""
    import json
    import os
    import tempfile
    from collections import namedtuple

    import yaml

    from diffurec.cli import main

    params = os.path.join(tempfile.mkdtemp(prefix="gate-"), "params.yaml")
    with open(params, "w") as handle:
        yaml.safe_dump({"gate": thresholds}, handle)
    command = ["gate", "--candidate", candidate.path, "--baseline", baseline.path,
               "--params", params, "--name", registry_name, "--version", version,
               "--splits", splits.path, "--out", decision.path]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    if main(command) != 0:
        raise RuntimeError("diffurec gate failed (the line above says why)")
    passed = bool(json.load(open(decision.path))["passed"])
    decision.metadata.update({"passed": passed, "version": version})
    return namedtuple("GateOutputs", ["passed"])(passed)
