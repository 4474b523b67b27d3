"""The hot request in one statement (PostgreSQL) decides exactly as the full unit does.

Every case is a small store (one to three workers at the request's address, in every state
that could make the decision do more than refresh one of them: stale, merged, ended, a held
end, contested, an assignment, hostnames that agree or not, times around every window's
edge), a request (heartbeat with or without hostname, updates, hints) and a policy (each
shipped table).  Whenever the hot statement takes the request, its outcome (the decision, the
writes, ``explain()``, ``to_dict()``) equals the full decision's on the same store, and the
store ends as the full decision's writes leave it; whenever it declines, it wrote nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta

import attrs
import pytest

import workermatch as wm
from _stores import SQL_STORE_IDS, StoreFactory
from _times import T0
from workermatch import Assignment, AssignmentStatus, HeldEnd, Worker, WorkerStatus
from workermatch._engine import may_be_hot
from workermatch._protocol import InsertAssignment, InsertWorker, UpdateWorker, Write
from workermatch.sql import SQLWorkerRepository

pytestmark = pytest.mark.parametrize("store_factory", SQL_STORE_IDS, indirect=True)

IP = "10.0.0.1"
NOW = T0 + timedelta(hours=3)
POLICIES = (wm.DEFAULT_POLICY, wm.NOTE_POLICY, wm.LEGACY_POLICY)
AGO = [timedelta(seconds=s) for s in (-1, 0, 1, 10, 25, 29, 30, 31, 60, 299, 300, 301, 7200)]


def _worker(rnd: random.Random, wid: str, ip: str, others: list[str]) -> Worker:
    created = NOW - rnd.choice([*AGO[3:], timedelta(hours=2)])
    last_seen = max(created, NOW - rnd.choice(AGO))
    hostname = rnd.choice([None, "box", "box", "other"])
    ended = rnd.random() < 0.25
    return Worker(
        id=wid,
        ip=ip,
        hostname=hostname,
        created_at=created,
        last_seen=last_seen,
        status=rnd.choice(list(WorkerStatus)),
        stale=rnd.random() < 0.15,
        assignment_id=rnd.choice([None, None, f"A-{wid}"]),
        ended_at=max(created, NOW - rnd.choice(AGO[3:])) if ended else None,
        merged_into=rnd.choice(others) if others and rnd.random() < 0.15 else None,
        hostname_seen=(
            None if hostname is None or rnd.random() < 0.2 else max(created, NOW - rnd.choice(AGO))
        ),
        contested=tuple(sorted({wid, *others[-1:]})) if others and rnd.random() < 0.15 else (),
        held_end=(
            HeldEnd(
                status=AssignmentStatus.COMPLETED, asked=(last_seen,), candidates=(wid,), count=1
            )
            if rnd.random() < 0.15
            else None
        ),
    )


def _case(rnd: random.Random) -> tuple[list[Write], wm.Event, wm.Policy]:
    # The same machine's name elsewhere, or another machine; any worker may be merged into it.
    workers: list[Worker] = [_worker(rnd, "far", "10.0.0.2", [])]
    for n in range(rnd.choice([1, 1, 1, 2, 3])):
        workers.append(_worker(rnd, f"w{n}", IP, [w.id for w in workers]))
    ops: list[Write] = [InsertWorker(worker=w) for w in workers]
    for w in workers:
        if w.assignment_id is not None:
            running = w.status is WorkerStatus.RUNNING and w.ended_at is None
            status = AssignmentStatus.RUNNING if running else AssignmentStatus.COMPLETED
            ops.append(
                InsertAssignment(
                    assignment=Assignment(
                        id=w.assignment_id,
                        status=status,
                        worker_id=w.id,
                        started_at=w.created_at,
                        ended_at=None if running else w.last_seen,
                    )
                )
            )
    host = rnd.choice(["box", "box", None, "other"])
    hint = rnd.random() < 0.1
    kind = rnd.random()
    if kind < 0.6:
        event = wm.Event.heartbeat(IP, hostname=host, worker_id="w0" if hint else None)
    else:
        message = rnd.choice(["overall_progress", "overall_progress", "finished", "fatal_error"])
        event = wm.Event.gui_update(IP, message)
    return ops, event, rnd.choice(POLICIES)


def _near_hot_case(rnd: random.Random) -> tuple[list[Write], wm.Event, wm.Policy]:
    """The hot request with one to three of its facts changed, each to a value on either side
    of what the hot statement accepts."""
    (far,) = _case_workers(rnd)
    ops, event, _ = _hot_case()
    (w, a) = (ops[0].worker, ops[1].assignment)  # type: ignore[union-attr]
    fields: dict[str, object] = {}
    second: Worker | None = None
    host: str | None = "box"
    kind = "heartbeat"
    changes: list[Callable[[], None]] = [
        lambda: fields.update(hostname=rnd.choice([None, "other"])),
        lambda: fields.update(hostname_seen=rnd.choice([None, NOW, NOW - timedelta(hours=1)])),
        lambda: fields.update(last_seen=NOW - rnd.choice(AGO)),
        lambda: fields.update(
            created_at=NOW - rnd.choice(AGO[3:]),
            assignment_id=rnd.choice([None, "A1"]),
        ),
        lambda: fields.update(stale=True),
        lambda: fields.update(merged_into="far"),
        lambda: fields.update(ended_at=NOW - rnd.choice(AGO[3:])),
        lambda: fields.update(
            held_end=HeldEnd(
                status=AssignmentStatus.COMPLETED,
                asked=(NOW - rnd.choice(AGO[3:]),),
                candidates=("w0",),
                count=1,
            )
        ),
        lambda: fields.update(contested=("far", "w0")),
        lambda: fields.update(status=rnd.choice(list(WorkerStatus))),
    ]
    for change in rnd.sample(changes, rnd.choice([1, 1, 2, 3])):
        change()
    if "last_seen" in fields or "created_at" in fields:
        created = fields.get("created_at", w.created_at)
        assert isinstance(created, datetime)
        last_seen = fields.get("last_seen", w.last_seen)
        assert isinstance(last_seen, datetime)
        fields["last_seen"] = max(created, last_seen)
    worker = attrs.evolve(w, **fields)
    if rnd.random() < 0.2:
        second = _worker(rnd, "w1", IP, ["far"])
    r = rnd.random()
    if r < 0.2:
        host = rnd.choice([None, "other"])
    elif r < 0.35:
        kind = "gui_update"
    policy = rnd.choice(POLICIES)
    new_ops: list[Write] = [InsertWorker(worker=far), InsertWorker(worker=worker)]
    if second is not None:
        new_ops.append(InsertWorker(worker=second))
    if worker.assignment_id == "A1":
        new_ops.append(InsertAssignment(assignment=a))
    if kind == "heartbeat":
        event = wm.Event.heartbeat(IP, hostname=host)
    else:
        event = wm.Event.gui_update(IP, rnd.choice(["overall_progress", "finished"]))
    return new_ops, event, policy


def _case_workers(rnd: random.Random) -> list[Worker]:
    return [_worker(rnd, "far", "10.0.0.2", [])]


def _hot_case() -> tuple[list[Write], wm.Event, wm.Policy]:
    """The request the hot statement is for: a heartbeat from a running machine's address."""
    w = Worker(
        id="w0",
        ip=IP,
        hostname="box",
        created_at=NOW - timedelta(hours=2),
        last_seen=NOW - timedelta(seconds=30),
        status=WorkerStatus.RUNNING,
        assignment_id="A1",
        hostname_seen=NOW - timedelta(seconds=30),
    )
    a = Assignment(
        id="A1", status=AssignmentStatus.RUNNING, worker_id="w0", started_at=w.created_at
    )
    event = wm.Event.heartbeat(IP, hostname="box")
    return [InsertWorker(worker=w), InsertAssignment(assignment=a)], event, wm.DEFAULT_POLICY


