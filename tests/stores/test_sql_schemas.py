"""Existing schemas: a start-up check that lists every defect, column types chosen in the
mapping (uuid, integer, inet, timestamptz), typed defaults, updates that write only what a
decision changed, and hostnames matched in any case on someone else's tables.

Where a test takes ``driver``, it runs on the synchronous store (``sync``) and on the asyncio
one (``async``: aiosqlite, asyncpg, aiomysql), which share the statements and the schema work.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

import workermatch as wm
from _stores import StoreFactory, process_prefix
from _times import T0
from stores.test_sql_decisions import CORPUS, run_trace
from workermatch import trace
from workermatch.sql import (
    DEFAULT_MAPPING,
    PRISMA_MAPPING,
    AsyncSQLWorkerRepository,
    SQLWorkerRepository,
    TableMapping,
    schema_ddl,
)
from workermatch.testing import BlockingRepository, LoopThread

DRIVERS = ["sync", "async"]


def server(dialect: str) -> str:
    if dialect == "sqlite":
        return "sqlite://"
    url = os.environ.get(f"WORKERMATCH_TEST_{dialect.upper()}_URL", "")
    if not url:
        pytest.skip(f"{dialect} needs a database server")
    return url


def run_sql(repo: SQLWorkerRepository, *statements: str) -> None:
    with repo.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def schema_call(driver: str, url: str, mapping: TableMapping, method: str, **kwargs: Any) -> None:
    """``repo.<method>(**kwargs)`` (``check_schema``, ``create_schema``) on a new store of
    ``driver`` for ``url``."""
    if driver == "sync":
        with SQLWorkerRepository.from_url(url, mapping=mapping) as repo:
            getattr(repo, method)(**kwargs)
        return

    async def run() -> None:
        async with AsyncSQLWorkerRepository.from_url(url, mapping=mapping) as repo:
            await getattr(repo, method)(**kwargs)

    asyncio.run(run())


class Store:
    """A SQL store of either driver, driven synchronously.  ``repo`` decides (the synchronous
    store, or a BlockingRepository around the asyncio one); ``admin`` is a synchronous store on
    the same database and mapping, for the test's own SQL; ``engine`` the synchronous engine
    the store's statements go through (for listeners)."""

    def __init__(self, driver: str, loop: LoopThread, url: str, **kwargs: Any) -> None:
        self.loop = loop
        self.store: Any
        if driver == "sync":
            self.store = self.admin = SQLWorkerRepository.from_url(url, **kwargs)
            self.repo: wm.WorkerRepository = self.store
            self.engine: sa.Engine = self.store.engine
            return
        admin_args = {k: v for k, v in kwargs.items() if k != "connect_args"}
        self.admin = SQLWorkerRepository.from_url(url, **admin_args)
        self.store = AsyncSQLWorkerRepository.from_url(url, **kwargs)
        self.repo = BlockingRepository(self.store, loop)
        self.engine = self.store.engine.sync_engine

    def call(self, method: str, **kwargs: Any) -> Any:
        """``store.<method>(**kwargs)``, awaited on the loop for the asyncio store."""
        result = getattr(self.store, method)(**kwargs)
        if isinstance(self.store, AsyncSQLWorkerRepository):
            return self.loop.run(result)
        return result

    def close(self) -> None:
        if isinstance(self.store, AsyncSQLWorkerRepository):
            self.loop.run(self.store.close())
        self.admin.close()


@pytest.fixture
def open_store(event_loop_thread: LoopThread) -> Iterator[Callable[..., Store]]:
    """``open_store(driver, url, **from_url_options)``: a Store, closed after the test."""
    opened: list[Store] = []

    def open_(driver: str, url: str, **kwargs: Any) -> Store:
        store = Store(driver, event_loop_thread, url, **kwargs)
        opened.append(store)
        return store

    try:
        yield open_
    finally:
        for store in opened:
            store.close()


# ---------------------------------------------------------------------------------------------
# check_schema: every defect in one message


