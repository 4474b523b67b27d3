"""Reconciling a duplicate after the fact: the mid-run address change.

The real client sends progress updates many times a second and a hostname only with its
heartbeat, every 30 s.  When the VPN changes the GUI's address in the middle of a run, the first
request from the new address is usually an update without hostname: no rule can tie it to the
session's worker, so the chain creates a second worker, the *duplicate*.  Up to 30 s later the
next heartbeat arrives from the new address, lands on the duplicate by exact IP, and reveals its
hostname.  Now the server can see what happened: another live worker has that hostname, and it
went silent the moment the duplicate appeared.

This module decides, purely, whether to merge such a duplicate into the older worker (the one
that holds the session's assignment and whose id the client may hold), the way a long-lived
volunteer-computing scheduler merges hosts whose lifetimes do not overlap.  It merges only when
the evidence is unambiguous:

* the request carries a hostname and landed on a worker that had none (the moment the
  duplicate's hostname is revealed);
* exactly one other live worker has that hostname, its session has not ended, it was created
  before the duplicate, and its last request came no later than the duplicate's first one and
  at most :attr:`Policy.merge_gap` before it (lifetimes that do not overlap);
* the duplicate belongs to no other session: it never claimed another assignment and its own
  session has not ended.

The same heartbeat also repairs the *start-up race*: the real client sends from several threads
at once, so the GUI's first update sometimes overtakes its two start-up heartbeats and, coming
without hostname from an address no worker has, makes a duplicate.  When the duplicate is at
most :attr:`Policy.merge_gap` old, claimed nothing, no worker of the first kind exists, and
exactly one recent orphan (a claim's worker with no hostname yet, created within
:attr:`Policy.orphan_window` before the duplicate) is in sight, the duplicate is merged into it.

Two sessions are never merged (a claim's worker always carries its assignment) and two machines
are never merged (hostnames agree; lifetimes do not overlap; a second candidate, such as a
machine cloned from the same image, cancels the merge: a duplicate can be repaired later, a bad
merge cannot).
"""

from __future__ import annotations

from datetime import datetime

import attrs

from ._model import AssignmentStatus, Event, Worker, WorkerStatus
from ._policy import Policy
from ._protocol import UpdateAssignment, UpdateWorker, WorkerRepository, Write

__all__ = ["Merge", "plan_merge"]


@attrs.frozen(kw_only=True)
class Merge:
    """A duplicate merged into the worker it duplicates."""

    survivor: Worker
    """The older worker, updated with the request's address and hostname."""
    duplicate: Worker
    """The duplicate, with ``merged_into`` pointing at the survivor."""
    moved: tuple[str, ...]
    """The RUNNING assignments moved from the duplicate to the survivor."""
    writes: tuple[Write, ...]
    """The duplicate's update and the assignment moves (the survivor's update is the caller's)."""


def plan_merge(
    event: Event, now: datetime, repo: WorkerRepository, policy: Policy, before: Worker
) -> Merge | None:
    """The merge that ``event``, which resolved to ``before`` (as read), reveals, or ``None``.

    Writes nothing.  ``policy.merge_gap`` of ``None`` turns reconciliation off.
    """
    gap = policy.merge_gap
    hostname = event.identity.hostname
    if gap is None or hostname is None or before.hostname is not None:
        return None
    if before.ended_at is not None or before.merged_into is not None:
        return None
    held = repo.running_assignments_of([before.id])
    if before.assignment_id is not None and any(a.id != before.assignment_id for a in held):
        return None  # pragma: no cover - a worker holds only its own session's work
    found = [
        w
        for w in repo.live_workers_by_hostname(hostname, now - policy.stale_after)
        if w.id != before.id
        and w.merged_into is None
        and w.ended_at is None
        and w.created_at < before.created_at
        and w.last_seen <= before.created_at
        and before.created_at - w.last_seen <= gap
        and (before.assignment_id is None or before.assignment_id == w.assignment_id)
    ]
    if not found and now - before.created_at <= gap and before.assignment_id is None:
        # The start-up race: the GUI's first update overtook its heartbeats and made the
        # duplicate a moment ago; the claim's worker is the one recent orphan rule 3 would
        # have given the heartbeat.
        found = [
            w
            for w in repo.recent_running_workers(
                now - policy.orphan_window, now - policy.stale_after
            )
            if w.id != before.id
            and w.hostname is None
            and w.merged_into is None
            and w.ended_at is None
            and w.created_at < before.created_at
        ]
    if len(found) != 1:
        return None
    older = found[0]
    moved = sorted((a for a in held if a.status is AssignmentStatus.RUNNING), key=lambda a: a.id)
    runs = older.status is WorkerStatus.RUNNING or bool(moved)
    survivor = attrs.evolve(
        older,
        ip=event.identity.ip,
        hostname=hostname,
        last_seen=max(older.last_seen, before.last_seen, now),
        status=WorkerStatus.RUNNING if runs else older.status,
        assignment_id=older.assignment_id or (moved[-1].id if moved else None),
    )
    duplicate = attrs.evolve(
        before,
        hostname=hostname,
        last_seen=max(before.last_seen, now),
        status=WorkerStatus.IDLE,
        merged_into=older.id,
    )
    writes: list[Write] = [UpdateWorker(worker=duplicate)]
    writes += [UpdateAssignment(assignment=attrs.evolve(a, worker_id=older.id)) for a in moved]
    return Merge(
        survivor=survivor,
        duplicate=duplicate,
        moved=tuple(a.id for a in moved),
        writes=tuple(writes),
    )
