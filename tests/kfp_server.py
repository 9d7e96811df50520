"""A Kubeflow Pipelines API server on 127.0.0.1 for tests: the v2beta1 endpoints kfp.Client (kfp
2.17) calls for `diffurec pipeline submit` and `pipeline upload`, answering with the JSON bodies
of KFP's backend (field names from kubeflow/pipelines backend/api/v2beta1/swagger/*.swagger.json:
run, experiment, pipeline, healthz), and recording every request.

    with KfpServer(multi_user=True, run_states=["PENDING", "RUNNING", "SUCCEEDED"]) as server:
        ... --host server.url ...
        server.requests  # [Request(method, path, query, body), ...]

Runs: each GET of a run answers the next state of `run_states` (the last one repeats); a run in
SUCCEEDED carries run_details.task_details for `tasks` ({display name: state}).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
CREATED_AT = "2026-11-29T10:00:00Z"
# The pipeline's tasks as KFP lists them when a run ends with the gate passed.
PASSED_TASKS = {
    "resolve data version": "SUCCEEDED",
    "train": "SUCCEEDED",
    "gate": "SUCCEEDED",
    "promote": "SUCCEEDED",
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # the JSON body; for an upload {"file": bytes, "filename": str}; else None


@dataclass
class KfpState:
    multi_user: bool = False
    run_id: str | None = None  # the id of the next run created (default: a new uuid)
    run_states: list[str] = field(default_factory=lambda: ["SUCCEEDED"])
    tasks: dict[str, str] = field(default_factory=lambda: dict(PASSED_TASKS))
    experiments: list[dict[str, Any]] = field(default_factory=list)
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)


class KfpServer:
    """The server in a background thread; a context manager."""

    def __init__(self, **state: Any) -> None:
        self.state = KfpState(**state)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[Request]:
        return self.state.requests

    def calls(self, method: str, path: str) -> list[Request]:
        """The requests `method` API + `path` (e.g. "/runs/ID")."""
        return [r for r in self.requests if r.method == method and r.path == API + path]

    def __enter__(self) -> KfpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _matches(item: dict[str, Any], query: dict[str, str]) -> bool:
    """The EQUALS display_name predicate of a filter (all kfp.Client sends), and the namespace."""
    if query.get("namespace") and item.get("namespace", query["namespace"]) != query["namespace"]:
        return False
    if "filter" not in query:
        return True
    predicates = json.loads(query["filter"]).get("predicates", [])
    return all(item.get(p["key"]) == p.get("stringValue", p.get("string_value")) for p in predicates)


class _Handler(BaseHTTPRequestHandler):
    state: KfpState

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict[str, str], Any]:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        kind = self.headers.get("Content-Type", "")
        if raw and kind.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {kind}\r\n\r\n".encode() + raw
            )
            for part in message.iter_parts():
                body = {"file": part.get_payload(decode=True), "filename": part.get_filename()}
        elif raw:
            body = json.loads(raw)
        self.state.requests.append(Request(self.command, parts.path, query, body))
        return parts.path, query, body

    def do_GET(self) -> None:
        path, query, _ = self._record()
        state = self.state
        if path == f"{API}/healthz":
            return self._answer(
                200, {"commit_sha": "0" * 40, "tag_name": "2.17.0", "multi_user": state.multi_user}
            )
        if (
            state.multi_user
            and path in (f"{API}/experiments", f"{API}/pipelines")
            and not query.get("namespace")
        ):
            # What a multi-user API server says to a list without a namespace.
            return self._answer(400, {"code": 3, "message": "Invalid input error: Namespace is required"})
        if path == f"{API}/experiments":
            found = [e for e in state.experiments if _matches(e, query)]
            return self._answer(200, {"experiments": found, "total_size": len(found)} if found else {})
        if path == f"{API}/pipelines":
            found = [p for p in state.pipelines if _matches(p, query)]
            return self._answer(200, {"pipelines": found, "total_size": len(found)} if found else {})
        if path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[-2]
            found = [v for v in state.versions if v["pipeline_id"] == pipeline_id and _matches(v, query)]
            return self._answer(200, {"pipeline_versions": found, "total_size": len(found)} if found else {})
        if path.startswith(f"{API}/runs/"):
            run_id = path.rsplit("/", 1)[-1]
            if run_id not in state.runs:
                return self._answer(404, {"code": 5, "message": f"Run {run_id} not found"})
            polls = state.polls[run_id] = state.polls.get(run_id, -1) + 1
            run = dict(state.runs[run_id])
            run["state"] = state.run_states[min(polls, len(state.run_states) - 1)]
            if run["state"] in ("SUCCEEDED", "FAILED"):
                run["finished_at"] = "2026-11-29T11:00:00Z"
                run["run_details"] = {
                    "pipeline_context_id": "7",
                    "pipeline_run_context_id": "8",
                    "task_details": [
                        {
                            "run_id": run_id,
                            "task_id": str(uuid.uuid4()),
                            "display_name": name,
                            "create_time": CREATED_AT,
                            "state": task_state,
                        }
                        for name, task_state in state.tasks.items()
                    ],
                }
            if run["state"] == "FAILED":
                run["error"] = {"code": 2, "message": "task train failed"}
            return self._answer(200, run)
        return self._answer(404, {"code": 5, "message": f"no route {path}"})

    def do_POST(self) -> None:
        path, query, body = self._record()
        state = self.state
        if path == f"{API}/experiments":
            if state.multi_user and not (body or {}).get("namespace"):
                return self._answer(400, {"code": 3, "message": "Invalid input error: Namespace is empty"})
            experiment = {
                "experiment_id": str(uuid.uuid4()),
                "display_name": body["display_name"],
                "created_at": CREATED_AT,
                "namespace": body.get("namespace", ""),
                "storage_state": "AVAILABLE",
            }
            state.experiments.append(experiment)
            return self._answer(200, experiment)
        if path == f"{API}/pipelines/upload":
            pipeline = {
                "pipeline_id": str(uuid.uuid4()),
                "display_name": query["name"],
                "description": query.get("description", ""),
                "created_at": CREATED_AT,
                "namespace": query.get("namespace", ""),
            }
            state.pipelines.append(pipeline)
            # KFP's upload also makes a first version named like the pipeline.
            self._add_version(pipeline["pipeline_id"], query["name"], query.get("description", ""))
            return self._answer(200, pipeline)
        if path == f"{API}/pipelines/upload_version":
            version = self._add_version(query["pipelineid"], query["name"], query.get("description", ""))
            return self._answer(200, version)
        if path == f"{API}/runs":
            run = {
                **body,
                "run_id": state.run_id or str(uuid.uuid4()),
                "storage_state": "AVAILABLE",
                "created_at": CREATED_AT,
                "scheduled_at": CREATED_AT,
                "state": "PENDING",
            }
            state.runs[run["run_id"]] = run
            return self._answer(200, run)
        return self._answer(404, {"code": 5, "message": f"no route {path}"})

    def _add_version(self, pipeline_id: str, name: str, description: str) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "description": description,
            "created_at": CREATED_AT,
        }
        self.state.versions.append(version)
        return version
