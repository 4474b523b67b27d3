"""The caller's transaction: a SQL repository bound to a connection the application holds.

``repo.bound(conn)`` (a ``Connection`` or ``Session``; for the asyncio store an
``AsyncConnection`` or ``AsyncSession``) runs the decision in the application's transaction:
the decision's writes and the application's own commit together and roll back together; the
library never commits, rolls back or retries there; a serialisation failure (PostgreSQL
``40001``) or a lock wait timeout (MariaDB ``1205``) is a retryable ``TransientStorageError``,
and after the caller's rollback nothing of the transaction is stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import workermatch as wm
from _stores import ASYNC_STORE_IDS, StoreFactory, process_prefix
from _times import T0
from workermatch import aio
from workermatch.sql import AsyncSQLWorkerRepository, SQLWorkerRepository
from workermatch.testing import BlockingRepository

IP = "10.0.0.1"
SYNC_IDS = ("sqlite", "postgresql", "mysql")
SERVER_IDS = ("postgresql", "mysql", "postgresql-async", "mysql-async")


def audit_table() -> sa.Table:
    """The application's own table, written in the same transaction as the decision."""
    return sa.Table(
        f"{process_prefix()}app_audit",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("note", sa.String(50), nullable=False),
    )


class Store:
    """One store of either kind, with the calls the tests need written once."""

    def __init__(self, store_factory: StoreFactory) -> None:
        repo = store_factory()
        self.audit = audit_table()
        if isinstance(repo, BlockingRepository):
            self.sync: SQLWorkerRepository | None = None
            self.aio: AsyncSQLWorkerRepository = repo.repository
            self.loop = repo.loop
            self.run(self._recreate_async())
        else:
            assert isinstance(repo, SQLWorkerRepository)
            self.sync = repo
            with repo.engine.begin() as conn:
                self.audit.drop(conn, checkfirst=True)
                self.audit.create(conn)

    def run(self, coroutine: Any) -> Any:
        return self.loop.run(coroutine)

    async def _recreate_async(self) -> None:
        async with self.aio.engine.begin() as conn:
            await conn.run_sync(lambda c: self.audit.drop(c, checkfirst=True))
            await conn.run_sync(self.audit.create)

    def notes(self) -> list[str]:
        stmt = sa.select(self.audit.c.note).order_by(self.audit.c.id)
        if self.sync is not None:
            with self.sync.engine.connect() as conn:
                return list(conn.execute(stmt).scalars())

        async def read() -> list[str]:
            async with self.aio.engine.connect() as conn:
                return list((await conn.execute(stmt)).scalars())

        return self.run(read())  # type: ignore[no-any-return]

    def workers(self) -> list[wm.Worker]:
        if self.sync is not None:
            return sorted(self.sync.all_workers(), key=lambda w: w.id)
        return sorted(self.run(self.aio.all_workers()), key=lambda w: w.id)

    def apply(self, event: wm.Event, at: Any) -> wm.Outcome:
        """``apply_event`` in a transaction of the library's own."""
        if self.sync is not None:
            return wm.apply_event(event, at, self.sync, create_assignments=True)
        return self.run(aio.apply_event(event, at, self.aio, create_assignments=True))  # type: ignore[no-any-return]

    def in_transaction(
        self, how: str, body: Callable[[Any, Callable[[wm.Event, Any], Any]], Any]
    ) -> Any:
        """Run ``body(add_note, apply)`` in one transaction of the caller's (``how``:
        ``"connection"`` or ``"session"``), committed when ``body`` returns."""
        if self.sync is not None:
            repo = self.sync
            with contextlib.ExitStack() as stack:
                if how == "connection":
                    handle: Any = stack.enter_context(repo.engine.begin())
                else:
                    handle = stack.enter_context(Session(repo.engine))
                    stack.enter_context(handle.begin())
                bound = repo.bound(handle)
                return body(
                    lambda note: handle.execute(sa.insert(self.audit).values(note=note)),
                    lambda event, at: wm.apply_event(event, at, bound, create_assignments=True),
                )

        from sqlalchemy.ext.asyncio import AsyncSession

        async def go() -> Any:
            engine = self.aio.engine
            async with contextlib.AsyncExitStack() as stack:
                if how == "connection":
                    handle: Any = await stack.enter_async_context(engine.begin())
                else:
                    handle = await stack.enter_async_context(AsyncSession(engine))
                    await stack.enter_async_context(handle.begin())
                bound = self.aio.bound(handle)
                calls: list[Any] = []
                result = body(
                    lambda note: calls.append(("note", note)),
                    lambda event, at: calls.append(("event", event, at)),
                )
                out = []
                for call in calls:
                    if call[0] == "note":
                        await handle.execute(sa.insert(self.audit).values(note=call[1]))
                    else:
                        out.append(
                            await aio.apply_event(call[1], call[2], bound, create_assignments=True)
                        )
                if isinstance(result, Exception):
                    raise result
                return out

        return self.run(go())


bindable = pytest.mark.parametrize("store_factory", SYNC_IDS + ASYNC_STORE_IDS, indirect=True)


class AppError(Exception):
    pass


