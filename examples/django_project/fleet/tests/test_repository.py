"""The Django repository beyond the kit: the schema is the SQL store's, both stores share it,
transactions (owned, inside ATOMIC_REQUESTS / ``atomic()``), retries, faults and the clock.

Each test runs on SQLite in memory (the ``sqlite`` database) and, when
``WORKERMATCH_TEST_POSTGRESQL_URL`` is set, on PostgreSQL (``default``); PostgreSQL-only
tests skip without it, with a reason that says so.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import OperationalError, connections, transaction

import workermatch as wm
from workermatch.contrib.django import DjangoWorkerRepository, RetryPolicy
from workermatch.contrib.django.testing import close_thread_connection, empty_tables

from . import NO_SERVER, on_postgresql

T0 = datetime(2025, 11, 6, 10, 0, 1, tzinfo=timezone.utc)
PROJECT = Path(__file__).resolve().parents[2]

postgresql_only = pytest.mark.skipif(not on_postgresql(), reason=NO_SERVER)


def on(alias: str) -> pytest.MarkDecorator:
    """Transactional access to database ``alias`` (pytest-django)."""
    return pytest.mark.django_db(transaction=True, databases=[alias])


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite", marks=on("sqlite")),
        pytest.param("default", id="postgresql", marks=[postgresql_only, on("default")]),
    ]
)
def using(request: pytest.FixtureRequest) -> str:
    """A database alias, its workermatch tables empty."""
    alias: str = request.param
    empty_tables(alias)
    return alias


@pytest.fixture(params=[pytest.param("default", marks=[postgresql_only, on("default")])])
def postgresql(request: pytest.FixtureRequest) -> str:
    """PostgreSQL's alias (``default``), its workermatch tables empty; skips without a server."""
    alias: str = request.param
    empty_tables(alias)
    return alias


def conflict(using: str) -> BaseException:
    """What Django raises when the database reports a conflict: a serialisation failure on
    PostgreSQL, a locked database on SQLite (the driver's exception chained)."""
    if connections[using].vendor == "postgresql":
        import psycopg.errors

        driver: BaseException = psycopg.errors.SerializationFailure("could not serialize access")
    else:
        driver = sqlite3.OperationalError("database is locked")
    error = OperationalError(str(driver))
    error.__cause__ = driver
    return error


def row(worker_id: str, ip: str, when: datetime = T0) -> wm.Worker:
    return wm.Worker(id=worker_id, ip=ip, created_at=when, last_seen=when)


def no_wait(max_attempts: int = 30) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, sleep=lambda _: None)


# -- the schema --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_the_shipped_migration_matches_the_models() -> None:
    call_command("makemigrations", "workermatch", check=True, dry_run=True, verbosity=0)


def sql_store(using: str) -> Any:
    """A ``workermatch.sql`` repository on the same database (the test database)."""
    import sqlalchemy as sa

    from workermatch.sql import SQLWorkerRepository, normalize_url

    name = connections[using].settings_dict["NAME"]
    if connections[using].vendor == "postgresql":
        url = normalize_url(os.environ["WORKERMATCH_TEST_POSTGRESQL_URL"]).set(database=name)
        return SQLWorkerRepository.from_url(url)
    # The in-memory test database is shared (cache=shared) between the connections of this
    # process that open it by name.
    engine = sa.create_engine(f"sqlite+pysqlite:///{name}&uri=true", poolclass=sa.pool.NullPool)
    return SQLWorkerRepository(engine)


