"""The storage protocol: what the rules read, and how a decision is written.

A repository satisfies :class:`WorkerRepository` structurally; it need not inherit from
anything.  The reads are *query-shaped*: each answers one question a rule asks, so an
implementation can serve it from an index instead of scanning the fleet.  The writes come as one
batch of :data:`Write` operations, applied all or nothing.

Contract (checked by ``workermatch.testing``):

* Query results are returned in any order; the engine sorts them itself.
* "Live" queries exclude workers whose ``stale`` flag is set or whose ``merged_into`` is set.
* :meth:`WorkerRepository.atomically` runs a function so that its reads and its ``write`` form
  one serialisable unit; it may run the function more than once (retry after a serialisation
  failure), so the function must have no other side effects.
* Failures surface as :class:`~workermatch.StorageError` with the driver's exception chained,
  and leave the store as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Protocol, TypeAlias, TypeVar, runtime_checkable

import attrs

from ._model import Assignment, Worker

__all__ = [
    "InsertAssignment",
    "InsertWorker",
    "UpdateAssignment",
    "UpdateWorker",
    "WorkerRepository",
    "Write",
]

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class InsertWorker:
    """Insert a new worker row (its id is new to the store)."""

    worker: Worker


@attrs.frozen(kw_only=True)
class UpdateWorker:
    """Replace an existing worker row with ``worker`` (same id)."""

    worker: Worker


@attrs.frozen(kw_only=True)
class InsertAssignment:
    """Insert a new assignment row (its id is new to the store)."""

    assignment: Assignment


@attrs.frozen(kw_only=True)
class UpdateAssignment:
    """Replace an existing assignment row with ``assignment`` (same id)."""

    assignment: Assignment


Write: TypeAlias = InsertWorker | UpdateWorker | InsertAssignment | UpdateAssignment
"""One write operation of a decision."""


@runtime_checkable
class WorkerRepository(Protocol):
    """Where workers and assignments live.  See the module docstring for the contract."""

    # -- reads the rules need ------------------------------------------------------------------

    def get_worker(self, worker_id: str) -> Worker | None:
        """The worker with this id, or ``None``."""
        ...

    def get_assignment(self, assignment_id: str) -> Assignment | None:
        """The assignment with this id, or ``None``."""
        ...

    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        """Unflagged, unmerged workers with this (canonical) IP and ``last_seen >= seen_since``."""
        ...

    def live_workers_by_hostname(self, hostname: str, seen_since: datetime) -> Sequence[Worker]:
        """Unflagged, unmerged workers with this hostname and ``last_seen >= seen_since``."""
        ...

    def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        """Unflagged, unmerged workers whose status is ``RUNNING``, with
        ``created_at >= created_since`` and ``last_seen >= seen_since``."""
        ...

    def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        """Unmerged workers whose status is ``RUNNING``, with this IP or (when given) this
        hostname, that are stale: flagged, or ``last_seen < seen_before``."""
        ...

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        """The ``RUNNING`` assignments held by any of these workers."""
        ...

    # -- reads for sweeps, dashboards and tests (never on a decision's path) ---------------------

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        """Workers whose ``stale`` flag is not set and ``last_seen < seen_before``."""
        ...

    def all_workers(self) -> Sequence[Worker]:
        """Every worker (any order)."""
        ...

    def all_assignments(self) -> Sequence[Assignment]:
        """Every assignment (any order)."""
        ...

    # -- writes ----------------------------------------------------------------------------------

    def new_worker_id(self) -> str:
        """A fresh worker id, never returned before by this repository."""
        ...

    def write(self, writes: Iterable[Write]) -> None:
        """Apply the writes in order, all or nothing."""
        ...

    def atomically(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which reads and writes through this repository) as one serialisable unit
        and return its result.  May call ``fn`` again after a serialisation failure."""
        ...
