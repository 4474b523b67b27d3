"""Errors that say what to do, and bounded retries with back-off.

A conflict (a serialisation failure, a deadlock, a lock timeout, a locked SQLite database) is
rolled back and run again after a jittered, growing pause, until the repository's
``RetryPolicy`` gives up: then a ``TransientStorageError`` (``retryable``) that says after how
many attempts.  A lost connection is a ``TransientStorageError`` at once, and the next request
gets a live connection.  Sleep, randomness and the clock are injected: nothing here waits for a
back-off.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import workermatch as wm
from _stores import SQL_STORE_IDS, StoreFactory, skip_without_server
from _times import T0
from workermatch import aio
from workermatch.sql import DEFAULT_RETRY, RetryPolicy, SQLWorkerRepository

IP = "10.0.0.1"


class FakeTime:
    """A clock that only moves when the repository sleeps, and a record of the sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(fake: FakeTime, **changes: Any) -> RetryPolicy:
    return RetryPolicy(sleep=fake.sleep, clock=fake.clock, random=lambda: 1.0).evolve(**changes)


# -- the policy ----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_growing_exponentially_up_to_the_cap() -> None:
    top = RetryPolicy(base=0.005, cap=0.5, random=lambda: 0.999999)
    ceilings = [top.delay(n) for n in range(1, 12)]
    assert ceilings == sorted(ceilings)
    assert ceilings[0] == pytest.approx(0.005, rel=1e-3)
    assert ceilings[1] == pytest.approx(0.010, rel=1e-3)
    assert max(ceilings) <= 0.5
    assert ceilings[-1] == pytest.approx(0.5, rel=1e-3)
    assert RetryPolicy(random=lambda: 0.0).delay(5) == 0.0
    assert RetryPolicy(random=lambda: 0.5).delay(10_000) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "changes",
    [{"max_attempts": 0}, {"max_attempts": 2.5}, {"max_time": -1}, {"cap": float("nan")}],
)
def test_a_bad_retry_policy_is_invalid_input(changes: dict[str, Any]) -> None:
    with pytest.raises(wm.InvalidInput):
        DEFAULT_RETRY.evolve(**changes)


def test_the_errors_are_exported_and_say_whether_to_retry() -> None:
    assert issubclass(wm.TransientStorageError, wm.StorageError)
    assert wm.TransientStorageError("lost").retryable is True
    assert wm.StorageError("no such table").retryable is False
    assert wm.StorageError("x", retryable=True, attempts=3).attempts == 3


# -- SQLite: a database locked by another process -------------------------------------------------


@pytest.fixture
def locked_sqlite(tmp_path: Path) -> Iterator[tuple[str, sqlite3.Connection]]:
    """A SQLite file with the schema, and another connection holding its write lock."""
    path = tmp_path / "locked.db"
    with SQLWorkerRepository.from_url(f"sqlite:///{path}") as repo:
        repo.create_schema()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield f"sqlite:///{path}", other
    finally:
        other.close()


def test_a_locked_sqlite_database_gives_a_retryable_error_within_the_time_budget(
    locked_sqlite: tuple[str, sqlite3.Connection],
) -> None:
    url, other = locked_sqlite
    fake = FakeTime()
    retry = policy(fake, max_time=1.0, base=0.1, cap=0.5)
    with SQLWorkerRepository.from_url(url, retry=retry, connect_args={"timeout": 0.01}) as repo:
        with pytest.raises(wm.TransientStorageError) as info:
            wm.apply_event(wm.Event.heartbeat(IP), T0, repo)
        # pauses of 0.1, 0.2, 0.4 s; the fourth (0.5 s) would end after 1.0 s: give up.
        assert fake.sleeps == pytest.approx([0.1, 0.2, 0.4])
        assert info.value.retryable is True
        assert info.value.attempts == 4
        assert "gave up after 4 attempts" in str(info.value)
        assert "database is locked" in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert repo.retries == 3
        other.execute("ROLLBACK")
        assert wm.apply_event(wm.Event.heartbeat(IP), T0, repo).created


def test_a_lock_released_during_the_backoff_lets_the_retry_through(
    locked_sqlite: tuple[str, sqlite3.Connection],
) -> None:
    url, other = locked_sqlite
    fake = FakeTime()

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        if len(fake.sleeps) == 2:
            other.execute("COMMIT")

    retry = policy(fake, sleep=sleep)
    with SQLWorkerRepository.from_url(url, retry=retry, connect_args={"timeout": 0.01}) as repo:
        outcome = wm.apply_event(wm.Event.heartbeat(IP), T0, repo)
        assert outcome.created
        assert repo.retries == 2
        assert fake.sleeps == pytest.approx([0.005, 0.010])


