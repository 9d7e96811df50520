"""The Kubeflow pipeline: the same steps as dvc.yaml, as typed components.

    fetch_raw -> validate(raw) -> preprocess -> validate(splits) -> train ──> evaluate ─┐
                                                      └──> train(popularity) -> evaluate┤
                       register -> gate ──(passed == True)──> promote  <────────────────┘

Parameter defaults come from params.yaml (one set of parameters for DVC and Kubeflow), except
the data source: on a cluster it is the official download unless a path is given (the data
volume `diffurec-data` is mounted at /data on the fetch step).

Compile: `diffurec pipeline compile` (writes pipelines/diffurec_pipeline.yaml, committed; a test
fails when it is stale). Run locally: `diffurec pipeline local`. Submit: `diffurec pipeline submit`.
"""

# No `from __future__ import annotations`: kfp reads the pipeline's annotations as types.
import json
from pathlib import Path

from kfp import dsl, kubernetes

from components.evaluate import evaluate
from components.fetch import fetch_raw
from components.gate import gate
from components.preprocess import preprocess
from components.promote import promote
from components.register import register
from components.train import train as train_model
from components.validate import validate

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "params.yaml"
COMPILED = Path(__file__).with_suffix(".yaml")
PIPELINE_NAME = "diffurec-train-evaluate-promote"

# What the cluster provides (k8s/, namespace diffurec): the ConfigMap with the service
# addresses every step reads from its environment, and the data volume.
SETTINGS_CONFIG_MAP = "diffurec-settings"
SETTINGS_KEYS = ("MLFLOW_TRACKING_URI", "DIFFUREC_PUSHGATEWAY", "DIFFUREC_PROMETHEUS")
DATA_PVC, DATA_MOUNT = "diffurec-data", "/data"
SERVICE_ACCOUNT = "diffurec-pipeline-runner"


def load_params(path: Path = PARAMS_FILE) -> dict:
    from diffurec.files import read_params

    return read_params(path)


def default_arguments(params: dict) -> dict:
    """Pipeline arguments from params.yaml's sections (the KFP names of the DVC params). The
    `train:` section travels whole, as one dict (diffurec.train_settings.TrainSettings)."""
    data = params["data"]
    return {
        "dataset": data["dataset"],
        "source": "",
        "max_len": int(data["max_len"]),
        # Kubeflow parameters cannot hold null; a missing setting takes its (null) default.
        "train": {key: value for key, value in params["train"].items() if value is not None},
        "split": params["evaluate"]["split"],
        "registry_name": params["registry"]["name"],
        "tracking_uri": "",  # empty: $MLFLOW_TRACKING_URI (on a cluster: the ConfigMap's)
        "gate_thresholds": params["gate"],
        "prometheus_url": "",  # empty: $DIFFUREC_PROMETHEUS (on a cluster: the ConfigMap's)
        # true: an unreachable Prometheus skips the gate's Prometheus checks (recorded) instead
        # of failing the gate step
        "allow_unreachable_prometheus": False,
    }


