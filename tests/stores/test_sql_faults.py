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


def _claimed_and_heard(repo: wm.WorkerRepository) -> None:
    """A claim whose machine was heard from again (a claim never heard from keeps its work)."""
    _claimed(repo)
    wm.apply_event(wm.Event.gui_update(IP, "progress"), T0 + timedelta(seconds=5), repo)


SCENARIOS: dict[str, tuple[Seed, wm.Event, datetime]] = {
    # InsertAssignment, InsertWorker, UpdateAssignment
    "claim-creates": (_no_seed, wm.Event.claim(IP, "A1"), T0 + timedelta(seconds=1)),
    # InsertWorker, UpdateWorker (flag the stale one), UpdateAssignment (transfer)
    "heartbeat-transfers": (
        _claimed_and_heard,
        wm.Event.heartbeat(IP, hostname="box"),
        T0 + timedelta(minutes=10),
    ),
    # UpdateWorker, UpdateAssignment (COMPLETED)
    "finished": (_claimed, wm.Event.gui_update(IP, "finished"), T0 + timedelta(seconds=5)),
}


def _is_write(statement: str) -> bool:
    """A write of the decision's unit (not PostgreSQL's hot statement, which commits on its own
    and hands the request to the unit when it fails: tests/stores/test_sql_hot.py)."""
    if "hot_old" in statement:
        return False
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


# -- a fault at every statement of a decision, reads and COMMIT included ---------------------

#: What the server reports for each fault, raised by the server inside the unit's transaction
#: (PostgreSQL: ``RAISE ... USING ERRCODE``; MariaDB: ``SIGNAL ... MYSQL_ERRNO``).
SERVER_FAULTS = {
    "postgresql": {
        "serialisation": "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
        "lock-timeout": "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '55P03'; END $$",
        "statement-timeout": (
            "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '57014'; END $$"
        ),
    },
    "mysql": {
        "serialisation": (
            "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'injected'"
        ),
        "lock-timeout": (
            "SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1205, MESSAGE_TEXT = 'injected'"
        ),
        "statement-timeout": (
            "SIGNAL SQLSTATE '70100' SET MYSQL_ERRNO = 1969, MESSAGE_TEXT = 'injected'"
        ),
    },
}
FAULTS = ("kill", "serialisation", "lock-timeout", "statement-timeout")
#: Faults the library runs the unit again for, at once (a conflict: the database rolled it back).
RETRIED_IN_PLACE = ("serialisation", "lock-timeout")


def _driver_error(repo: SQLWorkerRepository, fault: str) -> Exception:
    """The driver's exception for ``fault``, as the driver raises it when COMMIT fails."""
    dbapi = repo.engine.dialect.loaded_dbapi
    backend = repo.engine.dialect.name
    if backend == "sqlite":
        return dbapi.OperationalError("database is locked")
    if backend == "postgresql":
        import psycopg

        return {
            "serialisation": psycopg.errors.SerializationFailure,
            "lock-timeout": psycopg.errors.LockNotAvailable,
            "statement-timeout": psycopg.errors.QueryCanceled,
        }[fault]("injected")
    code = {"serialisation": 1213, "lock-timeout": 1205, "statement-timeout": 1969}[fault]
    return dbapi.OperationalError(code, "injected")


def _faults_for(repo: SQLWorkerRepository) -> tuple[str, ...]:
    # SQLite runs one unit at a time (no serialisation failure) and has no statement timeout;
    # its lock timeout is "database is locked" after the busy timeout.
    return ("kill", "lock-timeout") if repo.engine.dialect.name == "sqlite" else FAULTS


@contextmanager
def _fault_at_step(
    repo: SQLWorkerRepository, step: int, fault: str
) -> Iterator[tuple[list[int], list[str]]]:
    """Count every statement the store sends (each ``COMMIT`` included) and inject ``fault``
    right before step ``step`` (1-based; 0 counts only)."""
    seen, where = [0], []
    wrote = [False]  # whether the transaction being committed wrote anything
    backend = repo.engine.dialect.name
    dialect = repo.engine.dialect

    def tick(what: str) -> bool:
        seen[0] += 1
        if seen[0] == step:
            where.append(what)
            return True
        return False

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any) -> Any:
        # The hot statement (PostgreSQL) commits on its own, in autocommit.
        wrote[0] = wrote[0] or _is_write(statement)
        if tick(" ".join(statement.split())[:60]):
            if fault == "kill":
                _kill(repo, conn.connection.dbapi_connection)
            elif backend == "sqlite":
                raise _driver_error(repo, fault)
            else:
                server = SERVER_FAULTS["postgresql" if backend == "postgresql" else "mysql"]
                return server[fault], None if backend == "postgresql" else ()
        return statement, params

    original_commit = dialect.do_commit

    def do_commit(dbapi_conn: Any) -> None:
        # The COMMIT that ends a run which stopped before rule 3's read, having written
        # nothing, to run again holding the request locks.
        unwritten, wrote[0] = not wrote[0], False
        if tick("COMMIT, nothing written" if unwritten else "COMMIT"):
            if fault == "kill":
                _kill(repo, dbapi_conn)
            else:
                raise _driver_error(repo, fault)
        original_commit(dbapi_conn)

    sa.event.listen(repo.engine, "before_cursor_execute", before, retval=True)
    dialect.do_commit = do_commit  # type: ignore[assignment, method-assign]
    try:
        yield seen, where
    finally:
        sa.event.remove(repo.engine, "before_cursor_execute", before)
        del dialect.do_commit  # back to the class's


