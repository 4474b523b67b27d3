"""The conformance kit on the Django repository: SQLite in memory (always) and PostgreSQL.

The two classes show the two ways to use the mixin: a Django ``TransactionTestCase`` (which
``manage.py test`` runs, and pytest-django too) and a plain class marked for pytest-django.
"""

from __future__ import annotations

import pytest
from django.test import TransactionTestCase

from workermatch.contrib.django.testing import DjangoRepositoryContract

from . import NO_SERVER, on_postgresql


class KitOnSQLiteTests(DjangoRepositoryContract, TransactionTestCase):
    """SQLite in memory: Django's ``TransactionTestCase``, as ``manage.py test`` runs it."""

    databases = {"sqlite"}  # noqa: RUF012
    using = "sqlite"
    max_examples = 25


@pytest.mark.skipif(not on_postgresql(), reason=NO_SERVER)
@pytest.mark.django_db(transaction=True)
class TestKitOnPostgreSQL(DjangoRepositoryContract):
    """PostgreSQL: a plain class under pytest-django's ``django_db(transaction=True)``."""

    using = "default"
    max_examples = 20
