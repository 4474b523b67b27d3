"""One clock per store: with ``now=None`` a decision uses the database server's time.

Two server processes writing to one database each decide with their own ``now``: when their
clocks disagree, one process sees the other's fresh writes as old (a live machine's worker
looks quiet) or from the future.  Asking the store for the time, inside the decision's own
transaction, gives every process the same clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

import workermatch as wm
from _stores import SQL_STORE_IDS, StoreFactory

sql_stores = pytest.mark.parametrize("store_factory", SQL_STORE_IDS, indirect=True)

SKEW = timedelta(seconds=45)
"""How far one process's clock runs ahead (more than the quiet period, less than two)."""

Clock = Callable[[], "datetime | None"]


def story(first: wm.WorkerRepository, second: wm.WorkerRepository, clock: Clock) -> wm.Outcome:
    """Machine 1 claims and runs through the first process; machine 2 claims through the
    second, and its GUI's first update (no hostname, a new address) comes through it too.
    Returns that update's outcome."""

    def apply(repo: wm.WorkerRepository, event: wm.Event, now: datetime | None) -> wm.Outcome:
        return wm.apply_event(event, now, repo, create_assignments=True)

    apply(first, wm.Event.claim("10.0.0.1", "A1"), None)
    apply(first, wm.Event.heartbeat("10.0.0.2", hostname="pc-1"), None)
    apply(first, wm.Event.gui_update("10.0.0.2", "overall_progress"), None)
    apply(second, wm.Event.claim("10.0.0.3", "A2"), clock())
    return apply(second, wm.Event.gui_update("10.0.0.4", "overall_progress"), clock())


def second_process(repo: wm.WorkerRepository) -> wm.WorkerRepository:
    from workermatch.sql import SQLWorkerRepository

    assert isinstance(repo, SQLWorkerRepository)
    return SQLWorkerRepository(repo.engine, mapping=repo.mapping)


@sql_stores
def test_the_store_tells_the_time(store_factory: StoreFactory) -> None:
    repo = store_factory()
    outcome = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), None, repo, create_assignments=True)
    assert outcome.worker.created_at == outcome.worker.last_seen
    assert abs(outcome.worker.created_at - repo.clock()) < timedelta(seconds=5)  # type: ignore[attr-defined]


@sql_stores
def test_a_process_whose_clock_runs_ahead_takes_a_live_machines_worker(
    store_factory: StoreFactory,
) -> None:
    """What one clock prevents: the second process, 45 s ahead, sees machine 1's worker fed a
    moment ago as quiet for 45 s, and gives machine 2's update to it (moving it to machine 2's
    address)."""
    first = store_factory()
    second = second_process(first)
    ahead = first.clock() + SKEW  # type: ignore[attr-defined]
    outcome = story(first, second, lambda: ahead)
    assert outcome.worker.id == outcome.decision.worker_id
    assert outcome.worker.hostname == "pc-1"
    assert outcome.ambiguous


@sql_stores
def test_with_the_stores_clock_skewed_processes_decide_alike(store_factory: StoreFactory) -> None:
    first = store_factory()
    second = second_process(first)
    outcome = story(first, second, lambda: None)
    assert outcome.worker.hostname is None  # a worker of its own, never machine 1's
    assert not outcome.ambiguous
    machine_1 = [w for w in first.all_workers() if w.hostname == "pc-1"]
    assert [w.ip for w in machine_1] == ["10.0.0.2"]


def test_the_memory_store_has_no_clock_of_its_own() -> None:
    with pytest.raises(wm.InvalidInput, match="store's clock") as info:
        wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), None, wm.InMemoryWorkerRepository())
    assert info.value.field == "now"
