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
bounded in attempts and time); every failure is classified (:meth:`SQLWorkerRepository._fault`)
into a :class:`~workermatch.StorageError` whose ``retryable`` says whether to try again.

The reads of one unit are cached for the rest of the unit: the worker queries fetch the
``RUNNING`` assignments of the workers they return in the same statement, so a heartbeat that
matches by exact IP costs one ``SELECT`` and one ``UPDATE``.  Statements are built and compiled
once, then run on the driver's cursor (:meth:`SQLWorkerRepository._raw`).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from .._errors import InvalidInput, StorageError, TransientStorageError
from .._model import Assignment, AssignmentStatus, Worker, WorkerStatus, check_id
from .._observe import gave_up, retried
from .._protocol import InsertAssignment, InsertWorker, UpdateAssignment, UpdateWorker, Write
from ._check import missing_indexes, schema_defects
from ._mapping import DEFAULT_MAPPING, TableMapping
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._tables import Tables, build_tables, changed_fields

__all__ = ["SQLWorkerRepository", "normalize_url"]

T = TypeVar("T")

#: The SQLite busy timeout of the engines :meth:`SQLWorkerRepository.from_url` makes: how long a
#: statement waits for another process's write lock before SQLite reports "database is locked".
SQLITE_BUSY_TIMEOUT = 30.0

# What a driver error means (see SQLWorkerRepository._fault).
_CONFLICT = "conflict"  # rolled back by the database; running the unit again is safe
_TRANSIENT = "transient"  # the connection or the server failed; the request may succeed later
_PERMANENT = "permanent"  # fails the same way until someone changes something

# PostgreSQL SQLSTATEs: serialisation failure, deadlock, lock timeout (lock_not_available).
_PG_CONFLICT = frozenset({"40001", "40P01", "55P03"})
# Out of memory, too many connections, admin / crash shutdown, cannot connect now.  (Disk full,
# 53100, is left permanent: it does not go away by itself within a retry.)
_PG_TRANSIENT = frozenset({"53200", "53300", "57P01", "57P02", "57P03"})
# MariaDB / MySQL error numbers: deadlock, lock wait timeout.
_MY_CONFLICT = frozenset({1213, 1205})
# Too many connections, server shutdown, connection killed (MariaDB), can't connect, server
# gone away, lost connection, commands out of sync after a loss, disconnected for inactivity.
_MY_TRANSIENT = frozenset({1040, 1053, 1927, 2002, 2003, 2006, 2013, 2014, 2055, 4031})

_PLAIN_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


_ADDED_SINCE_0_1 = ("hostname_seen", "contested", "held_end")


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the library's driver for a plain scheme (``postgresql://`` ->
    psycopg 3, ``mysql://`` and ``mariadb://`` -> PyMySQL).  An explicit driver is kept."""
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        raise InvalidInput(f"not a database URL: {url!r} ({exc})", field="url", value=url) from None
    if parsed.drivername in _PLAIN_DRIVERS:
        parsed = parsed.set(drivername=_PLAIN_DRIVERS[parsed.drivername])
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise InvalidInput(
            f"unsupported database {backend!r} in {url!r}: use sqlite, postgresql, mysql or "
            "mariadb",
            field="url",
            value=url,
        )
    return parsed


def _uuid_ids() -> str:
    return str(uuid.uuid4())


class _Unit(threading.local):
    conn: Connection | None = None
    # worker id -> its RUNNING assignments, filled by the worker queries of this unit
    running: dict[str, list[Assignment]] | None = None
    # ("w" or "a", id) -> the row as this unit last read or wrote it: an update writes only
    # the columns that differ from it
    seen: dict[tuple[str, str], Any] | None = None


