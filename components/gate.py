"""Step 8: the promotion gate; its boolean result (passed) decides whether promote runs."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    candidate: Input[Metrics],
    candidate_ranks: Input[Artifact],
    baseline: Input[Metrics],
    splits: Input[Dataset],
    registry_name: str,
    version: str,
    tracking_uri: str,
    thresholds: dict,
    override: str,
    override_reason: str,
    override_by: str,
    prometheus_url: str,
    allow_unreachable_prometheus: bool,
    decision: Output[Artifact],
) -> bool:
    """Run `diffurec gate` for `version` with `thresholds` (params.yaml's `gate:` section, a
    constant of the compiled spec); a non-empty `override` (JSON) replaces them, recorded as an
    override with `override_reason` and `override_by` (the gate refuses it without them). The
    decision JSON is an artifact, the return value (output `Output`: passed) a scalar for
    dsl.If. A plain return, not a named output: kfp's local runner resolves a condition on
    `<task>-Output` but not on `<task>-<name>`. `candidate_ranks`: the candidate's per-user
    ranks, for the paired comparison with the champion. The Prometheus checks ask
    `prometheus_url`, empty: $DIFFUREC_PROMETHEUS (on a cluster: the settings ConfigMap's); the
    step fails when it cannot be reached, unless allow_unreachable_prometheus (recorded)."""
    import json
    import tempfile
    from pathlib import Path

    from diffurec.cli import main

    # The compiled thresholds as the gate's params file: the configured ones an override replaces.
    params = Path(tempfile.mkdtemp(prefix="gate-")) / "compiled-gate.json"
    params.write_text(json.dumps({"gate": thresholds}))
    command = [
        "gate",
        "--candidate",
        candidate.path,
        "--candidate-ranks",
        candidate_ranks.path,
        "--baseline",
        baseline.path,
        "--params",
        str(params),
        "--name",
        registry_name,
        "--version",
        version,
        "--splits",
        splits.path,
        "--out",
        decision.path,
    ]
    if override:
        command += ["--thresholds", override]
    if override_reason:
        command += ["--override-reason", override_reason]
    if override_by:
        command += ["--override-by", override_by]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    if prometheus_url:
        command += ["--prometheus", prometheus_url]
    if allow_unreachable_prometheus:
        command.append("--allow-unreachable-prometheus")
    if main(command) != 0:
        raise RuntimeError("diffurec gate failed (the line above says why)")
    written = json.loads(Path(decision.path).read_text())
    passed = bool(written["passed"])
    decision.metadata.update({"passed": passed, "version": version, "override": bool(written["override"])})
    return passed
