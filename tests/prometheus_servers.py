"""Real Prometheus + Pushgateway + Alertmanager on 127.0.0.1 for the tests (Debian's packages,
see setup.sh).

Import the fixture into a test module: `from prometheus_servers import prometheus_servers`.
The servers start once per test session on free ports in a temporary folder, with
monitoring/prometheus.yml rewritten to scrape the Pushgateway every second, evaluate
monitoring/alerts.yml every second and send alerts to the session's Alertmanager, which runs
monitoring/alertmanager.yml with its webhook receivers pointed at a catcher in this process
(`Servers.notifications`) and its waits cut to a second. They are stopped by PID at the end.
"""

from __future__ import annotations

import atexit
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.local_monitoring import Server, free_port, prometheus_config, start_server

__all__ = ["Servers", "free_port", "prometheus_servers", "start_servers"]

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
START_TIMEOUT_SECONDS = 30.0


@dataclass
class Servers:
    pushgateway: str  # host:port, the value of DIFFUREC_PUSHGATEWAY
    prometheus: str  # http://host:port
    folder: Path
    processes: list = field(default_factory=list)
    alertmanager: str = ""  # http://host:port
    # Webhook notifications the Alertmanager sent: (receiver URL path, payload).
    notifications: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    catcher: http.server.HTTPServer | None = None

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
        if self.catcher is not None:
            self.catcher.shutdown()
            self.catcher.server_close()
            self.catcher = None
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


def start_servers() -> Servers:
    """Start both servers (or return the running pair)."""
    global _servers
    if _servers is not None and _servers.processes:
        return _servers
    for binary in (PROMETHEUS, PUSHGATEWAY):
        if not Path(binary).exists():
            pytest.fail(f"{binary} not installed: run `bash scripts/setup.sh` (as root)")
    folder = Path(tempfile.mkdtemp(prefix="diffurec-prometheus-"))
    servers = Servers(pushgateway="", prometheus="", folder=folder)
    try:
        server = _start(
            "Pushgateway",
            # Debian's default persistence file is shared by every gateway on the machine:
            # keep this one's metrics in memory only.
            lambda port: [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
            servers,
        )
        servers.pushgateway = f"127.0.0.1:{server.port}"

        _start_alertmanager(servers)
        # Scrapes and rule evaluations every second, as for `make run`.
        config = yaml.safe_load(
            prometheus_config(
                REPO / "monitoring" / "prometheus.yml",
                REPO / "monitoring" / "alerts.yml",
                servers.pushgateway,
            )
        )
        # The session's own Alertmanager (localhost:9093 may be anyone's).
        manager = servers.alertmanager.removeprefix("http://")
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [manager]}]}]
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        server = _start(
            "Prometheus",
            lambda port: [
                PROMETHEUS,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            servers,
        )
        servers.prometheus = f"http://127.0.0.1:{server.port}"
    except BaseException:
        servers.stop()
        raise
    _servers = servers
    atexit.register(servers.stop)
    return servers


def _start_alertmanager(servers: Servers) -> None:
    """monitoring/alertmanager.yml with webhooks to a catcher thread and 1-second waits."""
    if not Path(ALERTMANAGER).exists():
        pytest.fail(f"{ALERTMANAGER} not installed: run `bash scripts/setup.sh` (as root)")
    notifications = servers.notifications

    class Catcher(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            notifications.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    servers.catcher = http.server.HTTPServer(("127.0.0.1", 0), Catcher)
    threading.Thread(target=servers.catcher.serve_forever, daemon=True).start()
    catcher = f"http://127.0.0.1:{servers.catcher.server_address[1]}"

    config = yaml.safe_load((REPO / "monitoring" / "alertmanager.yml").read_text())
    waits = ("group_wait", "group_interval", "repeat_interval")
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update({key: "1s" for key in waits if key in route})
    config["route"].update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = catcher + urllib.parse.urlsplit(webhook["url"]).path
    folder = servers.folder
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(config))
    server = _start(
        "Alertmanager",
        lambda port: [
            ALERTMANAGER,
            f"--config.file={folder / 'alertmanager.yml'}",
            f"--storage.path={folder / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: a single local instance
        ],
        servers,
    )
    servers.alertmanager = f"http://127.0.0.1:{server.port}"


def _start(name: str, command: Callable[[int], list[str]], servers: Servers) -> Server:
    """One server on a free port, ready (the runner's own starter), remembered for stop()."""
    server = start_server(name, command, None, servers.folder, time.monotonic() + START_TIMEOUT_SECONDS)
    servers.processes.append(server.process)
    return server


@pytest.fixture(scope="session")
def prometheus_servers():
    """A running Prometheus scraping a running Pushgateway (see the module docstring)."""
    servers = start_servers()
    yield servers
    servers.stop()
