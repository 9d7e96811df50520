"""The Kubeflow pipeline: the same steps as dvc.yaml, as typed components.

    resolve_data -> fetch_raw -> validate(raw) -> preprocess -> validate(splits) -> train ──> evaluate ─┐
                                                                     └──> train(popularity) -> evaluate┤
                                      register -> gate ──(passed == True)──> promote  <────────────────┘

Parameter defaults come from params.yaml (one set of parameters for DVC and Kubeflow), except
the data: a run trains on the data version `data_version`, a git revision of this repository
(default: the commit the spec was compiled from, $DIFFUREC_GIT_COMMIT, else "HEAD": the
repository's newest commit when the run starts). resolve_data reads the raw log's md5 from that
revision's dvc.lock and fetch_raw pulls exactly those bytes from the DVC remote, so every later
step is cached on the md5 (docs/operations.md, "Data versions"). `source` replaces the version:
"official" (the download) or a path (the data volume `diffurec-data` is mounted at /data).

Compile: `diffurec pipeline compile` (writes pipelines/diffurec_pipeline.yaml, committed; a test
fails when it is stale). Run locally: `diffurec pipeline local`. Submit: `diffurec pipeline submit`.
"""

# No `from __future__ import annotations`: kfp reads the pipeline's annotations as types.
import json
import os
from pathlib import Path

from kfp import dsl, kubernetes

from diffurec.lineage import CODE_MD5_ENV, IMAGE_ENV, PIPELINE_ENV, RUN_ID_ENV, RUN_NAME_ENV, source_md5

from components import IMAGE
from components.evaluate import evaluate
from components.fetch import fetch_raw
from components.gate import gate
from components.preprocess import preprocess
from components.promote import promote
from components.register import register
from components.resolve import resolve_data
from components.train import train as train_model
from components.validate import validate

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "params.yaml"
COMPILED = Path(__file__).with_suffix(".yaml")
PIPELINE_NAME = "diffurec-train-evaluate-promote"