def test_the_tables_are_the_sql_stores_default_schema(using: str) -> None:
    """Column names, types, nullability and indexes as ``workermatch.sql`` creates them (the
    one difference: Django's foreign keys are deferred, without ON DELETE SET NULL)."""
    import sqlalchemy as sa

    from workermatch.sql import DEFAULT_MAPPING
    from workermatch.sql._tables import build_tables

    repo = sql_store(using)
    try:
        repo.check_schema()  # the tables and columns exist; ids and hostnames compare exactly
        insp = sa.inspect(repo.engine)
        dialect = repo.engine.dialect
        wanted = build_tables(DEFAULT_MAPPING)
        for table in (wanted.workers, wanted.assignments):
            found = {c["name"]: c for c in insp.get_columns(table.name)}
            assert sorted(found) == sorted(c.name for c in table.columns)
            for column in table.columns:
                got = found[column.name]
                assert got["nullable"] == column.nullable, column.name
                expected_type = column.type.compile(dialect=dialect).lower()
                got_type = got["type"].compile(dialect=dialect).lower()
                if expected_type == "datetime":  # SQLite: Django's DATETIME is SQLAlchemy's
                    assert got_type in ("datetime", "timestamp"), column.name
                else:
                    assert got_type == expected_type, column.name
            indexes = {ix["name"]: ix["column_names"] for ix in insp.get_indexes(table.name)}
            expected_indexes = {
                str(ix.name): [c.name for c in ix.columns]
                for ix in wanted.indexes
                if ix.table is not None and ix.table.name == table.name
            }
            assert indexes == expected_indexes  # and no other (no LIKE index beside the key)
        repo.create_schema()  # finds nothing to add
        assert {ix["name"] for ix in insp.get_indexes(wanted.workers.name)} == {
            str(ix.name) for ix in wanted.indexes[:3]
        }
    finally:
        repo.close()
        repo.engine.dispose()


def test_the_django_and_sql_stores_decide_alike_on_shared_tables(using: str) -> None:
    """The design note's story, each request through one store or the other in turn, leaves
    the rows the in-memory store leaves: same times, same text, same decisions."""
    story = [
        (0.0, wm.Event.claim("157.193.240.188", "A1")),
        (20.0, wm.Event.heartbeat("157.193.240.190", hostname="UG-GNS0S34")),
        (20.4, wm.Event.gui_update("157.193.240.190", "overall_progress")),
        (50.0, wm.Event.heartbeat("157.193.240.190", hostname="UG-GNS0S34")),
        (80.0, wm.Event.gui_update("157.193.240.190", "finished")),
    ]
    ids = wm.sequential_ids()
    django_repo = DjangoWorkerRepository(using, id_factory=ids)
    sql_repo = sql_store(using)
    sql_repo._id_factory = ids
    memory = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    try:
        for i, (offset, event) in enumerate(story):
            now = T0 + timedelta(seconds=offset)
            repo = django_repo if i % 2 == 0 else sql_repo
            got = wm.apply_event(event, now, repo, create_assignments=True)
            expected = wm.apply_event(event, now, memory, create_assignments=True)
            assert (got.worker.id, got.rule) == (expected.worker.id, expected.rule)
        for repo in (django_repo, sql_repo):
            assert sorted(repo.all_workers(), key=lambda w: w.id) == list(memory.all_workers())
            assert list(repo.all_assignments()) == list(memory.all_assignments())
    finally:
        sql_repo.close()
        sql_repo.engine.dispose()


def test_times_are_stored_as_the_sql_store_stores_them(using: str) -> None:
    repo = DjangoWorkerRepository(using)
    when = datetime(2025, 1, 2, 3, 4, 5, 6000, tzinfo=timezone.utc)
    repo.write([wm.InsertWorker(worker=row("w1", "10.0.0.1", when))])
    sqlite = connections[using].vendor == "sqlite"
    with connections[using].cursor() as cursor:  # the text itself, not Django's conversion
        cursor.execute(
            "SELECT CAST(created_at AS TEXT), CAST(last_seen AS TEXT) FROM workermatch_workers"
            if sqlite
            else "SELECT created_at, last_seen FROM workermatch_workers"
        )
        stored = cursor.fetchone()
    if sqlite:
        assert stored == ("2025-01-02 03:04:05.006000", "2025-01-02 03:04:05.006000")
    else:  # timestamp(3) without time zone, holding UTC
        assert stored[0] == when.replace(tzinfo=None)
    assert repo.get_worker("w1") == row("w1", "10.0.0.1", when)


# -- the clock ---------------------------------------------------------------------------------


def test_the_clock_is_the_databases_and_decisions_use_it(using: str) -> None:
    repo = DjangoWorkerRepository(using)
    before = datetime.now(timezone.utc)
    now = repo.clock()
    assert now.tzinfo is timezone.utc
    assert abs(now - before) < timedelta(minutes=5)
    outcome = wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), None, repo)
    assert abs(outcome.worker.last_seen - now) < timedelta(minutes=5)
    assert repo.get_worker(outcome.worker.id) == outcome.worker


