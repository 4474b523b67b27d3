"""The SQL repository: the :class:`~workermatch.WorkerRepository` protocol on SQLAlchemy 2.

How a decision is made atomic and race-safe, per database (``docs/stores.md`` says why each is
safe):

* **PostgreSQL**: every transaction runs at ``SERIALIZABLE`` (serializable snapshot isolation);
  a serialisation failure, deadlock or lock timeout rolls the unit back and runs it again.
* **MariaDB / MySQL**: ``SERIALIZABLE`` (InnoDB turns every read into a locking read with
  next-key locks on the index ranges it scans); a deadlock or lock wait timeout rolls the unit
  back and runs it again.
* **SQLite**: every transaction starts with ``BEGIN IMMEDIATE``, which takes the database's
  write lock before the first read; threads of one process also share a lock.

Runs again follow a :class:`~workermatch.sql.RetryPolicy` (jittered exponential back-off,
bounded in attempts and time); every failure is classified (``Core.fault``) into a
:class:`~workermatch.StorageError` whose ``retryable`` says whether to try again.  A repository
bound to the caller's connection (:meth:`SQLWorkerRepository.bound`) runs its units in the
caller's transaction and leaves committing, rolling back and retrying to the caller.

The statements, the row conversion and the schema work are shared with the asyncio repository
(``_core``); this module only obtains connections and runs units on them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .._decision import Outcome
from .._engine import HotMismatch, hot_outcome
from .._errors import InvalidInput, StorageError
from .._model import Assignment, Event, Worker, check_id
from .._observe import applying, retried
from .._policy import Policy
from .._protocol import Write
from .._retry import DEFAULT_RETRY, RetryPolicy
from ._core import (
    CONFLICT,
    SQLITE_BUSY_TIMEOUT,
    NeedsLock,
    RepositoryBase,
    Runs,
    Unit,
    _autocommit,
    cause_of,
    check_backend,
    configure_engine,
    current_unit,
    end_unwritten,
    entered,
    is_async_url,
    parse_url,
    quiet_rollback,
    sqlite_wal,
    wrong_type,
)
from ._core import (
    engine_options as build_engine_options,
)
from ._mapping import DEFAULT_MAPPING, TableMapping

__all__ = ["SQLITE_BUSY_TIMEOUT", "SQLWorkerRepository", "normalize_url"]

T = TypeVar("T")

_PLAIN_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


_SERIALIZABLE_SESSION = "workermatch_serializable_session"

#: Set while the hot statement takes its connection: the pool's check is skipped.
_UNCHECKED: ContextVar[bool] = ContextVar("workermatch_unchecked_checkout", default=False)


def _ping_on_checkout(dialect: sa.Dialect) -> Callable[..., None]:
    """The pool's check of a connection at checkout (what ``pool_pre_ping`` does), skipped for
    the hot statement: a connection the server dropped invalidates the pool's connections, and
    the pool hands out a new one."""

    def check(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if _UNCHECKED.get():
            return
        if not dialect._do_ping_w_event(dbapi_conn):
            raise sa.exc.InvalidatePoolError()

    return check


def _serializable_session(dbapi_conn: Any, record: Any) -> None:
    """Make every transaction of a new psycopg connection ``SERIALIZABLE``, a statement run
    in autocommit included (psycopg's own ``isolation_level`` only sets its ``BEGIN``)."""
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    try:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"
            )
        finally:
            cursor.close()
    finally:
        dbapi_conn.autocommit = autocommit
    record.info[_SERIALIZABLE_SESSION] = True


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the library's driver for a plain scheme (``postgresql://`` ->
    psycopg 3, ``mysql://`` and ``mariadb://`` -> PyMySQL).  An explicit driver is kept."""
    return parse_url(url, _PLAIN_DRIVERS)


