"""The :class:`~workermatch.WorkerRepository` protocol on the Django ORM.

How a decision is made atomic and race-safe (``docs/django.md`` says why each is safe):

* **The repository owns the transaction** (no ``atomic()`` block is open on the connection:
  a view under ``transaction.non_atomic_requests``, a management command, a task): each unit
  runs in ``transaction.atomic()``; on PostgreSQL its first statement makes the transaction
  ``SERIALIZABLE``.  A serialisation failure, deadlock or lock timeout (on SQLite, a locked
  database) rolls the unit back and runs it again after a back-off, as a
  :class:`~workermatch.sql.RetryPolicy` says; once that gives up, a
  :class:`~workermatch.TransientStorageError`.
* **Inside an outer transaction** (``ATOMIC_REQUESTS``, an ``atomic()`` block around the call,
  Django's ``TestCase``): the unit is a savepoint of that transaction.  The database aborts the
  whole transaction on a conflict, so the repository cannot run the unit again: it raises a
  :class:`~workermatch.TransientStorageError` at once and the caller retries the whole request.
  On PostgreSQL the outer transaction must be ``SERIALIZABLE`` (the connection's
  ``OPTIONS["isolation_level"]``); at a weaker level a decision could race another, so the
  repository refuses with a :class:`~workermatch.StorageError` naming the fix.
* **SQLite**: threads of one process also take turns on a lock per database alias (SQLite has
  one writer at a time anyway).

Supported databases: PostgreSQL (psycopg 3 or psycopg2) and SQLite.  For MariaDB / MySQL use
``workermatch.sql``: its id and hostname columns need a binary collation that a Django model
cannot declare for every database at once.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

import attrs
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db import Error as DjangoDatabaseError
from django.db import InterfaceError as DjangoInterfaceError
from django.db.models import Q
from django.utils.connection import ConnectionDoesNotExist

from ..._errors import InvalidInput, StorageError, TransientStorageError
from ..._model import Assignment, AssignmentStatus, Worker, WorkerStatus, check_id
from ..._observe import gave_up, retried
from ..._protocol import InsertAssignment, InsertWorker, UpdateAssignment, UpdateWorker, Write
from ..._retry import DEFAULT_RETRY, PG_CONFLICT, PG_TRANSIENT, RetryPolicy, check_retry
from . import models

__all__ = ["DjangoWorkerRepository"]

T = TypeVar("T")

_SUPPORTED = ("postgresql", "sqlite")

# What a database error means (see DjangoWorkerRepository._fault).
_CONFLICT = "conflict"  # rolled back by the database; running the unit again is safe
_TRANSIENT = "transient"  # the connection or the server failed; the request may succeed later
_PERMANENT = "permanent"  # fails the same way until someone changes something

# SQLite's primary result codes for "busy" and "locked" (a shared-cache table lock).
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

# The columns read back, in the order of the model's fields (the rows are built from them).
_W_FIELDS = tuple(f.name for f in attrs.fields(Worker))
_A_FIELDS = tuple(f.name for f in attrs.fields(Assignment))
_RUNNING_W = WorkerStatus.RUNNING.value
_RUNNING_A = AssignmentStatus.RUNNING.value

_NOT_SERIALIZABLE = (
    "a workermatch decision inside an outer transaction (ATOMIC_REQUESTS, an atomic() block "
    "around the call, or Django's TestCase) on database {alias!r} runs at isolation level "
    "{level!r}, where two simultaneous requests could both decide on the same rows (two first "
    "heartbeats from one machine would make two workers). Either run the call outside any "
    "atomic block (decorate the view with django.db.transaction.non_atomic_requests; in tests "
    "use TransactionTestCase or pytest.mark.django_db(transaction=True)), so that the "
    "repository runs its own SERIALIZABLE transaction and retries conflicts itself; or make "
    "the connection serializable: DATABASES[{alias!r}]['OPTIONS']['isolation_level'] = "
    "IsolationLevel.SERIALIZABLE (from django.db.backends.postgresql.psycopg_any)"
)

_sqlite_locks: dict[str, threading.RLock] = {}
_sqlite_locks_guard = threading.Lock()


def _sqlite_lock(alias: str) -> threading.RLock:
    with _sqlite_locks_guard:
        return _sqlite_locks.setdefault(alias, threading.RLock())


def _uuid_ids() -> str:
    return str(uuid.uuid4())


class _Unit(threading.local):
    depth = 0  # > 0 while a unit of this repository runs in this thread


class DjangoWorkerRepository:
    """A :class:`~workermatch.WorkerRepository` on the Django ORM, in the tables of the
    ``workermatch.contrib.django`` app (``workermatch_workers``, ``workermatch_assignments``).

    ``using`` is the database alias (``"default"``); ``id_factory`` makes new worker ids
    (default: random UUIDs); ``retry`` says when a unit that hit a conflict runs again, when the
    repository owns the transaction (:data:`~workermatch.sql.DEFAULT_RETRY`).  Cheap to make:
    one per request is fine.  Safe to share between threads (Django's connections are per
    thread).
    """

    def __init__(
        self,
        using: str = DEFAULT_DB_ALIAS,
        *,
        id_factory: Callable[[], str] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if not isinstance(using, str):
            raise InvalidInput(
                f"using must be a database alias, not {type(using).__name__}",
                field="using",
                value=using,
            )
        try:
            connection = connections[using]
        except ConnectionDoesNotExist:
            raise InvalidInput(
                f"no database {using!r} in settings.DATABASES", field="using", value=using
            ) from None
        self._vendor: str = connection.vendor
        if self._vendor not in _SUPPORTED:
            raise InvalidInput(
                f"database {using!r} is {self._vendor}; the Django repository supports "
                "PostgreSQL and SQLite (for MariaDB / MySQL use workermatch.sql)",
                field="using",
                value=using,
            )
        check_retry(retry)
        self.using = using
        self.retry = retry
        self._id_factory = id_factory or _uuid_ids
        self._unit = _Unit()
        self._retries = 0
        self._retries_lock = threading.Lock()
        self._lock = _sqlite_lock(using) if self._vendor == "sqlite" else None
        # The DB-API driver's module (psycopg, psycopg2 or sqlite3), whose exceptions Django
        # chains behind its own.
        self._database: Any = cast(Any, connection).Database

    def __repr__(self) -> str:
        return f"<DjangoWorkerRepository using={self.using!r} ({self._vendor})>"

    @property
    def retries(self) -> int:
        """How many times a unit was rolled back and run again after a conflict: a figure for
        monitoring; it never affects results."""
        return self._retries

    # -- reads -----------------------------------------------------------------------------------

    def get_worker(self, worker_id: str) -> Worker | None:
        check_id(worker_id, "worker_id")
        found = self._workers("reading a worker", Q(id=worker_id))
        return found[0] if found else None

    def get_assignment(self, assignment_id: str) -> Assignment | None:
        check_id(assignment_id, "assignment_id")
        found = self._assignments("reading an assignment", Q(id=assignment_id))
        return found[0] if found else None

    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        return self._workers("reading workers by IP", Q(ip=ip) & _live(seen_since))

    def live_workers_by_hostname(self, hostname: str, seen_since: datetime) -> Sequence[Worker]:
        return self._workers(
            "reading workers by hostname", Q(hostname=hostname) & _live(seen_since)
        )

    def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        return self._workers(
            "reading recent running workers",
            Q(status=_RUNNING_W, created_at__gte=created_since) & _live(seen_since),
        )

    def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        where = Q(ip=ip) if hostname is None else Q(ip=ip) | Q(hostname=hostname)
        return self._workers(
            "reading stale running workers",
            where
            & Q(status=_RUNNING_W, merged_into__isnull=True)
            & (Q(stale=True) | Q(last_seen__lt=seen_before)),
        )

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        ids = list(dict.fromkeys(worker_ids))
        if not ids:
            return []
        return self._assignments(
            "reading running assignments", Q(worker_id__in=ids, status=_RUNNING_A)
        )

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        return self._workers("reading unflagged workers", Q(stale=False, last_seen__lt=seen_before))

    def all_workers(self) -> Sequence[Worker]:
        return self._workers("reading all workers", Q())

    def all_assignments(self) -> Sequence[Assignment]:
        return self._assignments("reading all assignments", Q())

    def clock(self) -> datetime:
        """The database server's current time (UTC): one clock for every server process that
        shares this database.  ``apply_event(event, None, repo)`` decides at this time, read in
        the decision's own transaction, so that clock skew between server processes cannot
        split a session or mix two.  (On SQLite, the clock of the machine that holds the
        file.)"""

        def run() -> datetime:
            sql = (
                "SELECT now() AT TIME ZONE 'UTC'"
                if self._vendor == "postgresql"
                else "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"
            )
            with connections[self.using].cursor() as cursor:
                cursor.execute(sql)
                row = cursor.fetchone()
            assert row is not None
            value = row[0]
            if isinstance(value, str):  # SQLite's strftime text
                value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value.astimezone(timezone.utc)  # type: ignore[no-any-return]

        return self._read("reading the database's clock", run)

    def is_empty(self) -> bool:
        """Whether the store holds no worker."""
        return self._read(
            "checking for workers",
            lambda: not models.Worker.objects.using(self.using).exists(),
        )

    # -- writes ----------------------------------------------------------------------------------

    def new_worker_id(self) -> str:
        return self._id_factory()

    def write(self, writes: Iterable[Write]) -> None:
        """Apply the writes in order, all or nothing: inside a unit, as part of it; otherwise in
        a transaction of their own (a savepoint inside an outer transaction)."""
        ops = list(writes)
        if not ops:
            return
        self._run_unit(
            lambda: self._guard("writing a decision", lambda: self._write(ops)),
            serialisable=False,
        )

    def reset(self) -> None:
        """Delete every row of the two tables (assignments first), without Django's deletion
        collector or signals."""

        def run() -> None:
            connection = connections[self.using]
            with connection.cursor() as cursor:
                for model in (models.Assignment, models.Worker):
                    cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")

        self._run_unit(lambda: self._guard("emptying the tables", run), serialisable=False)

    def atomically(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` as one serialisable unit and return its result (a unit already running in
        this thread just calls ``fn``).

        Outside any ``atomic()`` block: one transaction (``SERIALIZABLE`` on PostgreSQL); a
        conflict rolls it back and runs ``fn`` again after a back-off, as :attr:`retry` says;
        once that gives up, a :class:`~workermatch.TransientStorageError`.  Inside an outer
        transaction: a savepoint; a conflict is a :class:`~workermatch.TransientStorageError`
        at once (retry the whole request), and on PostgreSQL the outer transaction must be
        ``SERIALIZABLE`` (else a :class:`~workermatch.StorageError` that says how to fix it).
        Any other database failure is a :class:`~workermatch.StorageError` (``retryable`` when
        the connection or the server failed).  An exception of ``fn``'s own goes through
        unchanged, after the rollback.
        """
        return self._run_unit(fn, serialisable=True)

    def _write(self, ops: list[Write]) -> None:
        workers = models.Worker.objects.using(self.using)
        assignments = models.Assignment.objects.using(self.using)
        for op in ops:
            if isinstance(op, InsertWorker):
                workers.create(id=op.worker.id, **_worker_values(op.worker))
            elif isinstance(op, UpdateWorker):
                if workers.filter(id=op.worker.id).update(**_worker_values(op.worker)) != 1:
                    raise StorageError(f"worker {op.worker.id!r} does not exist")
            elif isinstance(op, InsertAssignment):
                assignments.create(id=op.assignment.id, **_assignment_values(op.assignment))
            elif isinstance(op, UpdateAssignment):
                a = op.assignment
                if assignments.filter(id=a.id).update(**_assignment_values(a)) != 1:
                    raise StorageError(f"assignment {a.id!r} does not exist")
            else:  # pragma: no cover - guarded by the type checker
                raise StorageError(f"unknown write operation {op!r}")

    # -- units -----------------------------------------------------------------------------------

    def _run_unit(self, fn: Callable[[], T], *, serialisable: bool) -> T:
        if self._unit.depth:
            return fn()
        connection = connections[self.using]
        with self._locked():
            try:
                owned = connection.get_autocommit() and not connection.in_atomic_block
            except DjangoDatabaseError as exc:
                raise self._error("connecting", exc, attempts=1) from _cause(exc)
            if owned:
                return self._owned(fn)
            return self._nested(fn, serialisable=serialisable)

    def _owned(self, fn: Callable[[], T]) -> T:
        """The unit in a transaction of its own, run again after a conflict."""
        policy = self.retry
        started = policy.clock()
        attempt = 0
        while True:
            attempt += 1
            committing = False
            self._unit.depth += 1
            try:
                with transaction.atomic(using=self.using):
                    self._begin()
                    result = fn()
                    committing = True
                return result
            except BaseException as exc:
                found = self._database_cause(exc, "committing" if committing else "running a unit")
                if found is None:
                    raise  # fn's own exception, or a StorageError of the library's
                cause, message = found
                fault = self._fault(cause)
                if fault != _CONFLICT:
                    if committing and fault == _TRANSIENT:
                        raise StorageError(
                            f"{message} (the connection failed during COMMIT: the unit may or "
                            "may not have been stored)",
                            retryable=False,
                            attempts=attempt,
                        ) from cause
                    raise _make_error(message, fault, attempt) from cause
                elapsed = policy.clock() - started
                pause = policy.delay(attempt)
                if attempt >= policy.max_attempts or elapsed + pause > policy.max_time:
                    gave_up(attempt, elapsed, message)
                    raise TransientStorageError(
                        f"{message} (gave up after {attempt} attempt"
                        f"{'s' if attempt != 1 else ''} in {elapsed:.2f} s; the database kept "
                        "reporting conflicts: retry later)",
                        attempts=attempt,
                    ) from cause
            finally:
                self._unit.depth -= 1
            with self._retries_lock:
                self._retries += 1
            retried(self._vendor)
            policy.sleep(pause)

    def _nested(self, fn: Callable[[], T], *, serialisable: bool) -> T:
        """The unit as a savepoint of the caller's transaction: never run again."""
        self._unit.depth += 1
        try:
            if serialisable:
                self._check_isolation()
            with transaction.atomic(using=self.using):
                return fn()
        except BaseException as exc:
            found = self._database_cause(exc, "running a unit inside an outer transaction")
            if found is None:
                raise
            cause, message = found
            fault = self._fault(cause)
            if fault == _CONFLICT:
                raise TransientStorageError(
                    f"{message} (the unit ran inside an outer transaction, which the "
                    "database has aborted: the repository cannot run it again; roll back and "
                    "retry the whole request, or run the call outside atomic blocks, e.g. a "
                    "view under transaction.non_atomic_requests, where the repository retries "
                    "by itself)",
                    attempts=1,
                ) from cause
            raise _make_error(message, fault, 1) from cause
        finally:
            self._unit.depth -= 1

    def _begin(self) -> None:
        """The first statement of a unit's own transaction: SERIALIZABLE on PostgreSQL
        (unless the connection is set up so already)."""
        if self._vendor != "postgresql":
            return
        connection = connections[self.using]
        if _is_serializable_connection(connection):
            return
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")

    def _check_isolation(self) -> None:
        """Inside an outer transaction on PostgreSQL: refuse unless it is SERIALIZABLE."""
        if self._vendor != "postgresql":
            return  # SQLite transactions are serialisable
        connection = connections[self.using]
        if _is_serializable_connection(connection):
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('transaction_isolation')")
            row = cursor.fetchone()
        level = str(row[0]) if row else "unknown"
        if level != "serializable":
            raise StorageError(_NOT_SERIALIZABLE.format(alias=self.using, level=level))

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock is None:
            yield
        else:
            with self._lock:
                yield

    def _guard(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except DjangoDatabaseError as exc:
            raise self._error(what, exc) from _cause(exc)

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        """A read: inside a unit, part of it; otherwise a plain query on the connection (in
        autocommit, or in the caller's transaction)."""
        if self._unit.depth:
            return self._guard(what, fn)
        with self._locked():
            return self._guard(what, fn)

    def _workers(self, what: str, where: Q) -> list[Worker]:
        def run() -> list[Worker]:
            rows = models.Worker.objects.using(self.using).filter(where).values_list(*_W_FIELDS)
            return [_worker(row) for row in rows]

        return self._read(what, run)

    def _assignments(self, what: str, where: Q) -> list[Assignment]:
        def run() -> list[Assignment]:
            rows = models.Assignment.objects.using(self.using).filter(where).values_list(*_A_FIELDS)
            return [_assignment(row) for row in rows]

        return self._read(what, run)

    def _fault(self, cause: BaseException) -> str:
        """Classify a database exception: a conflict (the database rolled the transaction
        back; run the unit again), transient (the connection or server failed; the request may
        succeed later) or permanent."""
        if self._vendor == "postgresql":
            state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
            if state in PG_CONFLICT:
                return _CONFLICT
            if state in PG_TRANSIENT or (isinstance(state, str) and state.startswith("08")):
                return _TRANSIENT
            lost = (self._database.OperationalError, self._database.InterfaceError)
            if state is None and isinstance(cause, lost):
                return _TRANSIENT  # the driver lost the connection (no SQLSTATE from a server)
        else:
            code = getattr(cause, "sqlite_errorcode", None)
            if isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
                return _CONFLICT
            text = str(cause).lower()
            if isinstance(cause, sqlite3.OperationalError) and (
                "database is locked" in text
                or "database table is locked" in text
                or "database is busy" in text
            ):
                return _CONFLICT
        if isinstance(cause, DjangoInterfaceError):
            return _TRANSIENT  # Django's own "connection already closed"
        return _PERMANENT

    def _database_cause(self, exc: BaseException, what: str) -> tuple[BaseException, str] | None:
        """(the database's exception, a message) when ``exc`` is a database failure: a Django
        database error, or a StorageError the repository raised from one; else ``None`` (an
        exception of the unit's own, or a StorageError of the library's)."""
        if isinstance(exc, DjangoDatabaseError):
            cause = _cause(exc)
            return cause, _message(what, cause)
        if isinstance(exc, StorageError) and isinstance(
            exc.__cause__, (DjangoDatabaseError, self._database.Error)
        ):
            return exc.__cause__, str(exc)
        return None

    def _error(self, what: str, exc: BaseException, *, attempts: int | None = None) -> StorageError:
        """The StorageError for a Django database exception raised while ``what``."""
        cause = _cause(exc)
        return _make_error(_message(what, cause), self._fault(cause), attempts)


def _live(seen_since: datetime) -> Q:
    return Q(last_seen__gte=seen_since, stale=False, merged_into__isnull=True)


def _is_serializable_connection(connection: Any) -> bool:
    """Whether the connection's own isolation level (``OPTIONS["isolation_level"]``) is
    SERIALIZABLE, which makes every transaction on it serializable."""
    level = getattr(connection, "isolation_level", None)
    if level is None:
        return False
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    return bool(level == IsolationLevel.SERIALIZABLE)


def _worker(row: Sequence[Any]) -> Worker:
    (wid, ip, hostname, created_at, last_seen, status, stale, aid, ended_at, merged) = row[:10]
    hostname_seen, contested, held_end = row[10:13]
    try:
        return Worker(
            id=wid,
            ip=ip,
            hostname=hostname,
            created_at=created_at,
            last_seen=last_seen,
            status=WorkerStatus(status),
            stale=bool(stale),
            assignment_id=aid,
            ended_at=ended_at,
            merged_into=merged,
            hostname_seen=hostname_seen,
            contested=() if contested is None else json.loads(contested),
            held_end=held_end,
        )
    except (ValueError, TypeError, InvalidInput) as exc:
        raise StorageError(f"worker row {wid!r} cannot be read: {exc!r}") from exc


def _assignment(row: Sequence[Any]) -> Assignment:
    (aid, status, worker_id, started_at, ended_at) = row
    try:
        return Assignment(
            id=aid,
            status=AssignmentStatus(status),
            worker_id=worker_id,
            started_at=started_at,
            ended_at=ended_at,
        )
    except (ValueError, TypeError, InvalidInput) as exc:
        raise StorageError(f"assignment row {aid!r} cannot be read: {exc!r}") from exc


def _worker_values(w: Worker) -> dict[str, Any]:
    return {
        "ip": w.ip,
        "hostname": w.hostname,
        "created_at": w.created_at,
        "last_seen": w.last_seen,
        "status": w.status.value,
        "stale": w.stale,
        "assignment_id": w.assignment_id,
        "ended_at": w.ended_at,
        "merged_into": w.merged_into,
        "hostname_seen": w.hostname_seen,
        "contested": json.dumps(list(w.contested)) if w.contested else None,
        "held_end": None if w.held_end is None else w.held_end.to_json(),
    }


def _assignment_values(a: Assignment) -> dict[str, Any]:
    return {
        "status": a.status.value,
        "worker_id": a.worker_id,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
    }


def _cause(exc: BaseException) -> BaseException:
    """The driver's exception behind a Django one (Django chains it as ``__cause__``)."""
    cause = exc.__cause__
    if isinstance(exc, DjangoDatabaseError) and isinstance(cause, BaseException):
        return cause
    return exc


def _message(what: str, cause: BaseException) -> str:
    return f"the database failed while {what}: {type(cause).__name__}: {cause}"


def _make_error(message: str, fault: str, attempts: int | None) -> StorageError:
    if fault == _PERMANENT:
        return StorageError(message, attempts=attempts)
    return TransientStorageError(message, attempts=attempts)
