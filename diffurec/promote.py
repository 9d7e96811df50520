"""Promotion: move the `champion` alias to a version that passed its gate.

Rules, each one a refusal with a reason when it does not hold:
- the decision JSON is for this model and version and says `passed`;
- the registry holds the same decision (the gate tags the version only after it wrote the
  JSON, so an interrupted gate leaves nothing to promote);
- the champion is still the one the gate compared against (else the decision is stale: run
  the gate again). Promoters hold the promotion lock (below) and re-read the alias under it,
  so two racing promotions end with one champion and the other refused.
`--override --reason TEXT` skips the decision checks (not the lock) and is recorded on the
version. The old champion keeps the `previous` alias. With `if_passed` a rejected decision is
no error: nothing moves and the result says why (for pipelines that always run the step).

Exclusive across machines. Two locks are held while the registry is read and written:
- a file lock beside a sqlite store (else in the temp folder): promoters on one machine
  queue without asking the store;
- a lock whose arbiter is the store itself, so promoters in different pods that reach one
  tracking server exclude each other. Each promoter takes a ticket: a new version of the
  registered model `<name>.promotion-lock` (the store numbers versions under a unique key,
  so tickets are unique and increasing), tagged with its owner and an expiry (wall clock).
  The lowest live ticket holds the lock; waiters and the holder renew their expiry, and the
  holder stops before a write once it cannot be sure its lease still runs. A released
  ticket is deleted; a killed promoter's ticket expires after the lease and is skipped.

Atomic. Before any alias moves, the registered model gets the tag `promotion_intent` (JSON:
decision id, version, from, previous before, time, override, reason). Then `previous` <-
from, `champion` <- version, the version's audit tags, `challenger` removed, the model's
`last_promotion` tag; the aliases are read back (verify) and the intent removed. A promotion
killed anywhere in between leaves the intent, and the next promote or gate of that model
completes it from the intent alone: `previous` gets the intent's `from` (never the champion
of that moment) and the audit tags the original time, decision and reason. If the version
was deleted meanwhile, the aliases are put back as they were (`last_rolled_back` records it).
DIFFUREC_PROMOTE_CRASH_AT=<step> ends the process (exit 137, as kill -9) right after that
step, for the crash tests: one of CRASH_STEPS.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from diffurec import net, registry
from diffurec.errors import DiffuRecError, located
from diffurec.files import read_json_object

log = logging.getLogger(__name__)
LOCK_TIMEOUT_SECONDS = 60.0  # waiting for each lock
LEASE_ENV, LEASE_SECONDS = "DIFFUREC_PROMOTE_LEASE_SECONDS", 60.0
DEADLINE_ENV, DEADLINE_SECONDS = "DIFFUREC_PROMOTE_DEADLINE", 300.0  # the whole promotion
LOCK_SUFFIX = ".promotion-lock"
LOCK_SOURCE = "diffurec:/promotion-lock"  # model versions need a source; a ticket has no files
INTENT_TAG = "promotion_intent"
CRASH_ENV = "DIFFUREC_PROMOTE_CRASH_AT"
CRASH_STEPS = (
    "locked",
    "intent",
    "previous",
    "champion",
    "audit",
    "challenger",
    "last_promotion",
    "verified",
)


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as error:
        raise DiffuRecError(f"{path}: cannot create the promotion lock ({error.strerror or error})") from None
    with handle:
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


class StoreLock:
    """The promotion lock of one registered model, held in the MLflow store (module docstring).

    `with StoreLock(client, name) as lock:` waits for the lock (at most `wait_s`), and
    `lock.check()` before each write renews the lease, or raises when it may have run out."""

    def __init__(
        self,
        mlflow_client: Any,
        name: str,
        lease_s: float | None = None,
        wait_s: float = LOCK_TIMEOUT_SECONDS,
    ) -> None:
        self.client, self.name, self.model = mlflow_client, name, name + LOCK_SUFFIX
        self.lease_s = lease_s if lease_s is not None else net.seconds_from_env(LEASE_ENV, LEASE_SECONDS)
        self.wait_s = wait_s
        self.owner = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        self.ticket: int | None = None
        self.expires = 0.0  # wall clock, as every holder's clock reads it

    def __enter__(self) -> StoreLock:
        self._take_ticket()
        try:
            return self._wait()
        except BaseException:
            self._release()
            raise

    def _wait(self) -> StoreLock:
        stop = time.monotonic() + self.wait_s
        while True:
            ahead = self._live_tickets_ahead()
            if not ahead:
                if time.time() < self.expires - self.lease_s / 4:
                    return self
                # Ours may have looked expired to later tickets: queue again.
                self._release()
                self._take_ticket()
                continue
            if time.monotonic() > stop:
                raise DiffuRecError(
                    f"{self.name}: another promotion ({ahead[0]}) holds the store's promotion lock "
                    f"for over {self.wait_s:.0f} s"
                )
            if time.time() > self.expires - self.lease_s / 2:
                self._renew()
            time.sleep(random.uniform(0.05, 0.2))

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._release()

    def check(self) -> None:
        """Before a write: renew the lease, or stop when it may have expired (another promoter
        may hold the lock now)."""
        remaining = self.expires - time.time()
        if remaining < self.lease_s / 4:
            raise DiffuRecError(
                f"{self.name}: the promotion lock's lease ({self.lease_s:g} s) ran out before this write; "
                f"nothing more is written (the next promote or gate completes the promotion)"
            )
        if remaining < self.lease_s / 2:
            self._renew()

    def _take_ticket(self) -> None:
        from mlflow.exceptions import MlflowException

        self.expires = time.time() + self.lease_s
        tags = {"owner": self.owner, "expires_at": repr(self.expires)}
        try:
            version = self.client.create_model_version(
                self.model, LOCK_SOURCE, tags=tags, await_creation_for=0
            )
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            _create_registered_model(
                self.client,
                self.model,
                f"promotion lock of {self.name}: versions are tickets (diffurec promote)",
            )
            version = self.client.create_model_version(
                self.model, LOCK_SOURCE, tags=tags, await_creation_for=0
            )
        self.ticket = int(version.version)

    def _renew(self) -> None:
        expires = time.time() + self.lease_s
        self.client.set_model_version_tag(self.model, str(self.ticket), "expires_at", repr(expires))
        self.expires = expires

    def _live_tickets_ahead(self) -> list[str]:
        """Owners of the unexpired tickets before ours, oldest first; expired ones are deleted."""
        ahead: list[tuple[int, str]] = []
        now = time.time()
        for found in self.client.search_model_versions(f"name = '{self.model}'"):
            number = int(found.version)
            if self.ticket is None or number >= self.ticket:
                continue
            tags = found.tags or {}
            try:
                expires = float(tags.get("expires_at", "0"))
            except ValueError:
                expires = 0.0
            if expires > now:
                ahead.append((number, str(tags.get("owner", "?"))))
            else:  # its promoter was killed or gave up: only a tidy-up, whoever does it
                _delete_quietly(self.client, self.model, str(number))
        return [owner for _, owner in sorted(ahead)]

    def _release(self) -> None:
        if self.ticket is not None:
            _delete_quietly(self.client, self.model, str(self.ticket))
            self.ticket = None


def _delete_quietly(mlflow_client: Any, model: str, version: str) -> None:
    try:
        mlflow_client.delete_model_version(model, version)
    except Exception as error:  # gone already, or the store is unreachable: the ticket expires
        log.debug("lock ticket %s v%s not deleted: %s", model, version, error)


def _create_registered_model(mlflow_client: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name, description=description)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _crash_point(step: str) -> None:
    """The crash tests' kill -9 right after `step` (module docstring)."""
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)