def _wrong_tables(dialect: str, workers: str, assignments: str, collation: str) -> list[str]:
    """A workers table with a case-folding hostname collation, times in an integer column, a
    missing column and an unfilled NOT NULL column; an assignments table with integer ids; no
    index at all."""
    text = "VARCHAR(255)"
    host = f"VARCHAR(253) COLLATE {collation}"
    time = "TIMESTAMP(3)" if dialect == "postgresql" else "DATETIME"
    if dialect == "mysql":
        text = "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        host = f"VARCHAR(253) CHARACTER SET utf8mb4 COLLATE {collation}"
        time = "DATETIME(3)"
    elif dialect == "postgresql":
        host = f'VARCHAR(253) COLLATE "{collation}"'
    return [
        f"""CREATE TABLE {workers} (
            id {text} NOT NULL PRIMARY KEY, ip VARCHAR(45) NOT NULL, hostname {host},
            created_at {time} NOT NULL, last_seen BIGINT NOT NULL, status VARCHAR(32) NOT NULL,
            stale BOOLEAN NOT NULL, assignment_id {text}, ended_at {time}, merged_into {text},
            hostname_seen {time}, contested TEXT, team VARCHAR(20) NOT NULL)""",
        f"""CREATE TABLE {assignments} (
            id INTEGER NOT NULL PRIMARY KEY, status VARCHAR(32) NOT NULL, worker_id {text},
            started_at {time}, ended_at {time})""",
    ]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("dialect", "collation"),
    [("sqlite", "NOCASE"), ("postgresql", "wm_ci"), ("mysql", "utf8mb4_general_ci")],
)
def test_check_schema_lists_every_defect_of_a_wrong_table_in_one_error(
    dialect: str, collation: str, driver: str, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'bad.db'}" if dialect == "sqlite" else server(dialect)
    prefix = process_prefix() + "bad_"
    mapping = DEFAULT_MAPPING.with_table_prefix(prefix)
    workers, assignments = mapping.workers_table, mapping.assignments_table
    if dialect == "postgresql":
        collation = prefix + collation
    with SQLWorkerRepository.from_url(url, mapping=mapping) as repo:
        repo.drop_schema()
        if dialect == "postgresql":
            run_sql(
                repo,
                f'CREATE COLLATION IF NOT EXISTS "{collation}" (provider = icu, '
                "locale = 'und-u-ks-level2', deterministic = false)",
            )
        run_sql(repo, *_wrong_tables(dialect, workers, assignments, collation))
        try:
            with repo.engine.connect() as conn:
                before = (
                    sa.inspect(conn).get_columns(workers),
                    sa.inspect(conn).get_indexes(workers),
                )
            with pytest.raises(wm.StorageError) as info:
                schema_call(driver, url, mapping, "check_schema")
            message = str(info.value)
            lines = [line.strip() for line in message.splitlines()[1:]]
            expected = {
                "missing column": f"column {workers}.held_end (held_end) is missing",
                "times in an integer": f"column {workers}.last_seen (last_seen) is BIGINT",
                "integer ids": f"column {assignments}.id (id) is INTEGER",
                "unfilled": f"column {workers}.team is NOT NULL without a default",
                "collation": f"column 'hostname' of table {workers!r} uses collation",
                "ip index": f"index {workers}_ip_idx on {workers}",
                "hostname index": f"index {workers}_hostname_idx on {workers}",
                "holder index": f"index {workers}_asg_holder_idx on {assignments}",
            }
            for what, start in expected.items():
                assert any(line.startswith(f"- {start}") for line in lines), (what, message)
            assert message.startswith(f"the tables do not fit the mapping ({len(lines)} defects)")
            assert "set assignment_types={'id': 'integer'}" in message
            assert collation in message
            assert info.value.retryable is False
            with repo.engine.connect() as conn:  # read-only: nothing was added or created
                after = sa.inspect(conn).get_columns(workers), sa.inspect(conn).get_indexes(workers)
            assert [c["name"] for c in after[0]] == [c["name"] for c in before[0]]
            assert after[1] == before[1]
        finally:
            run_sql(repo, f"DROP TABLE {assignments}", f"DROP TABLE {workers}")
            if dialect == "postgresql":
                run_sql(repo, f'DROP COLLATION IF EXISTS "{collation}"')


