"""The package layout the code relies on: the library (diffurec/) never imports the pipeline
package or the components, nothing edits sys.path, and pipelines/ and components/ are
importable as installed packages from anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON_TREES = ("diffurec", "pipelines", "components", "benchmarks", "scripts", "tests")


def _python_files(*trees: str) -> list[Path]:
    """The project's Python files under `trees`; hidden folders (e.g. benchmarks/.recbole-venv,
    a venv of another project) are not the project's."""
    return sorted(
        path
        for tree in trees
        for path in (REPO / tree).rglob("*.py")
        if not any(part.startswith(".") for part in path.relative_to(REPO).parts)
    )


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names, function-local imports included."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_library_never_imports_the_pipeline_or_the_components():
    upward = {
        f"{path.relative_to(REPO)}: {module}"
        for path in _python_files("diffurec")
        for module in _imported_modules(path)
        if module.split(".")[0] in ("pipelines", "components")
    }
    assert not upward


def test_the_checker_sees_function_local_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from pipelines import runners\n    import components.train\n")
    assert {"pipelines", "components.train"} <= _imported_modules(probe)


def test_nothing_edits_sys_path():
    edits = []
    for path in _python_files(*PYTHON_TREES):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            target = (
                node.func.value
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                else None
            )
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                target = next((t for t in targets if isinstance(t, ast.Attribute)), None)
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "path"
                and isinstance(target.value, ast.Name)
                and target.value.id == "sys"
            ):
                edits.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not edits


def test_pipelines_and_components_are_installed_packages(tmp_path):
    # From a folder outside the checkout, with nothing on PYTHONPATH: only the installation helps.
    code = (
        "import components.train, pipelines.cli, pipelines.diffurec_pipeline\n"
        "from importlib.metadata import entry_points\n"
        "print(sorted(ep.value for ep in entry_points(group='diffurec.commands')))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "pipelines.cli:register" in result.stdout
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "diffurec"), "pipeline", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_text.returncode == 0 and "fetch-raw" in help_text.stdout
