"""Caching that hits, and retries, read from the COMPILED spec (pipelines/diffurec_pipeline.yaml:
what a cluster runs; test_pipeline_kfp.py checks that it is up to date).

KFP's backend keys a task's cache on its input parameter values, the ids of its input artifacts,
its outputs' spec, its command, arguments and image (the driver's cacheutils.GenerateCacheKey;
newer backends add the spec's constant env). A cached task hits across runs only when all of
these are equal, and a cache hit returns the same output artifacts, so a task downstream of
cached tasks only hits when they did. Hence the design: resolve_data (never cached) turns the
data version into the raw log's md5; fetch_raw is cached on that md5 string; every later data
and training step takes only artifacts of cached steps, pipeline parameters and constants, never
anything that changes per run. Register, gate and promote talk to the registry: never cached.

kfp 2.17's local runner caches too (kfp.local.init(enable_caching=True), which `diffurec
pipeline local` sets; keyed on the component, command, arguments incl. input artifacts' URI and
metadata, and the spec's env, where diffurec's source md5 stands in for the image).
test_local_runner_takes_validate_from_its_cache shows it on one real step;
test_pipeline_kfp.py's local run on the whole pipeline: the second run takes the data steps
from the cache and re-runs only what its changed parameters touch (checked when diffurec/
did not change between the two runs: its source md5 is part of every local key).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from diffurec.lineage import CODE_MD5_ENV, IMAGE_ENV, PIPELINE_ENV, RUN_ID_ENV, RUN_NAME_ENV

CACHED = {
    "fetch-raw",
    "validate",
    "preprocess",
    "validate-2",
    "train",
    "train-2",
    "evaluate",
    "evaluate-2",
}
NEVER_CACHED = {"resolve-data", "register", "gate", "promote"}
NETWORK_STEPS = {"resolve-data", "fetch-raw", "register", "gate", "promote"}


@pytest.fixture(scope="module")
def spec(repo_root) -> dict:
    documents = list(yaml.safe_load_all((repo_root / "pipelines" / "diffurec_pipeline.yaml").read_text()))
    return {"pipeline": documents[0], "platform": documents[1]["platforms"]["kubernetes"]}


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline by name, the ones inside the gate's condition included."""
    pipeline = spec["pipeline"]
    tasks = dict(pipeline["root"]["dag"]["tasks"])
    for task in list(tasks.values()):
        if "dag" in pipeline["components"][task["componentRef"]["name"]]:
            tasks.update(pipeline["components"][task["componentRef"]["name"]]["dag"]["tasks"])
    return {name: task for name, task in tasks.items() if not name.startswith("condition")}


def _cached(task: dict) -> bool:
    # kfp writes an empty cachingOptions for set_caching_options(False)
    return bool(task.get("cachingOptions", {}).get("enableCache", False))


def test_data_and_training_steps_cached_registry_steps_never(spec):
    tasks = _tasks(spec)
    assert set(tasks) == CACHED | NEVER_CACHED
    assert {name for name, task in tasks.items() if _cached(task)} == CACHED


def test_fetch_is_keyed_on_the_resolved_md5(spec):
    """fetch_raw's only task-made parameter inputs are resolve_data's md5 and path (the same for
    the same data), not its commit (new for every commit, even with the same data)."""
    fetch = _tasks(spec)["fetch-raw"]["inputs"]
    assert fetch["parameters"]["md5"] == {
        "taskOutputParameter": {"outputParameterKey": "md5", "producerTask": "resolve-data"}
    }
    produced = {
        value["taskOutputParameter"]["outputParameterKey"]
        for value in fetch["parameters"].values()
        if "taskOutputParameter" in value
    }
    assert produced == {"md5", "path"}
    assert not fetch.get("artifacts")


def test_cached_steps_depend_only_on_cached_steps_and_run_constants(spec):
    """A cached step's inputs: artifacts of cached steps (rooted in fetch_raw), pipeline
    parameters and constants, nothing per run (no KFP run placeholder, no registry output)."""
    tasks = _tasks(spec)
    for name in CACHED - {"fetch-raw"}:
        inputs = tasks[name].get("inputs", {})
        producers = {
            artifact["taskOutputArtifact"]["producerTask"]
            for artifact in inputs.get("artifacts", {}).values()
        }
        assert producers and producers <= CACHED, (name, producers)
        for key, value in inputs.get("parameters", {}).items():
            assert "taskOutputParameter" not in value, (name, key)
            assert "{{$.pipeline_job" not in str(value), (name, key)
    # Every cached step is downstream of fetch_raw through artifacts: same raw artifact, same keys.
    reached, frontier = {"fetch-raw"}, True
    while frontier:
        frontier = False
        for name in CACHED - reached:
            artifacts = tasks[name].get("inputs", {}).get("artifacts", {}).values()
            if any(a["taskOutputArtifact"]["producerTask"] in reached for a in artifacts):
                reached.add(name)
                frontier = True
    assert reached == CACHED


