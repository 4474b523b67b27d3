"""Every repository the project ships, as one pytest fixture: ``store_factory``.

``store_factory`` is parametrised over the store ids :data:`STORE_IDS`; it yields a callable
``factory(id_factory=None) -> WorkerRepository`` that returns an *empty* repository each call.

* ``memory``: a new :class:`~workermatch.InMemoryWorkerRepository` each call.
* ``sqlite``: a new SQLite file in the test's temporary directory each call.
* ``postgresql`` / ``mysql``: the library's own tables on the server named by
  ``WORKERMATCH_TEST_POSTGRESQL_URL`` / ``WORKERMATCH_TEST_MYSQL_URL``, under a per-process
  table prefix (so that concurrent test runs on one server never meet); each call empties them.
* ``prisma``: the real system's Prisma tables, created from their own DDL (:data:`PRISMA_DDL`)
  in a per-process PostgreSQL schema, used through ``PRISMA_MAPPING``; each call empties them.
* ``sqlite-async``, ``postgresql-async``, ``mysql-async`` (:data:`ASYNC_STORE_IDS`, only where a
  test asks for them): :class:`~workermatch.sql.AsyncSQLWorkerRepository` on aiosqlite,
  asyncpg and aiomysql, behind a :class:`~workermatch.testing.BlockingRepository` on the
  session's event loop thread (its ``repository`` is the asyncio store, its ``loop`` the
  thread); the server ones use their own per-process table prefix.

On a server store, two calls within one test share the same tables: the second call empties
the store the first one returned.  Without its URL a server store skips, with a reason that
contains ``needs a database server``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

import workermatch as wm

STORE_IDS = ("memory", "sqlite", "postgresql", "mysql", "prisma")
SERVER_STORES = {
    "postgresql": "WORKERMATCH_TEST_POSTGRESQL_URL",
    "mysql": "WORKERMATCH_TEST_MYSQL_URL",
    "prisma": "WORKERMATCH_TEST_POSTGRESQL_URL",
}
SQL_STORE_IDS = ("sqlite", "postgresql", "mysql", "prisma")
ASYNC_STORE_IDS = ("sqlite-async", "postgresql-async", "mysql-async")
SERVER_STORES.update(
    {
        "postgresql-async": "WORKERMATCH_TEST_POSTGRESQL_URL",
        "mysql-async": "WORKERMATCH_TEST_MYSQL_URL",
    }
)

#: The real system's tables as its Prisma migrations would create them (the dashboard behind
#: the design note); run inside the schema given by ``search_path``.
PRISMA_DDL = """
CREATE TYPE "WorkerStatus" AS ENUM ('IDLE', 'RUNNING', 'ERROR', 'OFFLINE');
CREATE TYPE "AssignmentStatus" AS ENUM ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED');
CREATE TABLE "workers" (
    "id" TEXT NOT NULL,
    "ipAddress" TEXT NOT NULL,
    "hostname" TEXT,
    "status" "WorkerStatus" NOT NULL DEFAULT 'IDLE',
    "lastSeen" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "isStale" BOOLEAN NOT NULL DEFAULT false,
    "sessionId" TEXT,
    "machineLabel" TEXT,
    "gpuName" TEXT,
    "cpuCores" INTEGER,
    "totalRamGB" DOUBLE PRECISION,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "workers_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "workers_sessionId_key" ON "workers"("sessionId");
CREATE TABLE "assignments" (
    "id" TEXT NOT NULL,
    "workerId" TEXT,
    "superStudyId" TEXT NOT NULL,
    "status" "AssignmentStatus" NOT NULL DEFAULT 'PENDING',
    "index" INTEGER NOT NULL,
    "progress" DOUBLE PRECISION NOT NULL DEFAULT 0,
    "startedAt" TIMESTAMP(3),
    "completedAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "payload" JSONB,
    CONSTRAINT "assignments_pkey" PRIMARY KEY ("id")
);
ALTER TABLE "assignments" ADD CONSTRAINT "assignments_workerId_fkey"
    FOREIGN KEY ("workerId") REFERENCES "workers"("id") ON DELETE CASCADE ON UPDATE CASCADE;
CREATE TABLE "gui_state" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "workerId" TEXT NOT NULL REFERENCES "workers"("id") ON DELETE CASCADE ON UPDATE CASCADE,
    "state" JSONB,
    "updatedAt" TIMESTAMP(3) NOT NULL
);
CREATE TABLE "progress_events" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "workerId" TEXT NOT NULL REFERENCES "workers"("id") ON DELETE CASCADE ON UPDATE CASCADE,
    "message" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);
"""


State = tuple[list[wm.Worker], list[wm.Assignment]]


def state(repo: wm.WorkerRepository) -> State:
    """Every row of ``repo``, workers then assignments, each sorted by id: compare two stores, or
    one store before and after, with ``==``."""
    return (
        sorted(repo.all_workers(), key=lambda w: w.id),
        sorted(repo.all_assignments(), key=lambda a: a.id),
    )


class StoreFactory(Protocol):
    def __call__(self, id_factory: Callable[[], str] | None = None) -> wm.WorkerRepository: ...


def process_prefix() -> str:
    """A table prefix private to this test process."""
    return f"wmt{os.getpid()}_"


def server_url(store_id: str) -> str | None:
    """The URL of the server a server store uses, or ``None`` when it is not configured."""
    return os.environ.get(SERVER_STORES[store_id]) or None


def skip_without_server(store_id: str) -> str:
    url = server_url(store_id)
    if url is None:
        pytest.skip(f"store {store_id!r} needs a database server: set {SERVER_STORES[store_id]}")
    return url


def prisma_schema_name() -> str:
    return f"wmt{os.getpid()}_prisma"


def create_prisma_tables(engine: Any, schema: str) -> None:
    """Create the real system's tables (``PRISMA_DDL``) in a fresh PostgreSQL ``schema``."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        conn.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')
        for statement in PRISMA_DDL.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)