class SQLWorkerRepository:
    """A :class:`~workermatch.WorkerRepository` in a SQL database (SQLite, PostgreSQL, MariaDB).

    ``engine`` is a SQLAlchemy engine (see :meth:`from_url` to make one from a URL);
    ``mapping`` says which tables and columns to use (:data:`DEFAULT_MAPPING`: the library's
    own tables; :data:`PRISMA_MAPPING`: the real system's); ``id_factory`` makes new worker ids
    (default: random UUIDs); ``retry`` says when a unit that hit a conflict runs again
    (:data:`~workermatch.sql.DEFAULT_RETRY`).  Safe to share between threads.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        mapping: TableMapping = DEFAULT_MAPPING,
        id_factory: Callable[[], str] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if not isinstance(engine, Engine):
            raise InvalidInput(
                f"engine must be a SQLAlchemy Engine, not {type(engine).__name__}",
                field="engine",
                value=engine,
            )
        if not isinstance(mapping, TableMapping):
            raise InvalidInput(
                f"mapping must be a TableMapping, not {type(mapping).__name__}",
                field="mapping",
                value=mapping,
            )
        self._backend = engine.dialect.name
        if self._backend not in ("sqlite", "postgresql", "mysql", "mariadb"):
            raise InvalidInput(
                f"unsupported database {self._backend!r}", field="engine", value=engine
            )
        if not isinstance(retry, RetryPolicy):
            raise InvalidInput(
                f"retry must be a RetryPolicy, not {type(retry).__name__}",
                field="retry",
                value=retry,
            )
        self._own_engine = False
        self.retry = retry
        self._retries = 0
        self._retries_lock = threading.Lock()
        self.mapping = mapping
        self._t: Tables = build_tables(mapping, self._backend)
        self._id_factory = id_factory or _uuid_ids
        self._unit = _Unit()
        # SQLite: one writer at a time anyway; threads of this process queue here instead of
        # spinning on SQLITE_BUSY (BEGIN IMMEDIATE keeps other processes out).
        self._local_lock: threading.RLock | None = None
        if self._backend == "sqlite":
            self._local_lock = threading.RLock()
            _configure_sqlite(engine)
            self.engine = engine
        elif getattr(engine.dialect, "_on_connect_isolation_level", None) == "SERIALIZABLE":
            self.engine = engine  # every connection is set up once, when it is made
        else:
            # Set per checkout (and reset on return) on an engine that is not ours.
            self.engine = engine.execution_options(isolation_level="SERIALIZABLE")
        self._w_cols = [self._t.w[f] for f in self._t.w]
        self._a_cols = [self._t.a[f] for f in self._t.a]
        self._wstatus = dict(mapping.worker_statuses)
        self._wstatus_back = {v: k for k, v in mapping.worker_statuses.items()}
        self._astatus = dict(mapping.assignment_statuses)
        self._astatus_back = {v: k for k, v in mapping.assignment_statuses.items()}
        self._dbapi_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        self._bind = _sqlite_time if self._backend == "sqlite" else _naive_utc
        self._build_statements()

    @property
    def retries(self) -> int:
        """How many times a unit was rolled back and run again after a conflict (serialisation
        failure, deadlock, lock timeout, locked SQLite database): a figure for monitoring; it
        never affects results."""
        return self._retries

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
        as is.  :meth:`close` disposes of the engine.  ``engine_options`` go to
        :func:`sqlalchemy.create_engine`; ``connect_args`` given there are merged into the
        library's own (SQLite's ``timeout``, the busy timeout, defaults to
        :data:`SQLITE_BUSY_TIMEOUT`).  Server engines check a pooled connection before handing
        it out (``pool_pre_ping=True``), so a connection the server dropped is replaced."""
        parsed = normalize_url(url)
        backend = parsed.get_backend_name()
        options: dict[str, Any] = {}
        args: dict[str, Any]
        if backend == "sqlite":
            args = {"check_same_thread": False}
            if parsed.database in (None, "", ":memory:"):
                options["poolclass"] = StaticPool
            else:
                args["timeout"] = SQLITE_BUSY_TIMEOUT
        else:
            options["isolation_level"] = "SERIALIZABLE"
            options["pool_pre_ping"] = True
            if backend in ("mysql", "mariadb"):
                args = {"init_command": "SET time_zone = '+00:00'"}
            else:
                args = {"options": "-c timezone=UTC"}
        given = dict(engine_options.pop("connect_args", None) or {})
        if backend == "postgresql" and "options" in given:
            given["options"] = f"{args['options']} {given['options']}"
        args.update(given)
        options["connect_args"] = args
        options.update(engine_options)
        try:
            engine = sa.create_engine(parsed, **options)
        except (SQLAlchemyError, ImportError, TypeError) as exc:
            raise StorageError(f"cannot create an engine for {parsed!r}: {exc}") from exc
        if backend == "sqlite" and "poolclass" not in options:
            event.listen(engine, "connect", _sqlite_wal)
        repo = cls(engine, mapping=mapping, id_factory=id_factory, retry=retry)
        repo._own_engine = True
        return repo

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"<SQLWorkerRepository {url} workers={self.mapping.workers_table!r}>"

    @property
    def tables(self) -> Tables:
        """The SQLAlchemy tables and indexes the repository uses."""
        return self._t

    # -- schema ----------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create what the repository needs where it is missing (idempotent), then
        :meth:`check_schema`.

        With a mapping that owns its tables: the two tables and their indexes.  With
        ``owns_tables=False`` (someone else's tables, e.g. :data:`PRISMA_MAPPING`): the nullable
        columns of ``added_worker_columns`` and the indexes; a missing table or column is a
        :class:`~workermatch.StorageError`.
        """

        def run(conn: Connection) -> None:
            insp = sa.inspect(conn)
            if self.mapping.owns_tables:
                self._t.metadata.create_all(conn, checkfirst=True)
                # Tables made by an earlier version lack the columns added since.
                self._add_missing(conn, sa.inspect(conn), _ADDED_SINCE_0_1)
            else:
                self._add_columns(conn, insp)
            for index in missing_indexes(sa.inspect(conn), self._t):
                index.create(conn)
            self._raise_defects(conn, create_assignments=False)

        self._ddl(run)

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
        self._ddl(lambda conn: self._raise_defects(conn, create_assignments=create_assignments))

    def _raise_defects(self, conn: Connection, *, create_assignments: bool) -> None:
        insp = sa.inspect(conn)
        schema = self.mapping.schema
        tables = [self._t.workers.name, self._t.assignments.name]
        exists = all(insp.has_table(name, schema=schema) for name in tables)
        defects = schema_defects(
            conn,
            self._t,
            self._backend,
            self._collations(conn) if exists else None,
            create_assignments=create_assignments,
        )
        if defects:
            listed = "".join(f"\n  - {d}" for d in defects)
            raise StorageError(
                f"the tables do not fit the mapping ({len(defects)} defect"
                f"{'s' if len(defects) != 1 else ''}):{listed}"
            )

    def _collations(self, conn: Connection) -> dict[tuple[str, str], tuple[str, bool]]:
        """(table, column) -> (collation, whether it compares exactly), for the two tables'
        text columns that have a collation."""
        tables = [self._t.workers.name, self._t.assignments.name]
        schema = self.mapping.schema
        out: dict[tuple[str, str], tuple[str, bool]] = {}
        if self._backend in ("mysql", "mariadb"):
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
        elif self._backend == "postgresql":
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
                for column, collation in _sqlite_collations(str(sql or "")).items():
                    out[(table, column)] = (collation, collation.upper() == "BINARY")
        return out

    def _add_missing(self, conn: Connection, insp: sa.Inspector, fields: Sequence[str]) -> None:
        """Add the nullable worker columns of ``fields`` that the workers table lacks."""
        present = {
            c["name"] for c in insp.get_columns(self._t.workers.name, schema=self.mapping.schema)
        }
        prep = conn.dialect.identifier_preparer
        for field in fields:
            col = self._t.w[field]
            if col.name in present:
                continue
            ddl_type = col.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(
                f"ALTER TABLE {prep.format_table(self._t.workers)} "
                f"ADD COLUMN {prep.format_column(col)} {ddl_type} NULL"
            )

    def _add_columns(self, conn: Connection, insp: sa.Inspector) -> None:
        schema = self.mapping.schema
        for table in (self._t.workers, self._t.assignments):
            if not insp.has_table(table.name, schema=schema):
                raise StorageError(f"table {table.fullname!r} does not exist")
        self._add_missing(conn, insp, self.mapping.added_worker_columns)
        for table, wanted in (
            (self._t.workers, self._t.w.values()),
            (self._t.assignments, self._t.a.values()),
        ):
            have = {c["name"] for c in insp.get_columns(table.name, schema=schema)}
            if table is self._t.workers:
                have |= {self._t.w[f].name for f in self.mapping.added_worker_columns}
            missing = [c.name for c in wanted if c.name not in have]
            if missing:
                raise StorageError(
                    f"table {table.fullname!r} has no column(s) {', '.join(missing)}; check the "
                    "mapping"
                )

    def drop_schema(self) -> None:
        """Remove what :meth:`create_schema` made: the tables (with their rows) when the
        mapping owns them, else the library's indexes and added columns."""

        def run(conn: Connection) -> None:
            if self.mapping.owns_tables:
                self._t.metadata.drop_all(conn, checkfirst=True)
                return
            insp = sa.inspect(conn)
            prep = conn.dialect.identifier_preparer
            for index in self._t.indexes:
                table = index.table
                assert table is not None
                names = {
                    ix["name"] for ix in insp.get_indexes(table.name, schema=self.mapping.schema)
                }
                if index.name in names:
                    index.drop(conn)
            present = {
                c["name"]
                for c in insp.get_columns(self._t.workers.name, schema=self.mapping.schema)
            }
            for field in self.mapping.added_worker_columns:
                col = self._t.w[field]
                if col.name in present:
                    conn.exec_driver_sql(
                        f"ALTER TABLE {prep.format_table(self._t.workers)} "
                        f"DROP COLUMN {prep.format_column(col)}"
                    )

        self._ddl(run)

    def _ddl(self, run: Callable[[Connection], None]) -> None:
        with self._locked():
            try:
                with self.engine.connect() as conn:
                    if self._backend == "sqlite":
                        # DDL inspection must not sit inside BEGIN IMMEDIATE's snapshot games.
                        pass
                    with conn.begin():
                        run(conn)
            except SQLAlchemyError as exc:
                raise self._error("changing the schema", exc) from _cause(exc)

    def reset(self) -> None:
        """Delete every row of the mapped tables (assignments first)."""

        def run() -> None:
            conn = self._conn()
            conn.execute(sa.delete(self._t.assignments))
            conn.execute(sa.delete(self._t.workers))

        self.atomically(lambda: self._guard("emptying the tables", run))

    def is_empty(self) -> bool:
        """Whether the store holds no worker."""

        def run() -> bool:
            row = (
                self._conn()
                .execute(sa.select(self._t.w["id"]).select_from(self._t.workers).limit(1))
                .first()
            )
            return row is None

        return self._read("checking for workers", run)

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
        if not self._t.storable_worker_id(worker_id):
            return None  # no row of an integer or uuid column has such an id
        found = self._workers("reading a worker", "by_id", {"wid": worker_id})
        return found[0] if found else None

    def clock(self) -> datetime:
        """The database server's current time (UTC): one clock for every server process that
        shares this database.  ``apply_event(event, None, repo)`` decides at this time, read in
        the decision's own transaction, so that clock skew between server processes cannot
        split a session or mix two."""

        def run() -> datetime:
            conn = self._conn()
            value = conn.execute(sa.select(self._utc_now_sql())).scalar_one()
            if isinstance(value, str):  # SQLite's strftime text
                value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value.astimezone(timezone.utc)  # type: ignore[no-any-return]

        return self._read("reading the database's clock", run)

    def get_assignment(self, assignment_id: str) -> Assignment | None:
        check_id(assignment_id, "assignment_id")
        if not self._t.storable_assignment_id(assignment_id):
            return None

        def run() -> Assignment | None:
            rows = self._raw(self._r_assignment, {"aid": assignment_id})
            return self._assignment(rows[0]) if rows else None

        return self._read("reading an assignment", run)

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
        if hostname is None:
            return self._workers(
                "reading stale running workers", "stale_ip", {"ip": ip, "before": seen_before}
            )
        return self._workers(
            "reading stale running workers",
            "stale_ip_host",
            {"ip": ip, "host": hostname, "before": seen_before},
        )

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        ids = [i for i in dict.fromkeys(worker_ids) if self._t.storable_worker_id(i)]
        cache = self._unit.running
        if cache is not None and all(i in cache for i in ids):
            return [a for i in ids for a in cache[i]]
        if not ids:
            return []

        def run() -> list[Assignment]:
            rows = self._conn().execute(self._q_running_of, {"ids": ids})
            return [self._assignment(r) for r in rows]

        return self._read("reading running assignments", run)

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        return self._workers("reading unflagged workers", "unflagged", {"before": seen_before})

    def all_workers(self) -> Sequence[Worker]:
        return self._workers("reading all workers", "all", {})

    def all_assignments(self) -> Sequence[Assignment]:
        def run() -> list[Assignment]:
            return [self._assignment(r) for r in self._raw(self._r_all_assignments, {})]

        return self._read("reading all assignments", run)

    # -- writes ----------------------------------------------------------------------------------

    def new_worker_id(self) -> str:
        return self._id_factory()

    def write(self, writes: Iterable[Write]) -> None:
        ops = list(writes)
        if not ops:
            return
        self.atomically(lambda: self._guard("writing a decision", lambda: self._write(ops)))

    def _write(self, ops: list[Write]) -> None:
        self._unit.running = None  # the cache no longer describes the store
        m = self.mapping
        seen = self._unit.seen
        for op in ops:
            problem = self._t.unstorable(op)
            if problem is not None:
                raise InvalidInput(f"{problem} (see the mapping's worker_types / assignment_types)")
            if isinstance(op, InsertWorker):
                values = self._worker_values(op.worker)
                values.update(m.worker_defaults)
                self._raw(self._r_ins_worker, values, fetch=False)
            elif isinstance(op, InsertAssignment):
                values = self._assignment_values(op.assignment)
                values.update(m.assignment_defaults)
                self._raw(self._r_ins_assignment, values, fetch=False)
            else:
                self._update(op, seen)
            if seen is not None:
                if isinstance(op, (InsertWorker, UpdateWorker)):
                    seen[("w", op.worker.id)] = op.worker
                else:
                    seen[("a", op.assignment.id)] = op.assignment

    def _update(self, op: UpdateWorker | UpdateAssignment, seen: dict[Any, Any] | None) -> None:
        """Write the columns of ``op``'s row that differ from the row as this unit read it (all
        but the id and ``created_at`` when it was not read): never a column whose value the
        decision did not change."""
        row: Worker | Assignment
        if isinstance(op, UpdateWorker):
            key, row, what = ("w", op.worker.id), op.worker, "worker"
            cols, values = self._t.w, self._worker_values(op.worker)
        else:
            key, row, what = ("a", op.assignment.id), op.assignment, "assignment"
            cols, values = self._t.a, self._assignment_values(op.assignment)
        fields = changed_fields(None if seen is None else seen.get(key), row, tuple(cols))
        if not fields:
            return  # nothing changed (the row was read in this unit, so it exists)
        stmt = self._r_updates.get((what, fields))
        if stmt is None:
            stmt = self._r_updates[(what, fields)] = self._update_statement(what, fields)
        params = {cols[f].name: values[cols[f].name] for f in fields}
        params["_key"] = row.id
        if self._raw(stmt, params, fetch=False) != 1:
            raise StorageError(f"{what} {row.id!r} does not exist")

    def _build_statements(self) -> None:
        """Every statement, built once with bound parameters (SQLAlchemy then compiles each
        once per dialect and reuses it)."""
        t, m = self._t, self.mapping
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
        # "Same IP or same hostname" is a UNION of two index lookups, each pinned to its index on
        # SQLite: without statistics its planner otherwise picks the status index and reads every
        # RUNNING worker.
        quote = self.engine.dialect.identifier_preparer.quote
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
        touch_w = {} if m.worker_updated_at is None else {m.worker_updated_at: self._utc_now_sql()}
        touch_a = (
            {}
            if m.assignment_updated_at is None
            else {m.assignment_updated_at: self._utc_now_sql()}
        )
        self._ins_worker = sa.insert(t.workers).values(touch_w)
        self._upd_worker = sa.update(t.workers).where(w["id"] == b("_key")).values(touch_w)
        self._ins_assignment = sa.insert(t.assignments).values(touch_a)
        self._upd_assignment = sa.update(t.assignments).where(a["id"] == b("_key")).values(touch_a)
        # Updates are compiled per set of changed columns, on first use (see _update).
        self._r_updates: dict[tuple[str, tuple[str, ...]], _Raw] = {}

        # The same statements compiled once for this engine's dialect, run on the driver's own
        # cursor (see _raw).
        d = self.engine.dialect
        self._r_workers = {k: _Raw(q, d) for k, q in self._q_workers.items()}
        self._r_workers_joined = {k: _Raw(q, d) for k, q in self._q_workers_joined.items()}
        self._r_assignment = _Raw(self._q_assignment, d)
        self._r_all_assignments = _Raw(self._q_all_assignments, d)
        w_keys = [c.name for c in self._w_cols]
        a_keys = [c.name for c in self._a_cols]
        self._r_ins_worker = _Raw(self._ins_worker, d, [*w_keys, *m.worker_defaults])
        self._r_ins_assignment = _Raw(self._ins_assignment, d, [*a_keys, *m.assignment_defaults])

    def _update_statement(self, what: str, fields: tuple[str, ...]) -> _Raw:
        stmt, cols = (
            (self._upd_worker, self._t.w) if what == "worker" else (self._upd_assignment, self._t.a)
        )
        return _Raw(stmt, self.engine.dialect, [cols[f].name for f in fields])

    def atomically(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one transaction and return its result (a unit already running in this
        thread just calls ``fn``).

        A conflict (serialisation failure, deadlock, lock timeout, locked SQLite database)
        rolls the unit back and runs it again after a back-off, as :attr:`retry` says; once
        that gives up, a :class:`~workermatch.TransientStorageError`.  Any other database
        failure is a :class:`~workermatch.StorageError` at once (``retryable`` when the
        connection or the server failed); the connection it happened on is discarded.  An
        exception of ``fn``'s own goes through unchanged, after the rollback.
        """
        unit = self._unit
        if unit.conn is not None:
            return fn()
        policy = self.retry
        with self._locked():
            started = policy.clock()
            attempt = 0
            while True:
                attempt += 1
                try:
                    conn = self.engine.connect()
                except SQLAlchemyError as exc:
                    raise self._error("connecting", exc, attempts=attempt) from _cause(exc)
                unit.conn, unit.running, unit.seen = conn, {}, {}
                pause: float | None = None
                try:
                    committing = False
                    try:
                        conn.begin()
                        result = fn()
                        committing = True
                        conn.commit()
                        return result
                    except BaseException as exc:
                        _quiet_rollback(conn)
                        if isinstance(exc, SQLAlchemyError):
                            cause = _cause(exc)
                            what = "committing" if committing else "running a unit"
                            message = _message(what, cause)
                        elif isinstance(exc, StorageError) and isinstance(
                            exc.__cause__, self._dbapi_error
                        ):
                            cause, message = exc.__cause__, str(exc)
                        else:
                            raise  # fn's own exception, or a StorageError of the library's
                        fault = self._fault(cause)
                        if fault == _CONFLICT:
                            elapsed = policy.clock() - started
                            delay = policy.delay(attempt)
                            if attempt < policy.max_attempts and elapsed + delay <= policy.max_time:
                                pause = delay
                            else:
                                gave_up(attempt, elapsed, message)
                                raise TransientStorageError(
                                    f"{message} (gave up after {attempt} attempt"
                                    f"{'s' if attempt != 1 else ''} in {elapsed:.2f} s; the "
                                    "database kept reporting conflicts: retry later)",
                                    attempts=attempt,
                                ) from cause
                        else:
                            # The connection may be dead or half-way through something: never
                            # hand it back to the pool.
                            with contextlib.suppress(Exception):
                                conn.invalidate()
                            if committing and fault == _TRANSIENT:
                                raise StorageError(
                                    f"{message} (the connection failed during COMMIT: the "
                                    "unit may or may not have been stored)",
                                    retryable=False,
                                    attempts=attempt,
                                ) from cause
                            raise _make_error(message, fault, attempt) from cause
                finally:
                    unit.conn, unit.running, unit.seen = None, None, None
                    with contextlib.suppress(Exception):
                        conn.close()
                # A conflict: the connection is back in the pool while we wait.
                assert pause is not None
                with self._retries_lock:
                    self._retries += 1
                retried(self._backend)
                policy.sleep(pause)

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._local_lock is None:
            yield
        else:
            with self._local_lock:
                yield

    def _conn(self) -> Connection:
        conn = self._unit.conn
        assert conn is not None, "only inside a unit"
        return conn

    def _guard(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except SQLAlchemyError as exc:
            raise self._error(what, exc) from _cause(exc)

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        if self._unit.conn is not None:
            return self._guard(what, fn)
        return self.atomically(lambda: self._guard(what, fn))

    def _raw(self, stmt: _Raw, params: dict[str, Any], *, fetch: bool = True) -> Any:
        """Run a precompiled statement on the driver's cursor of the unit's connection.

        SQLAlchemy's own execution costs several times the driver's on these small statements,
        and the decision's statements are all small.  The engine's ``before_cursor_execute``
        listeners still see every statement (so do the tests that count or break them); a
        driver error becomes a :class:`StorageError` with the driver's exception as its cause.
        Returns the rows, or with ``fetch=False`` the row count.
        """
        conn = self._conn()
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
        except self._dbapi_error as exc:
            raise StorageError(f"the database failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()

    def _workers(self, what: str, query: str, params: dict[str, Any]) -> list[Worker]:
        def run() -> list[Worker]:
            cache = self._unit.running
            if cache is None or query in ("all", "unflagged"):
                rows = self._raw(self._r_workers[query], params)
                return [self._worker(r) for r in rows]
            n = len(self._w_cols)
            workers: dict[str, Worker] = {}
            running: dict[str, list[Assignment]] = {}
            for row in self._raw(self._r_workers_joined[query], params):
                wid = row[0]
                if wid not in workers:
                    workers[wid] = self._worker(row[:n])
                    running[wid] = []
                if row[n] is not None:
                    running[wid].append(self._assignment(row[n:]))
            cache.update(running)
            return list(workers.values())

        return self._read(what, run)

    def _worker(self, row: Sequence[Any]) -> Worker:
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
        if self._unit.seen is not None:
            self._unit.seen[("w", worker.id)] = worker
        return worker

    def _assignment(self, row: Sequence[Any]) -> Assignment:
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
        if self._unit.seen is not None:
            self._unit.seen[("a", assignment.id)] = assignment
        return assignment

    def _worker_values(self, w: Worker) -> dict[str, Any]:
        c = self._t.w
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

    def _assignment_values(self, a: Assignment) -> dict[str, Any]:
        c = self._t.a
        return {
            c["id"].name: a.id,
            c["status"].name: self._astatus[a.status],
            c["worker_id"].name: a.worker_id,
            c["started_at"].name: a.started_at,
            c["ended_at"].name: a.ended_at,
        }

    def _utc_now_sql(self) -> Any:
        if self._backend == "postgresql":
            return sa.text("(now() AT TIME ZONE 'UTC')")
        if self._backend in ("mysql", "mariadb"):
            return sa.text("UTC_TIMESTAMP(3)")
        return sa.text("strftime('%Y-%m-%d %H:%M:%f', 'now')")

    def _fault(self, cause: BaseException) -> str:
        """Classify a driver exception: a conflict (the database rolled the transaction back;
        run the unit again), transient (the connection or server failed; the request may
        succeed later) or permanent."""
        if self._backend == "postgresql":
            state = getattr(cause, "sqlstate", None)
            if state in _PG_CONFLICT:
                return _CONFLICT
            if state in _PG_TRANSIENT or (isinstance(state, str) and state.startswith("08")):
                return _TRANSIENT
        elif self._backend in ("mysql", "mariadb"):
            args: tuple[Any, ...] = tuple(getattr(cause, "args", ()))
            code = args[0] if args else None
            if code in _MY_CONFLICT:
                return _CONFLICT
            if code in _MY_TRANSIENT:
                return _TRANSIENT
        else:
            text = str(cause).lower()
            if "database is locked" in text or "database is busy" in text:
                return _CONFLICT
        try:
            if isinstance(cause, self._dbapi_error) and self.engine.dialect.is_disconnect(
                cause,  # type: ignore[arg-type]  # the driver's own Error class
                None,
                None,
            ):
                return _TRANSIENT
        except Exception:  # pragma: no cover - a dialect that cannot tell
            pass
        return _PERMANENT

    def _error(self, what: str, exc: BaseException, *, attempts: int | None = None) -> StorageError:
        """The StorageError for a SQLAlchemy or driver exception raised while ``what``."""
        cause = _cause(exc)
        return _make_error(_message(what, cause), self._fault(cause), attempts)


class _SQLiteHintingCompiler(SQLiteCompiler):
    """SQLite's statement compiler, emitting a table's ``with_hint`` text after its name (where
    SQLite's ``INDEXED BY`` goes); SQLAlchemy's own drops it."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


class _Raw:
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


def _sqlite_wal(dbapi_conn: Any, _record: Any) -> None:
    """Write-ahead logging: readers never block the writer, and a commit costs one sync."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode = WAL")
    cur.close()


def _configure_sqlite(engine: Engine) -> None:
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


def _cause(exc: BaseException) -> BaseException:
    """The driver's exception behind a SQLAlchemy one."""
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        return exc.orig
    return exc


def _sqlite_collations(create_table: str) -> dict[str, str]:
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


def _message(what: str, cause: BaseException) -> str:
    return f"the database failed while {what}: {type(cause).__name__}: {cause}"


def _make_error(message: str, fault: str, attempts: int | None) -> StorageError:
    if fault == _PERMANENT:
        return StorageError(message, attempts=attempts)
    return TransientStorageError(message, attempts=attempts)


def _quiet_rollback(conn: Connection) -> None:
    with contextlib.suppress(Exception):
        conn.rollback()
