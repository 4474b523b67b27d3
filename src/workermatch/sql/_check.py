"""What :meth:`~workermatch.sql.SQLWorkerRepository.check_schema` finds wrong with the mapped
tables: every defect at once, read-only."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import visitors

from ._tables import Tables

__all__ = ["library_indexes_present", "missing_indexes", "schema_defects"]

# What a field of the library needs, by the mapping's choice of type.
_TEXT = "text"
_NEEDS: dict[str, str] = {
    "hostname": _TEXT,
    "status": "status",
    "stale": "bool",
    "contested": _TEXT,
    "held_end": _TEXT,
}
_TIMES = {"created_at", "last_seen", "ended_at", "hostname_seen", "started_at"}


def _family(t: Any) -> str | None:
    """The kind of a reflected column type, or ``None`` when SQLAlchemy does not know it."""
    if isinstance(t, sa.types.NullType):
        return None
    if isinstance(t, sa.Enum):
        return "enum"
    if isinstance(t, (postgresql.INET, postgresql.CIDR)):
        return "inet"
    if isinstance(t, sa.Uuid):
        return "uuid"
    if isinstance(t, sa.Boolean):
        return "bool"
    if isinstance(t, sa.Integer):
        return "integer"
    if isinstance(t, sa.DateTime):
        return "timestamptz" if getattr(t, "timezone", False) else "timestamp"
    if isinstance(t, sa.JSON):
        return "json"
    if isinstance(t, sa.String):
        return _TEXT
    return "other"


def _accepted(need: str, backend: str) -> set[str]:
    """The column kinds that hold what ``need`` asks for on ``backend``."""
    pg = backend == "postgresql"
    sqlite = backend == "sqlite"
    if need == _TEXT:
        return {_TEXT}
    if need == "status":
        return {_TEXT, "enum"}
    if need == "bool":
        return {"bool"} if pg else {"bool", "integer"}  # MariaDB BOOL is TINYINT(1)
    if need == "integer":
        return {"integer"}
    if need == "uuid":
        return {"uuid"} if pg else {_TEXT, "uuid"}
    if need == "inet":
        return {"inet"} if pg else {_TEXT}
    if need == "timestamptz" and pg:
        return {"timestamptz"}
    # timestamp (and timestamptz elsewhere): SQLite keeps times as text either way
    return {"timestamp", _TEXT} if sqlite else {"timestamp"}


def _need(tables: Tables, workers: bool, field: str) -> tuple[str, str]:
    """What the column of ``field`` must hold, and the mapping key that chooses it."""
    m = tables.mapping
    if field in _NEEDS:
        return _NEEDS[field], ""
    kind = m.worker_type(field) if workers else m.assignment_type(field)
    if field in ("id", "assignment_id", "merged_into", "worker_id"):
        refers_to_workers = field in ("merged_into", "worker_id") or (workers and field == "id")
        key = "worker_types" if refers_to_workers else "assignment_types"
        return kind, f"{key}={{'id': ...}}"
    key = "worker_types" if workers else "assignment_types"
    return kind, f"{key}={{{field!r}: ...}}"


def _has_default(col: Any) -> bool:
    return bool(
        col.get("default") is not None
        or col.get("autoincrement") is True
        or col.get("identity")
        or col.get("computed")
    )


def _index_terms(index: sa.Index) -> list[str]:
    """The index's columns, and ``lower(column)`` for its expression."""
    out: list[str] = []
    for expr in index.expressions:
        if isinstance(expr, sa.Column):
            out.append(expr.name)
        else:  # lower(hostname)
            assert isinstance(expr, sa.ColumnElement)
            column = next(e for e in visitors.iterate(expr) if isinstance(e, sa.Column))
            out.append(f"lower({column.name})")
    return out


def _index_matches(index: sa.Index, found: dict[str, Any]) -> bool:
    if found.get("name") == index.name:
        return True
    columns = found.get("column_names") or []
    expressions = [str(e) for e in (found.get("expressions") or [])]
    wanted = [w.lower() for w in _index_terms(index)]
    have = [
        (c if c is not None else (expressions[i] if i < len(expressions) else "")).lower()
        for i, c in enumerate(columns)
    ]
    have = [re.sub(r'["`()]|::text', "", h) for h in have]
    wanted = [re.sub(r'["`()]', "", w) for w in wanted]
    return have[: len(wanted)] == wanted


