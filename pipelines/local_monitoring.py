"""A Prometheus and a Pushgateway on 127.0.0.1 for a local pipeline run (`make run`).

`local_monitoring(...)` is a context manager around a run: it starts Debian's
`prometheus-pushgateway` and `prometheus` (scripts/setup.sh installs them) with their data in
runs/monitoring/, waits until both answer /-/ready, and sets $DIFFUREC_PUSHGATEWAY and
$DIFFUREC_PROMETHEUS for the steps; on exit it stops what it started, by PID, unless asked to
keep them. Prometheus runs monitoring/prometheus.yml rewritten to scrape that Pushgateway every
second and to load monitoring/alerts.yml, so the gate can query a step's push a second later.

    ports         9090 / 9091 when free, else a free port (said in one line)
    user servers  $DIFFUREC_PUSHGATEWAY or $DIFFUREC_PROMETHEUS already set: nothing is started
    kept servers  a pair an earlier run kept (runs/monitoring/servers.json) is used again
    busy folder   another run's servers (not kept) run from runs/monitoring: this run starts
                  its own, with their data in runs/monitoring-*/
    no binaries   one line, and the run goes on without metrics
    persistence   the Pushgateway's groups survive restarts (runs/monitoring/pushgateway.db),
                  so a step skipped by DVC still shows its last run

`key_series(...)` reads the series a run ends with (step outcomes, the candidate's HR@10 and
NDCG@10, the gate, the champion, firing alerts) from Prometheus for the final summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import yaml

from diffurec.errors import DiffuRecError, located
from diffurec.prometheus import URL_ENV as PROMETHEUS_ENV
from diffurec.prometheus import Sample, instant_query

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PROMETHEUS_PORT = 9090
PUSHGATEWAY_PORT = 9091
PUSHGATEWAY_ENV = "DIFFUREC_PUSHGATEWAY"  # host:port, read by diffurec/telemetry.py
FOLDER = Path("runs") / "monitoring"  # relative to the repository
STATE_FILE = "servers.json"  # the running servers' PIDs and ports, their run's PID, kept or not
SCRAPE_INTERVAL = "1s"  # a step's push is queryable a second later (the gate reads it)
# A restarted Prometheus writes no staleness markers for its previous process's series: with
# the default 5 min lookback, a failure a later run replaced (another `run` label) would still
# fire alerts and reach the gate for 5 minutes. 1 s scrapes need no more than this.
LOOKBACK_DELTA = "15s"
READY_TIMEOUT_SECONDS = 30.0  # both servers together
STOP_TIMEOUT_SECONDS = 10.0  # SIGTERM, then SIGKILL
QUERY_TIMEOUT_SECONDS = 5.0
PORT_TRIES = 5  # another process may take a free port between the probe and the start


@dataclass(frozen=True)
class Binaries:
    prometheus: str
    pushgateway: str


def default_binaries() -> Binaries:
    """Debian's binaries (on PATH, else where the packages put them)."""
    return Binaries(
        prometheus=shutil.which("prometheus") or "/usr/bin/prometheus",
        pushgateway=shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway",
    )


@dataclass
class Server:
    name: str  # "Prometheus" or "Pushgateway"
    pid: int
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None  # None: started by an earlier run