@contextmanager
def _promotion_lock(mlflow_client: Any, name: str, uri: str) -> Iterator[StoreLock]:
    with _locked(lock_path_for(uri)), StoreLock(mlflow_client, name) as lock:
        _crash_point("locked")
        yield lock


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
    the registry was consulted, "completed_interrupted" (a message, or null) when an earlier
    promotion killed half-way was completed first. See the module docstring for the rules."""
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
    seconds = net.seconds_from_env(DEADLINE_ENV, DEADLINE_SECONDS)
    with net.deadline(seconds, f"MLflow store {uri} (promotion of {name})"):
        with _promotion_lock(mlflow_client, name, uri) as lock:
            completed = _finish(mlflow_client, name, lock, _snapshot(mlflow_client, name)[0])
            return _promote_locked(
                mlflow_client, lock, name, version, decision, decision_path, override, reason
            ) | {"completed_interrupted": completed}


def _promote_locked(
    mlflow_client: Any,
    lock: StoreLock,
    name: str,
    version: str,
    decision: dict,
    decision_path: str | Path | None,
    override: bool,
    reason: str | None,
) -> dict:
    target = registry.get_version(name, version=version, mlflow_client=mlflow_client)
    assert target is not None  # by number: a missing version raises
    if not override:
        _check_registry_decision(target, decision, decision_path)
    aliases = _snapshot(mlflow_client, name)[1]
    current_version = aliases.get("champion")
    if current_version == version:
        log.info("%s v%s is already the champion", name, version)
        return {
            "name": name,
            "version": version,
            "promoted": False,
            "champion": version,
            "previous": aliases.get("previous"),
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
    intent = {
        "version": version,
        "from": current_version,
        "previous_before": aliases.get("previous"),
        "decision_id": decision.get("decision_id"),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "override": bool(override),
        "reason": reason.strip() if override and reason else None,
        "owner": lock.owner,
    }
    lock.check()
    mlflow_client.set_registered_model_tag(name, INTENT_TAG, json.dumps(intent))
    _crash_point("intent")
    _complete(mlflow_client, name, intent, lock)
    message = (
        f"promoted {name} v{version} to champion"
        + (f" (previous: v{current_version})" if current_version else " (first champion)")
        + (f" by override: {intent['reason']}" if override and reason else "")
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
        "promoted_at": intent["at"],
        "message": message,
    }


def audit_tags(intent: dict) -> dict[str, str]:
    """The promoted version's tags: when, from which champion, by override or not, and why."""
    tags = {
        "promoted_at": str(intent["at"]),
        "promoted_from": str(intent["from"] or "none"),
        "promotion_override": str(bool(intent["override"])).lower(),
    }
    if intent.get("reason"):
        tags["promotion_reason"] = str(intent["reason"])
    if intent.get("decision_id"):
        tags["promotion_decision_id"] = str(intent["decision_id"])
    return tags