def _reflected_indexes(inspector: Any, table_name: str, schema: str | None) -> list[Any]:
    """The indexes of a table, as SQLAlchemy reflects them, plus (by name) SQLite's expression
    indexes, which it skips with a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        found: list[Any] = list(inspector.get_indexes(table_name, schema=schema))
    if inspector.dialect.name == "sqlite":
        master = "sqlite_master" if schema is None else f'"{schema}".sqlite_master'
        names = inspector.bind.exec_driver_sql(
            f"SELECT name FROM {master} WHERE type = 'index' AND tbl_name = ?",
            (table_name,),
        ).scalars()
        known = {f.get("name") for f in found}
        found += [{"name": name} for name in names if name not in known]
    return found


def _indexes_beside_reflected(
    inspector: Any, tables: Tables
) -> Iterator[tuple[sa.Index, list[Any]]]:
    """Each library index whose table exists, with the indexes that table has."""
    schema = tables.mapping.schema
    for index in tables.indexes:
        table = index.table
        assert table is not None
        if inspector.has_table(table.name, schema=schema):
            yield index, _reflected_indexes(inspector, table.name, schema)


def missing_indexes(inspector: Any, tables: Tables) -> list[sa.Index]:
    """The library's indexes that the tables lack (by name, or an index of another name on the
    same leading columns)."""
    return [
        index
        for index, found in _indexes_beside_reflected(inspector, tables)
        if not any(_index_matches(index, f) for f in found)
    ]


def library_indexes_present(inspector: Any, tables: Tables) -> list[sa.Index]:
    """The library's indexes that exist under the library's names (what ``drop_schema``
    removes from someone else's tables)."""
    return [
        index
        for index, found in _indexes_beside_reflected(inspector, tables)
        if index.name in {f.get("name") for f in found}
    ]


def schema_defects(
    conn: sa.Connection,
    tables: Tables,
    backend: str,
    collations: dict[tuple[str, str], tuple[str, bool]] | None,
    *,
    create_assignments: bool,
) -> list[str]:
    """Every way the mapped tables differ from what the library needs, each as one sentence."""
    insp = sa.inspect(conn)
    schema = tables.mapping.schema
    defects: list[str] = []
    present: set[str] = set()
    with warnings.catch_warnings():
        # SQLite and others: a type SQLAlchemy does not know is reflected as NullType, with a
        # warning; such a column is not judged.
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        for table, fields, workers in (
            (tables.workers, tables.w, True),
            (tables.assignments, tables.a, False),
        ):
            if not insp.has_table(table.name, schema=schema):
                defects.append(f"table {table.fullname!r} does not exist")
                continue
            present.add(table.name)
            reflected = {c["name"]: c for c in insp.get_columns(table.name, schema=schema)}
            for field, col in fields.items():
                found = reflected.get(col.name)
                where = f"{table.name}.{col.name}"
                if found is None:
                    defects.append(f"column {where} ({field}) is missing")
                    continue
                need, key = _need(tables, workers, field)
                if field in _TIMES and need == "text":
                    need = "timestamp"
                kind = _family(found["type"])
                accepted = _accepted(need, backend)
                if kind is not None and kind not in accepted:
                    hint = ""
                    if key and kind in ("uuid", "integer", "inet", "timestamptz", "timestamp"):
                        hint = f" (or set {key.replace('...', repr(kind))} in the mapping)"
                    defects.append(
                        f"column {where} ({field}) is {found['type']} ({kind}); it must hold "
                        f"{need}{hint}"
                    )
            mapped = {c.name for c in table.columns}
            for name in mapped - {c.name for c in fields.values()}:
                if name not in reflected:  # updated_at, or a column given a default value
                    defects.append(f"column {table.name}.{name} (filled by the mapping) is missing")
            if workers or create_assignments:
                what = "worker_defaults" if workers else "assignment_defaults"
                for name, found in reflected.items():
                    if name not in mapped and not found["nullable"] and not _has_default(found):
                        defects.append(
                            f"column {table.name}.{name} is NOT NULL without a default, and the "
                            f"library does not fill it: give it a value in the mapping's {what}"
                        )
        for index in missing_indexes(insp, tables):
            assert index.table is not None
            if index.table.name in present:
                columns = ", ".join(_index_terms(index))
                defects.append(
                    f"index {index.name} on {index.table.name} ({columns}) is missing; "
                    "create_schema() creates it"
                )
    for col in tables.exact:
        collation = (collations or {}).get((col.table.name, col.name))
        if collation is None or collation[1]:
            continue
        fix = {
            "postgresql": 'a deterministic collation (the database default, or "C")',
            "sqlite": "the default BINARY collation",
        }.get(backend, "a binary collation, utf8mb4_bin")
        defects.append(
            f"column {col.name!r} of table {col.table.name!r} uses collation "
            f"{collation[0]!r}, which compares different ids or hostnames as equal (case, "
            f"accents, width or Unicode normalisation ignored); give it {fix}"
        )
    return defects
