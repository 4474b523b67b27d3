"""The worker-facing API of the example project, on workermatch's Django repository.

The routes and bodies are the real client's: it sends its public IP as ``machineId``;
heartbeats add ``hostname``; GUI updates carry a ``message``.  Clients that can may add the
hints ``workerId`` and ``assignmentId``.

Each view makes one ``apply_event`` call and turns every error into a status.  The views are
``non_atomic_requests``: under ``ATOMIC_REQUESTS`` the request's transaction would otherwise
wrap the decision, which could then not be retried on a serialisation failure; outside it the
repository runs each decision in its own ``SERIALIZABLE`` transaction and retries conflicts
itself.  ``now`` is ``None``: decisions use the database server's clock, one clock for every
server process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import workermatch as wm
from workermatch.contrib.django import DjangoWorkerRepository

log = logging.getLogger("fleet")


def worker_api(
    make_event: Callable[..., wm.Event],
) -> Callable[..., JsonResponse]:
    """A view: the JSON body (and URL arguments) -> ``make_event`` -> ``apply_event``."""

    @csrf_exempt
    @require_POST
    @transaction.non_atomic_requests
    def view(request: HttpRequest, **url_args: str) -> JsonResponse:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return JsonResponse({"error": "the body is not JSON"}, status=400)
        try:
            if not isinstance(body, dict):
                raise wm.InvalidInput("the body must be a JSON object", field="body", value=body)
            outcome = wm.apply_event(make_event(body, **url_args), None, DjangoWorkerRepository())
        except wm.InvalidInput as exc:
            return JsonResponse({"error": str(exc), "field": exc.field}, status=400)
        except wm.ClaimRefused as exc:
            status = 404 if exc.reason == "unknown_assignment" else 409
            reply = {"error": str(exc), "reason": exc.reason, "holder": exc.holder}
            return JsonResponse(reply, status=status)
        except wm.AmbiguousMatch as exc:
            return JsonResponse({"error": str(exc), "reason": "ambiguous"}, status=409)
        except wm.TransientStorageError as exc:
            log.warning("store busy or unreachable: %s", exc)
            response = JsonResponse({"error": "the store is busy; retry"}, status=503)
            response["Retry-After"] = "1"
            return response
        except wm.StorageError as exc:
            log.error("store failed: %s", exc)
            return JsonResponse({"error": "the store failed"}, status=500)
        # One structured line per decision answers "why did this request land on that worker?"
        log.info("decision %s", json.dumps(outcome.decision.to_dict()))
        if outcome.alert is not None:
            log.warning("alert %s: %s", outcome.alert.value, outcome.explain())
        return JsonResponse(
            {
                "workerId": outcome.worker.id,  # newer clients send it back as a hint
                "rule": outcome.rule.value,
                "created": outcome.created,
                "status": outcome.worker.status.value,
            }
        )

    return view


def _hints(body: dict[str, Any]) -> dict[str, Any]:
    return {"worker_id": body.get("workerId"), "assignment_id": body.get("assignmentId")}


claim = worker_api(
    lambda body, assignment_id: wm.Event.claim(
        body.get("machineId"),
        assignment_id,
        hostname=body.get("hostname"),
        worker_id=body.get("workerId"),
    )
)
heartbeat = worker_api(
    lambda body: wm.Event.heartbeat(
        body.get("machineId"), hostname=body.get("hostname"), **_hints(body)
    )
)
gui_update = worker_api(
    lambda body: wm.Event.gui_update(
        body.get("machineId"), body.get("message"), hostname=body.get("hostname"), **_hints(body)
    )
)
