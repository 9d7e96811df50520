"""The Katib hyperparameter search (k8s/katib/experiment.yaml), checked offline.

Katib's Experiment CRD keeps unknown fields (no schema), so the manifest is checked against
Katib's published API types (tests/schemas/katib-v1beta1-swagger.json, unknown fields refused),
against the rules of its admission webhook, restated below from
pkg/webhook/v1beta1/experiment/validator/validator.go at Katib v0.19.0 (commit
578e60f1ce83dbb5e7151026a3bdc4de233947fc), and its trial Job against the Kubernetes API schema.
End to end: the trial's own command, wrapped the way Katib's StdOut collector wraps it
(pkg/webhook/v1beta1/pod/utils.go wrapWorkerContainer), runs on a slice of ML-100K, and Katib's
text parser (pkg/metricscollector/v1beta1/file-metricscollector) applied to its output finds
the trainer's best validation NDCG@10 (train_summary.json).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_schema import validate, validate_definition
from trainer_data import TINY_DIFFUREC, hyper_args

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "k8s" / "katib" / "experiment.yaml"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.32.0"
# Katib v0.19.0's defaults (manifests/v1beta1/installs/katib-standalone/katib-config.yaml).
KATIB_ALGORITHMS = {
    "random",
    "tpe",
    "grid",
    "hyperband",
    "bayesianoptimization",
    "cmaes",
    "sobol",
    "multivariate-tpe",
    "enas",
    "darts",
    "pbt",
}
PARAMETER_TYPES = {"int", "double", "categorical", "discrete"}
DISTRIBUTIONS = {"", "uniform", "logUniform", "normal", "logNormal"}
TRIAL_PARAMETER = re.compile(r"\$\{trialParameters\.(.+?)\}")
# What the trainer logs after each validation carries the objective.
OBJECTIVE = "NDCG@10"


def load() -> dict:
    return dict(yaml.safe_load(EXPERIMENT.read_text()))


def admission_problems(experiment: dict) -> list[str]:
    """Katib's webhook rules (validator.go ValidateExperiment) for what this manifest uses."""
    problems = []
    spec = experiment["spec"]
    name = experiment["metadata"]["name"]
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name) or len(name) > 40:
        problems.append(f"metadata.name {name!r}")
    counts = {key: spec.get(key) for key in ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount")}
    if counts["maxTrialCount"] is not None and counts["maxTrialCount"] <= 0:
        problems.append("maxTrialCount must be greater than 0")
    if counts["parallelTrialCount"] is not None and counts["parallelTrialCount"] <= 0:
        problems.append("parallelTrialCount must be greater than 0")
    if counts["maxFailedTrialCount"] is not None and counts["maxFailedTrialCount"] < 0:
        problems.append("maxFailedTrialCount should not be less than 0")
    for key in ("parallelTrialCount", "maxFailedTrialCount"):
        if None not in (counts[key], counts["maxTrialCount"]) and counts[key] > counts["maxTrialCount"]:
            problems.append(f"{key} should be less than or equal to maxTrialCount")
    objective = spec.get("objective") or {}
    if objective.get("type") not in ("minimize", "maximize"):
        problems.append("objective.type")
    if not objective.get("objectiveMetricName"):
        problems.append("objective.objectiveMetricName must be specified")
    if objective.get("objectiveMetricName") in objective.get("additionalMetricNames", []):
        problems.append("additionalMetricNames should not contain objectiveMetricName")
    if spec.get("algorithm", {}).get("algorithmName") not in KATIB_ALGORITHMS:
        problems.append("algorithm.algorithmName")
    parameters = spec.get("parameters") or []
    if not parameters:
        problems.append("spec.parameters or spec.nasConfig must be specified")
    for i, parameter in enumerate(parameters):
        space = parameter.get("feasibleSpace") or {}
        if parameter.get("parameterType") not in PARAMETER_TYPES:
            problems.append(f"parameters[{i}].parameterType")
        if space.get("distribution", "") not in DISTRIBUTIONS:
            problems.append(f"parameters[{i}].feasibleSpace.distribution")
        if not space:
            problems.append(f"parameters[{i}].feasibleSpace must be specified")
        elif parameter.get("parameterType") in ("double", "int"):
            if space.get("list"):
                problems.append(f"parameters[{i}].feasibleSpace.list")
            if not space.get("max") or not space.get("min"):
                problems.append(f"parameters[{i}].feasibleSpace.max or min must be specified")
        elif any(space.get(key) for key in ("max", "min", "step")):
            problems.append(f"parameters[{i}].feasibleSpace .max, .min and .step")
    template = spec.get("trialTemplate") or {}
    if not template.get("primaryContainerName"):
        problems.append("trialTemplate.primaryContainerName must be specified")
    if not template.get("successCondition") or not template.get("failureCondition"):
        problems.append("successCondition and failureCondition must be specified")
    trial_spec = json.dumps(template.get("trialSpec"))
    names, references = set(), set()
    parameter_names = {p["name"] for p in parameters}
    for i, trial_parameter in enumerate(template.get("trialParameters") or []):
        name, reference = trial_parameter.get("name", ""), trial_parameter.get("reference", "")
        if not name or not reference or "{" in name or "}" in name:
            problems.append(f"trialParameters[{i}]: name and reference must be specified")
            continue
        if name in names or reference in references:
            problems.append(f"trialParameters[{i}] duplicated")
            continue
        names.add(name)
        references.add(reference)
        if reference not in parameter_names:
            problems.append(f"trialParameters[{i}].reference {reference} does not exist in spec.parameters")
        if "${trialParameters." + name + "}" not in trial_spec:
            problems.append(f"trialParameters[{i}].name {name} not found in spec.trialTemplate")
        trial_spec = trial_spec.replace("${trialParameters." + name + "}", "test-value")
    if TRIAL_PARAMETER.search(trial_spec):
        problems.append(f"parameters {TRIAL_PARAMETER.findall(trial_spec)} not found in trialParameters")
    run_spec = template.get("trialSpec") or {}
    if run_spec.get("metadata", {}).get("name") or run_spec.get("metadata", {}).get("namespace"):
        problems.append("metadata.name and metadata.namespace in spec.trialTemplate must be omitted")
    if not run_spec.get("apiVersion") or not run_spec.get("kind"):
        problems.append("APIVersion and Kind in spec.trialTemplate must be specified")
    collector = spec.get("metricsCollectorSpec", {})
    if collector.get("collector", {}).get("kind") not in ("StdOut", "Push"):
        problems.append("only the StdOut (or Push) collector is checked here")
    for pattern in collector.get("source", {}).get("filter", {}).get("metricsFormat", []):
        if not re.match(r".*\(.*\).*\(.*\).*", pattern):
            problems.append(f"filter {pattern!r}: two top subexpressions are required")
    return problems


def katib_observations(output: str, metrics: list[str], filters: list[str]) -> list[tuple[str, str]]:
    """Katib's parseLogsInTextFormat: lines that contain a metric name, each filter's matches,
    group 1 the name (kept when it is one of `metrics`), group 2 the value."""
    found = []
    for line in output.split("\n"):
        if not any(metric in line for metric in metrics):
            continue
        for pattern in filters:
            for match in re.finditer(pattern, line):
                name, value = match.group(1).strip(), match.group(2).strip()
                if name in metrics:
                    found.append((name, value))
    return found


def trial_job(experiment: dict, values: dict[str, str]) -> dict:
    """The trial's Job as Katib makes it for these parameter values (by parameter name)."""
    template = experiment["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for trial_parameter in template["trialParameters"]:
        text = text.replace(
            "${trialParameters." + trial_parameter["name"] + "}", values[trial_parameter["reference"]]
        )
    job = json.loads(text)
    job["metadata"] = {"name": "diffurec-search-trial-1"}
    return job


def edge_values(experiment: dict, end: int) -> dict[str, str]:
    """Every parameter at one end of its feasible space (0: low, -1: high)."""
    values = {}
    for parameter in experiment["spec"]["parameters"]:
        space = parameter["feasibleSpace"]
        values[parameter["name"]] = space["list"][end] if "list" in space else space[("min", "max")[end]]
    return values


def test_the_experiment_is_valid_for_katibs_api_and_admission():
    experiment = load()
    validate(experiment, "katib-experiment-crd.yaml")
    validate_definition(experiment, "katib-v1beta1-swagger.json", "v1beta1.Experiment")
    assert admission_problems(experiment) == []


def test_the_checks_refuse_what_katib_refuses():
    import jsonschema

    experiment = load()
    typo = copy.deepcopy(experiment)
    typo["spec"]["trialTemplate"]["primaryContainer"] = typo["spec"]["trialTemplate"].pop(
        "primaryContainerName"
    )
    with pytest.raises(jsonschema.ValidationError, match="primaryContainer"):
        validate_definition(typo, "katib-v1beta1-swagger.json", "v1beta1.Experiment")
    assert "trialTemplate.primaryContainerName must be specified" in admission_problems(typo)
    unused = copy.deepcopy(experiment)
    unused["spec"]["trialTemplate"]["trialParameters"].append({"name": "seed", "reference": "seed"})
    assert admission_problems(unused) == [
        "trialParameters[4].reference seed does not exist in spec.parameters",
        "trialParameters[4].name seed not found in spec.trialTemplate",
    ]
    one_group = copy.deepcopy(experiment)
    one_group["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"] = ["NDCG@10 ([0-9.]+)"]
    assert admission_problems(one_group) == [
        "filter 'NDCG@10 ([0-9.]+)': two top subexpressions are required"
    ]
    too_parallel = copy.deepcopy(experiment)
    too_parallel["spec"]["parallelTrialCount"] = too_parallel["spec"]["maxTrialCount"] + 1
    assert admission_problems(too_parallel) == [
        "parallelTrialCount should be less than or equal to maxTrialCount"
    ]


def test_the_search_space_and_objective():
    spec = load()["spec"]
    assert spec["objective"]["type"] == "maximize"
    assert spec["objective"]["objectiveMetricName"] == OBJECTIVE
    # The best validation of a trial: the one whose weights the trainer keeps.
    assert spec["objective"]["metricStrategies"] == [{"name": OBJECTIVE, "value": "max"}]
    assert {p["name"] for p in spec["parameters"]} == {"lr", "batch_size", "dropout", "max_len"}
    assert spec["algorithm"]["algorithmName"] in ("random", "bayesianoptimization")


def test_the_trial_job_is_valid_runs_the_pipelines_image_and_mounts_the_data_volume(monkeypatch):
    import importlib

    import kubernetes_validate

    import components

    monkeypatch.delenv("DIFFUREC_IMAGE", raising=False)
    experiment = load()
    for end in (0, -1):
        job = trial_job(experiment, edge_values(experiment, end))
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == experiment["spec"]["trialTemplate"]["primaryContainerName"]
    assert container["image"] == importlib.reload(components).IMAGE
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    (volume,) = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    from pipelines.diffurec_pipeline import DATA_MOUNT, DATA_PVC

    assert volume["persistentVolumeClaim"]["claimName"] == DATA_PVC
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == DATA_MOUNT


def commands(job: dict) -> list[list[str]]:
    """The diffurec commands of the trial's shell script."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    (script,) = container["args"]
    return [shlex.split(part) for part in script.split("&&")]


def test_the_trial_commands_set_each_parameter_where_the_cli_reads_it():
    from diffurec.cli import build_parser
    from diffurec.train_settings import HYPERPARAMETER_RANGES, parse_hyper

    experiment = load()
    for end in (0, -1):
        values = edge_values(experiment, end)
        preprocess, train = (
            build_parser().parse_args(c[1:]) for c in commands(trial_job(experiment, values))
        )
        assert (preprocess.command, train.command) == ("preprocess", "train")
        assert preprocess.max_len == int(values["max_len"])
        assert train.splits == preprocess.out
        assert train.lr == float(values["lr"]) and train.batch_size == int(values["batch_size"])
        assert parse_hyper(train.hyper) == {"dropout": float(values["dropout"])}
        HYPERPARAMETER_RANGES["dropout"].check(float(values["dropout"]), "dropout")


def test_katib_reads_the_trainers_best_validation_ndcg_from_the_trials_output(tmp_path, shared_data):
    """The trial's script on a slice of ML-100K with a tiny model, wrapped as Katib's StdOut
    collector wraps it; Katib's parser on the output gives every validation's NDCG@10, and
    their max is train_summary.json's best_valid NDCG@10."""
    experiment = load()
    values = {"lr": "0.005", "batch_size": "128", "dropout": "0.2", "max_len": "20"}
    job = trial_job(experiment, values)
    (script,) = job["spec"]["template"]["spec"]["containers"][0]["args"]
    raw = tmp_path / "slice.inter"
    lines = (shared_data / "ml-100k" / "ml-100k.inter").read_text().splitlines()
    users = {line.split("\t")[0] for line in lines[1:200]}
    raw.write_text(
        "\n".join([lines[0], *(line for line in lines[1:] if line.split("\t")[0] in users)]) + "\n"
    )
    script = script.replace("/tmp/", f"{tmp_path}/").replace("/data/raw/ml-100k.inter", str(raw))
    # Seconds instead of hours: a tiny model, 3 epochs, a validation after each (later flags win).
    tiny = [
        "--epochs",
        "3",
        "--eval-every",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        *hyper_args(TINY_DIFFUREC),
    ]
    script += " " + shlex.join(tiny)
    log = tmp_path / "metrics.log"
    # wrapWorkerContainer: the redirect goes after the last command, then the completion mark.
    wrapped = f"{script} 1>{log} 2>&1 && echo completed > {tmp_path}/$$.pid"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("DIFFUREC_PUSHGATEWAY", None)
    result = subprocess.run(["sh", "-c", wrapped], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    filters = experiment["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    found = katib_observations(log.read_text(), [OBJECTIVE], filters)
    summary = json.loads((tmp_path / "model" / "train_summary.json").read_text())
    curve = json.loads((tmp_path / "model" / "curve.json").read_text())
    assert [name for name, _ in found] == [OBJECTIVE] * len(curve["valid"]) == [OBJECTIVE] * 3
    logged = [float(value) for _, value in found]
    assert logged == pytest.approx([row[OBJECTIVE] for row in curve["valid"]], abs=5e-5)
    assert max(logged) == pytest.approx(summary["best_valid"][OBJECTIVE], abs=5e-5)


def test_the_dvc_queue_recipe_sets_params_that_exist(tmp_path):
    """docs/pipeline.md's `dvc exp run --queue` recipe: every -S key is one of params.yaml's
    (or a model hyperparameter under train.hyper) and the search selects on validation."""
    from diffurec.train_settings import HYPERPARAMETER_RANGES

    text = (REPO / "docs" / "pipeline.md").read_text()
    section = text[text.index("## Hyperparameter search") :]
    (recipe,) = [block for block in section.split("```")[1::2] if "dvc exp run --queue" in block]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = re.findall(r"-S '?(\+*)([\w.]+)=([^' ]+)", recipe)
    assert overrides
    keys = set()
    for plus, key, _values in overrides:
        keys.add(key)
        section_name, *path = key.split(".")
        node: Any = params[section_name]
        if path[0] == "hyper":
            assert plus == "++" and path[1] in HYPERPARAMETER_RANGES, key
            continue
        for part in path:
            node = node[part]
    assert {"train.lr", "train.batch_size", "train.hyper.dropout", "data.max_len", "evaluate.split"} <= keys
    assert ("", "evaluate.split", "valid") in overrides
