"""Dogfooding: the conformance kit on every repository the project ships.

Each store, the in-memory one included, is compared with the kit's reference,
:class:`workermatch.testing.ReferenceRepository` (a scan of every row), never with itself.

The stores come from the ``store_factory`` fixture (``tests/_stores.py``): memory, SQLite, and,
when their URLs are set, PostgreSQL, MariaDB and the real system's Prisma tables; and the
asyncio SQL stores (aiosqlite, asyncpg, aiomysql) behind the kit's ``BlockingRepository``.  The
back door writes rows with SQLAlchemy Core on the repository's own engine and tables, never
through the repository's ``write``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from _stores import ASYNC_STORE_IDS, StoreFactory
from workermatch import Assignment, InMemoryWorkerRepository, Worker, WorkerRepository
from workermatch.testing import BlockingRepository, RepositoryContract


def seed_sql(repository: Any, workers: Sequence[Worker], assignments: Sequence[Assignment]) -> None:
    """Insert rows with SQLAlchemy Core on the repository's engine and mapped tables (an
    asyncio store's behind a ``BlockingRepository``: on its event loop)."""
    if isinstance(repository, BlockingRepository):
        store = repository.repository
        statements = _seed_statements(store, workers, assignments)

        async def insert() -> None:
            async with store.engine.begin() as conn:
                for stmt in statements:
                    await conn.execute(stmt)

        repository.loop.run(insert())
        return
    with repository.engine.begin() as conn:
        for stmt in _seed_statements(repository, workers, assignments):
            conn.execute(stmt)


def _seed_statements(
    repository: Any, workers: Sequence[Worker], assignments: Sequence[Assignment]
) -> list[Any]:
    import sqlalchemy as sa

    out: list[Any] = []
    t, m = repository.tables, repository.mapping
    wstatus, astatus = dict(m.worker_statuses), dict(m.assignment_statuses)
    stamp = datetime(2025, 1, 1, tzinfo=timezone.utc)
    for w in workers:
        values: dict[str, Any] = {
            t.w["id"].name: w.id,
            t.w["ip"].name: w.ip,
            t.w["hostname"].name: w.hostname,
            t.w["created_at"].name: w.created_at,
            t.w["last_seen"].name: w.last_seen,
            t.w["status"].name: wstatus[w.status],
            t.w["stale"].name: w.stale,
            t.w["assignment_id"].name: w.assignment_id,
            t.w["ended_at"].name: w.ended_at,
            t.w["merged_into"].name: w.merged_into,
            **m.worker_defaults,
        }
        if m.worker_updated_at is not None:
            values[m.worker_updated_at] = stamp
        out.append(sa.insert(t.workers).values(values))
    for a in assignments:
        values = {
            t.a["id"].name: a.id,
            t.a["status"].name: astatus[a.status],
            t.a["worker_id"].name: a.worker_id,
            t.a["started_at"].name: a.started_at,
            t.a["ended_at"].name: a.ended_at,
            **m.assignment_defaults,
        }
        if m.assignment_updated_at is not None:
            values[m.assignment_updated_at] = stamp
        out.append(sa.insert(t.assignments).values(values))
    return out


EXAMPLES_PER_STORE = {
    "memory": 30,
    "sqlite": 25,
    "postgresql": 20,
    "mysql": 20,
    "prisma": 20,
    "sqlite-async": 10,
    "postgresql-async": 10,
    "mysql-async": 10,
}


class TestShippedRepositories(RepositoryContract[WorkerRepository]):
    """The whole kit, once per shipped store."""

    _factory: StoreFactory
    max_examples: int | None

    @pytest.fixture(autouse=True)
    def _store(self, store_factory: StoreFactory, request: pytest.FixtureRequest) -> None:
        self._factory = store_factory
        # A fresh SQL store per example costs milliseconds (a file, or emptying tables on a
        # server): the SQL stores run fewer examples.  The guarantees' properties run the
        # reference at the profile's count; here a few dozen examples per method suffice.
        store = request.node.callspec.params["store_factory"]
        self.max_examples = EXAMPLES_PER_STORE.get(store)

    def make_repository(self, *, id_factory: Callable[[], str] | None) -> WorkerRepository:
        return self._factory(id_factory=id_factory)

    def seed(
        self,
        repository: WorkerRepository,
        workers: Sequence[Worker],
        assignments: Sequence[Assignment],
    ) -> None:
        if isinstance(repository, InMemoryWorkerRepository):
            for w in workers:
                repository._index_worker(None, w)
            for a in assignments:
                repository._index_assignment(None, a)
        else:
            seed_sql(repository, workers, assignments)

    def close_repository(self, repository: WorkerRepository) -> None:
        close = getattr(repository, "close", None)
        if close is not None:
            close()


@pytest.mark.parametrize("store_factory", ASYNC_STORE_IDS, indirect=True)
class TestAsyncSQLRepositories(TestShippedRepositories):
    """The whole kit on the asyncio SQL stores, through the kit's ``BlockingRepository``: every
    call awaited on the session's event loop, each unit one task.  The state machine runs
    fewer, shorter runs than on the synchronous stores (the same statements decide)."""

    state_machine_settings = settings(
        max_examples=10,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
