"""Prometheus metrics for every step, in one place (see issue 5).

`report_step` is called by the command line after every subcommand. It pushes, to the
Pushgateway at $DIFFUREC_PUSHGATEWAY (host:port), one group per step and labels:

    diffurec_step_duration_seconds           how long the step took
    diffurec_step_success                    1 or 0
    diffurec_step_last_run_timestamp_seconds
    diffurec_step_last_success_timestamp_seconds   (kept when a later run fails)
    diffurec_<gauge>                         every gauge the handler returned; a name ending
                                             in @K (HR@10, candidate_NDCG@10) becomes
                                             diffurec_hr{k="10"}, diffurec_candidate_ndcg{k="10"}

Labels (the Pushgateway grouping key, so each combination is its own group): job="diffurec",
step, and dataset/model/version/run from $DIFFUREC_DATASET, $DIFFUREC_MODEL,
$DIFFUREC_MODEL_VERSION, $DIFFUREC_RUN_ID, overridden by the handler's labels. Unset labels
are left out. Without $DIFFUREC_PUSHGATEWAY steps run and say once that nothing was pushed; a
Pushgateway that does not answer costs a warning, never the step.

A long training run can also be scraped directly: with $DIFFUREC_METRICS_PORT set, the first
`training_progress(...)` call (the trainer makes one per epoch, on rank 0) starts a /metrics
endpoint on that port (address $DIFFUREC_METRICS_ADDRESS, default 127.0.0.1).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

JOB = "diffurec"
LABEL_ENV = {
    "dataset": "DIFFUREC_DATASET",
    "model": "DIFFUREC_MODEL",
    "version": "DIFFUREC_MODEL_VERSION",
    "run": "DIFFUREC_RUN_ID",
}
PUSH_TIMEOUT_SECONDS = 5.0
_warned = False
_progress_gauges: dict = {}
_metrics_server_tried = False


def gateway_address() -> str | None:
    return os.environ.get("DIFFUREC_PUSHGATEWAY") or None


def step_labels(step: str, labels: dict | None = None) -> dict:
    """The grouping key of a step: job-level labels from the environment, then the handler's."""
    merged = {name: os.environ[env] for name, env in LABEL_ENV.items() if os.environ.get(env)}
    for name, value in (labels or {}).items():
        if value is not None and str(value) != "":
            merged[_label_name(name)] = str(value)
    merged["step"] = step
    return merged


def metric_for(gauge: str) -> tuple[str, dict]:
    """Map a handler's gauge name to (Prometheus metric name, extra labels)."""
    extra = {}
    match = re.fullmatch(r"(.+)@(\d+)", gauge)
    if match:
        gauge, extra["k"] = match.group(1), match.group(2)
    name = re.sub(r"[^a-zA-Z0-9_]", "_", gauge).strip("_").lower()
    return f"diffurec_{name}", extra


def build_registry(
    step: str, seconds: float, succeeded: bool, gauges: dict, now: float | None = None
) -> CollectorRegistry:
    """A CollectorRegistry holding what `report_step` pushes for one step."""
    from prometheus_client import CollectorRegistry, Gauge

    now = time.time() if now is None else now
    registry = CollectorRegistry()
    Gauge("diffurec_step_duration_seconds", "Wall time of the last run of the step", registry=registry).set(
        seconds
    )
    Gauge("diffurec_step_success", "1 if the last run of the step succeeded, else 0", registry=registry).set(
        1 if succeeded else 0
    )
    Gauge("diffurec_step_last_run_timestamp_seconds", "Unix time the step last ended", registry=registry).set(
        now
    )
    if succeeded:
        Gauge(
            "diffurec_step_last_success_timestamp_seconds",
            "Unix time the step last ended successfully",
            registry=registry,
        ).set(now)
    by_metric: dict[str, list] = {}
    for gauge, value in (gauges or {}).items():
        if value is None:
            continue
        metric, extra = metric_for(gauge)
        by_metric.setdefault(metric, []).append((extra, float(value), gauge))
    for metric, samples in sorted(by_metric.items()):
        labelnames = sorted({name for extra, _, _ in samples for name in extra})
        help_text = "diffurec gauge " + ", ".join(sorted(gauge for _, _, gauge in samples))
        gauge = Gauge(metric, help_text, labelnames=labelnames, registry=registry)
        for extra, value, _ in samples:
            (gauge.labels(**{name: extra.get(name, "") for name in labelnames}) if labelnames else gauge).set(
                value
            )
    return registry


def report_step(step: str, seconds: float, succeeded: bool, gauges: dict, labels: dict) -> None:
    """Push one step's duration, outcome and gauges to the Pushgateway, if one is configured."""
    global _warned
    address = gateway_address()
    if not address:
        if not _warned:
            log.info("metrics not pushed: DIFFUREC_PUSHGATEWAY is not set")
            _warned = True
        return
    from prometheus_client import pushadd_to_gateway

    grouping = step_labels(step, labels)
    grouping.pop("job", None)
    try:
        registry = build_registry(step, seconds, succeeded, gauges)
        # pushadd (POST) replaces only the metrics pushed now, so a failed run keeps the
        # group's last_success timestamp (the "no successful retraining" alert needs it).
        pushadd_to_gateway(
            address, job=JOB, registry=registry, grouping_key=grouping, timeout=PUSH_TIMEOUT_SECONDS
        )
        log.debug("pushed %s metrics to %s %s", step, address, grouping)
    except Exception as error:  # the step's own result matters more than its metrics
        log.warning(
            "metrics not pushed to %s: %s", address, str(error).splitlines()[0] if str(error) else error
        )


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
