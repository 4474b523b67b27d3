"""SQLAlchemy tables, column types and indexes built from a :class:`TableMapping`."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from ._mapping import ASSIGNMENT_FIELDS, WORKER_FIELDS, TableMapping

__all__ = ["EXACT_COLLATIONS", "Tables", "UTCDateTime", "build_tables", "exact_string"]

_UTC = timezone.utc

#: The collation of the library's id and hostname columns on MariaDB / MySQL: compares code
#: points, so ``a1`` and ``A1``, ``job-e`` and ``job-é``, ``job-s`` and ``job-ß`` differ (as in
#: Python, SQLite's ``BINARY`` and PostgreSQL's deterministic collations).
EXACT_COLLATIONS = {"mysql": "utf8mb4_bin", "mariadb": "utf8mb4_bin"}


def exact_string(length: int) -> Any:
    """A ``VARCHAR(length)`` whose equality is exact (code point for code point) on every
    database: ``utf8mb4_bin`` on MariaDB / MySQL, whose default collations ignore case and
    accents; the default elsewhere (SQLite ``BINARY``, PostgreSQL's database collation, which
    is always deterministic)."""
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation=EXACT_COLLATIONS["mysql"]),
        "mysql",
        "mariadb",
    )


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; stored as naive UTC with milliseconds.

    PostgreSQL ``timestamp(3)``, MariaDB ``DATETIME(3)``, SQLite text in SQLAlchemy's fixed-width
    ISO form (which sorts and compares like the instants it holds).  A column of the user's
    that holds ``timestamptz`` values works too: aware values read back are converted to UTC.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return postgresql.TIMESTAMP(precision=3)
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=3))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(_UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # pragma: no cover - SQLite columns of foreign type
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=_UTC)  # type: ignore[no-any-return]
        return value.astimezone(_UTC)  # type: ignore[no-any-return]


def _status_type(type_name: str | None, values: list[str], schema: str | None) -> Any:
    base: Any = sa.String(32)
    if type_name is not None:
        base = base.with_variant(
            postgresql.ENUM(*values, name=type_name, schema=schema, create_type=False),
            "postgresql",
        )
    return base


@attrs.frozen
class Tables:
    """The two tables, and the library's indexes on them.  ``exact`` lists the columns whose
    equality must be exact (the ids, the references to ids, the hostname)."""

    mapping: TableMapping
    metadata: sa.MetaData
    workers: sa.Table
    assignments: sa.Table
    w: dict[str, sa.Column[Any]]  # field -> column
    a: dict[str, sa.Column[Any]]
    indexes: tuple[sa.Index, ...]

    @property
    def exact(self) -> tuple[sa.Column[Any], ...]:
        w, a = self.w, self.a
        return (
            w["id"],
            w["hostname"],
            w["assignment_id"],
            w["merged_into"],
            a["id"],
            a["worker_id"],
        )


def build_tables(mapping: TableMapping) -> Tables:
    """The SQLAlchemy view of ``mapping``'s tables (only the columns the library uses, plus the
    columns it fills: defaults and ``updated_at``)."""
    md = sa.MetaData(schema=mapping.schema)
    wc, ac = mapping.worker_columns, mapping.assignment_columns
    id_type = exact_string(255)
    worker_cols: dict[str, sa.Column[Any]] = {
        "id": sa.Column(wc["id"], id_type, primary_key=True),
        "ip": sa.Column(wc["ip"], sa.String(45), nullable=False),
        "hostname": sa.Column(wc["hostname"], exact_string(253), nullable=True),
        "created_at": sa.Column(wc["created_at"], UTCDateTime(), nullable=False),
        "last_seen": sa.Column(wc["last_seen"], UTCDateTime(), nullable=False),
        "status": sa.Column(
            wc["status"],
            _status_type(
                mapping.worker_status_type,
                list(mapping.worker_statuses.values()),
                mapping.schema,
            ),
            nullable=False,
        ),
        "stale": sa.Column(wc["stale"], sa.Boolean(), nullable=False),
        "assignment_id": sa.Column(wc["assignment_id"], id_type, nullable=True),
        "ended_at": sa.Column(wc["ended_at"], UTCDateTime(), nullable=True),
        "merged_into": sa.Column(wc["merged_into"], id_type, nullable=True),
        "hostname_seen": sa.Column(wc["hostname_seen"], UTCDateTime(), nullable=True),
        # JSON text: the contested worker's candidates, and a held end (HeldEnd.to_json()).
        "contested": sa.Column(wc["contested"], sa.Text(), nullable=True),
        "held_end": sa.Column(wc["held_end"], sa.Text(), nullable=True),
    }
    assert tuple(worker_cols) == WORKER_FIELDS
    extra_w: list[sa.Column[Any]] = []
    if mapping.worker_updated_at is not None:
        extra_w.append(sa.Column(mapping.worker_updated_at, UTCDateTime(), nullable=True))
    extra_w += [sa.Column(c, sa.String(255)) for c in mapping.worker_defaults]
    workers = sa.Table(mapping.workers_table, md, *worker_cols.values(), *extra_w)

    fk_target = (
        f"{mapping.schema}.{mapping.workers_table}.{wc['id']}"
        if mapping.schema
        else f"{mapping.workers_table}.{wc['id']}"
    )
    assignment_cols: dict[str, sa.Column[Any]] = {
        "id": sa.Column(ac["id"], id_type, primary_key=True),
        "status": sa.Column(
            ac["status"],
            _status_type(
                mapping.assignment_status_type,
                list(mapping.assignment_statuses.values()),
                mapping.schema,
            ),
            nullable=False,
        ),
        "worker_id": sa.Column(
            ac["worker_id"],
            id_type,
            sa.ForeignKey(fk_target, ondelete="SET NULL"),
            nullable=True,
        ),
        "started_at": sa.Column(ac["started_at"], UTCDateTime(), nullable=True),
        "ended_at": sa.Column(ac["ended_at"], UTCDateTime(), nullable=True),
    }
    assert tuple(assignment_cols) == ASSIGNMENT_FIELDS
    extra_a: list[sa.Column[Any]] = []
    if mapping.assignment_updated_at is not None:
        extra_a.append(sa.Column(mapping.assignment_updated_at, UTCDateTime(), nullable=True))
    extra_a += [
        sa.Column(c, sa.Integer() if isinstance(v, int) else sa.String(255))
        for c, v in mapping.assignment_defaults.items()
    ]
    assignments = sa.Table(mapping.assignments_table, md, *assignment_cols.values(), *extra_a)

    p = mapping.prefix
    w, a = worker_cols, assignment_cols
    # No index holds last_seen, the column every request updates: on PostgreSQL a heartbeat's
    # UPDATE then changes no indexed value and can be a heap-only (HOT) update, which writes no
    # index entry.  The few workers one IP or hostname has are filtered on last_seen after the
    # index lookup.
    indexes = (
        # Rule 2 (exact IP) and the transfer's "same IP".
        sa.Index(f"{p}_ip_idx", w["ip"]),
        # Rule 4 (hostname) and the transfer's "same hostname".
        sa.Index(f"{p}_hostname_idx", w["hostname"]),
        # Rule 3 (recent workers holding a RUNNING assignment).
        sa.Index(f"{p}_status_created_idx", w["status"], w["created_at"]),
        # running_assignments_of: the RUNNING assignments a worker holds.
        sa.Index(f"{p}_asg_holder_idx", a["worker_id"], a["status"]),
    )
    return Tables(
        mapping=mapping,
        metadata=md,
        workers=workers,
        assignments=assignments,
        w=worker_cols,
        a=assignment_cols,
        indexes=indexes,
    )
