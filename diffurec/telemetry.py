"""Prometheus metrics for every step, in one place (the contract: monitoring/README.md, "Series").

`report_step` is called by the command line after every subcommand. It replaces (HTTP PUT) one
Pushgateway group at $DIFFUREC_PUSHGATEWAY (host:port) per (pipeline, model, step), so a group
always describes the latest run of that step and a success clears an earlier failure:

    grouping key   job="diffurec", pipeline ($DIFFUREC_PIPELINE, default "diffurec"),
                   model (the architecture for train/evaluate/recommend, else "any"),
                   step ($DIFFUREC_STEP, else the command's step name)
    on every series run ($DIFFUREC_RUN_ID), dataset ($DIFFUREC_DATASET, else the handler's),
                   version (the registered model version when the step knows it), each "" when
                   unknown, and the handler's other labels (suite, format, runner)

    diffurec_step_success                            1 or 0
    diffurec_step_duration_seconds                   how long the step took
    diffurec_step_last_run_timestamp_seconds         when it ended
    diffurec_step_last_success_timestamp_seconds     carried forward from the group's previous
    diffurec_step_last_failure_timestamp_seconds     push (read back first); 0 when never
    diffurec_<gauge>                                 every gauge the handler returned; a name
                                                     ending in @K (HR@10) becomes diffurec_hr{k="10"}

Without $DIFFUREC_PUSHGATEWAY steps run and say once that nothing was pushed; a Pushgateway
that does not answer costs a warning, never the step.

A long training run can also be scraped directly: with $DIFFUREC_METRICS_PORT set, the first
`training_progress(...)` call (the trainer makes one per epoch, on rank 0) starts a /metrics
endpoint on that port (address $DIFFUREC_METRICS_ADDRESS, default 127.0.0.1).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from diffurec import net

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

JOB = "diffurec"
DEFAULT_PIPELINE = "diffurec"
ANY_MODEL = "any"  # the model label of steps that are not about one architecture
PIPELINE_ENV = "DIFFUREC_PIPELINE"
STEP_ENV = "DIFFUREC_STEP"
# Labels on every series of a push (not in the grouping key); "" when unknown.
RUN_ENV = "DIFFUREC_RUN_ID"
DATASET_ENV = "DIFFUREC_DATASET"
SERIES_LABELS = ("run", "dataset", "version")
LAST_SUCCESS = "diffurec_step_last_success_timestamp_seconds"
LAST_FAILURE = "diffurec_step_last_failure_timestamp_seconds"
# The whole report (reading the group back, then the push) ends within this, however slowly
# the Pushgateway answers.
PUSH_TIMEOUT_SECONDS = 5.0
_warned = False
_progress_gauges: dict[str, Any] = {}
_metrics_server_tried = False


def gateway_address() -> str | None:
    return os.environ.get("DIFFUREC_PUSHGATEWAY") or None


def grouping_key(step: str, labels: dict[str, Any] | None = None) -> dict[str, str]:
    """The Pushgateway group of a step (job aside): pipeline, model and step."""
    model = (labels or {}).get("model")
    return {
        "pipeline": os.environ.get(PIPELINE_ENV) or DEFAULT_PIPELINE,
        "model": str(model) if model not in (None, "") else ANY_MODEL,
        "step": os.environ.get(STEP_ENV) or step,
    }


def series_labels(labels: dict[str, Any] | None = None) -> dict[str, str]:
    """The labels on every series of a push: run, dataset, version, then the handler's others."""
    given = {_label_name(name): str(value) for name, value in (labels or {}).items() if value is not None}
    merged = {
        "run": os.environ.get(RUN_ENV, ""),
        "dataset": os.environ.get(DATASET_ENV) or given.get("dataset", ""),
        "version": given.get("version", ""),
    }
    for name, value in given.items():
        if name not in merged and name not in ("model", "step", "pipeline", "job", "k"):
            merged[name] = value
    return merged


def metric_for(gauge: str) -> tuple[str, dict[str, str]]:
    """Map a handler's gauge name to (Prometheus metric name, extra labels)."""
    extra = {}
    match = re.fullmatch(r"(.+)@(\d+)", gauge)
    if match:
        gauge, extra["k"] = match.group(1), match.group(2)
    name = re.sub(r"[^a-zA-Z0-9_]", "_", gauge).strip("_").lower()
    return f"diffurec_{name}", extra


def build_registry(
    seconds: float,
    succeeded: bool,
    gauges: dict[str, Any],
    labels: dict[str, str],
    previous: dict[str, float] | None = None,
    now: float | None = None,
) -> CollectorRegistry:
    """A CollectorRegistry holding what `report_step` pushes for one step: every series carries
    `labels`; the last success/failure times come from `previous` (the group's last push) unless
    this run sets one."""
    from prometheus_client import CollectorRegistry, Gauge

    now = time.time() if now is None else now
    previous = previous or {}
    registry = CollectorRegistry()
    names = sorted(labels)
    step_series = {
        "diffurec_step_success": (
            "1 if the last run of the step succeeded, else 0",
            1.0 if succeeded else 0.0,
        ),
        "diffurec_step_duration_seconds": ("Wall time of the last run of the step", seconds),
        "diffurec_step_last_run_timestamp_seconds": ("Unix time the step last ended", now),
        LAST_SUCCESS: (
            "Unix time the step last ended successfully (0: never)",
            now if succeeded else previous.get(LAST_SUCCESS, 0.0),
        ),
        LAST_FAILURE: (
            "Unix time the step last failed (0: never)",
            previous.get(LAST_FAILURE, 0.0) if succeeded else now,
        ),
    }
    for metric, (help_text, value) in step_series.items():
        Gauge(metric, help_text, labelnames=names, registry=registry).labels(**labels).set(value)
    by_metric: dict[str, list[tuple[dict[str, str], float, str]]] = {}
    for gauge, value in (gauges or {}).items():
        if value is None:
            continue
        metric, extra = metric_for(gauge)
        by_metric.setdefault(metric, []).append((extra, float(value), gauge))
    for metric, samples in sorted(by_metric.items()):
        extra_names = sorted({name for extra, _, _ in samples for name in extra})
        help_text = "diffurec gauge " + ", ".join(sorted(gauge for _, _, gauge in samples))
        family = Gauge(metric, help_text, labelnames=names + extra_names, registry=registry)
        for extra, value, _ in samples:
            family.labels(**labels, **{name: extra.get(name, "") for name in extra_names}).set(value)
    return registry


