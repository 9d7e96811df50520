"""Integrity of models and metrics (issue 12): every break the issue reproduced, refused.

Real popularity models on ML-100K (tests/promotion_models.py), the real command line, and a real
MLflow store (sqlite, artifacts in a folder beside it, as `make run` uses). Each test tampers
with a copy the way an attacker or a careless user would and asserts a one-line refusal that
names the file, with nothing written or registered.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from diffurec import registry
from diffurec.cli import main
from diffurec.errors import DiffuRecError
from diffurec.metrics import check_metric_values
from diffurec.model_folder import (
    MANIFEST_FILE,
    load_model_folder,
    save_model_folder,
    verify_manifest,
    write_manifest,
)
from promotion_models import fit_on_first, fresh_tracking_uri, train_with_cli

# A gate that can decide: a floor and the popularity margin (the baseline is the candidate's
# own popularity metrics), and the champion comparison.
THRESHOLDS = {
    "min": {"HR@10": 0.5},
    "min_margin_over_popularity": {"NDCG@10": 0.0},
    "max_drop_vs_champion": {"NDCG@10": {"relative": 0.02}},
}


@pytest.fixture(scope="module")
def models(ml100k_splits, tmp_path_factory):
    """Popularity on all training samples (`diffurec train` + `evaluate`) and on the first 2,000."""
    folder = tmp_path_factory.mktemp("integrity-models")
    return {
        "full": train_with_cli(ml100k_splits.path, folder / "full"),
        "small": fit_on_first(ml100k_splits, 2_000, folder / "small"),
    }


@pytest.fixture(scope="module")
def other_splits(shared_data, tmp_path_factory) -> Path:
    """ML-100K again with max_len 20: the same items, other data (another splits md5)."""
    from diffurec.data.preprocess import preprocess_file

    out = tmp_path_factory.mktemp("integrity-splits") / "splits-len20"
    preprocess_file(shared_data / "ml-100k" / "ml-100k.inter", out, max_len=20)
    return out


@pytest.fixture(autouse=True)
def no_pushgateway(monkeypatch):
    monkeypatch.delenv("DIFFUREC_PUSHGATEWAY", raising=False)


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return fresh_tracking_uri(tmp_path)


def copy_of(folder: Path, tmp_path: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(folder, tmp_path / name))


def flip_bytes(path: Path, count: int = 4096) -> None:
    """Invert `count` bytes at the end of a file (a safetensors file's tensor data)."""
    data = bytearray(path.read_bytes())
    start = max(len(data) - count, len(data) // 2)
    data[start:] = bytes(b ^ 0xFF for b in data[start:])
    path.write_bytes(bytes(data))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("diffurec")]
    assert len(lines) == 1, err
    return lines[0]


def register_cli(model_dir: Path, metrics: Path, tracking_uri: str, name: str = "pop") -> int:
    return main(
        [
            "register",
            "--model",
            str(model_dir),
            "--metrics",
            str(metrics),
            "--model-name",
            name,
            "--tracking-uri",
            tracking_uri,
        ]
    )


def no_models_registered(tracking_uri: str) -> bool:
    return registry.client(tracking_uri).search_registered_models() == []


def params_file(folder: Path) -> str:
    """A params.yaml with the gate's THRESHOLDS (the configured thresholds: no override)."""
    import yaml

    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"gate": THRESHOLDS}))
    return str(path)


def write_json(path: Path, value: dict) -> Path:
    path.write_text(json.dumps(value))
    return path


# --- the manifest -------------------------------------------------------------------------------


def test_train_writes_a_manifest_of_every_file_last(models):
    model_dir, metrics_path = models["full"]
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    assert (manifest["format"], manifest["version"], manifest["algorithm"]) == (
        "diffurec-manifest",
        1,
        "sha256",
    )
    others = sorted(p.name for p in model_dir.iterdir() if p.name != MANIFEST_FILE)
    assert sorted(manifest["files"]) == others
    assert {"config.json", "model.safetensors", "item_map.tsv", "curve.png", "train_summary.json"} <= set(
        others
    )
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((model_dir / name).read_bytes()).hexdigest() == digest
    digest = hashlib.sha256((model_dir / MANIFEST_FILE).read_bytes()).hexdigest()
    assert verify_manifest(model_dir) == digest
    # The metrics JSON names the model and the data it measured.
    metrics = json.loads(metrics_path.read_text())
    assert metrics["model"]["manifest_sha256"] == digest
    assert metrics["splits_md5"] == metrics["lineage"]["splits_md5"]


