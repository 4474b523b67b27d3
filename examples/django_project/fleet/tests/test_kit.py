"""The conformance kit on the Django repository: SQLite in memory (always) and PostgreSQL.

The two classes show the two ways to use the mixin: a Django ``TransactionTestCase`` (which
``manage.py test`` runs, and pytest-django too) and a plain class marked for pytest-django.
"""

from __future__ import annotations

import pytest
from django.test import TransactionTestCase
from hypothesis import HealthCheck, settings

from workermatch.contrib.django.testing import DjangoRepositoryContract

from . import NO_SERVER, on_postgresql

# Each example empties the tables and each step is a few queries: fewer examples than the
# kit's defaults keep this file to about fifteen seconds (the SQL store's kit runs in tests/).
QUICK_MACHINE = settings(
    max_examples=10,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class KitOnSQLiteTests(DjangoRepositoryContract, TransactionTestCase):
    """SQLite in memory: Django's ``TransactionTestCase``, as ``manage.py test`` runs it."""

    databases = {"sqlite"}  # noqa: RUF012
    using = "sqlite"
    max_examples = 15
    state_machine_settings = QUICK_MACHINE


@pytest.mark.skipif(not on_postgresql(), reason=NO_SERVER)
@pytest.mark.django_db(transaction=True)
class TestKitOnPostgreSQL(DjangoRepositoryContract):
    """PostgreSQL: a plain class under pytest-django's ``django_db(transaction=True)``."""

    using = "default"
    max_examples = 10
    state_machine_settings = QUICK_MACHINE
