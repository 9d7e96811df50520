"""The Kubeflow pipeline: compiled spec up to date and well-formed, kfp's local runner end to
end on a real ML-100K slice (the gate's branch taken or skipped as the thresholds say), and
`submit` failing with one line when the endpoint does not answer."""

from __future__ import annotations

import json
import re
import socket

import pytest
import yaml

from diffurec.cli import main
from diffurec.lineage import source_md5

from pipeline_clone import VENV_BIN, champion_version, registered_versions, run, tool_env, write_slice

DIFFUREC = str(VENV_BIN / "diffurec")
SLICE_USERS = 25
NAME = "slice-kfp"


def _spec(repo_root) -> tuple[dict, dict]:
    documents = list(yaml.safe_load_all((repo_root / "pipelines" / "diffurec_pipeline.yaml").read_text()))
    return documents[0], documents[1] if len(documents) > 1 else {}


def test_compiled_spec_is_up_to_date(tmp_path, repo_root):
    env = tool_env("sqlite:///unused.db")
    env.pop("DIFFUREC_IMAGE", None)
    out = tmp_path / "fresh.yaml"
    result = run([DIFFUREC, "pipeline", "compile", "--out", str(out)], cwd=repo_root, env=env)
    assert result.returncode == 0, result.stderr
    committed = (repo_root / "pipelines" / "diffurec_pipeline.yaml").read_text()
    assert out.read_text() == committed, (
        "pipelines/diffurec_pipeline.yaml is stale: run `diffurec pipeline compile` and commit it"
    )


