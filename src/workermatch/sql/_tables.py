"""SQLAlchemy tables, column types and indexes built from a :class:`TableMapping`."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .._model import Assignment, Worker
from .._protocol import InsertWorker, UpdateWorker, Write
from ._mapping import ASSIGNMENT_FIELDS, WORKER_FIELDS, TableMapping

__all__ = [
    "EXACT_COLLATIONS",
    "Tables",
    "UTCDateTime",
    "build_tables",
    "changed_fields",
    "exact_string",
    "id_type",
    "storable_id",
]

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


def _is_mysql(dialect: sa.Dialect) -> bool:
    return dialect.name in ("mysql", "mariadb")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; stored as naive UTC with milliseconds.

    PostgreSQL ``timestamp(3)``, MariaDB ``DATETIME(3)``, SQLite text in SQLAlchemy's fixed-width
    ISO form (which sorts and compares like the instants it holds).  ``UTCDateTime(timezone=True)``
    is PostgreSQL's ``timestamptz(3)``, bound as aware UTC values (so the session's time zone
    never matters); elsewhere the same as without.
    """

    impl = sa.DateTime
    cache_ok = True

    @property
    def aware(self) -> bool:
        return bool(getattr(self.impl, "timezone", False))

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return postgresql.TIMESTAMP(precision=3, timezone=self.aware)
        if _is_mysql(dialect):
            return dialect.type_descriptor(mysql.DATETIME(fsp=3))
        return dialect.type_descriptor(sa.DateTime())

    def raw_binder(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        """How the repository's precompiled statements pass a value of this column to the
        driver, when not as naive UTC."""
        if self.aware and dialect.name == "postgresql":
            return _aware_utc
        return None

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if self.aware and dialect.name == "postgresql":
            return _aware_utc(value)  # type: ignore[no-any-return]
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


def _aware_utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(_UTC)
    return value


class _AsText(FunctionElement[str]):
    """A column read as text: integer ids everywhere, ``uuid`` on PostgreSQL."""

    type = sa.String()
    name = "wm_as_text"
    inherit_cache = True


class _UuidAsText(_AsText):
    name = "wm_uuid_as_text"
    inherit_cache = True


class _InetAsText(_AsText):
    """An ``inet`` column read as the bare address (``host()``, without the ``/32``)."""

    name = "wm_inet_as_text"
    inherit_cache = True


def _arg(element: FunctionElement[Any], compiler: Any, **kw: Any) -> str:
    (arg,) = list(element.clauses)
    return str(compiler.process(arg, **kw))


@compiles(_AsText)
def _as_text(element: _AsText, compiler: Any, **kw: Any) -> str:
    return f"CAST({_arg(element, compiler, **kw)} AS TEXT)"


@compiles(_AsText, "mysql")
@compiles(_AsText, "mariadb")
def _as_text_mysql(element: _AsText, compiler: Any, **kw: Any) -> str:
    return f"CAST({_arg(element, compiler, **kw)} AS CHAR)"


@compiles(_UuidAsText)
@compiles(_InetAsText)
def _as_is(element: _AsText, compiler: Any, **kw: Any) -> str:
    return _arg(element, compiler, **kw)


@compiles(_UuidAsText, "postgresql")
def _uuid_as_text_pg(element: _AsText, compiler: Any, **kw: Any) -> str:
    return f"CAST({_arg(element, compiler, **kw)} AS TEXT)"


@compiles(_InetAsText, "postgresql")
def _inet_as_text_pg(element: _AsText, compiler: Any, **kw: Any) -> str:
    return f"host({_arg(element, compiler, **kw)})"


class _TextId(sa.types.TypeDecorator[str]):
    """An id column of text whose equality is exact (:func:`exact_string`)."""

    impl = sa.String
    cache_ok = True
    kind = "text"

    def __init__(self, length: int = 255) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if _is_mysql(dialect):
            return mysql.VARCHAR(
                self.length, charset="utf8mb4", collation=EXACT_COLLATIONS["mysql"]
            )
        return dialect.type_descriptor(sa.String(self.length))

    def raw_binder(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        return None

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else str(value)


class _UuidId(_TextId):
    """A ``uuid`` id column on PostgreSQL (text of 36 characters elsewhere), read back as
    text."""

    kind = "uuid"

    def __init__(self) -> None:
        super().__init__(36)

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return postgresql.UUID(as_uuid=False)
        return super().load_dialect_impl(dialect)

    def column_expression(self, column: Any) -> Any:
        return _UuidAsText(column)


class _IntegerId(_TextId):
    """An integer id column (``BIGINT``), read back as its decimal text."""

    kind = "integer"

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(sa.BigInteger())

    def raw_binder(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        return _to_int

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return _to_int(value)

    def column_expression(self, column: Any) -> Any:
        return _AsText(column)


def _to_int(value: Any) -> Any:
    return int(value) if isinstance(value, str) else value


def id_type(kind: str) -> _TextId:
    """The column type of an id of ``kind`` (``"text"``, ``"uuid"`` or ``"integer"``)."""
    if kind == "uuid":
        return _UuidId()
    if kind == "integer":
        return _IntegerId()
    return _TextId()


class _Inet(sa.types.TypeDecorator[str]):
    """PostgreSQL ``inet`` (text elsewhere), read back as the bare address."""

    impl = sa.String
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(45)

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return postgresql.INET()
        return dialect.type_descriptor(sa.String(45))

    def column_expression(self, column: Any) -> Any:
        return _InetAsText(column)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else str(value)


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")


def storable_id(kind: str, value: str) -> bool:
    """Whether the id ``value`` can be stored in an id column of ``kind`` and read back as the
    same text: any text in a text column; a UUID in its canonical form (lower case, with
    hyphens) in a ``uuid`` column; a decimal integer without leading zeros in a 64-bit integer
    column.  No row of such a column can have another id."""
    if kind == "uuid":
        try:
            return str(uuid.UUID(value)) == value
        except ValueError:
            return False
    if kind == "integer":
        return _INTEGER.fullmatch(value) is not None and -(2**63) <= int(value) < 2**63
    return True


def _default_type(value: object) -> Any:
    """The type of a column the library creates for a constant default value."""
    if isinstance(value, bool):
        return sa.Boolean()
    if isinstance(value, int):
        return sa.BigInteger()
    if isinstance(value, float):
        return sa.Float()
    return sa.String(255)


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
    equality must be exact (the ids, the references to ids, the hostname).

    ``folds_hostnames``: the hostname queries compare ``lower(hostname)`` (someone else's
    tables, whose rows may hold a hostname in any case, on a database with expression
    indexes), not the column itself (the library's own tables, where every hostname was stored
    lower case by the library)."""

    mapping: TableMapping
    metadata: sa.MetaData
    workers: sa.Table
    assignments: sa.Table
    w: dict[str, sa.Column[Any]]  # field -> column
    a: dict[str, sa.Column[Any]]
    indexes: tuple[sa.Index, ...]
    folds_hostnames: bool = False

    @property
    def hostname_key(self) -> sa.ColumnElement[Any]:
        """What the hostname queries compare with the (lower-case) hostname asked for."""
        column = self.w["hostname"]
        if self.folds_hostnames:
            return sa.func.lower(column, type_=column.type)
        return column

    def storable_worker_id(self, value: str) -> bool:
        return storable_id(self.mapping.worker_types["id"], value)

    def storable_assignment_id(self, value: str) -> bool:
        return storable_id(self.mapping.assignment_types["id"], value)

    def unstorable(self, op: Write) -> str | None:
        """Why ``op`` cannot be written (an id that its column cannot hold), or ``None``."""
        m = self.mapping
        ids: list[tuple[str, str, str | None]]
        if isinstance(op, (InsertWorker, UpdateWorker)):
            w = op.worker
            ids = [
                ("worker id", m.worker_types["id"], w.id),
                ("assignment id", m.assignment_types["id"], w.assignment_id),
                ("worker id", m.worker_types["id"], w.merged_into),
            ]
        else:
            a = op.assignment
            ids = [
                ("assignment id", m.assignment_types["id"], a.id),
                ("worker id", m.worker_types["id"], a.worker_id),
            ]
        for what, kind, value in ids:
            if value is not None and not storable_id(kind, value):
                return f"{what} {value!r} cannot be stored in its column, of type {kind}"
        return None

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


def _time(kind: str) -> UTCDateTime:
    return UTCDateTime(timezone=kind == "timestamptz")


def build_tables(mapping: TableMapping, dialect: str | None = None) -> Tables:
    """The SQLAlchemy view of ``mapping``'s tables (only the columns the library uses, plus the
    columns it fills: defaults and ``updated_at``), for the database ``dialect`` (``None``:
    any; it decides whether the hostname index can be an expression index)."""
    md = sa.MetaData(schema=mapping.schema)
    wc, ac = mapping.worker_columns, mapping.assignment_columns
    wt, at = mapping.worker_type, mapping.assignment_type
    worker_cols: dict[str, sa.Column[Any]] = {
        "id": sa.Column(wc["id"], id_type(wt("id")), primary_key=True),
        "ip": sa.Column(wc["ip"], _Inet() if wt("ip") == "inet" else sa.String(45), nullable=False),
        "hostname": sa.Column(wc["hostname"], exact_string(253), nullable=True),
        "created_at": sa.Column(wc["created_at"], _time(wt("created_at")), nullable=False),
        "last_seen": sa.Column(wc["last_seen"], _time(wt("last_seen")), nullable=False),
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
        "assignment_id": sa.Column(
            wc["assignment_id"], id_type(wt("assignment_id")), nullable=True
        ),
        "ended_at": sa.Column(wc["ended_at"], _time(wt("ended_at")), nullable=True),
        "merged_into": sa.Column(wc["merged_into"], id_type(wt("merged_into")), nullable=True),
        "hostname_seen": sa.Column(wc["hostname_seen"], _time(wt("hostname_seen")), nullable=True),
        # JSON text: the contested worker's candidates, and a held end (HeldEnd.to_json()).
        "contested": sa.Column(wc["contested"], sa.Text(), nullable=True),
        "held_end": sa.Column(wc["held_end"], sa.Text(), nullable=True),
    }
    assert tuple(worker_cols) == WORKER_FIELDS
    extra_w: list[sa.Column[Any]] = []
    if mapping.worker_updated_at is not None:
        extra_w.append(sa.Column(mapping.worker_updated_at, UTCDateTime(), nullable=True))
    extra_w += [sa.Column(c, _default_type(v)) for c, v in mapping.worker_defaults.items()]
    workers = sa.Table(mapping.workers_table, md, *worker_cols.values(), *extra_w)

    fk_target = (
        f"{mapping.schema}.{mapping.workers_table}.{wc['id']}"
        if mapping.schema
        else f"{mapping.workers_table}.{wc['id']}"
    )
    assignment_cols: dict[str, sa.Column[Any]] = {
        "id": sa.Column(ac["id"], id_type(at("id")), primary_key=True),
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
            id_type(at("worker_id")),
            sa.ForeignKey(fk_target, ondelete="SET NULL"),
            nullable=True,
        ),
        "started_at": sa.Column(ac["started_at"], _time(at("started_at")), nullable=True),
        "ended_at": sa.Column(ac["ended_at"], _time(at("ended_at")), nullable=True),
    }
    assert tuple(assignment_cols) == ASSIGNMENT_FIELDS
    extra_a: list[sa.Column[Any]] = []
    if mapping.assignment_updated_at is not None:
        extra_a.append(sa.Column(mapping.assignment_updated_at, UTCDateTime(), nullable=True))
    extra_a += [sa.Column(c, _default_type(v)) for c, v in mapping.assignment_defaults.items()]
    assignments = sa.Table(mapping.assignments_table, md, *assignment_cols.values(), *extra_a)

    p = mapping.prefix
    w, a = worker_cols, assignment_cols
    # Someone else's rows may hold a hostname in any case (the library stores its own lower
    # case): there the hostname queries compare lower(hostname), served by an expression index.
    # MariaDB and MySQL 5 have no expression indexes; there hostnames compare exactly.
    folds = not mapping.owns_tables and dialect not in ("mysql", "mariadb")
    hostname_index = (
        sa.Index(f"{p}_hostname_lower_idx", sa.func.lower(w["hostname"]))
        if folds
        else sa.Index(f"{p}_hostname_idx", w["hostname"])
    )
    # No index holds last_seen, the column every request updates: on PostgreSQL a heartbeat's
    # UPDATE then changes no indexed value and can be a heap-only (HOT) update, which writes no
    # index entry.  The few workers one IP or hostname has are filtered on last_seen after the
    # index lookup.
    indexes = (
        # Rule 2 (exact IP) and the transfer's "same IP".
        sa.Index(f"{p}_ip_idx", w["ip"]),
        # Rule 4 (hostname) and the transfer's "same hostname".
        hostname_index,
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
        folds_hostnames=folds,
    )


#: The fields an update never writes: the key, and when the worker was first seen.
_FIXED = frozenset({"id", "created_at"})


def changed_fields(
    old: Worker | Assignment | None, new: Worker | Assignment, fields: tuple[str, ...]
) -> tuple[str, ...]:
    """The fields of ``fields`` an update from ``old`` (the row as read in this unit, ``None``
    when unknown) to ``new`` must write: those that changed, never the id or ``created_at``.
    So an update leaves alone every column whose value the decision did not change: a
    hostname in another case than the library's, a time stored more precisely than it reads
    them, a ``created_at`` (first seen) it never changes."""
    mutable = tuple(f for f in fields if f not in _FIXED)
    if old is None:
        return mutable
    return tuple(f for f in mutable if getattr(old, f) != getattr(new, f))
