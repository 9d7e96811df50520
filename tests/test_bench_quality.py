"""benchmarks/bench_quality.py and benchmarks/quality_table.py: README's quality tables are the
rendering of the committed result JSONs, the seed aggregation is the hand computation, and a
tiny real run (the `diffurec` CLI as subprocesses, no server involved) records exactly what
evaluate wrote, the model folders' manifests, and train commands that rebuild the folders."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_quality.py"
TABLE = REPO / "benchmarks" / "quality_table.py"
METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


def bench_env(results: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DIFFUREC_BENCH_RESULTS"}
    env["OMP_NUM_THREADS"] = "1"
    if results is not None:
        env["DIFFUREC_BENCH_RESULTS"] = str(results)
    return env


def script(path: Path, *args: str, results: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path), *args],
        cwd=REPO,
        env=bench_env(results),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_readme_block_is_the_rendering_of_the_committed_results(tmp_path: Path) -> None:
    checked = script(TABLE, "--check", "README.md")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    readme = (REPO / "README.md").read_text()
    assert "7.68 ± 0.18 / 4.45" in readme  # Beauty fast-init: HR@10 ± binomial SE over 22,363 users
    edited = tmp_path / "README.md"
    edited.write_text(readme.replace("7.68 ± 0.18 / 4.45", "7.88 ± 0.18 / 4.45"))
    checked = script(TABLE, "--check", str(edited))
    assert checked.returncode == 1
    assert "-| Amazon Beauty" in checked.stdout and "7.88" in checked.stdout


def synthetic_run(
    model: str, preset: str, seed: int, hr10: float, se: float | None, seconds: float, epochs: int
):
    metrics = {name: hr10 / 2 if name.startswith("NDCG") else hr10 for name in METRICS}
    evaluate: dict[str, Any] = {"metrics": metrics, "users": 943}
    if se is not None:
        evaluate["standard_error"] = {name: se for name in METRICS}
    train = {"train_seconds": seconds, "epochs_run": epochs}
    return {"model": model, "preset": preset, "seed": seed, "train": train, "evaluate": evaluate}


def test_seed_aggregation_is_the_hand_computation(tmp_path: Path) -> None:
    runs = [
        synthetic_run("diffurec", "fast", 1, 1.0, 0.3, 10.0, 2),
        synthetic_run("popularity", "default", 1, 0.5, None, 0.1, 0),
        synthetic_run("diffurec", "fast", 2, 2.0, 0.6, 20.0, 2),
        synthetic_run("diffurec", "fast", 3, 4.0, 0.9, 30.0, 3),
    ]
    result = {
        "runs": runs,
        "max_len": 20,
        "budget": {"epochs": 3, "max_minutes": None, "batch_size": 256, "lr": 0.002, "threads": 1, "jobs": 2},
        "machine": {"cpu_model": "test CPU", "cpu_count": 2},
        "git_commit": "0123456789abcdef",
        "git_dirty": False,
    }
    (tmp_path / "quality_ml100k_equal_epochs.json").write_text(json.dumps(result))
    shown = script(BENCH, "summary", "quality_ml100k_equal_epochs.json", results=tmp_path)
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert list(summary) == ["diffurec:fast", "popularity:default"]
    fast = summary["diffurec:fast"]
    # HR@10 over seeds: 1, 2, 4. Mean 7/3; deviations -4/3, -1/3, 5/3, squares sum 42/9,
    # sample variance 42/18 = 2.3333, std 1.527525, over sqrt(3): 0.881917.
    assert fast["n"] == 3 and fast["seeds"] == [1, 2, 3]
    assert fast["mean"]["HR@10"] == pytest.approx(2.3333333333, abs=1e-9)
    assert fast["standard_error_over_seeds"]["HR@10"] == pytest.approx(0.8819171037, abs=1e-9)
    assert fast["mean"]["NDCG@10"] == pytest.approx(1.1666666667, abs=1e-9)
    assert fast["standard_error_over_seeds"]["NDCG@10"] == pytest.approx(0.4409585518, abs=1e-9)
    assert fast["mean_standard_error_over_users"]["HR@10"] == pytest.approx(0.6, abs=1e-12)
    assert fast["train_seconds"] == pytest.approx(20.0) and fast["epochs_run"] == pytest.approx(7 / 3)
    popularity = summary["popularity:default"]
    assert popularity["n"] == 1 and popularity["mean"]["HR@10"] == 0.5
    assert popularity["standard_error_over_seeds"]["HR@10"] is None
    assert popularity["mean_standard_error_over_users"] is None
    # The table shows the same numbers, and "(not run)" for the file that is missing.
    table = script(TABLE, results=tmp_path)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("| DiffuRec `fast`"))
    assert "| 2.33 ± 0.88 (3 seeds) | 1.17 ± 0.44 (3 seeds) | 2.3, 20 s | (not run) |" in row
    assert "| popularity `default` | 0.50 (1 seed) |" in table.stdout


def write_tiny_ml100k(shared_data: Path, path: Path, users: int = 60, last: int = 30) -> Path:
    """The first `users` users of ml-100k.inter (file order), each one's last `last` interactions."""
    header, *rows = (shared_data / "ml-100k" / "ml-100k.inter").read_text().splitlines()
    by_user: dict[str, list[list[str]]] = {}
    for row in rows:
        fields = row.split("\t")
        if fields[0] in by_user or len(by_user) < users:
            by_user.setdefault(fields[0], []).append(fields)
    kept = [f for fields in by_user.values() for f in sorted(fields, key=lambda f: float(f[3]))[-last:]]
    path.write_text(header + "\n" + "\n".join("\t".join(f) for f in kept) + "\n")
    return path