# -- transactions the repository owns ----------------------------------------------------------


def test_a_conflict_is_run_again_until_it_passes(using: str) -> None:
    repo = DjangoWorkerRepository(using, retry=no_wait())
    calls: list[int] = []

    def unit() -> str:
        calls.append(1)
        repo.write([wm.InsertWorker(worker=row(f"w{len(calls)}", "10.0.0.1"))])
        if len(calls) < 3:
            raise conflict(using)
        return "done"

    assert repo.atomically(unit) == "done"
    assert (len(calls), repo.retries) == (3, 2)
    assert [w.id for w in repo.all_workers()] == ["w3"]  # the failed runs left nothing


def test_the_runs_again_are_counted_by_workermatch_otel(using: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import workermatch.otel

    reader = InMemoryMetricReader()
    workermatch.otel.instrument(meter_provider=MeterProvider(metric_readers=[reader]))
    repo = DjangoWorkerRepository(using, retry=no_wait())
    calls: list[int] = []

    def unit() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise conflict(using)

    try:
        repo.atomically(unit)
    finally:
        workermatch.otel.uninstrument()
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        (dict(point.attributes or {}), point.value)  # type: ignore[union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "workermatch.storage.retries"
        for point in metric.data.data_points
    ]
    vendor = "sqlite" if using == "sqlite" else "postgresql"
    assert points == [({"db.system.name": vendor}, 2)]


def test_conflicts_that_do_not_stop_give_a_transient_error(using: str) -> None:
    pauses: list[float] = []
    policy = RetryPolicy(max_attempts=4, sleep=pauses.append, random=lambda: 1.0)
    repo = DjangoWorkerRepository(using, retry=policy)

    def unit() -> None:
        raise conflict(using)

    with pytest.raises(wm.TransientStorageError) as caught:
        repo.atomically(unit)
    assert caught.value.retryable is True
    assert caught.value.attempts == 4
    assert "gave up after 4 attempts" in str(caught.value)
    assert pauses == [0.005, 0.01, 0.02]  # jittered exponential back-off (jitter at its top)


def test_the_units_own_exception_goes_through_and_nothing_is_kept(using: str) -> None:
    repo = DjangoWorkerRepository(using)

    def unit() -> None:
        repo.write([wm.InsertWorker(worker=row("w1", "10.0.0.1"))])
        raise KeyError("mine")

    with pytest.raises(KeyError):
        repo.atomically(unit)
    assert repo.is_empty()


def test_a_constraint_violation_is_a_permanent_storage_error(using: str) -> None:
    repo = DjangoWorkerRepository(using)
    worker = row("w1", "10.0.0.1")
    repo.write([wm.InsertWorker(worker=worker)])
    with pytest.raises(wm.StorageError) as caught:
        repo.write(
            [
                wm.InsertWorker(worker=row("w2", "10.0.0.2")),
                wm.InsertWorker(worker=worker),
            ]
        )
    assert caught.value.retryable is False
    assert not isinstance(caught.value, wm.TransientStorageError)
    assert isinstance(caught.value.__cause__, connections[using].Database.IntegrityError)
    assert [w.id for w in repo.all_workers()] == ["w1"]


