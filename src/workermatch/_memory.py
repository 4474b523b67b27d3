"""The in-memory reference repository: thread-safe, indexed, and assumed to be right.

Every query is served from an index (by IP, by hostname, by creation time, by holder), so the
cost of one decision depends on how many workers share the request's IP or hostname, or were
created within the orphan window, never on the size of the fleet.
"""

from __future__ import annotations

import bisect
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TypeVar

from ._errors import StorageError
from ._model import Assignment, AssignmentStatus, Worker, WorkerStatus, check_id
from ._protocol import InsertAssignment, InsertWorker, UpdateAssignment, UpdateWorker, Write

__all__ = ["InMemoryWorkerRepository", "sequential_ids"]

T = TypeVar("T")
K = TypeVar("K")


def sequential_ids(prefix: str = "w", start: int = 1) -> Callable[[], str]:
    """An id factory returning ``w1``, ``w2``, ... (thread-safe).  Replays use it."""
    lock = threading.Lock()
    counter = iter(range(start, 2**63))

    def next_id() -> str:
        with lock:
            return f"{prefix}{next(counter)}"

    return next_id


def _uuid_ids() -> str:
    return str(uuid.uuid4())


class InMemoryWorkerRepository:
    """A :class:`~workermatch.WorkerRepository` in process memory.

    ``id_factory`` makes new worker ids (default: random UUIDs, as the real system uses).
    All methods are safe to call from several threads; :meth:`atomically` serialises whole
    decisions with a re-entrant lock, and undoes the writes of a function that raises.
    """

    def __init__(self, *, id_factory: Callable[[], str] | None = None) -> None:
        self._id_factory = id_factory or _uuid_ids
        self._lock = threading.RLock()
        self._workers: dict[str, Worker] = {}
        self._assignments: dict[str, Assignment] = {}
        self._by_ip: dict[str, set[str]] = {}
        self._by_hostname: dict[str, set[str]] = {}
        self._by_holder: dict[str, set[str]] = {}
        # (created_at, id) of every worker that has been RUNNING, sorted: serves "RUNNING and
        # created since" by bisection, in time proportional to the recent claims, not to the
        # fleet.  An entry stays when its worker stops running (deleting from the middle of a
        # long list moves the rest of it): the query skips entries whose worker is no longer
        # RUNNING or no longer has that created_at.  _running_entries holds the same entries,
        # so that none is added twice.
        self._running_by_created: list[tuple[datetime, str]] = []
        self._running_entries: set[tuple[datetime, str]] = set()
        # Ids of RUNNING workers by last_seen, in buckets of _SEEN_BUCKET seconds: serves
        # recent_running_workers when its seen_since bound is the selective one (few workers
        # heard from lately, many created since created_since: the orphan guard's question).
        self._running_by_seen: dict[int, set[str]] = {}
        self._last_seen_bucket = -1  # the latest bucket ever filled
        # Undo journal of the innermost atomically() call, or None outside one.
        self._journal: list[Callable[[], None]] | None = None

    def __repr__(self) -> str:
        return (
            f"<InMemoryWorkerRepository workers={len(self._workers)} "
            f"assignments={len(self._assignments)}>"
        )

    # -- reads -----------------------------------------------------------------------------------

    def get_worker(self, worker_id: str) -> Worker | None:
        check_id(worker_id, "worker_id")
        with self._lock:
            return self._workers.get(worker_id)

    def get_assignment(self, assignment_id: str) -> Assignment | None:
        check_id(assignment_id, "assignment_id")
        with self._lock:
            return self._assignments.get(assignment_id)

    def _live(self, ids: Iterable[str], seen_since: datetime) -> list[Worker]:
        out = []
        for wid in ids:
            w = self._workers[wid]
            if not w.stale and w.merged_into is None and w.last_seen >= seen_since:
                out.append(w)
        return out

    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        # _live, written out: the question of almost every request.
        out = []
        with self._lock:
            workers = self._workers
            for wid in self._by_ip.get(ip, ()):
                w = workers[wid]
                if not w.stale and w.merged_into is None and w.last_seen >= seen_since:
                    out.append(w)
        return out

    def live_workers_by_hostname(self, hostname: str, seen_since: datetime) -> Sequence[Worker]:
        with self._lock:
            return self._live(self._by_hostname.get(hostname, ()), seen_since)

    def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        with self._lock:
            index = self._running_by_created
            start = bisect.bisect_left(index, (created_since, ""))
            # Read whichever index holds fewer entries for this question.
            seen = self._running_seen_since(seen_since, limit=len(index) - start)
            if seen is not None:
                rows = [self._workers[wid] for wid in seen]
            else:
                rows = []
                for created, wid in index[start:]:
                    w = self._workers.get(wid)
                    # Entries outlive their worker's run or creation time: skip those.
                    if w is not None and w.created_at == created:
                        rows.append(w)
            return [
                w
                for w in rows
                if w.status is WorkerStatus.RUNNING
                and w.created_at >= created_since
                and not w.stale
                and w.merged_into is None
                and w.last_seen >= seen_since
            ]

    def _running_seen_since(self, seen_since: datetime, *, limit: int) -> list[str] | None:
        """Ids of RUNNING workers in the buckets from ``seen_since`` on (a superset of those seen
        since then), or ``None`` when that would mean more than ``limit`` buckets or ids."""
        low, high = _seen_bucket(seen_since), self._last_seen_bucket
        if high - low >= limit:
            return None
        ids: list[str] = []
        for key in range(low, high + 1):
            bucket = self._running_by_seen.get(key)
            if bucket:
                if len(ids) + len(bucket) > limit:
                    return None
                ids.extend(bucket)
        return ids

    def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        with self._lock:
            ids = set(self._by_ip.get(ip, ()))
            if hostname is not None:
                ids |= self._by_hostname.get(hostname, set())
            out = []
            for wid in ids:
                w = self._workers[wid]
                if (
                    w.merged_into is None
                    and w.status is WorkerStatus.RUNNING
                    and (w.stale or w.last_seen < seen_before)
                ):
                    out.append(w)
            return out

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        with self._lock:
            out = []
            for wid in worker_ids:
                for aid in self._by_holder.get(wid, ()):
                    a = self._assignments[aid]
                    if a.status is AssignmentStatus.RUNNING:
                        out.append(a)
            return out

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        with self._lock:
            return [w for w in self._workers.values() if not w.stale and w.last_seen < seen_before]

    def all_workers(self) -> Sequence[Worker]:
        with self._lock:
            return list(self._workers.values())

    def all_assignments(self) -> Sequence[Assignment]:
        with self._lock:
            return list(self._assignments.values())

    def __len__(self) -> int:
        return len(self._workers)

    def __iter__(self) -> Iterator[Worker]:
        return iter(self.all_workers())

    # -- writes ----------------------------------------------------------------------------------

    def new_worker_id(self) -> str:
        return self._id_factory()

    def write(self, writes: Iterable[Write]) -> None:
        ops = list(writes)
        with self._lock:
            self._validate(ops)
            for op in ops:
                self._apply(op)

    def atomically(self, fn: Callable[[], T]) -> T:
        with self._lock:
            outer = self._journal
            journal: list[Callable[[], None]] = []
            self._journal = journal
            try:
                result = fn()
            except BaseException:
                for undo in reversed(journal):
                    undo()
                raise
            finally:
                self._journal = outer
            if outer is not None:
                outer.extend(journal)
            return result

    # -- internals -------------------------------------------------------------------------------

    def _validate(self, ops: list[Write]) -> None:
        # Ids inserted earlier in this batch; the stored ids are looked up in place (copying
        # them would make every write cost as much as the fleet is large).
        new_workers: set[str] = set()
        new_assignments: set[str] = set()

        def has_worker(wid: str) -> bool:
            return wid in self._workers or wid in new_workers

        for op in ops:
            if isinstance(op, InsertWorker):
                if has_worker(op.worker.id):
                    raise StorageError(f"worker {op.worker.id!r} already exists")
                new_workers.add(op.worker.id)
            elif isinstance(op, UpdateWorker):
                if not has_worker(op.worker.id):
                    raise StorageError(f"worker {op.worker.id!r} does not exist")
            elif isinstance(op, InsertAssignment):
                aid = op.assignment.id
                if aid in self._assignments or aid in new_assignments:
                    raise StorageError(f"assignment {aid!r} already exists")
                new_assignments.add(aid)
            elif isinstance(op, UpdateAssignment):
                aid = op.assignment.id
                if aid not in self._assignments and aid not in new_assignments:
                    raise StorageError(f"assignment {aid!r} does not exist")
            else:  # pragma: no cover - guarded by the type checker
                raise StorageError(f"unknown write operation {op!r}")
            if isinstance(op, (InsertAssignment, UpdateAssignment)):
                holder = op.assignment.worker_id
                if holder is not None and not has_worker(holder):
                    raise StorageError(
                        f"assignment {op.assignment.id!r} names unknown worker {holder!r}"
                    )

    def _apply(self, op: Write) -> None:
        if isinstance(op, (InsertWorker, UpdateWorker)):
            self._put_worker(op.worker)
        else:
            self._put_assignment(op.assignment)

    def _put_worker(self, new: Worker) -> None:
        old = self._workers.get(new.id)
        self._index_worker(old, new)
        if self._journal is not None:
            self._journal.append(lambda: self._index_worker(new, old))

    def _index_worker(self, old: Worker | None, new: Worker | None) -> None:
        """Replace ``old`` with ``new`` (either may be ``None``) in the store and its indexes.
        An entry that does not change is left in place (most writes move only ``last_seen``)."""
        wid = (new or old).id  # type: ignore[union-attr]
        if new is None:
            assert old is not None
            _discard(self._by_ip, old.ip, wid)
            if old.hostname is not None:
                _discard(self._by_hostname, old.hostname, wid)
            if old.status is WorkerStatus.RUNNING:
                _discard(self._running_by_seen, _seen_bucket(old.last_seen), wid)
            del self._workers[wid]
            return
        self._workers[wid] = new
        if old is None or old.ip != new.ip:
            if old is not None:
                _discard(self._by_ip, old.ip, wid)
            self._by_ip.setdefault(new.ip, set()).add(wid)
        if old is None or old.hostname != new.hostname:
            if old is not None and old.hostname is not None:
                _discard(self._by_hostname, old.hostname, wid)
            if new.hostname is not None:
                self._by_hostname.setdefault(new.hostname, set()).add(wid)
        running = WorkerStatus.RUNNING
        was = None if old is None or old.status is not running else _seen_bucket(old.last_seen)
        key = None if new.status is not running else _seen_bucket(new.last_seen)
        if was != key:
            if was is not None:
                _discard(self._running_by_seen, was, wid)
            if key is not None:
                self._running_by_seen.setdefault(key, set()).add(wid)
                self._last_seen_bucket = max(self._last_seen_bucket, key)
        if key is not None:
            entry = (new.created_at, wid)
            if entry not in self._running_entries:
                bisect.insort(self._running_by_created, entry)
                self._running_entries.add(entry)

    def _put_assignment(self, new: Assignment) -> None:
        old = self._assignments.get(new.id)
        self._index_assignment(old, new)
        if self._journal is not None:
            self._journal.append(lambda: self._index_assignment(new, old))

    def _index_assignment(self, old: Assignment | None, new: Assignment | None) -> None:
        aid = (new or old).id  # type: ignore[union-attr]
        if old is not None and old.worker_id is not None:
            _discard(self._by_holder, old.worker_id, aid)
        if new is None:
            del self._assignments[aid]
            return
        self._assignments[aid] = new
        if new.worker_id is not None:
            self._by_holder.setdefault(new.worker_id, set()).add(aid)


_SEEN_BUCKET = 10
"""Seconds of last_seen per bucket of the running-by-last-seen index."""


def _seen_bucket(when: datetime) -> int:
    return int(when.timestamp()) // _SEEN_BUCKET


def _discard(index: dict[K, set[str]], key: K, value: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(value)
        if not bucket:
            del index[key]
