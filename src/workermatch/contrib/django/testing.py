"""The conformance kit on the Django repository, for pytest-django and ``manage.py test``.

:class:`DjangoRepositoryContract` is :class:`workermatch.testing.RepositoryContract` with its
hooks written for :class:`~workermatch.contrib.django.DjangoWorkerRepository`; mix it into a
test class that may write to the database *outside* a test transaction::

    # pytest-django
    @pytest.mark.django_db(transaction=True)
    class TestWorkermatchStore(DjangoRepositoryContract):
        max_examples = 20

    # manage.py test (or pytest-django, which runs Django's test cases too)
    class WorkermatchStoreTests(DjangoRepositoryContract, TransactionTestCase):
        max_examples = 20

Why transactional tests: the kit checks that two threads deciding at once make one worker,
and each thread has its own connection, which cannot see a test transaction's rows; and the
repository runs each unit in its own transaction, as in production, only outside an
``atomic()`` block.

Hypothesis runs many examples inside one Django test, and Django cleans the database only
between tests: :meth:`DjangoRepositoryContract.make_repository`, which the kit calls once per
example, deletes every row of the two workermatch tables first (:func:`empty_tables`), so each
example starts from empty tables.  Rows of those tables that your own fixtures added are
deleted too; other tables are not touched.

Install the ``django`` and ``testing`` extras (from a checkout,
``python -m pip install '.[django,testing]'``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from django.db import DEFAULT_DB_ALIAS, connections

from ..._model import Assignment, Worker
from ...testing import RepositoryContract
from . import models
from .repository import DjangoWorkerRepository

__all__ = ["DjangoRepositoryContract", "close_thread_connection", "empty_tables"]


def empty_tables(using: str = DEFAULT_DB_ALIAS) -> None:
    """Delete every row of the workermatch tables of database ``using`` (assignments first).

    Call it between Hypothesis examples of your own tests that go through the repository:
    Django empties the database between tests, not between the examples of one test.
    """
    DjangoWorkerRepository(using).reset()


def close_thread_connection(using: str = DEFAULT_DB_ALIAS) -> None:
    """Close this thread's connection to database ``using``: call it at the end of a thread
    you started in a test (Django opens one connection per thread and closes only the test
    thread's).  An in-memory SQLite test database, which Django never closes, is closed too:
    the test thread's own connection keeps it alive."""
    connection: Any = connections[using]
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        raw = connection.connection
        if raw is not None:
            raw.close()
            connection.connection = None
        return
    connection.close()


class DjangoRepositoryContract(RepositoryContract[DjangoWorkerRepository]):
    """The conformance kit for :class:`~workermatch.contrib.django.DjangoWorkerRepository`.

    ``using`` names the database alias the repository runs on (``"default"``); with Django's
    test cases, list it in ``databases`` too.  ``max_examples`` caps Hypothesis examples
    (each empties the tables: 20 keeps a server database quick).
    """

    using: ClassVar[str] = DEFAULT_DB_ALIAS

    def make_repository(self, *, id_factory: Callable[[], str] | None) -> DjangoWorkerRepository:
        """An empty repository on ``using``: every row of the two tables is deleted first (the
        per-example cleanup)."""
        empty_tables(self.using)
        return DjangoWorkerRepository(self.using, id_factory=id_factory)

    def seed(
        self,
        repository: DjangoWorkerRepository,
        workers: Sequence[Worker],
        assignments: Sequence[Assignment],
    ) -> None:
        """The back door: the rows through the models' ``bulk_create``, not the repository."""
        models.Worker.objects.using(repository.using).bulk_create(
            [
                models.Worker(
                    id=w.id,
                    ip=w.ip,
                    hostname=w.hostname,
                    created_at=w.created_at,
                    last_seen=w.last_seen,
                    status=w.status.value,
                    stale=w.stale,
                    assignment_id=w.assignment_id,
                    ended_at=w.ended_at,
                    merged_into=w.merged_into,
                    hostname_seen=w.hostname_seen,
                    contested=json.dumps(list(w.contested)) if w.contested else None,
                    held_end=None if w.held_end is None else w.held_end.to_json(),
                )
                for w in workers
            ]
        )
        models.Assignment.objects.using(repository.using).bulk_create(
            [
                models.Assignment(
                    id=a.id,
                    status=a.status.value,
                    worker_id=a.worker_id,
                    started_at=a.started_at,
                    ended_at=a.ended_at,
                )
                for a in assignments
            ]
        )

    def end_thread(self, repository: DjangoWorkerRepository) -> None:
        """Close the connection the kit's thread opened."""
        close_thread_connection(repository.using)
