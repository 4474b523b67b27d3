"""Check an asyncio repository with the (synchronous) kit: :class:`BlockingRepository`.

The kit drives repositories with plain calls.  :class:`BlockingRepository` turns an
:class:`~workermatch.aio.AsyncWorkerRepository` into a :class:`~workermatch.WorkerRepository`:
each call runs the coroutine on an event loop that a :class:`LoopThread` runs in a thread of
its own, and waits for it.  A unit (``atomically(fn)``) runs inside the asyncio repository's
own ``atomically``: ``fn`` runs in a worker thread, and every call it makes on the facade is
sent back to the unit's task and awaited there, so the asyncio repository sees one task doing
the whole unit, as under :func:`workermatch.aio.apply_event`.  Two threads calling the facade
at once are two tasks on the loop, so the kit's concurrency check holds the asyncio
repository to the same contract.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from .._model import Assignment, Worker
from .._protocol import Write

__all__ = ["BlockingRepository", "LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread of its own.

    :meth:`run` runs a coroutine on it from any other thread and returns its result (or raises
    its exception).  Keep one for as long as the asyncio objects made on it live: a SQLAlchemy
    ``AsyncEngine``'s connections belong to the loop they were made on.  :meth:`close` (or
    leaving a ``with`` block) stops the loop.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.units = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="workermatch-unit")
        self._thread = threading.Thread(
            target=self._main, name="workermatch-event-loop", daemon=True
        )
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("LoopThread.run() called from the loop's own thread")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Stop the loop and its thread (idempotent)."""
        if self.loop.is_closed():
            return
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
        self.units.shutdown(wait=False)

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Channel:
    """The calls of one unit's thread, awaited by the unit's task."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._requests: asyncio.Queue[tuple[str, tuple[Any, ...], concurrent.futures.Future[Any]]]
        self._requests = asyncio.Queue()

    def call(self, name: str, args: tuple[Any, ...]) -> Any:
        """From the unit's thread: ask the unit's task to await ``name(*args)``."""
        reply: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._requests.put_nowait, (name, args, reply))
        return reply.result()

    async def serve(self, repository: Any, done: asyncio.Future[T]) -> T:
        """In the unit's task: await the thread's calls until it is ``done``."""
        while True:
            getter = asyncio.ensure_future(self._requests.get())
            waiting: set[asyncio.Future[Any]] = {getter, done}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return done.result()
            name, args, reply = getter.result()
            try:
                reply.set_result(await getattr(repository, name)(*args))
            except Exception as exc:
                reply.set_exception(exc)


class BlockingRepository:
    """A :class:`~workermatch.WorkerRepository` that runs each call of an asyncio
    ``repository`` on ``loop`` (a :class:`LoopThread`) and waits for it.

    Use it to run the conformance kit, or any synchronous code (``trace.replay``,
    :func:`workermatch.apply_event`), on an asyncio repository; ``repository`` is the asyncio
    repository itself.  ``clock()`` is there when the asyncio repository has one.
    """

    def __init__(self, repository: Any, loop: LoopThread) -> None:
        self.repository = repository
        self.loop = loop
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"<BlockingRepository {self.repository!r}>"

    def __getattr__(self, name: str) -> Any:
        if name == "clock" and callable(getattr(self.repository, "clock", None)):
            return lambda: self._call("clock")
        raise AttributeError(name)

    def _call(self, name: str, *args: Any) -> Any:
        channel: _Channel | None = getattr(self._local, "channel", None)
        if channel is not None:
            return channel.call(name, args)
        return self.loop.run(getattr(self.repository, name)(*args))

    def get_worker(self, worker_id: str) -> Worker | None:
        result: Worker | None = self._call("get_worker", worker_id)
        return result

    def get_assignment(self, assignment_id: str) -> Assignment | None:
        result: Assignment | None = self._call("get_assignment", assignment_id)
        return result

    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> Sequence[Worker]:
        result: Sequence[Worker] = self._call("live_workers_by_ip", ip, seen_since)
        return result

    def live_workers_by_hostname(self, hostname: str, seen_since: datetime) -> Sequence[Worker]:
        result: Sequence[Worker] = self._call("live_workers_by_hostname", hostname, seen_since)
        return result

    def recent_running_workers(
        self, created_since: datetime, seen_since: datetime
    ) -> Sequence[Worker]:
        result: Sequence[Worker] = self._call("recent_running_workers", created_since, seen_since)
        return result

    def stale_running_workers(
        self, ip: str, hostname: str | None, seen_before: datetime
    ) -> Sequence[Worker]:
        result: Sequence[Worker] = self._call("stale_running_workers", ip, hostname, seen_before)
        return result

    def running_assignments_of(self, worker_ids: Collection[str]) -> Sequence[Assignment]:
        result: Sequence[Assignment] = self._call("running_assignments_of", worker_ids)
        return result

    def unflagged_workers_seen_before(self, seen_before: datetime) -> Sequence[Worker]:
        result: Sequence[Worker] = self._call("unflagged_workers_seen_before", seen_before)
        return result

    def all_workers(self) -> Sequence[Worker]:
        result: Sequence[Worker] = self._call("all_workers")
        return result

    def all_assignments(self) -> Sequence[Assignment]:
        result: Sequence[Assignment] = self._call("all_assignments")
        return result

    def new_worker_id(self) -> str:
        result: str = self.repository.new_worker_id()
        return result

    def write(self, writes: Iterable[Write]) -> None:
        self._call("write", list(writes))

    def atomically(self, fn: Callable[[], T]) -> T:
        if getattr(self._local, "channel", None) is not None:
            return fn()  # a unit inside the unit this thread runs
        return self.loop.run(self._unit(fn))

    async def _unit(self, fn: Callable[[], T]) -> T:
        async def body() -> T:
            loop = asyncio.get_running_loop()
            channel = _Channel(loop)
            done = loop.run_in_executor(self.loop.units, self._in_thread, channel, fn)
            return await channel.serve(self.repository, done)

        result: T = await self.repository.atomically(body)
        return result

    def _in_thread(self, channel: _Channel, fn: Callable[[], T]) -> T:
        self._local.channel = channel
        try:
            return fn()
        finally:
            self._local.channel = None
