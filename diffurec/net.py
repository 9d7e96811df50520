"""Network calls with a total deadline.

A socket timeout bounds each wait for one byte, so a server that accepts the connection and
then trickles a byte every few seconds (or answers the headers and stalls) holds a plain
urllib call forever. Everything here bounds the whole call instead:

    http_request(method, url, deadline_s=...)   one HTTP exchange -> (status, headers, body)
    download(url, target, deadline_s=...)       a GET streamed into a file
    call_with_deadline(seconds, what, fn, ...)  any library's calls (MLflow's requests): the
                                                main thread is interrupted at the deadline
                                                (SIGALRM); other threads stop waiting for it

Failures are NetworkErrors (DiffuRecErrors) with one line naming the URL: `timed_out` tells a
deadline that passed from a server that cannot be reached or answered badly. Proxies from the
environment (http_proxy, https_proxy, no_proxy) are honoured, as urllib does.
"""

from __future__ import annotations

import http.client
import math
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from diffurec.errors import DiffuRecError

CHUNK_BYTES = 1 << 16
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
# After a deadline fires, it fires again this often until the code has left the deadline:
# library code that catches every exception (and retries) cannot swallow it for good.
REFIRE_SECONDS = 1.0

T = TypeVar("T")


class NetworkError(DiffuRecError):
    """A network call that failed; `reason` is the message without the URL."""

    def __init__(self, where: str, reason: str, timed_out: bool = False) -> None:
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.timed_out = timed_out


def deadline_message(seconds: float) -> str:
    return f"no complete answer within {round(seconds, 2):g} s"


def http_request(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    deadline_s: float,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange (redirects followed for GET/HEAD), all of it within `deadline_s`:
    (status, response headers, body). HTTP error statuses are returned, not raised."""
    chunks: list[bytes] = []
    status, reply_headers = _exchange(method, url, data, headers or {}, deadline_s, chunks.append)
    return status, reply_headers, b"".join(chunks)


def download(url: str, target: str | Path, *, deadline_s: float, progress: str | None = None) -> int:
    """GET `url` into the file `target` within `deadline_s` (streamed, a tqdm bar named
    `progress` when given); the number of bytes written. A status other than 200 raises."""
    from tqdm import tqdm

    with (
        open(target, "wb") as handle,
        tqdm(
            unit="B", unit_scale=True, desc=progress, disable=None if progress else True, leave=False
        ) as bar,
    ):

        def write(block: bytes) -> None:
            handle.write(block)
            bar.update(len(block))

        _exchange("GET", url, None, {}, deadline_s, write, want_ok=True)
    return Path(target).stat().st_size


def _exchange(
    method: str,
    url: str,
    data: bytes | None,
    headers: dict[str, str],
    deadline_s: float,
    sink: Callable[[bytes], object],
    want_ok: bool = False,
) -> tuple[int, dict[str, str]]:
    if not (math.isfinite(deadline_s) and deadline_s > 0):
        raise DiffuRecError(f"{url}: deadline must be seconds > 0, got {deadline_s!r}")
    stop = time.monotonic() + deadline_s
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DiffuRecError(f"{url}: expected an http(s)://host[:port]/... URL")
        connection, target = _connection(parts, stop - time.monotonic())
        # A socket timeout restarts with every byte: a watchdog shuts the socket at the deadline.
        watchdog = threading.Timer(max(stop - time.monotonic(), 0.0), _shut, args=(connection,))
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.request(method, target, body=data, headers={"User-Agent": "diffurec", **headers})
            response = connection.getresponse()
            location = response.getheader("Location")
            if response.status in REDIRECTS and location and method in ("GET", "HEAD"):
                url = urllib.parse.urljoin(url, location)
                continue
            if want_ok and response.status != 200:
                raise NetworkError(url, f"HTTP {response.status} {response.reason}")
            while block := _read_some(connection, response, stop):
                sink(block)
            if time.monotonic() >= stop:
                raise NetworkError(url, deadline_message(deadline_s), timed_out=True)
            if response.length:  # the server closed before the Content-Length it announced
                raise NetworkError(url, f"answer cut short ({response.length} bytes missing)")
            return response.status, dict(response.getheaders())
        except (OSError, http.client.HTTPException) as error:
            if isinstance(error, TimeoutError) or time.monotonic() >= stop:
                raise NetworkError(url, deadline_message(deadline_s), timed_out=True) from None
            raise NetworkError(url, f"cannot be reached ({describe(error)})") from None
        finally:
            watchdog.cancel()
            connection.close()
    raise NetworkError(url, f"more than {MAX_REDIRECTS} redirects")


def _connection(parts: urllib.parse.SplitResult, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for the URL (through the environment's proxy when one applies) and the
    request target to send on it."""
    timeout = max(timeout, 1e-3)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host, port = parts.hostname or "", parts.port
    https = parts.scheme == "https"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if https:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                proxied.hostname or "", proxied.port or 8080, timeout=timeout
            )
            connection.set_tunnel(host, port or 443)
            return connection, path
        return http.client.HTTPConnection(proxied.hostname or "", proxied.port or 8080, timeout=timeout), (
            urllib.parse.urlunsplit(parts._replace(fragment=""))
        )
    if https:
        return http.client.HTTPSConnection(host, port, timeout=timeout), path
    return http.client.HTTPConnection(host, port, timeout=timeout), path