def _complete(mlflow_client: Any, name: str, intent: dict, lock: StoreLock) -> None:
    """Every write of the promotion `intent` describes, in order (each is idempotent), then
    read back; the intent is removed only once the registry shows all of it."""
    version, source = str(intent["version"]), intent["from"]
    if source is not None:
        lock.check()
        mlflow_client.set_registered_model_alias(name, "previous", str(source))
        _crash_point("previous")
    lock.check()
    mlflow_client.set_registered_model_alias(name, "champion", version)
    _crash_point("champion")
    lock.check()
    tags = audit_tags(intent)
    registry.set_version_tags(name, version, tags, mlflow_client=mlflow_client)
    _crash_point("audit")
    if _snapshot(mlflow_client, name)[1].get("challenger") == version:
        lock.check()
        mlflow_client.delete_registered_model_alias(name, "challenger")
    _crash_point("challenger")
    lock.check()
    record = {key: intent[key] for key in ("version", "from", "at", "override", "reason", "decision_id")}
    mlflow_client.set_registered_model_tag(name, "last_promotion", json.dumps(record))
    _crash_point("last_promotion")
    aliases = _snapshot(mlflow_client, name)[1]
    champion, previous = aliases.get("champion"), aliases.get("previous")
    written = dict(mlflow_client.get_model_version(name, version).tags or {})
    if (
        champion != version
        or (source is not None and previous != str(source))
        or any(written.get(key) != value for key, value in tags.items())
    ):
        raise DiffuRecError(
            f"{name}: after promoting v{version} the registry shows champion v{champion}, previous "
            f"v{previous}: another writer changed it outside `diffurec promote`; the intent stays "
            f"(tag {INTENT_TAG}) and the next promote or gate completes it"
        )
    _crash_point("verified")
    lock.check()
    mlflow_client.delete_registered_model_tag(name, INTENT_TAG)


