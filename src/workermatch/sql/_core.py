"""What the synchronous and the asyncio SQL repositories share: the statements, the row
conversion, the schema work, the classification of failures, the unit in progress, the
bookkeeping of a unit's runs (:class:`Runs`) and the repositories' state and checks, none of
them I/O (:class:`RepositoryBase`).

Everything here runs on a synchronous SQLAlchemy :class:`~sqlalchemy.engine.Connection`: the
synchronous repository calls it directly, the asyncio one inside
:meth:`~sqlalchemy.ext.asyncio.AsyncConnection.run_sync`, where the same driver calls are
bridged to the event loop.  So both repositories send the same SQL text, convert rows the same
way and classify a driver's error the same way; only how a connection is obtained, and how a
unit waits, differ.

The unit in progress (its connection, the RUNNING assignments its worker queries fetched, and
the rows it read or wrote) lives in a :class:`contextvars.ContextVar`: each thread, and each
asyncio task, sees its own.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .._errors import InvalidInput, StorageError, TransientStorageError
from .._model import Assignment, AssignmentStatus, Event, EventKind, Worker, WorkerStatus
from .._observe import gave_up
from .._protocol import InsertAssignment, InsertWorker, UpdateAssignment, UpdateWorker, Write
from .._retry import PG_CONFLICT, PG_TRANSIENT, RetryPolicy, check_retry
from ._check import library_indexes_present, missing_indexes, schema_defects
from ._mapping import TableMapping
from ._tables import Tables, build_tables, changed_fields

T = TypeVar("T")

#: The SQLite busy timeout of the engines ``from_url`` makes: how long a statement waits for
#: another process's write lock before SQLite reports "database is locked".
SQLITE_BUSY_TIMEOUT = 30.0

BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb")
# The key of the advisory lock that serialises create_schema on PostgreSQL ("wmschema").
_SCHEMA_LOCK = 0x776D736368656D61

# What a driver error means (see Core.fault).
CONFLICT = "conflict"  # rolled back by the database; running the unit again is safe
TRANSIENT = "transient"  # the connection or the server failed; the request may succeed later
PERMANENT = "permanent"  # fails the same way until someone changes something

# MariaDB / MySQL error numbers: deadlock, lock wait timeout.
MY_CONFLICT = frozenset({1213, 1205})
# Too many connections, server shutdown, connection killed (MariaDB), can't connect, server
# gone away, lost connection, commands out of sync after a loss, disconnected for inactivity,
# and a statement timeout (MariaDB's max_statement_time, MySQL's max_execution_time).
MY_TRANSIENT = frozenset({1040, 1053, 1927, 1969, 2002, 2003, 2006, 2013, 2014, 2055, 3024, 4031})

ADDED_SINCE_0_1 = ("hostname_seen", "contested", "held_end")


def parse_url(url: str | URL, drivers: Mapping[str, str]) -> URL:
    """Parse ``url``, give a plain scheme the driver ``drivers`` names, and check the database
    is one the library supports."""
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        raise InvalidInput(f"not a database URL: {url!r} ({exc})", field="url", value=url) from None
    if parsed.drivername in drivers:
        parsed = parsed.set(drivername=drivers[parsed.drivername])
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise InvalidInput(
            f"unsupported database {backend!r} in {url!r}: use sqlite, postgresql, mysql or "
            "mariadb",
            field="url",
            value=url,
        )
    return parsed


def is_async_url(url: URL) -> bool:
    """Whether ``url`` names a driver that only SQLAlchemy's asyncio extension can run."""
    try:
        return bool(url.get_dialect().is_async)
    except Exception:  # an unknown driver: create_engine says what is wrong
        return False


