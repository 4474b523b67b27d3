"""The synchronous driver: run the decision against a repository, atomically.

The decision (``_decision``) yields the reads it needs and returns an
:class:`~workermatch.Outcome`; this module answers its reads from a
:class:`~workermatch.WorkerRepository` (:func:`run`), and offers the three entry points:
:func:`match_worker` (which worker, writing nothing), :func:`plan` (the decision and the writes
it would make, writing nothing) and :func:`apply_event` (decide and write in one atomic unit, so
that concurrent requests give a state that some serial order of them would give).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import attrs

from ._decision import (
    DEFAULT_RULES,
    FATAL_ERROR,
    FINISHED,
    LEGACY_RULES,
    NEW_WORKER,
    NOTE_RULES,
    Ask,
    Decision,
    Outcome,
    Query,
    choose,
    decide,
)
from ._errors import InvalidInput, StorageError, WorkermatchError
from ._model import Event, EventKind, Identity, Worker, normalize_time
from ._observe import deciding
from ._policy import DEFAULT_POLICY, Policy
from ._protocol import UpdateWorker, WorkerRepository

__all__ = ["NEW_WORKER", "apply_event", "match_worker", "plan", "run", "sweep"]

T = TypeVar("T")


def run(computation: Ask[T], repo: WorkerRepository) -> T:
    """Answer each query ``computation`` yields from ``repo``, and return its result."""
    answer: Any = None
    try:
        while True:
            query = computation.send(answer)
            answer = getattr(repo, query.method)(*query.args)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _check_policy(policy: object) -> Policy:
    if not isinstance(policy, Policy):
        raise InvalidInput(
            f"policy must be a Policy, not {type(policy).__name__}", field="policy", value=policy
        )
    return policy


def _check_args(event: object, now: object, policy: object, repo: object) -> datetime | None:
    if not isinstance(event, Event):
        raise InvalidInput(
            f"event must be an Event, not {type(event).__name__}", field="event", value=event
        )
    _check_policy(policy)
    return _check_now(now, repo)


def _check_now(now: object, repo: object) -> datetime | None:
    """``now`` normalised, or ``None`` for the store's clock (which the store must have)."""
    if now is None:
        if not callable(getattr(repo, "clock", None)):
            raise InvalidInput(
                "now is None, which asks for the store's clock, and this repository has none: "
                "pass the time",
                field="now",
                value=now,
            )
        return None
    return normalize_time(now)


def _at(now: datetime | None, repo: WorkerRepository) -> datetime:
    """``now``, or when it is ``None`` the store's clock (``repo.clock()``) normalised like any
    ``now``."""
    if now is not None:
        return now
    return normalize_time(repo.clock(), field="clock")  # type: ignore[attr-defined]


def match_worker(
    identity: Identity,
    now: datetime | None,
    repo: WorkerRepository,
    policy: Policy = DEFAULT_POLICY,
    *,
    kind: Any = None,
) -> Decision:
    """Decide which worker a request with ``identity`` belongs to at ``now``.  Writes nothing.

    ``kind`` (an :class:`~workermatch.EventKind`) selects the rows of the policy's table that
    serve that kind (the legacy policy's endpoints); by default, a plain ``register``'s.  A claim's
    session guard needs the claimed assignment: use :func:`plan` for events.

    Raises :class:`~workermatch.InvalidInput` for a bad argument (before reading anything) and
    :class:`~workermatch.AmbiguousMatch` when the policy refuses an ambiguous match.
    """
    at, event_kind = _check_match_args(identity, now, repo, policy, kind)
    when = at if at is not None else _at(None, repo)
    return run(choose(identity, when, policy, event_kind), repo)


def _check_match_args(
    identity: object, now: object, repo: object, policy: object, kind: object
) -> tuple[datetime | None, EventKind]:
    """``match_worker``'s arguments checked: ``now`` (``None`` for the store's clock) and the
    event kind whose rows decide (a plain ``register``'s by default)."""
    if not isinstance(identity, Identity):
        raise InvalidInput(
            f"identity must be an Identity, not {type(identity).__name__}",
            field="identity",
            value=identity,
        )
    at = _check_now(now, repo)
    _check_policy(policy)
    try:
        return at, EventKind.REGISTER if kind is None else EventKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown event kind {kind!r}", field="kind", value=kind) from None


