"""``match_worker`` and ``plan`` are pure: they read through the protocol and write nothing, and
their decisions do not depend on the order in which the repository returns its rows.

(The property test of guarantee 4 lives with the other guarantees; these are the examples.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import pytest

import workermatch as wm
from _stores import state
from _times import NOW

T = TypeVar("T")


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


class ReadOnly:
    """Delegates reads to ``inner`` and records them; any write fails the test."""

    def __init__(self, inner: wm.WorkerRepository) -> None:
        self.inner = inner
        self.reads: list[str] = []

    def _read(self, name: str, *args: Any) -> Any:
        self.reads.append(name)
        return getattr(self.inner, name)(*args)

    def get_worker(self, worker_id: str) -> wm.Worker | None:
        return self._read("get_worker", worker_id)  # type: ignore[no-any-return]

    def get_assignment(self, assignment_id: str) -> wm.Assignment | None:
        return self._read("get_assignment", assignment_id)  # type: ignore[no-any-return]

    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[wm.Worker]:
        return self._read("live_workers_by_ip", ip, seen_since)  # type: ignore[no-any-return]

    def live_workers_by_hostname(self, hostname: str, seen_since: datetime) -> Sequence[wm.Worker]:
        return self._read("live_workers_by_hostname", hostname, seen_since)  # type: ignore[no-any-return]

    def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[wm.Worker]:
        return self._read("recent_running_workers", created_since, seen_since)  # type: ignore[no-any-return]

    def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[wm.Worker]:
        return self._read("stale_running_workers", ip, hostname, seen_before)  # type: ignore[no-any-return]

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[wm.Assignment]:
        return self._read("running_assignments_of", worker_ids)  # type: ignore[no-any-return]

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[wm.Worker]:
        return self._read("unflagged_workers_seen_before", seen_before)  # type: ignore[no-any-return]

    def all_workers(self) -> Sequence[wm.Worker]:
        return self._read("all_workers")  # type: ignore[no-any-return]

    def all_assignments(self) -> Sequence[wm.Assignment]:
        return self._read("all_assignments")  # type: ignore[no-any-return]

    def new_worker_id(self) -> NoReturn:
        pytest.fail("a pure function asked for a new worker id")

    def write(self, writes: Iterable[wm.Write]) -> NoReturn:
        pytest.fail(f"a pure function wrote {list(writes)!r}")

    def atomically(self, fn: Callable[[], T]) -> NoReturn:
        pytest.fail("a pure function opened an atomic unit")


class Reordering(ReadOnly):
    """A read-only view that returns every query's rows in another order."""

    def __init__(self, inner: wm.WorkerRepository, order: Callable[[list[Any]], None]) -> None:
        super().__init__(inner)
        self.order = order

    def _read(self, name: str, *args: Any) -> Any:
        result = super()._read(name, *args)
        if isinstance(result, Sequence):
            rows = list(result)
            self.order(rows)
            return rows
        return result


def fleet(insertion_order: int = 0) -> wm.InMemoryWorkerRepository:
    """A store where most rules have several candidates, rejected ones and ties.

    ``insertion_order`` permutes the order in which the rows are written.
    """
    rows: list[tuple[wm.Worker, wm.Assignment | None]] = []

    def add(
        wid: str,
        ip: str,
        *,
        hostname: str | None = None,
        created: float = -100,
        seen: float = -1,
        running: str | None = None,
        ended: float | None = None,
    ) -> None:
        w = wm.Worker(
            id=wid,
            ip=ip,
            hostname=hostname,
            created_at=at(created),
            last_seen=at(seen),
            status=wm.WorkerStatus.RUNNING if running else wm.WorkerStatus.IDLE,
            assignment_id=running,
            ended_at=None if ended is None else at(ended),
        )
        a = None
        if running:
            a = wm.Assignment(
                id=running,
                status=wm.AssignmentStatus.RUNNING,
                worker_id=wid,
                started_at=at(created),
            )
        rows.append((w, a))

    # Behind one NAT address: tied candidates, one vetoed, one ended.
    add("nat-a", "192.0.2.1", hostname="alpha", seen=-3, running="A1")
    add("nat-b", "192.0.2.1", seen=-3, running="A2")
    add("nat-c", "192.0.2.1", seen=-3, running="A3")
    add("nat-d", "192.0.2.1", hostname="delta", seen=-1)
    add("nat-e", "192.0.2.1", seen=-1, ended=-2)
    # Recent claims: orphans, tied on every criterion but the id.
    add("orphan-1", "10.0.0.1", created=-40, seen=-40, running="B1")
    add("orphan-2", "10.0.0.2", created=-40, seen=-40, running="B2")
    add("orphan-3", "10.0.0.3", hostname="busy", created=-40, seen=-2, running="B3")
    # Same hostname on several live workers.
    add("host-1", "10.1.0.1", hostname="twin", created=-900, seen=-10)
    add("host-2", "10.1.0.2", hostname="twin", created=-900, seen=-10)
    # Silent past stale_after, holding work: transfers.
    add("stale-1", "10.2.0.1", hostname="gone", created=-3600, seen=-400, running="C1")
    add("stale-2", "10.2.0.1", created=-3600, seen=-500, running="C2")
    add("stale-3", "10.2.0.9", hostname="gone", created=-3600, seen=-450, running="C3")

    random.Random(insertion_order).shuffle(rows)
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids("new"))
    for w, a in rows:
        repo.write([wm.InsertWorker(worker=w), *([wm.InsertAssignment(assignment=a)] if a else [])])
    extra = ["P1", "P2"]
    random.Random(insertion_order).shuffle(extra)
    repo.write([wm.InsertAssignment(assignment=wm.Assignment(id=aid)) for aid in extra])
    return repo


