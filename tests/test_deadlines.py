"""Every network call has a total deadline (issue 12: "Hangs").

The servers are sockets on 127.0.0.1 in this process: one accepts and never answers, one
trickles its answer one byte every 2 s (a socket timeout restarts with each byte, so only a
total deadline ends it), and, for the push, an HTTP server that answers the Pushgateway's read
API and then trickles the push. Each step must end within its deadline plus a small slack,
with one line that names the URL. The stores that cannot be written (a read-only or locked
sqlite file) are real MLflow stores.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffurec import net, registry, telemetry
from diffurec.cli import main
from diffurec.errors import DiffuRecError

SLACK_SECONDS = 1.5  # thread start-up and a loaded machine


class Listener:
    """A TCP server on 127.0.0.1 that records what it received and answers with `reply`
    (bytes, sent one byte every `pause` seconds; None: never answer)."""

    def __init__(self, reply: bytes | None, pause: float = 2.0, answer_get: bytes | None = None) -> None:
        self.reply, self.pause, self.answer_get = reply, pause, answer_get
        self.requests: list[bytes] = []
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            threading.Thread(target=self._talk, args=(connection,), daemon=True).start()

    def _talk(self, connection: socket.socket) -> None:
        with connection:
            request = self._read_request(connection)
            self.requests.append(request)
            try:
                if self.answer_get is not None and request.startswith(b"GET "):
                    connection.sendall(self.answer_get)
                    return
                if self.reply is None:
                    self.stop.wait()
                    return
                for byte in self.reply:
                    if self.stop.is_set():
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(self.pause)
            except OSError:
                return

    @staticmethod
    def _read_request(connection: socket.socket) -> bytes:
        """The whole request: headers, then Content-Length bytes of body. Answering after a
        partial read would close a socket with unread bytes, which sends the client a reset
        instead of the answer (a CI run on a loaded machine once read "Connection reset")."""
        connection.settimeout(5.0)
        request = b""
        try:
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(65536)
                if not chunk:
                    return request
                request += chunk
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                body += chunk
                request += chunk
        except OSError:
            pass
        return request

    def close(self) -> None:
        self.stop.set()
        self.socket.close()


def http_answer(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


@pytest.fixture
def silent() -> Iterator[Listener]:
    server = Listener(None)
    yield server
    server.close()


@pytest.fixture
def trickling() -> Iterator[Listener]:
    server = Listener(http_answer(b'{"status": "success", "data": []}'))
    yield server
    server.close()


def timed(fn, *args, **kwargs) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        fn(*args, **kwargs)
    except BaseException as error:  # the caller asserts on it
        return time.monotonic() - started, error
    return time.monotonic() - started, None


@pytest.mark.parametrize("server", ["silent", "trickling"])
def test_http_request_ends_at_its_deadline(server, request):
    listener = request.getfixturevalue(server)
    elapsed, error = timed(net.http_request, "GET", f"{listener.url}/x", deadline_s=1.5)
    assert isinstance(error, net.NetworkError) and error.timed_out, error
    assert str(error) == f"{listener.url}/x: no complete answer within 1.5 s"
    assert 1.4 <= elapsed < 1.5 + SLACK_SECONDS, elapsed


def test_http_request_reads_a_whole_answer_and_says_when_nobody_listens(trickling):
    fast = Listener(http_answer(b'{"ok": true}'), pause=0.0)
    try:
        status, headers, body = net.http_request(
            "POST", f"{fast.url}/api", data=b"{}", headers={"X-Test": "1"}, deadline_s=5
        )
        assert (status, json.loads(body), headers["Content-Type"]) == (200, {"ok": True}, "application/json")
        assert fast.requests[0].startswith(b"POST /api HTTP/1.1") and b"X-Test: 1" in fast.requests[0]
    finally:
        fast.close()
    with socket.socket() as probe:  # a port nobody listens on: refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(net.NetworkError, match="cannot be reached \\(connection refused\\)") as error:
        net.http_request("GET", f"http://127.0.0.1:{port}/", deadline_s=5)
    assert not error.value.timed_out


@pytest.mark.parametrize("read_back_answers", [False, True])
def test_a_trickling_pushgateway_costs_a_step_at_most_the_push_deadline(
    read_back_answers, monkeypatch, caplog
):
    """Both calls of a report (reading the group back, then the push) share one deadline."""
    api = http_answer(b'{"status": "success", "data": []}') if read_back_answers else None
    gateway = Listener(http_answer(b""), answer_get=api)
    monkeypatch.setattr(telemetry, "PUSH_TIMEOUT_SECONDS", 1.5)
    monkeypatch.setenv("DIFFUREC_PUSHGATEWAY", f"127.0.0.1:{gateway.port}")
    try:
        with caplog.at_level(logging.WARNING, logger="diffurec.telemetry"):
            elapsed, error = timed(telemetry.report_step, "train", 1.0, True, {"loss": 0.5}, {})
    finally:
        gateway.close()
    assert error is None  # the step's own result matters more than its metrics
    assert elapsed < 1.5 + SLACK_SECONDS, elapsed
    assert "no complete answer within 1.5 s" in caplog.text
    methods = [request.split(b" ", 1)[0] for request in gateway.requests]
    assert methods == ([b"GET", b"PUT"] if read_back_answers else [b"GET"]), methods


def test_a_trickling_download_ends_at_the_fetch_timeout(trickling, tmp_path):
    from diffurec.data.fetch import fetch_dataset

    out = tmp_path / "raw"
    elapsed, error = timed(fetch_dataset, "ml-100k", out, url=f"{trickling.url}/ml-100k.zip", timeout=1.5)
    assert isinstance(error, DiffuRecError), error
    assert str(error) == f"{trickling.url}/ml-100k.zip: download failed: no complete answer within 1.5 s"
    assert elapsed < 1.5 + SLACK_SECONDS, elapsed
    assert not (out / "ml-100k").exists() and not list(out.glob(".*"))


@pytest.mark.parametrize("server", ["silent", "trickling"])
def test_promote_against_a_tracking_server_that_never_answers(server, request, monkeypatch, capsys):
    """MLflow's own client waits 30 s per read and retries; each call here has 2 s in all."""
    listener = request.getfixturevalue(server)
    monkeypatch.setenv(registry.CALL_DEADLINE_ENV, "2")
    import mlflow.tracking  # noqa: F401  (imported before the clock starts: seconds on a busy machine)

    args = ["promote", "--tracking-uri", listener.url, "--version", "1", "--override", "--reason", "drill"]
    started = time.monotonic()
    assert main(args) == 2
    elapsed = time.monotonic() - started
    assert elapsed < 2 + SLACK_SECONDS, elapsed
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.endswith(f"MLflow store {listener.url}: no complete answer within 2 s"), err
    assert listener.requests  # it was asked, and did not answer


