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

import json
import os
import urllib.parse
from dataclasses import dataclass

from diffurec import net
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
    target = urllib.parse.urlunsplit((base.scheme, base.netloc, "", "", "")) + path
    try:
        status, _, body = net.http_request(
            "GET", target, headers={"Accept": "application/json"}, deadline_s=deadline_seconds
        )
    except net.NetworkError as error:
        if error.timed_out:
            raise PrometheusUnavailable(
                f"Prometheus {url}: no answer within {deadline_seconds:g} s"
            ) from None
        raise PrometheusUnavailable(f"Prometheus {url}: {error.reason}") from None
    return status, body


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


def _first_line(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else ""