def _seed(repo: SQLWorkerRepository, ops: list[Write]) -> None:
    repo.atomically(lambda: repo.write(ops))


def _state(repo: SQLWorkerRepository) -> tuple[list[Worker], list[Assignment]]:
    return (
        sorted(repo.all_workers(), key=lambda w: w.id),
        sorted(repo.all_assignments(), key=lambda a: a.id),
    )


def _check(repo: SQLWorkerRepository, ops: list[Write], event: wm.Event, policy: wm.Policy) -> bool:
    """Whether the hot statement took the request; asserts it decided as the full unit."""
    repo.reset()
    _seed(repo, ops)
    try:
        full: wm.Outcome | None = wm.plan(event, NOW, repo, policy)
    except wm.AmbiguousMatch:
        full = None
    workers, assignments = _state(repo)
    hot = repo._apply_hot(event, NOW, policy) if may_be_hot(event, policy) else None
    if hot is None:
        assert _state(repo) == (workers, assignments)  # declined: nothing written
        return False
    assert full is not None
    assert hot == full
    assert hot.explain() == full.explain()
    assert hot.to_dict() == full.to_dict()
    assert hot.decision.explain() == full.decision.explain()
    (write,) = full.writes
    assert isinstance(write, UpdateWorker)
    after = sorted(
        [write.worker, *(w for w in workers if w.id != write.worker.id)], key=lambda w: w.id
    )
    assert _state(repo) == (after, assignments)
    return True