class _ServerStores:
    """Per-process engines and tables on the configured servers, made on first use."""

    def __init__(self, loop: Any) -> None:
        self.repos: dict[str, Any] = {}
        self.loop = loop

    def template(self, store_id: str) -> Any:
        from workermatch.sql import DEFAULT_MAPPING, PRISMA_MAPPING, SQLWorkerRepository

        if store_id in self.repos:
            return self.repos[store_id]
        url = skip_without_server(store_id)
        repo: Any
        if store_id in ASYNC_STORE_IDS:
            from workermatch.sql import AsyncSQLWorkerRepository

            mapping = DEFAULT_MAPPING.with_table_prefix(f"{process_prefix()}a_")
            repo = AsyncSQLWorkerRepository.from_url(url, mapping=mapping)
            self.loop.run(repo.drop_schema())
            self.loop.run(repo.create_schema())
        elif store_id == "prisma":
            schema = prisma_schema_name()
            repo = SQLWorkerRepository.from_url(url, mapping=PRISMA_MAPPING.evolve(schema=schema))
            create_prisma_tables(repo.engine, schema)
        else:
            mapping = DEFAULT_MAPPING.with_table_prefix(process_prefix())
            repo = SQLWorkerRepository.from_url(url, mapping=mapping)
            repo.drop_schema()
        if store_id not in ASYNC_STORE_IDS:
            repo.create_schema()
        self.repos[store_id] = repo
        return repo

    def close(self) -> None:
        for store_id, repo in self.repos.items():
            if store_id in ASYNC_STORE_IDS:
                try:
                    self.loop.run(repo.drop_schema())
                finally:
                    self.loop.run(repo.close())
                continue
            try:
                if store_id == "prisma":
                    with repo.engine.begin() as conn:
                        conn.exec_driver_sql(
                            f'DROP SCHEMA IF EXISTS "{repo.mapping.schema}" CASCADE'
                        )
                else:
                    repo.drop_schema()
            finally:
                repo.close()
        self.repos.clear()


@pytest.fixture(scope="session")
def event_loop_thread() -> Iterator[Any]:
    """The session's :class:`~workermatch.testing.LoopThread`: the asyncio stores live on it."""
    pytest.importorskip("hypothesis")
    from workermatch.testing import LoopThread

    with LoopThread() as loop:
        yield loop


@pytest.fixture(scope="session")
def _server_stores(event_loop_thread: Any) -> Iterator[_ServerStores]:
    stores = _ServerStores(event_loop_thread)
    yield stores
    stores.close()


@pytest.fixture(params=STORE_IDS)
def store_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreFactory]:
    """A callable returning an empty repository of the parametrised store each call."""
    store_id: str = request.param
    closers: list[Callable[[], None]] = []

    if store_id == "memory":

        def memory(id_factory: Callable[[], str] | None = None) -> wm.WorkerRepository:
            return wm.InMemoryWorkerRepository(id_factory=id_factory)

        yield memory
        return

    pytest.importorskip("sqlalchemy")
    from workermatch.sql import SQLWorkerRepository

    if store_id in ASYNC_STORE_IDS:
        yield from _async_store_factory(request, tmp_path_factory, store_id)
        return

    if store_id == "sqlite":
        directory = tmp_path_factory.mktemp("sqlite")
        counter = iter(range(1, 2**31))

        def sqlite(id_factory: Callable[[], str] | None = None) -> wm.WorkerRepository:
            path = directory / f"store{next(counter)}.db"
            repo = SQLWorkerRepository.from_url(f"sqlite:///{path}", id_factory=id_factory)
            repo.create_schema()
            closers.append(repo.close)
            return repo

        yield sqlite
    else:
        template = request.getfixturevalue("_server_stores").template(store_id)

        def server(id_factory: Callable[[], str] | None = None) -> wm.WorkerRepository:
            repo = SQLWorkerRepository(
                template.engine, mapping=template.mapping, id_factory=id_factory
            )
            repo.reset()
            return repo

        yield server
    for close in closers:
        close()


def _async_store_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, store_id: str
) -> Iterator[StoreFactory]:
    """``store_factory`` for an asyncio store: a BlockingRepository around it."""
    pytest.importorskip("greenlet")
    from workermatch.sql import AsyncSQLWorkerRepository
    from workermatch.testing import BlockingRepository

    loop = request.getfixturevalue("event_loop_thread")
    closers: list[Any] = []
    if store_id == "sqlite-async":
        directory = tmp_path_factory.mktemp("sqlite-async")
        counter = iter(range(1, 2**31))

        async def make(id_factory: Callable[[], str] | None) -> AsyncSQLWorkerRepository:
            path = directory / f"store{next(counter)}.db"
            repo = AsyncSQLWorkerRepository.from_url(f"sqlite:///{path}", id_factory=id_factory)
            await repo.create_schema()
            closers.append(repo.close)
            return repo

    else:
        template = request.getfixturevalue("_server_stores").template(store_id)

        async def make(id_factory: Callable[[], str] | None) -> AsyncSQLWorkerRepository:
            repo = AsyncSQLWorkerRepository(
                template.engine, mapping=template.mapping, id_factory=id_factory
            )
            await repo.reset()
            return repo

    def factory(id_factory: Callable[[], str] | None = None) -> wm.WorkerRepository:
        return BlockingRepository(loop.run(make(id_factory)), loop)

    yield factory
    for close in closers:
        loop.run(close())
