"""The MLflow registry on a real sqlite store: register, tags, load back by alias, bad input."""

from __future__ import annotations

import json

import pytest

from diffurec import registry
from diffurec.cli import main
from diffurec.errors import DiffuRecError
from diffurec.model_folder import write_manifest
from promotion_models import fresh_tracking_uri, train_with_cli


@pytest.fixture(scope="module")
def popularity(ml100k_splits, tmp_path_factory):
    return train_with_cli(ml100k_splits.path, tmp_path_factory.mktemp("registry-popularity"))


@pytest.fixture
def tracking_uri(tmp_path):
    return fresh_tracking_uri(tmp_path)


def test_register_logs_tags_and_loads_back_with_the_same_metrics(
    popularity, ml100k_splits, tracking_uri, tmp_path, capsys
):
    from diffurec.evaluate import evaluate
    from diffurec.lineage import data_md5
    from diffurec.model_folder import load_model_folder

    model_dir, metrics_path = popularity
    metrics = json.loads(metrics_path.read_text())
    out = tmp_path / "registered.json"
    assert (
        main(
            [
                "register",
                "--model",
                str(model_dir),
                "--metrics",
                str(metrics_path),
                "--model-name",
                "pop",
                "--tracking-uri",
                tracking_uri,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    registered = json.loads(out.read_text())
    assert registered["version"] == "1"
    assert "registered pop v1" in capsys.readouterr().out

    version = registry.get_version("pop", version="1", tracking_uri=tracking_uri)
    tags = version["tags"]
    assert tags["model"] == "popularity" and tags["preset"] == "default"
    assert tags["data_version"] == data_md5(ml100k_splits.path)
    assert len(tags["git_commit"]) == 40
    assert json.loads(tags["metrics"]) == metrics["metrics"]
    assert float(tags["NDCG_at_10"]) == metrics["metrics"]["NDCG@10"]
    assert (tags["metrics_split"], tags["metrics_users"]) == ("test", "943")
    assert version["aliases"] == ["challenger"]

    client = registry.client(tracking_uri)
    run = client.get_run(registered["run_id"])
    assert run.data.metrics["HR_at_10"] == metrics["metrics"]["HR@10"]
    assert run.data.params["num_items"] == "1682"
    artifacts = {item.path for item in client.list_artifacts(registered["run_id"], "model")}
    assert {"model/config.json", "model/model.safetensors", "model/item_map.tsv"} <= artifacts
    # The artifacts sit beside the sqlite database, not in the working directory.
    assert registered["source"].startswith((tmp_path / "mlflow" / "artifacts").as_uri())

    client.set_registered_model_alias("pop", "champion", "1")
    folder = registry.download_model_folder(
        "models:/pop@champion", tracking_uri=tracking_uri, dst=tmp_path / "download"
    )
    assert (folder / "config.json").read_text() == (model_dir / "config.json").read_text()
    reloaded = evaluate(load_model_folder(folder), ml100k_splits, split="test", progress=False)
    assert reloaded["metrics"] == metrics["metrics"]


def test_versions_count_up_and_the_environment_picks_the_store(popularity, tracking_uri, monkeypatch):
    model_dir, metrics_path = popularity
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    first = registry.register_model_folder(model_dir, metrics_path, "pop")
    second = registry.register_model_folder(model_dir, metrics_path, "pop")
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["tracking_uri"] == tracking_uri
    assert registry.get_version("pop", alias="challenger")["version"] == "2"
    assert registry.get_version("pop", alias="champion") is None
    assert registry.get_version("pop")["version"] == "2"  # the latest


def test_bad_input_is_one_line_and_registers_nothing(popularity, tracking_uri, tmp_path, capsys):
    model_dir, metrics_path = popularity
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    status = main(
        [
            "register",
            "--model",
            str(not_a_model),
            "--metrics",
            str(metrics_path),
            "--model-name",
            "pop",
            "--tracking-uri",
            tracking_uri,
        ]
    )
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(not_a_model / "config.json") in err

    broken = tmp_path / "metrics.json"
    broken.write_text(json.dumps({"metrics": {"HR@10": 1.0}}))
    assert (
        main(
            [
                "register",
                "--model",
                str(model_dir),
                "--metrics",
                str(broken),
                "--model-name",
                "pop",
                "--tracking-uri",
                tracking_uri,
            ]
        )
        == 2
    )
    assert "has no 'HR@5'" in capsys.readouterr().err
    assert registry.client(tracking_uri).search_registered_models() == []


def test_unknown_versions_and_models_are_clear_errors(popularity, tracking_uri):
    model_dir, metrics_path = popularity
    registry.register_model_folder(model_dir, metrics_path, "pop", tracking_uri)
    with pytest.raises(DiffuRecError, match="version 9"):
        registry.get_version("pop", version="9", tracking_uri=tracking_uri)
    with pytest.raises(DiffuRecError, match="cannot load models:/nothing@champion"):
        registry.download_model_folder("models:/nothing@champion", tracking_uri=tracking_uri)


def test_an_unreachable_tracking_server_is_one_clear_line(popularity, capsys):
    from prometheus_servers import free_port

    model_dir, metrics_path = popularity
    uri = f"http://127.0.0.1:{free_port()}"
    assert (
        main(["register", "--model", str(model_dir), "--metrics", str(metrics_path), "--tracking-uri", uri])
        == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("diffurec")]
    assert len(err) == 1 and err[0].startswith(f"diffurec register: error: MLflow store {uri}:")


def test_without_a_recorded_commit_the_registry_takes_diffurec_git_commit(
    popularity, tracking_uri, tmp_path, monkeypatch
):
    """The one git-commit reader (diffurec.lineage.git_commit): a container passes it in the env."""
    import shutil

    model_dir, metrics_path = popularity
    folder = shutil.copytree(model_dir, tmp_path / "model")
    summary = json.loads((folder / "train_summary.json").read_text())
    summary["lineage"].pop("git_commit", None)
    (folder / "train_summary.json").write_text(json.dumps(summary))
    metrics = json.loads(metrics_path.read_text())
    metrics["lineage"].pop("git_commit", None)
    # As if trained without a commit: sealed again, and its metrics name the new manifest.
    metrics["model"]["manifest_sha256"] = write_manifest(folder)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setenv("DIFFUREC_GIT_COMMIT", "0123abcd" * 5)
    registry.register_model_folder(folder, tmp_path / "metrics.json", "pop", tracking_uri)
    tags = registry.get_version("pop", version="1", tracking_uri=tracking_uri)["tags"]
    assert tags["git_commit"] == "0123abcd" * 5


def test_a_model_folder_of_another_format_version_is_refused(popularity, tracking_uri, tmp_path):
    import shutil

    model_dir, metrics_path = popularity
    folder = shutil.copytree(model_dir, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "version": 2}))
    with pytest.raises(
        DiffuRecError,
        match=r"config.json: expected diffurec-model version 1, "
        r"found diffurec-model version 2",
    ):
        registry.register_model_folder(folder, metrics_path, "pop", tracking_uri)