@dataclass
class Monitoring:
    """Where a run's steps push and what the gate and the summary query."""

    pushgateway: str | None  # host:port
    prometheus: str | None  # http://host:port
    folder: Path | None = None  # data, logs and config of servers started here
    servers: list[Server] = field(default_factory=list)  # started by this run or kept by an earlier one
    reused: bool = False  # the servers are a pair an earlier run kept
    keep: bool = False

    @property
    def started(self) -> bool:
        """True when this run started the servers (so it stops them unless asked to keep them)."""
        return bool(self.servers) and not self.reused

    def query(self, promql: str, timeout: float = QUERY_TIMEOUT_SECONDS) -> list[Sample]:
        """Instant query (the gate's client); a DiffuRecError when Prometheus does not answer."""
        if not self.prometheus:
            raise DiffuRecError(f"no Prometheus to query (${PROMETHEUS_ENV} is not set)")
        return instant_query(self.prometheus, promql, timeout)

    def pids(self) -> str:
        return ", ".join(str(server.pid) for server in self.servers)

    def stop_command(self) -> str:
        return "kill " + " ".join(str(server.pid) for server in self.servers)

    def stop(self) -> None:
        """Stop the servers by PID (SIGTERM: the Pushgateway saves its groups, Prometheus its
        database), then forget them."""
        for server in self.servers:
            if _alive(server):
                os.kill(server.pid, signal.SIGTERM)
        for server in self.servers:
            if not _wait_gone(server, STOP_TIMEOUT_SECONDS) and _alive(server):
                os.kill(server.pid, signal.SIGKILL)
                _wait_gone(server, STOP_TIMEOUT_SECONDS)
        self.servers.clear()
        if self.folder is not None:
            (self.folder / STATE_FILE).unlink(missing_ok=True)


# ---- the context manager of a run ----------------------------------------------------------


@contextmanager
def local_monitoring(
    root: Path,
    enabled: bool = True,
    keep: bool = False,
    binaries: Binaries | None = None,
    ports: tuple[int, int] = (PROMETHEUS_PORT, PUSHGATEWAY_PORT),
) -> Iterator[Monitoring | None]:
    """Servers for one run of the pipeline in `root` (see the module docstring); yields None when
    there are none. Inside, $DIFFUREC_PUSHGATEWAY / $DIFFUREC_PROMETHEUS point at them (the
    steps are subprocesses and inherit them); on exit they are restored, and servers this run
    started are stopped unless `keep`. SIGTERM ends the run like Ctrl-C, so they stop then too."""
    monitoring = open_monitoring(root, enabled, keep, binaries, ports) if enabled else None
    if monitoring is None:
        if not enabled:
            log.info("monitoring off (--no-monitoring): the steps push no metrics")
        yield None
        return
    saved = {name: os.environ.get(name) for name in (PUSHGATEWAY_ENV, PROMETHEUS_ENV)}
    if monitoring.pushgateway:
        os.environ[PUSHGATEWAY_ENV] = monitoring.pushgateway
    if monitoring.prometheus:
        os.environ[PROMETHEUS_ENV] = monitoring.prometheus
    previous_handler = _interrupt_on_sigterm()
    try:
        yield monitoring
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if monitoring.started and not keep:
            monitoring.stop()
            log.info("stopped Prometheus and the Pushgateway; their data stays in %s", monitoring.folder)


def open_monitoring(
    root: Path,
    enabled: bool = True,
    keep: bool = False,
    binaries: Binaries | None = None,
    ports: tuple[int, int] = (PROMETHEUS_PORT, PUSHGATEWAY_PORT),
) -> Monitoring | None:
    """The user's servers ($DIFFUREC_PUSHGATEWAY / $DIFFUREC_PROMETHEUS), a pair an earlier run
    kept, or a new pair; None when disabled or the binaries are missing."""
    if not enabled:
        return None
    users = {name: os.environ.get(name) or None for name in (PUSHGATEWAY_ENV, PROMETHEUS_ENV)}
    if any(users.values()):
        log.info(
            "using the monitoring servers already set: %s",
            ", ".join(f"${name}={value}" for name, value in users.items() if value)
            + "".join(f"; ${name} is not set" for name, value in users.items() if not value),
        )
        return Monitoring(pushgateway=users[PUSHGATEWAY_ENV], prometheus=users[PROMETHEUS_ENV], keep=True)
    binaries = binaries or default_binaries()
    missing = [path for path in (binaries.prometheus, binaries.pushgateway) if not Path(path).is_file()]
    if missing:
        log.warning(
            "monitoring off: %s not installed (`bash scripts/setup.sh` as root installs Debian's "
            "prometheus and prometheus-pushgateway); the steps push no metrics",
            " and ".join(missing),
        )
        return None
    folder = (root / FOLDER).resolve()
    found = _earlier_servers(folder)
    if found is not None:
        earlier, owner_running, answering = found
        if earlier.keep and answering:
            log.info(
                "using the Prometheus %s and Pushgateway %s an earlier run kept (stop them with: %s)",
                earlier.prometheus,
                earlier.pushgateway,
                earlier.stop_command(),
            )
            return earlier
        if not earlier.keep and owner_running:
            # another run of this repository uses them now, and stops them when it ends
            folder = Path(tempfile.mkdtemp(prefix="monitoring-", dir=folder.parent))
            log.warning(
                "%s is in use by another run (pids %s): this run's servers keep their data in %s",
                FOLDER,
                earlier.pids(),
                folder,
            )
        else:  # a kept pair half gone, or what a killed run left: it would hold the database
            log.info("stopping what is left of an earlier run's servers (pids %s)", earlier.pids())
            earlier.stop()
    return start_servers(root, folder, binaries, ports, keep)