class _Ids:
    """Worker ids: ``seed-1``, ``seed-2``, ... while seeding, then always ``new-worker``
    (every decision below creates at most one worker, and a failed run's id comes back), so
    that a store after a retry compares equal to one after a run without fault."""

    def __init__(self) -> None:
        self.seeded = 0
        self.deciding = False

    def __call__(self) -> str:
        if self.deciding:
            return "new-worker"
        self.seeded += 1
        return f"seed-{self.seeded}"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_fault_at_any_statement_leaves_the_store_as_it_was_and_a_retry_succeeds(
    store_factory: StoreFactory, name: str
) -> None:
    """Every statement of the decision (the request locks, every read, every write, COMMIT)
    in turn meets each fault: a killed connection, a lock timeout, a statement timeout, a
    serialisation failure.  A conflict is run again by the library and the decision goes
    through; any other fault raises a StorageError and leaves the store as it was, and the
    same request sent again then goes through.  Either way the store ends as a run without
    fault leaves it."""
    seed, event, now = SCENARIOS[name]
    ids = _Ids()
    probe = store_factory(ids)
    assert isinstance(probe, SQLWorkerRepository)
    seed(probe)
    ids.deciding = True
    with _fault_at_step(probe, 0, "none") as (seen, _):
        wm.apply_event(event, now, probe, create_assignments=True)
    steps = seen[0]
    expected = _state(probe)
    assert steps >= 4
    for fault in _faults_for(probe):
        for step in range(1, steps + 1):
            ids = _Ids()
            repo = store_factory(ids)
            assert isinstance(repo, SQLWorkerRepository)
            seed(repo)
            ids.deciding = True
            before = _state(repo)
            label = f"{fault} at step {step} of {steps}"
            error: wm.StorageError | None = None
            with _fault_at_step(repo, step, fault) as (_, where):
                try:
                    wm.apply_event(event, now, repo, create_assignments=True)
                except wm.StorageError as exc:
                    error = exc
            assert where, f"{label}: the fault was never injected"
            if error is None:
                # Retried in place, or a fault after COMMIT (giving the locks back, after which
                # the connection is discarded).
                released = bool(where) and "LOCK" in where[0].upper().split("(")[0]
                # A failed COMMIT of a run that wrote nothing: the run goes on to its rerun.
                unwritten = where == ["COMMIT, nothing written"]
                # PostgreSQL: the hot statement failed (docs/stores.md, "The hot request"),
                # and the full unit decided the request.
                hot = step == 1 and where[0].startswith("UPDATE")  # the full unit reads first
                assert fault in RETRIED_IN_PLACE or released or unwritten or hot, (label, where)
            else:
                assert fault not in RETRIED_IN_PLACE, (label, where, error)
                assert _state(repo) == before, (label, where)  # nothing half-written
                # A lost connection during COMMIT: the unit may or may not be stored.
                committing = where == ["COMMIT"]
                assert error.retryable is not committing, (label, where, error)
                wm.apply_event(event, now, repo, create_assignments=True)  # sent again
            assert _state(repo) == expected, (label, where)


def test_a_connection_that_died_idle_in_the_pool_is_replaced(store_factory: StoreFactory) -> None:
    """The server dropped a pooled connection while it was idle (a restart, an idle timeout,
    an administrator's kill): the next request gets a live connection (the pool checks each
    connection before handing it out) and goes through, without a retry."""
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    backend = repo.engine.dialect.name
    if backend == "sqlite":
        pytest.skip("SQLite has no server to drop a connection")
    wm.apply_event(wm.Event.heartbeat(IP, hostname="box"), T0, repo)
    with repo.engine.connect() as conn:  # the pooled connection the decision used
        dbapi_conn: Any = conn.connection.dbapi_connection
        ident = dbapi_conn.info.backend_pid if backend == "postgresql" else dbapi_conn.thread_id()
    killer = sa.create_engine(repo.engine.url, poolclass=sa.pool.NullPool)
    with killer.connect() as other:
        if backend == "postgresql":
            other.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": ident})
        else:
            other.exec_driver_sql(f"KILL CONNECTION {int(ident)}")
    killer.dispose()
    time.sleep(0.2)  # the server closes the socket
    later = T0 + timedelta(seconds=5)
    outcome = wm.apply_event(wm.Event.heartbeat(IP, hostname="box"), later, repo)
    assert not outcome.created
    assert repo.retries == 0


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
