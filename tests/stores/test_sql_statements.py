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
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import workermatch as wm
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
    assert len(statements) <= 2, statements
    assert [s.split(None, 1)[0].upper() for s in statements] == ["SELECT", "UPDATE"]


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
