"""Every DVC stage depends on the project code its commands import: observed, not guessed.

`dvc repro` runs the whole pipeline on a small ML-100K slice in a temporary clone, with a
`sitecustomize` module on PYTHONPATH: every Python process DVC starts for a stage (DVC sets
DVC_STAGE) writes, when it exits, the file of each module it imported. Each such file the
repository holds (diffurec/, pipelines/, components/, ...) must lie under one of the stage's
deps in dvc.yaml; a folder dep covers the files under it. No allow-list: the modules every
`diffurec` command imports at start (diffurec/cli/, errors, telemetry, ...) count like any other.

Not `python -X importtime`: it does not log modules loaded with importlib.import_module, which
is how the command line loads its command modules and the `pipeline` entry point.
The observation is a lower bound: code a command reaches only on another path (e.g. the
gate re-evaluating a champion, which a first run does not have) is not seen; stages whose
paths branch like that depend on diffurec/ as a whole.
"""

from __future__ import annotations

import json
import posixpath
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline_clone import VENV_BIN, clone_repo, run, set_params, tool_env, write_slice

pytestmark = pytest.mark.slow

SLICE_USERS = 25
DVC = str(VENV_BIN / "dvc")
IMPORT_LOG_VARIABLE = "DIFFUREC_TEST_IMPORT_LOG"
# Imported by every Python started with the hook's folder on PYTHONPATH. atexit runs on
# sys.exit and on a normal end, after the command is done importing.
IMPORT_HOOK = f'''\
import atexit, json, os, sys

def _write_imported_files() -> None:
    stage, folder = os.environ.get("DVC_STAGE"), os.environ.get("{IMPORT_LOG_VARIABLE}")
    if not stage or not folder:
        return
    files = sorted({{getattr(module, "__file__", None) or "" for module in list(sys.modules.values())}})
    with open(os.path.join(folder, f"{{os.getpid()}}.json"), "w") as handle:
        json.dump({{"stage": stage, "files": [f for f in files if f]}}, handle)

atexit.register(_write_imported_files)
'''


def dep_covers(dep: str, path: str) -> bool:
    dep = posixpath.normpath(dep)
    return path == dep or path.startswith(dep + "/")


def uncovered_imports(imported: dict[str, set[str]], deps: dict[str, list[str]]) -> dict[str, list[str]]:
    """For each stage, the imported repository files that none of its deps covers."""
    missing = {
        stage: sorted(path for path in files if not any(dep_covers(dep, path) for dep in deps.get(stage, [])))
        for stage, files in imported.items()
    }
    return {stage: paths for stage, paths in missing.items() if paths}


def stage_deps(dvc_yaml: Path) -> dict[str, list[str]]:
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {
        name: [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]
        for name, stage in stages.items()
    }


def repository_file(file: str, roots: list[Path], tracked: set[str]) -> str | None:
    """The path of an imported module's file relative to the repository, if the repository holds it.

    The package is installed in editable mode from the checkout, so the stages import the
    checkout's files, not the clone's copies: both count."""
    resolved = Path(file).resolve()
    for root in roots:
        if resolved.is_relative_to(root):
            relative = resolved.relative_to(root).as_posix()
            return relative if relative in tracked else None
    return None


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, repo_root: Path, shared_data: Path) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("dvc-deps")
    repo = clone_repo(repo_root, root / "repo")
    source = write_slice(shared_data / "ml-100k" / "ml-100k.inter", root / "slice.inter", users=SLICE_USERS)
    set_params(
        repo,
        **{
            "data.source": str(source),
            "train.epochs": 1,
            "train.max_minutes": 0.5,
            "train.patience": 1,
            "registry.name": "slice-dvc-deps",
            # floors every trained model clears, so promote runs its whole path
            "gate": {
                "min": {"HR@10": 0.0},
                "min_margin_over_popularity": {"NDCG@10": -100.0},
                "max_drop_vs_champion": {"NDCG@10": {"absolute": 100.0}},
            },
        },
    )
    hook, log = root / "hook", root / "imports"
    hook.mkdir()
    log.mkdir()
    (hook / "sitecustomize.py").write_text(IMPORT_HOOK)
    env = tool_env(f"sqlite:///{root}/mlflow.db")
    env.update({"PYTHONPATH": str(hook), IMPORT_LOG_VARIABLE: str(log)})
    result = run([DVC, "repro"], cwd=repo, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True
    ).stdout.decode()
    tracked = set(filter(None, listed.split("\0")))
    roots = [repo_root.resolve(), repo.resolve()]
    imported: dict[str, set[str]] = {}
    for record_file in log.glob("*.json"):
        record = json.loads(record_file.read_text())
        files = imported.setdefault(record["stage"], set())
        files.update(filter(None, (repository_file(file, roots, tracked) for file in record["files"])))
    return SimpleNamespace(imported=imported, deps=stage_deps(repo / "dvc.yaml"), repo=repo)


def test_every_stage_was_observed(observed: SimpleNamespace) -> None:
    assert set(observed.imported) == set(observed.deps)
    # the observation sees each stage's own library code
    for stage, module in (
        ("validate_raw", "diffurec/data/validation.py"),
        ("train", "diffurec/train.py"),
        ("gate", "diffurec/gate.py"),
        ("promote", "diffurec/promote.py"),
        ("train", "diffurec/lineage.py"),
    ):
        assert module in observed.imported[stage], (stage, sorted(observed.imported[stage]))


def test_every_stage_depends_on_the_code_it_imports(observed: SimpleNamespace) -> None:
    missing = uncovered_imports(observed.imported, observed.deps)
    assert missing == {}, (
        "stages import repository code they do not depend on (add it to "
        "their deps in dvc.yaml):\n" + yaml.safe_dump(missing)
    )


def test_a_removed_dep_is_reported(observed: SimpleNamespace) -> None:
    """The check can fail: without the dep that covers diffurec/train.py, train is reported."""
    deps = {stage: list(paths) for stage, paths in observed.deps.items()}
    deps["train"] = [dep for dep in deps["train"] if not dep_covers(dep, "diffurec/train.py")]
    assert "diffurec/train.py" in uncovered_imports(observed.imported, deps)["train"]