def _run_cases(
    repo: SQLWorkerRepository,
    make: Callable[[random.Random], tuple[list[Write], wm.Event, wm.Policy]],
    rnd: random.Random,
    cases: int,
) -> tuple[int, int]:
    """Check ``cases`` drawn cases on ``repo``: how many the hot statement took and declined."""
    taken = declined = 0
    for _ in range(cases):
        try:
            case = make(rnd)
        except wm.InvalidInput:
            continue  # a combination the model refuses
        if _check(repo, *case):
            taken += 1
        else:
            declined += 1
    return taken, declined


def test_the_hot_statement_decides_as_the_full_unit(store_factory: StoreFactory) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    hot = repo.engine.dialect.name == "postgresql"
    assert _check(repo, *_hot_case()) is hot
    cases = 600 if hot else 20
    taken, _ = _run_cases(repo, _case, random.Random(20251106), cases)
    if hot:
        assert taken >= cases // 20, taken  # the cases reach the hot statement
    else:
        assert taken == 0


def test_the_hot_statement_decides_as_the_full_unit_near_the_hot_request(
    store_factory: StoreFactory,
) -> None:
    """The same, on stores one to three facts away from the hot request."""
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    hot = repo.engine.dialect.name == "postgresql"
    cases = 800 if hot else 20
    taken, declined = _run_cases(repo, _near_hot_case, random.Random(20251130), cases)
    if hot:
        assert taken >= cases // 5, (taken, declined)
        assert declined >= cases // 5, (taken, declined)
    else:
        assert taken == 0


def test_a_full_path_repository_decides_the_same(store_factory: StoreFactory) -> None:
    """apply_event with and without the hot statement: the same outcome, the same store."""
    outcomes = []
    states = []
    for hot_path in (True, False):
        repo = store_factory()
        assert isinstance(repo, SQLWorkerRepository)
        repo._hot_path = hot_path
        ops, event, policy = _hot_case()
        _seed(repo, ops)
        outcomes.append(wm.apply_event(event, NOW, repo, policy))
        states.append(_state(repo))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0].explain() == outcomes[1].explain()
    assert states[0] == states[1]


def test_the_hot_statement_runs_at_serializable(store_factory: StoreFactory) -> None:
    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    if repo.engine.dialect.name != "postgresql":
        pytest.skip("the hot statement is PostgreSQL's")
    with repo.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        dbapi.autocommit = True
        try:
            cur = dbapi.cursor()
            cur.execute("SHOW transaction_isolation")
            assert cur.fetchone() == ("serializable",)
        finally:
            dbapi.autocommit = False