def engine_options(url: URL, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``from_url`` passes to SQLAlchemy's engine factory for ``url``, with the
    caller's ``given`` ones (``connect_args`` merged into the library's own)."""
    from sqlalchemy.pool import StaticPool

    given = dict(given)
    backend = url.get_backend_name()
    options: dict[str, Any] = {}
    args: dict[str, Any]
    extra = dict(given.pop("connect_args", None) or {})
    if backend == "sqlite":
        args = {} if url.get_driver_name() == "aiosqlite" else {"check_same_thread": False}
        if url.database in (None, "", ":memory:"):
            options["poolclass"] = StaticPool
        else:
            args["timeout"] = SQLITE_BUSY_TIMEOUT
    else:
        options["isolation_level"] = "SERIALIZABLE"
        options["pool_pre_ping"] = True
        if backend in ("mysql", "mariadb"):
            args = {"init_command": "SET time_zone = '+00:00'"}
        elif url.get_driver_name() == "asyncpg":
            settings = {"timezone": "UTC", **dict(extra.pop("server_settings", None) or {})}
            args = {"server_settings": settings}
        else:
            args = {"options": "-c timezone=UTC"}
            if "options" in extra:
                extra["options"] = f"{args['options']} {extra['options']}"
    args.update(extra)
    options["connect_args"] = args
    options.update(given)
    return options


def configure_engine(engine: Engine) -> Engine:
    """The engine a repository runs its units on: SQLite gets ``BEGIN IMMEDIATE`` and foreign
    keys; a server engine not made ``SERIALIZABLE`` gets it per checkout."""
    if engine.dialect.name == "sqlite":
        configure_sqlite(engine)
        return engine
    if getattr(engine.dialect, "_on_connect_isolation_level", None) == "SERIALIZABLE":
        return engine  # every connection is set up once, when it is made
    # Set per checkout (and reset on return) on an engine that is not ours.
    return engine.execution_options(isolation_level="SERIALIZABLE")


class Unit:
    """One unit in progress: the connection it runs on (``handle``: the asyncio connection
    wrapping it, for the asyncio repository); while it has written nothing, the RUNNING
    assignments of the workers its queries returned; and ``seen``, each row as this unit last
    read or wrote it (keyed ``("w" or "a", id)``): an update writes only the columns that
    differ from it."""

    __slots__ = ("conn", "handle", "locks", "running", "seen")

    def __init__(
        self, conn: Connection, handle: Any = None, locks: frozenset[str] | None = None
    ) -> None:
        self.conn = conn
        self.handle = handle
        self.running: dict[str, list[Assignment]] | None = {}
        self.seen: dict[tuple[str, str], Worker | Assignment] = {}
        # The request locks the unit holds (see Core.lock_names), or None when it takes none.
        self.locks = locks


_UNITS: ContextVar[Mapping[object, Unit]] = ContextVar(
    "workermatch_sql_units", default=MappingProxyType({})
)


def current_unit(owner: object) -> Unit | None:
    """The unit ``owner`` (a repository) runs in this thread or task, or ``None``."""
    return _UNITS.get().get(owner)


@contextlib.contextmanager
def entered(owner: object, unit: Unit) -> Iterator[Unit]:
    """Make ``unit`` the one ``owner`` runs in this thread or task until the block ends."""
    units = dict(_UNITS.get())
    units[owner] = unit
    token = _UNITS.set(units)
    try:
        yield unit
    finally:
        _UNITS.reset(token)


#: The request lock of the recent running workers: held by every unit that reads them (rule 3,
#: the recent-orphan rule) and by every claim, which creates a running worker.
RUNNING_LOCK = "running"


class NeedsLock(Exception):
    """The unit is about to read the recent running workers without holding
    :data:`RUNNING_LOCK`: roll it back and run it again from the start, holding it."""


class LockBusy(Exception):
    """A request lock was not granted within :data:`LOCK_WAIT` seconds (MariaDB's
    ``GET_LOCK``): a conflict, the unit runs again after a back-off."""


#: How long a unit waits for its request locks on MariaDB / MySQL (``GET_LOCK``'s timeout).
LOCK_WAIT = 10


class Failure:
    """What to do after a unit failed: run it again after ``pause`` seconds, or raise
    ``error`` (from ``cause``), first discarding the connection when ``invalidate``."""

    __slots__ = ("cause", "error", "invalidate", "pause")

    def __init__(
        self,
        cause: BaseException,
        *,
        pause: float | None = None,
        error: StorageError | None = None,
        invalidate: bool = False,
    ) -> None:
        self.cause = cause
        self.pause = pause
        self.error = error
        self.invalidate = invalidate


class Core:
    """The statements of one mapping compiled for one dialect, and everything else both SQL
    repositories do the same way."""

    def __init__(
        self,
        dialect: sa.Dialect,
        mapping: TableMapping,
        id_factory: Callable[[], str],
    ) -> None:
        self.dialect = dialect
        self.backend = dialect.name
        self.mapping = mapping
        self.t: Tables = build_tables(mapping, self.backend)
        self.id_factory = id_factory
        self._w_cols = [self.t.w[f] for f in self.t.w]
        self._a_cols = [self.t.a[f] for f in self.t.a]
        self._wstatus = dict(mapping.worker_statuses)
        self._wstatus_back = {v: k for k, v in mapping.worker_statuses.items()}
        self._astatus = dict(mapping.assignment_statuses)
        self._astatus_back = {v: k for k, v in mapping.assignment_statuses.items()}
        self.dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        self._bind = _sqlite_time if self.backend == "sqlite" else _naive_utc
        #: What else names the store in its request locks' keys (the repository sets the
        #: database's name): stores on different tables never wait for each other.
        self.lock_space = ""
        self._lock_statements: dict[tuple[int, bool], Raw] = {}
        self._build_statements()

    # -- reads and writes of a unit --------------------------------------------------------------

    def raw(self, unit: Unit, stmt: Raw, params: dict[str, Any], *, fetch: bool = True) -> Any:
        """Run a precompiled statement on the driver's cursor of the unit's connection.

        SQLAlchemy's own execution costs several times the driver's on these small statements,
        and the decision's statements are all small.  The engine's ``before_cursor_execute``
        listeners still see every statement (so do the tests that count or break them); a
        driver error becomes a :class:`StorageError` with the driver's exception as its cause.
        Returns the rows, or with ``fetch=False`` the row count.
        """
        conn = unit.conn
        args: Any = stmt.params(params, self._bind)
        statement = stmt.sql
        cursor = None
        try:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            if conn._has_events or conn.engine._has_events:
                for fn in conn.dispatch.before_cursor_execute:
                    statement, args = fn(conn, cursor, statement, args, None, False)
            cursor.execute(statement, args)
            return cursor.fetchall() if fetch else cursor.rowcount
        except self.dbapi_error as exc:
            raise StorageError(f"the database failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()

    def workers(self, unit: Unit, query: str, params: dict[str, Any]) -> list[Worker]:
        if query == "recent" and unit.locks is not None and RUNNING_LOCK not in unit.locks:
            raise NeedsLock
        cache = unit.running
        if cache is None or query in ("all", "unflagged"):
            rows = self.raw(unit, self._r_workers[query], params)
            return [self.worker(r, unit) for r in rows]
        n = len(self._w_cols)
        workers: dict[str, Worker] = {}
        running: dict[str, list[Assignment]] = {}
        for row in self.raw(unit, self._r_workers_joined[query], params):
            wid = row[0]
            if wid not in workers:
                workers[wid] = self.worker(row[:n], unit)
                running[wid] = []
            if row[n] is not None:
                running[wid].append(self.assignment(row[n:], unit))
        cache.update(running)
        return list(workers.values())

    @staticmethod
    def stale_query(
        ip: str, hostname: str | None, seen_before: datetime
    ) -> tuple[str, dict[str, Any]]:
        """The query of :meth:`workers` and its parameters for
        ``stale_running_workers(ip, hostname, seen_before)``."""
        if hostname is None:
            return "stale_ip", {"ip": ip, "before": seen_before}
        return "stale_ip_host", {"ip": ip, "host": hostname, "before": seen_before}

    def get_assignment(self, unit: Unit, assignment_id: str) -> Assignment | None:
        rows = self.raw(unit, self._r_assignment, {"aid": assignment_id})
        return self.assignment(rows[0], unit) if rows else None

    def running_lookup(
        self, unit: Unit | None, worker_ids: Collection[str]
    ) -> tuple[list[str], list[Assignment] | None]:
        """For ``running_assignments_of(worker_ids)``: the ids a row can hold, each once, and
        the answer when it needs no query (the RUNNING assignments of those ids, when the
        unit's queries fetched them all; none, for no ids), else ``None``."""
        storable = self.t.storable_worker_id
        ids = [i for i in dict.fromkeys(worker_ids) if storable(i)]
        cache = None if unit is None else unit.running
        if cache is not None and all(i in cache for i in ids):
            return ids, [a for i in ids for a in cache[i]]
        return ids, (None if ids else [])

    def running_assignments_of(self, unit: Unit, ids: Collection[str]) -> list[Assignment]:
        rows = unit.conn.execute(self._q_running_of, {"ids": list(ids)})
        return [self.assignment(r, unit) for r in rows]

    def all_assignments(self, unit: Unit) -> list[Assignment]:
        return [self.assignment(r, unit) for r in self.raw(unit, self._r_all_assignments, {})]

    def clock(self, unit: Unit) -> datetime:
        value = unit.conn.execute(sa.select(self.utc_now_sql())).scalar_one()
        if isinstance(value, str):  # SQLite's strftime text
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]

    def is_empty(self, unit: Unit) -> bool:
        stmt = sa.select(self.t.w["id"]).select_from(self.t.workers).limit(1)
        return unit.conn.execute(stmt).first() is None

    def reset(self, unit: Unit) -> None:
        unit.conn.execute(sa.delete(self.t.assignments))
        unit.conn.execute(sa.delete(self.t.workers))

    def write(self, unit: Unit, ops: list[Write]) -> None:
        unit.running = None  # the cache no longer describes the store
        m = self.mapping
        seen = unit.seen
        for op in ops:
            problem = self.t.unstorable(op)
            if problem is not None:
                raise InvalidInput(f"{problem} (see the mapping's worker_types / assignment_types)")
            if isinstance(op, InsertWorker):
                values = self.worker_values(op.worker)
                values.update(m.worker_defaults)
                self.raw(unit, self._r_ins_worker, values, fetch=False)
            elif isinstance(op, InsertAssignment):
                values = self.assignment_values(op.assignment)
                values.update(m.assignment_defaults)
                self.raw(unit, self._r_ins_assignment, values, fetch=False)
            elif isinstance(op, (UpdateWorker, UpdateAssignment)):
                self._update(unit, op)
            else:  # pragma: no cover - guarded by the type checker
                raise StorageError(f"unknown write operation {op!r}")
            if isinstance(op, (InsertWorker, UpdateWorker)):
                seen[("w", op.worker.id)] = op.worker
            else:
                seen[("a", op.assignment.id)] = op.assignment

    def _update(self, unit: Unit, op: UpdateWorker | UpdateAssignment) -> None:
        """Write the columns of ``op``'s row that differ from the row as this unit read it (all
        but the id and ``created_at`` when it was not read): never a column whose value the
        decision did not change."""
        row: Worker | Assignment
        if isinstance(op, UpdateWorker):
            key, row, what = ("w", op.worker.id), op.worker, "worker"
            cols, values = self.t.w, self.worker_values(op.worker)
        else:
            key, row, what = ("a", op.assignment.id), op.assignment, "assignment"
            cols, values = self.t.a, self.assignment_values(op.assignment)
        fields = changed_fields(unit.seen.get(key), row, tuple(cols))
        if not fields:
            return  # nothing changed (the row was read in this unit, so it exists)
        stmt = self._r_updates.get((what, fields))
        if stmt is None:
            stmt = self._r_updates[(what, fields)] = self._update_statement(what, fields)
        params = {cols[f].name: values[cols[f].name] for f in fields}
        params["_key"] = row.id
        if self.raw(unit, stmt, params, fetch=False) != 1:
            raise StorageError(f"{what} {row.id!r} does not exist")

    # -- request locks ---------------------------------------------------------------------------

    def lock_names(self, event: Event | None) -> frozenset[str] | None:
        """The request locks a unit deciding ``event`` takes before its first read: its
        address, its hostname, and for a claim (which creates a running worker)
        :data:`RUNNING_LOCK`; ``None`` (no locks) on SQLite, whose units run one at a time
        anyway, or outside :func:`~workermatch.apply_event`."""
        if event is None or self.backend == "sqlite":
            return None
        identity = event.identity
        names = {f"ip:{identity.ip}"}
        if identity.hostname is not None:
            names.add(f"host:{identity.hostname}")
        if event.kind is EventKind.CLAIM:
            names.add(RUNNING_LOCK)
        return frozenset(names)

    def _lock_keys(self, names: Collection[str]) -> list[Any]:
        """The server's lock keys of ``names``, in one order for every unit (so that two units
        never wait for each other's): PostgreSQL advisory lock numbers (64 bits), MariaDB lock
        names (``GET_LOCK``'s are server-wide, and at most 64 characters)."""
        m = self.mapping
        space = f"{self.lock_space}\0{m.schema or ''}\0{m.workers_table}\0"
        keys: list[Any] = []
        for name in names:
            digest = hashlib.blake2b((space + name).encode(), digest_size=16).digest()
            if self.backend == "postgresql":
                keys.append(int.from_bytes(digest[:8], "big", signed=True))
            else:
                keys.append(f"workermatch:{digest.hex()}")
        return sorted(keys)

    def _lock_statement(self, count: int, *, release: bool = False) -> Raw:
        key = (count, release)
        found = self._lock_statements.get(key)
        if found is not None:
            return found
        big = sa.BigInteger() if self.backend == "postgresql" else sa.String()
        if self.backend == "postgresql":
            cols: list[Any] = (
                [sa.func.pg_advisory_unlock_all()]
                if release
                else [
                    sa.func.pg_advisory_lock(sa.bindparam(f"k{i}", type_=big)) for i in range(count)
                ]
            )
        elif release:
            cols = [sa.func.release_lock(sa.bindparam(f"k{i}", type_=big)) for i in range(count)]
        else:
            cols = [
                sa.func.get_lock(sa.bindparam(f"k{i}", type_=big), LOCK_WAIT) for i in range(count)
            ]
        found = self._lock_statements[key] = Raw(sa.select(*cols), self.dialect)
        return found

    def acquire(self, conn: Connection, names: Collection[str]) -> None:
        """Take the request locks ``names`` for the unit about to begin on ``conn``.

        They are session locks, taken before the unit's transaction and released after it
        (:meth:`release`): a PostgreSQL ``SERIALIZABLE`` transaction sees the database as of
        its first statement, so a lock taken inside it would not make it see what the unit it
        waited for wrote (and that unit's writes would make it fail to serialise).  On
        PostgreSQL they are taken outside any transaction (``pg_advisory_lock`` in autocommit);
        on MariaDB, ``GET_LOCK`` is not transactional and InnoDB's ``SERIALIZABLE`` reads are
        locking reads of the latest rows, so it runs as the unit's first statement.
        """
        keys = self._lock_keys(names)
        params = {f"k{i}": k for i, k in enumerate(keys)}
        stmt = self._lock_statement(len(keys))
        if self.backend == "postgresql":
            with _autocommit(conn, self.dbapi_error):
                self.raw(Unit(conn), stmt, params)
            return
        rows = self.raw(Unit(conn), stmt, params)
        if not rows or any(v != 1 for v in rows[0]):
            # Not granted within LOCK_WAIT (0) or an error (NULL): give back what was granted.
            self.release(conn, names)
            raise LockBusy(f"a request lock was not granted within {LOCK_WAIT} s")

    def release(self, conn: Connection, names: Collection[str]) -> None:
        """Give back the request locks ``names`` (after the unit's ``COMMIT`` or rollback)."""
        if self.backend == "postgresql":
            with _autocommit(conn, self.dbapi_error):
                self.raw(Unit(conn), self._lock_statement(0, release=True), {})
            return
        keys = self._lock_keys(names)
        params = {f"k{i}": k for i, k in enumerate(keys)}
        self.raw(Unit(conn), self._lock_statement(len(keys), release=True), params)

    # -- the schema (each on a connection inside a transaction) -----------------------------------

    def create_schema(self, conn: Connection) -> None:
        # Server processes that start together all create the schema: one at a time, so that
        # none fails on a catalogue row another one just wrote (PostgreSQL's DDL is
        # transactional, and the lock ends with the transaction; MariaDB's is not, so its named
        # lock is released here).
        if self.backend == "postgresql":
            # Read committed, so that what the process before us created is seen once the lock
            # is ours (a serializable snapshot would date from before the wait).
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"))
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        elif self.backend in ("mysql", "mariadb"):
            conn.execute(sa.text("SELECT GET_LOCK('workermatch_schema', 60)"))
            try:
                self._create_schema(conn)
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK('workermatch_schema')"))
            return
        self._create_schema(conn)

    def _create_schema(self, conn: Connection) -> None:
        insp = sa.inspect(conn)
        if self.mapping.owns_tables:
            self.t.metadata.create_all(conn, checkfirst=True)
            # Tables made by an earlier version lack the columns added since.
            self._add_missing(conn, sa.inspect(conn), ADDED_SINCE_0_1)
        else:
            self._add_columns(conn, insp)
        for index in missing_indexes(sa.inspect(conn), self.t):
            index.create(conn)
        self.check_schema(conn, create_assignments=False)

    def check_schema(self, conn: Connection, *, create_assignments: bool = False) -> None:
        """Raise one StorageError listing every way the tables differ from what the mapping
        needs (``_check.schema_defects``); read-only."""
        insp = sa.inspect(conn)
        schema = self.mapping.schema
        tables = [self.t.workers.name, self.t.assignments.name]
        exists = all(insp.has_table(name, schema=schema) for name in tables)
        defects = schema_defects(
            conn,
            self.t,
            self.backend,
            self._collations(conn) if exists else None,
            create_assignments=create_assignments,
        )
        if defects:
            listed = "".join(f"\n  - {d}" for d in defects)
            raise StorageError(
                f"the tables do not fit the mapping ({len(defects)} defect"
                f"{'s' if len(defects) != 1 else ''}):{listed}"
            )

    def drop_schema(self, conn: Connection) -> None:
        if self.mapping.owns_tables:
            self.t.metadata.drop_all(conn, checkfirst=True)
            return
        insp = sa.inspect(conn)
        prep = conn.dialect.identifier_preparer
        for index in library_indexes_present(insp, self.t):
            index.drop(conn)
        present = {
            c["name"] for c in insp.get_columns(self.t.workers.name, schema=self.mapping.schema)
        }
        for field in self.mapping.added_worker_columns:
            col = self.t.w[field]
            if col.name in present:
                conn.exec_driver_sql(
                    f"ALTER TABLE {prep.format_table(self.t.workers)} "
                    f"DROP COLUMN {prep.format_column(col)}"
                )

    def _collations(self, conn: Connection) -> dict[tuple[str, str], tuple[str, bool]]:
        """(table, column) -> (collation, whether it compares exactly), for the two tables'
        text columns that have a collation."""
        tables = [self.t.workers.name, self.t.assignments.name]
        schema = self.mapping.schema
        out: dict[tuple[str, str], tuple[str, bool]] = {}
        if self.backend in ("mysql", "mariadb"):
            rows = conn.execute(
                sa.text(
                    "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE())"
                    " AND TABLE_NAME IN (:t1, :t2) AND COLLATION_NAME IS NOT NULL"
                ),
                {"schema": schema, "t1": tables[0], "t2": tables[1]},
            )
            for table, column, collation in rows:
                name = str(collation).lower()
                out[(table, column)] = (collation, name == "binary" or name.endswith("_bin"))
        elif self.backend == "postgresql":
            rows = conn.execute(
                sa.text(
                    "SELECT c.relname, a.attname, co.collname, co.collisdeterministic"
                    " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " JOIN pg_collation co ON co.oid = a.attcollation"
                    " WHERE n.nspname = COALESCE(:schema, current_schema())"
                    " AND c.relname IN (:t1, :t2) AND a.attnum > 0 AND NOT a.attisdropped"
                ),
                {"schema": schema, "t1": tables[0], "t2": tables[1]},
            )
            for table, column, collation, deterministic in rows:
                out[(table, column)] = (collation, bool(deterministic))
        else:
            master = "sqlite_master" if schema is None else f'"{schema}".sqlite_master'
            for table in tables:
                sql = conn.exec_driver_sql(
                    f"SELECT sql FROM {master} WHERE type = 'table' AND name = ?", (table,)
                ).scalar()
                for column, collation in sqlite_collations(str(sql or "")).items():
                    out[(table, column)] = (collation, collation.upper() == "BINARY")
        return out

    def _add_missing(self, conn: Connection, insp: sa.Inspector, fields: Sequence[str]) -> None:
        """Add the nullable worker columns of ``fields`` that the workers table lacks."""
        present = {
            c["name"] for c in insp.get_columns(self.t.workers.name, schema=self.mapping.schema)
        }
        prep = conn.dialect.identifier_preparer
        for field in fields:
            col = self.t.w[field]
            if col.name in present:
                continue
            ddl_type = col.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(
                f"ALTER TABLE {prep.format_table(self.t.workers)} "
                f"ADD COLUMN {prep.format_column(col)} {ddl_type} NULL"
            )

    def _add_columns(self, conn: Connection, insp: sa.Inspector) -> None:
        schema = self.mapping.schema
        for table in (self.t.workers, self.t.assignments):
            if not insp.has_table(table.name, schema=schema):
                raise StorageError(f"table {table.fullname!r} does not exist")
        self._add_missing(conn, insp, self.mapping.added_worker_columns)
        for table, wanted in (
            (self.t.workers, self.t.w.values()),
            (self.t.assignments, self.t.a.values()),
        ):
            have = {c["name"] for c in insp.get_columns(table.name, schema=schema)}
            if table is self.t.workers:
                have |= {self.t.w[f].name for f in self.mapping.added_worker_columns}
            missing = [c.name for c in wanted if c.name not in have]
            if missing:
                raise StorageError(
                    f"table {table.fullname!r} has no column(s) {', '.join(missing)}; check the "
                    "mapping"
                )

    def worker(self, row: Sequence[Any], unit: Unit | None = None) -> Worker:
        """The worker of ``row``, remembered as read by ``unit``."""
        (wid, ip, hostname, created_at, last_seen, status, stale, aid, ended_at, merged) = row[:10]
        hostname_seen, contested, held_end = row[10:13]
        try:
            worker = Worker(
                id=wid,
                ip=ip,
                hostname=hostname,
                created_at=_from_db(created_at),
                last_seen=_from_db(last_seen),
                status=self._wstatus_back[status],
                stale=bool(stale),
                assignment_id=aid,
                ended_at=_from_db(ended_at),
                merged_into=merged,
                hostname_seen=_from_db(hostname_seen),
                contested=() if contested is None else json.loads(contested),
                held_end=held_end,
            )
        except (KeyError, ValueError, InvalidInput) as exc:
            raise StorageError(f"worker row {wid!r} cannot be read: {exc!r}") from exc
        if unit is not None:
            unit.seen[("w", worker.id)] = worker
        return worker

    def assignment(self, row: Sequence[Any], unit: Unit | None = None) -> Assignment:
        """The assignment of ``row``, remembered as read by ``unit``."""
        (aid, status, worker_id, started_at, ended_at) = row
        try:
            assignment = Assignment(
                id=aid,
                status=self._astatus_back[status],
                worker_id=worker_id,
                started_at=_from_db(started_at),
                ended_at=_from_db(ended_at),
            )
        except (KeyError, InvalidInput) as exc:
            raise StorageError(f"assignment row {aid!r} cannot be read: {exc!r}") from exc
        if unit is not None:
            unit.seen[("a", assignment.id)] = assignment
        return assignment

    def worker_values(self, w: Worker) -> dict[str, Any]:
        c = self.t.w
        return {
            c["id"].name: w.id,
            c["ip"].name: w.ip,
            c["hostname"].name: w.hostname,
            c["created_at"].name: w.created_at,
            c["last_seen"].name: w.last_seen,
            c["status"].name: self._wstatus[w.status],
            c["stale"].name: w.stale,
            c["assignment_id"].name: w.assignment_id,
            c["ended_at"].name: w.ended_at,
            c["merged_into"].name: w.merged_into,
            c["hostname_seen"].name: w.hostname_seen,
            c["contested"].name: json.dumps(list(w.contested)) if w.contested else None,
            c["held_end"].name: None if w.held_end is None else w.held_end.to_json(),
        }

    def assignment_values(self, a: Assignment) -> dict[str, Any]:
        c = self.t.a
        return {
            c["id"].name: a.id,
            c["status"].name: self._astatus[a.status],
            c["worker_id"].name: a.worker_id,
            c["started_at"].name: a.started_at,
            c["ended_at"].name: a.ended_at,
        }

    def utc_now_sql(self) -> Any:
        if self.backend == "postgresql":
            return sa.text("(now() AT TIME ZONE 'UTC')")
        if self.backend in ("mysql", "mariadb"):
            return sa.text("UTC_TIMESTAMP(3)")
        return sa.text("strftime('%Y-%m-%d %H:%M:%f', 'now')")

    def fault(self, cause: BaseException) -> str:
        """Classify a driver exception: a conflict (the database rolled the transaction back;
        run the unit again), transient (the connection or server failed; the request may
        succeed later) or permanent."""
        if isinstance(cause, LockBusy):
            return CONFLICT
        if self.backend == "postgresql":
            state = getattr(cause, "sqlstate", None)
            if state in PG_CONFLICT:
                return CONFLICT
            if state in PG_TRANSIENT or (isinstance(state, str) and state.startswith("08")):
                return TRANSIENT
        elif self.backend in ("mysql", "mariadb"):
            args: tuple[Any, ...] = tuple(getattr(cause, "args", ()))
            code = args[0] if args else None
            if code in MY_CONFLICT:
                return CONFLICT
            if code in MY_TRANSIENT:
                return TRANSIENT
        else:
            text = str(cause).lower()
            if "database is locked" in text or "database is busy" in text:
                return CONFLICT
        try:
            if isinstance(cause, self.dbapi_error) and self.dialect.is_disconnect(
                cause,  # type: ignore[arg-type]  # the driver's own Error class
                None,
                None,
            ):
                return TRANSIENT
        except Exception:  # pragma: no cover - a dialect that cannot tell
            pass
        return PERMANENT

    def error(self, what: str, exc: BaseException, *, attempts: int | None = None) -> StorageError:
        """The StorageError for a SQLAlchemy or driver exception raised while ``what``."""
        cause = cause_of(exc)
        return make_error(message(what, cause), self.fault(cause), attempts)

    def guard(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, with a SQLAlchemy error turned into the StorageError for ``what``."""
        try:
            return fn()
        except SQLAlchemyError as exc:
            raise self.error(what, exc) from cause_of(exc)

    def _driver_failure(
        self, exc: BaseException, *, committing: bool
    ) -> tuple[BaseException, str] | None:
        """The driver's exception behind ``exc`` and a message, or ``None`` when ``exc`` is not
        a database failure (the unit's own exception, or a StorageError of the library's)."""
        if isinstance(exc, SQLAlchemyError):
            cause = cause_of(exc)
            return cause, message("committing" if committing else "running a unit", cause)
        if isinstance(exc, StorageError) and isinstance(exc.__cause__, self.dbapi_error):
            return exc.__cause__, str(exc)
        if isinstance(exc, LockBusy):
            return exc, f"the database failed while running a unit: {exc}"
        return None

    def failure(
        self,
        exc: BaseException,
        *,
        committing: bool,
        attempt: int,
        started: float,
        policy: RetryPolicy,
    ) -> Failure | None:
        """What to do after run ``attempt`` of a unit the repository owns raised ``exc`` (and
        was rolled back): ``None`` to let ``exc`` through unchanged.

        A conflict runs the unit again after a back-off while ``policy`` allows, then gives a
        :class:`TransientStorageError`; any other database failure is a :class:`StorageError`
        at once (``retryable`` when the connection or the server failed, except during
        ``COMMIT``, when the unit may or may not be stored) and discards the connection.
        """
        found = self._driver_failure(exc, committing=committing)
        if found is None:
            return None
        cause, text = found
        fault = self.fault(cause)
        if fault == CONFLICT:
            elapsed = policy.clock() - started
            delay = policy.delay(attempt)
            if attempt < policy.max_attempts and elapsed + delay <= policy.max_time:
                return Failure(cause, pause=delay)
            gave_up(attempt, elapsed, text)
            return Failure(
                cause,
                error=TransientStorageError(
                    f"{text} (gave up after {attempt} attempt{'s' if attempt != 1 else ''} in "
                    f"{elapsed:.2f} s; the database kept reporting conflicts: retry later)",
                    attempts=attempt,
                ),
            )
        # The connection may be dead or half-way through something: never hand it back to the
        # pool.
        if committing and fault == TRANSIENT:
            error = StorageError(
                f"{text} (the connection failed during COMMIT: the unit may or may not have "
                "been stored)",
                retryable=False,
                attempts=attempt,
            )
            return Failure(cause, error=error, invalidate=True)
        return Failure(cause, error=make_error(text, fault, attempt), invalidate=True)

    def caller_failure(self, exc: BaseException) -> Failure | None:
        """What to raise after a unit on the caller's transaction raised ``exc``: ``None`` to
        let ``exc`` through.  Nothing is retried, rolled back or discarded: a conflict or a
        failed connection is a :class:`TransientStorageError` (roll the transaction back and
        run it again), anything else a :class:`StorageError`."""
        found = self._driver_failure(exc, committing=False)
        if found is None:
            return None
        cause, text = found
        if self.fault(cause) == PERMANENT:
            return Failure(
                cause, error=StorageError(f"{text} (in the caller's transaction)", attempts=1)
            )
        return Failure(
            cause,
            error=TransientStorageError(
                f"{text} (in the caller's transaction: roll it back and run it again)",
                attempts=1,
            ),
        )

    def raise_caller_failure(self, exc: BaseException) -> None:
        """Raise what :meth:`caller_failure` says for ``exc``; return when ``exc`` goes
        through unchanged (the caller then re-raises it)."""
        failure = self.caller_failure(exc)
        if failure is not None and failure.error is not None:
            raise failure.error from failure.cause

    def _build_statements(self) -> None:
        """Every statement, built once with bound parameters (SQLAlchemy then compiles each
        once per dialect and reuses it)."""
        t, m = self.t, self.mapping
        w, a = t.w, t.a
        b = sa.bindparam
        w_running = b("w_running", self._wstatus[WorkerStatus.RUNNING], type_=w["status"].type)
        a_running = b("a_running", self._astatus[AssignmentStatus.RUNNING], type_=a["status"].type)
        live = (w["stale"] == sa.false(), w["merged_into"].is_(None))
        stale_or_old = sa.or_(w["stale"] == sa.true(), w["last_seen"] < b("before"))
        wheres: dict[str, tuple[sa.ColumnElement[bool], ...]] = {
            "by_id": (w["id"] == b("wid"),),
            "by_ip": (w["ip"] == b("ip"), w["last_seen"] >= b("since"), *live),
            "by_host": (t.hostname_key == b("host"), w["last_seen"] >= b("since"), *live),
            "recent": (
                w["status"] == w_running,
                w["created_at"] >= b("created"),
                w["last_seen"] >= b("since"),
                *live,
            ),
            "stale_ip": (
                w["ip"] == b("ip"),
                w["status"] == w_running,
                w["merged_into"].is_(None),
                stale_or_old,
            ),
            "stale_host": (
                t.hostname_key == b("host"),
                w["status"] == w_running,
                w["merged_into"].is_(None),
                stale_or_old,
            ),
            "unflagged": (w["stale"] == sa.false(), w["last_seen"] < b("before")),
            "all": (),
        }
        joined = t.workers.outerjoin(
            t.assignments, sa.and_(a["worker_id"] == w["id"], a["status"] == a_running)
        )
        self._q_workers: dict[str, Any] = {
            k: sa.select(*self._w_cols).where(*v) for k, v in wheres.items()
        }
        self._q_workers_joined: dict[str, Any] = {
            k: sa.select(*self._w_cols, *self._a_cols).select_from(joined).where(*v)
            for k, v in wheres.items()
        }
        if self.backend == "postgresql":
            # The recent running workers: their RUNNING assignments through a LATERAL subquery
            # that the planner cannot flatten (OFFSET 0), so that every plan of it, the generic
            # plan of a prepared statement included, looks each worker's up in the holder
            # index.  With a plain join, the generic plan (which cannot see how few workers
            # were created since the parameter) is a hash join over every RUNNING assignment;
            # a connection whose plan cache once chose it would then scan on every create.
            running = (
                sa.select(*self._a_cols)
                .where(a["worker_id"] == w["id"], a["status"] == a_running)
                .offset(sa.literal_column("0"))
                .lateral("running")
            )
            self._q_workers_joined["recent"] = (
                sa.select(*self._w_cols, *running.c)
                .select_from(t.workers.outerjoin(running, sa.true()))
                .where(*wheres["recent"])
            )
        # "Same IP or same hostname" is a UNION of two index lookups, each pinned to its index on
        # SQLite: without statistics its planner otherwise picks the status index and reads every
        # RUNNING worker.
        quote = self.dialect.identifier_preparer.quote
        ip_idx, host_idx = (quote(str(ix.name)) for ix in t.indexes[:2])
        for q in (self._q_workers, self._q_workers_joined):
            q["stale_ip"] = q["stale_ip"].with_hint(t.workers, f"INDEXED BY {ip_idx}", "sqlite")
            q["stale_host"] = q["stale_host"].with_hint(
                t.workers, f"INDEXED BY {host_idx}", "sqlite"
            )
            q["stale_ip_host"] = sa.union(q["stale_ip"], q.pop("stale_host"))
        self._q_assignment = sa.select(*self._a_cols).where(a["id"] == b("aid"))
        self._q_running_of = sa.select(*self._a_cols).where(
            a["worker_id"].in_(b("ids", expanding=True)), a["status"] == a_running
        )
        self._q_all_assignments = sa.select(*self._a_cols)
        touch_w = {} if m.worker_updated_at is None else {m.worker_updated_at: self.utc_now_sql()}
        touch_a = (
            {} if m.assignment_updated_at is None else {m.assignment_updated_at: self.utc_now_sql()}
        )
        self._ins_worker = sa.insert(t.workers).values(touch_w)
        self._upd_worker = sa.update(t.workers).where(w["id"] == b("_key")).values(touch_w)
        self._ins_assignment = sa.insert(t.assignments).values(touch_a)
        self._upd_assignment = sa.update(t.assignments).where(a["id"] == b("_key")).values(touch_a)
        # Updates are compiled per set of changed columns, on first use (see _update).
        self._r_updates: dict[tuple[str, tuple[str, ...]], Raw] = {}
        #: The hot request's statement, without and with a hostname (PostgreSQL only).
        self._hot: dict[bool, Raw] = (
            {False: self._hot_statement(False), True: self._hot_statement(True)}
            if self.backend == "postgresql"
            else {}
        )

        # The same statements compiled once for this engine's dialect, run on the driver's own
        # cursor (see _raw).
        d = self.dialect
        self._r_workers = {k: Raw(q, d) for k, q in self._q_workers.items()}
        self._r_workers_joined = {k: Raw(q, d) for k, q in self._q_workers_joined.items()}
        self._r_assignment = Raw(self._q_assignment, d)
        self._r_all_assignments = Raw(self._q_all_assignments, d)
        w_keys = [c.name for c in self._w_cols]
        a_keys = [c.name for c in self._a_cols]
        self._r_ins_worker = Raw(self._ins_worker, d, [*w_keys, *m.worker_defaults])
        self._r_ins_assignment = Raw(self._ins_assignment, d, [*a_keys, *m.assignment_defaults])

    def _hot_statement(self, with_host: bool) -> Raw:
        """The hot request in one statement (PostgreSQL): refresh the one live worker at the
        request's address, when no other live worker is there and nothing about it would make
        the decision read or write anything else; return the row as it was.

        The conditions, each a reason the decision would do more (``_decision``): an ended
        session (``ended_grace``), a held end (its settlement), a refresh that changes nothing
        (a worker seen at or after ``now``, and its hostname seen at ``now`` when the request
        carries one: the decision then writes nothing, not even ``updated_at``); with a
        hostname, a worker that does not carry exactly that hostname (veto, adoption,
        reconciliation, transfer), and a worker without assignment created within the window
        where a renamed machine is looked for.  "Live" is the exact-IP query's own condition.
        """
        t, m = self.t, self.mapping
        w = t.w
        b = sa.bindparam
        old = t.workers.alias("hot_old")
        other = t.workers.alias("hot_other")

        def live(table: Any, col: Callable[[str], Any]) -> list[Any]:
            return [
                col("ip") == b("ip", type_=w["ip"].type),
                col("last_seen") >= b("since", type_=w["last_seen"].type),
                col("stale") == sa.false(),
                col("merged_into").is_(None),
            ]

        def mine(f: str) -> Any:
            return w[f]

        def theirs(f: str) -> Any:
            return other.c[w[f].name]

        conditions = [
            old.c[w["id"].name] == w["id"],
            *live(t.workers, mine),
            w["ended_at"].is_(None),
            w["held_end"].is_(None),
            ~sa.exists(
                sa.select(sa.literal_column("1"))
                .select_from(other)
                .where(*live(other, theirs), theirs("id") != w["id"])
            ),
        ]
        now = b("now", type_=w["last_seen"].type)
        values: dict[Any, Any] = {
            w["ip"]: b("ip", type_=w["ip"].type),
            w["last_seen"]: sa.func.greatest(w["last_seen"], now, type_=w["last_seen"].type),
        }
        if not with_host:
            conditions.append(w["last_seen"] < now)
        else:
            seen = b("now", type_=w["hostname_seen"].type)
            conditions += [
                sa.or_(
                    w["last_seen"] < now,
                    w["hostname_seen"].is_(None),
                    w["hostname_seen"] != seen,
                ),
                sa.collate(w["hostname"], "C") == b("host", type_=w["hostname"].type),
                sa.or_(
                    w["assignment_id"].is_not(None),
                    w["created_at"] > b("renamed_after", type_=w["created_at"].type),
                    w["created_at"] < b("renamed_before", type_=w["created_at"].type),
                ),
            ]
            values[w["hostname_seen"]] = seen
        if m.worker_updated_at is not None:
            values[t.workers.c[m.worker_updated_at]] = self.utc_now_sql()
        stmt = (
            sa.update(t.workers)
            .where(*conditions)
            .values(values)
            .returning(*(old.c[c.name] for c in self._w_cols))
        )
        return Raw(stmt, self.dialect)

    def hot(self, unit: Unit, event: Event, now: datetime, policy: Any) -> Worker | None:
        """Run the hot statement for ``event`` at ``now`` (PostgreSQL, in autocommit): the
        worker as it was before the statement refreshed it, or ``None`` when the request is
        not hot (nothing was written)."""
        identity = event.identity
        host = identity.hostname
        stmt = self._hot[host is not None]
        params: dict[str, Any] = {
            "ip": identity.ip,
            "since": now - policy.stale_after,
            "now": now,
        }
        if host is not None:
            params["host"] = host
            params["renamed_after"] = now - policy.quiet_period
            params["renamed_before"] = now - policy.stale_after
        rows = self.raw(unit, stmt, params)
        if not rows:
            return None
        if len(rows) != 1:  # pragma: no cover - the statement excludes a second live worker
            raise StorageError(f"the hot statement refreshed {len(rows)} workers")
        return self.worker(rows[0])

    def _update_statement(self, what: str, fields: tuple[str, ...]) -> Raw:
        if what == "worker":
            stmt, cols = self._upd_worker, self.t.w
        else:
            stmt, cols = self._upd_assignment, self.t.a
        return Raw(stmt, self.dialect, [cols[f].name for f in fields])


class Runs:
    """The runs of one unit by a repository's ``atomically``, counted the same way by both
    repositories: the attempt in progress, the request locks the next run takes
    (docs/stores.md, "Contention"), and what to do after a run failed.  The repositories'
    loops do the I/O (connecting, locking, committing, waiting), each its own way.

    Made once the unit may begin (after the repository's local lock): the retry policy's
    time counts from then."""

    __slots__ = ("attempt", "core", "locks", "policy", "started", "wanted")

    def __init__(self, core: Core, policy: RetryPolicy, event: Event | None) -> None:
        self.core = core
        self.policy = policy
        # The request locks: taken before the unit begins and given back after it ends, by a
        # claim from the start, by any other request once it finds it reads the recent
        # running workers or after a conflict.  ``locks`` is None when the unit takes none.
        self.wanted = core.lock_names(event)
        self.locks: frozenset[str] | None = None
        if self.wanted is not None:
            self.locks = self.wanted if RUNNING_LOCK in self.wanted else frozenset()
        self.started = policy.clock()
        self.attempt = 0

    def start(self) -> int:
        """Count the run about to start: its attempt, from 1."""
        self.attempt += 1
        return self.attempt

    def needs_lock(self) -> None:
        """The run stopped at :class:`NeedsLock`, nothing written: the next one runs from the
        start holding the request's own locks and :data:`RUNNING_LOCK`, and is not another
        attempt."""
        assert self.locks is not None
        assert self.wanted is not None
        self.locks = self.locks | self.wanted | {RUNNING_LOCK}
        self.attempt -= 1

    def failure(self, exc: BaseException, *, committing: bool) -> Failure | None:
        """:meth:`Core.failure` for the run in progress, which raised ``exc`` (rolled back)."""
        return self.core.failure(
            exc,
            committing=committing,
            attempt=self.attempt,
            started=self.started,
            policy=self.policy,
        )

    def conflicted(self) -> None:
        """The run ended in a conflict (its locks given back): the next one takes the
        request's locks."""
        if self.locks is not None and self.wanted is not None:
            self.locks = self.locks | self.wanted


def uuid_ids() -> str:
    """A new worker id: a random UUID (the repositories' default ``id_factory``)."""
    import uuid

    return str(uuid.uuid4())


def check_settings(mapping: object, retry: object) -> None:
    """Refuse a mapping or retry policy of the wrong type (both repositories)."""
    if not isinstance(mapping, TableMapping):
        raise InvalidInput(
            f"mapping must be a TableMapping, not {type(mapping).__name__}",
            field="mapping",
            value=mapping,
        )
    check_retry(retry)


def check_backend(dialect: sa.Dialect, value: object, field: str) -> None:
    if dialect.name not in BACKENDS:
        raise InvalidInput(f"unsupported database {dialect.name!r}", field=field, value=value)


def wrong_type(
    value: object, field: str, expected: str, hint: str, hint_for: Collection[str]
) -> InvalidInput:
    """The error for ``value`` given as ``field``, which is not what ``expected`` says: the
    message ends with ``hint`` (which repository to use instead) when ``value``'s class is one
    of ``hint_for``, the other repository's."""
    name = type(value).__name__
    return InvalidInput(
        f"{expected}, not {name}{hint if name in hint_for else ''}", field=field, value=value
    )


R = TypeVar("R", bound="RepositoryBase")


class RepositoryBase:
    """What the synchronous and the asyncio SQL repositories hold and do alike, none of it
    I/O: their settings and figures, their tables and ``repr``, and the checks and copy of
    ``bound``.  Each subclass sets :attr:`engine` and obtains connections its own way."""

    #: The class's name in the ``repr``.
    _name: ClassVar[str]
    engine: Any

    def _setup(
        self,
        dialect: sa.Dialect,
        database: str | None,
        mapping: TableMapping,
        id_factory: Callable[[], str] | None,
        retry: RetryPolicy,
    ) -> None:
        """Check ``mapping`` and ``retry`` and set up the shared state, for the engine's
        ``dialect`` and ``database`` (its name: the request locks' space)."""
        check_settings(mapping, retry)
        self._own_engine = False
        self.retry = retry
        self._retries = 0
        self._reruns = 0
        self.mapping = mapping
        self._core = Core(dialect, mapping, id_factory or uuid_ids)
        self._backend = self._core.backend
        self._core.lock_space = str(database or "")
        self._binding: Any = None

    @property
    def retries(self) -> int:
        """How many times a unit was rolled back and run again after a conflict (serialisation
        failure, deadlock, lock timeout, locked SQLite database): a figure for monitoring; it
        never affects results."""
        return self._retries

    @property
    def reruns(self) -> int:
        """How many times a unit was run again from the start because it found it would read
        the recent running workers (rule 3) without holding their lock (docs/stores.md,
        "Contention"): not a conflict, nothing another unit wrote was in its way; a figure
        for monitoring."""
        return self._reruns

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        bound = " bound to the caller's transaction" if self._binding is not None else ""
        return f"<{self._name} {url} workers={self.mapping.workers_table!r}{bound}>"

    @property
    def tables(self) -> Tables:
        """The SQLAlchemy tables and indexes the repository uses."""
        return self._core.t

    def new_worker_id(self) -> str:
        return self._core.id_factory()

    def _check_dialect(self, dialect: sa.Dialect, connection: object) -> None:
        """Refuse a caller's ``connection`` whose database or driver is not the engine's."""
        mine = self._core.dialect
        if (dialect.name, dialect.driver) != (mine.name, mine.driver):
            raise InvalidInput(
                f"the connection uses {dialect.name}+{dialect.driver}, the repository "
                f"{mine.name}+{mine.driver}: bind a connection of the repository's kind",
                field="connection",
                value=connection,
            )

    def _bound_to(self: R, connection: Any) -> R:
        """A copy of this repository running its units on the caller's ``connection``."""
        repo = copy.copy(self)
        repo._own_engine = False
        repo._binding = connection
        return repo


class _SQLiteHintingCompiler(SQLiteCompiler):
    """SQLite's statement compiler, emitting a table's ``with_hint`` text after its name (where
    SQLite's ``INDEXED BY`` goes); SQLAlchemy's own drops it."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


class Raw:
    """A statement compiled once for one dialect: its SQL text, and how to pass parameters."""

    __slots__ = ("binders", "defaults", "escape", "positional", "sql")

    def __init__(
        self, stmt: Any, dialect: sa.Dialect, column_keys: list[str] | None = None
    ) -> None:
        compiled: Any
        if dialect.name == "sqlite":
            # SQLAlchemy's SQLite compiler drops table hints; ours emits them (INDEXED BY).
            compiled = _SQLiteHintingCompiler(dialect, stmt, column_keys=column_keys)
        else:
            compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        self.sql: str = str(compiled)
        self.positional: list[str] | None = (
            list(compiled.positiontup) if compiled.positiontup is not None else None
        )
        self.escape: dict[str, str] = dict(compiled.escaped_bind_names or {})
        self.defaults: dict[str, Any] = dict(compiled.construct_params(_check=False))
        # Columns whose values the driver takes otherwise than the repository's default
        # conversion (integer ids, timestamptz): the column type says how.
        self.binders: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            binder = getattr(bind.type, "raw_binder", None)
            fn = binder(dialect) if binder is not None else None
            if fn is not None:
                self.binders[self.escape.get(name, name)] = fn

    def params(self, given: dict[str, Any], convert: Callable[[Any], Any]) -> Any:
        values = dict(self.defaults)
        binders = self.binders
        for key, value in given.items():
            name = self.escape.get(key, key)
            values[name] = binders[name](value) if name in binders else convert(value)
        if self.positional is None:
            return values
        return tuple(values[name] for name in self.positional)


def _naive_utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def _sqlite_time(value: Any) -> Any:
    """SQLAlchemy's SQLite text form of a time (fixed width, so text order is time order)."""
    if isinstance(value, datetime):
        v = _naive_utc(value)
        return (
            f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:"
            f"{v.second:02d}.{v.microsecond:06d}"
        )
    return value


def _from_db(value: Any) -> datetime | None:
    """A time as the driver returns it (SQLite: text) -> aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]
    return value.astimezone(timezone.utc)  # type: ignore[no-any-return]


def sqlite_wal(dbapi_conn: Any, _record: Any) -> None:
    """Write-ahead logging: readers never block the writer, and a commit costs one sync."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode = WAL")
    cur.close()


def configure_sqlite(engine: Engine) -> None:
    """Make every transaction ``BEGIN IMMEDIATE`` and enforce foreign keys."""
    if getattr(engine, "_workermatch_configured", False):
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver must not BEGIN on its own
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine._workermatch_configured = True  # type: ignore[attr-defined]


def cause_of(exc: BaseException) -> BaseException:
    """The driver's exception behind a SQLAlchemy one."""
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        return exc.orig
    return exc


def sqlite_collations(create_table: str) -> dict[str, str]:
    """Column -> the collation its definition names (``COLLATE x``), from SQLite's ``CREATE
    TABLE`` text (columns without one compare with ``BINARY``)."""
    start, end = create_table.find("("), create_table.rfind(")")
    if start < 0 or end < start:
        return {}
    out: dict[str, str] = {}
    depth, part, parts = 0, "", []
    for ch in create_table[start + 1 : end]:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += ch
    parts.append(part)
    for definition in parts:
        m = re.match(r'\s*(?:"((?:[^"]|"")+)"|`([^`]+)`|\[([^\]]+)\]|(\w+))', definition)
        if m is None:
            continue
        name = next(g for g in m.groups() if g is not None).replace('""', '"')
        coll = re.search(r'\bCOLLATE\s+"?(\w+)"?', definition, re.IGNORECASE)
        if coll is not None:
            out[name] = coll.group(1)
    return out


def message(what: str, cause: BaseException) -> str:
    return f"the database failed while {what}: {type(cause).__name__}: {cause}"


def make_error(message: str, fault: str, attempts: int | None) -> StorageError:
    if fault == PERMANENT:
        return StorageError(message, attempts=attempts)
    return TransientStorageError(message, attempts=attempts)


@contextlib.contextmanager
def _autocommit(conn: Connection, dbapi_error: type[Exception]) -> Iterator[None]:
    """Run the driver's connection in autocommit mode for the block (PostgreSQL: statements
    outside any transaction); the unit's transaction has not begun, or has ended."""
    dbapi_conn: Any = conn.connection.dbapi_connection
    try:
        dbapi_conn.rollback()  # nothing to roll back but a pool ping's implicit transaction
        dbapi_conn.autocommit = True
    except dbapi_error as exc:
        raise StorageError(f"the database failed: {type(exc).__name__}: {exc}") from exc
    try:
        yield
    finally:
        with contextlib.suppress(dbapi_error):  # a dead connection: the caller discards it
            dbapi_conn.autocommit = False


def quiet_rollback(conn: Connection) -> None:
    with contextlib.suppress(Exception):
        conn.rollback()


def end_unwritten(conn: Connection) -> None:
    """End a unit that stopped before writing anything (:class:`NeedsLock`): ``COMMIT``, which
    for a transaction that only read is the same as a rollback, except that psycopg forgets
    every statement it prepared on the connection after a ``ROLLBACK`` (and deallocates them
    on the server), and would prepare them all again."""
    try:
        conn.commit()
    except Exception:
        quiet_rollback(conn)