def test_run_identity_reaches_every_task_without_touching_cache_keys(spec):
    """Register and promote take KFP's run id/name placeholders as inputs (they are never
    cached); every task gets the run id and name from its pod (the downward API: platform
    config, outside the cache key) and the pipeline and image as constant env."""
    tasks = _tasks(spec)
    for name in ("register", "promote"):
        parameters = tasks[name]["inputs"]["parameters"]
        assert parameters["kfp_run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
        assert parameters["kfp_run_name"] == {"runtimeValue": {"constant": "{{$.pipeline_job_name}}"}}
    executors = spec["pipeline"]["deploymentSpec"]["executors"]
    platform = spec["platform"]["deploymentSpec"]["executors"]
    image = executors["exec-train"]["container"]["image"]
    for name, task in tasks.items():
        executor = task["componentRef"]["name"].replace("comp-", "exec-")
        env = {item["name"]: item["value"] for item in executors[executor]["container"].get("env", [])}
        assert env[PIPELINE_ENV] and env[IMAGE_ENV] == image, name
        assert CODE_MD5_ENV not in env, name  # the local runner's stand-in for the image only
        fields = {item["name"]: item["fieldPath"] for item in platform[executor]["fieldPathAsEnv"]}
        assert fields == {
            RUN_ID_ENV: "metadata.labels['pipeline/runid']",
            RUN_NAME_ENV: "metadata.annotations['pipelines.kubeflow.org/run_name']",
        }, name


def test_network_steps_retry_with_backoff(spec):
    tasks = _tasks(spec)
    retrying = {name for name, task in tasks.items() if "retryPolicy" in task}
    assert retrying == NETWORK_STEPS
    for name in NETWORK_STEPS:
        policy = tasks[name]["retryPolicy"]
        assert policy["maxRetryCount"] >= 2, name
        assert policy["backoffDuration"] == "30s" and policy["backoffFactor"] >= 2.0, name
        assert policy["backoffMaxDuration"] == "300s", name


def test_local_pipeline_keys_its_cache_on_the_library_code(repo_root):
    """The local runner sees no image: the local pipeline puts diffurec's source md5 in every
    step's env, so a changed library misses the cache instead of returning a stale model."""
    from kfp import compiler

    from diffurec.lineage import source_md5
    from pipelines.diffurec_pipeline import build_pipeline

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "local.yaml"
        compiler.Compiler().compile(build_pipeline(cluster=False), str(out))
        local = next(yaml.safe_load_all(out.read_text()))
    expected = source_md5(repo_root / "diffurec")
    for name, executor in local["deploymentSpec"]["executors"].items():
        env = {item["name"]: item["value"] for item in executor["container"].get("env", [])}
        assert env.get(CODE_MD5_ENV) == expected, name


LOCAL_VALIDATE_TWICE = """
import logging
import sys

import kfp.local
from kfp import dsl
from kfp.dsl import Dataset

from components.validate import validate

logging.basicConfig(level=logging.INFO)  # kfp says "cache hit" at INFO
root, folder = sys.argv[1], sys.argv[2]
kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=root, enable_caching=True)


@dsl.pipeline(name="validate-twice")
def validate_twice():
    raw = dsl.importer(
        artifact_uri=folder, artifact_class=Dataset, metadata={"file": "slice.inter", "dataset": "ml-100k"}
    )
    validate(data=raw.output, kind="raw")


validate_twice()
validate_twice()
"""


@pytest.mark.slow
def test_local_runner_takes_validate_from_its_cache(tmp_path, repo_root, shared_data):
    """kfp's local runner (2.17) caches: the same validate step on the same input artifact runs
    once and is a cache hit the second time. (Before its Metrics output had a file, kfp treated
    the step's outputs as lost and never took it from the cache.)"""
    from pipeline_clone import VENV_BIN, run, tool_env, write_slice

    write_slice(shared_data / "ml-100k" / "ml-100k.inter", tmp_path / "raw" / "slice.inter", users=25)
    script = tmp_path / "validate_twice.py"
    script.write_text(LOCAL_VALIDATE_TWICE)
    env = tool_env(f"sqlite:///{tmp_path}/unused.db")
    env["PYTHONPATH"] = str(repo_root)
    result = run(
        [str(VENV_BIN / "python"), str(script), str(tmp_path / "kfp"), str(tmp_path / "raw")],
        cwd=repo_root,
        env=env,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("Task validate cache hit") == 1, output[-3000:]
    assert len(list((tmp_path / "kfp").glob("validate-twice-*/validate"))) == 1