@pytest.mark.parametrize("driver", DRIVERS)
def test_check_schema_reports_missing_tables_and_passes_after_create_schema(
    driver: str, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.raises(wm.StorageError) as info:
        schema_call(driver, url, DEFAULT_MAPPING, "check_schema")
    assert "table 'workermatch_workers' does not exist" in str(info.value)
    assert "table 'workermatch_assignments' does not exist" in str(info.value)
    schema_call(driver, url, DEFAULT_MAPPING, "create_schema")
    schema_call(driver, url, DEFAULT_MAPPING, "check_schema")
    schema_call(driver, url, DEFAULT_MAPPING, "check_schema", create_assignments=True)


# ---------------------------------------------------------------------------------------------
# The dashboard's own tables


@pytest.mark.parametrize("store_factory", ["prisma"], indirect=True)
def test_the_dashboards_not_null_columns_need_assignment_defaults_only_to_create_assignments(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    repo.check_schema(create_assignments=True)  # PRISMA_MAPPING fills superStudyId and index
    bare = SQLWorkerRepository(repo.engine, mapping=repo.mapping.evolve(assignment_defaults={}))
    bare.check_schema()  # deciding on live traffic inserts no assignment
    with pytest.raises(wm.StorageError) as info:
        bare.check_schema(create_assignments=True)
    message = str(info.value)
    assert "(2 defects)" in message
    for column in ("superStudyId", "index"):
        assert f"column assignments.{column} is NOT NULL without a default" in message
    assert "assignment_defaults" in message


@pytest.mark.parametrize("store_factory", ["prisma"], indirect=True)
def test_a_corpus_replay_on_the_dashboards_tables_fills_their_not_null_columns(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory(wm.sequential_ids())
    assert isinstance(repo, SQLWorkerRepository)
    name = "two-runs-one-machine.jsonl"
    expected = run_trace(
        wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids()), name, wm.DEFAULT_POLICY
    )
    assert run_trace(repo, name, wm.DEFAULT_POLICY) == expected
    with repo.engine.connect() as conn:
        conn.exec_driver_sql(f'SET search_path TO "{repo.mapping.schema}"')
        rows = conn.exec_driver_sql(
            'SELECT "superStudyId", index, progress, "createdAt" IS NOT NULL, '
            '"updatedAt" IS NOT NULL FROM assignments'
        ).all()
    assert rows
    assert set(rows) == {("workermatch", 0, 0.0, True, True)}


# ---------------------------------------------------------------------------------------------
# Hostnames in any case on someone else's tables


def _dashboard_row(repo: SQLWorkerRepository, hostname: str, seen: datetime) -> None:
    """A worker row the dashboard wrote: a hostname in its own spelling, microsecond times."""
    t = repo.tables
    with repo.engine.begin() as conn:
        if repo.mapping.schema and conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f'SET LOCAL search_path TO "{repo.mapping.schema}"')
        values = {
            t.w["id"].name: "dash-1",
            t.w["ip"].name: "192.0.2.10",
            t.w["hostname"].name: hostname,
            t.w["created_at"].name: seen.replace(tzinfo=None),
            t.w["last_seen"].name: seen.replace(tzinfo=None),
            t.w["status"].name: repo.mapping.worker_statuses[wm.WorkerStatus.IDLE],
            t.w["stale"].name: False,
        }
        if repo.mapping.worker_updated_at:
            values[repo.mapping.worker_updated_at] = seen.replace(tzinfo=None)
        cols = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join(f":{i}" for i in range(len(values)))
        conn.execute(
            sa.text(f"INSERT INTO {t.workers.name} ({cols}) VALUES ({marks})"),
            {str(i): v for i, v in enumerate(values.values())},
        )


def _stored(repo: SQLWorkerRepository, column: str) -> Any:
    t = repo.tables
    with repo.engine.connect() as conn:
        if repo.mapping.schema and conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f'SET search_path TO "{repo.mapping.schema}"')
        return conn.exec_driver_sql(
            f"SELECT \"{column}\" FROM {t.workers.name} WHERE id = 'dash-1'"
        ).scalar_one()


