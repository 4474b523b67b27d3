"""What a request does to the store: claims, transfers, session ends, and applying them atomically.

:func:`plan` turns an event into an :class:`Outcome` -- the decision of the priority chain
plus the writes that follow from it -- without writing anything.  :func:`apply_event` runs
``plan`` and the writes inside the repository's atomic unit, so that concurrent requests give a
state that some serial order of them would give.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import attrs

from ._errors import ClaimRefused, InvalidInput, StorageError, WorkermatchError
from ._model import (
    Assignment,
    AssignmentStatus,
    Event,
    EventKind,
    Worker,
    WorkerStatus,
    normalize_time,
)
from ._policy import DEFAULT_POLICY, Policy, Rule
from ._protocol import (
    InsertAssignment,
    InsertWorker,
    UpdateAssignment,
    UpdateWorker,
    WorkerRepository,
    Write,
)
from ._reconcile import plan_merge
from ._rules import Decision, run_chain

__all__ = ["NEW_WORKER", "Outcome", "apply_event", "plan", "sweep"]

NEW_WORKER = "(new)"
"""The placeholder id :func:`plan` gives a worker it would create, when no id source is given."""

T = TypeVar("T")

FINISHED = "finished"
FATAL_ERROR = "fatal_error"


@attrs.frozen(kw_only=True)
class Outcome:
    """What one request resolved to and what it wrote.

    ``worker`` is the worker as it is after the writes.  ``transferred`` lists the RUNNING
    assignments moved onto it from stale workers; ``ended`` the assignments this request
    completed or failed; ``idempotent`` marks a repeated claim that changed nothing but
    ``last_seen``.
    """

    event: Event
    decision: Decision
    worker: Worker
    created: bool
    writes: tuple[Write, ...]
    transferred: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()
    idempotent: bool = False
    merged: tuple[str, ...] = ()
    """Duplicates this request revealed and merged into :attr:`worker` (``_reconcile``)."""
    kept_alive: tuple[str, ...] = ()
    """Other workers of the request's address whose ``last_seen`` this request refreshed: it
    could not be told apart from theirs (:attr:`Policy.shared_liveness
    <workermatch.Policy.shared_liveness>`)."""

    @property
    def rule(self) -> Rule:
        """The rule that placed the request (``created`` when a worker was made)."""
        return self.decision.rule

    @property
    def ambiguous(self) -> bool:
        """Whether the winning rule had more than one candidate."""
        return self.decision.ambiguous

    def explain(self) -> str:
        """The decision's explanation, followed by what the request wrote."""
        lines = [self.decision.explain()]
        if self.created:
            lines.append(f"  created worker {self.worker.id}")
        if self.transferred:
            lines.append(
                f"  moved RUNNING {', '.join(self.transferred)} from stale workers onto "
                f"{self.worker.id}"
            )
        if self.merged:
            lines.append(
                f"  merged duplicate {', '.join(self.merged)} into {self.worker.id} "
                "(same hostname, lifetimes do not overlap)"
            )
        if self.kept_alive:
            lines.append(
                f"  kept {', '.join(self.kept_alive)} alive: the request, from their address, "
                "may be theirs (shared liveness)"
            )
        if self.ended:
            lines.append(f"  ended {', '.join(self.ended)} ({self.event.message})")
        if self.idempotent:
            lines.append("  repeated claim of the same assignment: nothing changed")
        return "\n".join(lines)


def _check_args(event: object, now: object, policy: object) -> datetime:
    if not isinstance(event, Event):
        raise InvalidInput(
            f"event must be an Event, not {type(event).__name__}", field="event", value=event
        )
    if not isinstance(policy, Policy):
        raise InvalidInput(
            f"policy must be a Policy, not {type(policy).__name__}", field="policy", value=policy
        )
    return normalize_time(now)


def plan(
    event: Event,
    now: datetime,
    repo: WorkerRepository,
    policy: Policy = DEFAULT_POLICY,
    *,
    create_assignments: bool = False,
    new_worker_id: Callable[[], str] | None = None,
) -> Outcome:
    """Decide what ``event`` does at ``now``, and the writes that would do it.  Writes nothing.

    ``create_assignments``: a claim of an assignment the store does not hold creates it (as
    replays of traces do); otherwise such a claim is refused.  ``new_worker_id`` supplies the
    id of a worker to create (default: the placeholder :data:`NEW_WORKER`).

    Raises :class:`~workermatch.InvalidInput`, :class:`~workermatch.ClaimRefused` or
    :class:`~workermatch.AmbiguousMatch`; in each case nothing was written.
    """
    now = _check_args(event, now, policy)
    make_id = new_worker_id or (lambda: NEW_WORKER)
    if event.kind is EventKind.CLAIM:
        return _plan_claim(event, now, repo, policy, create_assignments, make_id)
    return _plan_other(event, now, repo, policy, make_id)


def _touch(worker: Worker, event: Event, now: datetime, policy: Policy) -> Worker:
    identity = event.identity
    hostname = worker.hostname
    if identity.hostname is not None and (hostname is None or not policy.hostname_veto):
        hostname = identity.hostname
    return attrs.evolve(
        worker, ip=identity.ip, hostname=hostname, last_seen=max(worker.last_seen, now)
    )


