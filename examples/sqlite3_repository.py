"""A third-party repository written from the protocol's documentation alone.

It stores workers and assignments in SQLite through the standard library's ``sqlite3`` module
(no SQLAlchemy, no workermatch internals) and passes the conformance kit: see
``test_sqlite3_repository.py`` next to this file, and ``docs/stores.md``.

Times are stored as UTC text with millisecond precision (``2025-11-06T10:00:00.000Z``), so
that text order is time order and the queries can compare them as strings.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from workermatch import (
    Assignment,
    AssignmentStatus,
    InsertAssignment,
    InsertWorker,
    StorageError,
    UpdateWorker,
    Worker,
    WorkerStatus,
    Write,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    ip TEXT NOT NULL,
    hostname TEXT,
    created_at TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    status TEXT NOT NULL,
    stale INTEGER NOT NULL,
    assignment_id TEXT,
    ended_at TEXT,
    merged_into TEXT,
    hostname_seen TEXT,
    contested TEXT,
    held_end TEXT
);
CREATE TABLE IF NOT EXISTS assignments (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    worker_id TEXT REFERENCES workers (id),
    started_at TEXT,
    ended_at TEXT
);
CREATE INDEX IF NOT EXISTS workers_ip ON workers (ip, last_seen);
CREATE INDEX IF NOT EXISTS workers_hostname ON workers (hostname, last_seen);
CREATE INDEX IF NOT EXISTS workers_running ON workers (status, created_at);
CREATE INDEX IF NOT EXISTS assignments_holder ON assignments (worker_id, status);
"""

WORKER_COLUMNS = (
    "id, ip, hostname, created_at, last_seen, status, stale, assignment_id, ended_at, merged_into, "
    "hostname_seen, contested, held_end"
)
ASSIGNMENT_COLUMNS = "id, status, worker_id, started_at, ended_at"
LIVE = "stale = 0 AND merged_into IS NULL"