def test_a_folder_without_a_manifest_is_refused_with_how_to_fix(models, ml100k_splits, tmp_path, capsys):
    folder = copy_of(models["full"][0], tmp_path)
    (folder / MANIFEST_FILE).unlink()
    out = tmp_path / "metrics.json"
    assert (
        main(["evaluate", "--model", str(folder), "--splits", str(ml100k_splits.path), "--out", str(out)])
        == 2
    )
    line = one_error_line(capsys)
    assert str(folder / MANIFEST_FILE) in line and "train it again" in line
    assert not out.exists()


# --- tampered weights ---------------------------------------------------------------------------


def test_flipped_weights_are_refused_by_evaluate_recommend_and_register(
    models, ml100k_splits, tracking_uri, tmp_path, capsys
):
    """Issue 12: 4 KB of model.safetensors flipped; evaluate, recommend and register exited 0."""
    model_dir, metrics = models["full"]
    folder = copy_of(model_dir, tmp_path)
    flip_bytes(folder / "model.safetensors")
    weights = str(folder / "model.safetensors")

    out = tmp_path / "metrics.json"
    assert (
        main(["evaluate", "--model", str(folder), "--splits", str(ml100k_splits.path), "--out", str(out)])
        == 2
    )
    assert weights in one_error_line(capsys) and not out.exists()

    recs = tmp_path / "recs.tsv"
    assert (
        main(["recommend", "--model", str(folder), "--splits", str(ml100k_splits.path), "--out", str(recs)])
        == 2
    )
    assert weights in one_error_line(capsys) and not recs.exists()

    assert register_cli(folder, metrics, tracking_uri) == 2
    line = one_error_line(capsys)
    assert weights in line and "sha256 differs from manifest.json" in line
    assert no_models_registered(tracking_uri)


def test_an_added_file_is_refused(models, tracking_uri, tmp_path, capsys):
    model_dir, metrics = models["full"]
    folder = copy_of(model_dir, tmp_path)
    (folder / "notes.txt").write_text("added after training\n")
    assert register_cli(folder, metrics, tracking_uri) == 2
    line = one_error_line(capsys)
    assert str(folder / "notes.txt") in line and "not listed in manifest.json" in line
    assert no_models_registered(tracking_uri)
    with pytest.raises(DiffuRecError, match="notes.txt: not listed"):
        load_model_folder(folder)


def test_the_registrys_copy_is_verified_on_download(models, tracking_uri, tmp_path):
    """Issue 12: the champion's copy in the artifact store flipped; it was loaded as it was."""
    model_dir, metrics = models["full"]
    registered = registry.register_model_folder(model_dir, metrics, "pop", tracking_uri)
    stored = Path(unquote(urlparse(registered["source"]).path))
    assert (stored / MANIFEST_FILE).is_file()
    # Untouched, it downloads into `dst` and verifies.
    good = registry.download_model_folder("models:/pop/1", tracking_uri=tracking_uri, dst=tmp_path / "good")
    assert verify_manifest(good) == verify_manifest(model_dir)

    flip_bytes(stored / "model.safetensors")
    with pytest.raises(DiffuRecError, match=r"models:/pop/1: model.safetensors: sha256 differs") as caught:
        registry.download_model_folder("models:/pop/1", tracking_uri=tracking_uri, dst=tmp_path / "bad")
    assert len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / "bad").exists() and [p.name for p in tmp_path.iterdir() if "bad" in p.name] == []

    # The whole stored folder swapped for another, self-consistent model folder: its manifest
    # digest is not the one the version was registered with.
    shutil.rmtree(stored)
    shutil.copytree(models["small"][0], stored)
    version = registry.get_version("pop", version="1", tracking_uri=tracking_uri)
    with pytest.raises(DiffuRecError, match="the stored copy is another model folder"):
        registry.download_model_folder(
            "models:/pop/1",
            tracking_uri=tracking_uri,
            manifest_sha256=version["tags"]["manifest_sha256"],
        )


