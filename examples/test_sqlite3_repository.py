"""The conformance kit on the sqlite3 example adapter: the whole subclass is ten lines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlite3_repository import Sqlite3WorkerRepository, assignment_row, worker_row

from workermatch import Assignment, Worker
from workermatch.testing import RepositoryContract


class TestSqlite3Repository(RepositoryContract[Sqlite3WorkerRepository]):
    max_examples = 30  # a fresh SQLite database per example: keep CI quick

    def make_repository(self, *, id_factory: Callable[[], str] | None) -> Sqlite3WorkerRepository:
        return Sqlite3WorkerRepository(":memory:", id_factory=id_factory)

    def seed(
        self,
        repository: Sqlite3WorkerRepository,
        workers: Sequence[Worker],
        assignments: Sequence[Assignment],
    ) -> None:  # the back door: plain SQL on the connection, not the protocol's write()
        db = repository.connection
        db.executemany(
            f"INSERT INTO workers VALUES ({', '.join('?' * 13)})", map(worker_row, workers)
        )
        db.executemany(
            "INSERT INTO assignments VALUES (?, ?, ?, ?, ?)", map(assignment_row, assignments)
        )

    def close_repository(self, repository: Sqlite3WorkerRepository) -> None:
        repository.close()