def test_the_attempt_bound_holds_even_with_time_to_spare(
    locked_sqlite: tuple[str, sqlite3.Connection],
) -> None:
    url, _ = locked_sqlite
    fake = FakeTime()
    retry = policy(fake, max_attempts=3, max_time=3600.0)
    with SQLWorkerRepository.from_url(url, retry=retry, connect_args={"timeout": 0.01}) as repo:
        with pytest.raises(wm.TransientStorageError, match="gave up after 3 attempts"):
            wm.apply_event(wm.Event.heartbeat(IP), T0, repo)
        assert len(fake.sleeps) == 2


# -- PostgreSQL and MariaDB: lock timeouts are conflicts on both ----------------------------------


@pytest.mark.parametrize("store_factory", ["postgresql", "mysql"], indirect=True)
def test_a_lock_timeout_is_retried_alike_on_postgresql_and_mariadb(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    assert isinstance(store, SQLWorkerRepository)
    backend = store.engine.dialect.name
    wm.apply_event(wm.Event.heartbeat(IP), T0, store)
    fake = FakeTime()
    url = skip_without_server("postgresql" if backend == "postgresql" else "mysql")
    repo = SQLWorkerRepository.from_url(
        url, mapping=store.mapping, retry=policy(fake, max_attempts=3)
    )
    holder = sa.create_engine(repo.engine.url, poolclass=NullPool)

    @sa.event.listens_for(repo.engine, "connect")
    def short_lock_waits(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if backend == "postgresql":
            cur.execute("SET lock_timeout = '100ms'")
        else:
            cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cur.close()
        if backend == "postgresql":
            dbapi_conn.commit()

    w = repo.tables.w
    try:
        with holder.connect() as conn, conn.begin():
            conn.execute(sa.update(repo.tables.workers).values({w["stale"]: False}))
            with pytest.raises(wm.TransientStorageError) as info:
                wm.apply_event(wm.Event.heartbeat(IP), T0 + timedelta(seconds=5), repo)
        assert info.value.retryable is True
        assert info.value.attempts == 3
        assert len(fake.sleeps) == 2
        assert repo.retries == 2
        cause = info.value.__cause__
        if backend == "postgresql":
            assert getattr(cause, "sqlstate", None) == "55P03"
        else:
            assert getattr(cause, "args", (None,))[0] == 1205
        # The lock is gone: the same request now goes through.
        assert wm.apply_event(wm.Event.heartbeat(IP), T0 + timedelta(seconds=5), repo).rule is (
            wm.Rule.EXACT_IP
        )
    finally:
        holder.dispose()
        repo.close()


# -- lost connections ----------------------------------------------------------------------------


def _drop_pooled_connections(repo: SQLWorkerRepository, count: int) -> None:
    """Put ``count`` connections in the pool, then have the server drop every one of them (what
    a database restart or an idle-connection reaper does)."""
    conns = [repo.engine.connect() for _ in range(count)]
    raw = [c.connection.dbapi_connection for c in conns]
    for c in conns:
        c.close()
    backend = repo.engine.dialect.name
    killer = sa.create_engine(repo.engine.url, poolclass=NullPool)
    try:
        with killer.connect() as other:
            for dbapi_conn in raw:
                if backend == "postgresql":
                    pid = dbapi_conn.info.backend_pid  # type: ignore[union-attr]
                    other.execute(sa.text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})
                else:
                    other.exec_driver_sql(f"KILL CONNECTION {int(dbapi_conn.thread_id())}")  # type: ignore[union-attr]
    finally:
        killer.dispose()


@pytest.mark.parametrize("store_factory", ["postgresql", "mysql"], indirect=True)
def test_after_the_server_dropped_idle_connections_the_next_requests_succeed(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    assert isinstance(store, SQLWorkerRepository)
    backend = store.engine.dialect.name
    url = skip_without_server("postgresql" if backend == "postgresql" else "mysql")
    repo = SQLWorkerRepository.from_url(url, mapping=store.mapping)
    try:
        wm.apply_event(wm.Event.heartbeat(IP), T0, repo)
        _drop_pooled_connections(repo, 3)
        for i in range(6):
            outcome = wm.apply_event(wm.Event.heartbeat(IP), T0 + timedelta(seconds=i + 1), repo)
            assert outcome.rule is wm.Rule.EXACT_IP
    finally:
        repo.close()


@pytest.mark.parametrize(
    "store_factory", [s for s in SQL_STORE_IDS if s != "prisma"], indirect=True
)
def test_a_connection_lost_mid_unit_is_a_retryable_error_and_the_next_request_works(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    wm.apply_event(wm.Event.heartbeat(IP), T0, repo)

    def unit() -> None:
        _drop_current(repo)
        repo.all_workers()

    with pytest.raises(wm.TransientStorageError) as info:
        repo.atomically(unit)
    assert info.value.retryable is True
    assert info.value.__cause__ is not None
    assert wm.apply_event(wm.Event.heartbeat(IP), T0 + timedelta(seconds=1), repo).rule is (
        wm.Rule.EXACT_IP
    )


def _drop_current(repo: SQLWorkerRepository) -> None:
    dbapi_conn: Any = repo._conn().connection.dbapi_connection
    backend = repo.engine.dialect.name
    if backend == "sqlite":
        dbapi_conn.close()
        return
    killer = sa.create_engine(repo.engine.url, poolclass=NullPool)
    try:
        with killer.connect() as other:
            if backend == "postgresql":
                other.execute(
                    sa.text("SELECT pg_terminate_backend(:p, 5000)"),
                    {"p": dbapi_conn.info.backend_pid},
                )
            else:
                other.exec_driver_sql(f"KILL CONNECTION {int(dbapi_conn.thread_id())}")
    finally:
        killer.dispose()


# -- PostgreSQL 53200: out of (predicate lock) memory is a conflict ------------------------------


def _out_of_memory(dialect: Any) -> Exception:
    """The driver's error for SQLSTATE 53200, as psycopg or SQLAlchemy's asyncpg adapter
    raises it."""
    if dialect.driver == "psycopg":
        import psycopg

        return psycopg.errors.OutOfMemory("out of shared memory")
    error: Any = dialect.loaded_dbapi.OperationalError("out of shared memory")
    error.sqlstate = error.pgcode = "53200"
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("store_factory", ["postgresql", "postgresql-async"], indirect=True)
def test_postgresql_53200_is_retried_and_is_retryable_in_the_callers_transaction(
    store_factory: StoreFactory,
) -> None:
    from workermatch.sql import AsyncSQLWorkerRepository
    from workermatch.testing import BlockingRepository

    store = store_factory()
    fake = FakeTime()
    if isinstance(store, BlockingRepository):
        inner = store.repository
        sync_engine = inner.engine.sync_engine
        repo: Any = BlockingRepository(
            AsyncSQLWorkerRepository(inner.engine, mapping=inner.mapping, retry=policy(fake)),
            store.loop,
        )
        counter = repo.repository
    else:
        assert isinstance(store, SQLWorkerRepository)
        sync_engine = store.engine
        repo = counter = SQLWorkerRepository(
            store.engine, mapping=store.mapping, retry=policy(fake)
        )
    failing = [True, True]

    def fail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # A read of the tables (not the request locks taken before and given back after).
        if failing and statement.lstrip().upper().startswith("SELECT") and "FROM" in statement:
            failing.pop()
            raise _out_of_memory(conn.dialect)

    sa.event.listen(sync_engine, "before_cursor_execute", fail)
    try:
        assert wm.apply_event(wm.Event.heartbeat(IP), T0, repo).created
        assert counter.retries == 2
        assert len(fake.sleeps) == 2
        # In the caller's transaction the library does not retry: the caller gets it at once.
        failing.append(True)
        if isinstance(repo, BlockingRepository):

            async def bound_run() -> None:
                async with counter.engine.begin() as conn:
                    await aio.apply_event(wm.Event.heartbeat(IP), T0, counter.bound(conn))

            with pytest.raises(wm.TransientStorageError) as info:
                repo.loop.run(bound_run())
        else:
            with pytest.raises(wm.TransientStorageError) as info, counter.engine.begin() as conn:
                wm.apply_event(wm.Event.heartbeat(IP), T0, counter.bound(conn))
        assert info.value.retryable is True
        assert getattr(info.value.__cause__, "sqlstate", None) == "53200"
    finally:
        sa.event.remove(sync_engine, "before_cursor_execute", fail)