def test_the_gate_refuses_a_tampered_champion_copy(models, other_splits, tracking_uri, tmp_path, capsys):
    """The champion re-evaluated on the candidate's new splits is downloaded and verified first."""
    model_dir, metrics = models["full"]
    registered = registry.register_model_folder(model_dir, metrics, "pop", tracking_uri)
    registry.client(tracking_uri).set_registered_model_alias("pop", "champion", registered["version"])
    candidate_dir, candidate = train_with_cli(other_splits, tmp_path / "candidate")
    v2 = registry.register_model_folder(candidate_dir, candidate, "pop", tracking_uri)["version"]
    flip_bytes(Path(unquote(urlparse(registered["source"]).path)) / "model.safetensors")
    out = tmp_path / "decision.json"
    args = [
        "gate",
        "--candidate",
        str(candidate),
        "--baseline",
        str(candidate),
        "--params",
        params_file(tmp_path),
        "--model-name",
        "pop",
        "--version",
        v2,
        "--tracking-uri",
        tracking_uri,
        "--splits",
        str(other_splits),
        "--out",
        str(out),
    ]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "models:/pop/1: model.safetensors: sha256 differs" in line
    assert not out.exists()
    assert (
        "gate_decision_id" not in registry.get_version("pop", version=v2, tracking_uri=tracking_uri)["tags"]
    )


# --- links --------------------------------------------------------------------------------------


def test_register_refuses_links_and_uploads_nothing(models, tracking_uri, tmp_path, capsys):
    """Issue 12: `notes.txt -> /etc/shadow` in a model folder uploaded the target's contents."""
    model_dir, metrics = models["full"]
    secret = tmp_path / "shadow"
    secret.write_text("root:SECRET-HASH:19000:0:99999:7:::\n")
    folder = copy_of(model_dir, tmp_path)
    (folder / "notes.txt").symlink_to(secret)
    assert register_cli(folder, metrics, tracking_uri) == 2
    line = one_error_line(capsys)
    assert str(folder / "notes.txt") in line and "symbolic link" in line
    assert no_models_registered(tracking_uri)
    store = tmp_path / "mlflow"
    assert not any(b"SECRET-HASH" in p.read_bytes() for p in store.rglob("*") if p.is_file())

    # A listed file replaced by a link to an identical copy outside: still refused, by name.
    (folder / "notes.txt").unlink()
    outside = tmp_path / "config-outside.json"
    shutil.copyfile(folder / "config.json", outside)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(outside)
    with pytest.raises(DiffuRecError, match=r"config.json: a symbolic link"):
        verify_manifest(folder)
    with pytest.raises(DiffuRecError, match=r"config.json: a symbolic link"):
        write_manifest(folder)  # nor is a link ever sealed


def test_register_uploads_exactly_the_manifests_files(models, tracking_uri):
    model_dir, metrics = models["full"]
    registered = registry.register_model_folder(model_dir, metrics, "pop", tracking_uri)
    stored = Path(unquote(urlparse(registered["source"]).path))
    assert sorted(p.name for p in stored.iterdir()) == sorted(p.name for p in model_dir.iterdir())
    tags = registry.get_version("pop", version=registered["version"], tracking_uri=tracking_uri)["tags"]
    assert tags["manifest_sha256"] == verify_manifest(model_dir) == verify_manifest(stored)


# --- metrics bound to the model and the data ----------------------------------------------------


def test_forged_metrics_are_refused_by_register_and_gate(models, tracking_uri, tmp_path, capsys):
    """Issue 12: a popularity model registered with HR@10 150 % became champion."""
    model_dir, metrics_path = models["small"]
    forged = json.loads(metrics_path.read_text())
    forged["metrics"].update({"HR@10": 150.0, "HR@20": 150.0})
    forged_path = write_json(tmp_path / "forged.json", forged)
    assert register_cli(model_dir, forged_path, tracking_uri) == 2
    line = one_error_line(capsys)
    assert str(forged_path) in line and "HR@10 is 150.0, outside 0..100" in line
    assert no_models_registered(tracking_uri)

    out = tmp_path / "decision.json"
    gate = ["gate", "--candidate", str(forged_path), "--baseline", str(metrics_path)]
    assert main([*gate, "--params", params_file(tmp_path), "--out", str(out)]) == 2
    assert "outside 0..100" in one_error_line(capsys) and not out.exists()

    # In range but impossible: NDCG above HR, HR@10 above HR@20.
    for change, message in (
        ({"NDCG@10": forged["metrics"]["HR@5"] + 50.0}, "exceeds"),
        ({"HR@10": 99.0, "HR@20": 98.0}, "HR@10 99.0 exceeds HR@20 98.0"),
    ):
        values = {**json.loads(metrics_path.read_text())["metrics"], **change}
        bad = write_json(tmp_path / "bad.json", {**forged, "metrics": values})
        assert register_cli(model_dir, bad, tracking_uri) == 2
        assert message in one_error_line(capsys)
    assert no_models_registered(tracking_uri)