def _read_some(
    connection: http.client.HTTPConnection, response: http.client.HTTPResponse, stop: float
) -> bytes:
    """What the server sent next (b"" at the end), waiting at most until `stop`."""
    remaining = stop - time.monotonic()
    if remaining <= 0:
        return b""
    if connection.sock is not None:
        connection.sock.settimeout(remaining)
    return response.read1(CHUNK_BYTES)


def _shut(connection: http.client.HTTPConnection) -> None:
    if connection.sock is not None:
        try:
            connection.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def describe(error: BaseException) -> str:
    """A short reason for a failed connection: "connection refused", "unknown host: ..."."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"unknown host: {error.strerror}"
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


# --- a deadline around code that is not ours ------------------------------------------------

# (monotonic stop time, message) of every deadline open in the main thread, outermost first.
_open: list[tuple[float, str]] = []


class DeadlineExceeded(NetworkError):
    """A call_with_deadline that ran out of time."""


def _arm() -> None:
    stop, _ = min(_open)
    signal.setitimer(signal.ITIMER_REAL, max(stop - time.monotonic(), 1e-3), REFIRE_SECONDS)


def _on_alarm(signum: int, frame: object) -> None:
    if not _open or time.monotonic() < min(_open)[0]:  # a late or foreign alarm
        return
    _, message = min(_open)
    where, _, reason = message.partition(": ")
    raise DeadlineExceeded(where, reason, timed_out=True)


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Interrupt the code inside (main thread only) when `seconds` have passed, with a
    DeadlineExceeded "<what>: no complete answer within N s"; nested deadlines keep the
    earliest stop. In another thread this does nothing: use call_with_deadline there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not (math.isfinite(seconds) and seconds > 0):
        raise DiffuRecError(f"{what}: deadline must be seconds > 0, got {seconds!r}")
    entry = (time.monotonic() + seconds, f"{what}: {deadline_message(seconds)}")
    previous_handler = signal.signal(signal.SIGALRM, _on_alarm) if not _open else None
    _open.append(entry)
    _arm()
    try:
        yield
    except DeadlineExceeded:
        raise
    except BaseException as error:
        # Libraries wrap what they catch (MLflow: "API request failed with exception ...").
        if time.monotonic() >= min(_open)[0]:
            _, message = min(_open)
            where, _, reason = message.partition(": ")
            raise DeadlineExceeded(where, reason, timed_out=True) from error
        raise
    finally:
        try:
            _close(entry, previous_handler)
        except DeadlineExceeded:  # the alarm fired during the clean-up: finish it
            _close(entry, previous_handler)
            raise


def _close(entry: tuple[float, str], previous_handler: Any) -> None:
    # Blocked, a due alarm waits for the next deadline's handler (which ignores it if early).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    signal.setitimer(signal.ITIMER_REAL, 0)
    if entry in _open:
        _open.remove(entry)
    if _open:
        _arm()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    if not _open:
        signal.signal(signal.SIGALRM, previous_handler or signal.SIG_DFL)


def call_with_deadline(seconds: float, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs), or a DeadlineExceeded once `seconds` have passed. In the main
    thread the call is interrupted; in another thread it is left running in the background
    (a daemon thread) and its result dropped."""
    if threading.current_thread() is threading.main_thread():
        with deadline(seconds, what):
            return fn(*args, **kwargs)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True, name=f"deadline: {what}")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DeadlineExceeded(what, deadline_message(seconds), timed_out=True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class WithDeadlines:
    """A proxy whose every method call runs under call_with_deadline(seconds, what, ...): for a
    client object from another library (MLflow's) that has no total deadline of its own."""

    def __init__(self, inner: Any, seconds: float, what: str) -> None:
        self.inner, self.seconds, self.what = inner, seconds, what

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return call_with_deadline(self.seconds, self.what, attribute, *args, **kwargs)

        return call


def seconds_from_env(name: str, default: float) -> float:
    """A deadline in seconds from the environment variable `name` (else `default`)."""
    import os

    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise DiffuRecError(f"${name}: expected seconds > 0, got {text!r}")
    return value