def test_a_real_serialisation_failure_is_retried_and_makes_one_worker(postgresql: str) -> None:
    """Two units read "no worker at this address" at the same time, then both insert one:
    PostgreSQL refuses one of them at SERIALIZABLE; run again, it finds the other's worker."""
    using = postgresql
    repo = DjangoWorkerRepository(using, id_factory=wm.sequential_ids(), retry=no_wait())
    both_read = threading.Barrier(2)
    errors: list[BaseException] = []

    def decide() -> None:
        runs = 0

        def unit() -> None:
            nonlocal runs
            runs += 1
            found = repo.live_workers_by_ip("10.0.0.1", T0)
            if runs == 1:
                both_read.wait(timeout=10)
            if not found:
                worker = row(repo.new_worker_id(), "10.0.0.1")
                repo.write([wm.InsertWorker(worker=worker)])

        try:
            repo.atomically(unit)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_thread_connection(using)

    threads = [threading.Thread(target=decide) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(repo.all_workers()) == 1
    assert repo.retries >= 1


def test_a_lost_connection_is_transient_and_the_next_request_reconnects(
    postgresql: str,
) -> None:
    using = postgresql
    repo = DjangoWorkerRepository(using)
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    import psycopg

    settings = connections[using].get_connection_params()
    with psycopg.connect(**settings, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(wm.TransientStorageError):
        wm.apply_event(wm.Event.heartbeat("10.0.0.1"), T0, repo)
    outcome = wm.apply_event(wm.Event.heartbeat("10.0.0.1"), T0, repo)
    assert repo.all_workers() == [outcome.worker]


# -- inside an outer transaction (ATOMIC_REQUESTS, atomic(), TestCase) --------------------------


def test_inside_a_read_committed_transaction_a_decision_is_refused(postgresql: str) -> None:
    using = postgresql
    repo = DjangoWorkerRepository(using)
    with pytest.raises(wm.StorageError) as caught, transaction.atomic(using=using):
        wm.apply_event(wm.Event.heartbeat("10.0.0.1"), T0, repo)
    assert caught.value.retryable is False
    assert "non_atomic_requests" in str(caught.value)
    assert "'read committed'" in str(caught.value)
    assert repo.is_empty()
    # Plain reads and writes are not decisions: they run in the caller's transaction.
    with transaction.atomic(using=using):
        repo.write([wm.InsertWorker(worker=row("w1", "10.0.0.1"))])
        assert [w.id for w in repo.all_workers()] == ["w1"]


def serializable(using: str) -> None:
    """Make the transaction just opened SERIALIZABLE (its first statement)."""
    if connections[using].vendor == "postgresql":
        with connections[using].cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")


def test_inside_a_serializable_transaction_a_decision_is_a_savepoint(using: str) -> None:
    repo = DjangoWorkerRepository(using, id_factory=wm.sequential_ids())

    def failing() -> None:
        repo.write([wm.InsertWorker(worker=row("w9", "10.0.0.9"))])
        raise KeyError("mine")

    with transaction.atomic(using=using):
        serializable(using)
        first = wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), T0, repo)
        with pytest.raises(KeyError):  # a unit that fails is undone; the outer one goes on
            repo.atomically(failing)
        again = wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), T0, repo)
    assert first.worker.id == again.worker.id == "w1"
    assert [w.id for w in repo.all_workers()] == ["w1"]


def test_inside_an_outer_transaction_a_conflict_is_not_retried(using: str) -> None:
    repo = DjangoWorkerRepository(using, retry=no_wait())
    calls: list[int] = []

    def unit() -> None:
        calls.append(1)
        raise conflict(using)

    with transaction.atomic(using=using):
        serializable(using)
        with pytest.raises(wm.TransientStorageError) as caught:
            repo.atomically(unit)
    assert calls == [1]
    assert caught.value.attempts == 1
    assert "retry the whole request" in str(caught.value)
    assert repo.retries == 0


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"using": "nowhere"}, "using"),
        ({"using": 3}, "using"),
        ({"retry": 3}, "retry"),
    ],
)
def test_bad_arguments_are_refused(args: dict[str, Any], field: str) -> None:
    with pytest.raises(wm.InvalidInput) as caught:
        DjangoWorkerRepository(**args)
    assert caught.value.field == field


# -- manage.py test ----------------------------------------------------------------------------


def test_manage_py_test_runs_the_kit() -> None:
    """Django's own test runner runs the kit's mixin (two of its tests, to stay quick)."""
    env = {k: v for k, v in os.environ.items() if k != "WORKERMATCH_TEST_POSTGRESQL_URL"}
    kit = "fleet.tests.test_kit.KitOnSQLiteTests"
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "test",
            "--noinput",
            f"{kit}.test_atomically_returns_the_result",
            f"{kit}.test_atomically_serialises_concurrent_units",
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Ran 2 tests" in result.stderr
    assert not (PROJECT / "db.sqlite3").exists()  # the test database is in memory
