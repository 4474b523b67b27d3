"""The example project's tests: its views, and the workermatch Django repository itself (the
conformance kit, transactions, the schema), on PostgreSQL when
``WORKERMATCH_TEST_POSTGRESQL_URL`` is set and on SQLite in memory.

Run them with the project's ``python -m pytest`` (pytest-django), or from this folder with
``python manage.py test fleet`` (Django's own runner).
"""

from __future__ import annotations

from django.db import connections

#: The reason of every skip for a missing PostgreSQL server; the suite turns such a skip into a
#: failure under WORKERMATCH_REQUIRE_SERVERS=1.
NO_SERVER = "PostgreSQL needs a database server: set WORKERMATCH_TEST_POSTGRESQL_URL"


def on_postgresql() -> bool:
    """Whether the ``default`` database is PostgreSQL."""
    return connections["default"].vendor == "postgresql"
