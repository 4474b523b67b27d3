"""apply_event, plan and sweep; the in-memory repository's atomicity and thread safety."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import attrs
import pytest

import workermatch as wm
from _stores import state
from _times import NOW

A = wm.AssignmentStatus
S = wm.WorkerStatus


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def new_repo() -> wm.InMemoryWorkerRepository:
    return wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())


def a_worker(wid: str, ip: str = "10.0.0.1", **fields: object) -> wm.Worker:
    fields.setdefault("created_at", NOW)
    fields.setdefault("last_seen", NOW)
    return wm.Worker(id=wid, ip=ip, **fields)


# ---------------------------------------------------------------------------------------------
# apply_event and plan


def test_apply_event_returns_what_it_wrote_one_write_per_row() -> None:
    # A claim that creates both its worker and its assignment writes each row once, the
    # worker first (the assignment names it).
    repo = new_repo()
    out = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), NOW, repo, create_assignments=True)
    assert (out.created, out.rule, out.ambiguous, out.idempotent) == (
        True,
        wm.Rule.CREATED,
        False,
        False,
    )
    assert out.worker == repo.get_worker("w1")
    assert out.writes == (
        wm.InsertWorker(worker=out.worker),
        wm.InsertAssignment(
            assignment=wm.Assignment(id="A1", status=A.RUNNING, worker_id="w1", started_at=NOW)
        ),
    )
    assert state(repo) == (
        [a_worker("w1", status=S.RUNNING, assignment_id="A1")],
        [wm.Assignment(id="A1", status=A.RUNNING, worker_id="w1", started_at=NOW)],
    )


def test_each_row_is_written_once_in_its_final_state_new_rows_first() -> None:
    # A new worker that takes a stale worker's RUNNING assignment: the new worker is inserted
    # already holding it, then the stale worker and the assignment are updated, once each.
    repo = new_repo()
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo, create_assignments=True)
    wm.apply_event(wm.Event.gui_update("10.0.0.1", "progress"), at(5), repo)
    out = wm.apply_event(wm.Event.gui_update("10.0.0.1", "progress"), at(400), repo)
    assert (out.worker.id, out.transferred) == ("w2", ("A1",))
    assert out.writes == (
        wm.InsertWorker(
            worker=a_worker(
                "w2", created_at=at(400), last_seen=at(400), status=S.RUNNING, assignment_id="A1"
            )
        ),
        wm.UpdateWorker(
            worker=a_worker(
                "w1",
                created_at=at(0),
                last_seen=at(5),
                status=S.IDLE,
                stale=True,
                assignment_id="A1",
            )
        ),
        wm.UpdateAssignment(
            assignment=wm.Assignment(id="A1", status=A.RUNNING, worker_id="w2", started_at=at(0))
        ),
    )
    written = [w.worker for w in out.writes if isinstance(w, (wm.InsertWorker, wm.UpdateWorker))]
    assert state(repo) == (
        sorted(written, key=lambda w: w.id),
        [wm.Assignment(id="A1", status=A.RUNNING, worker_id="w2", started_at=at(0))],
    )


def test_plan_names_a_worker_to_create_with_the_placeholder_or_the_given_id_source() -> None:
    repo = new_repo()
    event = wm.Event.heartbeat("10.0.0.1", hostname="box")
    assert wm.plan(event, NOW, repo).worker.id == wm.NEW_WORKER
    ids = wm.sequential_ids("x", start=7)
    assert wm.plan(event, NOW, repo, new_worker_id=ids).worker.id == "x7"
    assert state(repo) == ([], [])


def test_a_matched_request_moves_last_seen_ip_and_fills_in_the_hostname() -> None:
    repo = new_repo()
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo, create_assignments=True)
    out = wm.apply_event(wm.Event.heartbeat("10.0.0.2", hostname="Box"), at(20), repo)
    assert out.worker == wm.Worker(
        id="w1",
        ip="10.0.0.2",
        hostname="box",
        hostname_seen=at(20),
        created_at=at(0),
        last_seen=at(20),
        status=S.RUNNING,
        assignment_id="A1",
    )


def test_the_outcome_explains_what_the_request_wrote() -> None:
    repo = new_repo()
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo, create_assignments=True)
    text = wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), at(5), repo).explain()
    assert text.splitlines()[0].endswith("-> worker w1 by rule exact_ip [policy default]")
    assert text.splitlines()[-1] == "  ended A1 (completed)"
    created = wm.apply_event(wm.Event.heartbeat("10.0.0.9"), at(6), repo).explain()
    assert created.splitlines()[-1] == "  created worker w2"


def test_an_explanation_read_later_tells_what_the_rules_saw_when_they_decided() -> None:
    # Explanations are written when first read: what the store holds by then is another story.
    repo = new_repo()
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="alpha"), at(0), repo)
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="beta"), at(1), repo)
    request = wm.Event.gui_update("10.0.0.1", "progress")
    read_now = wm.plan(request, at(2), repo)
    read_later = wm.plan(request, at(2), repo)
    text, data, notes = read_now.explain(), read_now.to_dict(), read_now.notes
    assert "could not be told apart" in text
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="gamma"), at(3), repo)
    wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), at(4), repo)
    assert read_later.explain() == text
    assert read_later.to_dict() == data
    assert read_later.notes == notes
    assert read_later == read_now
    assert read_later.decision.reports == read_now.decision.reports


def test_every_event_kind_goes_through_the_same_chain_by_default() -> None:
    repo = new_repo()
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), at(0), repo)
    for kind_event in (
        wm.Event.register("10.0.0.2", hostname="box"),
        wm.Event.heartbeat("10.0.0.3", hostname="box"),
        wm.Event.gui_update("10.0.0.4", hostname="box"),
    ):
        out = wm.apply_event(kind_event, at(1), repo)
        assert (out.rule, out.worker.id) == (wm.Rule.HOSTNAME, "w1")


def test_the_legacy_policy_runs_each_endpoints_own_chain() -> None:
    # heartbeat: IP, then hostname.  gui_update: IP, then a recent worker with RUNNING work.
    # claim and register: IP only.
    repo = new_repo()
    legacy = wm.LEGACY_POLICY
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo, legacy, create_assignments=True)
    gui = wm.apply_event(wm.Event.gui_update("10.0.0.2", "log"), at(1), repo, legacy)
    assert (gui.rule, gui.worker.id) == (wm.Rule.RECENT_ORPHAN, "w1")
    beat = wm.apply_event(wm.Event.heartbeat("10.0.0.3", hostname="box"), at(2), repo, legacy)
    assert (beat.rule, beat.worker.id) == (wm.Rule.CREATED, "w2")
    beat = wm.apply_event(wm.Event.heartbeat("10.0.0.4", hostname="box"), at(3), repo, legacy)
    assert (beat.rule, beat.worker.id) == (wm.Rule.HOSTNAME, "w2")
    reg = wm.apply_event(wm.Event.register("10.0.0.5", hostname="box"), at(4), repo, legacy)
    assert reg.rule is wm.Rule.CREATED
    assert [r.rule for r in reg.decision.reports] == [wm.Rule.EXACT_IP]


def test_match_worker_can_use_a_policys_per_kind_chain() -> None:
    repo = new_repo()
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), at(0), repo)
    identity = wm.Identity(ip="10.0.0.2", hostname="box")
    legacy = wm.LEGACY_POLICY
    assert wm.match_worker(identity, at(1), repo, legacy).rule is wm.Rule.CREATED
    heartbeat = wm.match_worker(identity, at(1), repo, legacy, kind=wm.EventKind.HEARTBEAT)
    assert heartbeat.rule is wm.Rule.HOSTNAME
    assert wm.match_worker(identity, at(1), repo, legacy, kind="heartbeat") == heartbeat


def test_the_in_memory_repository_satisfies_the_protocol() -> None:
    repo = new_repo()
    assert isinstance(repo, wm.WorkerRepository)
    wm.apply_event(wm.Event.heartbeat("10.0.0.1"), NOW, repo)
    assert len(repo) == 1
    assert [w.id for w in repo] == ["w1"]
    assert repr(repo) == "<InMemoryWorkerRepository workers=1 assignments=0>"


def test_default_worker_ids_are_random_uuids() -> None:
    repo = wm.InMemoryWorkerRepository()
    first = wm.apply_event(wm.Event.heartbeat("10.0.0.1"), NOW, repo).worker.id
    second = wm.apply_event(wm.Event.heartbeat("10.0.0.2"), NOW, repo).worker.id
    assert first != second
    assert len(first) == 36


def test_sequential_ids_never_repeat_across_threads() -> None:
    next_id = wm.sequential_ids("t")
    seen: list[str] = []

    def take() -> None:
        seen.extend(next_id() for _ in range(500))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen, key=lambda s: int(s[1:])) == [f"t{i}" for i in range(1, 2001)]


# ---------------------------------------------------------------------------------------------
# sweep


def test_sweep_persists_the_stale_flag_of_silent_workers_only() -> None:
    repo = new_repo()
    wm.apply_event(wm.Event.heartbeat("10.0.0.1"), at(0), repo)
    wm.apply_event(wm.Event.heartbeat("10.0.0.2"), at(100), repo)
    wm.apply_event(wm.Event.heartbeat("10.0.0.3"), at(1), repo)
    assert wm.sweep(repo, at(400)) == ("w1", "w3")
    assert {w.id: w.stale for w in repo.all_workers()} == {"w1": True, "w2": False, "w3": True}
    assert wm.sweep(repo, at(400)) == ()


def test_sweep_keeps_a_worker_silent_exactly_stale_after() -> None:
    repo = new_repo()
    wm.apply_event(wm.Event.heartbeat("10.0.0.1"), at(0), repo)
    assert wm.sweep(repo, at(300)) == ()
    assert wm.sweep(repo, at(300.001)) == ("w1",)


def test_sweep_uses_the_policys_stale_after() -> None:
    repo = new_repo()
    wm.apply_event(wm.Event.heartbeat("10.0.0.1"), at(0), repo)
    quick = wm.DEFAULT_POLICY.evolve(stale_after=timedelta(seconds=60))
    assert wm.sweep(repo, at(61), quick) == ("w1",)


def test_decisions_are_the_same_with_or_without_a_sweep() -> None:
    def history() -> wm.InMemoryWorkerRepository:
        repo = new_repo()
        wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo, create_assignments=True)
        wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), at(10), repo)
        wm.apply_event(wm.Event.heartbeat("10.0.0.2", hostname="other"), at(200), repo)
        return repo

    swept, unswept = history(), history()
    assert wm.sweep(swept, at(400)) == ("w1",)
    for event in (
        wm.Event.heartbeat("10.0.0.1", hostname="box"),
        wm.Event.gui_update("10.0.0.1", "progress"),
        wm.Event.heartbeat("10.0.0.2", hostname="other"),
    ):
        one = wm.apply_event(event, at(401), swept)
        two = wm.apply_event(event, at(401), unswept)
        assert (one.rule, one.worker.id, one.transferred) == (
            two.rule,
            two.worker.id,
            two.transferred,
        )
    assert [a.worker_id for a in swept.all_assignments()] == ["w3"]
    assert [a.worker_id for a in unswept.all_assignments()] == ["w3"]


# ---------------------------------------------------------------------------------------------
# Atomicity of the in-memory repository


@contextmanager
def unchanged(repo: wm.InMemoryWorkerRepository) -> Iterator[None]:
    """Asserts that both the rows and every index answer as before."""

    def answers() -> object:
        return (
            state(repo),
            sorted(w.id for w in repo.live_workers_by_ip("10.0.0.1", at(-600))),
            sorted(w.id for w in repo.live_workers_by_hostname("box", at(-600))),
            sorted(w.id for w in repo.recent_running_workers(at(-600), at(-600))),
            sorted(w.id for w in repo.stale_running_workers("10.0.0.1", "box", at(600))),
            sorted(a.id for a in repo.running_assignments_of(["w1", "w2", "w3"])),
        )

    before = answers()
    yield
    assert answers() == before


def seeded() -> wm.InMemoryWorkerRepository:
    repo = new_repo()
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(-10), repo, create_assignments=True)
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), at(-5), repo)
    return repo


@pytest.mark.parametrize(
    "batch",
    [
        [
            wm.InsertWorker(worker=a_worker("w2", hostname="box")),
            wm.UpdateWorker(worker=a_worker("nobody")),
        ],
        [wm.InsertWorker(worker=a_worker("w2")), wm.InsertWorker(worker=a_worker("w2"))],
        [wm.InsertWorker(worker=a_worker("w1"))],
        [
            wm.UpdateWorker(worker=a_worker("w1", ip="10.0.0.9", status=S.IDLE)),
            wm.InsertAssignment(assignment=wm.Assignment(id="A1")),
        ],
        [
            wm.InsertWorker(worker=a_worker("w2", status=S.RUNNING, assignment_id="A2")),
            wm.InsertAssignment(
                assignment=wm.Assignment(id="A2", status=A.RUNNING, worker_id="ghost")
            ),
        ],
        [wm.UpdateAssignment(assignment=wm.Assignment(id="A9"))],
    ],
    ids=[
        "update-of-unknown-worker",
        "duplicate-insert-in-batch",
        "insert-of-existing-worker",
        "insert-of-existing-assignment",
        "assignment-held-by-unknown-worker",
        "update-of-unknown-assignment",
    ],
)
def test_a_write_batch_that_fails_validation_changes_nothing(batch: list[wm.Write]) -> None:
    repo = seeded()
    with unchanged(repo), pytest.raises(wm.StorageError):
        repo.write(batch)


def test_a_batch_may_refer_to_a_worker_it_inserts() -> None:
    repo = new_repo()
    repo.write(
        [
            wm.InsertWorker(worker=a_worker("w9", status=S.RUNNING, assignment_id="A9")),
            wm.InsertAssignment(
                assignment=wm.Assignment(id="A9", status=A.RUNNING, worker_id="w9")
            ),
            wm.UpdateAssignment(
                assignment=wm.Assignment(id="A9", status=A.RUNNING, worker_id="w9", started_at=NOW)
            ),
        ]
    )
    assert [a.id for a in repo.running_assignments_of(["w9"])] == ["A9"]


def test_atomically_undoes_every_write_when_the_function_raises() -> None:
    repo = seeded()

    def unit() -> None:
        wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), NOW, repo)
        wm.apply_event(wm.Event.claim("10.0.0.1", "A2"), NOW, repo, create_assignments=True)
        wm.apply_event(wm.Event.heartbeat("10.0.0.7", hostname="box"), NOW, repo)
        raise KeyError("the caller's own failure")

    with unchanged(repo), pytest.raises(KeyError):
        repo.atomically(unit)


def test_atomically_returns_the_result_and_keeps_the_writes() -> None:
    repo = seeded()
    out = repo.atomically(
        lambda: wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), NOW, repo)
    )
    assert out.ended == ("A1",)
    assert repo.recent_running_workers(at(-600), at(-600)) == []


def test_a_nested_unit_that_fails_is_undone_while_the_outer_one_keeps_its_writes() -> None:
    repo = seeded()

    def inner() -> None:
        repo.write([wm.InsertWorker(worker=a_worker("inner"))])
        raise RuntimeError("inner")

    def outer() -> None:
        repo.write([wm.InsertWorker(worker=a_worker("outer"))])
        with pytest.raises(RuntimeError):
            repo.atomically(inner)

    repo.atomically(outer)
    assert {w.id for w in repo.all_workers()} == {"w1", "outer"}


def test_an_outer_failure_also_undoes_a_nested_unit_that_succeeded() -> None:
    repo = seeded()

    def outer() -> None:
        repo.atomically(lambda: repo.write([wm.InsertWorker(worker=a_worker("inner"))]))
        raise RuntimeError("outer")

    with unchanged(repo), pytest.raises(RuntimeError):
        repo.atomically(outer)


def test_the_running_index_follows_a_worker_through_its_session() -> None:
    repo = new_repo()
    since = at(-600)

    def running() -> list[str]:
        return sorted(w.id for w in repo.recent_running_workers(since, since))

    wm.apply_event(wm.Event.heartbeat("10.0.0.1"), at(0), repo)
    assert running() == []
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(1), repo, create_assignments=True)
    assert running() == ["w1"]
    wm.apply_event(wm.Event.gui_update("10.0.0.1", "progress"), at(2), repo)
    assert running() == ["w1"]
    wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), at(3), repo)
    assert running() == []


def test_the_running_index_answers_from_the_current_rows() -> None:
    # A row may change its status and even its creation time; the query follows the row.
    repo = new_repo()
    since = at(-60)
    running = a_worker("w1", status=S.RUNNING, assignment_id="A1")

    def found() -> list[str]:
        return [w.id for w in repo.recent_running_workers(since, since)]

    repo.write([wm.InsertWorker(worker=running)])
    assert found() == ["w1"]
    for row, expected in [
        (attrs.evolve(running, created_at=at(-3600)), []),
        (running, ["w1"]),
        (attrs.evolve(running, status=S.IDLE), []),
        (running, ["w1"]),
        (attrs.evolve(running, stale=True), []),
        (running, ["w1"]),
    ]:
        repo.write([wm.UpdateWorker(worker=row)])
        assert found() == expected


def test_recent_running_workers_agrees_with_a_scan_of_every_row() -> None:
    # The query reads one of two indexes (by creation time, or by last_seen in buckets),
    # whichever holds fewer entries: check both paths against the definition, through updates,
    # status changes, creation-time changes and undone units.
    rng = random.Random(2)
    repo = new_repo()
    statuses = [S.RUNNING, S.RUNNING, S.IDLE, S.ERROR]

    def row(wid: str) -> wm.Worker:
        return a_worker(
            wid,
            created_at=at(-rng.choice([5, 60, 400, 3600, 86_400 * 3])),
            last_seen=at(-rng.choice([0, 3, 25, 45, 200, 400, 5000]) + rng.choice([0, 2])),
            status=rng.choice(statuses),
            stale=rng.random() < 0.1,
            merged_into="w0" if rng.random() < 0.05 else None,
        )

    def check() -> None:
        for created in (-10, -120, -600, -7200, -(10**7)):
            for seen in (-1, -30, -60, -300, -(10**7)):
                expected = sorted(
                    w.id
                    for w in repo.all_workers()
                    if w.status is S.RUNNING
                    and w.created_at >= at(created)
                    and w.last_seen >= at(seen)
                    and not w.stale
                    and w.merged_into is None
                )
                got = sorted(w.id for w in repo.recent_running_workers(at(created), at(seen)))
                assert got == expected, (created, seen)

    repo.write([wm.InsertWorker(worker=row(f"w{i}")) for i in range(300)])
    check()
    for _ in range(5):
        repo.write([wm.UpdateWorker(worker=row(f"w{rng.randrange(300)}")) for _ in range(100)])
        check()

    def undone() -> None:
        repo.write([wm.UpdateWorker(worker=row(f"w{i}")) for i in range(0, 300, 3)])
        repo.write([wm.InsertWorker(worker=row(f"x{i}")) for i in range(20)])
        raise RuntimeError("undo")

    with unchanged(repo), pytest.raises(RuntimeError):
        repo.atomically(undone)
    check()


def test_the_address_and_hostname_indexes_agree_with_a_scan_of_every_row() -> None:
    # A write leaves the index entries that do not change in place (most writes move only
    # last_seen): check the queries served from them against the definition, through updates
    # that change the address, the hostname, the status or nothing indexed, and undone units.
    rng = random.Random(3)
    repo = new_repo()
    ips = ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
    hosts = [None, "alpha", "beta"]

    def row(wid: str) -> wm.Worker:
        return a_worker(
            wid,
            ip=rng.choice(ips),
            hostname=rng.choice(hosts),
            last_seen=at(-rng.choice([0, 30, 400])),
            status=rng.choice([S.RUNNING, S.IDLE]),
            stale=rng.random() < 0.1,
        )

    def check() -> None:
        rows = repo.all_workers()
        since, before = at(-300), at(-300)
        for ip in ips:
            live = sorted(w.id for w in repo.live_workers_by_ip(ip, since))
            assert live == sorted(
                w.id
                for w in rows
                if w.ip == ip and not w.stale and w.merged_into is None and w.last_seen >= since
            )
            for host in hosts:
                stale = sorted(w.id for w in repo.stale_running_workers(ip, host, before))
                assert stale == sorted(
                    w.id
                    for w in rows
                    if (w.ip == ip or (host is not None and w.hostname == host))
                    and w.merged_into is None
                    and w.status is S.RUNNING
                    and (w.stale or w.last_seen < before)
                )
        for host in hosts[1:]:
            assert host is not None
            named = sorted(w.id for w in repo.live_workers_by_hostname(host, since))
            assert named == sorted(
                w.id
                for w in rows
                if w.hostname == host
                and not w.stale
                and w.merged_into is None
                and w.last_seen >= since
            )

    repo.write([wm.InsertWorker(worker=row(f"w{i}")) for i in range(60)])
    check()
    for _ in range(10):
        updates = {f"w{rng.randrange(60)}" for _ in range(20)}
        repo.write(
            [
                wm.UpdateWorker(worker=attrs.evolve(old, last_seen=at(-rng.choice([0, 400]))))
                if rng.random() < 0.5 and (old := repo.get_worker(wid)) is not None
                else wm.UpdateWorker(worker=row(wid))
                for wid in sorted(updates)
            ]
        )
        check()

    def undone() -> None:
        repo.write([wm.UpdateWorker(worker=row(f"w{i}")) for i in range(0, 60, 2)])
        repo.write([wm.InsertWorker(worker=row(f"x{i}")) for i in range(10)])
        raise RuntimeError("undo")

    with unchanged(repo), pytest.raises(RuntimeError):
        repo.atomically(undone)
    check()


# ---------------------------------------------------------------------------------------------
# Thread safety: the real client's start-up burst


@contextmanager
def busy_scheduler() -> Iterator[None]:
    """Switch threads as often as the interpreter allows, to provoke interleavings."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def burst(repo: wm.InMemoryWorkerRepository, events: list[wm.Event], now: datetime) -> None:
    barrier = threading.Barrier(len(events))
    errors: list[BaseException] = []

    def send(event: wm.Event) -> None:
        barrier.wait()
        try:
            wm.apply_event(event, now, repo)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


GUI_IP = "157.193.240.190"
START_UP = [
    wm.Event.heartbeat(GUI_IP, hostname="UG-GNS0S34"),
    wm.Event.heartbeat(GUI_IP, hostname="UG-GNS0S34"),
    *[wm.Event.gui_update(GUI_IP, "log") for _ in range(4)],
    *[wm.Event.gui_update(GUI_IP, "overall_progress") for _ in range(2)],
]


def test_a_start_up_burst_after_a_claim_from_another_ip_gives_one_worker() -> None:
    with busy_scheduler():
        for _ in range(20):
            repo = new_repo()
            wm.apply_event(
                wm.Event.claim("157.193.240.188", "A1"), at(0), repo, create_assignments=True
            )
            burst(repo, START_UP, at(20))
            (worker,) = repo.all_workers()
            assert (worker.ip, worker.hostname, worker.status) == (GUI_IP, "ug-gns0s34", S.RUNNING)


def test_a_first_start_up_burst_gives_one_worker() -> None:
    with busy_scheduler():
        for _ in range(20):
            repo = new_repo()
            burst(repo, START_UP, at(0))
            assert len(repo.all_workers()) == 1
