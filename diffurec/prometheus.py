"""A small client for Prometheus's HTTP query API (instant queries), for the promotion gate.

`instant_query(url, promql, deadline_seconds)` asks `GET <url>/api/v1/query` and returns the
samples of the answer (an instant vector, or a scalar as one sample without labels). The
deadline bounds the whole call (connect, send, every read), so a server that accepts the
connection and then answers slowly or never costs at most `deadline_seconds`; a plain socket
timeout would restart with every byte received.

Failures are DiffuRecErrors in two kinds, because the gate treats them differently:
- PrometheusUnavailable: no usable answer (refused, unknown host, deadline passed, an HTTP error
  or a body that is not Prometheus's JSON, or an error Prometheus reports about itself:
  timeout, unavailable, internal...). `diffurec gate --allow-unreachable-prometheus` may go on.
- PrometheusQueryError: Prometheus answered that the query is wrong (errorType bad_data): a
  mistake in params.yaml, never skipped.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

from diffurec.errors import DiffuRecError

URL_ENV = "DIFFUREC_PROMETHEUS"  # the settings ConfigMap key; locally the same variable
DEFAULT_DEADLINE_SECONDS = 10.0
QUERY_PATH = "/api/v1/query"


class PrometheusUnavailable(DiffuRecError):
    """Prometheus could not be reached or gave no usable answer."""


class PrometheusQueryError(DiffuRecError):
    """Prometheus rejected the query itself (bad PromQL)."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float  # may be NaN or +-Inf, as Prometheus answered


def resolve_url(url: str | None) -> str | None:
    """The Prometheus base URL: `url`, else $DIFFUREC_PROMETHEUS, else None."""
    return url or os.environ.get(URL_ENV) or None


def instant_query(url: str, promql: str, deadline_seconds: float = DEFAULT_DEADLINE_SECONDS) -> list[Sample]:
    """Evaluate `promql` now; the samples of the instant vector (one sample for a scalar)."""
    base = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if base.scheme not in ("http", "https") or not base.hostname:
        raise DiffuRecError(f"Prometheus URL {url!r}: expected http(s)://host:port")
    path = base.path.rstrip("/") + QUERY_PATH + "?" + urllib.parse.urlencode({"query": promql})
    status, body = _get(base, path, deadline_seconds, url)
    try:
        answer = json.loads(body)
    except ValueError:
        raise PrometheusUnavailable(
            f"Prometheus {url}: HTTP {status}, not a Prometheus API answer ({_first_line(body)})"
        ) from None
    if not isinstance(answer, dict) or answer.get("status") not in ("success", "error"):
        raise PrometheusUnavailable(f"Prometheus {url}: HTTP {status}, not a Prometheus API answer")
    if answer["status"] == "error":
        error_type, error = answer.get("errorType"), _first_line(str(answer.get("error")))
        kind = PrometheusQueryError if error_type == "bad_data" else PrometheusUnavailable
        raise kind(f"Prometheus {url}: {error_type} error for query {promql!r}: {error}")
    return _samples(answer.get("data"), url, promql)


def _get(base: urllib.parse.SplitResult, path: str, deadline_seconds: float, url: str) -> tuple[int, bytes]:
    """GET `path`; (HTTP status, body), all within `deadline_seconds`."""
    connection_type = http.client.HTTPSConnection if base.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(base.hostname or "", base.port, timeout=deadline_seconds)
    # A socket timeout restarts with every byte: a watchdog shuts the socket at the deadline.
    watchdog = threading.Timer(deadline_seconds, _shut, args=(connection,))
    watchdog.daemon = True
    started = time.monotonic()
    watchdog.start()
    try:
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read()
        if time.monotonic() - started < deadline_seconds:
            return response.status, body
    except (OSError, http.client.HTTPException) as error:
        if time.monotonic() - started < deadline_seconds and not isinstance(error, TimeoutError):
            raise PrometheusUnavailable(f"Prometheus {url}: cannot be reached ({_describe(error)})") from None
    finally:
        watchdog.cancel()
        connection.close()
    raise PrometheusUnavailable(f"Prometheus {url}: no answer within {deadline_seconds:g} s")


def _shut(connection: http.client.HTTPConnection) -> None:
    if connection.sock is not None:
        try:
            connection.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _samples(data: object, url: str, promql: str) -> list[Sample]:
    if not isinstance(data, dict):
        raise PrometheusUnavailable(f"Prometheus {url}: answer without `data` for query {promql!r}")
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "scalar":
            assert isinstance(result, list)
            return [Sample({}, _value(result[1]))]
        if kind == "vector":
            assert isinstance(result, list)
            return [Sample(dict(item["metric"]), _value(item["value"][1])) for item in result]
    except (AssertionError, LookupError, TypeError, ValueError):
        raise PrometheusUnavailable(
            f"Prometheus {url}: malformed {kind} answer for query {promql!r}"
        ) from None
    raise PrometheusQueryError(
        f"Prometheus {url}: query {promql!r} gives a {kind}, expected an instant vector or a scalar"
    )


def _value(text: object) -> float:
    return float(str(text))  # Prometheus writes numbers as strings: "1", "NaN", "+Inf"


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"unknown host: {error.strerror}"
    text = _first_line(str(error))
    return text or type(error).__name__


def _first_line(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else ""
