"""Guarantee 2 in batch mode: the next session's start-up heartbeat joins the new session.

The real client ends a run with ``finished``, stops 3 s later, and in batch mode claims the next
assignment from the same machine at once; the new GUI's first heartbeats (same IP, same
hostname) then arrive while the previous worker is still inside ``ended_grace``.
"""

from __future__ import annotations

from datetime import timedelta

import workermatch as wm
from _times import T0

IP = "157.193.240.188"
HOST = "UG-GNS0S34"


def test_next_batch_session_heartbeat_within_grace_joins_the_new_claim_worker() -> None:
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())

    def at(seconds: float, event: wm.Event) -> wm.Outcome:
        return wm.apply_event(event, T0 + timedelta(seconds=seconds), repo, create_assignments=True)

    at(0, wm.Event.claim(IP, "A1"))
    at(20, wm.Event.heartbeat(IP, hostname=HOST))
    at(180, wm.Event.gui_update(IP, "finished"))
    second = at(183.5, wm.Event.claim(IP, "A2"))
    assert second.created
    heartbeat = at(200, wm.Event.heartbeat(IP, hostname=HOST))
    # The ended worker w1 is still within ended_grace and its hostname agrees, but its
    # session is over: the heartbeat belongs to the live session's worker.
    assert heartbeat.worker.id == second.worker.id
    finished = at(360, wm.Event.gui_update(IP, "finished"))
    assert finished.worker.id == second.worker.id
    statuses = {a.id: (a.status, a.worker_id) for a in repo.all_assignments()}
    assert statuses == {
        "A1": (wm.AssignmentStatus.COMPLETED, "w1"),
        "A2": (wm.AssignmentStatus.COMPLETED, "w2"),
    }
