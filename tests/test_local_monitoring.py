"""The Prometheus and Pushgateway a local pipeline run starts (pipelines/local_monitoring.py),
with Debian's real binaries on 127.0.0.1: started on the ports asked for or free ones, wired
together (Prometheus scrapes that Pushgateway and loads monitoring/alerts.yml), stopped by PID
afterwards (also after Ctrl-C) unless kept, and an end-to-end `diffurec pipeline run` whose step
sees the servers in its environment and pushes to them."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from diffurec.errors import DiffuRecError
from diffurec.prometheus import Sample
from pipelines.local_monitoring import (
    Binaries,
    Monitoring,
    free_port,
    key_series,
    local_monitoring,
    open_monitoring,
    prometheus_config,
)
from pipelines.runners import warn_if_gate_lacks_prometheus

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SERVER_ENV = ("DIFFUREC_PUSHGATEWAY", "DIFFUREC_PROMETHEUS")
MISSING = Binaries(prometheus="/nonexistent/prometheus", pushgateway="/nonexistent/prometheus-pushgateway")


# ---- helpers (independent of the code under test) -----------------------------------------


def processes_using(folder: Path) -> list[int]:
    """PIDs of the processes whose command line names `folder` (the servers started there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                arguments = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(folder) in arguments and str(os.getpid()) != entry.name:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def query(prometheus: str, promql: str) -> list:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


def wait_for(prometheus: str, promql: str, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    while not (result := query(prometheus, promql)):
        assert time.monotonic() < deadline, f"{promql!r} stayed empty for {timeout} s"
        time.sleep(0.25)
    return result


def push_step(
    pushgateway: str,
    pipeline: str,
    success: float,
    step: str = "lineage",
    model: str = "any",
    run: str = "r1",
    version: str = "",
    **gauges: float,
) -> None:
    """Replace a step's group as the metric contract says (monitoring/README.md); a gauge name
    ending in _AT_K gets the label k="K"."""
    registry = CollectorRegistry()
    labels = {"run": run, "dataset": "tiny", "version": version}
    series = {"step_success": success, "step_last_run_timestamp_seconds": time.time(), **gauges}
    for name, value in series.items():
        name, _, k = name.partition("_AT_")
        names = [*labels, "k"] if k else list(labels)
        gauge = Gauge(f"diffurec_{name}", "test", names, registry=registry)
        gauge.labels(**labels, **({"k": k} if k else {})).set(value)
    push_to_gateway(
        pushgateway,
        job="diffurec",
        registry=registry,
        grouping_key={"pipeline": pipeline, "model": model, "step": step},
    )


def alert_names(rules_file: Path) -> set[str]:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A repository folder with the project's monitoring config; no monitoring env set. Any
    server left running from it is killed at the end (by PID, found by its folder)."""
    for name in SERVER_ENV:
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "monitoring", repo / "monitoring")
    yield repo
    for pid in processes_using(tmp_path):
        os.kill(pid, signal.SIGKILL)


def ports() -> tuple[int, int]:
    return free_port(), free_port()


# ---- the servers ---------------------------------------------------------------------------


def test_servers_are_wired_together_and_stopped_by_pid_when_the_run_is_terminated(root):
    prometheus_port, pushgateway_port = ports()
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with local_monitoring(root, ports=(prometheus_port, pushgateway_port)) as monitoring:
            assert monitoring is not None and monitoring.started
            assert os.environ["DIFFUREC_PUSHGATEWAY"] == f"127.0.0.1:{pushgateway_port}"
            assert os.environ["DIFFUREC_PROMETHEUS"] == f"http://127.0.0.1:{prometheus_port}"
            prometheus = os.environ["DIFFUREC_PROMETHEUS"]
            # a push to the Pushgateway is scraped by the Prometheus
            push_step(os.environ["DIFFUREC_PUSHGATEWAY"], "wired", 0)
            assert (
                wait_for(prometheus, 'diffurec_step_success{pipeline="wired",step="lineage"}')[0]["value"][1]
                == "0"
            )
            # the project's alerting rules are loaded
            with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=5) as response:
                groups = json.load(response)["data"]["groups"]
            loaded = {
                rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"
            }
            assert loaded == alert_names(root / "monitoring" / "alerts.yml")
            # no lifecycle API: nobody can POST /-/quit
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(
                    urllib.request.Request(f"{prometheus}/-/quit", method="POST"), timeout=5
                )
            pids = [server.pid for server in monitoring.servers]
            assert sorted(pids) == sorted(processes_using(root))
            state = json.loads((root / "runs" / "monitoring" / "servers.json").read_text())
            assert sorted(state[name]["pid"] for name in ("Prometheus", "Pushgateway")) == sorted(pids)
            assert (state["owner"], state["keep"]) == (os.getpid(), False)
            os.kill(os.getpid(), signal.SIGTERM)  # `kill` of the run: like Ctrl-C, the servers stop
            time.sleep(5)  # (the handler raises here)
    assert signal.getsignal(signal.SIGTERM) == handler
    assert not any(alive(pid) for pid in pids)
    assert not accepts_connections(prometheus_port) and not accepts_connections(pushgateway_port)
    assert not any(os.environ.get(name) for name in SERVER_ENV)
    assert not (root / "runs" / "monitoring" / "servers.json").exists()

    # The Pushgateway saved its groups at SIGTERM: the next run's gateway still has them.
    with local_monitoring(root, ports=ports()) as monitoring:
        assert monitoring is not None and monitoring.pushgateway
        with urllib.request.urlopen(f"http://{monitoring.pushgateway}/metrics", timeout=5) as response:
            assert re.search(
                r'diffurec_step_success\{[^}]*pipeline="wired"[^}]*\} 0', response.read().decode()
            )
        # The summary of run r2 reads each group's last push back from Prometheus, although the
        # restarted Prometheus still holds r1's lineage series.
        gateway = monitoring.pushgateway
        push_step(gateway, "wired", 1, run="r2")
        push_step(gateway, "wired", 1, "train", "diffurec", "r2")
        push_step(gateway, "wired", 1, "evaluate", "popularity", "r2", hr_AT_10=5.3, ndcg_AT_10=2.32)
        push_step(gateway, "wired", 1, "evaluate", "diffurec", "r2", hr_AT_10=8.17, ndcg_AT_10=3.681)
        push_step(gateway, "wired", 1, "gate", run="r2", version="4", gate_passed=1)
        push_step(gateway, "wired", 0, "promote", run="r0", champion_version=3)  # not re-run
        push_step(gateway, "elsewhere", 1, "gate", gate_passed=0)  # another pipeline's alert
        for alert, pipeline in (("DiffuRecStepFailed", "wired"), ("DiffuRecGateFailed", "elsewhere")):
            firing = f'ALERTS{{alertname="{alert}",pipeline="{pipeline}",alertstate="firing"}}'
            wait_for(monitoring.prometheus, firing)
        said = {
            line.title: line.said
            for line in key_series(monitoring, "wired", "diffurec", run="r2", since=time.time())
        }
        assert said == {
            "steps": [
                "lineage ok",
                "train(diffurec) ok",
                "evaluate(popularity) ok",
                "evaluate(diffurec) ok",
                "gate ok",
                "promote FAILED (earlier run)",
            ],
            "HR@10 / NDCG@10": ["diffurec HR@10 8.17 NDCG@10 3.68", "popularity HR@10 5.30 NDCG@10 2.32"],
            "gate": ["passed (version 4)"],
            "champion version": ["3"],
            "firing alerts": said["firing alerts"],
        }
        # this pipeline's alerts, not another's (which alerts fire is test_alerts.py's business)
        assert "DiffuRecStepFailed" in said["firing alerts"]
        assert "DiffuRecGateFailed" not in said["firing alerts"]
    assert processes_using(root) == []


def test_a_port_in_use_falls_back_to_a_free_port_and_says_so(root, caplog):
    with socket.socket() as busy_prometheus, socket.socket() as busy_gateway:
        for busy in (busy_prometheus, busy_gateway):
            busy.bind(("127.0.0.1", 0))
            busy.listen()
        taken = (busy_prometheus.getsockname()[1], busy_gateway.getsockname()[1])
        with caplog.at_level(logging.WARNING), local_monitoring(root, ports=taken) as monitoring:
            assert monitoring is not None and monitoring.prometheus and monitoring.pushgateway
            prometheus_port = int(monitoring.prometheus.rsplit(":", 1)[1])
            pushgateway_port = int(monitoring.pushgateway.rsplit(":", 1)[1])
            assert prometheus_port != taken[0] and pushgateway_port != taken[1]
            # the fallback pair is wired together too
            wait_for(monitoring.prometheus, f'up{{instance="{monitoring.pushgateway}"}} == 1')
    said = caplog.text
    assert f"port {taken[0]} is in use: Prometheus listens on {prometheus_port}" in said
    assert f"port {taken[1]} is in use: Pushgateway listens on {pushgateway_port}" in said


def test_a_run_meanwhile_in_the_same_repository_gets_servers_of_its_own(root, caplog, monkeypatch):
    with local_monitoring(root, ports=ports()) as first:
        assert first is not None
        first_pids = sorted(server.pid for server in first.servers)
        for name in SERVER_ENV:  # the other run is another process: it does not see these
            monkeypatch.delenv(name)
        with caplog.at_level(logging.WARNING), local_monitoring(root, ports=ports()) as second:
            assert second is not None and second.started and second.folder is not None
            # not the first run's servers, which that run stops when it ends; not its database
            assert not set(first_pids) & {server.pid for server in second.servers}
            assert second.folder.parent == root / "runs" and second.folder.name.startswith("monitoring-")
            assert os.environ["DIFFUREC_PROMETHEUS"] == second.prometheus != first.prometheus
            wait_for(second.prometheus, f'up{{instance="{second.pushgateway}"}} == 1')
        assert f"runs/monitoring is in use by another run (pids {first.pids()})" in caplog.text
        assert all(alive(pid) for pid in first_pids)
        assert sorted(processes_using(root)) == first_pids
    assert processes_using(root) == []


def test_kept_servers_outlive_the_run_and_the_next_run_uses_them(root):
    with local_monitoring(root, keep=True, ports=ports()) as kept:
        assert kept is not None
    pids = sorted(server.pid for server in kept.servers)
    try:
        assert all(alive(pid) for pid in pids) and sorted(processes_using(root)) == pids
        assert os.environ.get("DIFFUREC_PROMETHEUS") is None  # the environment is restored anyway
        assert kept.stop_command() == "kill " + " ".join(str(server.pid) for server in kept.servers)

        # The next run finds the kept pair, uses it and leaves it running.
        with local_monitoring(root, ports=ports()) as again:
            assert again is not None and again.reused and not again.started
            assert (again.prometheus, again.pushgateway) == (kept.prometheus, kept.pushgateway)
            assert os.environ["DIFFUREC_PROMETHEUS"] == kept.prometheus
        assert all(alive(pid) for pid in pids)

        # Half a pair (Prometheus gone) is not used: the rest is stopped and a new pair started.
        prometheus_pid = next(server.pid for server in kept.servers if server.name == "Prometheus")
        os.kill(prometheus_pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(prometheus_pid):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with local_monitoring(root, ports=ports()) as fresh:
            assert fresh is not None and fresh.started
            assert not set(pids) & {server.pid for server in fresh.servers}
            assert not any(alive(pid) for pid in pids)
        assert processes_using(root) == []
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_server_that_cannot_start_is_one_error_and_leaves_nothing_running(root):
    (root / "monitoring" / "alerts.yml").write_text("groups: [{name: broken, rules: [{alert: X}]}]\n")
    with pytest.raises(DiffuRecError, match=r"Prometheus exited with status \d+ at start: .*prometheus\.log"):
        with local_monitoring(root, ports=ports()):
            pass
    assert processes_using(root) == []
    assert not any(os.environ.get(name) for name in SERVER_ENV)


def test_missing_binaries_mean_a_run_without_metrics_said_in_one_line(root, caplog):
    with caplog.at_level(logging.WARNING), local_monitoring(root, binaries=MISSING) as monitoring:
        assert monitoring is None
        assert not any(os.environ.get(name) for name in SERVER_ENV)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "/nonexistent/prometheus" in warnings[0] and "\n" not in warnings[0]
    assert not (root / "runs").exists()


def test_a_run_without_prometheus_says_first_that_the_gate_will_fail_closed(root, monkeypatch, caplog):
    (root / "params.yaml").write_text(
        yaml.safe_dump({"gate": {"prometheus": [{"name": "n", "query": "vector(0)", "max": 0}]}})
    )
    with caplog.at_level(logging.WARNING):
        warn_if_gate_lacks_prometheus(root, None)
        monkeypatch.setenv("DIFFUREC_PROMETHEUS", "http://127.0.0.1:9")
        warn_if_gate_lacks_prometheus(root, None)
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and "gate's 1 checks" in said[0] and "will fail closed" in said[0]


def test_servers_already_set_are_used_and_nothing_is_started(root, monkeypatch):
    monkeypatch.setenv("DIFFUREC_PUSHGATEWAY", "gateway.example:9091")
    # missing binaries prove that nothing is even looked for
    with local_monitoring(root, binaries=MISSING) as monitoring:
        assert monitoring is not None
        assert (monitoring.pushgateway, monitoring.prometheus, monitoring.servers) == (
            "gateway.example:9091",
            None,
            [],
        )
        assert os.environ["DIFFUREC_PUSHGATEWAY"] == "gateway.example:9091"
        assert "DIFFUREC_PROMETHEUS" not in os.environ
    assert os.environ["DIFFUREC_PUSHGATEWAY"] == "gateway.example:9091"
    assert not (root / "runs").exists()


def test_no_monitoring_starts_nothing(root):
    assert open_monitoring(root, enabled=False) is None
    with local_monitoring(root, enabled=False) as monitoring:
        assert monitoring is None
    assert not (root / "runs").exists()


def test_the_config_scrapes_the_chosen_gateway_and_loads_the_rules(root):
    rules = root / "monitoring" / "alerts.yml"
    config = yaml.safe_load(prometheus_config(root / "monitoring" / "prometheus.yml", rules, "127.0.0.1:5"))
    source = yaml.safe_load((root / "monitoring" / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(rules.resolve())]
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "pushgateway")
    assert job["static_configs"] == [{"targets": ["127.0.0.1:5"]}]
    assert job["honor_labels"] is True
    assert len(config["scrape_configs"]) == len(source["scrape_configs"])

    (root / "other.yml").write_text("global: {}\nscrape_configs: [{job_name: other}]\n")
    with pytest.raises(DiffuRecError, match=r"other\.yml: no scrape config with job_name: pushgateway"):
        prometheus_config(root / "other.yml", rules, "127.0.0.1:5")


class CannedPrometheus(Monitoring):
    """Answers the summary's queries from canned samples, keyed by metric name."""

    def __init__(self, samples: dict[str, list[Sample]]) -> None:
        super().__init__(pushgateway=None, prometheus="http://canned")
        self.samples = samples

    def query(self, promql: str, timeout: float = 0) -> list[Sample]:
        return [sample for name, found in self.samples.items() if name in promql for sample in found]


def test_the_summary_counts_only_the_last_push_of_each_group():
    """A restarted Prometheus may still hold a series of its previous process with another run
    label (no staleness marker): the summary shows only the run that pushed last."""

    def sample(step: str, run: str, value: float, **labels: str) -> Sample:
        return Sample({"step": step, "model": "any", "run": run, **labels}, value)

    canned = CannedPrometheus(
        {
            "diffurec_step_last_run_timestamp_seconds": [
                sample("validate_raw", "r1", 100.0),  # not re-run in r2
                sample("gate", "r1", 200.0),
                sample("gate", "r2", 300.0),
            ],
            "diffurec_step_success": [
                sample("validate_raw", "r1", 1),
                sample("gate", "r1", 0),
                sample("gate", "r2", 1),
            ],
            "diffurec_gate_passed": [
                sample("gate", "r1", 0, version="3"),
                sample("gate", "r2", 1, version="4"),
            ],
        }
    )
    said = {line.title: line.said for line in key_series(canned, "p", "diffurec", run="r2")}
    assert said["steps"] == ["validate_raw ok (earlier run)", "gate ok"]
    assert said["gate"] == ["passed (version 4)"]
    assert said["champion version"] == said["HR@10 / NDCG@10"] == ["none pushed"]


# ---- end to end: `diffurec pipeline run` ---------------------------------------------------


@pytest.fixture
def dvc_repo(root):
    """A DVC repository with the project's monitoring config and one stage that records the
    monitoring environment and runs a `diffurec` step (which pushes its metrics)."""
    (root / "params.yaml").write_text(
        yaml.safe_dump({"data": {"dataset": "tiny"}, "registry": {"name": "e2e-monitoring"}})
    )
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "step": {
                        "cmd": "env | grep '^DIFFUREC_' | sort > env.txt && "
                        "diffurec pipeline lineage --params params.yaml --out lineage.json",
                        "always_changed": True,
                        "outs": [{"env.txt": {"cache": False}}, {"lineage.json": {"cache": False}}],
                    }
                }
            }
        )
    )
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    return root


