"""SQL repositories on SQLAlchemy 2: SQLite, PostgreSQL (psycopg 3) and MariaDB (PyMySQL), and
their asyncio twin :class:`AsyncSQLWorkerRepository` (aiosqlite, asyncpg, aiomysql).

Install the ``sql`` extra (SQLite), or ``postgresql`` or ``mysql`` for a server; for asyncio
``sqlite-async``, ``postgresql-async`` or ``mysql-async``: from a checkout,
``python -m pip install '.[sql]'``.  The package root never imports this module.

>>> from workermatch.sql import SQLWorkerRepository
>>> repo = SQLWorkerRepository.from_url("sqlite://")
>>> repo.create_schema()
>>> repo.is_empty()
True
>>> repo.close()

``docs/stores.md`` describes the schema, the mapping onto existing tables (with the real system's
Prisma schema as :data:`PRISMA_MAPPING`), and how each database keeps decisions race-safe.
"""

from __future__ import annotations

from .._retry import DEFAULT_RETRY, RetryPolicy
from ._async import AsyncSQLWorkerRepository, normalize_async_url
from ._ddl import schema_ddl
from ._mapping import DEFAULT_MAPPING, PRISMA_MAPPING, TableMapping
from ._repository import SQLITE_BUSY_TIMEOUT, SQLWorkerRepository, normalize_url
from ._tables import UTCDateTime

__all__ = [
    "DEFAULT_MAPPING",
    "DEFAULT_RETRY",
    "PRISMA_MAPPING",
    "SQLITE_BUSY_TIMEOUT",
    "AsyncSQLWorkerRepository",
    "RetryPolicy",
    "SQLWorkerRepository",
    "TableMapping",
    "UTCDateTime",
    "normalize_async_url",
    "normalize_url",
    "schema_ddl",
]