def plan(
    event: Event,
    now: datetime | None,
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
    at = _check_args(event, now, policy, repo)
    computation = decide(
        event,
        _at(at, repo),
        policy,
        create_assignments=create_assignments,
        new_worker_id=new_worker_id,
    )
    return run(computation, repo)


def apply_event(
    event: Event,
    now: datetime | None,
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

    ``now`` of ``None`` decides at the store's clock (``repo.clock()``, the database server's
    time on the SQL stores), read inside the atomic unit: with several server processes on one
    database, their clocks' skew then cannot change a decision.
    """
    at = _check_args(event, now, policy, repo)

    def unit() -> Outcome:
        outcome = run(
            decide(
                event,
                _at(at, repo),
                policy,
                create_assignments=create_assignments,
                new_worker_id=repo.new_worker_id,
            ),
            repo,
        )
        repo.write(outcome.writes)
        return outcome

    with deciding(event) as watch:
        outcome = None
        # A store may decide the hot request in one statement (the SQL repository on
        # PostgreSQL): it returns None whenever the request is not one it can take.
        hot = getattr(repo, "_apply_hot", None)
        if hot is not None and at is not None and may_be_hot(event, policy):
            outcome = _storage(lambda: hot(event, at, policy))
        if outcome is None:
            outcome = _guarded(repo, unit)
        watch.report(outcome)
    return outcome


# -- the hot request ---------------------------------------------------------------------------
#
# The request most servers see most: a heartbeat or a progress update from the address of one
# live worker, which the decision places on that worker and whose only write refreshes it.  A
# store may make that write in one statement whose conditions say the decision would do nothing
# else (``docs/stores.md``, "The hot request"), then hand the worker as it was before the
# statement to :func:`hot_outcome`, which runs the decision itself on it: the outcome is the
# decision's own, never a copy of it.

_SHIPPED_RULES = (DEFAULT_RULES, NOTE_RULES, LEGACY_RULES)


class HotMismatch(Exception):
    """The decision asked for more than the hot request's one read, or wrote something else
    than the statement did: the statement's conditions are wrong (a bug)."""


def may_be_hot(event: Event, policy: Policy) -> bool:
    """Whether ``event`` may be a hot request under ``policy``: a heartbeat, or an update
    that ends no session, with no hint (each hint row reads), under a shipped rule table
    (whose rows before the exact-IP rule are the hint rows)."""
    identity = event.identity
    if identity.worker_id is not None or identity.assignment_id is not None:
        return False
    if event.kind is EventKind.GUI_UPDATE:
        if event.message in (FINISHED, FATAL_ERROR):
            return False
    elif event.kind is not EventKind.HEARTBEAT:
        return False
    return policy.rules in _SHIPPED_RULES


#: What the hot statement changes of the worker; it keeps every other field.
_TOUCHED = ("ip", "last_seen", "hostname_seen", "stale")
_KEPT = tuple(f.name for f in attrs.fields(Worker) if f.name not in _TOUCHED)


def _is_hot_touch(after: Worker, before: Worker, event: Event, now: datetime) -> bool:
    """Whether ``after`` is ``before`` as the hot statement leaves it: at the request's
    address, seen at ``now`` (or later, as it was), its hostname seen at ``now`` when the
    request carries it (it is the worker's), every other field as it was."""
    host = event.identity.hostname
    return (
        after.ip == event.identity.ip
        and after.last_seen == max(before.last_seen, now)
        and after.hostname_seen == (before.hostname_seen if host is None else now)
        and after.stale is False
        and all(getattr(after, name) == getattr(before, name) for name in _KEPT)
    )


def hot_outcome(event: Event, now: datetime, policy: Policy, before: Worker) -> Outcome:
    """The decision's outcome for the hot request ``event``, run on the one live worker at its
    address as it was (``before``).  Raises :class:`HotMismatch` when the decision reads
    anything else or writes anything but the hot statement's update."""
    expected = Query("live_workers_by_ip", (event.identity.ip, now - policy.stale_after))
    computation = decide(event, now, policy, new_worker_id=None)
    try:
        query = computation.send(None)
        if query != expected:
            raise HotMismatch(f"the decision asked {query!r}")
        query = computation.send([before])
        raise HotMismatch(f"the decision asked {query!r} too")
    except StopIteration as stop:
        outcome: Outcome = stop.value
    writes = outcome.writes
    if not (
        len(writes) == 1
        and type(writes[0]) is UpdateWorker
        and _is_hot_touch(writes[0].worker, before, event, now)
    ):
        raise HotMismatch(f"the decision writes {writes!r}")
    return outcome


def _guarded(repo: WorkerRepository, unit: Callable[[], T]) -> T:
    return _storage(lambda: repo.atomically(unit))


def _storage(fn: Callable[[], T]) -> T:
    """``fn()``, a failure of the store's own raised as a :class:`StorageError`."""
    try:
        return fn()
    except WorkermatchError:
        raise
    except Exception as exc:
        raise StorageError(f"the repository failed: {exc!r}") from exc


def sweep(
    repo: WorkerRepository, now: datetime | None, policy: Policy = DEFAULT_POLICY
) -> tuple[str, ...]:
    """Persist the ``stale`` flag of every worker silent past ``policy.stale_after`` at ``now``.

    For dashboards only: decisions evaluate staleness at their own ``now`` and never need a
    sweep.  Returns the ids flagged, sorted.  ``now`` of ``None``: the store's clock.
    """
    at = _check_now(now, repo)
    _check_policy(policy)

    def unit() -> tuple[str, ...]:
        when = _at(at, repo)
        found = sorted(
            repo.unflagged_workers_seen_before(when - policy.stale_after), key=lambda w: w.id
        )
        repo.write([UpdateWorker(worker=attrs.evolve(w, stale=True)) for w in found])
        return tuple(w.id for w in found)

    return _guarded(repo, unit)