def test_a_deadline_interrupts_code_that_is_not_ours_and_nests():
    started = time.monotonic()
    with pytest.raises(net.DeadlineExceeded, match="^outer: no complete answer within 0.5 s$"):
        with net.deadline(0.5, "outer"):
            with net.deadline(5, "inner"):  # the outer one is earlier: it decides
                time.sleep(10)
    assert time.monotonic() - started < 0.5 + SLACK_SECONDS

    # A library that wraps every exception it sees is still stopped, with our line.
    def wrapping() -> None:
        try:
            time.sleep(10)
        except Exception as error:
            raise RuntimeError(f"API request failed with exception {error}") from error

    with pytest.raises(net.DeadlineExceeded, match="^MLflow store x: no complete answer within 0.3 s$"):
        net.call_with_deadline(0.3, "MLflow store x", wrapping)
    # Off the main thread the caller stops waiting at the deadline.
    outcome: list[BaseException] = []

    def worker() -> None:
        try:
            net.call_with_deadline(0.3, "thread", time.sleep, 5)
        except net.DeadlineExceeded as error:
            outcome.append(error)

    thread = threading.Thread(target=worker)
    started = time.monotonic()
    thread.start()
    thread.join(5)
    assert outcome and time.monotonic() - started < 0.3 + SLACK_SECONDS
    assert net.call_with_deadline(1, "quick", lambda: 42) == 42


def sqlite_store(folder: Path) -> tuple[str, Path]:
    """A sqlite MLflow store holding model `rec` with version 1: (URI, database file)."""
    from promotion_models import fresh_tracking_uri

    uri = fresh_tracking_uri(folder)
    client = registry.client(uri)
    client.create_registered_model("rec")
    client.create_model_version("rec", "diffurec:/test-model", await_creation_for=0)
    return uri, Path(uri.removeprefix("sqlite:///"))


def test_a_read_only_store_is_one_line(tmp_path, capsys):
    uri, db = sqlite_store(tmp_path)
    capsys.readouterr()
    # As root, permissions do not stop writes: the immutable attribute does.
    protect = ["chattr", "+i"] if os.geteuid() == 0 else ["chmod", "a-w"]
    unprotect = ["chattr", "-i"] if os.geteuid() == 0 else ["chmod", "u+w"]
    subprocess.run([*protect, str(db), str(db.parent)], check=True)
    try:
        args = ["promote", "--tracking-uri", uri, "--version", "1", "--override", "--reason", "drill"]
        assert main(args) == 2
    finally:
        subprocess.run([*unprotect, str(db.parent), str(db)], check=True)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(db.parent) in err or uri in err, err
    assert registry.get_version("rec", alias="champion", tracking_uri=uri) is None


def test_a_locked_store_is_one_line(tmp_path, capsys):
    uri, db = sqlite_store(tmp_path)
    capsys.readouterr()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        args = ["promote", "--tracking-uri", uri, "--version", "1", "--override", "--reason", "drill"]
        started = time.monotonic()
        assert main(args) == 2
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "database is locked" in err and uri in err, err
    assert elapsed < registry.call_deadline_seconds(), elapsed
    assert registry.get_version("rec", alias="champion", tracking_uri=uri) is None
