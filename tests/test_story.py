"""The design note's story, at the real client's timing.

The machine claims A1 from one IP without a hostname; its GUI starts ``gui_start`` seconds later
behind a VPN that gives it another IP, sends its two start-up heartbeats at the same moment
(from two threads), a heartbeat every 30 s, a stream of progress updates, five 100 % updates
0.5 s apart and ``finished`` at 600 s (the real client's timing, :mod:`workermatch.lab`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import groupby

import pytest

import workermatch as wm
from workermatch import lab

T0 = datetime(2025, 11, 6, 10, 0, 1, tzinfo=timezone.utc)
CLAIM_IP = "157.193.240.188"
GUI_IP = "157.193.240.190"
HOST = "UG-GNS0S34"
END_MS = 600_000


def story(gui_start: float) -> list[tuple[float, wm.Event]]:
    """Claim without hostname, two simultaneous heartbeats from another IP, updates every 2.5 s,
    finished at 600 s: the client model of :mod:`workermatch.lab` lays it out."""
    gui_at = round(gui_start * 1000)
    requests = lab.session_requests(
        assignment="A1",
        claim_at=0,
        claim_ip=CLAIM_IP,
        gui_at=gui_at,
        end_at=END_MS,
        addresses=[(gui_at, GUI_IP)],
        updates=lab.every(gui_at + 400, 2_500, END_MS - lab.FINALE_MS),
        hostname=HOST,
    )
    return [(r.at_ms / 1000, r.to_event()) for r in requests]


def replay(
    policy: wm.Policy, gui_start: float, *, without_transaction: bool = False
) -> wm.InMemoryWorkerRepository:
    """Apply the story's events in order and return the store.

    ``without_transaction``: requests sent at the same moment are each decided before any of
    them is written, as the real server's find-then-create without a transaction does.
    """
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    for offset, group in groupby(story(gui_start), key=lambda pair: pair[0]):
        now = T0 + timedelta(seconds=offset)
        events = [event for _, event in group]
        if without_transaction:
            outcomes = [
                wm.plan(
                    e, now, repo, policy, create_assignments=True, new_worker_id=repo.new_worker_id
                )
                for e in events
            ]
            for outcome in outcomes:
                repo.write(outcome.writes)
        else:
            for event in events:
                wm.apply_event(event, now, repo, policy, create_assignments=True)
    return repo


def summary(repo: wm.InMemoryWorkerRepository) -> list[tuple[str, str, str | None]]:
    return [(w.id, w.ip, w.hostname) for w in sorted(repo.all_workers(), key=lambda w: w.id)]


def the_assignment(repo: wm.InMemoryWorkerRepository) -> tuple[wm.AssignmentStatus, str | None]:
    (assignment,) = repo.all_assignments()
    return assignment.status, assignment.worker_id


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


def test_default_policy_rules_along_the_story() -> None:
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    rules = [
        wm.apply_event(
            event, T0 + timedelta(seconds=offset), repo, create_assignments=True
        ).decision
        for offset, event in story(20.0)
    ]
    assert [d.rule for d in rules[:3]] == [
        wm.Rule.CREATED,  # the claim
        wm.Rule.RECENT_ORPHAN,  # the first start-up heartbeat takes the claim's worker
        wm.Rule.EXACT_IP,  # the second one finds it by its new IP
    ]
    assert {d.rule for d in rules[3:]} == {wm.Rule.EXACT_IP}
    assert not any(d.ambiguous for d in rules)


@pytest.mark.parametrize("gui_start", [3.0, 20.0, 29.0, 45.0, 119.0, 180.0, 240.0, 299.0])
def test_default_policy_makes_one_worker_whenever_the_gui_starts(gui_start: float) -> None:
    # Including a slow GUI start (2 to 4 minutes after the claim), past the note's 2 minutes.
    repo = replay(wm.DEFAULT_POLICY, gui_start)
    assert summary(repo) == [("w1", GUI_IP, "ug-gns0s34")]
    assert the_assignment(repo) == (wm.AssignmentStatus.COMPLETED, "w1")


def test_default_policy_cannot_link_a_gui_that_starts_after_stale_after_on_another_ip() -> None:
    # A documented limit: by 301 s the claim's worker is stale, its IP is not the GUI's and it
    # has no hostname, so nothing links the GUI to it and nothing is transferred.
    repo = replay(wm.DEFAULT_POLICY, 301.0)
    assert summary(repo) == [("w1", CLAIM_IP, None), ("w2", GUI_IP, "ug-gns0s34")]
    assert the_assignment(repo) == (wm.AssignmentStatus.RUNNING, "w1")


@pytest.mark.parametrize("gui_start", [31.0, 45.0, 119.0, 120.0])
def test_note_policy_makes_one_worker_when_the_gui_starts_after_30_s(gui_start: float) -> None:
    # The claim's worker has been quiet for more than 30 s and was created less than 2 min
    # ago: the note's priority 2 takes it, exactly as its "Expected Behavior After Fix" says.
    repo = replay(wm.NOTE_POLICY, gui_start)
    assert summary(repo) == [("w1", GUI_IP, "ug-gns0s34")]
    assert the_assignment(repo) == (wm.AssignmentStatus.COMPLETED, "w1")


@pytest.mark.parametrize("gui_start", [3.0, 30.0])
def test_note_policy_splits_every_gui_start_within_30_s(gui_start: float) -> None:
    # At exactly 30 s the claim's worker is not yet "quiet" (lastSeen < thirtySecondsAgo).
    repo = replay(wm.NOTE_POLICY, gui_start)
    assert summary(repo) == [("w1", CLAIM_IP, None), ("w2", GUI_IP, "ug-gns0s34")]
    assert the_assignment(repo) == (wm.AssignmentStatus.RUNNING, "w1")


def test_note_policy_strands_the_assignment_when_the_gui_starts_after_2_min() -> None:
    # Past the orphan window nothing links the GUI to the claim; the claim's worker goes stale
    # at 5 min, but transfers only happen when a worker is created, and none is any more.
    repo = replay(wm.NOTE_POLICY, 150.0)
    assert summary(repo) == [("w1", CLAIM_IP, None), ("w2", GUI_IP, "ug-gns0s34")]
    assert the_assignment(repo) == (wm.AssignmentStatus.RUNNING, "w1")


def test_legacy_policy_makes_two_workers_even_when_every_request_is_atomic() -> None:
    # Heartbeat: IP, then hostname, then create.  The claim's worker has neither.
    repo = replay(wm.LEGACY_POLICY, 20.0)
    assert summary(repo) == [("w1", CLAIM_IP, None), ("w2", GUI_IP, "ug-gns0s34")]
    assert the_assignment(repo) == (wm.AssignmentStatus.RUNNING, "w1")


def test_legacy_policy_without_a_transaction_makes_the_notes_three_workers() -> None:
    # The note's "Current Problem": the two start-up heartbeats arrive at the same moment and
    # each finds nothing before either has written, so each creates a worker.  Worker A keeps
    # the claim's IP and the assignment, which "finished" never completes.
    repo = replay(wm.LEGACY_POLICY, 20.0, without_transaction=True)
    assert summary(repo) == [
        ("w1", CLAIM_IP, None),
        ("w2", GUI_IP, "ug-gns0s34"),
        ("w3", GUI_IP, "ug-gns0s34"),
    ]
    assert the_assignment(repo) == (wm.AssignmentStatus.RUNNING, "w1")


def test_default_policy_decides_the_racing_heartbeats_alike_even_without_a_transaction() -> None:
    # Both heartbeats take the claim's worker (rule 3), so even a store without transactions
    # ends with one worker; apply_event's atomic unit makes that hold for every race.
    repo = replay(wm.DEFAULT_POLICY, 20.0, without_transaction=True)
    assert summary(repo) == [("w1", GUI_IP, "ug-gns0s34")]
