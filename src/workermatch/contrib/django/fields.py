"""The model fields and index that give the Django tables the SQL store's exact schema.

Django's own ``DateTimeField`` is ``timestamp with time zone`` on PostgreSQL and stores SQLite
text without trailing zeros; its ``CharField`` primary key gets a second, ``LIKE``-only index on
PostgreSQL; its ``Index`` refuses names longer than 30 characters (Oracle's limit).  The three
classes below keep the column types, the text form of times and the index names of
``workermatch.sql``'s default mapping, so that both stores can share one database.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.db import models

__all__ = ["IdField", "NamedIndex", "UTCDateTimeField"]

_UTC = timezone.utc


class IdField(models.CharField):  # type: ignore[type-arg]
    """A ``varchar`` id compared exactly (PostgreSQL's database collation is deterministic;
    SQLite's ``BINARY``), without the extra ``varchar_pattern_ops`` index Django adds beside a
    ``varchar`` primary key on PostgreSQL: ids are looked up by equality only.  (The type is
    spelled ``character varying``, which Django does not recognise as needing that index.)"""

    def db_type(self, connection: Any) -> str | None:
        if connection.vendor == "postgresql":
            return f"character varying({self.max_length})"
        return super().db_type(connection)


class UTCDateTimeField(models.DateTimeField):  # type: ignore[type-arg]
    """Aware UTC datetimes in and out, stored as the SQL store stores them.

    PostgreSQL: ``timestamp(3)`` (without time zone) holding UTC; values are bound as naive
    UTC, so comparisons use the column's indexes and never depend on the session's time zone.
    SQLite: the fixed-width text ``YYYY-MM-DD HH:MM:SS.ffffff`` (so text order is time order,
    and equal instants have equal text whichever store wrote them).  Values read back are
    aware UTC whatever ``USE_TZ`` says.
    """

    def db_type(self, connection: Any) -> str | None:
        if connection.vendor == "postgresql":
            return "timestamp(3) without time zone"
        return super().db_type(connection)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if not prepared:
            value = self.get_prep_value(value)
        if not isinstance(value, datetime):
            return super().get_db_prep_value(value, connection, prepared=True)
        if value.tzinfo is not None:
            value = value.astimezone(_UTC).replace(tzinfo=None)
        if connection.vendor == "sqlite":
            v = value
            return (
                f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:"
                f"{v.second:02d}.{v.microsecond:06d}"
            )
        return value

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=_UTC)  # type: ignore[no-any-return]
        return value.astimezone(_UTC)  # type: ignore[no-any-return]


class NamedIndex(models.Index):
    """A B-tree index whose name may be as long as PostgreSQL allows (63 characters): the SQL
    store's names, such as ``workermatch_workers_status_created_idx``."""

    max_name_length = 63
