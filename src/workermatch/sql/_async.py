"""The asyncio SQL repository: :class:`~workermatch.aio.AsyncWorkerRepository` on SQLAlchemy's
asyncio extension (asyncpg, aiosqlite, aiomysql).

It shares everything but connections and waiting with
:class:`~workermatch.sql.SQLWorkerRepository` (``_core``): the same statements, run on the
driver's cursor inside :meth:`~sqlalchemy.ext.asyncio.AsyncConnection.run_sync`, the same row
conversion, schema work, isolation, failure classification and retry policy.  A unit's
connection lives in a :class:`contextvars.ContextVar`, so each task sees its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError

from .._errors import InvalidInput, StorageError
from .._model import Assignment, Worker, check_id
from .._observe import applying, retried
from .._protocol import Write
from .._retry import DEFAULT_RETRY, RetryPolicy
from ._core import (
    NeedsLock,
    RepositoryBase,
    Runs,
    Unit,
    cause_of,
    check_backend,
    configure_engine,
    current_unit,
    entered,
    parse_url,
    sqlite_wal,
    wrong_type,
)
from ._core import (
    engine_options as build_engine_options,
)
from ._mapping import DEFAULT_MAPPING, TableMapping

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["AsyncSQLWorkerRepository", "normalize_async_url"]

T = TypeVar("T")

_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
    "sqlite": "sqlite+aiosqlite",
}


def normalize_async_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the library's asyncio driver for a plain scheme
    (``postgresql://`` -> asyncpg, ``mysql://`` and ``mariadb://`` -> aiomysql, ``sqlite://``
    -> aiosqlite).  An explicit driver is kept."""
    return parse_url(url, _ASYNC_DRIVERS)


def _async_types() -> tuple[type[Any], type[Any], type[Any]]:
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
    except ImportError as exc:  # pragma: no cover - greenlet missing
        raise StorageError(
            f"SQLAlchemy's asyncio extension is not available ({exc}): install the "
            "asyncio extra (from a checkout: python -m pip install '.[asyncio]')"
        ) from exc
    return AsyncEngine, AsyncConnection, AsyncSession