def replaced(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return argv[: i + 1] + [value] + argv[i + 2 :]


@pytest.mark.slow
def test_run_records_what_evaluate_wrote_and_commands_rebuild_the_folders(shared_data: Path, tmp_path: Path):
    inter = write_tiny_ml100k(shared_data, tmp_path / "ml-100k-tiny.inter")
    results, models, data = tmp_path / "results", tmp_path / "models", tmp_path / "data"
    argv = ["run", "--input", str(inter), "--max-len", "20", "--models", "popularity:default,sasrec:recbole"]
    argv += ["--seeds", "1,2", "--epochs", "1", "--name", "t", "--jobs", "1"]
    argv += ["--data-dir", str(data), "--models-dir", str(models)]
    ran = script(BENCH, *argv, results=results)
    assert ran.returncode == 0, ran.stderr
    result_file = results / "quality_t.json"
    result = json.loads(result_file.read_text())
    assert [(r["model"], r["seed"]) for r in result["runs"]] == [
        ("popularity", 1),
        ("sasrec", 1),
        ("popularity", 2),
        ("sasrec", 2),
    ]
    splits_md5 = result["preprocess"]["splits_md5"]
    for run in result["runs"]:
        folder = models / "t" / f"{run['model']}-{run['preset']}-seed{run['seed']}"
        metrics_file = models / "t" / f"{run['model']}-{run['preset']}-seed{run['seed']}.test.json"
        assert run["evaluate"] == json.loads(metrics_file.read_text())
        assert run["evaluate"]["settings"]["ties"] == "pessimistic"  # the settings block, verbatim
        assert run["manifest_sha256"] == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
        assert run["splits_md5"] == splits_md5 == run["evaluate"]["splits_md5"]
        assert run["train_argv"][1:3] == ["train", "--splits"] and "--seed" in run["train_argv"]
        summary = json.loads((folder / "train_summary.json").read_text())
        assert (
            run["train"]["epochs_run"] == summary["epochs_run"]
            and run["train"]["best_valid"] == summary["best_valid"]
        )
    sasrec = [r["evaluate"]["metrics"]["HR@10"] for r in result["runs"] if r["model"] == "sasrec"]
    mean = sum(sasrec) / 2
    se = math.sqrt(sum((v - mean) ** 2 for v in sasrec)) / math.sqrt(2)  # ddof 1 with n = 2
    assert result["summary"]["sasrec:recbole"]["standard_error_over_seeds"]["HR@10"] == pytest.approx(se)

    # A second run without --force refuses with one line and leaves everything as it was.
    before = {p: p.read_bytes() for p in [result_file, *models.glob("t/*.json")]}
    again = script(BENCH, *argv, results=results)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "exists from an earlier run" in again.stderr
    assert {p: p.read_bytes() for p in before} == before

    # `commands` rebuilds each model folder with one command: the seed-1 folders are removed,
    # rebuilt by their printed train command and evaluated again to the same metrics.
    printed = script(BENCH, "commands", str(result_file))
    assert printed.returncode == 0, printed.stderr
    trains = [shlex.split(line) for line in printed.stdout.splitlines() if line.split()[1:2] == ["train"]]
    assert trains == [run["train_argv"] for run in result["runs"]]
    for run in result["runs"][:2]:
        folder = Path(run["model_folder"])
        assert folder.is_dir()
        subprocess.run(["rm", "-r", str(folder)], check=True)
        rebuilt = subprocess.run(run["train_argv"], cwd=REPO, env=bench_env(), capture_output=True, text=True)
        assert rebuilt.returncode == 0, rebuilt.stderr
        again_json = tmp_path / f"again-{run['model']}.json"
        evaluated = subprocess.run(
            replaced(run["evaluate_argv"], "--out", str(again_json)),
            cwd=REPO,
            env=bench_env(),
            capture_output=True,
            text=True,
        )
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads(again_json.read_text())["metrics"] == run["evaluate"]["metrics"]