class SQLWorkerRepository(RepositoryBase):
    """A :class:`~workermatch.WorkerRepository` in a SQL database (SQLite, PostgreSQL, MariaDB).

    ``engine`` is a SQLAlchemy engine (see :meth:`from_url` to make one from a URL);
    ``mapping`` says which tables and columns to use (:data:`DEFAULT_MAPPING`: the library's
    own tables; :data:`PRISMA_MAPPING`: the real system's); ``id_factory`` makes new worker ids
    (default: random UUIDs); ``retry`` says when a unit that hit a conflict runs again
    (:data:`~workermatch.sql.DEFAULT_RETRY`).  Safe to share between threads.  For asyncio, see
    :class:`~workermatch.sql.AsyncSQLWorkerRepository`.
    """

    _name = "SQLWorkerRepository"
    engine: Engine

    def __init__(
        self,
        engine: Engine,
        *,
        mapping: TableMapping = DEFAULT_MAPPING,
        id_factory: Callable[[], str] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if not isinstance(engine, Engine):
            raise wrong_type(
                engine,
                "engine",
                "engine must be a SQLAlchemy Engine",
                ": use workermatch.sql.AsyncSQLWorkerRepository for an AsyncEngine",
                ("AsyncEngine",),
            )
        check_backend(engine.dialect, engine, "engine")
        if engine.dialect.is_async:
            raise InvalidInput(
                f"the engine's driver {engine.dialect.driver!r} is an asyncio driver: use "
                "workermatch.sql.AsyncSQLWorkerRepository (or a synchronous driver)",
                field="engine",
                value=engine,
            )
        self._setup(engine.dialect, engine.url.database, mapping, id_factory, retry)
        self._retries_lock = threading.Lock()
        # SQLite: one writer at a time anyway; threads of this process queue here instead of
        # spinning on SQLITE_BUSY (BEGIN IMMEDIATE keeps other processes out).
        self._local_lock: threading.RLock | None = (
            threading.RLock() if self._backend == "sqlite" else None
        )
        self.engine = configure_engine(engine)
        #: Whether hot requests may be decided in one statement (docs/stores.md, "The hot
        #: request"); the tests turn it off to compare with the full path.
        self._hot_path = True

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        mapping: TableMapping = DEFAULT_MAPPING,
        id_factory: Callable[[], str] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        **engine_options: Any,
    ) -> SQLWorkerRepository:
        """A repository on a new engine for ``url``: ``sqlite:///file.db``, ``sqlite://``
        (memory, private to this repository), ``postgresql://user@host:5432/db``,
        ``mysql://...`` or ``mariadb://...``; a SQLAlchemy URL with an explicit driver is used
        as is (an asyncio driver such as ``postgresql+asyncpg`` is an
        :class:`~workermatch.InvalidInput`: use
        :class:`~workermatch.sql.AsyncSQLWorkerRepository`).  :meth:`close` disposes of the
        engine.  ``engine_options`` go to :func:`sqlalchemy.create_engine`; ``connect_args``
        given there are merged into the library's own (SQLite's ``timeout``, the busy timeout,
        defaults to :data:`SQLITE_BUSY_TIMEOUT`).  Server engines check a pooled connection
        before a unit runs on it (``pool_pre_ping=True``; ``False`` turns it off), so a
        connection the server dropped is replaced; the hot statement on PostgreSQL goes without
        that check, and hands its request to a checked connection when its own has died."""
        parsed = normalize_url(url)
        if is_async_url(parsed):
            raise InvalidInput(
                f"{parsed.drivername!r} is an asyncio driver: use "
                "workermatch.sql.AsyncSQLWorkerRepository.from_url for it, or a plain URL "
                f"({parsed.get_backend_name()}://...) for the synchronous repository",
                field="url",
                value=url,
            )
        options = build_engine_options(parsed, engine_options)
        # The pool's check at checkout, made by the repository's own listener (below), which
        # the hot statement may skip.
        ping = bool(options.pop("pool_pre_ping", False))
        try:
            engine = sa.create_engine(parsed, **options)
        except (SQLAlchemyError, ImportError, TypeError) as exc:
            raise StorageError(f"cannot create an engine for {parsed!r}: {exc}") from exc
        if parsed.get_backend_name() == "sqlite" and "poolclass" not in options:
            event.listen(engine, "connect", sqlite_wal)
        if ping:
            event.listen(engine.pool, "checkout", _ping_on_checkout(engine.dialect))
        repo = cls(engine, mapping=mapping, id_factory=id_factory, retry=retry)
        repo._own_engine = True
        if repo._backend == "postgresql" and engine.dialect.driver == "psycopg":
            # The hot request runs as one statement in autocommit: at SERIALIZABLE too.
            event.listen(engine, "connect", _serializable_session)
        return repo

    # -- the caller's transaction ----------------------------------------------------------------

    def bound(self, connection: Any) -> SQLWorkerRepository:
        """This repository, running its units in the caller's transaction.

        ``connection`` is a SQLAlchemy :class:`~sqlalchemy.engine.Connection` or an ORM
        :class:`~sqlalchemy.orm.Session` the application already holds.  Every unit of the
        returned repository (``apply_event``, ``sweep``, reads outside a unit) runs on it, in its
        transaction (begun if none is), so that the decision's writes and the application's own
        commit together, or roll back together.  The repository never commits, rolls back,
        retries or discards that connection: a conflict (serialisation failure, deadlock, lock
        timeout) or a lost connection is a :class:`~workermatch.TransientStorageError`, after
        which the caller rolls the transaction back and runs it again, whole; any other
        database failure a :class:`~workermatch.StorageError`, after which it must be rolled
        back too.  The connection must use the repository's driver; on PostgreSQL and MariaDB
        its transaction should be ``SERIALIZABLE`` (as a connection of :attr:`engine` is), or
        decisions can race.  The schema calls still use :attr:`engine`.
        """
        from sqlalchemy.orm import Session

        if isinstance(connection, Connection):
            self._check_dialect(connection.dialect, connection)
        elif not isinstance(connection, Session):
            raise wrong_type(
                connection,
                "connection",
                "bound() takes a SQLAlchemy Connection or Session",
                ": use AsyncSQLWorkerRepository.bound for asyncio connections",
                ("AsyncConnection", "AsyncSession"),
            )
        return self._bound_to(connection)

    def _caller_connection(self) -> Connection:
        binding = self._binding
        conn: Connection = binding if isinstance(binding, Connection) else binding.connection()
        if conn is not binding:
            self._check_dialect(conn.dialect, binding)
        if not conn.in_transaction():
            conn.begin()  # what the caller's next execute() would do
        return conn

    def _caller_unit(self, fn: Callable[[], T]) -> T:
        try:
            conn = self._caller_connection()
        except SQLAlchemyError as exc:
            raise self._core.error("beginning the caller's transaction", exc) from cause_of(exc)
        try:
            with entered(self, Unit(conn)):
                return fn()
        except BaseException as exc:
            self._core.raise_caller_failure(exc)
            raise

    # -- schema ----------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create what the repository needs where it is missing (idempotent), then
        :meth:`check_schema`.

        With a mapping that owns its tables: the two tables and their indexes.  With
        ``owns_tables=False`` (someone else's tables, e.g. :data:`PRISMA_MAPPING`): the nullable
        columns of ``added_worker_columns`` and the indexes; a missing table or column is a
        :class:`~workermatch.StorageError`.
        """
        self._ddl(self._core.create_schema)

    def check_schema(self, *, create_assignments: bool = False) -> None:
        """Check, without changing anything, that the mapped tables are what the library needs,
        and raise one :class:`~workermatch.StorageError` that lists every defect found: a
        missing table, column or index; a column of the wrong type (a text id where the
        mapping says ``integer``, an ``inet`` address the mapping does not declare, times in a
        column that holds no times, ...); a ``NOT NULL`` column without a default that the
        library would not fill when it inserts a worker (with ``create_assignments=True``, an
        assignment too, as replays do); an id or hostname column whose collation makes two
        different values equal.  Call it at start-up.

        Such a collation (on MariaDB / MySQL any collation but a binary one, such as the
        default ``utf8mb4_general_ci`` or ``utf8mb4_uca1400_ai_ci``; on PostgreSQL a
        nondeterministic collation; on SQLite ``NOCASE`` or ``RTRIM``) would make the store
        decide differently from the reference (a claim of ``a1`` refused because ``A1`` runs):
        the message names the table, the column and the collation.
        """
        core = self._core
        self._ddl(lambda conn: core.check_schema(conn, create_assignments=create_assignments))

    def drop_schema(self) -> None:
        """Remove what :meth:`create_schema` made: the tables (with their rows) when the
        mapping owns them, else the library's indexes and added columns."""
        self._ddl(self._core.drop_schema)

    def _ddl(self, run: Callable[[Connection], None]) -> None:
        with self._locked():
            try:
                with self.engine.connect() as conn, conn.begin():
                    run(conn)
            except SQLAlchemyError as exc:
                raise self._core.error("changing the schema", exc) from cause_of(exc)

    def reset(self) -> None:
        """Delete every row of the mapped tables (assignments first)."""
        self._read("emptying the tables", self._core.reset)

    def is_empty(self) -> bool:
        """Whether the store holds no worker."""
        return self._read("checking for workers", self._core.is_empty)

    def close(self) -> None:
        """Dispose of the engine if :meth:`from_url` created it."""
        if self._own_engine:
            self.engine.dispose()

    def __enter__(self) -> SQLWorkerRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -----------------------------------------------------------------------------------

    def get_worker(self, worker_id: str) -> Worker | None:
        check_id(worker_id, "worker_id")
        if not self._core.t.storable_worker_id(worker_id):
            return None  # no row of an integer or uuid column has such an id
        found = self._workers("reading a worker", "by_id", {"wid": worker_id})
        return found[0] if found else None

    def clock(self) -> datetime:
        """The database server's current time (UTC): one clock for every server process that
        shares this database.  ``apply_event(event, None, repo)`` decides at this time, read in
        the decision's own transaction, so that clock skew between server processes cannot
        split a session or mix two."""
        return self._read("reading the database's clock", self._core.clock)

    def get_assignment(self, assignment_id: str) -> Assignment | None:
        check_id(assignment_id, "assignment_id")
        if not self._core.t.storable_assignment_id(assignment_id):
            return None
        return self._read(
            "reading an assignment", lambda unit: self._core.get_assignment(unit, assignment_id)
        )

    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        return self._workers("reading workers by IP", "by_ip", {"ip": ip, "since": seen_since})

    def live_workers_by_hostname(self, hostname: str, seen_since: datetime) -> Sequence[Worker]:
        return self._workers(
            "reading workers by hostname", "by_host", {"host": hostname, "since": seen_since}
        )

    def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        return self._workers(
            "reading recent running workers",
            "recent",
            {"created": created_since, "since": seen_since},
        )

    def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        query, params = self._core.stale_query(ip, hostname, seen_before)
        return self._workers("reading stale running workers", query, params)

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        ids, known = self._core.running_lookup(current_unit(self), worker_ids)
        if known is not None:
            return known
        return self._read(
            "reading running assignments",
            lambda unit: self._core.running_assignments_of(unit, ids),
        )

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        return self._workers("reading unflagged workers", "unflagged", {"before": seen_before})

    def all_workers(self) -> Sequence[Worker]:
        return self._workers("reading all workers", "all", {})

    def all_assignments(self) -> Sequence[Assignment]:
        return self._read("reading all assignments", self._core.all_assignments)

    # -- writes ----------------------------------------------------------------------------------

    def write(self, writes: Iterable[Write]) -> None:
        ops = list(writes)
        if not ops:
            return
        self._read("writing a decision", lambda unit: self._core.write(unit, ops))

    def atomically(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one transaction and return its result (a unit already running in this
        thread just calls ``fn``; on a :meth:`bound` repository, the caller's transaction).

        A conflict (serialisation failure, deadlock, lock timeout, locked SQLite database)
        rolls the unit back and runs it again after a back-off, as :attr:`retry` says; once
        that gives up, a :class:`~workermatch.TransientStorageError`.  Any other database
        failure is a :class:`~workermatch.StorageError` at once (``retryable`` when the
        connection or the server failed); the connection it happened on is discarded.  An
        exception of ``fn``'s own goes through unchanged, after the rollback.
        """
        if current_unit(self) is not None:
            return fn()
        if self._binding is not None:
            return self._caller_unit(fn)
        core = self._core
        with self._locked():
            runs = Runs(core, self.retry, applying())
            while True:
                attempt = runs.start()
                try:
                    conn = self.engine.connect()
                except SQLAlchemyError as exc:
                    raise core.error("connecting", exc, attempts=attempt) from cause_of(exc)
                pause: float | None = None
                locked = rerun = False
                try:
                    committing = False
                    try:
                        if runs.locks:
                            locked = True
                            core.acquire(conn, runs.locks)
                        with entered(self, Unit(conn, locks=runs.locks)):
                            conn.begin()
                            result = fn()
                            committing = True
                            conn.commit()
                        return result
                    except NeedsLock:
                        # Rule 3 is about to read the recent running workers: run the unit again
                        # from the start (nothing was written yet) holding the request's own
                        # locks and the recent running workers' lock.
                        end_unwritten(conn)
                        runs.needs_lock()
                        rerun = True
                    except BaseException as exc:
                        quiet_rollback(conn)
                        failure = runs.failure(exc, committing=committing)
                        if failure is None:
                            raise  # fn's own exception, or a StorageError of the library's
                        if failure.error is not None:
                            if failure.invalidate:
                                with contextlib.suppress(Exception):
                                    conn.invalidate()
                            raise failure.error from failure.cause
                        pause = failure.pause
                finally:
                    if locked:
                        assert runs.locks is not None
                        try:
                            core.release(conn, runs.locks)
                        except Exception:
                            # The server gives a session's locks back when it ends.
                            with contextlib.suppress(Exception):
                                conn.invalidate()
                    with contextlib.suppress(Exception):
                        conn.close()
                if rerun:
                    with self._retries_lock:
                        self._reruns += 1
                    continue
                # A conflict: the connection is back in the pool while we wait.
                assert pause is not None
                runs.conflicted()
                with self._retries_lock:
                    self._retries += 1
                retried(self._backend)
                runs.policy.sleep(pause)

    # -- the hot request ---------------------------------------------------------------------------

    def _apply_hot(self, event: Event, now: datetime, policy: Policy) -> Outcome | None:
        """Decide the hot request ``event`` in one statement (``apply_event`` calls it for a
        request that may be hot): the outcome, or ``None`` when the request is not hot here,
        nothing written (``apply_event`` then runs the full unit).

        PostgreSQL on an engine of :meth:`from_url` only, whose connections run every
        transaction, a single statement's included, at ``SERIALIZABLE``.  The statement
        refreshes the one live worker at the request's address when nothing about the address
        or the worker would make the decision do more, and returns the worker as it was; the
        decision then runs on it (:func:`~workermatch._engine.hot_outcome`).  When the
        statement fails (a conflict, a lost connection), the full unit runs, with its retries.
        """
        core = self._core
        if (
            not self._hot_path
            or not core._hot
            or self._binding is not None
            or current_unit(self) is not None
        ):
            return None
        # No check of the pooled connection (a round trip): if the server dropped it, the
        # statement fails and the full unit runs on a checked one.
        unchecked = _UNCHECKED.set(True)
        try:
            conn = self.engine.connect()
        except SQLAlchemyError as exc:
            raise core.error("connecting", exc, attempts=1) from cause_of(exc)
        finally:
            _UNCHECKED.reset(unchecked)
        try:
            if not conn.connection.info.get(_SERIALIZABLE_SESSION):
                return None  # a connection not set up by from_url's engine
            try:
                with _autocommit(conn, core.dbapi_error):
                    before = core.hot(Unit(conn), event, now, policy)
            except BaseException as exc:
                found = core._driver_failure(exc, committing=True)
                if found is None:
                    raise
                # A conflict rolled the statement back; any other failure wrote nothing, or,
                # when the connection failed as the statement ran, may have refreshed the
                # worker, which the full unit then finds refreshed and leaves as it is (a
                # refresh at the same time writes nothing).  The full unit decides, with its
                # retries and its errors.
                if core.fault(found[0]) != CONFLICT:
                    with contextlib.suppress(Exception):
                        conn.invalidate()
                return None
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        if before is None:
            return None
        try:
            return hot_outcome(event, now, policy, before)
        except HotMismatch as exc:  # pragma: no cover - the statement's conditions forbid it
            raise StorageError(
                f"the hot statement refreshed worker {before.id!r} for a request the decision "
                f"places otherwise ({exc}): a bug in workermatch, please report it"
            ) from exc

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._local_lock is None:
            yield
        else:
            with self._local_lock:
                yield

    def _conn(self) -> Connection:
        unit = current_unit(self)
        assert unit is not None, "only inside a unit"
        return unit.conn

    def _read(self, what: str, fn: Callable[[Unit], T]) -> T:
        core = self._core
        unit = current_unit(self)
        if unit is not None:
            return core.guard(what, lambda: fn(unit))

        def run() -> T:
            inner = current_unit(self)
            assert inner is not None
            return core.guard(what, lambda: fn(inner))

        return self.atomically(run)

    def _workers(self, what: str, query: str, params: dict[str, Any]) -> list[Worker]:
        return self._read(what, lambda unit: self._core.workers(unit, query, params))

    def _worker_values(self, w: Worker) -> dict[str, Any]:
        return self._core.worker_values(w)

    def _assignment_values(self, a: Assignment) -> dict[str, Any]:
        return self._core.assignment_values(a)