def _new_worker(event: Event, now: datetime, make_id: Callable[[], str]) -> Worker:
    return Worker(
        id=make_id(),
        ip=event.identity.ip,
        hostname=event.identity.hostname,
        created_at=now,
        last_seen=now,
    )


def _plan_claim(
    event: Event,
    now: datetime,
    repo: WorkerRepository,
    policy: Policy,
    create_assignments: bool,
    make_id: Callable[[], str],
) -> Outcome:
    aid = event.assignment_id
    assert aid is not None
    writes: list[Write] = []
    assignment = repo.get_assignment(aid)
    if assignment is None:
        if not create_assignments:
            raise ClaimRefused(
                f"assignment {aid} does not exist", reason="unknown_assignment", assignment_id=aid
            )
        assignment = Assignment(id=aid)
        writes.append(InsertAssignment(assignment=assignment))

    holder: Worker | None = None
    if assignment.status is AssignmentStatus.RUNNING and assignment.worker_id is not None:
        holder = repo.get_worker(assignment.worker_id)
    holder_live = holder is not None and not holder.is_stale_at(now, policy.stale_after)
    if policy.sessions and assignment.status.is_final:
        raise ClaimRefused(
            f"assignment {aid} is already {assignment.status.value}",
            reason="already_finished",
            assignment_id=aid,
        )

    decision = run_chain(
        event.identity, now, repo, policy, policy.chain_for(event.kind), claiming=aid
    )
    matched = decision.worker

    if policy.sessions and holder is not None and holder_live:
        if matched is not None and matched.id == holder.id:
            worker = _touch(matched, event, now, policy)
            return Outcome(
                event=event,
                decision=decision,
                worker=worker,
                created=False,
                writes=(UpdateWorker(worker=worker),),
                idempotent=True,
            )
        raise ClaimRefused(
            f"assignment {aid} is RUNNING on worker {holder.id}, which is not stale",
            reason="running_elsewhere",
            assignment_id=aid,
            holder=holder.id,
        )

    if matched is None:
        worker = _new_worker(event, now, make_id)
        created = True
    else:
        worker = _touch(matched, event, now, policy)
        created = False
    worker = attrs.evolve(worker, status=WorkerStatus.RUNNING, assignment_id=aid, ended_at=None)
    writes.append(InsertWorker(worker=worker) if created else UpdateWorker(worker=worker))

    if holder is not None and holder.id != worker.id:
        # The previous holder is stale (default policy) or loses to the last claimer (note and
        # legacy policies): it no longer runs this assignment.
        others = [a for a in repo.running_assignments_of([holder.id]) if a.id != aid]
        writes.append(
            UpdateWorker(
                worker=attrs.evolve(
                    holder, status=WorkerStatus.RUNNING if others else WorkerStatus.IDLE
                )
            )
        )
    started = assignment.started_at if assignment.worker_id == worker.id else now
    writes.append(
        UpdateAssignment(
            assignment=attrs.evolve(
                assignment,
                status=AssignmentStatus.RUNNING,
                worker_id=worker.id,
                started_at=started or now,
                ended_at=None,
            )
        )
    )
    return Outcome(
        event=event, decision=decision, worker=worker, created=created, writes=tuple(writes)
    )


def _plan_other(
    event: Event,
    now: datetime,
    repo: WorkerRepository,
    policy: Policy,
    make_id: Callable[[], str],
) -> Outcome:
    decision = run_chain(event.identity, now, repo, policy, policy.chain_for(event.kind))
    writes: list[Write] = []
    transferred: list[Assignment] = []
    merge = None
    if decision.worker is None:
        worker = _new_worker(event, now, make_id)
        created = True
        if policy.transfer_stale:
            transferred, stale_updates = _transfers(event, now, repo, policy, worker)
            writes.extend(stale_updates)
        if transferred:
            latest = max(transferred, key=lambda a: (a.started_at or now, a.id))
            worker = attrs.evolve(worker, status=WorkerStatus.RUNNING, assignment_id=latest.id)
    else:
        worker = _touch(decision.worker, event, now, policy)
        created = False
        merge = plan_merge(event, now, repo, policy, decision.worker)
        if merge is not None:
            worker = merge.survivor
            writes.extend(merge.writes)

    ended: list[str] = []
    end_updates: list[Write] = []
    if event.kind is EventKind.GUI_UPDATE and event.message in (FINISHED, FATAL_ERROR):
        # Only a session end needs the assignments the worker holds: the hot path (a plain
        # update matched by exact IP) reads nothing more than its candidates.
        held = [
            *([] if created else repo.running_assignments_of([worker.id])),
            *transferred,
            *([] if merge is None else repo.running_assignments_of([merge.duplicate.id])),
        ]
        final = AssignmentStatus.COMPLETED if event.message == FINISHED else AssignmentStatus.FAILED
        for a in sorted(held, key=lambda a: a.id):
            end_updates.append(
                UpdateAssignment(
                    assignment=attrs.evolve(a, status=final, worker_id=worker.id, ended_at=now)
                )
            )
            ended.append(a.id)
        status = WorkerStatus.IDLE if event.message == FINISHED else WorkerStatus.ERROR
        worker = attrs.evolve(worker, status=status, ended_at=worker.ended_at or now)

    writes.insert(0, InsertWorker(worker=worker) if created else UpdateWorker(worker=worker))
    kept = _kept_alive(event, now, policy, decision)
    writes.extend(UpdateWorker(worker=w) for w in kept)
    ended_ids = set(ended)
    for a in transferred:
        if a.id not in ended_ids:
            writes.append(UpdateAssignment(assignment=attrs.evolve(a, worker_id=worker.id)))
    writes.extend(end_updates)
    return Outcome(
        event=event,
        decision=decision,
        worker=worker,
        created=created,
        writes=tuple(writes),
        transferred=tuple(sorted(a.id for a in transferred)),
        ended=tuple(ended),
        merged=() if merge is None else (merge.duplicate.id,),
        kept_alive=tuple(w.id for w in kept),
    )