def start_servers(
    root: Path,
    folder: Path,
    binaries: Binaries,
    ports: tuple[int, int] = (PROMETHEUS_PORT, PUSHGATEWAY_PORT),
    keep: bool = False,
) -> Monitoring:
    """Start a Pushgateway, then a Prometheus scraping it, with their files in `folder`; both
    ready (/-/ready) within READY_TIMEOUT_SECONDS, else stopped and a DiffuRecError."""
    prometheus_port, pushgateway_port = ports
    source_config = root / "monitoring" / "prometheus.yml"
    rules = root / "monitoring" / "alerts.yml"
    for path in (source_config, rules):
        if not path.is_file():
            raise located(path, "not found (Prometheus's config and alerting rules); or pass --no-monitoring")
    folder.mkdir(parents=True, exist_ok=True)
    monitoring = Monitoring(pushgateway=None, prometheus=None, folder=folder, keep=keep)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    try:
        pushgateway = start_server(
            "Pushgateway",
            lambda port: [
                binaries.pushgateway,
                f"--web.listen-address={HOST}:{port}",
                f"--persistence.file={folder / 'pushgateway.db'}",
            ],
            pushgateway_port,
            folder,
            deadline,
        )
        monitoring.servers.append(pushgateway)
        monitoring.pushgateway = f"{HOST}:{pushgateway.port}"
        _write_state(monitoring)  # from now on, a run starting meanwhile knows the folder is in use
        config = folder / "prometheus.yml"
        config.write_text(prometheus_config(source_config, rules, monitoring.pushgateway))
        prometheus = start_server(
            "Prometheus",
            lambda port: [
                binaries.prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'prometheus'}",
                f"--web.listen-address={HOST}:{port}",
                f"--query.lookback-delta={LOOKBACK_DELTA}",
            ],
            prometheus_port,
            folder,
            deadline,
        )
        monitoring.servers.append(prometheus)
        monitoring.prometheus = f"http://{HOST}:{prometheus.port}"
        _wait_until_scraping(monitoring, deadline)
    except BaseException:  # Ctrl-C while waiting included: nothing started here outlives it
        monitoring.stop()
        raise
    _write_state(monitoring)
    log.info(
        "started Prometheus %s and Pushgateway %s (pids %d, %d; data in %s)",
        monitoring.prometheus,
        monitoring.pushgateway,
        prometheus.pid,
        pushgateway.pid,
        folder,
    )
    return monitoring


def prometheus_config(source: Path, rules: Path, pushgateway: str) -> str:
    """monitoring/prometheus.yml with the Pushgateway job pointed at `pushgateway`, the rules at
    `rules` (an absolute path) and every interval at SCRAPE_INTERVAL."""
    config = yaml.safe_load(source.read_text()) or {}
    config.setdefault("global", {}).update(
        scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL
    )
    config["rule_files"] = [str(rules.resolve())]
    jobs = [job for job in config.get("scrape_configs") or [] if job.get("job_name") == "pushgateway"]
    if not jobs:
        raise located(source, "no scrape config with job_name: pushgateway")
    for job in jobs:
        job["static_configs"] = [{"targets": [pushgateway]}]
        job.pop("scrape_interval", None)
    return yaml.safe_dump(config, sort_keys=False)