def _upper_case_hostname_is_matched(
    repo: SQLWorkerRepository, decider: wm.WorkerRepository | None = None
) -> None:
    """``decider`` (default ``repo``) finds by hostname, in any case, the row the dashboard
    wrote in ``repo``'s tables."""
    decider = repo if decider is None else decider
    seen = T0 + timedelta(microseconds=123_456)
    _dashboard_row(repo, "UG-WS-99", seen)
    first = _stored(repo, repo.tables.w["created_at"].name)  # as precise as the column keeps it
    # From another address, so only the hostname can find the dashboard's row.
    beat = wm.apply_event(
        wm.Event.heartbeat("198.51.100.7", hostname="ug-ws-99"),
        T0 + timedelta(seconds=10),
        decider,
    )
    assert (beat.worker.id, beat.rule) == ("dash-1", wm.Rule.HOSTNAME)
    assert beat.worker.hostname == "ug-ws-99"
    # The dashboard's spelling, and its first-seen time to the microsecond, are left alone.
    assert _stored(repo, repo.tables.w["hostname"].name) == "UG-WS-99"
    assert _stored(repo, repo.tables.w["created_at"].name) == first
    # Matched again, on the same row, still as the dashboard wrote it.
    again = wm.apply_event(
        wm.Event.heartbeat("198.51.100.8", hostname="Ug-Ws-99."),
        T0 + timedelta(seconds=40),
        decider,
    )
    assert again.worker.id == "dash-1"
    assert _stored(repo, repo.tables.w["hostname"].name) == "UG-WS-99"


@pytest.mark.parametrize("driver", DRIVERS)
def test_sqlite_a_dashboard_row_is_found_by_hostname_in_any_case(
    open_store: Callable[..., Store], driver: str, tmp_path: Any
) -> None:
    """Someone else's tables on SQLite (the library's DDL, but owns_tables=False)."""
    mapping = DEFAULT_MAPPING.evolve(owns_tables=False)
    store = open_store(driver, f"sqlite:///{tmp_path / 'dash.db'}", mapping=mapping)
    run_sql(store.admin, *[s for s in schema_ddl("sqlite").split(";") if s.strip()])
    store.call("create_schema")
    assert store.store.tables.folds_hostnames
    _upper_case_hostname_is_matched(store.admin, store.repo)


@pytest.mark.parametrize("store_factory", ["prisma"], indirect=True)
def test_prisma_a_dashboard_row_is_found_by_hostname_in_any_case(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    assert repo.tables.folds_hostnames
    _upper_case_hostname_is_matched(repo)


def test_the_library_own_tables_compare_hostnames_on_the_plain_index() -> None:
    ddl = schema_ddl("postgresql")
    assert "ON workermatch_workers (hostname)" in ddl
    foreign = schema_ddl("postgresql", PRISMA_MAPPING)
    assert "CREATE INDEX workers_wm_hostname_lower_idx ON workers (lower(hostname))" in foreign
    # MariaDB has no expression indexes: there hostnames compare exactly, on the plain index.
    for dialect in ("mariadb", "mysql"):
        ddl = schema_ddl(dialect, PRISMA_MAPPING)
        assert "CREATE INDEX workers_wm_hostname_idx ON workers (hostname)" in ddl
        assert "lower(" not in ddl


@pytest.mark.parametrize("driver", DRIVERS)
def test_drop_schema_on_someone_elses_sqlite_tables_removes_the_expression_index(
    open_store: Callable[..., Store], driver: str, tmp_path: Any
) -> None:
    mapping = DEFAULT_MAPPING.evolve(owns_tables=False)
    store = open_store(driver, f"sqlite:///{tmp_path / 'dash.db'}", mapping=mapping)
    run_sql(store.admin, *[s for s in schema_ddl("sqlite").split(";") if s.strip()])
    store.call("create_schema")
    mine = {str(index.name) for index in store.store.tables.indexes}
    assert "workermatch_workers_hostname_lower_idx" in mine

    def indexes() -> set[str]:
        with store.admin.engine.connect() as conn:
            return set(
                conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = 'index'"
                ).scalars()
            )

    assert mine <= indexes()
    store.call("drop_schema")
    assert not mine & indexes()
    assert store.admin.tables.workers.name in sa.inspect(store.admin.engine).get_table_names()