def _snapshot(mlflow_client: Any, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The registered model's (tags, aliases) in one read; both empty when there is no model."""
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}, {}
        raise
    return dict(model.tags or {}), {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _intent(mlflow_client: Any, name: str, tags: dict[str, str] | None = None) -> dict | None:
    """The promotion intent left on the registered model (its `tags`, read when not given),
    None when there is none."""
    if tags is None:
        tags = _snapshot(mlflow_client, name)[0]
    text = tags.get(INTENT_TAG)
    if not text:
        return None
    try:
        intent = json.loads(text)
        if not (isinstance(intent, dict) and intent.get("version") and intent.get("at")):
            raise ValueError("no version or time")
    except ValueError as error:
        raise DiffuRecError(
            f"registered model {name!r}: tag {INTENT_TAG} is not a promotion intent ({error})"
        ) from None
    return intent


def _finish(mlflow_client: Any, name: str, lock: StoreLock, tags: dict[str, str]) -> str | None:
    """Under the lock: complete (or, when its version is gone, roll back) a promotion that was
    killed half-way, as the registered model's `tags` record it; what was done, None when
    nothing was pending."""
    intent = _intent(mlflow_client, name, tags)
    if intent is None:
        return None
    version = str(intent["version"])
    if not _exists(mlflow_client, name, version):
        _roll_back(mlflow_client, name, intent, lock)
        message = f"rolled back the interrupted promotion of {name} v{version} (the version is gone)"
    else:
        _complete(mlflow_client, name, intent, lock)
        message = (
            f"completed the interrupted promotion of {name} v{version} "
            f"(from {'v' + str(intent['from']) if intent['from'] else 'none'}, started {intent['at']})"
        )
    log.warning(message)
    return message


def _roll_back(mlflow_client: Any, name: str, intent: dict, lock: StoreLock) -> None:
    aliases = _snapshot(mlflow_client, name)[1]
    for alias, value in (("champion", intent["from"]), ("previous", intent.get("previous_before"))):
        lock.check()
        if value is not None and _exists(mlflow_client, name, str(value)):
            mlflow_client.set_registered_model_alias(name, alias, str(value))
        elif aliases.get(alias) is not None:
            mlflow_client.delete_registered_model_alias(name, alias)
    lock.check()
    mlflow_client.set_registered_model_tag(name, "last_rolled_back", json.dumps(intent))
    mlflow_client.delete_registered_model_tag(name, INTENT_TAG)


def _exists(mlflow_client: Any, name: str, version: str) -> bool:
    """Whether the version is (still) registered; a store that cannot answer raises."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def finish_interrupted(name: str, mlflow_client: Any, tracking_uri: str | None = None) -> str | None:
    """Complete or roll back a promotion of `name` killed half-way (for the gate, before it
    reads the champion); what was done, None when nothing was pending (no lock taken then)."""
    if _intent(mlflow_client, name) is None:
        return None
    uri = registry.resolve_tracking_uri(tracking_uri)
    with net.deadline(net.seconds_from_env(DEADLINE_ENV, DEADLINE_SECONDS), f"MLflow store {uri}"):
        with _promotion_lock(mlflow_client, name, uri) as lock:
            return _finish(mlflow_client, name, lock, _snapshot(mlflow_client, name)[0])


def promotion_gauges(result: dict, override: bool) -> dict[str, float]:
    """The promote step's Prometheus gauges; the champion's version only when the registry was
    consulted (a decision rejected under if_passed leaves it alone)."""
    gauges = {"promoted": 1.0 if result["promoted"] else 0.0}
    if "champion" in result:
        gauges["champion_version"] = float(result["champion"])
        gauges["promotion_override"] = 1.0 if override else 0.0
    return gauges


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
