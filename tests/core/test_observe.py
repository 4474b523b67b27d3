"""Watching decisions: one log record per written decision, a warning on alerts, outcome hooks,
and signed worker tokens."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

import workermatch as wm

T0 = datetime(2025, 11, 6, 10, 0, 0, tzinfo=timezone.utc)


def two_machines_behind_one_address(repo: wm.WorkerRepository) -> list[wm.Outcome]:
    """Two claims at one address, then an update that could be either machine's, then a
    ``finished`` that could be either machine's: it is held, with an alert."""
    events = [
        wm.Event.claim("198.51.100.1", "A1"),
        wm.Event.claim("198.51.100.1", "A2"),
        wm.Event.gui_update("198.51.100.1", "overall_progress"),
        wm.Event.gui_update("198.51.100.1", "finished"),
    ]
    return [
        wm.apply_event(e, T0 + timedelta(seconds=i), repo, create_assignments=True)
        for i, e in enumerate(events)
    ]


def test_every_written_decision_is_one_debug_record_with_the_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="workermatch")
    outcomes = two_machines_behind_one_address(wm.InMemoryWorkerRepository())
    records = [r for r in caplog.records if r.name == "workermatch"]
    assert len(records) == len(outcomes)
    for record, outcome in zip(records, outcomes, strict=True):
        assert record.workermatch == outcome.to_dict()  # type: ignore[attr-defined]
    assert records[0].getMessage().startswith("created ")


def test_a_decision_that_raises_an_alert_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="workermatch")
    outcomes = two_machines_behind_one_address(wm.InMemoryWorkerRepository())
    assert outcomes[-1].alert is wm.Alert.END_HELD
    warnings = [r for r in caplog.records if r.name == "workermatch"]
    assert [r.getMessage().rsplit("(alert: ", 1)[-1] for r in warnings] == ["end_held)"]
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].workermatch["held"] == list(outcomes[-1].held)  # type: ignore[attr-defined]


def test_the_library_prints_nothing_unless_logging_is_configured() -> None:
    handlers = logging.getLogger("workermatch").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_a_hook_sees_every_outcome_until_it_is_removed() -> None:
    seen: list[wm.Outcome] = []
    remove = wm.add_outcome_hook(seen.append)
    try:
        outcomes = two_machines_behind_one_address(wm.InMemoryWorkerRepository())
    finally:
        remove()
    assert seen == outcomes
    two_machines_behind_one_address(wm.InMemoryWorkerRepository())
    assert len(seen) == len(outcomes)


def test_a_failing_hook_is_logged_and_the_request_still_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_: wm.Outcome) -> None:
        raise RuntimeError("dashboard down")

    remove = wm.add_outcome_hook(broken)
    try:
        repo = wm.InMemoryWorkerRepository()
        outcome = wm.apply_event(wm.Event.register("10.0.0.1"), T0, repo)
    finally:
        remove()
    assert repo.get_worker(outcome.worker.id) == outcome.worker
    assert any("an outcome hook failed" in r.getMessage() for r in caplog.records)


def test_a_refused_or_read_only_request_reports_nothing() -> None:
    seen: list[wm.Outcome] = []
    remove = wm.add_outcome_hook(seen.append)
    try:
        repo = wm.InMemoryWorkerRepository()
        wm.plan(wm.Event.register("10.0.0.1"), T0, repo)
        with pytest.raises(wm.ClaimRefused):
            wm.apply_event(wm.Event.claim("10.0.0.1", "A9"), T0, repo)
    finally:
        remove()
    assert seen == []


def test_a_hook_must_be_callable() -> None:
    with pytest.raises(wm.InvalidInput):
        wm.add_outcome_hook("print")  # type: ignore[arg-type]


