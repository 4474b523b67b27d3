"""The DDL of the library's schema, as text, for teams that manage migrations themselves."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from .._errors import InvalidInput
from ._mapping import DEFAULT_MAPPING, TableMapping
from ._tables import build_tables

__all__ = ["schema_ddl"]

_DIALECTS: dict[str, sa.Dialect] = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
    "mysql": mysql.dialect(),
    "mariadb": mysql.dialect(is_mariadb=True),
}


def schema_ddl(dialect: str, mapping: TableMapping = DEFAULT_MAPPING) -> str:
    """The statements :meth:`SQLWorkerRepository.create_schema` runs on an empty database of
    ``dialect`` (``"sqlite"``, ``"postgresql"``, ``"mysql"`` or ``"mariadb"``), each ending in
    ``;``.  For a mapping with ``owns_tables=False`` only the added columns and the indexes."""
    try:
        d = _DIALECTS[dialect]
    except KeyError:
        raise InvalidInput(
            f"unknown dialect {dialect!r}; choose one of {', '.join(_DIALECTS)}",
            field="dialect",
            value=dialect,
        ) from None
    t = build_tables(mapping, dialect)
    out: list[str] = []
    prep = d.identifier_preparer
    if mapping.owns_tables:
        for table in (t.workers, t.assignments):
            out.append(
                str(
                    CreateTable(table, include_foreign_key_constraints=None).compile(dialect=d)
                ).strip()
            )
    else:
        for field in mapping.added_worker_columns:
            col = t.w[field]
            out.append(
                f"ALTER TABLE {prep.format_table(t.workers)} ADD COLUMN "
                f"{prep.format_column(col)} {col.type.compile(dialect=d)} NULL"
            )
    for index in t.indexes:
        out.append(str(CreateIndex(index).compile(dialect=d)).strip())
    return "".join(s + ";\n\n" for s in out).rstrip() + "\n"
