"""Real Prometheus + Pushgateway on 127.0.0.1 for the tests (Debian's packages, see setup.sh).

Import the fixture into a test module: `from prometheus_servers import prometheus_servers`.
The servers start once per test session on free ports in a temporary folder, with
monitoring/prometheus.yml rewritten to scrape the Pushgateway every second and evaluate
monitoring/alerts.yml every second, and are stopped by PID at the end.
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
START_TIMEOUT_SECONDS = 30.0


@dataclass
class Servers:
    pushgateway: str  # host:port, the value of DIFFUREC_PUSHGATEWAY
    prometheus: str   # http://host:port
    folder: Path
    processes: list = field(default_factory=list)

    def query(self, promql: str) -> list:
        """Instant query through Prometheus' HTTP API; the `result` list."""
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, promql: str, predicate=bool, timeout: float = 20.0) -> list:
        """Poll a query until predicate(result) holds (scrapes are 1 s apart); return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r} never satisfied the condition; last: {result}")
            time.sleep(0.25)

    def alerts(self) -> list:
        with urllib.request.urlopen(f"{self.prometheus}/api/v1/alerts", timeout=5) as response:
            return json.load(response)["data"]["alerts"]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


_servers: Servers | None = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {START_TIMEOUT_SECONDS} s: {log.read_text()[-2000:]}")


def start_servers() -> Servers:
    """Start both servers (or return the running pair)."""
    global _servers
    if _servers is not None and _servers.processes:
        return _servers
    for binary in (PROMETHEUS, PUSHGATEWAY):
        if not Path(binary).exists():
            pytest.fail(f"{binary} not installed: run `bash scripts/setup.sh` (as root)")
    folder = Path(tempfile.mkdtemp(prefix="diffurec-prometheus-"))
    gateway = f"127.0.0.1:{free_port()}"
    servers = Servers(pushgateway=gateway, prometheus="", folder=folder)
    try:
        log = folder / "pushgateway.log"
        servers.processes.append(subprocess.Popen(
            [PUSHGATEWAY, f"--web.listen-address={gateway}"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=folder))
        _wait_ready(f"http://{gateway}/-/ready", servers.processes[-1], log)

        config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(REPO / "monitoring" / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [gateway]}]
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        address = f"127.0.0.1:{free_port()}"
        log = folder / "prometheus.log"
        servers.processes.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address={address}"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=folder))
        servers.prometheus = f"http://{address}"
        _wait_ready(f"{servers.prometheus}/-/ready", servers.processes[-1], log)
    except BaseException:
        servers.stop()
        raise
    _servers = servers
    atexit.register(servers.stop)
    return servers


@pytest.fixture(scope="session")
def prometheus_servers():
    """A running Prometheus scraping a running Pushgateway (see the module docstring)."""
    servers = start_servers()
    yield servers
    servers.stop()