# ---------------------------------------------------------------------------------------------
# Updates write only what the decision changed


def _updates(engine: sa.Engine) -> tuple[list[str], Callable[[], None]]:
    sent: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            sent.append(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    return sent, lambda: sa.event.remove(engine, "before_cursor_execute", before)


def _set_columns(statement: str) -> set[str]:
    set_part = re.split(r"\bWHERE\b", re.split(r"\bSET\b", statement, maxsplit=1)[1])[0]
    return {re.sub(r'["`]', "", c.split("=")[0]).strip() for c in set_part.split(",")}


@pytest.mark.parametrize("driver", DRIVERS)
def test_no_update_of_a_corpus_replay_writes_the_id_or_created_at(
    open_store: Callable[..., Store], driver: str, tmp_path: Any
) -> None:
    store = open_store(driver, f"sqlite:///{tmp_path / 'audit.db'}", id_factory=wm.sequential_ids())
    store.call("create_schema")
    sent, stop = _updates(store.engine)
    try:
        for name in ("note-three-workers.jsonl", "two-runs-one-machine-hints.jsonl"):
            store.call("reset")
            run_trace(store.repo, name, wm.DEFAULT_POLICY)
    finally:
        stop()
    assert sent
    written = set().union(*(_set_columns(s) for s in sent))
    assert not written & {"id", "created_at"}
    # A heartbeat of a known worker writes what moved: last_seen (and when the hostname
    # arrived, hostname_seen), nothing else.
    assert {"last_seen"} in [_set_columns(s) for s in sent]


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_update_of_a_row_not_read_in_the_unit_still_never_writes_created_at(
    open_store: Callable[..., Store], driver: str, tmp_path: Any
) -> None:
    store = open_store(driver, f"sqlite:///{tmp_path / 'unread.db'}")
    store.call("create_schema")
    repo = store.repo
    first = wm.Worker(id="w1", ip="10.0.0.1", created_at=T0, last_seen=T0)
    repo.write([wm.InsertWorker(worker=first)])
    sent, stop = _updates(store.engine)
    try:
        moved = wm.Worker(id="w1", ip="10.0.0.2", hostname="box", created_at=T0, last_seen=T0)
        repo.write([wm.UpdateWorker(worker=moved)])
    finally:
        stop()
    (statement,) = sent
    assert "created_at" not in _set_columns(statement)
    assert {"ip", "hostname", "last_seen"} <= _set_columns(statement)
    assert repo.all_workers() == [moved]


# ---------------------------------------------------------------------------------------------
# Column types: worker_defaults typed from their values; uuid, integer, inet, timestamptz


def test_worker_defaults_are_typed_from_their_values() -> None:
    mapping = DEFAULT_MAPPING.evolve(
        worker_defaults={"team_id": 7, "label": "lab", "weight": 0.5, "managed": True}
    )
    ddl = schema_ddl("postgresql", mapping)
    for column in ("team_id BIGINT", "label VARCHAR(255)", "weight FLOAT", "managed BOOLEAN"):
        assert column in ddl
    with SQLWorkerRepository.from_url("sqlite://", mapping=mapping) as repo:
        repo.create_schema()
        wm.apply_event(wm.Event.register("10.0.0.1"), T0, repo)
        with repo.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT typeof(team_id), team_id, typeof(weight), managed FROM workermatch_workers"
            ).one()
    assert tuple(row) == ("integer", 7, "real", 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"worker_types": {"id": "bigint"}}, "must be one of text, uuid, integer"),
        ({"worker_types": {"hostname": "citext"}}, "cannot be chosen"),
        ({"assignment_types": {"worker_id": "uuid"}}, "cannot be chosen"),
        ({"worker_defaults": {"team": [1]}}, "must be a string, an int"),
    ],
)
def test_a_bad_column_type_or_default_is_invalid_input(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(wm.InvalidInput, match=message):
        DEFAULT_MAPPING.evolve(**changes)


TYPED_TABLES = """
CREATE TABLE machines (
    id UUID PRIMARY KEY,
    addr INET NOT NULL,
    hostname TEXT,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    status TEXT NOT NULL,
    stale BOOLEAN NOT NULL DEFAULT false,
    team_id INTEGER NOT NULL
);
CREATE TABLE jobs (
    id BIGINT PRIMARY KEY,
    status TEXT NOT NULL,
    machine_id UUID REFERENCES machines (id),
    started_at TIMESTAMPTZ,
    ended_at TIMESTAMPTZ,
    title TEXT NOT NULL DEFAULT 'untitled'
);
"""


def typed_mapping(schema: str) -> TableMapping:
    return TableMapping(
        schema=schema,
        workers_table="machines",
        assignments_table="jobs",
        worker_columns={"ip": "addr", "created_at": "first_seen"},
        assignment_columns={"worker_id": "machine_id"},
        worker_types={
            "id": "uuid",
            "ip": "inet",
            "created_at": "timestamptz",
            "last_seen": "timestamptz",
            "ended_at": "timestamptz",
            "hostname_seen": "timestamptz",
        },
        assignment_types={"id": "integer", "started_at": "timestamptz", "ended_at": "timestamptz"},
        worker_defaults={"team_id": 7},
        owns_tables=False,
        added_worker_columns=(
            "assignment_id",
            "ended_at",
            "merged_into",
            "hostname_seen",
            "contested",
            "held_end",
        ),
    )


def uuid_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: str(uuid.UUID(int=next(counter)))


TypedStores = Callable[[str, Callable[[], str] | None], Store]


@pytest.fixture
def typed_postgresql(open_store: Callable[..., Store]) -> Iterator[TypedStores]:
    """A factory ``make(driver, id_factory)`` of stores on PostgreSQL tables with uuid worker
    ids, inet addresses, bigint assignment ids and timestamptz times, in a session whose time
    zone is not UTC."""
    url = server("postgresql")
    schema = process_prefix() + "typed"
    admin = SQLWorkerRepository.from_url(url)
    run_sql(admin, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', f'CREATE SCHEMA "{schema}"')
    with admin.engine.begin() as conn:
        conn.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')
        for statement in TYPED_TABLES.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)

    def make(driver: str, id_factory: Callable[[], str] | None = None) -> Store:
        # The library must not depend on the session's time zone for timestamptz.
        zone = "America/Santiago"
        return open_store(
            driver,
            url,
            mapping=typed_mapping(schema),
            id_factory=id_factory,
            connect_args=(
                {"options": f"-c timezone={zone}"}
                if driver == "sync"
                else {"server_settings": {"timezone": zone}}
            ),
        )

    try:
        yield make
    finally:
        run_sql(admin, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def _integer_assignments(name: str) -> list[trace.TraceRecord]:
    text = re.sub(r'"assignment": "A(\d+)"', r'"assignment": "10\1"', (CORPUS / name).read_text())
    return list(trace.parse_trace(text.splitlines()))


def _replay(repo: wm.WorkerRepository, records: list[trace.TraceRecord]) -> list[Any]:
    out: list[Any] = []
    for line in trace.replay(records, repo, wm.DEFAULT_POLICY):
        decision = None if line.decision is None else line.decision.to_dict()
        out.append(
            (line.to_dict(), decision, None if line.outcome is None else line.outcome.writes)
        )
    out.append(trace.final_state(repo, records[-1].at, wm.DEFAULT_POLICY))
    return out


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    "name",
    ["note-three-workers.jsonl", "two-runs-one-machine-hints.jsonl", "cloned-hostnames.jsonl"],
)
def test_postgresql_uuid_inet_integer_and_timestamptz_columns_replay_like_memory(
    typed_postgresql: TypedStores, name: str, driver: str
) -> None:
    store = typed_postgresql(driver, uuid_ids())
    store.call("create_schema")
    store.call("check_schema", create_assignments=True)
    records = _integer_assignments(name)
    expected = _replay(wm.InMemoryWorkerRepository(id_factory=uuid_ids()), records)
    assert _replay(store.repo, records) == expected
    repo = store.admin
    with repo.engine.connect() as conn:
        conn.exec_driver_sql(f'SET search_path TO "{repo.mapping.schema}"')
        types = conn.exec_driver_sql(
            "SELECT pg_typeof(id)::text, pg_typeof(addr)::text, pg_typeof(first_seen)::text, "
            "pg_typeof(assignment_id)::text, team_id FROM machines LIMIT 1"
        ).one()
        jobs = conn.exec_driver_sql("SELECT id, title FROM jobs ORDER BY id").all()
    assert tuple(types) == ("uuid", "inet", "timestamp with time zone", "bigint", 7)
    assert jobs
    assert all(isinstance(i, int) and t == "untitled" for i, t in jobs)


@pytest.mark.parametrize("driver", DRIVERS)
def test_postgresql_typed_ids_that_cannot_exist_are_not_found_and_not_written(
    typed_postgresql: TypedStores, driver: str
) -> None:
    store = typed_postgresql(driver, None)
    store.call("create_schema")
    repo = store.repo
    claim = wm.apply_event(wm.Event.claim("10.0.0.1", "42"), T0, repo, create_assignments=True)
    assert uuid.UUID(claim.worker.id).version == 4  # the default id factory's random UUIDs
    # Hints of another form name nothing, as an unknown id does; nothing reaches the database.
    assert repo.get_worker("w1") is None
    assert repo.get_worker(claim.worker.id.upper()) is None
    assert repo.get_assignment("A1") is None
    assert repo.get_assignment("042") is None
    assert repo.get_assignment("42") is not None
    hinted = wm.Event.gui_update("10.0.0.1", "overall_progress", worker_id="w1")
    assert wm.apply_event(hinted, T0 + timedelta(seconds=1), repo).worker.id == claim.worker.id
    with pytest.raises(
        wm.InvalidInput, match="'A1' cannot be stored in its column, of type integer"
    ):
        wm.apply_event(wm.Event.claim("10.0.0.2", "A1"), T0, repo, create_assignments=True)
    assert [a.id for a in repo.all_assignments()] == ["42"]


@pytest.mark.parametrize("driver", DRIVERS)
def test_postgresql_timestamptz_round_trips_in_any_session_time_zone(
    typed_postgresql: TypedStores, driver: str
) -> None:
    store = typed_postgresql(driver, uuid_ids())
    store.call("create_schema")
    at = datetime(2026, 3, 29, 1, 30, 0, 7000, tzinfo=timezone.utc)
    outcome = wm.apply_event(wm.Event.register("2001:db8::1"), at, store.repo)
    (back,) = store.repo.all_workers()
    assert back == outcome.worker
    assert back.ip == "2001:db8::1"
    with store.admin.engine.connect() as conn:
        conn.exec_driver_sql(f'SET search_path TO "{store.admin.mapping.schema}"')
        stored = conn.exec_driver_sql("SELECT first_seen, addr::text FROM machines").one()
    assert stored[0] == at
    assert stored[1] == "2001:db8::1/128"


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mysql"])
def test_integer_ids_on_the_library_own_tables_replay_like_memory(
    open_store: Callable[..., Store], dialect: str, driver: str, tmp_path: Any
) -> None:
    """Integer worker and assignment ids (the library creates BIGINT columns for them)."""
    url = f"sqlite:///{tmp_path / 'int.db'}" if dialect == "sqlite" else server(dialect)
    mapping = DEFAULT_MAPPING.with_table_prefix(process_prefix() + "int_").evolve(
        worker_types={"id": "integer"}, assignment_types={"id": "integer"}
    )

    def counter() -> Callable[[], str]:
        ids = itertools.count(1)
        return lambda: str(next(ids))

    records = _integer_assignments("note-three-workers.jsonl")
    expected = _replay(wm.InMemoryWorkerRepository(id_factory=counter()), records)
    store = open_store(driver, url, mapping=mapping, id_factory=counter())
    store.call("drop_schema")
    store.call("create_schema")
    try:
        assert _replay(store.repo, records) == expected
        with store.admin.engine.connect() as conn:
            ids = conn.execute(sa.text(f"SELECT id FROM {mapping.workers_table}")).scalars()
            assert all(isinstance(i, int) for i in ids)
    finally:
        store.call("drop_schema")
