"""Faults: a statement that fails, or a connection that dies, at any write step of a decision.

Each decision below writes several rows.  For every write step, the fault is injected right
before that statement reaches the database: either the statement is replaced by one the
database rejects, or the connection is killed (``pg_terminate_backend`` on PostgreSQL, ``KILL``
on MariaDB, closing the connection on SQLite).  Afterwards the store holds exactly what it held
before, the caller got a :class:`~workermatch.StorageError` whose cause is the driver's
exception, and the store still works.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import workermatch as wm
from _stores import SQL_STORE_IDS, StoreFactory
from _stores import state as _state
from _times import T0
from workermatch.sql import SQLWorkerRepository

pytestmark = pytest.mark.parametrize("store_factory", SQL_STORE_IDS, indirect=True)

IP = "10.0.0.1"

Seed = Callable[[wm.WorkerRepository], None]


def _no_seed(repo: wm.WorkerRepository) -> None:
    wm.apply_event(wm.Event.register("10.9.9.9", hostname="other"), T0, repo)


def _claimed(repo: wm.WorkerRepository) -> None:
    wm.apply_event(wm.Event.claim(IP, "A1"), T0, repo, create_assignments=True)


SCENARIOS: dict[str, tuple[Seed, wm.Event, datetime]] = {
    # InsertAssignment, InsertWorker, UpdateAssignment
    "claim-creates": (_no_seed, wm.Event.claim(IP, "A1"), T0 + timedelta(seconds=1)),
    # InsertWorker, UpdateWorker (flag the stale one), UpdateAssignment (transfer)
    "heartbeat-transfers": (
        _claimed,
        wm.Event.heartbeat(IP, hostname="box"),
        T0 + timedelta(minutes=10),
    ),
    # UpdateWorker, UpdateAssignment (COMPLETED)
    "finished": (_claimed, wm.Event.gui_update(IP, "finished"), T0 + timedelta(seconds=5)),
}


def _is_write(statement: str) -> bool:
    return statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")


def _kill(repo: SQLWorkerRepository, dbapi_conn: Any) -> None:
    backend = repo.engine.dialect.name
    if backend == "postgresql":
        pid = dbapi_conn.info.backend_pid
        with repo.engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    elif backend in ("mysql", "mariadb"):
        thread_id = dbapi_conn.thread_id()
        with repo.engine.connect() as other:
            other.exec_driver_sql(f"KILL CONNECTION {int(thread_id)}")
            for _ in range(200):  # wait until the server has dropped it (bounded)
                n = other.execute(
                    sa.text("SELECT COUNT(*) FROM information_schema.processlist WHERE id = :i"),
                    {"i": thread_id},
                ).scalar()
                if not n:
                    break
                time.sleep(0.01)
    else:
        dbapi_conn.close()


@contextmanager
def _fault_at(repo: SQLWorkerRepository, step: int, mode: str) -> Iterator[list[int]]:
    seen = [0]

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any) -> Any:
        if _is_write(statement):
            seen[0] += 1
            if seen[0] == step:
                if mode == "fail":
                    return "THIS IS NOT SQL", params
                _kill(repo, conn.connection.dbapi_connection)
        return statement, params

    sa.event.listen(repo.engine, "before_cursor_execute", before, retval=True)
    try:
        yield seen
    finally:
        sa.event.remove(repo.engine, "before_cursor_execute", before)


def _count_writes(repo: SQLWorkerRepository, name: str) -> int:
    seed, event, now = SCENARIOS[name]
    seed(repo)
    with _fault_at(repo, step=0, mode="none") as seen:
        wm.apply_event(event, now, repo, create_assignments=True)
    return seen[0]


@pytest.mark.parametrize("mode", ["fail", "kill"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_fault_at_any_write_step_leaves_the_store_unchanged(
    store_factory: StoreFactory, name: str, mode: str
) -> None:
    probe = store_factory()
    assert isinstance(probe, SQLWorkerRepository)
    steps = _count_writes(probe, name)
    assert steps >= 2
    seed, event, now = SCENARIOS[name]
    dbapi_error = probe.engine.dialect.loaded_dbapi.Error
    for step in range(1, steps + 1):
        repo = store_factory(wm.sequential_ids())
        assert isinstance(repo, SQLWorkerRepository)
        seed(repo)
        before = _state(repo)
        with _fault_at(repo, step, mode), pytest.raises(wm.StorageError) as info:
            wm.apply_event(event, now, repo, create_assignments=True)
        assert isinstance(info.value.__cause__, dbapi_error), (step, info.value.__cause__)
        # A lost connection may work on a second try; a statement the database rejects will not.
        assert info.value.retryable is (mode == "kill"), (step, info.value)
        assert isinstance(info.value, wm.TransientStorageError) is (mode == "kill")
        assert _state(repo) == before, f"step {step} of {steps}"
        # The store still works, and the decision now goes through.
        outcome = wm.apply_event(event, now, repo, create_assignments=True)
        assert _state(repo) != before
        assert outcome.worker in repo.all_workers()


def test_a_failed_read_is_a_storage_error_with_the_driver_cause(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    broken = SQLWorkerRepository(
        repo.engine, mapping=repo.mapping.evolve(workers_table="no_such_table_here")
    )
    with pytest.raises(wm.StorageError) as info:
        wm.apply_event(wm.Event.heartbeat(IP), T0, broken)
    assert isinstance(info.value.__cause__, repo.engine.dialect.loaded_dbapi.Error)
    assert repo.all_workers() == []


def test_writes_are_all_or_nothing(store_factory: StoreFactory) -> None:
    repo = store_factory()
    w = wm.Worker(id="w1", ip=IP, created_at=T0, last_seen=T0)
    with pytest.raises(wm.StorageError, match="does not exist"):
        repo.write(
            [
                wm.InsertWorker(worker=w),
                wm.UpdateWorker(worker=wm.Worker(id="w2", ip=IP, created_at=T0, last_seen=T0)),
            ]
        )
    assert repo.all_workers() == []
    with pytest.raises(wm.StorageError) as info:
        repo.write([wm.InsertWorker(worker=w), wm.InsertWorker(worker=w)])
    assert info.value.__cause__ is not None
    assert repo.all_workers() == []