def pipeline_run(repo: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DIFFUREC_")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", DO_NOT_TRACK="1")
    return subprocess.run(
        [str(VENV_BIN / "diffurec"), "pipeline", "run", "--no-push", *flags],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pipeline_run_starts_the_servers_for_its_steps_then_stops_or_keeps_them(dvc_repo):
    done = pipeline_run(dvc_repo)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    started = re.search(r"started Prometheus (\S+) and Pushgateway (\S+) \(pids (\d+), (\d+);", done.stderr)
    assert started, done.stderr[-3000:]
    prometheus, pushgateway = started.group(1), started.group(2)
    seen = dict(line.split("=", 1) for line in (dvc_repo / "env.txt").read_text().splitlines())
    assert seen["DIFFUREC_PROMETHEUS"] == prometheus and seen["DIFFUREC_PUSHGATEWAY"] == pushgateway
    assert seen["DIFFUREC_PIPELINE"] == "e2e-monitoring" and seen["DIFFUREC_RUN_ID"].startswith("dvc-")
    # The summary names Prometheus and shows the step's push, read back from Prometheus.
    assert f"monitoring: Prometheus {prometheus}, Pushgateway {pushgateway}" in done.stdout
    assert 'diffurec_step_success{job="diffurec",pipeline="e2e-monitoring"}' in done.stdout
    assert re.search(r"^\s+steps\s+lineage ok$", done.stdout, re.MULTILINE), done.stdout
    # Stopped when the command ended.
    assert not any(alive(int(pid)) for pid in started.group(3, 4))
    assert processes_using(dvc_repo) == []

    kept = pipeline_run(dvc_repo, "--keep-monitoring")
    assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
    stop = re.search(r"stop them with: kill (\d+) (\d+)", kept.stdout)
    assert stop, kept.stdout
    pids = [int(pid) for pid in stop.groups()]
    try:
        assert all(alive(pid) for pid in pids) and sorted(processes_using(dvc_repo)) == sorted(pids)
        prometheus = re.search(r"monitoring: Prometheus (\S+),", kept.stdout).group(1)
        # After the summary the command pushed its own step (`pipeline`) to the kept servers.
        wait_for(prometheus, 'diffurec_step_success{pipeline="e2e-monitoring",step="pipeline"} == 1')
        # the earlier run's group was replaced: this run's id is on the lineage step
        run = dict(line.split("=", 1) for line in (dvc_repo / "env.txt").read_text().splitlines())[
            "DIFFUREC_RUN_ID"
        ]
        wait_for(prometheus, f'diffurec_step_success{{pipeline="e2e-monitoring",step="lineage",run="{run}"}}')
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