def previous_values(
    address: str, key: dict[str, str], deadline_s: float = PUSH_TIMEOUT_SECONDS
) -> dict[str, float]:
    """The carried-forward series of a group as the Pushgateway holds them now ({} when it has no
    such group), read from its API (/api/v1/metrics) within `deadline_s`."""
    base = address if "://" in address else f"http://{address}"
    url = f"{base.rstrip('/')}/api/v1/metrics"
    status, _, body = net.http_request(
        "GET", url, headers={"Accept": "application/json"}, deadline_s=deadline_s
    )
    if status != 200:
        raise net.NetworkError(url, f"HTTP {status}")
    groups = json.loads(body).get("data") or []
    wanted = {"job": JOB, **key}
    for group in groups:
        if group.get("labels") != wanted:
            continue
        values = {}
        for metric in (LAST_SUCCESS, LAST_FAILURE):
            samples = (group.get(metric) or {}).get("metrics") or []
            if samples:
                value = float(samples[0]["value"])
                values[metric] = value if math.isfinite(value) else 0.0
        return values
    return {}


def report_step(
    step: str, seconds: float, succeeded: bool, gauges: dict[str, Any], labels: dict[str, Any]
) -> None:
    """Replace the step's Pushgateway group with this run's outcome and gauges, if a Pushgateway
    is configured. `labels` are the handler's: model (train/evaluate/recommend), dataset,
    version and any others."""
    global _warned
    address = gateway_address()
    if not address:
        if not _warned:
            log.info("metrics not pushed: DIFFUREC_PUSHGATEWAY is not set")
            _warned = True
        return
    from prometheus_client import push_to_gateway

    key = grouping_key(step, labels)
    stop = time.monotonic() + PUSH_TIMEOUT_SECONDS
    try:
        registry = build_registry(
            seconds,
            succeeded,
            gauges,
            series_labels(labels),
            previous_values(address, key, stop - time.monotonic()),
        )
        push_to_gateway(
            address,
            job=JOB,
            registry=registry,
            grouping_key=key,
            timeout=PUSH_TIMEOUT_SECONDS,
            handler=_push_handler(stop),
        )
        log.debug("pushed %s metrics to %s %s", step, address, key)
    except Exception as error:  # the step's own result matters more than its metrics
        if isinstance(error, net.NetworkError) and error.timed_out:  # said of the whole report
            reason = f"{net.deadline_message(PUSH_TIMEOUT_SECONDS)} (reading the group back and pushing)"
        else:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.warning("metrics not pushed to %s: %s", address, reason)


def _push_handler(stop: float) -> Callable[..., Callable[[], None]]:
    """prometheus_client's push handler, sending through net.http_request by `stop` (monotonic)."""

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        def send() -> None:
            remaining = stop - time.monotonic()
            if remaining <= 0:
                raise net.NetworkError(url, net.deadline_message(PUSH_TIMEOUT_SECONDS), timed_out=True)
            status, _, body = net.http_request(
                method, url, data=data, headers=dict(headers), deadline_s=remaining
            )
            if status >= 400:
                raise net.NetworkError(url, f"HTTP {status} {body[:200].decode('utf-8', 'replace').strip()}")

        return send

    return handler


def _label_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", str(name)).lower()


def start_metrics_server(port: int, address: str = "127.0.0.1") -> None:
    """Serve /metrics (the default registry: progress gauges, process metrics) in a thread."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=address)
    log.info("serving /metrics on http://%s:%d/metrics", address, port)


def training_progress(epoch: int, loss: float, samples_per_second: float, **labels: str) -> None:
    """Update the /metrics gauges of a running training; the first call starts the endpoint
    when $DIFFUREC_METRICS_PORT is set."""
    global _metrics_server_tried
    from prometheus_client import Gauge

    port = os.environ.get("DIFFUREC_METRICS_PORT")
    if port and not _metrics_server_tried:
        _metrics_server_tried = True
        try:
            start_metrics_server(int(port), os.environ.get("DIFFUREC_METRICS_ADDRESS", "127.0.0.1"))
        except (OSError, ValueError) as error:  # a busy port must not stop the training
            log.warning("no /metrics endpoint on port %s: %s", port, error)
    if not _progress_gauges:
        names = sorted(labels)
        _progress_gauges.update(
            epoch=Gauge("diffurec_training_epoch", "Epochs finished", names),
            loss=Gauge("diffurec_training_loss", "Mean training loss of the last epoch", names),
            throughput=Gauge("diffurec_training_samples_per_second", "Training throughput", names),
        )
    values = {"epoch": epoch, "loss": loss, "throughput": samples_per_second}
    for key, gauge in _progress_gauges.items():
        (gauge.labels(**labels) if labels else gauge).set(values[key])