# ---- starting, finding and stopping one server ----------------------------------------------


def port_is_free(port: int) -> bool:
    """True when nothing listens on HOST:port (or on every address at that port)."""
    with socket.socket() as probe:
        # as the Go servers do: a port whose old connections linger in TIME_WAIT is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def start_server(
    name: str, command: Callable[[int], list[str]], preferred: int | None, folder: Path, deadline: float
) -> Server:
    """Start one server (`command(port)`, log in folder/<name>.log) and wait until it answers
    /-/ready from its own socket: on `preferred` when it is free (else on a free port, said
    once), on a free port when `preferred` is None."""
    log_file = folder / f"{name.lower()}.log"
    port = free_port() if preferred is None else preferred
    if preferred is not None and not port_is_free(preferred):
        port = free_port()
        log.warning("port %d is in use: %s listens on %d instead", preferred, name, port)
    for _ in range(PORT_TRIES):
        server = _start(name, command(port), port, log_file, folder, deadline)
        if server is not None:
            return server
        port = free_port()  # taken between the probe and the start
    raise DiffuRecError(f"{name}: no free port on {HOST} after {PORT_TRIES} tries (see {log_file})")


def _start(
    name: str, command: list[str], port: int, log_file: Path, folder: Path, deadline: float
) -> Server | None:
    """Start one server and wait until it answers /-/ready from its own socket; None when the
    port was taken meanwhile."""
    with log_file.open("w") as output:
        # A session of its own: the terminal's Ctrl-C reaches this program, which stops the
        # server (or keeps it, when asked), instead of killing it behind the program's back.
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
        )
    server = Server(name=name, pid=process.pid, port=port, log=log_file, process=process)
    url = f"http://{HOST}:{port}/-/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log_file.read_text(errors="replace")
            if "address already in use" in text:
                return None
            last = text.strip().splitlines()[-1] if text.strip() else "no output"
            raise DiffuRecError(
                f"{name} exited with status {process.returncode} at start: {last[:300]} "
                f"(log: {log_file}; or run with --no-monitoring)"
            )
        if _owns_port(process.pid, port) and _ready(url):
            return server
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise DiffuRecError(
        f"{name} not ready at {url} within {READY_TIMEOUT_SECONDS:.0f} s (log: {log_file}; "
        "or run with --no-monitoring)"
    )


def _wait_until_scraping(monitoring: Monitoring, deadline: float) -> None:
    """Wait for Prometheus's first successful scrape of the Pushgateway (about 5 s after its
    start: target discovery), so a step's push, even the first, is queryable a second later."""
    promql = f'up{{job="pushgateway",instance="{monitoring.pushgateway}"}} == 1'
    while time.monotonic() < deadline:
        try:
            if monitoring.query(promql):
                return
        except DiffuRecError:
            pass
        time.sleep(0.25)
    raise DiffuRecError(
        f"Prometheus {monitoring.prometheus} did not scrape the Pushgateway {monitoring.pushgateway} "
        f"within {READY_TIMEOUT_SECONDS:.0f} s (log: {monitoring.folder}/prometheus.log; or run with "
        "--no-monitoring)"
    )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on HOST:port (/proc/net/tcp); None without /proc."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    address = "".join(f"{int(part):02X}" for part in reversed(HOST.split("."))) + f":{port:04X}"
    return {fields[9] for fields in map(str.split, lines) if fields[1] == address and fields[3] == "0A"}


def _owns_port(pid: int, port: int) -> bool:
    """True when process `pid` itself listens on HOST:port, not some other server."""
    inodes = _listening_inodes(port)
    if inodes is None:  # no /proc: trust that the process is alive
        return True
    try:
        links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:
        return False
    return any(f"socket:[{inode}]" in links for inode in inodes)


