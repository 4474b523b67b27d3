"""The example's views on PostgreSQL, through Django's test client: the design note's story,
two simultaneous first heartbeats, and every failure's status.

The tests are transactional (``django_db(transaction=True)``): the views run outside any
``atomic()`` block, so the repository runs each decision in its own SERIALIZABLE transaction,
as in production.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.test import Client

from fleet import views
from workermatch.contrib.django.models import Assignment, Worker
from workermatch.contrib.django.testing import close_thread_connection

from . import NO_SERVER, on_postgresql

pytestmark = [
    pytest.mark.skipif(not on_postgresql(), reason=NO_SERVER),
    pytest.mark.django_db(transaction=True),
]

GUI = "157.193.240.190"


def post(client: Client, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    response = client.post(path, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


def test_the_story_of_the_design_note_is_one_worker_and_a_completed_assignment() -> None:
    Assignment.objects.create(id="A1", status="PENDING")  # the server's own queue made it
    client = Client()
    status, claimed = post(client, "/api/assignments/A1/claim", {"machineId": "157.193.240.188"})
    assert (status, claimed["rule"], claimed["created"]) == (200, "created", True)
    beat = {"machineId": GUI, "hostname": "UG-GNS0S34"}
    replies = [
        post(client, "/api/heartbeat", beat),
        post(client, "/api/gui-update", {"machineId": GUI, "message": "overall_progress"}),
        post(client, "/api/heartbeat", beat),
        post(client, "/api/gui-update", {"machineId": GUI, "message": "finished"}),
    ]
    assert [status for status, _ in replies] == [200] * 4
    assert {reply["workerId"] for _, reply in replies} == {claimed["workerId"]}
    assert replies[0][1]["rule"] == "recent_orphan"  # the GUI's address joins the claim
    assert Worker.objects.count() == 1
    worker = Worker.objects.get()
    assert (worker.ip, worker.hostname, worker.status) == (GUI, "ug-gns0s34", "IDLE")
    assert Assignment.objects.get(id="A1").status == "COMPLETED"
    status, reply = post(client, "/api/assignments/A1/claim", {"machineId": "10.9.9.9"})
    assert (status, reply["reason"]) == (409, "already_finished")


def test_two_simultaneous_first_heartbeats_make_one_worker() -> None:
    start = threading.Barrier(4)
    replies: list[tuple[int, dict[str, Any]]] = []

    def send() -> None:
        try:
            start.wait(timeout=10)
            replies.append(post(Client(), "/api/heartbeat", {"machineId": GUI, "hostname": "box"}))
        finally:
            close_thread_connection()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [status for status, _ in replies] == [200] * 4
    assert len({reply["workerId"] for _, reply in replies}) == 1
    assert Worker.objects.count() == 1


def test_each_failure_has_its_status() -> None:
    client = Client()
    Assignment.objects.create(id="A1", status="PENDING")
    assert post(client, "/api/heartbeat", {"machineId": "not-an-ip"})[0] == 400
    assert post(client, "/api/heartbeat", ["not", "an", "object"])[0] == 400
    response = client.post("/api/heartbeat", "{", content_type="application/json")
    assert response.status_code == 400
    status, reply = post(client, "/api/assignments/A9/claim", {"machineId": "10.0.0.1"})
    assert (status, reply["reason"]) == (404, "unknown_assignment")
    assert post(client, "/api/assignments/A1/claim", {"machineId": "10.0.0.1"})[0] == 200
    post(client, "/api/heartbeat", {"machineId": "10.0.0.1", "hostname": "one"})
    status, reply = post(
        client, "/api/assignments/A1/claim", {"machineId": "10.0.0.2", "hostname": "two"}
    )
    assert (status, reply["reason"]) == (409, "running_elsewhere")
    assert client.get("/api/heartbeat").status_code == 405


def test_the_views_opt_out_of_atomic_requests() -> None:
    """The project sets ATOMIC_REQUESTS; the views run outside the request's transaction, so
    that the repository owns its own and retries conflicts."""
    from django.db import connections

    assert connections["default"].settings_dict["ATOMIC_REQUESTS"] is True
    for view in (views.claim, views.heartbeat, views.gui_update):
        assert "default" in getattr(view, "_non_atomic_requests", set())
