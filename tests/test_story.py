"""The design note's story, at the real client's timing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import workermatch as wm

T0 = datetime(2025, 11, 6, 10, 0, 1, tzinfo=timezone.utc)
CLAIM_IP = "157.193.240.188"
GUI_IP = "157.193.240.190"
HOST = "UG-GNS0S34"


def story(gui_start: float) -> list[tuple[float, wm.Event]]:
    """Claim without hostname, two simultaneous heartbeats from another IP, updates, finished."""
    events: list[tuple[float, wm.Event]] = [(0.0, wm.Event.claim(CLAIM_IP, "A1"))]
    events += [(gui_start, wm.Event.heartbeat(GUI_IP, hostname=HOST))] * 2
    t = gui_start + 0.4
    while t < 600:
        events.append((t, wm.Event.gui_update(GUI_IP, "overall_progress")))
        t += 2.5
    events += [
        (gui_start + 30 * k, wm.Event.heartbeat(GUI_IP, hostname=HOST))
        for k in range(1, int((600 - gui_start) // 30))
    ]
    events += [(597.5 + 0.5 * k, wm.Event.gui_update(GUI_IP, "overall_progress")) for k in range(5)]
    events.append((600.0, wm.Event.gui_update(GUI_IP, "finished")))
    events.sort(key=lambda pair: pair[0])
    return events


def replay(policy: wm.Policy, gui_start: float) -> wm.InMemoryWorkerRepository:
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    for offset, event in story(gui_start):
        wm.apply_event(
            event, T0 + timedelta(seconds=offset), repo, policy, create_assignments=True
        )
    return repo


def test_default_policy_makes_one_worker_and_completes_the_assignment() -> None:
    repo = replay(wm.DEFAULT_POLICY, gui_start=20.0)
    workers = repo.all_workers()
    assert [(w.id, w.ip, w.hostname) for w in workers] == [("w1", GUI_IP, "ug-gns0s34")]
    (assignment,) = repo.all_assignments()
    assert (assignment.status, assignment.worker_id) == (wm.AssignmentStatus.COMPLETED, "w1")


def test_note_policy_splits_a_fast_gui_start_and_strands_the_assignment() -> None:
    # The GUI starts 20 s after the claim: the claim worker is not yet "quiet for 30 s", so
    # the note's priority 2 passes it over and the heartbeat creates a second worker; the
    # final "finished" lands there and completes nothing.
    repo = replay(wm.NOTE_POLICY, gui_start=20.0)
    workers = sorted(repo.all_workers(), key=lambda w: w.id)
    assert [(w.id, w.ip, w.hostname) for w in workers] == [
        ("w1", CLAIM_IP, None),
        ("w2", GUI_IP, "ug-gns0s34"),
    ]
    (assignment,) = repo.all_assignments()
    assert (assignment.status, assignment.worker_id) == (wm.AssignmentStatus.RUNNING, "w1")
