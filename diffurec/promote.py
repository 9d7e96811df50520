"""Promotion: move the `champion` alias to a version that passed its gate.

Rules, each one a refusal with a reason when it does not hold:
- the decision JSON is for this model and version and says `passed`;
- the registry holds the same decision (the gate tags the version only after it wrote the
  JSON, so an interrupted gate leaves nothing to promote);
- the champion is still the one the gate compared against (else the decision is stale: run
  the gate again). Promoters take a file lock and re-read the alias under it, so two racing
  promotions end with one champion and the other refused.
`--override --reason TEXT` skips the decision checks (not the lock) and is recorded on the
version. The old champion keeps the `previous` alias; `previous` is set before `champion`
moves, so an interruption between the two leaves the old champion in place. With `if_passed`
a rejected decision is no error: nothing moves and the result says why (for pipelines that
always run the promote step).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diffurec import registry
from diffurec.errors import DiffuRecError, located
from diffurec.files import read_json_object

log = logging.getLogger(__name__)
LOCK_TIMEOUT_SECONDS = 60.0


def read_decision(path: str | Path) -> dict:
    """A gate decision JSON, checked for a boolean `passed`."""
    path = Path(path)
    decision = read_json_object(path, "gate decision not found (run `diffurec gate` first)")
    if not isinstance(decision.get("passed"), bool):
        raise located(path, "not a gate decision (no boolean `passed`)")
    return decision


def lock_path_for(tracking_uri: str) -> Path:
    """One lock per registry: beside a sqlite database, else in the temp folder (one machine)."""
    db = registry.sqlite_path(tracking_uri)
    if db is not None:
        return db.with_name(db.name + ".promote.lock")
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"diffurec-promote-{digest}.lock"


@contextmanager
def _locked(path: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DiffuRecError(
                        f"{path}: another promotion holds the lock for over {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote(
    name: str,
    version: str | None,
    decision_path: str | Path | None = None,
    tracking_uri: str | None = None,
    override: bool = False,
    reason: str | None = None,
    if_passed: bool = False,
) -> dict:
    """Make `version` (default: the decision's) the champion; return what was done: {"name",
    "version", "promoted", "message"}, and "champion" (its version now), "previous" ... when
    the registry was consulted. See the module docstring for the rules."""
    if version is None and decision_path is not None:
        version = read_decision(decision_path).get("version")
    if version is None:
        raise DiffuRecError("which version? pass --version (or --decision with a registered version)")
    version = str(version)
    if if_passed and not override:
        if decision_path is None:
            raise DiffuRecError("--if-passed needs --decision JSON")
        rejected = read_decision(decision_path)
        if not rejected["passed"]:
            return {
                "name": name,
                "version": version,
                "promoted": False,
                "message": f"not promoted: gate rejected {name} v{version} "
                f"({rejected.get('reason', 'see the decision')})",
            }
    if override and not (reason and reason.strip()):
        raise DiffuRecError("--override needs --reason TEXT (it is recorded on the model version)")
    decision: dict = {}  # under override nothing reads it
    if decision_path is not None:
        decision = read_decision(decision_path)
    elif not override:
        raise DiffuRecError(
            "refusing to promote without a gate decision (--decision FILE), or use --override --reason TEXT"
        )
    if not override:
        _check_decision(decision, decision_path, name, version)

    uri = registry.resolve_tracking_uri(tracking_uri)
    mlflow_client = registry.client(uri)
    with _locked(lock_path_for(uri)):
        target = registry.get_version(name, version=version, mlflow_client=mlflow_client)
        assert target is not None  # by number: a missing version raises
        if not override:
            _check_registry_decision(target, decision, decision_path)
        current = registry.get_version(name, alias="champion", mlflow_client=mlflow_client)
        current_version = current["version"] if current else None
        if current_version == version:
            log.info("%s v%s is already the champion", name, version)
            return {
                "name": name,
                "version": version,
                "promoted": False,
                "champion": version,
                "previous": _alias(mlflow_client, name, "previous"),
                "message": f"{name} v{version} is already the champion",
            }
        if not override:
            expected = (decision.get("champion") or {}).get("version")
            expected = str(expected) if expected is not None else None
            if current_version != expected:
                raise DiffuRecError(
                    f"refusing to promote {name} v{version}: the champion is now "
                    f"{'v' + current_version if current_version else 'none'}, but the gate compared "
                    f"against {'v' + expected if expected else 'no champion'}; run the gate again"
                )
        promoted_at = datetime.now(UTC).isoformat(timespec="seconds")
        if current_version is not None:
            mlflow_client.set_registered_model_alias(name, "previous", current_version)
        mlflow_client.set_registered_model_alias(name, "champion", version)
        if _alias(mlflow_client, name, "challenger") == version:
            mlflow_client.delete_registered_model_alias(name, "challenger")
        record = {
            "promoted_at": promoted_at,
            "promoted_from": current_version or "none",
            "promotion_override": str(bool(override)).lower(),
        }
        if override and reason:
            record["promotion_reason"] = reason.strip()
        registry.set_version_tags(name, version, record, mlflow_client=mlflow_client)
        mlflow_client.set_registered_model_tag(
            name,
            "last_promotion",
            json.dumps(
                {
                    "version": version,
                    "from": current_version,
                    "at": promoted_at,
                    "override": bool(override),
                    "reason": reason,
                }
            ),
        )
    message = (
        f"promoted {name} v{version} to champion"
        + (f" (previous: v{current_version})" if current_version else " (first champion)")
        + (f" by override: {reason.strip()}" if override and reason else "")
    )
    log.info(message)
    return {
        "name": name,
        "version": version,
        "promoted": True,
        "champion": version,
        "previous": current_version,
        "override": bool(override),
        "reason": reason,
        "promoted_at": promoted_at,
        "message": message,
    }


def promotion_gauges(result: dict, override: bool) -> dict[str, float]:
    """The promote step's Prometheus gauges; the champion's version only when the registry was
    consulted (a decision rejected under if_passed leaves it alone)."""
    gauges = {"promoted": 1.0 if result["promoted"] else 0.0}
    if "champion" in result:
        gauges["champion_version"] = float(result["champion"])
        gauges["promotion_override"] = 1.0 if override else 0.0
    return gauges


def _alias(mlflow_client: Any, name: str, alias: str) -> str | None:
    found = registry.get_version(name, alias=alias, mlflow_client=mlflow_client)
    return found["version"] if found else None


def _check_decision(decision: dict, path: str | Path | None, name: str, version: str) -> None:
    if decision.get("name") != name or str(decision.get("version")) != version:
        raise located(
            path, f"decision is for {decision.get('name')} v{decision.get('version')}, not {name} v{version}"
        )
    if not decision["passed"]:
        raise located(
            path,
            f"refusing to promote {name} v{version}: the gate rejected it "
            f"({decision.get('reason', 'see checks')})",
        )


def _check_registry_decision(target: dict, decision: dict, path: str | Path | None) -> None:
    tags = target["tags"]
    if tags.get("gate_decision_id") != decision.get("decision_id"):
        raise located(
            path,
            f"refusing to promote: this decision is not the one recorded on "
            f"{target['name']} v{target['version']} (tag gate_decision_id="
            f"{tags.get('gate_decision_id', 'missing')}); run the gate again",
        )
    if tags.get("gate_passed") != "true":
        raise located(
            path,
            f"refusing to promote: the registry records a failed gate for "
            f"{target['name']} v{target['version']}",
        )
