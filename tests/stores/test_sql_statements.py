"""Efficiency by count, not time: the statements one decision sends to the database.

Counted: every SQL statement the repository executes through its SQLAlchemy engine (the
``before_cursor_execute`` event), i.e. every round trip that reads or writes rows.  Not counted:
transaction control (``BEGIN``, ``COMMIT``, ``ROLLBACK``; SQLite's ``BEGIN IMMEDIATE`` is sent
as a statement and is excluded by name), which every transaction needs, a hand-written endpoint
included.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import workermatch as wm
from _fleet import worker_and_assignment
from _stores import SQL_STORE_IDS, StoreFactory
from _times import T0
from workermatch.sql import SQLWorkerRepository

pytestmark = pytest.mark.parametrize("store_factory", SQL_STORE_IDS, indirect=True)


@contextmanager
def counting(repo: wm.WorkerRepository) -> Iterator[list[str]]:
    assert isinstance(repo, SQLWorkerRepository)
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.split(None, 1)[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            statements.append(statement)

    sa.event.listen(repo.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        sa.event.remove(repo.engine, "before_cursor_execute", before)


def _fleet(repo: wm.WorkerRepository) -> None:
    """A few machines, one of them on the IP under test, with a running assignment."""
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), T0, repo)
    for i in range(2, 6):
        wm.apply_event(wm.Event.heartbeat(f"10.0.0.{i}", hostname=f"m{i}"), T0, repo)


@pytest.mark.parametrize(
    "event",
    [
        wm.Event.heartbeat("10.0.0.1", hostname="box"),
        wm.Event.heartbeat("10.0.0.1"),
        wm.Event.gui_update("10.0.0.1", "overall_progress"),
    ],
    ids=["heartbeat", "heartbeat-no-hostname", "gui_update"],
)
def test_a_request_matching_by_exact_ip_costs_two_statements(
    store_factory: StoreFactory, event: wm.Event
) -> None:
    repo = store_factory()
    _fleet(repo)
    with counting(repo) as statements:
        outcome = wm.apply_event(event, T0 + timedelta(seconds=30), repo)
    assert outcome.rule is wm.Rule.EXACT_IP
    assert isinstance(repo, SQLWorkerRepository)
    # PostgreSQL: the hot statement (docs/stores.md, "The hot request") alone.
    hot = repo.engine.dialect.name == "postgresql"
    assert [s.split(None, 1)[0].upper() for s in statements] == (
        ["UPDATE"] if hot else ["SELECT", "UPDATE"]
    )


def test_a_finished_message_costs_three_statements(store_factory: StoreFactory) -> None:
    repo = store_factory()
    _fleet(repo)
    with counting(repo) as statements:
        outcome = wm.apply_event(
            wm.Event.gui_update("10.0.0.1", "finished"), T0 + timedelta(seconds=30), repo
        )
    assert outcome.ended == ("A1",)
    # one SELECT (workers by IP, with their RUNNING assignments), two UPDATEs
    assert len(statements) == 3, statements


def _is_lock(statement: str) -> bool:
    text = statement.lower()
    return any(f in text for f in ("pg_advisory", "get_lock(", "release_lock("))


def test_a_claim_takes_its_request_locks_before_its_first_read_and_gives_them_back_after(
    store_factory: StoreFactory,
) -> None:
    """A claim creates a running worker, so it takes its address's lock and the recent running
    workers' lock before it begins, and gives them back after it ends (SQLite: none)."""
    repo = store_factory()
    with counting(repo) as statements:
        wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    locks = [i for i, s in enumerate(statements) if _is_lock(s)]
    if repo.engine.dialect.name == "sqlite":  # type: ignore[attr-defined]
        assert locks == []
        return
    assert locks == [0, len(statements) - 1], statements
    assert statements[0].count("(") >= 2  # two locks, taken in one statement