def test_spec_gpu_caching_condition_and_parameters(repo_root):
    spec, platform = _spec(repo_root)
    tasks = spec["root"]["dag"]["tasks"]
    # Caching (fetch_raw now cached on the resolved md5), retries, run identity:
    # tests/test_pipeline_cache.py.
    # promote runs only inside the condition on the gate's scalar output.
    condition = next(task for name, task in tasks.items() if name.startswith("condition"))
    assert "gate" in condition["dependentTasks"]
    assert "gate-Output" in condition["triggerPolicy"]["condition"]
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["promote"]
    assert inner["promote"].get("cachingOptions", {}).get("enableCache", False) is False
    # The train step asks for a GPU, CPU and memory, and lands on a GPU node.
    executor = spec["deploymentSpec"]["executors"][
        tasks["train"]["componentRef"]["name"].replace("comp-", "exec-")
    ]
    resources = executor["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["cpuRequest"] > 0 and resources["memoryLimit"] > 0
    assert executor["container"]["image"] == "ghcr.io/diffurec/diffurec:0.1.0"
    train_platform = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        tasks["train"]["componentRef"]["name"].replace("comp-", "exec-")
    ]
    assert train_platform["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert train_platform["tolerations"][0]["key"] == "nvidia.com/gpu"
    # Parameters cover data location, preset, budget and a gate override, defaults from
    # params.yaml; the thresholds are no parameter but params.yaml's, compiled in (issue 12).
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert {"dataset", "source", "train", "gate_override", "override_reason", "override_by"} <= set(inputs)
    assert "gate_thresholds" not in inputs
    # The committed spec is what UI users run on a cluster: params.yaml's cluster profile on top.
    cluster = params["profiles"]["cluster"]
    merged = {**params["train"], **cluster["train"]}
    expected = {key: value for key, value in merged.items() if value is not None}
    assert inputs["train"]["defaultValue"] == expected
    assert inputs["max_len"]["defaultValue"] == cluster["data"]["max_len"]
    constant = tasks["gate"]["inputs"]["parameters"]["thresholds"]["runtimeValue"]["constant"]
    assert constant == params["gate"]


def _local_run(repo_root, root, uri, source, thresholds, model="diffurec"):
    command = [
        DIFFUREC,
        "pipeline",
        "local",
        "--root",
        str(root),
        "--set",
        f"train.model={model}",
        # null: the model's default preset (params.yaml's is a DiffuRec preset)
        *(["--set", "train.preset=null"] if model != "diffurec" else []),
        "--set",
        f"source={source}",
        "--set",
        "train.epochs=1",
        "--set",
        "train.max_minutes=1",
        "--set",
        "train.patience=1",
        "--set",
        f"registry_name={NAME}",
        "--set",
        f"gate_override={json.dumps(thresholds)}",
        "--set",
        "override_reason=test thresholds for a tiny slice",
        "--set",
        "override_by=test_pipeline_kfp",
    ]
    return run(command, cwd=repo_root, env=tool_env(uri))


@pytest.mark.slow
def test_local_run_takes_or_skips_the_promote_branch(tmp_path, repo_root, shared_data):
    source = write_slice(
        shared_data / "ml-100k" / "ml-100k.inter", tmp_path / "slice.inter", users=SLICE_USERS
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    floors = {"min": {"HR@10": 0.0}, "min_margin_over_popularity": {"NDCG@10": -100.0}}
    first = _local_run(repo_root, tmp_path / "kfp", uri, source, floors)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-4000:]
    assert "gate passed: True; promote step ran" in first.stdout
    runs = sorted((tmp_path / "kfp").glob("diffurec-train-evaluate-promote-*"))
    assert len(runs) == 1 and (runs[0] / "promote" / "executor_output.json").is_file()
    assert champion_version(uri, NAME) == "1"
    code_md5 = source_md5(repo_root / "diffurec")

    # Only a perfect HR@10 (percent) passes. The candidate is the popularity model this time: the
    # branch depends on the gate only, and DiffuRec's training ran in the first run already.
    # The confidence rule needs the candidate's ranks artifact and the champion re-evaluated:
    # the gate step fails without them.
    unreachable = {
        "min": {"HR@10": 100.0},
        "min_margin_over_popularity": {"NDCG@10": 0.0},
        "max_drop_vs_champion": {"NDCG@10": {"relative": 0.02, "confidence": 0.95}},
    }
    second = _local_run(repo_root, tmp_path / "kfp", uri, source, unreachable, model="popularity")
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert "gate passed: False; promote step skipped" in second.stdout
    runs = sorted((tmp_path / "kfp").glob("diffurec-train-evaluate-promote-*"))
    assert len(runs) == 2 and (runs[1] / "gate").is_dir() and not (runs[1] / "promote").exists()
    versions = {str(v.version): v.tags for v in registered_versions(uri, NAME)}
    assert set(versions) == {"1", "2"}
    assert versions["2"].get("gate_passed") == "false"
    assert champion_version(uri, NAME) == "1"

    # Lineage: each version names the kfp run that registered it (KFP's placeholder resolves
    # to the run's folder name; the run id is the local runner's, every step's Prometheus `run`
    # label), and the data revision resolve_data read.
    for version, run_dir in (("1", runs[0]), ("2", runs[1])):
        tags = versions[version]
        assert tags["kfp_run_name"] == run_dir.name, tags
        assert tags["kfp_run_id"].startswith("kfp-local-"), tags
        resolved = json.loads((run_dir / "resolve-data" / "executor_output.json").read_text())
        assert tags["data_revision"] == (resolved["parameterValues"]["commit"] or "unknown")
        assert tags["splits_md5"] == tags["data_version"] != "unknown"
        assert json.loads(tags["params"])["data"]["dataset"] == "ml-100k"
        assert tags["profile"] == "laptop"  # pipeline local's default profile
    assert versions["1"]["kfp_run_name"] != versions["2"]["kfp_run_name"]
    # Caching: the same data and data parameters, another candidate model: the second run took
    # the data steps and the popularity baseline from kfp's local cache and re-ran the rest.
    if source_md5(repo_root / "diffurec") == code_md5:  # else the library changed meanwhile: a miss
        hits = set(re.findall(r"Task (\S+) cache hit", output))
        assert hits == {"fetch-raw", "validate", "preprocess", "validate-2", "train-2", "evaluate-2"}, hits


def test_submit_unreachable_endpoint_is_one_line(capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = main(["pipeline", "submit", "--host", f"http://127.0.0.1:{port}", "--timeout", "2"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"127.0.0.1:{port}" in err[0] and "unreachable" in err[0]


def test_submit_needs_a_host_and_valid_overrides(monkeypatch, capsys):
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert main(["pipeline", "submit"]) == 2
    assert "--host" in capsys.readouterr().err
    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:1", "--set", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    # A train setting is checked before anything is submitted.
    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:1", "--set", "train.epochs=x"]) == 2
    assert "epochs: expected int" in capsys.readouterr().err


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments left out."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
            pending = ""
    return instructions


def test_image_carries_its_commit_and_name_from_the_retrain_build(repo_root):
    """Lineage in a container: the build arguments GIT_COMMIT and IMAGE_REF become
    DIFFUREC_GIT_COMMIT and DIFFUREC_IMAGE_REF (after the dependency and code layers, so a new
    commit rebuilds none of them), and the retrain workflow passes the commit and the image's
    name. Read statically: no image builder runs here."""
    instructions = _dockerfile_instructions((repo_root / "Dockerfile").read_text())
    keywords = [keyword for keyword, _ in instructions]
    arg = instructions.index(("ARG", 'GIT_COMMIT=""'))
    assert ("ARG", 'IMAGE_REF=""') in instructions
    env = next(rest for keyword, rest in instructions[arg:] if keyword == "ENV")
    assert 'DIFFUREC_GIT_COMMIT="${GIT_COMMIT}"' in env and 'DIFFUREC_IMAGE_REF="${IMAGE_REF}"' in env
    assert arg > max(i for i, keyword in enumerate(keywords) if keyword in ("RUN", "COPY"))
    retrain = yaml.safe_load((repo_root / ".github" / "workflows" / "retrain.yml").read_text())
    build = next(
        s for s in retrain["jobs"]["image"]["steps"] if "docker/build-push-action" in s.get("uses", "")
    )
    build_args = dict(line.split("=", 1) for line in build["with"]["build-args"].splitlines())
    assert build_args["GIT_COMMIT"] == "${{ github.sha }}"
    assert build_args["IMAGE_REF"] == build["with"]["tags"] == "${{ steps.name.outputs.image }}"
