"""The SQL repository as a user meets it: URLs, schema, mappings, time, the Prisma tables."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

import workermatch as wm
from _stores import SQL_STORE_IDS, StoreFactory
from _times import T0
from workermatch.sql import (
    DEFAULT_MAPPING,
    PRISMA_MAPPING,
    SQLWorkerRepository,
    TableMapping,
    normalize_url,
    schema_ddl,
)

sql_stores = pytest.mark.parametrize("store_factory", SQL_STORE_IDS, indirect=True)


def test_the_package_root_never_imports_sqlalchemy() -> None:
    code = "import sys, workermatch; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://user@db.example:5432/app", "postgresql+psycopg"),
        ("postgres://user@db.example/app", "postgresql+psycopg"),
        ("mysql://root@127.0.0.1:3306/app", "mysql+pymysql"),
        ("mariadb://root@127.0.0.1/app", "mariadb+pymysql"),
        ("postgresql+psycopg2://user@db/app", "postgresql+psycopg2"),
        ("sqlite:///workers.db", "sqlite"),
        ("sqlite://", "sqlite"),
    ],
)
def test_plain_schemes_get_the_supported_driver(url: str, driver: str) -> None:
    assert normalize_url(url).drivername == driver


@pytest.mark.parametrize("url", ["oracle://scott@db/orcl", "not a url", ""])
def test_an_unsupported_or_malformed_url_is_invalid_input(url: str) -> None:
    with pytest.raises(wm.InvalidInput):
        SQLWorkerRepository.from_url(url)


def test_a_memory_database_is_private_and_works_from_threads() -> None:
    import threading

    a = SQLWorkerRepository.from_url("sqlite://")
    b = SQLWorkerRepository.from_url("sqlite://")
    a.create_schema()
    b.create_schema()
    errors: list[BaseException] = []

    def beat(i: int) -> None:
        try:
            wm.apply_event(wm.Event.heartbeat(f"10.0.0.{i % 4 + 1}"), T0, a)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=beat, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(a.all_workers()) == 4
    assert b.is_empty()
    a.close()
    b.close()


def test_the_repository_satisfies_the_protocol() -> None:
    with SQLWorkerRepository.from_url("sqlite://") as repo:
        assert isinstance(repo, wm.WorkerRepository)


@sql_stores
def test_schema_calls_are_idempotent_and_reset_empties_the_store(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    repo.create_schema()
    repo.create_schema()
    assert repo.is_empty()
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    assert not repo.is_empty()
    repo.reset()
    assert repo.is_empty()
    assert repo.all_assignments() == []


@sql_stores
def test_times_round_trip_exactly_at_millisecond_resolution(store_factory: StoreFactory) -> None:
    repo = store_factory()
    created = datetime(2025, 12, 31, 23, 59, 59, 999_000, tzinfo=timezone.utc)
    seen = datetime(2026, 1, 1, 0, 0, 0, 1_000, tzinfo=timezone(timedelta(hours=2)))
    worker = wm.Worker(id="w1", ip="2001:db8::1", created_at=created, last_seen=seen, ended_at=seen)
    repo.write([wm.InsertWorker(worker=worker)])
    (back,) = repo.all_workers()
    assert back == worker
    assert back.last_seen.tzinfo is timezone.utc
    assert back.last_seen.microsecond == 1_000


@pytest.mark.parametrize("store_factory", ["memory", *SQL_STORE_IDS], indirect=True)
def test_time_windows_are_inclusive_to_the_millisecond(store_factory: StoreFactory) -> None:
    repo = store_factory()
    seen = T0 + timedelta(milliseconds=7)
    repo.write(
        [wm.InsertWorker(worker=wm.Worker(id="w1", ip="10.0.0.1", created_at=T0, last_seen=seen))]
    )
    assert [w.id for w in repo.live_workers_by_ip("10.0.0.1", seen)] == ["w1"]
    assert repo.live_workers_by_ip("10.0.0.1", seen + timedelta(milliseconds=1)) == []
    assert [w.id for w in repo.unflagged_workers_seen_before(seen + timedelta(milliseconds=1))] == [
        "w1"
    ]
    assert repo.unflagged_workers_seen_before(seen) == []


def test_status_values_and_column_names_follow_the_mapping(tmp_path: object) -> None:
    mapping = TableMapping(
        workers_table="fleet",
        assignments_table="jobs",
        worker_columns={"ip": "addr", "last_seen": "seen"},
        assignment_columns={"worker_id": "holder"},
        worker_statuses={"IDLE": "idle", "RUNNING": "busy", "ERROR": "broken", "OFFLINE": "off"},
        assignment_statuses={"RUNNING": "running", "COMPLETED": "done"},
    )
    with SQLWorkerRepository.from_url("sqlite://", mapping=mapping) as repo:
        repo.create_schema()
        wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
        with repo.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT addr, status FROM fleet").all() == [
                ("10.0.0.1", "busy")
            ]
            assert conn.exec_driver_sql("SELECT id, status FROM jobs").all() == [("A1", "running")]
        (worker,) = repo.all_workers()
        assert worker.status is wm.WorkerStatus.RUNNING


@pytest.mark.parametrize(
    "changes",
    [
        {"worker_columns": {"colour": "x"}},
        {"worker_statuses": {"IDLE": "same", "RUNNING": "same"}},
        {"assignment_statuses": {"DONE": "x"}},
        {"added_worker_columns": ("ip",)},
    ],
)
def test_a_bad_mapping_is_invalid_input(changes: dict[str, object]) -> None:
    with pytest.raises(wm.InvalidInput):
        DEFAULT_MAPPING.evolve(**changes)


def test_a_mapping_onto_missing_tables_is_a_storage_error() -> None:
    with (
        SQLWorkerRepository.from_url("sqlite://", mapping=PRISMA_MAPPING) as repo,
        pytest.raises(wm.StorageError, match="does not exist"),
    ):
        repo.create_schema()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mysql"])
def test_the_documented_ddl_makes_a_working_store(dialect: str, tmp_path: object) -> None:
    import os

    from _stores import process_prefix

    if dialect == "sqlite":
        url = "sqlite://"
    else:
        url = os.environ.get(f"WORKERMATCH_TEST_{dialect.upper()}_URL", "")
        if not url:
            pytest.skip(f"{dialect} needs a database server")
    mapping = DEFAULT_MAPPING.with_table_prefix(process_prefix() + "ddl_")
    with SQLWorkerRepository.from_url(url, mapping=mapping) as repo:
        repo.drop_schema()
        with repo.engine.begin() as conn:
            for statement in schema_ddl(dialect, mapping).split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
        try:
            repo.create_schema()  # finds everything in place
            wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
            assert [w.ip for w in repo.all_workers()] == ["10.0.0.1"]
        finally:
            repo.drop_schema()


@pytest.mark.parametrize("store_factory", ["prisma"], indirect=True)
def test_the_prisma_tables_work_with_rows_the_dashboard_wrote(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    schema = repo.mapping.schema
    with repo.engine.begin() as conn:
        conn.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')
        # What the real server's claim endpoint writes (Prisma: updatedAt set by the client).
        conn.exec_driver_sql(
            """INSERT INTO workers (id, "ipAddress", status, "lastSeen", "createdAt",
            "updatedAt") VALUES ('legacy-1', '157.193.240.188', 'RUNNING',
            '2025-11-06 10:00:00', '2025-11-06 10:00:00', '2025-11-06 10:00:00')"""
        )
        conn.exec_driver_sql(
            """INSERT INTO assignments (id, "workerId", "superStudyId", status, index,
            "updatedAt") VALUES ('A1', 'legacy-1', 'S1', 'RUNNING', 0, now())"""
        )
    beat = wm.apply_event(
        wm.Event.heartbeat("157.193.240.190", hostname="UG-GNS0S34"),
        T0 + timedelta(seconds=20),
        repo,
    )
    assert (beat.worker.id, beat.rule) == ("legacy-1", wm.Rule.RECENT_ORPHAN)
    done = wm.apply_event(
        wm.Event.gui_update("157.193.240.190", "finished"), T0 + timedelta(seconds=60), repo
    )
    assert done.ended == ("A1",)
    claim = wm.apply_event(
        wm.Event.claim("157.193.240.190", "A2"),
        T0 + timedelta(seconds=120),
        repo,
        create_assignments=True,
    )
    with repo.engine.connect() as conn:
        conn.exec_driver_sql(f'SET search_path TO "{schema}"')
        rows = conn.exec_driver_sql(
            """SELECT id, status::text, "superStudyId", "completedAt" IS NOT NULL,
            "updatedAt" IS NOT NULL FROM assignments ORDER BY id"""
        ).all()
        assert rows == [
            ("A1", "COMPLETED", "S1", True, True),
            ("A2", "RUNNING", "workermatch", False, True),
        ]
        workers = conn.exec_driver_sql(
            """SELECT id, hostname, status::text, "wmAssignmentId", "wmSessionEndedAt" IS NOT NULL
            FROM workers ORDER BY "createdAt", id"""
        ).all()
        assert workers == [
            ("legacy-1", "ug-gns0s34", "IDLE", None, True),
            (claim.worker.id, None, "RUNNING", "A2", False),
        ]


@pytest.mark.parametrize("store_factory", ["postgresql", "prisma"], indirect=True)
def test_postgresql_rule_queries_use_the_indexes(store_factory: StoreFactory) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    w = repo.tables.w
    since = T0 - timedelta(minutes=5)
    # On someone else's tables (prisma) the hostname is compared as lower(hostname).
    host = repo.tables.hostname_key
    assert repo.tables.folds_hostnames is (
        repo.mapping is not None and not repo.mapping.owns_tables
    )
    queries = {
        "exact_ip": sa.select(w["id"]).where(w["ip"] == "10.0.0.1", w["last_seen"] >= since),
        "hostname": sa.select(w["id"]).where(host == "box", w["last_seen"] >= since),
        "recent_orphan": sa.select(w["id"]).where(
            w["status"] == "RUNNING", w["created_at"] >= since
        ),
    }
    with repo.engine.connect() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for name, stmt in queries.items():
            compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
            assert "Index" in plan, (name, plan)


# Ids and hostnames that differ only in case, accents, width or Unicode normalisation: the
# same text on Python's side is the same text in every store, and different text is different.
LOOKALIKE_IDS = [
    "a1",
    "A1",
    "job-e",
    "job-\u00e9",
    "job-e\u0301",
    "job-s",
    "job-\u00df",
    "job-ss",
    "\uff41\uff11",
]
LOOKALIKE_HOSTS = ["gpu-e", "gpu-\u00e9", "gpu-e\u0301", "gpu-\uff45", "gpu-ss", "gpu-\u00df"]


@pytest.mark.parametrize("store_factory", ["memory", *SQL_STORE_IDS], indirect=True)
def test_lookalike_ids_and_hostnames_are_different_in_every_store(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory(wm.sequential_ids("W"))
    for i, aid in enumerate(LOOKALIKE_IDS):
        outcome = wm.apply_event(
            wm.Event.claim(f"10.0.1.{i + 1}", aid), T0, repo, create_assignments=True
        )
        assert outcome.created, aid
    assert sorted(a.id for a in repo.all_assignments()) == sorted(LOOKALIKE_IDS)
    for aid in LOOKALIKE_IDS:
        found = repo.get_assignment(aid)
        assert found is not None
        assert found.id == aid
    # A worker-id hint in another case names no worker: the request matches by IP instead.
    (first,) = [w for w in repo.all_workers() if w.ip == "10.0.1.1"]
    assert repo.get_worker(first.id.lower()) is None
    for i, host in enumerate(LOOKALIKE_HOSTS):
        wm.apply_event(wm.Event.heartbeat(f"10.0.2.{i + 1}", hostname=host), T0, repo)
    since = T0 - timedelta(minutes=1)
    for i, host in enumerate(LOOKALIKE_HOSTS):
        live = repo.live_workers_by_hostname(host, since)
        assert [w.ip for w in live] == [f"10.0.2.{i + 1}"], host


def _lookalike_ddl(dialect: str, mapping: TableMapping, collation: str) -> list[str]:
    text = schema_ddl(dialect, mapping)
    if dialect == "mysql":
        text = text.replace("utf8mb4_bin", collation)
    elif dialect == "postgresql":
        text = text.replace("id VARCHAR(255)", f'id VARCHAR(255) COLLATE "{collation}"', 1)
    else:
        text = text.replace("hostname VARCHAR(253)", f"hostname VARCHAR(253) COLLATE {collation}")
    return [s for s in text.split(";") if s.strip()]


@pytest.mark.parametrize(
    ("dialect", "collation", "column"),
    [
        ("sqlite", "NOCASE", "hostname"),
        ("postgresql", "wm_ci", "id"),
        ("mysql", "utf8mb4_general_ci", "id"),
        ("mysql", "utf8mb4_unicode_520_ci", "id"),
    ],
)
def test_a_collation_that_makes_two_ids_equal_is_refused(
    dialect: str, collation: str, column: str
) -> None:
    import os

    from _stores import process_prefix

    if dialect == "sqlite":
        url = "sqlite://"
    else:
        url = os.environ.get(f"WORKERMATCH_TEST_{dialect.upper()}_URL", "")
        if not url:
            pytest.skip(f"{dialect} needs a database server")
    prefix = process_prefix() + "coll_"
    mapping = DEFAULT_MAPPING.with_table_prefix(prefix)
    if dialect == "postgresql":
        collation = prefix + collation
    with SQLWorkerRepository.from_url(url, mapping=mapping) as repo:
        repo.drop_schema()
        with repo.engine.begin() as conn:
            if dialect == "postgresql":
                conn.exec_driver_sql(
                    f'CREATE COLLATION IF NOT EXISTS "{collation}" (provider = icu, '
                    "locale = 'und-u-ks-level2', deterministic = false)"
                )
            for statement in _lookalike_ddl(dialect, mapping, collation):
                conn.exec_driver_sql(statement)
        try:
            for check in (repo.create_schema, repo.check_schema):
                with pytest.raises(wm.StorageError) as info:
                    check()
                message = str(info.value)
                assert repr(column) in message
                assert repr(mapping.workers_table) in message
                assert collation in message
                assert info.value.retryable is False
        finally:
            repo.drop_schema()
            if dialect == "postgresql":
                with repo.engine.begin() as conn:
                    conn.exec_driver_sql(f'DROP COLLATION IF EXISTS "{collation}"')


@sql_stores
def test_the_library_schema_passes_its_own_check(store_factory: StoreFactory) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    repo.check_schema()


def test_sqlite_transfer_query_uses_the_ip_and_hostname_indexes(tmp_path: Any) -> None:
    """The transfer's "stale workers with this IP or hostname" query, as the repository sends
    it, is planned as two index lookups on SQLite, not a scan of every RUNNING worker."""
    repo = SQLWorkerRepository.from_url(f"sqlite:///{tmp_path / 'plan.db'}")
    repo.create_schema()
    # Many RUNNING workers on other addresses: what the status index would have to read.
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    for i in range(2, 60):
        wm.apply_event(wm.Event.claim(f"10.0.1.{i}", f"A{i}"), T0, repo, create_assignments=True)
    sent: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if "UNION" in statement:
            sent.append((statement, params))

    sa.event.listen(repo.engine, "before_cursor_execute", before)
    try:
        later = T0 + timedelta(minutes=10)
        found = repo.stale_running_workers("10.0.0.1", "box", later)
        assert [w.ip for w in found] == ["10.0.0.1"]
        repo.atomically(lambda: repo.stale_running_workers("10.0.0.1", "box", later))
    finally:
        sa.event.remove(repo.engine, "before_cursor_execute", before)
    assert len(sent) == 2  # outside a unit's cache, and inside one (joined with assignments)
    ip_idx, host_idx = (ix.name for ix in repo.tables.indexes[:2])
    with repo.engine.connect() as conn:
        for statement, params in sent:
            plan = "\n".join(
                str(row[-1])
                for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
            )
            workers = repo.tables.workers.name
            assert f"SEARCH {workers} USING INDEX {ip_idx} (ip=?)" in plan, plan
            assert f"SEARCH {workers} USING INDEX {host_idx} (hostname=?)" in plan, plan
            assert f"SCAN {workers}" not in plan, plan
    repo.close()


@pytest.mark.parametrize("store_id", ["postgresql", "mysql"])
def test_server_processes_that_start_together_create_the_schema_once(store_id: str) -> None:
    """Several server processes starting at once all call ``create_schema()``: each one waits
    for the others instead of failing on what they just created."""
    import threading

    from _stores import process_prefix, skip_without_server

    url = skip_without_server(store_id)
    mapping = DEFAULT_MAPPING.with_table_prefix(process_prefix() + "cs_")
    repos = [SQLWorkerRepository.from_url(url, mapping=mapping) for _ in range(4)]
    repos[0].drop_schema()
    start = threading.Barrier(len(repos))
    failures: list[BaseException] = []

    def create(repo: SQLWorkerRepository) -> None:
        start.wait()
        try:
            repo.create_schema()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=create, args=(r,)) for r in repos]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        repos[0].check_schema()
    finally:
        repos[0].drop_schema()
        for r in repos:
            r.close()
