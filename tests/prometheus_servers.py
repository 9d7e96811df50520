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
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1:port (from /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and address == f"0100007F:{port:04X}":
            inodes.add(inode)
    return inodes


def _owns_port(process: subprocess.Popen, port: int) -> bool:
    """True when `process` itself listens on the port (not another session's server)."""
    inodes = _listening_inodes(port)
    fd_dir = Path(f"/proc/{process.pid}/fd")
    try:
        links = {str(fd.readlink()) for fd in fd_dir.iterdir()}
    except OSError:
        return False
    return any(f"socket:[{inode}]" in links for inode in inodes)


def _start(command: list, port: int, log: Path, folder: Path) -> subprocess.Popen | None:
    """Start a server on `port`, wait until it answers /-/ready from its own socket.

    Returns None when the port was taken meanwhile (another test session picked the same free
    port): the caller retries with a new one.
    """
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}/-/ready"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if "address already in use" in log.read_text():
                return None
            raise RuntimeError(f"{command[0]} exited with {process.returncode}: {log.read_text()[-2000:]}")
        if _owns_port(process, port):
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return process
            except OSError:
                pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{url} not ready after {START_TIMEOUT_SECONDS} s: {log.read_text()[-2000:]}")


def _start_on_free_port(make_command, log: Path, folder: Path) -> tuple[subprocess.Popen, int]:
    for _ in range(5):
        port = free_port()
        process = _start(make_command(port), port, log, folder)
        if process is not None:
            return process, port
    raise RuntimeError(f"no free port for {make_command(0)[0]} after 5 tries")


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
        process, port = _start_on_free_port(
            # Debian's default persistence file is shared by every gateway on the machine:
            # keep this one's metrics in memory only.
            lambda port: [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
            folder / "pushgateway.log",
            folder,
        )
        servers.processes.append(process)
        servers.pushgateway = f"127.0.0.1:{port}"

        _start_alertmanager(servers)
        config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(REPO / "monitoring" / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [servers.pushgateway]}]
        # The session's own Alertmanager (localhost:9093 may be anyone's).
        manager = servers.alertmanager.removeprefix("http://")
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [manager]}]}]
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        process, port = _start_on_free_port(
            lambda port: [
                PROMETHEUS,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            folder / "prometheus.log",
            folder,
        )
        servers.processes.append(process)
        servers.prometheus = f"http://127.0.0.1:{port}"
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
    process, port = _start_on_free_port(
        lambda port: [
            ALERTMANAGER,
            f"--config.file={folder / 'alertmanager.yml'}",
            f"--storage.path={folder / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: a single local instance
        ],
        folder / "alertmanager.log",
        folder,
    )
    servers.processes.append(process)
    servers.alertmanager = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def prometheus_servers():
    """A running Prometheus scraping a running Pushgateway (see the module docstring)."""
    servers = start_servers()
    yield servers
    servers.stop()