def test_a_request_that_reaches_the_recent_orphan_rule_runs_again_holding_the_locks(
    store_factory: StoreFactory,
) -> None:
    """A heartbeat from a new address is about to read the recent running workers: its unit
    stops before that read and runs again from the start holding its locks (``reruns``); the
    decision is the one it would have made."""
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    reference = wm.InMemoryWorkerRepository()
    for store in (repo, reference):
        wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, store, create_assignments=True)
    later = T0 + timedelta(seconds=40)
    event = wm.Event.heartbeat("10.0.0.9", hostname="box")
    with counting(repo) as statements:
        outcome = wm.apply_event(event, later, repo)
    expected = wm.apply_event(event, later, reference)
    assert (outcome.rule, outcome.created) == (expected.rule, expected.created)
    assert outcome.rule is wm.Rule.RECENT_ORPHAN
    locks = [s for s in statements if _is_lock(s)]
    if repo.engine.dialect.name == "sqlite":
        assert (repo.reruns, locks) == (0, [])
    else:
        assert repo.reruns == 1
        assert len(locks) == 2  # taken once (address, hostname, running workers), given back


# -- statements and round trips per kind of request ------------------------------------------


class Traffic:
    """What one decision sends to the database, counted from SQLAlchemy's events.

    ``statements``: every statement the repository executes (``before_cursor_execute``), the
    request locks included, transaction control excluded.  ``round_trips``: what goes over the
    connection on a server, one exchange each: the statements; ``BEGIN`` (PostgreSQL: psycopg
    sends it before the first statement of a transaction, which is how it is detected here;
    PyMySQL sends none, InnoDB begins the transaction with the first statement); ``COMMIT``
    and ``ROLLBACK`` (the engine's events); the pool's check of a connection at checkout
    (``pool_pre_ping``); and on MariaDB the ``ROLLBACK`` PyMySQL sends when the pool resets a
    connection given back (psycopg sends nothing for a connection with no transaction open).
    SQLite runs in the process: only its statements are counted.
    """

    def __init__(self, repo: SQLWorkerRepository) -> None:
        self.engine = repo.engine
        self.backend = self.engine.dialect.name
        self.log: list[str] = []

    def __enter__(self) -> Traffic:
        for target, name, fn in self._listeners():
            sa.event.listen(target, name, fn)
        # The pool's check of a connection (``pool_pre_ping``, or the repository's own check
        # at checkout, which the hot statement skips): every ping the dialect sends.
        dialect: Any = self.engine.dialect
        ping = dialect.do_ping

        def counted(dbapi_conn: Any) -> bool:
            self.log.append("ping")
            return bool(ping(dbapi_conn))

        dialect.do_ping = counted
        return self

    def __exit__(self, *exc: object) -> None:
        for target, name, fn in self._listeners():
            sa.event.remove(target, name, fn)
        del self.engine.dialect.do_ping

    def _listeners(self) -> list[tuple[Any, str, Any]]:
        e = self.engine
        return [
            (e, "before_cursor_execute", self._statement),
            (e, "commit", self._commit),
            (e, "rollback", self._rollback),
            (e.pool, "reset", self._reset),
        ]

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        word = statement.split(None, 1)[0].upper()
        if word in ("BEGIN", "COMMIT", "ROLLBACK"):
            self.log.append(word)  # SQLite's BEGIN IMMEDIATE
            return
        if self.backend == "postgresql":
            import psycopg

            dbapi = conn.connection.dbapi_connection
            idle = dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            if idle and not dbapi.autocommit:
                self.log.append("BEGIN")
        self.log.append(word)

    def _commit(self, conn: Any) -> None:
        self.log.append("COMMIT")

    def _rollback(self, conn: Any) -> None:
        self.log.append("ROLLBACK")

    def _reset(self, dbapi_conn: Any, record: Any, state: Any) -> None:
        if self.backend in ("mysql", "mariadb") and not state.transaction_was_reset:
            self.log.append("ROLLBACK")

    @property
    def statements(self) -> int:
        return sum(1 for x in self.log if x not in ("BEGIN", "COMMIT", "ROLLBACK", "ping"))

    @property
    def round_trips(self) -> int:
        return len(self.log)