def test_a_forged_champion_already_registered_is_refused_not_compared(models, tracking_uri, tmp_path, capsys):
    """A registry written before these checks: the champion's tags claim HR@10 150 %. The gate
    refuses to compare against it (on main every honest candidate was rejected)."""
    small_dir, small_metrics = models["small"]
    full_dir, full_metrics = models["full"]
    v1 = registry.register_model_folder(small_dir, small_metrics, "pop", tracking_uri)["version"]
    values = {**json.loads(small_metrics.read_text())["metrics"], "HR@10": 150.0, "HR@20": 150.0}
    registry.set_version_tags("pop", v1, {"metrics": json.dumps(values)}, tracking_uri=tracking_uri)
    registry.client(tracking_uri).set_registered_model_alias("pop", "champion", v1)
    v2 = registry.register_model_folder(full_dir, full_metrics, "pop", tracking_uri)["version"]
    out = tmp_path / "decision.json"
    status = main(
        [
            "gate",
            "--candidate",
            str(full_metrics),
            "--baseline",
            str(full_metrics),
            "--params",
            params_file(tmp_path),
            "--model-name",
            "pop",
            "--version",
            v2,
            "--tracking-uri",
            tracking_uri,
            "--out",
            str(out),
        ]
    )
    assert status == 2
    line = one_error_line(capsys)
    assert f"champion pop v{v1}'s registered metrics" in line and "outside 0..100" in line
    assert not out.exists()


def test_metrics_of_another_model_are_refused_by_register(models, tracking_uri, capsys):
    small_dir, _ = models["small"]
    _, full_metrics = models["full"]
    assert register_cli(small_dir, full_metrics, tracking_uri) == 2
    line = one_error_line(capsys)
    assert "metrics of another model" in line and str(full_metrics) in line
    assert no_models_registered(tracking_uri)


def test_metrics_of_other_data_are_refused_by_register(models, other_splits, tracking_uri, tmp_path, capsys):
    """The full model evaluated on other splits (same items): its metrics are not its training
    data's, which is what the version's data_version says."""
    model_dir, _ = models["full"]
    measured = tmp_path / "other-data.json"
    assert (
        main(["evaluate", "--model", str(model_dir), "--splits", str(other_splits), "--out", str(measured)])
        == 0
    )
    assert register_cli(model_dir, measured, tracking_uri) == 2
    line = one_error_line(capsys)
    assert str(measured) in line and "its lineage records splits" in line
    assert no_models_registered(tracking_uri)

    # The lineage edited to agree: the model folder's own train_summary.json still disagrees.
    edited = json.loads(measured.read_text())
    edited["lineage"]["splits_md5"] = edited["splits_md5"]
    assert register_cli(model_dir, write_json(tmp_path / "edited.json", edited), tracking_uri) == 2
    assert "and its train_summary.json" in one_error_line(capsys)
    assert no_models_registered(tracking_uri)


def test_the_gate_refuses_metrics_of_another_model_with_the_same_values(
    models, tracking_uri, tmp_path, capsys
):
    """Two folders with equal metrics (the same popularity, another summary): the metrics of the
    one are refused for the registered version of the other, by manifest digest."""
    model_dir, metrics = models["full"]
    registry.register_model_folder(model_dir, metrics, "pop", tracking_uri)
    twin_dir = copy_of(model_dir, tmp_path, "twin")
    summary = json.loads((twin_dir / "train_summary.json").read_text())
    (twin_dir / "train_summary.json").write_text(json.dumps({**summary, "note": "another run"}))
    write_manifest(twin_dir)
    twin_metrics = json.loads(metrics.read_text())
    twin_metrics["model"]["manifest_sha256"] = verify_manifest(twin_dir)
    twin_path = write_json(tmp_path / "twin.json", twin_metrics)
    out = tmp_path / "decision.json"
    args = ["--baseline", str(metrics), "--params", params_file(tmp_path), "--out", str(out)]
    registry_args = ["--model-name", "pop", "--version", "1", "--tracking-uri", tracking_uri]
    assert main(["gate", "--candidate", str(twin_path), *args, *registry_args]) == 2
    line = one_error_line(capsys)
    assert "metrics of another model" in line and "registered model pop v1" in line
    assert not out.exists()
    assert main(["gate", "--candidate", str(metrics), *args, *registry_args]) == 0
    assert json.loads(out.read_text())["version"] == "1"