def _alive(server: Server) -> bool:
    if server.process is not None:
        return server.process.poll() is None
    try:
        os.kill(server.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) is gone too
        return Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(server: Server, timeout: float) -> bool:
    if server.process is not None:
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while _alive(server):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _interrupt_on_sigterm() -> Any:
    """Make SIGTERM raise KeyboardInterrupt (so `finally` blocks stop the servers); returns the
    previous handler, or None outside the main thread (where handlers cannot be set)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        return None


# ---- a pair kept by an earlier run ----------------------------------------------------------


def _write_state(monitoring: Monitoring) -> None:
    """runs/monitoring/servers.json: the servers, the run that started them, whether it keeps them."""
    assert monitoring.folder is not None
    state: dict[str, Any] = {"owner": os.getpid(), "keep": monitoring.keep}
    for server in monitoring.servers:
        state[server.name] = {"pid": server.pid, "port": server.port, "log": str(server.log)}
    (monitoring.folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _earlier_servers(folder: Path) -> tuple[Monitoring, bool, bool] | None:
    """(the servers runs/monitoring/servers.json names that still run from `folder`, whether the
    run that started them still runs, whether both answer); None without such a file."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        named = [
            Server(name=name, pid=int(entry["pid"]), port=int(entry["port"]), log=Path(entry["log"]))
            for name in ("Pushgateway", "Prometheus")
            if (entry := state.get(name))
        ]
        owner, keep = int(state["owner"]), bool(state["keep"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    ports = {server.name: server.port for server in named}
    monitoring = Monitoring(
        pushgateway=f"{HOST}:{ports['Pushgateway']}" if "Pushgateway" in ports else None,
        prometheus=f"http://{HOST}:{ports['Prometheus']}" if "Prometheus" in ports else None,
        folder=folder,
        servers=[server for server in named if _started_from(server.pid, folder)],  # not recycled PIDs
        reused=True,
        keep=keep,
    )
    answering = len(monitoring.servers) == 2 and all(
        _owns_port(server.pid, server.port) and _ready(f"http://{HOST}:{server.port}/-/ready")
        for server in monitoring.servers
    )
    owner_running = _alive(Server(name="owner", pid=owner, port=0, log=folder))
    return monitoring, owner_running, answering


def _started_from(pid: int, folder: Path) -> bool:
    """True when process `pid` runs with its files in `folder` (not a recycled PID)."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    # e.g. --config.file=FOLDER/prometheus.yml (not FOLDER-other/..., another run's folder)
    return any(f"={folder}{os.sep}" in argument for argument in arguments)


# ---- what a run ends with -----------------------------------------------------------------


class SeriesLine(NamedTuple):
    title: str  # what it is, in words
    promql: str  # the query (to paste into Prometheus's UI)
    said: list[str]  # the answer, in words: one item per series


def wait_for_scrape(monitoring: Monitoring, since: float, timeout: float = 10.0) -> bool:
    """Wait until Prometheus has scraped the Pushgateway after Unix time `since` (the end of
    the last step), so the summary shows the last pushes; False when it did not in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = monitoring.query('max(timestamp(up{job="pushgateway"}))')
        except DiffuRecError:
            result = []
        if result and result[0].value >= since:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def key_series(
    monitoring: Monitoring, pipeline: str, candidate: str, run: str | None = None, since: float | None = None
) -> list[SeriesLine]:
    """What Prometheus says about the series a run of `pipeline` ends with: every step's last
    outcome in the order they ran (marked when an earlier run than `run` pushed it, e.g. a
    stage DVC skipped), HR@10 / NDCG@10 per evaluated model (`candidate` first), the gate, the
    champion's version and the firing alerts. Prometheus not answering is one line."""
    if since is not None:
        wait_for_scrape(monitoring, since)
    group = f'job="diffurec",pipeline="{pipeline}"'
    queries = {
        "steps": f"diffurec_step_success{{{group}}}",
        "ended": f"diffurec_step_last_run_timestamp_seconds{{{group}}}",
        "quality": f'{{__name__=~"diffurec_(hr|ndcg)",{group},step="evaluate",k="10"}}',
        "gate": f'diffurec_gate_passed{{{group},step="gate"}}',
        "champion": f"diffurec_champion_version{{{group}}}",
        # about this pipeline, or about none (the absent() guards)
        "alerts": f'ALERTS{{alertstate="firing",pipeline=~"{pipeline}|"}}',
    }
    try:
        found = {name: monitoring.query(promql) for name, promql in queries.items()}
    except DiffuRecError as error:
        return [SeriesLine("Prometheus", "", [str(error)])]

    # A restarted Prometheus still finds the series of its previous process (another `run`
    # label) for its lookback window: per group, only the run that pushed last counts.
    latest: dict[str, tuple[float, str]] = {}  # step(model) -> (end time, run)
    for sample in found["ended"]:
        if sample.value >= latest.get(_step_name(sample.labels), (-math.inf, ""))[0]:
            latest[_step_name(sample.labels)] = (sample.value, sample.labels.get("run", ""))
    found = {
        name: [
            sample
            for sample in samples
            if name == "alerts"
            or latest.get(_step_name(sample.labels), (0.0, sample.labels.get("run", "")))[1]
            == sample.labels.get("run", "")
        ]
        for name, samples in found.items()
    }
    steps = []
    for sample in sorted(found["steps"], key=lambda sample: latest.get(_step_name(sample.labels), (0.0,))[0]):
        earlier = run is not None and sample.labels.get("run", "") != run
        outcome = "ok" if sample.value == 1 else "FAILED"
        steps.append(f"{_step_name(sample.labels)} {outcome}{' (earlier run)' if earlier else ''}")
    quality: dict[str, dict[str, str]] = {}  # model -> {"diffurec_hr": "8.17", "diffurec_ndcg": ...}
    for sample in found["quality"]:
        quality.setdefault(sample.labels.get("model", ""), {})[sample.labels["__name__"]] = _number(sample)
    evaluated = sorted(quality, key=lambda model: (model != candidate, model))
    gates = [
        ("passed" if sample.value == 1 else "rejected")
        + (f" (version {sample.labels['version']})" if sample.labels.get("version") else "")
        for sample in found["gate"]
    ]
    return [
        SeriesLine("steps", queries["steps"], steps or ["none pushed"]),
        SeriesLine(
            "HR@10 / NDCG@10",
            queries["quality"],
            [
                f"{model} HR@10 {quality[model].get('diffurec_hr', '?')} "
                f"NDCG@10 {quality[model].get('diffurec_ndcg', '?')}"
                for model in evaluated
            ]
            or ["none pushed"],
        ),
        SeriesLine("gate", queries["gate"], gates or ["none pushed"]),
        SeriesLine(
            "champion version",
            queries["champion"],
            [_number(sample) for sample in found["champion"]] or ["none pushed"],
        ),
        SeriesLine(
            "firing alerts",
            queries["alerts"],
            sorted({sample.labels.get("alertname", "?") for sample in found["alerts"]}) or ["none"],
        ),
    ]


def _number(sample: Sample) -> str:
    """A sample's value for people: whole numbers without decimals, others with two."""
    return f"{sample.value:g}" if sample.value.is_integer() else f"{sample.value:.2f}"


def _step_name(labels: dict[str, str]) -> str:
    model = labels.get("model", "any")
    return labels.get("step", "?") + ("" if model in ("any", "") else f"({model})")


def describe(monitoring: Monitoring) -> str:
    """One line: where Prometheus and the Pushgateway are."""
    folder = monitoring.folder
    if folder is not None and folder.is_relative_to(Path.cwd()):
        folder = folder.relative_to(Path.cwd())
    where = f" (data in {folder})" if monitoring.started or monitoring.reused else ""
    return f"Prometheus {monitoring.prometheus or '(not set)'}, Pushgateway {monitoring.pushgateway}{where}"