def _seed_kinds(repo: wm.WorkerRepository) -> None:
    # A machine running A1 at 10.0.0.1, heard from with its hostname; a machine whose claim of
    # A7 at 10.0.0.7 went silent (its worker is stale ten minutes later).
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), T0, repo)
    wm.apply_event(wm.Event.claim("10.0.0.7", "A7"), T0, repo, create_assignments=True)
    wm.apply_event(wm.Event.heartbeat("10.0.0.7", hostname="seven"), T0, repo)


SOON = T0 + timedelta(seconds=5)
LATER = T0 + timedelta(minutes=10)

#: The requests whose traffic is fixed: (event, when, create_assignments, what it does).
KINDS: dict[str, tuple[wm.Event, datetime, bool, str]] = {
    "hot-heartbeat": (wm.Event.heartbeat("10.0.0.1", hostname="box"), SOON, False, "exact_ip"),
    "update": (wm.Event.gui_update("10.0.0.1", "overall_progress"), SOON, False, "exact_ip"),
    "finished": (wm.Event.gui_update("10.0.0.1", "finished"), SOON, False, "ended"),
    "claim-creates": (wm.Event.claim("10.0.0.2", "A2"), SOON, True, "created"),
    "create": (wm.Event.heartbeat("10.0.0.3", hostname="new"), SOON, False, "created"),
    "create-with-transfer": (
        wm.Event.heartbeat("10.0.0.9", hostname="seven"),
        LATER,
        False,
        "transferred",
    ),
}

#: Statements per kind: SQLite (no request locks), PostgreSQL and MariaDB (the request locks:
#: take and give back; a request that reaches rule 3 first runs without them, stops before that
#: read, and runs again holding them, which repeats its first read).  PostgreSQL: a heartbeat or
#: an update that may be hot tries the hot statement first (one UPDATE); when it declines (no
#: live worker at the address), the full unit follows.
STATEMENTS = {
    "hot-heartbeat": (2, 1, 2),
    "update": (2, 1, 2),
    "finished": (3, 3, 3),
    "claim-creates": (4, 6, 6),
    "create": (5, 9, 8),
    "create-with-transfer": (7, 11, 10),
}

#: Round trips per kind on the servers, with from_url's engine (pool_pre_ping=True):
#: (PostgreSQL, MariaDB).  The hot path on PostgreSQL: the hot statement alone (its connection
#: is not checked: a dead one hands the request to the full unit); on MariaDB: the check,
#: SELECT, UPDATE, COMMIT, and the ROLLBACK of the pool's reset.  A request that reaches rule 3
#: pays its first run (check, BEGIN, SELECT, COMMIT) before the locked one; on PostgreSQL a
#: heartbeat from an address without a live worker pays the declined hot statement first.
ROUND_TRIPS = {
    "hot-heartbeat": (1, 5),
    "update": (1, 5),
    "finished": (6, 6),
    "claim-creates": (9, 9),
    "create": (15, 14),
    "create-with-transfer": (17, 16),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_of_request_sends_a_fixed_number_of_statements_and_round_trips(
    store_factory: StoreFactory, kind: str
) -> None:
    """Counts are behaviour, not timing: a change that adds a statement or a round trip to a
    kind of request shows here (docs/stores.md, "Efficiency: statements and indexes")."""
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    _seed_kinds(repo)
    event, when, create, what = KINDS[kind]
    with Traffic(repo) as traffic:
        outcome = wm.apply_event(event, when, repo, create_assignments=create)
    if what == "exact_ip":
        assert (outcome.rule, outcome.created) == (wm.Rule.EXACT_IP, False)
    elif what == "ended":
        assert outcome.ended == ("A1",)
    elif what == "transferred":
        assert (outcome.created, outcome.transferred) == (True, ("A7",))
    else:
        assert (outcome.created, outcome.transferred) == (True, ())
    column = {"sqlite": 0, "postgresql": 1}.get(repo.engine.dialect.name, 2)
    server = column > 0
    assert traffic.statements == STATEMENTS[kind][column], traffic.log
    if repo.engine.dialect.name == "postgresql":
        assert traffic.round_trips == ROUND_TRIPS[kind][0], traffic.log
    elif server:
        assert traffic.round_trips == ROUND_TRIPS[kind][1], traffic.log


# -- PostgreSQL: no statement left to a generic plan that scans ----------------------------------


def _generic_plan(conn: Any, statement: str, params: dict[str, Any]) -> str:
    """The generic plan of ``statement`` (psycopg's ``%(name)s`` placeholders): the plan a
    server-side prepared statement runs once PostgreSQL's plan cache prefers it (``PREPARE``,
    then ``EXPLAIN EXECUTE`` under ``plan_cache_mode = force_generic_plan``; PostgreSQL 12 and
    newer)."""
    import re

    from psycopg import sql

    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    raw = conn.connection.dbapi_connection
    conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.exec_driver_sql("PREPARE wm_generic AS " + re.sub(r"%\((\w+)\)s", number, statement))
    args = ", ".join(sql.Literal(params[name]).as_string(raw) for name in order)
    rows = conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) EXECUTE wm_generic({args})").all()
    conn.exec_driver_sql("DEALLOCATE wm_generic")
    return "\n".join(str(r[0]) for r in rows)


