"""A worker-facing HTTP API on workermatch, with nothing but the standard library.

The routes and bodies are the real client's (``docs/integration.md``): the client sends its public
IP as ``machineId``; heartbeats add ``hostname``; GUI updates carry a ``message``.  Clients that
can may add the strong hints ``workerId`` and ``assignmentId``.

    python examples/endpoint.py            # play the design note's story through handle()
    python examples/endpoint.py --serve 8080

then, for instance::

    curl -s localhost:8080/api/assignments/A1/claim -d '{"machineId": "157.193.240.188"}'
    curl -s localhost:8080/api/heartbeat \\
         -d '{"machineId": "157.193.240.190", "hostname": "UG-GNS0S34"}'

``handle`` is a plain function (route, JSON body, clock, repository) -> (status, JSON reply), so
it drops into any web framework; the ``http.server`` handler below is only its transport.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import workermatch as wm

log = logging.getLogger("workermatch.example")

CLAIM_ROUTE = re.compile(r"^/api/assignments/(?P<assignment>[^/]+)/claim$")


def event_for(path: str, body: dict[str, Any]) -> wm.Event:
    """The workermatch event of one request; raises InvalidInput for a bad one."""
    if not isinstance(body, dict):
        raise wm.InvalidInput("the body must be a JSON object", field="body", value=body)
    ip = body.get("machineId")
    hints = {"worker_id": body.get("workerId"), "assignment_id": body.get("assignmentId")}
    claim = CLAIM_ROUTE.match(path)
    if claim:
        return wm.Event.claim(
            ip,  # type: ignore[arg-type]  # validated by the library
            claim["assignment"],
            hostname=body.get("hostname"),
            worker_id=hints["worker_id"],
        )
    if path == "/api/heartbeat":
        return wm.Event.heartbeat(ip, hostname=body.get("hostname"), **hints)  # type: ignore[arg-type]
    if path == "/api/gui-update":
        return wm.Event.gui_update(ip, body.get("message"), hostname=body.get("hostname"), **hints)  # type: ignore[arg-type]
    if path == "/api/workers":
        return wm.Event.register(ip, hostname=body.get("hostname"))  # type: ignore[arg-type]
    raise LookupError(path)


def handle(
    path: str,
    body: Any,
    repo: wm.WorkerRepository,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    policy: wm.Policy = wm.DEFAULT_POLICY,
    create_assignments: bool = False,
) -> tuple[int, dict[str, Any]]:
    """Serve one request: (HTTP status, JSON reply).

    ``create_assignments``: a claim of an assignment the store does not hold creates it
    (for a server without an assignment queue of its own, like ``--serve``).
    """
    try:
        event = event_for(path, body)
        outcome = wm.apply_event(
            event, clock(), repo, policy, create_assignments=create_assignments
        )
    except LookupError:
        return 404, {"error": f"no route {path}"}
    except wm.InvalidInput as exc:
        return 400, {"error": str(exc), "field": exc.field}
    except wm.ClaimRefused as exc:
        return 409, {"error": str(exc), "reason": exc.reason, "holder": exc.holder}
    except wm.AmbiguousMatch as exc:
        return 409, {"error": str(exc), "reason": "ambiguous"}
    except wm.StorageError as exc:
        log.error("store failed: %s", exc.__cause__)
        return 503, {"error": "the store is unavailable; retry"}
    # One structured line per decision answers "why did this request land on that worker?"
    log.info("decision %s", json.dumps(outcome.decision.to_dict()))
    return 200, {
        "workerId": outcome.worker.id,  # newer clients send it back as a strong hint
        "rule": outcome.rule.value,
        "created": outcome.created,
        "ambiguous": outcome.ambiguous,
        "status": outcome.worker.status.value,
    }


def serve(port: int, repo: wm.WorkerRepository) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                status, reply = 400, {"error": "the body is not JSON"}
            else:
                status, reply = handle(self.path, body, repo, create_assignments=True)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    # One thread per request, as a real server: apply_event keeps them consistent.
    with ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        print(f"serving on http://127.0.0.1:{port} (Ctrl-C to stop)")
        server.serve_forever()


def demo() -> list[tuple[str, int, dict[str, Any]]]:
    """The design note's story through ``handle``: one worker, the assignment completed."""
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    repo.write([wm.InsertAssignment(assignment=wm.Assignment(id="A1"))])
    t0 = datetime(2025, 11, 6, 10, 0, 1, tzinfo=timezone.utc)
    gui = {"machineId": "157.193.240.190"}
    requests: list[tuple[float, str, dict[str, Any]]] = [
        (0, "/api/assignments/A1/claim", {"machineId": "157.193.240.188"}),
        (20, "/api/heartbeat", {**gui, "hostname": "UG-GNS0S34"}),
        (20, "/api/heartbeat", {**gui, "hostname": "UG-GNS0S34"}),
        (20.4, "/api/gui-update", {**gui, "message": "overall_progress"}),
        (50, "/api/heartbeat", {**gui, "hostname": "UG-GNS0S34"}),
        (79.5, "/api/gui-update", {**gui, "message": "overall_progress"}),
        (80, "/api/gui-update", {**gui, "message": "finished"}),
        (81, "/api/assignments/A1/claim", {"machineId": "10.9.9.9"}),
        (82, "/api/heartbeat", {"machineId": "not-an-ip"}),
    ]
    replies = []
    for offset, path, body in requests:
        status, reply = handle(path, body, repo, clock=_fixed(t0 + timedelta(seconds=offset)))
        replies.append((path, status, reply))
    return replies


def _fixed(now: datetime) -> Callable[[], datetime]:
    return lambda: now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve HTTP on this port")
    args = parser.parse_args(argv)
    if args.serve is not None:
        logging.basicConfig(level=logging.INFO)
        serve(args.serve, wm.InMemoryWorkerRepository())
        return 0
    for path, status, reply in demo():
        print(f"{status} {path:28} {json.dumps(reply)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
