"""A Kubernetes API server for PyTorchJobs on 127.0.0.1 that records every request.

It speaks the JSON of the real API for the calls diffurec.distributed_job makes (the
`kubernetes` client's CustomObjectsApi, pointed at http://127.0.0.1:PORT):
  POST   /apis/kubeflow.org/v1/namespaces/NS/pytorchjobs            create (201; 409 if it exists)
  GET    /apis/kubeflow.org/v1/namespaces/NS/pytorchjobs?watch=true  watch: one JSON event per
         line ({"type": "MODIFIED", "object": job}), from after `resourceVersion`, until the job
         ends or `timeoutSeconds` passes (then the response ends, as the real server does)
  DELETE /apis/kubeflow.org/v1/namespaces/NS/pytorchjobs/NAME       delete (200 Status)
What the Training Operator would do with a created job is the test's `operator(job, set_condition)`
function, run in a thread: it sets conditions (Created, Running, Succeeded/Failed) in order;
`run_master_locally` runs the Master's command on this machine as one pod per process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/kubeflow.org/v1/namespaces/"
Operator = Callable[[dict, Callable[[str, str, str], None]], None]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class FakeApi:
    operator: Operator
    requests: list[Request] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)
    version: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    host: str = ""

    def set_condition(self, name: str, kind: str, reason: str, message: str = "") -> None:
        """Add a True condition to job `name` (older ones of other types go False, as the operator does)."""
        with self.changed:
            job = self.jobs[name]
            conditions = job.setdefault("status", {}).setdefault("conditions", [])
            for condition in conditions:
                condition["status"] = "False"
            conditions.append({"type": kind, "status": "True", "reason": reason, "message": message})
            self._bump(job)
            self.changed.notify_all()

    def _bump(self, job: dict) -> None:
        self.version += 1
        job["metadata"]["resourceVersion"] = str(self.version)

    def made(self, method: str) -> list[Request]:
        return [request for request in self.requests if request.method == method]


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Request:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            request = Request(self.command, url.path, query, json.loads(raw) if raw else None)
            api.requests.append(request)
            return request

        def do_POST(self) -> None:
            request = self._record()
            job = request.body
            name = job["metadata"]["name"]
            namespace = request.path[len(PREFIX) :].split("/")[0]
            with api.changed:
                if name in api.jobs:
                    self._send(
                        409,
                        {"kind": "Status", "code": 409, "message": f'pytorchjobs "{name}" already exists'},
                    )
                    return
                job["metadata"].update({"namespace": namespace, "uid": f"uid-{name}"})
                api.jobs[name] = job
                api._bump(job)
            self._send(201, job)
            threading.Thread(
                target=api.operator,
                args=(job, lambda kind, reason, message="": api.set_condition(name, kind, reason, message)),
                daemon=True,
            ).start()

        def do_DELETE(self) -> None:
            request = self._record()
            name = request.path.rsplit("/", 1)[-1]
            with api.changed:
                found = api.jobs.pop(name, None) is not None
            if found:
                self._send(200, {"kind": "Status", "status": "Success", "details": {"name": name}})
            else:
                self._send(404, {"kind": "Status", "code": 404, "message": f'pytorchjobs "{name}" not found'})

        def do_GET(self) -> None:
            request = self._record()
            if request.query.get("watch", "").lower() != "true":
                self._send(404, {"kind": "Status", "code": 404, "message": "only watches are served"})
                return
            name = request.query.get("fieldSelector", "").removeprefix("metadata.name=")
            since = int(request.query.get("resourceVersion") or 0)
            ends = time.monotonic() + float(request.query.get("timeoutSeconds") or 30)
            # Chunked, as the real server streams a watch (the client reads each chunk as it comes).
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            sent = since
            while time.monotonic() < ends:
                with api.changed:
                    job = api.jobs.get(name)
                    current = int(job["metadata"]["resourceVersion"]) if job else sent
                    if current <= sent:
                        api.changed.wait(timeout=min(0.2, max(0.0, ends - time.monotonic())))
                        continue
                    event = {"type": "MODIFIED", "object": json.loads(json.dumps(job))}
                sent = current
                line = json.dumps(event).encode() + b"\n"
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                except OSError:
                    return
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass

    return Handler


@contextmanager
def k8s_api(operator: Operator) -> Iterator[FakeApi]:
    """A FakeApi serving on a free port of 127.0.0.1 (its `host` URL) for the duration."""
    api = FakeApi(operator)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.host = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


def succeed(job: dict, set_condition: Callable[..., None]) -> None:
    set_condition("Created", "PyTorchJobCreated", "PyTorchJob is created.")
    set_condition("Running", "PyTorchJobRunning", "PyTorchJob is running.")
    set_condition("Succeeded", "PyTorchJobSucceeded", "PyTorchJob successfully completed.")


def fail(job: dict, set_condition: Callable[..., None]) -> None:
    set_condition("Created", "PyTorchJobCreated", "PyTorchJob is created.")
    set_condition("Running", "PyTorchJobRunning", "PyTorchJob is running.")
    set_condition("Failed", "PyTorchJobFailed", "PyTorchJob has failed because 1 Master replica(s) failed.")


def hang(job: dict, set_condition: Callable[..., None]) -> None:
    set_condition("Created", "PyTorchJobCreated", "PyTorchJob is created.")
    set_condition("Running", "PyTorchJobRunning", "PyTorchJob is running.")


def run_master_locally(env: dict[str, str]) -> Operator:
    """An operator that runs the Master pod's command here, every replica as one process of
    one node (PET_NNODES=1, PET_NPROC_PER_NODE = replicas: what torchrun reads from the
    operator's variables), with `env` added; Succeeded or Failed by its exit status."""

    def operator(job: dict, set_condition: Callable[..., None]) -> None:
        set_condition("Created", "PyTorchJobCreated", "PyTorchJob is created.")
        specs = job["spec"]["pytorchReplicaSpecs"]
        replicas = sum(spec["replicas"] for spec in specs.values())
        container = specs["Master"]["template"]["spec"]["containers"][0]
        command = list(container["command"])
        assert command[0] == "torchrun"
        command[0] = str(Path(sys.executable).parent / "torchrun")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        pod_env = {item["name"]: item["value"] for item in container.get("env", [])}
        pod_env.pop("HOME", None)
        run_env = {
            **os.environ,
            **pod_env,
            **env,
            "PET_NNODES": "1",
            "PET_NPROC_PER_NODE": str(replicas),
            "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port),
        }
        set_condition("Running", "PyTorchJobRunning", "PyTorchJob is running.")
        done = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            set_condition("Succeeded", "PyTorchJobSucceeded", "PyTorchJob successfully completed.")
        else:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            set_condition("Failed", "PyTorchJobFailed", f"Master exited {done.returncode}: {tail[0]}")

    return operator
