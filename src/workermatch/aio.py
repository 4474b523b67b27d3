"""The asynchronous driver: the same decision, awaited.

The decision (``_decision``) yields the reads it needs and never performs them, so the code
that decides is the same under both drivers; this module only *awaits* each read instead of
calling it.  Use it from ``async def`` endpoints with an :class:`AsyncWorkerRepository`::

    import workermatch as wm
    from workermatch import aio

    repo = aio.AsyncInMemoryWorkerRepository()
    outcome = await aio.apply_event(wm.Event.heartbeat(ip, hostname=host), now, repo)

The functions mirror :func:`workermatch.match_worker`, :func:`~workermatch.plan`,
:func:`~workermatch.apply_event` and :func:`~workermatch.sweep`, with the same arguments,
errors and results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from ._decision import Ask, Decision, Outcome, choose, decide
from ._engine import _check_args, _check_match_args, _check_now, _check_policy
from ._errors import StorageError, WorkermatchError
from ._memory import InMemoryWorkerRepository
from ._model import Assignment, Identity, Worker, normalize_time
from ._observe import deciding
from ._policy import DEFAULT_POLICY, Policy
from ._protocol import UpdateWorker, Write

__all__ = [
    "AsyncInMemoryWorkerRepository",
    "AsyncWorkerRepository",
    "apply_event",
    "match_worker",
    "plan",
    "run",
    "sweep",
]

T = TypeVar("T")


@runtime_checkable
class AsyncWorkerRepository(Protocol):
    """:class:`~workermatch.WorkerRepository` with coroutine methods: the same questions,
    the same contract (``docs/stores.md``), awaited."""

    async def get_worker(self, worker_id: str) -> Worker | None: ...

    async def get_assignment(self, assignment_id: str) -> Assignment | None: ...

    async def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]: ...

    async def live_workers_by_hostname(
        self, hostname: str, seen_since: datetime
    ) -> Sequence[Worker]: ...

    async def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]: ...

    async def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]: ...

    async def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]: ...

    async def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]: ...

    async def all_workers(self) -> Sequence[Worker]: ...

    async def all_assignments(self) -> Sequence[Assignment]: ...

    def new_worker_id(self) -> str: ...

    async def write(self, writes: Iterable[Write]) -> None: ...

    async def atomically(self, fn: Callable[[], Awaitable[T]]) -> T: ...


async def run(computation: Ask[T], repo: AsyncWorkerRepository) -> T:
    """Await each query ``computation`` yields on ``repo``, and return its result."""
    answer: Any = None
    try:
        while True:
            query = computation.send(answer)
            answer = await getattr(repo, query.method)(*query.args)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _at(now: datetime | None, repo: object) -> datetime:
    if now is not None:
        return now
    value = repo.clock()  # type: ignore[attr-defined]
    if asyncio.iscoroutine(value):
        value = await value
    return normalize_time(value, field="clock")


async def match_worker(
    identity: Identity,
    now: datetime | None,
    repo: AsyncWorkerRepository,
    policy: Policy = DEFAULT_POLICY,
    *,
    kind: Any = None,
) -> Decision:
    """:func:`workermatch.match_worker`, awaited."""
    at, event_kind = _check_match_args(identity, now, repo, policy, kind)
    return await run(choose(identity, await _at(at, repo), policy, event_kind), repo)


async def plan(
    event: Any,
    now: datetime | None,
    repo: AsyncWorkerRepository,
    policy: Policy = DEFAULT_POLICY,
    *,
    create_assignments: bool = False,
    new_worker_id: Callable[[], str] | None = None,
) -> Outcome:
    """:func:`workermatch.plan`, awaited.  Writes nothing."""
    at = _check_args(event, now, policy, repo)
    computation = decide(
        event,
        await _at(at, repo),
        policy,
        create_assignments=create_assignments,
        new_worker_id=new_worker_id,
    )
    return await run(computation, repo)


async def apply_event(
    event: Any,
    now: datetime | None,
    repo: AsyncWorkerRepository,
    policy: Policy = DEFAULT_POLICY,
    *,
    create_assignments: bool = False,
) -> Outcome:
    """:func:`workermatch.apply_event`, awaited: decide and write in one atomic unit."""
    at = _check_args(event, now, policy, repo)

    async def unit() -> Outcome:
        outcome = await run(
            decide(
                event,
                await _at(at, repo),
                policy,
                create_assignments=create_assignments,
                new_worker_id=repo.new_worker_id,
            ),
            repo,
        )
        await repo.write(outcome.writes)
        return outcome

    with deciding(event) as watch:
        outcome = await _guarded(repo, unit)
        watch.report(outcome)
    return outcome


async def sweep(
    repo: AsyncWorkerRepository, now: datetime | None, policy: Policy = DEFAULT_POLICY
) -> tuple[str, ...]:
    """:func:`workermatch.sweep`, awaited."""
    at = _check_now(now, repo)
    _check_policy(policy)

    async def unit() -> tuple[str, ...]:
        when = await _at(at, repo)
        found = sorted(
            await repo.unflagged_workers_seen_before(when - policy.stale_after),
            key=lambda w: w.id,
        )
        await repo.write([UpdateWorker(worker=attrs.evolve(w, stale=True)) for w in found])
        return tuple(w.id for w in found)

    return await _guarded(repo, unit)


async def _guarded(repo: AsyncWorkerRepository, unit: Callable[[], Awaitable[T]]) -> T:
    try:
        return await repo.atomically(unit)
    except WorkermatchError:
        raise
    except Exception as exc:
        raise StorageError(f"the repository failed: {exc!r}") from exc


class AsyncInMemoryWorkerRepository:
    """An :class:`AsyncWorkerRepository` in process memory: the
    :class:`~workermatch.InMemoryWorkerRepository`'s rows and indexes behind an
    :class:`asyncio.Lock` that makes each unit atomic among the event loop's tasks (and its
    undo journal, so a unit that raises writes nothing).  Like the synchronous one, it belongs
    to one process."""

    def __init__(self, *, id_factory: Callable[[], str] | None = None) -> None:
        self.sync = InMemoryWorkerRepository(id_factory=id_factory)
        """The synchronous store holding the rows (for tests and dashboards in the same
        process)."""
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None

    def __repr__(self) -> str:
        return f"<AsyncInMemoryWorkerRepository {self.sync!r}>"

    async def get_worker(self, worker_id: str) -> Worker | None:
        return self.sync.get_worker(worker_id)

    async def get_assignment(self, assignment_id: str) -> Assignment | None:
        return self.sync.get_assignment(assignment_id)

    async def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        return self.sync.live_workers_by_ip(ip, seen_since)

    async def live_workers_by_hostname(
        self, hostname: str, seen_since: datetime
    ) -> Sequence[Worker]:
        return self.sync.live_workers_by_hostname(hostname, seen_since)

    async def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        return self.sync.recent_running_workers(created_since, seen_since)

    async def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        return self.sync.stale_running_workers(ip, hostname, seen_before)

    async def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        return self.sync.running_assignments_of(worker_ids)

    async def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        return self.sync.unflagged_workers_seen_before(seen_before)

    async def all_workers(self) -> Sequence[Worker]:
        return self.sync.all_workers()

    async def all_assignments(self) -> Sequence[Assignment]:
        return self.sync.all_assignments()

    def new_worker_id(self) -> str:
        return self.sync.new_worker_id()

    async def write(self, writes: Iterable[Write]) -> None:
        self.sync.write(writes)

    async def atomically(self, fn: Callable[[], Awaitable[T]]) -> T:
        task = asyncio.current_task()
        if self._holder is not None and self._holder is task:
            return await fn()  # nested unit of the same task
        async with self._lock:
            self._holder = task
            try:
                # The synchronous store's journal undoes the writes of a unit that raises.
                return await _journaled(self.sync, fn)
            finally:
                self._holder = None


async def _journaled(store: InMemoryWorkerRepository, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` with ``store``'s undo journal open: its writes are undone if it raises."""
    journal: list[Callable[[], None]] = []
    outer = store._journal
    store._journal = journal
    try:
        result = await fn()
    except BaseException:
        for undo in reversed(journal):
            undo()
        store._journal = outer
        raise
    store._journal = outer
    if outer is not None:
        outer.extend(journal)
    return result
