"""Where the library's fields live in SQL: table names, column names and status values.

A :class:`TableMapping` is plain data.  :data:`DEFAULT_MAPPING` describes the library's own
tables (``workermatch_workers``, ``workermatch_assignments``); :data:`PRISMA_MAPPING` describes
the tables of the real system behind the design note (``workers``, ``assignments``, camelCase
columns, PostgreSQL enum types), plus three nullable columns the library adds to ``workers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from .._errors import InvalidInput
from .._model import AssignmentStatus, WorkerStatus

__all__ = ["DEFAULT_MAPPING", "PRISMA_MAPPING", "TableMapping"]

WORKER_FIELDS = (
    "id",
    "ip",
    "hostname",
    "created_at",
    "last_seen",
    "status",
    "stale",
    "assignment_id",
    "ended_at",
    "merged_into",
    "hostname_seen",
    "contested",
    "held_end",
)
#: The nullable worker fields a mapping of someone else's tables can have the library add.
ADDABLE_WORKER_FIELDS = (
    "hostname",
    "assignment_id",
    "ended_at",
    "merged_into",
    "hostname_seen",
    "contested",
    "held_end",
)
ASSIGNMENT_FIELDS = ("id", "status", "worker_id", "started_at", "ended_at")

#: The column types a mapping can choose, per kind of field (the first is the default).
ID_TYPES = ("text", "uuid", "integer")
IP_TYPES = ("text", "inet")
TIME_TYPES = ("timestamp", "timestamptz")
#: The fields whose type a mapping can choose.  References follow what they refer to: a worker's
#: ``assignment_id`` the assignments' ``id``, ``merged_into`` and an assignment's ``worker_id``
#: the workers' ``id``.
WORKER_TYPED = {
    "id": ID_TYPES,
    "ip": IP_TYPES,
    "created_at": TIME_TYPES,
    "last_seen": TIME_TYPES,
    "ended_at": TIME_TYPES,
    "hostname_seen": TIME_TYPES,
}
ASSIGNMENT_TYPED = {"id": ID_TYPES, "started_at": TIME_TYPES, "ended_at": TIME_TYPES}


def _columns(fields: tuple[str, ...], what: str) -> Any:
    def convert(value: object) -> Mapping[str, str]:
        given = dict(value) if isinstance(value, Mapping) else None
        if given is None:
            raise InvalidInput(f"{what} must be a mapping of field to column", value=value)
        unknown = set(given) - set(fields)
        if unknown:
            raise InvalidInput(
                f"{what}: unknown fields {sorted(unknown)}; known: {', '.join(fields)}",
                field=what,
                value=value,
            )
        out = {f: given.get(f, f) for f in fields}
        for f, col in out.items():
            if not isinstance(col, str) or not col:
                raise InvalidInput(f"{what}[{f!r}] must be a column name", field=what, value=col)
        return MappingProxyType(out)

    return convert


def _statuses(enum_cls: Any, what: str) -> Any:
    def convert(value: object) -> Mapping[Any, str]:
        given = dict(value) if isinstance(value, Mapping) else None
        if given is None:
            raise InvalidInput(f"{what} must be a mapping of status to value", value=value)
        out: dict[Any, str] = {m: m.value for m in enum_cls}
        for k, v in given.items():
            try:
                member = enum_cls(k)
            except ValueError:
                raise InvalidInput(f"{what}: unknown status {k!r}", field=what, value=k) from None
            if not isinstance(v, str) or not v:
                raise InvalidInput(f"{what}[{k!r}] must be a string", field=what, value=v)
            out[member] = v
        if len(set(out.values())) != len(out):
            raise InvalidInput(f"{what}: two statuses share one value", field=what, value=value)
        return MappingProxyType(out)

    return convert


def _frozen_dict(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput("defaults must be a mapping of column to value", value=value)
    for column, default in value.items():
        if not isinstance(column, str) or not column:
            raise InvalidInput("defaults: a column name must be a string", value=column)
        if not isinstance(default, (str, int, float, bool)):
            raise InvalidInput(
                f"defaults[{column!r}] must be a string, an int, a float or a bool, not "
                f"{type(default).__name__}",
                field="defaults",
                value=default,
            )
    return MappingProxyType(dict(value))


def _types(allowed: Mapping[str, tuple[str, ...]], what: str) -> Any:
    def convert(value: object) -> Mapping[str, str]:
        given = dict(value) if isinstance(value, Mapping) else None
        if given is None:
            raise InvalidInput(f"{what} must be a mapping of field to type", value=value)
        for field, kind in given.items():
            if field not in allowed:
                raise InvalidInput(
                    f"{what}: the type of {field!r} cannot be chosen; fields with a choice: "
                    f"{', '.join(allowed)}",
                    field=what,
                    value=field,
                )
            if kind not in allowed[field]:
                raise InvalidInput(
                    f"{what}[{field!r}] must be one of {', '.join(allowed[field])}, not {kind!r}",
                    field=what,
                    value=kind,
                )
        return MappingProxyType({f: given.get(f, kinds[0]) for f, kinds in allowed.items()})

    return convert


def _str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise InvalidInput("expected a sequence of names", value=value)
    return tuple(str(v) for v in value)


_c_worker_columns = _columns(WORKER_FIELDS, "worker_columns")
_c_assignment_columns = _columns(ASSIGNMENT_FIELDS, "assignment_columns")
_c_worker_statuses = _statuses(WorkerStatus, "worker_statuses")
_c_assignment_statuses = _statuses(AssignmentStatus, "assignment_statuses")
_c_worker_types = _types(WORKER_TYPED, "worker_types")
_c_assignment_types = _types(ASSIGNMENT_TYPED, "assignment_types")


def _conv_worker_columns(value: object) -> Mapping[str, str]:
    return _c_worker_columns(value)  # type: ignore[no-any-return]


def _conv_assignment_columns(value: object) -> Mapping[str, str]:
    return _c_assignment_columns(value)  # type: ignore[no-any-return]


def _conv_worker_statuses(value: object) -> Mapping[WorkerStatus, str]:
    return _c_worker_statuses(value)  # type: ignore[no-any-return]


def _conv_assignment_statuses(value: object) -> Mapping[AssignmentStatus, str]:
    return _c_assignment_statuses(value)  # type: ignore[no-any-return]


def _conv_worker_types(value: object) -> Mapping[str, str]:
    return _c_worker_types(value)  # type: ignore[no-any-return]


def _conv_assignment_types(value: object) -> Mapping[str, str]:
    return _c_assignment_types(value)  # type: ignore[no-any-return]


@attrs.frozen(kw_only=True)
class TableMapping:
    """Table and column names, status values, and what to fill in columns the library does not
    model.  Immutable; derive variants with :meth:`evolve` (for example another ``schema``).

    * ``worker_columns`` / ``assignment_columns`` map the library's field names (those of
      :class:`~workermatch.Worker` and :class:`~workermatch.Assignment`) to column names;
      fields not given keep their own name.
    * ``worker_statuses`` / ``assignment_statuses`` map the library's statuses to the values
      stored; ``worker_status_type`` / ``assignment_status_type`` name a PostgreSQL enum type
      the status column uses (``None``: a text column).
    * ``worker_types`` / ``assignment_types`` choose a column type where the default (text
      ids, text addresses, ``timestamp`` times) is not what the table has: ids ``"text"``,
      ``"uuid"`` or ``"integer"``; the worker's ``ip`` ``"text"`` or ``"inet"``; times
      ``"timestamp"`` (naive UTC) or ``"timestamptz"``.  ``uuid``, ``inet`` and
      ``timestamptz`` are PostgreSQL's types (elsewhere: text, text and the plain time type).
      References (``assignment_id``, ``merged_into``, ``worker_id``) follow the id they name.
    * ``worker_defaults`` / ``assignment_defaults``: constant values (str, int, float or bool)
      for columns the library does not model, written when it inserts a row (``NOT NULL``
      columns without a default).  A column the library creates for one gets the value's type.
    * ``worker_updated_at`` / ``assignment_updated_at``: a column set to the database's current
      UTC time on every insert and update (Prisma's ``@updatedAt``).
    * ``owns_tables``: whether :meth:`~workermatch.sql.SQLWorkerRepository.create_schema`
      creates the tables.  With ``False`` (someone else's tables) it only adds the columns
      listed in ``added_worker_columns`` (nullable) and the indexes, and
      ``drop_schema`` only removes those.  On such tables (PostgreSQL, SQLite) hostnames are
      compared as ``lower(hostname)``, so rows the other system wrote in capitals are found;
      their spelling is left as it is.
    """

    schema: str | None = None
    workers_table: str = "workermatch_workers"
    assignments_table: str = "workermatch_assignments"
    worker_columns: Mapping[str, str] = attrs.field(factory=dict, converter=_conv_worker_columns)
    assignment_columns: Mapping[str, str] = attrs.field(
        factory=dict, converter=_conv_assignment_columns
    )
    worker_statuses: Mapping[WorkerStatus, str] = attrs.field(
        factory=dict, converter=_conv_worker_statuses
    )
    assignment_statuses: Mapping[AssignmentStatus, str] = attrs.field(
        factory=dict, converter=_conv_assignment_statuses
    )
    worker_status_type: str | None = None
    assignment_status_type: str | None = None
    worker_types: Mapping[str, str] = attrs.field(factory=dict, converter=_conv_worker_types)
    assignment_types: Mapping[str, str] = attrs.field(
        factory=dict, converter=_conv_assignment_types
    )
    worker_defaults: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    assignment_defaults: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    worker_updated_at: str | None = None
    assignment_updated_at: str | None = None
    owns_tables: bool = True
    added_worker_columns: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    index_prefix: str | None = None

    @added_worker_columns.validator
    def _check_added(self, _: object, value: tuple[str, ...]) -> None:
        for field in value:
            if field not in ADDABLE_WORKER_FIELDS:
                raise InvalidInput(
                    f"added_worker_columns: {field!r} is not a nullable field the library can "
                    f"add ({', '.join(ADDABLE_WORKER_FIELDS)})",
                    field="added_worker_columns",
                    value=field,
                )

    def worker_type(self, field: str) -> str:
        """The column type chosen for a worker field (``"text"`` for fields without a choice)."""
        if field == "assignment_id":
            return self.assignment_types["id"]
        if field == "merged_into":
            return self.worker_types["id"]
        return self.worker_types.get(field, "text")

    def assignment_type(self, field: str) -> str:
        """The column type chosen for an assignment field."""
        if field == "worker_id":
            return self.worker_types["id"]
        return self.assignment_types.get(field, "text")

    @property
    def prefix(self) -> str:
        """The prefix of the library's index names."""
        return self.index_prefix or self.workers_table

    def evolve(self, **changes: Any) -> TableMapping:
        """A copy with ``changes`` applied."""
        return attrs.evolve(self, **changes)

    def with_table_prefix(self, prefix: str) -> TableMapping:
        """A copy whose two tables (and indexes) are prefixed with ``prefix``: useful to keep
        several test runs or tenants apart in one database."""
        return self.evolve(
            workers_table=prefix + self.workers_table,
            assignments_table=prefix + self.assignments_table,
            index_prefix=prefix + self.prefix,
        )


DEFAULT_MAPPING = TableMapping()
"""The library's own tables, ``workermatch_workers`` and ``workermatch_assignments``."""

PRISMA_MAPPING = TableMapping(
    workers_table="workers",
    assignments_table="assignments",
    worker_columns={
        "ip": "ipAddress",
        "created_at": "createdAt",
        "last_seen": "lastSeen",
        "stale": "isStale",
        "assignment_id": "wmAssignmentId",
        "ended_at": "wmSessionEndedAt",
        "merged_into": "wmMergedInto",
        "hostname_seen": "wmHostnameSeenAt",
        "contested": "wmContested",
        "held_end": "wmHeldEnd",
    },
    assignment_columns={
        "worker_id": "workerId",
        "started_at": "startedAt",
        "ended_at": "completedAt",
    },
    worker_status_type="WorkerStatus",
    assignment_status_type="AssignmentStatus",
    assignment_defaults={"superStudyId": "workermatch", "index": 0},
    worker_updated_at="updatedAt",
    assignment_updated_at="updatedAt",
    owns_tables=False,
    added_worker_columns=(
        "assignment_id",
        "ended_at",
        "merged_into",
        "hostname_seen",
        "contested",
        "held_end",
    ),
    index_prefix="workers_wm",
)
"""The real system's Prisma schema (tables ``workers`` and ``assignments``, camelCase columns,
enum types ``"WorkerStatus"`` and ``"AssignmentStatus"``).  The library's session fields live in
six nullable columns it adds to ``workers``: ``"wmAssignmentId"``, ``"wmSessionEndedAt"``,
``"wmMergedInto"``, ``"wmHostnameSeenAt"``, ``"wmContested"`` and ``"wmHeldEnd"``.  An
assignment the library inserts (replays only) gets ``"superStudyId"`` ``'workermatch'`` and
``"index"`` 0; ``"updatedAt"`` is set on every write."""
