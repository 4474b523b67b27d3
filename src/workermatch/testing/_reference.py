"""The kit's reference: a repository that answers every query by scanning every row.

:class:`ReferenceRepository` is the protocol's contract written out as plainly as possible: two
dicts of rows, and each query is one comprehension over all of them that reads like the
protocol's docstring.  No index, no cache, no cleverness: it is slow on a large fleet and
obviously right, which is what a reference is for.  The kit compares every repository with it,
the library's own :class:`~workermatch.InMemoryWorkerRepository` included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from .._errors import StorageError
from .._memory import sequential_ids
from .._model import Assignment, AssignmentStatus, Worker, WorkerStatus, check_id
from .._protocol import InsertAssignment, InsertWorker, UpdateAssignment, UpdateWorker, Write

__all__ = ["ReferenceRepository"]

T = TypeVar("T")


class ReferenceRepository:
    """A :class:`~workermatch.WorkerRepository` that scans every row on every query.

    ``new_worker_id`` returns ``w1``, ``w2``, ... (or the values of ``id_factory``): a
    repository under test made with ``id_factory=sequential_ids()`` gives its new workers the
    same ids, so decisions, writes and ties broken by id can be compared one for one.

    :meth:`write` checks the whole batch before applying any of it; :meth:`atomically` runs the
    unit under a lock on a copy of the rows taken on entry, and puts that copy back when the
    unit raises.
    """

    def __init__(self, *, id_factory: Callable[[], str] | None = None) -> None:
        self._new_id = id_factory or sequential_ids()
        self._lock = threading.RLock()
        self._workers: dict[str, Worker] = {}
        self._assignments: dict[str, Assignment] = {}

    def __repr__(self) -> str:
        return (
            f"<ReferenceRepository workers={len(self._workers)} "
            f"assignments={len(self._assignments)}>"
        )

    # -- reads -----------------------------------------------------------------------------------

    def _rows(self) -> list[Worker]:
        with self._lock:
            return list(self._workers.values())

    def get_worker(self, worker_id: str) -> Worker | None:
        check_id(worker_id, "worker_id")
        return next((w for w in self._rows() if w.id == worker_id), None)

    def get_assignment(self, assignment_id: str) -> Assignment | None:
        check_id(assignment_id, "assignment_id")
        return next((a for a in self.all_assignments() if a.id == assignment_id), None)

    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        return [w for w in self._rows() if _live(w, seen_since) and w.ip == ip]

    def live_workers_by_hostname(self, hostname: str, seen_since: datetime) -> Sequence[Worker]:
        return [w for w in self._rows() if _live(w, seen_since) and w.hostname == hostname]

    def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        return [
            w
            for w in self._rows()
            if _live(w, seen_since)
            and w.status is WorkerStatus.RUNNING
            and w.created_at >= created_since
        ]

    def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        return [
            w
            for w in self._rows()
            if w.merged_into is None
            and w.status is WorkerStatus.RUNNING
            and (w.ip == ip or (hostname is not None and w.hostname == hostname))
            and (w.stale or w.last_seen < seen_before)
        ]

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        wanted = set(worker_ids)
        return [
            a
            for a in self.all_assignments()
            if a.status is AssignmentStatus.RUNNING and a.worker_id in wanted
        ]

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        return [w for w in self._rows() if not w.stale and w.last_seen < seen_before]

    def all_workers(self) -> Sequence[Worker]:
        return self._rows()

    def all_assignments(self) -> Sequence[Assignment]:
        with self._lock:
            return list(self._assignments.values())

    # -- writes ----------------------------------------------------------------------------------

    def new_worker_id(self) -> str:
        return self._new_id()

    def write(self, writes: Iterable[Write]) -> None:
        ops = list(writes)
        with self._lock:
            # Apply to copies, keep them only if every operation was valid: all or nothing.
            workers, assignments = dict(self._workers), dict(self._assignments)
            for op in ops:
                if isinstance(op, InsertWorker):
                    if op.worker.id in workers:
                        raise StorageError(f"worker {op.worker.id!r} already exists")
                    workers[op.worker.id] = op.worker
                elif isinstance(op, UpdateWorker):
                    if op.worker.id not in workers:
                        raise StorageError(f"worker {op.worker.id!r} does not exist")
                    workers[op.worker.id] = op.worker
                elif isinstance(op, (InsertAssignment, UpdateAssignment)):
                    a = op.assignment
                    exists = a.id in assignments
                    if isinstance(op, InsertAssignment) and exists:
                        raise StorageError(f"assignment {a.id!r} already exists")
                    if isinstance(op, UpdateAssignment) and not exists:
                        raise StorageError(f"assignment {a.id!r} does not exist")
                    if a.worker_id is not None and a.worker_id not in workers:
                        raise StorageError(
                            f"assignment {a.id!r} names unknown worker {a.worker_id!r}"
                        )
                    assignments[a.id] = a
                else:  # pragma: no cover - guarded by the type checker
                    raise StorageError(f"unknown write operation {op!r}")
            self._workers, self._assignments = workers, assignments

    def atomically(self, fn: Callable[[], T]) -> T:
        with self._lock:
            saved = dict(self._workers), dict(self._assignments)
            try:
                return fn()
            except BaseException:
                self._workers, self._assignments = saved
                raise


def _live(w: Worker, seen_since: datetime) -> bool:
    """Not flagged stale, not merged, and heard from at ``seen_since`` or later."""
    return not w.stale and w.merged_into is None and w.last_seen >= seen_since
