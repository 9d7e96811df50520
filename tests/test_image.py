"""One image per commit, end to end, and the workflows around it (issue 15), read statically
except where a script runs: the release image is one name everywhere (release.yml pushes what
the committed spec and k8s/ name), CI compiles the spec for the image it pushed (by digest), the
CUDA base is pinned by digest (scripts/pin_base_image.sh with a stand-in `docker`), actions are
pinned by commit SHA with least-privilege permissions, manual retraining only from protected
branches, pull requests build the image without pushing and get a params/metrics report
(scripts/pr_report.sh with the real dvc in a scratch repository)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOWS = REPO / ".github" / "workflows"
DIGEST = "sha256:" + "ab" * 32


def workflow(name: str) -> dict:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    loaded["on"] = loaded.pop(True)  # YAML 1.1 reads the key "on" as True
    return loaded


def steps_using(job: dict, action: str) -> list[dict]:
    return [step for step in job["steps"] if step.get("uses", "").startswith(action + "@")]


def pyproject_version() -> str:
    return re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def test_the_release_image_is_the_one_the_spec_and_k8s_name():
    """Issue 15: the spec and manifests named ghcr.io/diffurec/diffurec:0.1.0, which no workflow
    pushed. release.yml (tags v*) pushes REPOSITORY:<pyproject version>; all name that."""
    from components import RELEASE_REPOSITORY

    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    [job] = release["jobs"].values()
    repository = job["env"]["IMAGE_REPOSITORY"]
    assert repository == RELEASE_REPOSITORY
    image = f"{repository}:{pyproject_version()}"
    version_step = next(step for step in job["steps"] if step.get("id") == "version")
    assert 'if [ "$TAG" != "v$version" ]' in version_step["run"]  # the tag is pyproject's version
    assert 'echo "image=$IMAGE_REPOSITORY:$version"' in version_step["run"]
    [build] = steps_using(job, "docker/build-push-action")
    assert build["with"]["push"] is True and build["with"]["tags"] == "${{ steps.version.outputs.image }}"
    # The committed spec: every step runs the release image.
    spec = next(
        doc for doc in yaml.safe_load_all((REPO / "pipelines/diffurec_pipeline.yaml").read_text()) if doc
    )
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {image}
    # k8s/: the kustomize image override and every tagged reference.
    kustomization = yaml.safe_load((REPO / "k8s/base/kustomization.yaml").read_text())
    [override] = [i for i in kustomization["images"] if i["name"] == repository]
    assert (
        str(override["newTag"]) == pyproject_version() and override.get("newName", repository) == repository
    )
    for path in REPO.glob("k8s/**/*.yaml"):
        for tag in re.findall(rf"{re.escape(repository)}:([\w.@:-]+)", path.read_text()):
            assert tag == pyproject_version(), path


def test_ci_compiles_the_spec_for_the_image_it_pushed(tmp_path):
    """retrain.yml: the image job's output is the pushed image by digest; the submit job compiles
    and uploads with it (pipeline compile --image), and every step of that spec runs it."""
    retrain = workflow("retrain.yml")
    image_job, submit_job = retrain["jobs"]["image"], retrain["jobs"]["submit"]
    [build] = steps_using(image_job, "docker/build-push-action")
    assert build["id"] == "build" and build["with"]["push"] is True
    assert image_job["outputs"]["ref"] == "${{ steps.name.outputs.image }}@${{ steps.build.outputs.digest }}"
    assert submit_job["env"]["DIFFUREC_IMAGE"] == "${{ needs.image.outputs.ref }}"
    runs = [step.get("run", "") for step in submit_job["steps"]]
    assert any('pipeline compile --image "$DIFFUREC_IMAGE"' in run for run in runs)
    assert any('pipeline upload --host "$KFP_ENDPOINT" --image "$DIFFUREC_IMAGE"' in run for run in runs)
    pushed = f"ghcr.io/someone/diffurec:{'0' * 40}@{DIGEST}"
    spec = tmp_path / "pipeline.yaml"
    env = {k: v for k, v in os.environ.items() if k != "DIFFUREC_IMAGE"}
    subprocess.run(
        [str(BIN / "diffurec"), "-q", "pipeline", "compile", "--image", pushed, "--out", str(spec)],
        env=env,
        check=True,
        capture_output=True,
    )
    text = spec.read_text()
    executors = next(doc for doc in yaml.safe_load_all(text) if doc)["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {pushed}
    assert "ghcr.io/diffurec/diffurec:" not in text  # no step left on the release image


def test_submit_waits_and_reports_into_the_job_summary():
    retrain = workflow("retrain.yml")
    steps = retrain["jobs"]["submit"]["steps"]
    submit = next(step for step in steps if "pipeline submit" in step.get("run", ""))
    assert "--summary summary.md" in submit["run"] and "--no-wait" not in submit["run"]
    timeout = int(re.search(r"--timeout (\d+)", submit["run"]).group(1))
    assert timeout < retrain["jobs"]["submit"]["timeout-minutes"] * 60  # the job outlives the wait
    summary = steps[steps.index(submit) + 1]
    assert summary["if"] == "always()" and 'cat summary.md >> "$GITHUB_STEP_SUMMARY"' in summary["run"]
    assert retrain["jobs"]["submit"]["env"]["KFP_NAMESPACE"] == "${{ vars.KFP_NAMESPACE }}"


def test_actions_are_pinned_by_commit_sha_with_least_privilege():
    """Issue 15: actions were pinned by tag in a job with packages: write."""
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for line in path.read_text().splitlines():
            if re.match(r"\s*(- )?uses:", line):
                assert re.search(r"uses: [\w.-]+/[\w./-]+@[0-9a-f]{40}  # v\d+(\.\d+)*$", line), (
                    path.name,
                    line,
                )
        loaded = workflow(path.name)
        assert loaded["permissions"] == {}, path.name  # nothing by default; each job says what it needs
        for name, job in loaded["jobs"].items():
            permissions = job["permissions"]
            assert permissions.get("contents") == "read", (path.name, name)
            pushes = any(
                s.get("with", {}).get("push") is True for s in steps_using(job, "docker/build-push-action")
            )
            assert ("packages" in permissions) == pushes, (path.name, name)
            assert set(permissions) <= {"contents", "packages"}, (path.name, name)


def test_manual_retraining_runs_only_from_protected_branches():
    retrain = workflow("retrain.yml")
    assert "workflow_dispatch" in retrain["on"]
    condition = retrain["jobs"]["image"]["if"]
    assert condition == "github.event_name != 'workflow_dispatch' || github.ref_protected"
    assert retrain["jobs"]["submit"]["needs"] == "image"  # skipped with it
    assert retrain["jobs"]["submit"]["environment"] == "kubeflow"


def test_pull_requests_build_the_image_without_pushing():
    ci = workflow("ci.yml")
    job = ci["jobs"]["image"]
    assert "pull_request" in ci["on"] and job["if"] == "github.event_name == 'pull_request'"
    [build] = steps_using(job, "docker/build-push-action")
    assert build["with"]["push"] is False
    assert not steps_using(job, "docker/login-action") and "packages" not in job["permissions"]
    report = next(s for s in ci["jobs"]["test"]["steps"] if "pr_report.sh" in s.get("run", ""))
    assert report["if"] == "github.event_name == 'pull_request'"
    assert '>> "$GITHUB_STEP_SUMMARY"' in report["run"]
    [checkout] = steps_using(ci["jobs"]["test"], "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0  # the base branch is there to diff against


def test_the_base_image_is_pinned_by_the_documented_procedure(tmp_path):
    """scripts/pin_base_image.sh: --check refuses a base without a digest; the update resolves
    the tag with `docker buildx imagetools inspect` (a stand-in here prints a manifest) and
    writes REPOSITORY:TAG@DIGEST, which --check and hadolint accept."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts/pin_base_image.sh", tmp_path / "scripts")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        re.sub(
            r"^ARG BASE_IMAGE=(.*?)(@sha256:\w+)?$",
            r"ARG BASE_IMAGE=\1",
            (REPO / "Dockerfile").read_text(),
            flags=re.M,
        )
    )
    tag_ref = re.search(r"^ARG BASE_IMAGE=(.*)$", dockerfile.read_text(), re.M).group(1)
    assert "cuda" in tag_ref and ":" in tag_ref.rsplit("/", 1)[-1]
    script = ["bash", str(tmp_path / "scripts/pin_base_image.sh")]
    unpinned = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert unpinned.returncode == 1 and "no digest" in unpinned.stderr
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/docker-args\n'
        f'echo \'{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", '
        f'"digest": "{DIGEST}", "size": 1234}}\'\n'
    )
    (fake / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    subprocess.run(script, env=env, check=True, capture_output=True)
    assert (tmp_path / "docker-args").read_text().split() == [
        "buildx",
        "imagetools",
        "inspect",
        "--format",
        "{{json",
        ".Manifest}}",
        tag_ref,
    ]
    assert f"\nARG BASE_IMAGE={tag_ref}@{DIGEST}\n" in dockerfile.read_text()
    assert subprocess.run([*script, "--check"], capture_output=True).returncode == 0
    if (BIN / "hadolint").exists():
        subprocess.run([str(BIN / "hadolint"), str(dockerfile)], check=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_pr_report_diffs_params_and_metrics_against_the_base(tmp_path):
    """scripts/pr_report.sh with the real dvc in a scratch repository: a base without metrics
    is said and this change's values shown; a base with metrics gets DVC's diff table."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts/pr_report.sh", repo / "scripts")
    (repo / ".venv").symlink_to(BIN.parent)
    (repo / "params.yaml").write_text("train:\n  epochs: 200\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: 'true'\n    params: [train.epochs]\n"
        "    metrics:\n      - runs/metrics.json:\n          cache: false\n"
    )
    (repo / ".gitignore").write_text("/runs/\n/.venv\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)
    (repo / "runs").mkdir()
    (repo / "runs/metrics.json").write_text('{"metrics": {"HR@10": 10.5}}')
    (repo / "params.yaml").write_text("train:\n  epochs: 7\n")

    def report() -> str:
        done = subprocess.run(
            ["bash", "scripts/pr_report.sh", "main"], cwd=repo, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = report()
    assert re.search(r"\| params.yaml \| train.epochs \| 200 +\| 7 ", first)
    assert "`main` has no recorded metrics" in first and re.search(r"\| runs/metrics.json +\| 10.5 ", first)
    # A base whose metrics are recorded (committed here): DVC's diff with old, new and change.
    subprocess.run([*git, "add", "-f", "runs/metrics.json", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "metrics"], check=True)
    (repo / "runs/metrics.json").write_text('{"metrics": {"HR@10": 12.0}}')
    second = report()
    assert "No parameter changed." in second and "no recorded metrics" not in second
    assert re.search(r"\| runs/metrics.json \| metrics.HR@10 \| 10.5 +\| 12.0 +\| 1.5 ", second), second
    missing = subprocess.run(
        ["bash", "scripts/pr_report.sh", "nosuch"], cwd=repo, capture_output=True, text=True
    )
    assert missing.returncode == 0 and "`nosuch` is not in this checkout" in missing.stdout