class AsyncSQLWorkerRepository(RepositoryBase):
    """An :class:`~workermatch.aio.AsyncWorkerRepository` in a SQL database (SQLite through
    aiosqlite, PostgreSQL through asyncpg, MariaDB / MySQL through aiomysql).

    ``engine`` is a SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (see
    :meth:`from_url`); ``mapping``, ``id_factory`` and ``retry`` are those of
    :class:`~workermatch.sql.SQLWorkerRepository`, and so are the statements, the isolation,
    the errors and the retries.  Use it with :mod:`workermatch.aio`; it belongs to the event
    loop its engine's connections were made on, and is safe to share between that loop's
    tasks.
    """

    _name = "AsyncSQLWorkerRepository"

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        mapping: TableMapping = DEFAULT_MAPPING,
        id_factory: Callable[[], str] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        async_engine, _, _ = _async_types()
        if not isinstance(engine, async_engine):
            raise wrong_type(
                engine,
                "engine",
                "engine must be a SQLAlchemy AsyncEngine",
                ": use workermatch.sql.SQLWorkerRepository for a synchronous Engine",
                ("Engine", "OptionEngine"),
            )
        sync_engine = engine.sync_engine
        check_backend(sync_engine.dialect, engine, "engine")
        self._setup(sync_engine.dialect, sync_engine.url.database, mapping, id_factory, retry)
        # SQLite: the tasks of this process queue here (BEGIN IMMEDIATE keeps other processes
        # out); made on first use, in the loop that uses it.
        self._local_lock: asyncio.Lock | None = None
        configured = configure_engine(sync_engine)
        self.engine: AsyncEngine = (
            engine if configured is sync_engine else engine.execution_options(**_serializable())
        )

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        mapping: TableMapping = DEFAULT_MAPPING,
        id_factory: Callable[[], str] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        **engine_options: Any,
    ) -> AsyncSQLWorkerRepository:
        """A repository on a new :class:`~sqlalchemy.ext.asyncio.AsyncEngine` for ``url``.

        Plain URLs get the library's asyncio driver: ``postgresql://`` (or ``postgres://``)
        asyncpg, ``mysql://`` and ``mariadb://`` aiomysql, ``sqlite:///file.db`` and
        ``sqlite://`` (memory, private to this repository) aiosqlite; a URL with an explicit
        asyncio driver (``postgresql+asyncpg://``, ``postgresql+psycopg://``,
        ``mysql+asyncmy://``) is used as is, one with a synchronous-only driver is an
        :class:`~workermatch.InvalidInput`.  The engine is set up as
        :meth:`SQLWorkerRepository.from_url <workermatch.sql.SQLWorkerRepository.from_url>`
        sets up its own (``SERIALIZABLE``, UTC sessions, ``pool_pre_ping``, SQLite's busy
        timeout and write-ahead log); ``engine_options`` go to
        :func:`~sqlalchemy.ext.asyncio.create_async_engine`.  ``await repo.close()`` disposes
        of the engine."""
        _async_types()
        from sqlalchemy.ext.asyncio import create_async_engine

        parsed = normalize_async_url(url)
        options = build_engine_options(parsed, engine_options)
        try:
            engine = create_async_engine(parsed, **options)
        except SQLAlchemyError as exc:
            if "async" in str(exc):
                raise InvalidInput(
                    f"{parsed.drivername!r} is not an asyncio driver: use a plain URL "
                    f"({parsed.get_backend_name()}://...), an asyncio driver, or "
                    "workermatch.sql.SQLWorkerRepository",
                    field="url",
                    value=url,
                ) from exc
            raise StorageError(f"cannot create an engine for {parsed!r}: {exc}") from exc
        except (ImportError, TypeError) as exc:
            raise StorageError(f"cannot create an engine for {parsed!r}: {exc}") from exc
        if parsed.get_backend_name() == "sqlite" and "poolclass" not in options:
            event.listen(engine.sync_engine, "connect", sqlite_wal)
        repo = cls(engine, mapping=mapping, id_factory=id_factory, retry=retry)
        repo._own_engine = True
        return repo

    # -- the caller's transaction ----------------------------------------------------------------

    def bound(self, connection: Any) -> AsyncSQLWorkerRepository:
        """This repository, running its units in the caller's transaction: ``connection`` is
        a SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncConnection` or
        :class:`~sqlalchemy.ext.asyncio.AsyncSession`.  The same contract as
        :meth:`SQLWorkerRepository.bound <workermatch.sql.SQLWorkerRepository.bound>`: the
        caller commits, rolls back and retries; a conflict is a
        :class:`~workermatch.TransientStorageError`."""
        _, async_connection, async_session = _async_types()
        if isinstance(connection, async_connection):
            self._check_dialect(connection.sync_engine.dialect, connection)
        elif not isinstance(connection, async_session):
            raise wrong_type(
                connection,
                "connection",
                "bound() takes a SQLAlchemy AsyncConnection or AsyncSession",
                ": use SQLWorkerRepository.bound for synchronous connections",
                ("Connection", "Session"),
            )
        return self._bound_to(connection)

    async def _caller_connection(self) -> Any:
        binding = self._binding
        _, async_connection, _ = _async_types()
        if isinstance(binding, async_connection):
            conn = binding
        else:
            conn = await binding.connection()
            self._check_dialect(conn.sync_engine.dialect, binding)
        if not conn.in_transaction():
            await conn.begin()  # what the caller's next execute() would do
        return conn

    async def _caller_unit(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            conn = await self._caller_connection()
        except SQLAlchemyError as exc:
            raise self._core.error("beginning the caller's transaction", exc) from cause_of(exc)
        try:
            with entered(self, _unit_of(conn)):
                return await fn()
        except BaseException as exc:
            self._core.raise_caller_failure(exc)
            raise

    # -- schema ----------------------------------------------------------------------------------

    async def create_schema(self) -> None:
        """:meth:`SQLWorkerRepository.create_schema
        <workermatch.sql.SQLWorkerRepository.create_schema>`, awaited."""
        await self._ddl(self._core.create_schema)

    async def check_schema(self, *, create_assignments: bool = False) -> None:
        """:meth:`SQLWorkerRepository.check_schema
        <workermatch.sql.SQLWorkerRepository.check_schema>`, awaited: one
        :class:`~workermatch.StorageError` listing every defect of the tables."""
        core = self._core
        await self._ddl(lambda conn: core.check_schema(conn, create_assignments=create_assignments))

    async def drop_schema(self) -> None:
        """:meth:`SQLWorkerRepository.drop_schema
        <workermatch.sql.SQLWorkerRepository.drop_schema>`, awaited."""
        await self._ddl(self._core.drop_schema)

    async def _ddl(self, run: Callable[[Connection], None]) -> None:
        async with self._locked():
            try:
                async with self.engine.connect() as conn, conn.begin():
                    await conn.run_sync(run)
            except SQLAlchemyError as exc:
                raise self._core.error("changing the schema", exc) from cause_of(exc)

    async def reset(self) -> None:
        """Delete every row of the mapped tables (assignments first)."""
        await self._read("emptying the tables", self._core.reset)

    async def is_empty(self) -> bool:
        """Whether the store holds no worker."""
        return await self._read("checking for workers", self._core.is_empty)

    async def close(self) -> None:
        """Dispose of the engine if :meth:`from_url` created it."""
        if self._own_engine:
            await self.engine.dispose()

    async def __aenter__(self) -> AsyncSQLWorkerRepository:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reads -----------------------------------------------------------------------------------

    async def get_worker(self, worker_id: str) -> Worker | None:
        check_id(worker_id, "worker_id")
        if not self._core.t.storable_worker_id(worker_id):
            return None  # no row of an integer or uuid column has such an id
        found = await self._workers("reading a worker", "by_id", {"wid": worker_id})
        return found[0] if found else None

    async def clock(self) -> datetime:
        """The database server's current time (UTC), as
        :meth:`SQLWorkerRepository.clock <workermatch.sql.SQLWorkerRepository.clock>`."""
        return await self._read("reading the database's clock", self._core.clock)

    async def get_assignment(self, assignment_id: str) -> Assignment | None:
        check_id(assignment_id, "assignment_id")
        if not self._core.t.storable_assignment_id(assignment_id):
            return None
        return await self._read(
            "reading an assignment", lambda unit: self._core.get_assignment(unit, assignment_id)
        )

    async def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        return await self._workers(
            "reading workers by IP", "by_ip", {"ip": ip, "since": seen_since}
        )

    async def live_workers_by_hostname(
        self, hostname: str, seen_since: datetime
    ) -> Sequence[Worker]:
        return await self._workers(
            "reading workers by hostname", "by_host", {"host": hostname, "since": seen_since}
        )

    async def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        return await self._workers(
            "reading recent running workers",
            "recent",
            {"created": created_since, "since": seen_since},
        )

    async def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        query, params = self._core.stale_query(ip, hostname, seen_before)
        return await self._workers("reading stale running workers", query, params)

    async def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        ids, known = self._core.running_lookup(current_unit(self), worker_ids)
        if known is not None:
            return known
        return await self._read(
            "reading running assignments",
            lambda unit: self._core.running_assignments_of(unit, ids),
        )

    async def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        return await self._workers(
            "reading unflagged workers", "unflagged", {"before": seen_before}
        )

    async def all_workers(self) -> Sequence[Worker]:
        return await self._workers("reading all workers", "all", {})

    async def all_assignments(self) -> Sequence[Assignment]:
        return await self._read("reading all assignments", self._core.all_assignments)

    # -- writes ----------------------------------------------------------------------------------

    async def write(self, writes: Iterable[Write]) -> None:
        ops = list(writes)
        if not ops:
            return
        await self._read("writing a decision", lambda unit: self._core.write(unit, ops))

    async def atomically(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` in one transaction and return its result (a unit already running in
        this task just awaits ``fn()``; on a :meth:`bound` repository, the caller's
        transaction).  Conflicts, failures and retries as
        :meth:`SQLWorkerRepository.atomically
        <workermatch.sql.SQLWorkerRepository.atomically>`; the back-off pauses with
        :func:`asyncio.sleep` (or the policy's own ``sleep``, awaited if it returns an
        awaitable)."""
        if current_unit(self) is not None:
            return await fn()
        if self._binding is not None:
            return await self._caller_unit(fn)
        core = self._core
        async with self._locked():
            # The runs and request locks, as in SQLWorkerRepository.atomically.
            runs = Runs(core, self.retry, applying())
            while True:
                attempt = runs.start()
                try:
                    conn = await self.engine.connect()
                except SQLAlchemyError as exc:
                    raise core.error("connecting", exc, attempts=attempt) from cause_of(exc)
                pause: float | None = None
                locked = rerun = False
                try:
                    committing = False
                    try:
                        if runs.locks:
                            locked = True
                            await conn.run_sync(core.acquire, runs.locks)
                        with entered(self, _unit_of(conn, runs.locks)):
                            await conn.begin()
                            result = await fn()
                            committing = True
                            await conn.commit()
                        return result
                    except NeedsLock:
                        # Nothing was written: COMMIT (see _core.end_unwritten).
                        try:
                            await conn.commit()
                        except Exception:
                            with contextlib.suppress(Exception):
                                await conn.rollback()
                        runs.needs_lock()
                        rerun = True
                    except BaseException as exc:
                        with contextlib.suppress(Exception):
                            await conn.rollback()
                        failure = runs.failure(exc, committing=committing)
                        if failure is None:
                            raise  # fn's own exception, or a StorageError of the library's
                        if failure.error is not None:
                            if failure.invalidate:
                                with contextlib.suppress(Exception):
                                    await conn.invalidate()
                            raise failure.error from failure.cause
                        pause = failure.pause
                finally:
                    if locked:
                        try:
                            await conn.run_sync(core.release, runs.locks or frozenset())
                        except Exception:
                            # The server gives a session's locks back when it ends.
                            with contextlib.suppress(Exception):
                                await conn.invalidate()
                    with contextlib.suppress(Exception):
                        await conn.close()
                if rerun:
                    self._reruns += 1
                    continue
                # A conflict: the connection is back in the pool while we wait.
                assert pause is not None
                runs.conflicted()
                self._retries += 1
                retried(self._backend)
                await _pause(runs.policy, pause)

    # -- internals -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        if self._backend != "sqlite":
            yield
            return
        if self._local_lock is None:
            self._local_lock = asyncio.Lock()
        async with self._local_lock:
            yield

    async def _read(self, what: str, fn: Callable[[Unit], T]) -> T:
        unit = current_unit(self)
        if unit is not None:
            return await self._on(unit, what, fn)

        async def run() -> T:
            inner = current_unit(self)
            assert inner is not None
            return await self._on(inner, what, fn)

        return await self.atomically(run)

    async def _on(self, unit: Unit, what: str, fn: Callable[[Unit], T]) -> T:
        """``fn(unit)`` on the unit's connection, its driver calls bridged to the loop."""
        core = self._core
        result: T = await unit.handle.run_sync(lambda _: core.guard(what, lambda: fn(unit)))
        return result

    async def _workers(self, what: str, query: str, params: dict[str, Any]) -> list[Worker]:
        return await self._read(what, lambda unit: self._core.workers(unit, query, params))


def _unit_of(conn: Any, locks: frozenset[str] | None = None) -> Unit:
    """A unit on ``conn``, an AsyncConnection that has connected, holding ``locks``."""
    sync_conn = conn.sync_connection
    assert sync_conn is not None
    return Unit(sync_conn, conn, locks)


def _serializable() -> dict[str, Any]:
    return {"isolation_level": "SERIALIZABLE"}


async def _pause(policy: RetryPolicy, seconds: float) -> None:
    if policy.sleep is time.sleep:
        await asyncio.sleep(seconds)
        return
    slept = policy.sleep(seconds)
    if inspect.isawaitable(slept):
        await slept