# --- the item map -------------------------------------------------------------------------------


def test_splits_with_a_permuted_item_map_are_refused(models, ml100k_splits, tmp_path, capsys):
    """Issue 12: evaluate on splits whose item map differs (same item count) reported other
    metrics with exit 0; the ids at each index must be the model's."""
    model_dir, _ = models["full"]
    splits = Path(shutil.copytree(ml100k_splits.path, tmp_path / "splits"))
    item_map = splits / "item_map.tsv"
    rows = item_map.read_text().splitlines()
    first, second = rows[1].split("\t"), rows[2].split("\t")
    rows[1], rows[2] = f"1\t{second[1]}", f"2\t{first[1]}"
    item_map.write_text("\n".join(rows) + "\n")

    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(model_dir), "--splits", str(splits), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"{item_map}, row 2: item 1 is {second[1]!r} here but {first[1]!r}" in line
    assert not out.exists()
    recs = tmp_path / "recs.tsv"
    assert main(["recommend", "--model", str(model_dir), "--splits", str(splits), "--out", str(recs)]) == 2
    assert str(item_map) in one_error_line(capsys) and not recs.exists()


# --- metric sanity, unit by unit ----------------------------------------------------------------


def sane() -> dict:
    return {"HR@5": 2.0, "HR@10": 3.0, "HR@20": 5.0, "NDCG@5": 1.0, "NDCG@10": 1.5, "NDCG@20": 2.0}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"HR@10": 100.5, "HR@20": 100.5}, "HR@10 is 100.5, outside 0..100"),
        ({"NDCG@5": -0.1}, "NDCG@5 is -0.1, outside 0..100"),
        ({"NDCG@5": 2.5, "NDCG@10": 2.5}, "NDCG@5 2.5 exceeds HR@5 2.0"),
        ({"HR@5": 3.5}, "HR@5 3.5 exceeds HR@10 3.0"),
        ({"NDCG@20": 1.4}, "NDCG@10 1.5 exceeds NDCG@20 1.4"),
        ({"HR@20": float("nan")}, "HR@20 is nan, expected a finite number"),
        ({"HR@20": "5"}, "HR@20 is '5', expected a finite number"),
    ],
)
def test_check_metric_values_refuses_what_no_ranking_gives(change, message):
    with pytest.raises(DiffuRecError, match=rf"^m\.json: .*{re.escape(message)}"):
        check_metric_values({"metrics": {**sane(), **change}, "users": 10}, "m.json")


def test_check_metric_values_accepts_the_edges_and_needs_users():
    check_metric_values({"metrics": sane(), "users": 1}, "m.json")
    check_metric_values(dict.fromkeys(sane(), 0.0), "values")  # a model that never hits
    check_metric_values(dict.fromkeys(sane(), 100.0), "values")  # one that always ranks first
    with pytest.raises(DiffuRecError, match="users is 0, expected a count > 0"):
        check_metric_values({"metrics": sane(), "users": 0}, "m.json")


def test_save_model_folder_seals_every_kind(tmp_path):
    """popularity, SASRec+ and DiffuRec folders all carry a manifest that verifies."""
    from trainer_data import TINY_DIFFUREC, TINY_SASREC

    from diffurec.models import build_model

    for name, preset, hyper in (
        ("popularity", None, {}),
        ("sasrec", "dense", TINY_SASREC),
        ("diffurec", "fast", TINY_DIFFUREC),
    ):
        model = build_model(name, 30, 8, preset, **hyper)
        folder = save_model_folder(tmp_path / name, model, item_ids=[f"i{i}" for i in range(30)])
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        assert MANIFEST_FILE not in files and len(files) == 6
        assert load_model_folder(folder).config["name"] == name