IDENTITIES = [
    wm.Identity(ip="192.0.2.1"),
    wm.Identity(ip="192.0.2.1", hostname="alpha"),
    wm.Identity(ip="192.0.2.1", hostname="echo"),
    wm.Identity(ip="198.51.100.7"),
    wm.Identity(ip="198.51.100.7", hostname="busy"),
    wm.Identity(ip="198.51.100.7", hostname="twin"),
    wm.Identity(ip="10.2.0.1"),
    wm.Identity(ip="10.2.0.5", hostname="gone"),
    wm.Identity(ip="10.9.9.9", worker_id="nat-b"),
    wm.Identity(ip="10.9.9.9", worker_id="stale-1"),
    wm.Identity(ip="10.9.9.9", assignment_id="A3"),
    wm.Identity(ip="10.9.9.9", assignment_id="C1"),
]

EVENTS = [
    *(wm.Event(kind=wm.EventKind.HEARTBEAT, identity=i) for i in IDENTITIES),
    *(wm.Event(kind=wm.EventKind.GUI_UPDATE, identity=i, message="finished") for i in IDENTITIES),
    wm.Event.gui_update("10.2.0.1", "fatal_error"),
    wm.Event.claim("192.0.2.1", "P1"),
    wm.Event.claim("192.0.2.1", "A2"),
    wm.Event.claim("10.0.0.9", "B1"),
    wm.Event.claim("10.2.0.1", "C2"),
    wm.Event.claim("10.2.0.1", "NEW"),
    wm.Event.register("192.0.2.1", hostname="delta"),
]

POLICIES = [
    wm.DEFAULT_POLICY,
    wm.NOTE_POLICY,
    wm.LEGACY_POLICY,
    wm.DEFAULT_POLICY.evolve(name="skip-ambiguous", on_ambiguous=wm.OnAmbiguous.SKIP_RULE),
]


def safe_plan(event: wm.Event, repo: wm.WorkerRepository, policy: wm.Policy) -> object:
    """``plan``'s outcome, or the refusal it raised (a refusal is a decision too)."""
    try:
        return wm.plan(event, NOW, repo, policy, create_assignments=True)
    except (wm.ClaimRefused, wm.AmbiguousMatch) as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_match_worker_reads_and_writes_nothing(policy: wm.Policy) -> None:
    inner = fleet()
    before = state(inner)
    for identity in IDENTITIES:
        for kind in wm.EventKind:
            view = ReadOnly(inner)
            wm.match_worker(identity, NOW, view, policy, kind=kind)
            assert view.reads, "a decision reads through the repository"
    assert state(inner) == before


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_plan_writes_nothing_and_asks_for_no_worker_id(policy: wm.Policy) -> None:
    inner = fleet()
    before = state(inner)
    created = 0
    for event in EVENTS:
        outcome = safe_plan(event, ReadOnly(inner), policy)
        if isinstance(outcome, wm.Outcome) and outcome.created:
            assert outcome.worker.id == wm.NEW_WORKER
            created += 1
    if policy is wm.DEFAULT_POLICY:
        assert created > 0, "the events must exercise the creation of a worker"
    assert state(inner) == before


def test_plan_then_write_is_what_apply_event_does() -> None:
    for event in EVENTS:
        planned, applied = fleet(), fleet()
        outcome = safe_plan(event, planned, wm.DEFAULT_POLICY)
        if not isinstance(outcome, wm.Outcome):
            continue
        planned_ids = wm.sequential_ids("new")
        outcome = wm.plan(event, NOW, planned, create_assignments=True, new_worker_id=planned_ids)
        planned.write(outcome.writes)
        result = wm.apply_event(event, NOW, applied, create_assignments=True)
        assert result == outcome
        assert state(planned) == state(applied)


ORDERS: list[tuple[str, Callable[[list[Any]], None]]] = [
    ("reversed", lambda rows: rows.reverse()),
    *((f"shuffled-{seed}", random.Random(seed).shuffle) for seed in range(4)),
]


@pytest.mark.parametrize(("name", "order"), ORDERS, ids=[name for name, _ in ORDERS])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_decisions_do_not_depend_on_the_order_of_query_results(
    name: str, order: Callable[[list[Any]], None], policy: wm.Policy
) -> None:
    inner = fleet()
    ambiguous = 0
    for identity in IDENTITIES:
        for kind in wm.EventKind:
            expected = wm.match_worker(identity, NOW, inner, policy, kind=kind)
            got = wm.match_worker(identity, NOW, Reordering(inner, order), policy, kind=kind)
            assert got == expected, f"{name}: {got.explain()}\n!=\n{expected.explain()}"
            ambiguous += expected.ambiguous
    for event in EVENTS:
        assert safe_plan(event, Reordering(inner, order), policy) == safe_plan(event, inner, policy)
    if policy.on_ambiguous is wm.OnAmbiguous.TIE_BREAK:
        assert ambiguous > 0, "the fleet must exercise ties"


@pytest.mark.parametrize("insertion_order", [1, 2, 3])
def test_decisions_do_not_depend_on_the_order_rows_were_stored(insertion_order: int) -> None:
    reference, permuted = fleet(), fleet(insertion_order)
    assert state(reference) == state(permuted)
    for policy in POLICIES:
        for identity in IDENTITIES:
            assert wm.match_worker(identity, NOW, permuted, policy) == wm.match_worker(
                identity, NOW, reference, policy
            )
        for event in EVENTS:
            assert safe_plan(event, permuted, policy) == safe_plan(event, reference, policy)


def test_the_same_question_twice_gets_the_same_answer() -> None:
    repo = fleet()
    for identity in IDENTITIES:
        assert wm.match_worker(identity, NOW, repo) == wm.match_worker(identity, NOW, repo)