def test_the_async_driver_reports_alike(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from workermatch import aio

    caplog.set_level(logging.DEBUG, logger="workermatch")
    seen: list[wm.Outcome] = []

    async def play() -> list[wm.Outcome]:
        repo = aio.AsyncInMemoryWorkerRepository()
        return [
            await aio.apply_event(wm.Event.register("10.0.0.1"), T0, repo),
            await aio.apply_event(wm.Event.heartbeat("10.0.0.1"), T0, repo),
        ]

    remove = wm.add_outcome_hook(seen.append)
    try:
        outcomes = asyncio.run(play())
    finally:
        remove()
    assert seen == outcomes
    records = [r for r in caplog.records if r.name == "workermatch"]
    assert [r.workermatch for r in records] == [o.to_dict() for o in outcomes]  # type: ignore[attr-defined]


def test_hooks_added_and_removed_while_threads_decide_see_each_decision_once() -> None:
    import threading

    repo = wm.InMemoryWorkerRepository()
    counted: list[str] = []
    remove = wm.add_outcome_hook(lambda o: counted.append(o.worker.id))
    churn_stop = threading.Event()

    def churn() -> None:  # other hooks come and go meanwhile
        while not churn_stop.is_set():
            wm.add_outcome_hook(print)()

    def decide(n: int) -> None:
        for i in range(25):
            wm.apply_event(wm.Event.heartbeat(f"10.{n}.0.{i}"), T0, repo)

    churner = threading.Thread(target=churn)
    churner.start()
    threads = [threading.Thread(target=decide, args=(n,)) for n in range(8)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        churn_stop.set()
        churner.join()
        remove()
    assert len(counted) == 200
    assert sorted(counted) == sorted(w.id for w in repo.all_workers())


def test_exhausted_storage_retries_are_a_warning(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3
    from pathlib import Path

    sql = pytest.importorskip("workermatch.sql")
    path = Path(str(tmp_path)) / "locked.db"
    with sql.SQLWorkerRepository.from_url(f"sqlite:///{path}") as repo:
        repo.create_schema()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    retry = sql.RetryPolicy(max_attempts=3, sleep=lambda _: None)
    try:
        with (
            sql.SQLWorkerRepository.from_url(
                f"sqlite:///{path}", retry=retry, connect_args={"timeout": 0.01}
            ) as repo,
            pytest.raises(wm.TransientStorageError),
        ):
            wm.apply_event(wm.Event.heartbeat("10.0.0.1"), T0, repo)
    finally:
        other.close()
    (warning,) = [r for r in caplog.records if r.name == "workermatch"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("gave up after 3 attempts")
    assert "database is locked" in warning.getMessage()


# ---------------------------------------------------------------------------------------------
# Signed worker tokens


KEY = b"a server key of 32 bytes, no less"


def test_a_token_carries_its_worker_id_back() -> None:
    tokens = wm.WorkerTokens(KEY)
    assert tokens.verify(tokens.issue("w1")) == "w1"
    assert tokens.verify(tokens.issue("a.b.c")) == "a.b.c"


@pytest.mark.parametrize(
    "token",
    [
        "w1",
        "w1.",
        "w2." + "A" * 32,
        "",
        None,
        "x" * 1000,
    ],
)
def test_a_token_not_issued_under_the_key_is_invalid_input(token: object) -> None:
    with pytest.raises(wm.InvalidInput) as info:
        wm.WorkerTokens(KEY).verify(token)
    assert info.value.field == "worker_token"
    assert len(str(info.value)) < 120


def test_a_token_of_another_key_or_another_id_is_refused() -> None:
    token = wm.WorkerTokens(KEY).issue("w1")
    with pytest.raises(wm.InvalidInput, match="not issued by this server"):
        wm.WorkerTokens(KEY + b"!").verify(token)
    forged = "w2" + token[2:]
    with pytest.raises(wm.InvalidInput, match="not issued by this server"):
        wm.WorkerTokens(KEY).verify(forged)


def test_a_short_key_is_refused_and_the_key_is_never_shown() -> None:
    with pytest.raises(wm.InvalidInput, match="at least 16 bytes"):
        wm.WorkerTokens(b"short")
    assert "server key" not in repr(wm.WorkerTokens(KEY))


# ---------------------------------------------------------------------------------------------
# Hints an operator should see


def test_an_assignment_hint_from_another_machines_address_raises_an_alert() -> None:
    """Assignment ids can be guessed: a request naming another machine's running assignment,
    from the address of a third machine's worker while the named worker's machine was heard a
    moment ago, lands on the named worker (the hint wins) but not silently."""
    repo = wm.InMemoryWorkerRepository()
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    mine = wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="pc-1"), T0, repo)
    wm.apply_event(wm.Event.claim("10.9.9.9", "A2"), T0, repo, create_assignments=True)
    guess = wm.Event.gui_update("10.9.9.9", "overall_progress", assignment_id="A1")
    outcome = wm.apply_event(guess, T0 + timedelta(seconds=5), repo)
    assert outcome.worker.id == mine.worker.id
    assert outcome.alert is wm.Alert.HINT_ELSEWHERE
    assert "another machine may name its work" in outcome.explain()


def test_a_client_that_moves_to_a_fresh_address_raises_no_alert() -> None:
    """A VPN flip: the hinted client's first request from an address nobody else uses."""
    repo = wm.InMemoryWorkerRepository()
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="pc-1"), T0, repo)
    moved = wm.Event.gui_update("10.8.8.8", "overall_progress", assignment_id="A1")
    assert wm.apply_event(moved, T0 + timedelta(seconds=5), repo).alert is None


def test_a_worker_id_hint_raises_no_such_alert() -> None:
    """Worker ids handed out by the shipped stores are random: a worker_id hint is trusted."""
    repo = wm.InMemoryWorkerRepository()
    claim = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
    moved = wm.Event.gui_update("10.9.9.9", "overall_progress", worker_id=claim.worker.id)
    assert wm.apply_event(moved, T0 + timedelta(seconds=5), repo).alert is None