@bindable
@pytest.mark.parametrize("how", ["connection", "session"])
def test_the_decision_and_the_apps_writes_commit_together(
    store_factory: StoreFactory, how: str
) -> None:
    store = Store(store_factory)

    def body(note: Any, apply: Any) -> None:
        note("claim seen")
        apply(wm.Event.claim(IP, "A1"), T0)

    store.in_transaction(how, body)
    assert store.notes() == ["claim seen"]
    assert [w.ip for w in store.workers()] == [IP]


@bindable
@pytest.mark.parametrize("how", ["connection", "session"])
def test_an_app_error_rolls_the_decision_back_with_the_apps_writes(
    store_factory: StoreFactory, how: str
) -> None:
    store = Store(store_factory)

    def body(note: Any, apply: Any) -> Exception:
        note("claim seen")
        apply(wm.Event.claim(IP, "A1"), T0)
        error = AppError("the application failed after the decision")
        if store.sync is not None:
            raise error
        return error  # the asyncio harness raises it after the calls

    with pytest.raises(AppError):
        store.in_transaction(how, body)
    assert store.notes() == []
    assert store.workers() == []


@pytest.mark.parametrize("store_factory", SYNC_IDS, indirect=True)
def test_the_library_never_commits_the_callers_transaction(store_factory: StoreFactory) -> None:
    store = Store(store_factory)
    assert store.sync is not None
    with store.sync.engine.connect() as conn:
        outcome = wm.apply_event(wm.Event.register(IP), T0, store.sync.bound(conn))
        assert conn.in_transaction()
        # Inside the transaction the decision is visible ...
        assert store.sync.bound(conn).get_worker(outcome.worker.id) == outcome.worker
        conn.rollback()
    # ... and the caller's rollback undid it.
    assert store.workers() == []


@pytest.mark.parametrize("store_factory", SERVER_IDS, indirect=True)
def test_a_conflict_in_the_callers_transaction_is_retryable_and_leaves_nothing(
    store_factory: StoreFactory,
) -> None:
    store = Store(store_factory)
    first = store.apply(wm.Event.heartbeat(IP, hostname="pc-1"), T0)
    later = T0 + timedelta(seconds=1)
    if store.sync is not None:
        error = _conflict_sync(store, later)
    else:
        error = store.run(_conflict_async(store, later))
    assert isinstance(error, wm.TransientStorageError)
    assert error.retryable is True
    assert "roll it back and run it again" in str(error)
    cause = error.__cause__
    codes = {getattr(cause, "sqlstate", None), *tuple(getattr(cause, "args", ()))[:1]}
    assert codes & {"40001", 1205}, repr(cause)
    assert store.notes() == []
    (worker,) = store.workers()
    assert worker.id == first.worker.id
    assert worker.last_seen == later  # the other transaction's heartbeat, not the failed one's
    # Retried whole, the transaction goes through.
    store.in_transaction("connection", lambda note, apply: (note("retried"), apply(_beat(), later)))
    assert store.notes() == ["retried"]


def _beat() -> wm.Event:
    return wm.Event.heartbeat(IP, hostname="pc-1")


def _conflict_sync(store: Store, later: Any) -> BaseException:
    """A transaction of the caller's that loses to a concurrent one: on PostgreSQL the other
    commits an update of the worker after this one's snapshot; on MariaDB the other holds the
    worker's row lock past this one's (shortened) lock wait timeout."""
    repo = store.sync
    assert repo is not None
    backend = repo.engine.dialect.name
    with repo.engine.connect() as mine, repo.engine.connect() as other:
        if backend != "postgresql":
            mine.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
            mine.commit()
        mine.begin()
        mine.execute(sa.insert(store.audit).values(note="lost"))  # the snapshot is taken
        other.begin()
        wm.apply_event(_beat(), later, repo.bound(other))
        if backend == "postgresql":
            other.commit()
        with pytest.raises(wm.TransientStorageError) as info:
            wm.apply_event(_beat(), later + timedelta(seconds=1), repo.bound(mine))
        mine.rollback()
        if other.in_transaction():
            other.commit()
    return info.value


async def _conflict_async(store: Store, later: Any) -> BaseException:
    repo = store.aio
    backend = repo.engine.dialect.name
    async with repo.engine.connect() as mine, repo.engine.connect() as other:
        if backend != "postgresql":
            await mine.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
            await mine.commit()
        await mine.begin()
        await mine.execute(sa.insert(store.audit).values(note="lost"))
        await other.begin()
        await aio.apply_event(_beat(), later, repo.bound(other))
        if backend == "postgresql":
            await other.commit()
        with pytest.raises(wm.TransientStorageError) as info:
            await aio.apply_event(_beat(), later + timedelta(seconds=1), repo.bound(mine))
        await mine.rollback()
        if other.in_transaction():
            await other.commit()
    return info.value


def test_bound_refuses_what_is_not_a_connection_of_its_kind() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    with SQLWorkerRepository.from_url("sqlite://") as repo:
        with pytest.raises(wm.InvalidInput, match="Connection or Session") as info:
            repo.bound("not a connection")
        assert info.value.field == "connection"
    engine = create_async_engine("sqlite+aiosqlite://")
    repo_async = AsyncSQLWorkerRepository(engine)
    with pytest.raises(wm.InvalidInput, match=r"use SQLWorkerRepository\.bound"):
        repo_async.bound(Session())
    with pytest.raises(wm.InvalidInput, match=r"use AsyncSQLWorkerRepository\.bound"):
        SQLWorkerRepository(sa.create_engine("sqlite://")).bound(engine.connect())