def test_no_rule_query_is_left_to_a_generic_plan_that_scans_on_postgresql(
    store_factory: StoreFactory,
) -> None:
    """psycopg prepares a statement on the server at its fifth execution, and PostgreSQL may
    then run its generic plan, made without the parameters' values.  On a fleet large enough
    for indexes to pay (2,000 workers, half of them running, analysed), every generic plan of
    the queries a decision sends finds its rows through an index: no ``Seq Scan``.  (With a
    plain join, the recent running workers' generic plan was a hash join over every RUNNING
    assignment.)"""
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    if repo.engine.dialect.name != "postgresql" or not repo.mapping.owns_tables:
        pytest.skip("generic plans of prepared statements: PostgreSQL, the library's tables")
    t = repo.tables
    workers, assignments = [], []
    for i in range(2000):
        w, a = worker_and_assignment(
            f"w{i}",
            f"a{i}",
            ip=f"10.1.{i // 250}.{i % 250}",
            hostname=f"host-{i}",
            created=T0 - timedelta(hours=1 + i / 100),
            seen=T0 - timedelta(seconds=i % 600),
            running=i % 2 == 1,
        )
        workers.append(repo._worker_values(w))
        if a is not None:
            assignments.append(repo._assignment_values(a))
    with repo.engine.begin() as conn:
        conn.execute(sa.insert(t.workers), workers)
        conn.execute(sa.insert(t.assignments), assignments)
    with repo.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in (t.workers, t.assignments):
            conn.exec_driver_sql(f"ANALYZE {table.fullname}")
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    captured: dict[str, dict[str, Any]] = {}

    def before(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "pg_advisory" not in statement:
            captured.setdefault(statement, params)

    with counting(repo):
        sa.event.listen(repo.engine, "before_cursor_execute", before)
        try:
            later = T0 + timedelta(seconds=40)
            wm.apply_event(wm.Event.heartbeat("10.1.0.7", hostname="host-7"), later, repo)
            wm.apply_event(wm.Event.heartbeat("10.9.0.1", hostname="x"), later, repo)
            wm.apply_event(wm.Event.claim("10.1.0.9", "a9"), later, repo)
        finally:
            sa.event.remove(repo.engine, "before_cursor_execute", before)
    assert len(captured) >= 5, list(captured)
    with repo.engine.connect() as conn:
        for statement, params in captured.items():
            plan = _generic_plan(conn, statement, params)
            assert "Seq Scan" not in plan, f"{statement}\n{plan}"
            assert "Index" in plan, f"{statement}\n{plan}"
        conn.rollback()
