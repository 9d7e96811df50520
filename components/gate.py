"""Step 8: the promotion gate; its boolean result (passed) decides whether promote runs."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    candidate: Input[Metrics],
    baseline: Input[Metrics],
    splits: Input[Dataset],
    registry_name: str,
    version: str,
    tracking_uri: str,
    thresholds: dict,
    prometheus_url: str,
    allow_unreachable_prometheus: bool,
    decision: Output[Artifact],
) -> bool:
    """Run `diffurec gate` for `version` with `thresholds` (the `gate:` section of params.yaml);
    the decision JSON is an artifact, the return value (output `Output`: passed) a scalar for
    dsl.If. A plain return, not a named output: kfp's local runner resolves a condition on
    `<task>-Output` but not on `<task>-<name>`. The Prometheus checks ask `prometheus_url`,
    empty: $DIFFUREC_PROMETHEUS (on a cluster: the settings ConfigMap's); the step fails
    when it cannot be reached, unless allow_unreachable_prometheus (recorded in the decision)."""
    import json

    from diffurec.cli import main

    command = [
        "gate",
        "--candidate",
        candidate.path,
        "--baseline",
        baseline.path,
        "--thresholds",
        json.dumps(thresholds),
        "--name",
        registry_name,
        "--version",
        version,
        "--splits",
        splits.path,
        "--out",
        decision.path,
    ]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    if prometheus_url:
        command += ["--prometheus", prometheus_url]
    if allow_unreachable_prometheus:
        command.append("--allow-unreachable-prometheus")
    if main(command) != 0:
        raise RuntimeError("diffurec gate failed (the line above says why)")
    passed = bool(json.load(open(decision.path))["passed"])
    decision.metadata.update({"passed": passed, "version": version})
    return passed