def build_pipeline(cluster: bool = True, params: dict | None = None):
    """The pipeline function. cluster=False leaves out what only a cluster has (the settings
    ConfigMap) for kfp's local runner; everything else is identical."""
    defaults = default_arguments(params or load_params())

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Validate, preprocess, train, evaluate, register, gate and promote "
        "a DiffuRec sequential recommender (same steps as dvc.yaml).",
    )
    def diffurec_pipeline(
        dataset: str = defaults["dataset"],
        source: str = defaults["source"],
        max_len: int = defaults["max_len"],
        train: dict = defaults["train"],
        split: str = defaults["split"],
        registry_name: str = defaults["registry_name"],
        tracking_uri: str = defaults["tracking_uri"],
        gate_thresholds: dict = defaults["gate_thresholds"],
        prometheus_url: str = defaults["prometheus_url"],
        allow_unreachable_prometheus: bool = defaults["allow_unreachable_prometheus"],
    ):
        # The source location can hold new data under the same path: always fetch again.
        raw_task = fetch_raw(dataset=dataset, source=source).set_caching_options(False)
        kubernetes.mount_pvc(raw_task, pvc_name=DATA_PVC, mount_path=DATA_MOUNT)

        # Pure functions of their inputs: cached.
        raw_check = validate(data=raw_task.outputs["raw"], kind="raw")
        raw_check.set_display_name("validate raw log")
        splits_task = preprocess(raw=raw_task.outputs["raw"], max_len=max_len).after(raw_check)
        splits_check = validate(data=splits_task.outputs["splits"], kind="splits")
        splits_check.set_display_name("validate splits")

        # The data parameters, recorded with the train settings in the model's lineage.
        data_params = {"dataset": dataset, "source": source, "max_len": max_len}
        # Training is the expensive step: cached on (data, parameters, image), on a GPU node.
        train_task = train_model(
            raw=raw_task.outputs["raw"],
            splits=splits_task.outputs["splits"],
            settings=train,
            data_params=data_params,
        ).after(splits_check)
        train_task.set_display_name("train")
        train_task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        train_task.set_cpu_request("4").set_cpu_limit("8")
        train_task.set_memory_request("16G").set_memory_limit("32G")
        kubernetes.add_node_selector(train_task, label_key="nvidia.com/gpu.present", label_value="true")
        kubernetes.add_toleration(train_task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        kubernetes.set_timeout(train_task, seconds=6 * 3600)

        baseline_task = train_model(
            raw=raw_task.outputs["raw"],
            splits=splits_task.outputs["splits"],
            settings={"model": "popularity"},
            data_params=data_params,
        ).after(splits_check)
        baseline_task.set_display_name("train popularity baseline")

        eval_task = evaluate(
            model=train_task.outputs["model"], splits=splits_task.outputs["splits"], split=split
        )
        eval_task.set_display_name("evaluate")
        baseline_eval = evaluate(
            model=baseline_task.outputs["model"], splits=splits_task.outputs["splits"], split=split
        )
        baseline_eval.set_display_name("evaluate popularity baseline")
        for task in (raw_check, splits_task, splits_check, baseline_task, eval_task, baseline_eval):
            task.set_cpu_request("1").set_cpu_limit("2")
            task.set_memory_request("2G").set_memory_limit("8G")
        # Evaluation on a GPU node is as fast as training there; on CPU it is bounded by
        # batched scoring, so the same request as above suffices.

        # Registry steps read and change the registry's state: never cached.
        register_task = register(
            model=train_task.outputs["model"],
            metrics=eval_task.outputs["metrics"],
            registry_name=registry_name,
            tracking_uri=tracking_uri,
        ).set_caching_options(False)
        gate_task = gate(
            candidate=eval_task.outputs["metrics"],
            baseline=baseline_eval.outputs["metrics"],
            splits=splits_task.outputs["splits"],
            registry_name=registry_name,
            version=register_task.output,
            tracking_uri=tracking_uri,
            thresholds=gate_thresholds,
            prometheus_url=prometheus_url,
            allow_unreachable_prometheus=allow_unreachable_prometheus,
        ).set_caching_options(False)
        # The condition tests a scalar; the decision artifact is made outside it.
        with dsl.If(gate_task.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
            promote_task = promote(
                decision=gate_task.outputs["decision"], registry_name=registry_name, tracking_uri=tracking_uri
            ).set_caching_options(False)
        for task in (raw_task, register_task, gate_task, promote_task):
            task.set_cpu_request("500m").set_cpu_limit("2")
            task.set_memory_request("1G").set_memory_limit("4G")

        if cluster:
            for task in (
                raw_task,
                raw_check,
                splits_task,
                splits_check,
                train_task,
                baseline_task,
                eval_task,
                baseline_eval,
                register_task,
                gate_task,
                promote_task,
            ):
                kubernetes.use_config_map_as_env(
                    task, SETTINGS_CONFIG_MAP, {key: key for key in SETTINGS_KEYS}
                )
                task.set_env_variable("GX_ANALYTICS_ENABLED", "false")
                task.set_env_variable("MLFLOW_ENABLE_TELEMETRY", "false")

    return diffurec_pipeline


def compile_pipeline(out: str | Path = COMPILED, params: dict | None = None) -> Path:
    """Compile the cluster pipeline to a spec file (what the Kubeflow UI uploads)."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cluster=True, params=params), str(out))
    out.write_text(_sorted_header_defaults(out.read_text()))
    return out


def _sorted_header_defaults(text: str) -> str:
    """kfp's header comment prints dict defaults in protobuf map order, which varies between
    runs; sort them so the same pipeline always compiles to the same bytes."""
    import ast
    import re

    def sort(match):
        value = ast.literal_eval(match.group(2))
        return f"{match.group(1)}{json.dumps(value, sort_keys=True)}]"

    return re.sub(r"^(#\s+\w+: dict \[Default: )(\{.*\})\]$", sort, text, flags=re.MULTILINE)