def _kept_alive(event: Event, now: datetime, policy: Policy, decision: Decision) -> list[Worker]:
    """Shared liveness: a request without hostname that exact IP could not attribute proves that
    one of the address's machines is alive, not which.  The other candidates of its address that
    run an unended session and whose hostname is unknown are refreshed with it, so that a machine
    whose requests land on a neighbour's worker does not see its own go stale (and its work
    transferred or stranded)."""
    if not (
        policy.shared_liveness
        and decision.ambiguous
        and decision.rule is Rule.EXACT_IP
        and event.identity.hostname is None
    ):
        return []
    return [
        attrs.evolve(w, last_seen=now)
        for w in decision.outranked
        if w.ip == event.identity.ip
        and w.status is WorkerStatus.RUNNING
        and w.ended_at is None
        # At most once per quiet period: a NAT's updates come many a second, and staleness
        # is measured in minutes.
        and now - w.last_seen > policy.quiet_period
        # A worker whose hostname is known has its own heartbeats to keep it alive; refreshing
        # it would also hide the silence that reveals its machine's address change (merge).
        and w.hostname is None
    ]


def _transfers(
    event: Event, now: datetime, repo: WorkerRepository, policy: Policy, new: Worker
) -> tuple[list[Assignment], list[Write]]:
    identity = event.identity
    stale = [
        w
        for w in repo.stale_running_workers(
            identity.ip, identity.hostname, now - policy.stale_after
        )
        if not (
            policy.hostname_veto
            and identity.hostname is not None
            and w.hostname is not None
            and w.hostname != identity.hostname
        )
    ]
    if not stale:
        return [], []
    moved = sorted(repo.running_assignments_of([w.id for w in stale]), key=lambda a: a.id)
    updates: list[Write] = [
        UpdateWorker(worker=attrs.evolve(w, status=WorkerStatus.IDLE, stale=True))
        for w in sorted(stale, key=lambda w: w.id)
    ]
    return moved, updates


def apply_event(
    event: Event,
    now: datetime,
    repo: WorkerRepository,
    policy: Policy = DEFAULT_POLICY,
    *,
    create_assignments: bool = False,
) -> Outcome:
    """Decide what ``event`` does at ``now`` and write it, in one atomic step.

    Returns the :class:`Outcome`.  Raises :class:`~workermatch.InvalidInput`,
    :class:`~workermatch.ClaimRefused` or :class:`~workermatch.AmbiguousMatch` with nothing
    written, and :class:`~workermatch.StorageError` (the driver's exception as its cause) when
    the store fails, which leaves the store as it was.
    """
    now = _check_args(event, now, policy)

    def unit() -> Outcome:
        outcome = plan(
            event,
            now,
            repo,
            policy,
            create_assignments=create_assignments,
            new_worker_id=repo.new_worker_id,
        )
        repo.write(outcome.writes)
        return outcome

    return _guarded(repo, unit)


def _guarded(repo: WorkerRepository, unit: Callable[[], T]) -> T:
    try:
        return repo.atomically(unit)
    except WorkermatchError:
        raise
    except Exception as exc:
        raise StorageError(f"the repository failed: {exc!r}") from exc


def sweep(
    repo: WorkerRepository, now: datetime, policy: Policy = DEFAULT_POLICY
) -> tuple[str, ...]:
    """Persist the ``stale`` flag of every worker silent past ``policy.stale_after`` at ``now``.

    For dashboards only: decisions evaluate staleness at their own ``now`` and never need a
    sweep.  Returns the ids flagged, sorted.
    """
    now = normalize_time(now)
    if not isinstance(policy, Policy):
        raise InvalidInput("policy must be a Policy", field="policy", value=policy)

    def unit() -> tuple[str, ...]:
        found = sorted(
            repo.unflagged_workers_seen_before(now - policy.stale_after), key=lambda w: w.id
        )
        repo.write([UpdateWorker(worker=attrs.evolve(w, stale=True)) for w in found])
        return tuple(w.id for w in found)

    return _guarded(repo, unit)
