"""Prometheus metrics for every step, in one place (see issue 5).

report_step is called by the command line after every subcommand. Until a Pushgateway is
configured (DIFFUREC_PUSHGATEWAY=host:port) it says once that metrics were not pushed.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_warned = False


def report_step(step: str, seconds: float, succeeded: bool, gauges: dict, labels: dict) -> None:
    global _warned
    if not os.environ.get("DIFFUREC_PUSHGATEWAY"):
        if not _warned:
            log.info("metrics not pushed: DIFFUREC_PUSHGATEWAY is not set")
            _warned = True
        return
    raise NotImplementedError("pushing to a Pushgateway arrives with issue 5")
