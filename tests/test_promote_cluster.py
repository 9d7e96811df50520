"""Promotion across machines, against a real `mlflow server` (sqlite backend) on 127.0.0.1.

Two promoter processes with separate temp folders (so separate file locks, as two pods have)
race for 20 rounds through one tracking server: every round exactly one wins, the other is
refused as stale, and `champion`/`previous`/the audit tags always tell one consistent history.
Then a promotion is killed (os._exit(137), as kill -9, through DIFFUREC_PROMOTE_CRASH_AT) right
after each of its writes, and the next promote, or the gate's start, leaves the registry
consistent with the original promotion's time and decision (or override reason: the case
killed right after `champion` moved is an override).

The versions are created with the client and tagged as the gate tags them (gate_decision_id,
gate_passed), with decision JSONs to match: what promote reads, without training models.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from diffurec import promote, registry

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 20
CRASH_LEASE_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """A real MLflow tracking server (one worker, sqlite backend) on a free port."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root",
            str(folder / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        stop = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > stop:
                    pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def env(tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    return tracking_uri


def gated_version(client, name: str, champion: str | None, folder: Path) -> tuple[str, Path]:
    """A new version of `name` (registered model created when `champion` is None), with a
    passing gate decision against `champion`: (version, decision JSON)."""
    if champion is None:
        client.create_registered_model(name)
    decision_id = uuid.uuid4().hex
    version = client.create_model_version(
        name,
        "diffurec:/test-model",
        tags={"gate_decision_id": decision_id, "gate_passed": "true"},
        await_creation_for=0,
    ).version
    client.set_registered_model_alias(name, "challenger", version)
    decision = {
        "name": name,
        "version": str(version),
        "passed": True,
        "decision_id": decision_id,
        "reason": "passed",
        "champion": {"version": champion} if champion else None,
    }
    path = folder / f"decision-{name}-v{version}.json"
    path.write_text(json.dumps(decision))
    return str(version), path


def aliases(name: str) -> tuple[str | None, str | None, str | None]:
    """(champion, previous, challenger) of `name`, in one read."""
    found = registry.client().get_registered_model(name).aliases
    return found.get("champion"), found.get("previous"), found.get("challenger")


def model_tags(client, name: str) -> dict:
    return dict(client.get_registered_model(name).tags or {})


WORKER = """
import json, sys
from diffurec.errors import DiffuRecError
from diffurec.promote import promote
for line in sys.stdin:
    order = json.loads(line)
    try:
        result = promote(order["name"], order["version"], order["decision"])
        print(json.dumps({"status": 0, "message": result["message"]}), flush=True)
    except DiffuRecError as error:
        print(json.dumps({"status": 2, "message": str(error)}), flush=True)
"""


def start_worker(folder: Path, uri: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "TMPDIR": str(folder), "PYTHONPATH": str(REPO)},
    )


def answer(worker: subprocess.Popen, timeout: float = 120) -> dict:
    assert worker.stdout is not None
    ready, _, _ = select.select([worker.stdout], [], [], timeout)
    assert ready, "no answer from a promoter"
    return json.loads(worker.stdout.readline())


def test_two_pods_racing_for_20_rounds_never_lose_a_promotion(env, tmp_path):
    client = registry.client(env)
    name = f"race-{uuid.uuid4().hex[:6]}"
    first, decision = gated_version(client, name, None, tmp_path)
    assert promote.promote(name, first, decision)["promoted"] is True
    pods = [start_worker(tmp_path / f"pod-{i}", env) for i in range(2)]
    try:
        champion, history = first, [first]
        for round_number in range(ROUNDS):
            contenders = [gated_version(client, name, champion, tmp_path) for _ in pods]
            for pod, (version, path) in zip(pods, contenders, strict=True):
                assert pod.stdin is not None
                pod.stdin.write(json.dumps({"name": name, "version": version, "decision": str(path)}) + "\n")
                pod.stdin.flush()
            results = [answer(pod) for pod in pods]
            statuses = [result["status"] for result in results]
            assert sorted(statuses) == [0, 2], (round_number, results)
            winner = contenders[statuses.index(0)][0]
            loser = results[statuses.index(2)]["message"]
            assert f"the champion is now v{winner}, but the gate compared against v{champion}" in loser
            assert aliases(name)[:2] == (winner, champion), round_number
            tags = registry.get_version(name, version=winner)["tags"]
            assert tags["promoted_from"] == champion and tags["promotion_decision_id"]
            assert INTENT not in model_tags(client, name)
            champion = winner
            history.append(winner)
    finally:
        for pod in pods:
            pod.kill()
            pod.wait()
    # Every promotion is on record: each champion names the one before it.
    for before, after in zip(history, history[1:], strict=False):
        assert registry.get_version(name, version=after)["tags"]["promoted_from"] == before
    assert json.loads(model_tags(client, name)["last_promotion"])["version"] == history[-1]
    # No lock ticket is left behind.
    assert not client.search_model_versions(f"name = '{name}{promote.LOCK_SUFFIX}'")


INTENT = promote.INTENT_TAG
CRASHER = """
import sys
from diffurec.promote import promote
name, version, decision, reason = sys.argv[1:5]
promote(name, version, decision or None, override=bool(reason), reason=reason or None)
"""
OVERRIDDEN = "champion"  # promoted by override, killed before its audit tags: the reason survives
REASON = "rollback drill INC-7"


def test_a_promotion_killed_after_any_write_is_completed_by_the_next_run(env, tmp_path, monkeypatch):
    monkeypatch.setenv(promote.LEASE_ENV, str(CRASH_LEASE_SECONDS))
    client = registry.client(env)
    cases = []
    for index, step in enumerate(promote.CRASH_STEPS):
        # The next run is a promote or a gate's start, in turn (one killed process per step).
        rerun = ("promote", "gate")[index % 2]
        name = f"crash-{step}-{uuid.uuid4().hex[:4]}"
        first, decision = gated_version(client, name, None, tmp_path)
        promote.promote(name, first, decision)
        second, decision = gated_version(client, name, first, tmp_path)
        cases.append((step, rerun, name, first, second, decision))

    def how(step: str, decision: Path) -> tuple[str, str]:  # (decision, override reason)
        return ("", REASON) if step == OVERRIDDEN else (str(decision), "")

    crashes = [
        subprocess.Popen(
            [sys.executable, "-c", CRASHER, name, second, *how(step, decision)],
            env={**os.environ, promote.CRASH_ENV: step, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for step, _, name, _, second, decision in cases
    ]
    for process, case in zip(crashes, cases, strict=True):
        _, err = process.communicate(timeout=180)
        assert process.returncode == 137, (case, err)
    written = promote.CRASH_STEPS.index("intent")
    for step, rerun, name, first, second, decision in cases:
        intent_text = model_tags(client, name).get(INTENT)
        # Nothing moved before the intent was written; after it, the intent is there to finish.
        assert (intent_text is not None) == (promote.CRASH_STEPS.index(step) >= written), step
        if intent_text is None:
            assert aliases(name)[:2] == (first, None)
        if rerun == "promote":
            path, reason = how(step, decision)
            result = promote.promote(name, second, path or None, override=bool(reason), reason=reason or None)
            assert result["champion"] == second
            assert (result["completed_interrupted"] is not None) == (intent_text is not None), step
        else:  # what the gate runs first
            message = promote.finish_interrupted(name, client, env)
            assert (message is not None) == (intent_text is not None), step
            if intent_text is None:
                continue  # nothing had happened: the gate sees the old champion, as it is
        assert aliases(name) == (second, first, None), (step, rerun)
        tags = registry.get_version(name, version=second)["tags"]
        assert tags["promoted_from"] == first, step
        if step == OVERRIDDEN:
            assert (tags["promotion_override"], tags["promotion_reason"]) == ("true", REASON)
            assert "promotion_decision_id" not in tags
        else:
            assert tags["promotion_override"] == "false" and "promotion_reason" not in tags, step
            assert tags["promotion_decision_id"] == json.loads(decision.read_text())["decision_id"]
        if intent_text is not None:  # the original promotion's record, not the rerun's
            assert tags["promoted_at"] == json.loads(intent_text)["at"], step
        assert INTENT not in model_tags(client, name), step
        assert json.loads(model_tags(client, name)["last_promotion"])["version"] == second


def test_a_version_deleted_after_a_killed_promotion_is_rolled_back(env, tmp_path, monkeypatch):
    monkeypatch.setenv(promote.LEASE_ENV, str(CRASH_LEASE_SECONDS))
    client = registry.client(env)
    name = f"rollback-{uuid.uuid4().hex[:6]}"
    first, decision = gated_version(client, name, None, tmp_path)
    promote.promote(name, first, decision)
    second, decision = gated_version(client, name, first, tmp_path)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHER, name, second, str(decision), ""],
        env={**os.environ, promote.CRASH_ENV: "champion", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert crashed.returncode == 137, crashed.stderr
    assert aliases(name)[:2] == (second, first)
    client.delete_model_version(name, second)
    message = promote.finish_interrupted(name, client, env)
    assert message is not None and "rolled back" in message
    assert aliases(name)[:2] == (first, None)
    tags = model_tags(client, name)
    assert INTENT not in tags and json.loads(tags["last_rolled_back"])["version"] == second