def to_text(value: datetime | None) -> str | None:
    """UTC text with milliseconds, ordered like the instants it names."""
    if value is None:
        return None
    utc = value.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def from_text(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def worker_row(w: Worker) -> tuple[Any, ...]:
    return (
        w.id,
        w.ip,
        w.hostname,
        to_text(w.created_at),
        to_text(w.last_seen),
        w.status.value,
        int(w.stale),
        w.assignment_id,
        to_text(w.ended_at),
        w.merged_into,
        to_text(w.hostname_seen),
        " ".join(w.contested) or None,  # worker ids of this store never contain a space
        None if w.held_end is None else w.held_end.to_json(),
    )


def assignment_row(a: Assignment) -> tuple[Any, ...]:
    return (a.id, a.status.value, a.worker_id, to_text(a.started_at), to_text(a.ended_at))


def to_worker(row: Sequence[Any]) -> Worker:
    return Worker(
        id=row[0],
        ip=row[1],
        hostname=row[2],
        created_at=from_text(row[3]),
        last_seen=from_text(row[4]),
        status=WorkerStatus(row[5]),
        stale=bool(row[6]),
        assignment_id=row[7],
        ended_at=from_text(row[8]),
        merged_into=row[9],
        hostname_seen=from_text(row[10]),
        contested=(row[11] or "").split(),
        held_end=row[12],
    )


def to_assignment(row: Sequence[Any]) -> Assignment:
    return Assignment(
        id=row[0],
        status=AssignmentStatus(row[1]),
        worker_id=row[2],
        started_at=from_text(row[3]),
        ended_at=from_text(row[4]),
    )


class Sqlite3WorkerRepository:
    """A ``workermatch.WorkerRepository`` on one ``sqlite3`` connection.

    One connection, guarded by a re-entrant lock: a unit of :meth:`atomically` holds the lock
    and an ``IMMEDIATE`` transaction, so units are serialised within this process and against
    other processes using the same file.  Nested units (``write`` inside ``atomically``) use
    savepoints, so each is all or nothing.
    """

    def __init__(self, path: str = ":memory:", *, id_factory: Callable[[], str] | None = None):
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.connection.executescript(SCHEMA)
        self._id_factory = id_factory or (lambda: str(uuid.uuid4()))
        self._lock = threading.RLock()
        self._depth = 0

    def close(self) -> None:
        self.connection.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self.connection.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"sqlite3 failed: {exc}") from exc

    def _workers(self, where: str, params: Sequence[Any]) -> list[Worker]:
        rows = self._query(f"SELECT {WORKER_COLUMNS} FROM workers WHERE {where}", params)
        return [to_worker(r) for r in rows]

    def _assignments(self, where: str, params: Sequence[Any]) -> list[Assignment]:
        rows = self._query(f"SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE {where}", params)
        return [to_assignment(r) for r in rows]

    # -- reads -----------------------------------------------------------------------------------

    def get_worker(self, worker_id: str) -> Worker | None:
        found = self._workers("id = ?", (worker_id,))
        return found[0] if found else None

    def get_assignment(self, assignment_id: str) -> Assignment | None:
        found = self._assignments("id = ?", (assignment_id,))
        return found[0] if found else None

    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        return self._workers(f"ip = ? AND last_seen >= ? AND {LIVE}", (ip, to_text(seen_since)))

    def live_workers_by_hostname(self, hostname: str, seen_since: datetime) -> Sequence[Worker]:
        return self._workers(
            f"hostname = ? AND last_seen >= ? AND {LIVE}", (hostname, to_text(seen_since))
        )

    def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        return self._workers(
            f"status = 'RUNNING' AND created_at >= ? AND last_seen >= ? AND {LIVE}",
            (to_text(created_since), to_text(seen_since)),
        )

    def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        return self._workers(
            "status = 'RUNNING' AND merged_into IS NULL AND (stale = 1 OR last_seen < ?) "
            "AND (ip = ? OR (? IS NOT NULL AND hostname = ?))",
            (to_text(seen_before), ip, hostname, hostname),
        )

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        ids = list(worker_ids)
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        return self._assignments(f"status = 'RUNNING' AND worker_id IN ({marks})", ids)

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        return self._workers("stale = 0 AND last_seen < ?", (to_text(seen_before),))

    def all_workers(self) -> Sequence[Worker]:
        return self._workers("1 = 1", ())

    def all_assignments(self) -> Sequence[Assignment]:
        return self._assignments("1 = 1", ())

    # -- writes ----------------------------------------------------------------------------------

    def new_worker_id(self) -> str:
        return self._id_factory()

    def write(self, writes: Iterable[Write]) -> None:
        ops = list(writes)
        self.atomically(lambda: self._write(ops))

    def _write(self, ops: list[Write]) -> None:
        run = self.connection.execute
        try:
            for op in ops:
                if isinstance(op, InsertWorker):
                    marks = ", ".join("?" * 13)
                    run(
                        f"INSERT INTO workers ({WORKER_COLUMNS}) VALUES ({marks})",
                        worker_row(op.worker),
                    )
                elif isinstance(op, UpdateWorker):
                    row = worker_row(op.worker)
                    sets = ", ".join(f"{c} = ?" for c in WORKER_COLUMNS.split(", ")[1:])
                    cur = run(f"UPDATE workers SET {sets} WHERE id = ?", (*row[1:], row[0]))
                    if cur.rowcount != 1:
                        raise StorageError(f"worker {op.worker.id!r} does not exist")
                elif isinstance(op, InsertAssignment):
                    run(
                        f"INSERT INTO assignments ({ASSIGNMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                        assignment_row(op.assignment),
                    )
                else:
                    row = assignment_row(op.assignment)
                    cur = run(
                        "UPDATE assignments SET status = ?, worker_id = ?, started_at = ?, "
                        "ended_at = ? WHERE id = ?",
                        (*row[1:], row[0]),
                    )
                    if cur.rowcount != 1:
                        raise StorageError(f"assignment {op.assignment.id!r} does not exist")
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite3 failed: {exc}") from exc

    def atomically(self, fn: Callable[[], T]) -> T:
        with self._lock:
            depth = self._depth
            begin, commit, rollback = (
                ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
                if depth == 0
                else (f"SAVEPOINT u{depth}", f"RELEASE u{depth}", f"ROLLBACK TO u{depth}")
            )
            try:
                self.connection.execute(begin)
            except sqlite3.Error as exc:
                raise StorageError(f"sqlite3 failed: {exc}") from exc
            self._depth += 1
            try:
                result = fn()
            except BaseException:
                self.connection.execute(rollback)
                if depth > 0:
                    self.connection.execute(f"RELEASE u{depth}")
                raise
            finally:
                self._depth -= 1
            self.connection.execute(commit)
            return result