# What the cluster provides (k8s/, namespace diffurec): the ConfigMap with the service
# addresses every step reads from its environment, and the data volume.
SETTINGS_CONFIG_MAP = "diffurec-settings"
SETTINGS_KEYS = (
    "MLFLOW_TRACKING_URI",
    "DIFFUREC_PUSHGATEWAY",
    "DIFFUREC_PROMETHEUS",
    # the data versions' repository and the DVC remote (diffurec/data/remote.py)
    "DIFFUREC_GIT_REPO",
    "DIFFUREC_DVC_REMOTE_URL",
    "DIFFUREC_S3_ENDPOINT_URL",
)
# The object store's credentials (created out of band, docs/operations.md), for the steps that
# read the DVC remote.
DVC_REMOTE_SECRET = "diffurec-dvc-remote"
DVC_REMOTE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The tracking server's login (MLflow's basic-auth app, k8s/base/mlflow), for the registry steps.
MLFLOW_AUTH_SECRET = "diffurec-mlflow-auth"
MLFLOW_AUTH_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
DATA_PVC, DATA_MOUNT = "diffurec-data", "/data"
# The run's identity on a cluster: KFP labels and annotates every pod of a run with them.
RUN_FIELD_PATHS = {
    RUN_ID_ENV: "metadata.labels['pipeline/runid']",
    RUN_NAME_ENV: "metadata.annotations['pipelines.kubeflow.org/run_name']",
}
# Network steps: 3 more tries, 30 s, 60 s, 120 s apart (at most 5 min).
NETWORK_RETRIES = 3
NETWORK_BACKOFF = {"backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "300s"}
SERVICE_ACCOUNT = "diffurec-pipeline-runner"
# Profiles of parameters (params.yaml `profiles:`, docs/pipeline.md "Profiles"): overrides of
# params.yaml's `data:` and `train:` sections. laptop: the sections as they are (DVC, `pipeline
# local`); cluster: full quality on a GPU, the compiled spec's defaults (what UI users run).
LAPTOP, CLUSTER = "laptop", "cluster"
COMPILE_PROFILE = CLUSTER
PROFILE_SECTIONS = ("data", "train")


def load_params(path: Path = PARAMS_FILE) -> dict:
    from diffurec.files import read_params

    return read_params(path)


def profile_params(params: dict, profile: str) -> dict:
    """params.yaml's sections with profile `profile`'s overrides (params.yaml `profiles:`) on
    top; a profile that is missing, overrides another section or key, or gives a bad training
    setting is one line naming it."""
    from diffurec.errors import DiffuRecError
    from diffurec.train_settings import MAX_LENS, TrainSettings

    profiles = params.get("profiles") or {}
    if profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise DiffuRecError(f"parameters: no profile {profile!r} under profiles: (known: {known})")
    overrides = profiles[profile] or {}
    where = f"parameters: profiles.{profile}"
    if not isinstance(overrides, dict):
        raise DiffuRecError(f"{where}: expected a mapping of sections, found {type(overrides).__name__}")
    merged = dict(params)
    for section, values in overrides.items():
        if section not in PROFILE_SECTIONS or not isinstance(values, dict):
            sections = ", ".join(PROFILE_SECTIONS)
            raise DiffuRecError(f"{where}.{section}: a profile overrides keys of {sections}")
        unknown = sorted(set(values) - set(params[section])) if section == "data" else []
        if unknown:
            raise DiffuRecError(f"{where}.data.{unknown[0]}: not a key of the data section")
        merged[section] = {**params[section], **values}
    MAX_LENS.check(merged["data"]["max_len"], f"{where}.data.max_len")
    settings = {key: value for key, value in merged["train"].items() if value is not None}
    TrainSettings.from_mapping(settings, source=f"{where}.train")
    return merged


def compiled_data_version() -> str:
    """The default data version baked into a spec: the commit it is compiled for
    ($DIFFUREC_GIT_COMMIT, which CI sets), else "HEAD" (the newest commit when the run starts):
    the committed spec stays the same bytes from commit to commit."""
    from diffurec.lineage import GIT_COMMIT_ENV

    return os.environ.get(GIT_COMMIT_ENV) or "HEAD"


def default_arguments(params: dict) -> dict:
    """Pipeline arguments from params.yaml's sections (the KFP names of the DVC params). The
    `train:` section travels whole, as one dict (diffurec.train_settings.TrainSettings)."""
    data = params["data"]
    return {
        "dataset": data["dataset"],
        "data_version": compiled_data_version(),
        "source": "",  # "": the data version's raw log; "official": the download; else a path
        "max_len": int(data["max_len"]),
        # Kubeflow parameters cannot hold null; a missing setting takes its (null) default.
        "train": {key: value for key, value in params["train"].items() if value is not None},
        # More than 1: the train step trains on a PyTorchJob of that many pods (diffurec train-job)
        "workers": 1,
        "split": params["evaluate"]["split"],
        "registry_name": params["registry"]["name"],
        "tracking_uri": "",  # empty: $MLFLOW_TRACKING_URI (on a cluster: the ConfigMap's)
        # The gate's thresholds are no run parameter: params.yaml's, compiled in as a constant
        # (gate_thresholds). A run that needs others gives them here, a JSON `gate:` section,
        # with a reason and a name: the gate records the override in its decision and tags.
        "gate_override": "",
        "override_reason": "",
        "override_by": "",
        "prometheus_url": "",  # empty: $DIFFUREC_PROMETHEUS (on a cluster: the ConfigMap's)
        # true: an unreachable Prometheus skips the gate's Prometheus checks (recorded) instead
        # of failing the gate step
        "allow_unreachable_prometheus": False,
    }


def gate_thresholds(params: dict) -> dict:
    """params.yaml's `gate:` section, checked (a gate that cannot reject fails the compile):
    the thresholds compiled into the spec as a constant of the gate step."""
    from diffurec.gate import check_thresholds

    check_thresholds(params.get("gate"), source=f"{PARAMS_FILE.name}: gate")
    return params["gate"]


def build_pipeline(cluster: bool = True, params: dict | None = None, profile: str | None = None):
    """The pipeline function. cluster=False leaves out what only a cluster has (the settings
    ConfigMap) for kfp's local runner; everything else is identical. Defaults: params.yaml's
    (or `params`) with the `profile` applied (default: cluster on a cluster, else laptop)."""
    profile = profile or (COMPILE_PROFILE if cluster else LAPTOP)
    params = profile_params(params or load_params(), profile)
    defaults = default_arguments(params)
    thresholds = gate_thresholds(params)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Validate, preprocess, train, evaluate, register, gate and promote "
        f"a DiffuRec sequential recommender (same steps as dvc.yaml); defaults: the {profile} "
        "profile of parameters (docs/pipeline.md).",
    )
    def diffurec_pipeline(
        dataset: str = defaults["dataset"],
        data_version: str = defaults["data_version"],
        source: str = defaults["source"],
        max_len: int = defaults["max_len"],
        train: dict = defaults["train"],
        workers: int = defaults["workers"],
        split: str = defaults["split"],
        registry_name: str = defaults["registry_name"],
        tracking_uri: str = defaults["tracking_uri"],
        gate_override: str = defaults["gate_override"],
        override_reason: str = defaults["override_reason"],
        override_by: str = defaults["override_by"],
        prometheus_url: str = defaults["prometheus_url"],
        allow_unreachable_prometheus: bool = defaults["allow_unreachable_prometheus"],
    ):
        """The parameters' descriptions below are the Kubeflow UI's (kfp reads them into the spec).

        Args:
            dataset: Dataset name (ml-100k, ml-1m, beauty, ...): the raw log's format and the labels.
            data_version: Git revision of the repository whose dvc.lock names the raw log (md5) to
                train on; HEAD is its newest commit when the run starts.
            source: Empty: the data version's raw log. "official": the dataset's official download.
                A path (e.g. under /data, the data volume): that file.
            max_len: Longest item history a user's window keeps (preprocess --max-len).
            train: Training settings as a JSON object (TrainSettings: model, preset, epochs,
                max_minutes, lr, batch_size, ...); missing keys take their defaults.
            workers: Training processes: 1 trains in the train step's pod; more start a PyTorchJob
                of that many pods (one GPU each; CPUs and Gloo when train.device is cpu).
            split: Split the metrics are measured on (test or valid).
            registry_name: MLflow registered model the new version is added to.
            tracking_uri: MLflow tracking server; empty: the cluster's (diffurec-settings ConfigMap).
            gate_override: A JSON gate section replacing the compiled thresholds for this run;
                needs override_reason and override_by (recorded in the decision).
            override_reason: Why the gate's thresholds are overridden.
            override_by: Who overrides the gate's thresholds.
            prometheus_url: Prometheus for the gate's checks; empty: the cluster's.
            allow_unreachable_prometheus: True: an unreachable Prometheus skips the gate's
                Prometheus checks (recorded) instead of failing the gate step.
        """
        # The version (or source path) can name new data each run: always resolved again. Every
        # later step takes the md5 or an artifact made from it, so a cache hit means same data.
        data_task = resolve_data(data_version=data_version, source=source).set_caching_options(False)
        data_task.set_display_name("resolve data version")
        raw_task = fetch_raw(
            dataset=dataset,
            source=source,
            md5=data_task.outputs["md5"],
            path=data_task.outputs["path"],
        )
        for task in (data_task, raw_task):
            kubernetes.mount_pvc(task, pvc_name=DATA_PVC, mount_path=DATA_MOUNT)

        # Pure functions of their inputs: cached. KFP keys a task's cache on its input artifacts'
        # ids, parameters, command and image: fetch_raw on the md5, so it returns the same raw
        # artifact for the same data, and everything below hits the cache until the md5 or a
        # parameter changes. Nothing per-run (the run id) is an input of these steps.
        raw_check = validate(data=raw_task.outputs["raw"], kind="raw")
        raw_check.set_display_name("validate raw log")
        splits_task = preprocess(raw=raw_task.outputs["raw"], max_len=max_len).after(raw_check)
        splits_check = validate(data=splits_task.outputs["splits"], kind="splits")
        splits_check.set_display_name("validate splits")

        # The data parameters, recorded with the train settings in the model's lineage.
        data_params = {"dataset": dataset, "source": source, "max_len": max_len}
        # Training is the expensive step, on a GPU node: cached on the raw and splits artifacts
        # (made from the md5), the settings and the data parameters.
        train_task = train_model(
            raw=raw_task.outputs["raw"],
            splits=splits_task.outputs["splits"],
            settings=train,
            data_params=data_params,
            workers=workers,
            profile=profile,
        ).after(splits_check)
        train_task.set_display_name("train")
        # With workers > 1 the step stages the splits and the job writes the model in a run
        # folder on the data volume (ReadWriteMany), mounted at the same path in the job's pods.
        kubernetes.mount_pvc(train_task, pvc_name=DATA_PVC, mount_path=DATA_MOUNT)
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
            profile=profile,
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
            dataset=dataset,
            data_version=data_task.outputs["commit"],
            # KFP fills these in when the run starts (the local runner too): the version's tags.
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        ).set_caching_options(False)
        gate_task = gate(
            candidate=eval_task.outputs["metrics"],
            candidate_ranks=eval_task.outputs["ranks"],
            baseline=baseline_eval.outputs["metrics"],
            splits=splits_task.outputs["splits"],
            registry_name=registry_name,
            version=register_task.output,
            tracking_uri=tracking_uri,
            thresholds=thresholds,
            override=gate_override,
            override_reason=override_reason,
            override_by=override_by,
            prometheus_url=prometheus_url,
            allow_unreachable_prometheus=allow_unreachable_prometheus,
        ).set_caching_options(False)
        # The condition tests a scalar; the decision artifact is made outside it.
        with dsl.If(gate_task.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
            promote_task = promote(
                decision=gate_task.outputs["decision"],
                registry_name=registry_name,
                tracking_uri=tracking_uri,
                dataset=dataset,
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            ).set_caching_options(False)
        for task in (data_task, raw_task, register_task, gate_task, promote_task):
            task.set_cpu_request("500m").set_cpu_limit("2")
            task.set_memory_request("1G").set_memory_limit("4G")

        every_task = (
            data_task,
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
        )
        if not cluster:
            # kfp's local runner caches on a step's own source, arguments and environment; the
            # library's code version joins them (on a cluster the image does).
            code_md5 = source_md5(REPO / "diffurec")
            for task in every_task:
                task.set_env_variable(CODE_MD5_ENV, code_md5)
        if cluster:
            for task in every_task:
                kubernetes.use_config_map_as_env(
                    task, SETTINGS_CONFIG_MAP, {key: key for key in SETTINGS_KEYS}
                )
                task.set_env_variable("GX_ANALYTICS_ENABLED", "false")
                task.set_env_variable("MLFLOW_ENABLE_TELEMETRY", "false")
                # Who runs: constants of the spec (in the cache key, equal from run to run) and
                # the run's id and name from the labels KFP puts on every pod (not in the cache
                # key), so the Prometheus series of every step carry them (diffurec.lineage).
                task.set_env_variable(PIPELINE_ENV, defaults["registry_name"])
                task.set_env_variable(IMAGE_ENV, IMAGE)
                for name, field_path in RUN_FIELD_PATHS.items():
                    kubernetes.use_field_path_as_env(task, env_name=name, field_path=field_path)
            # Steps that talk to a network service: a failure may be the service's, so retried.
            # (Not in local runs: the local runner would retry a user error just as long.)
            for task in (data_task, raw_task, register_task, gate_task, promote_task):
                task.set_retry(num_retries=NETWORK_RETRIES, **NETWORK_BACKOFF)
            # Optional: a folder remote on the data volume, or a source, needs no credentials.
            kubernetes.use_secret_as_env(
                raw_task, DVC_REMOTE_SECRET, {key: key for key in DVC_REMOTE_SECRET_KEYS}, optional=True
            )
            for task in (register_task, gate_task, promote_task):
                kubernetes.use_secret_as_env(task, MLFLOW_AUTH_SECRET, MLFLOW_AUTH_ENV)

    return diffurec_pipeline


def compile_pipeline(
    out: str | Path = COMPILED, params: dict | None = None, profile: str = COMPILE_PROFILE
) -> Path:
    """Compile the cluster pipeline to a spec file (what the Kubeflow UI uploads), its defaults
    from the parameter profile `profile`."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cluster=True, params=params, profile=profile), str(out))
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
