"""Guarantee 7, concurrency: the real client's start-up burst, from several processes and
threads at the same instant, on every SQL store.

Many machines each claim their assignment while a rival machine claims the same assignment at
the same instant; then every machine sends the real client's GUI start-up burst (two
heartbeats at once, plus parallel gui_updates) at one instant.  The requests of one machine are
dealt to different processes and threads, which all start together at a barrier.  Afterwards:
exactly one worker per machine, every assignment claimed exactly once and RUNNING on exactly
one worker, and every request of a machine resolved to that machine's worker.

The policy leaves out the recent-orphan rule, so that each request's right answer is its own
machine's worker (or a refusal) in every serial order: with it, the updates of a machine whose
claim lost would legitimately join another machine's fresh claim worker (the "simultaneous
starts on one VPN" case, which is about matching, not about races).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import attrs
import pytest

import workermatch as wm
from _stores import SQL_STORE_IDS, StoreFactory
from _times import T0

pytestmark = pytest.mark.parametrize("store_factory", SQL_STORE_IDS, indirect=True)

PROCESSES = 3
THREADS = 4
MACHINES = 12
BURST_AT = T0 + timedelta(seconds=60)
POLICY = wm.DEFAULT_POLICY.evolve(
    name="stress",
    rules=attrs.evolve(
        wm.DEFAULT_RULES,
        name="stress",
        rows=tuple(r for r in wm.DEFAULT_RULES.rows if r.rule is not wm.Rule.RECENT_ORPHAN),
    ),
)

# (label, kind, ip, hostname, assignment)
Request = tuple[str, str, str, "str | None", "str | None"]


def machine_ip(m: int) -> str:
    return f"10.1.{m // 200}.{m % 200 + 1}"


def rival_ip(m: int) -> str:
    return f"10.2.{m // 200}.{m % 200 + 1}"


def claims() -> list[Request]:
    out: list[Request] = []
    for m in range(MACHINES):
        out.append((f"claim:m{m}", "claim", machine_ip(m), None, f"A{m}"))
        out.append((f"claim:r{m}", "claim", rival_ip(m), None, f"A{m}"))
    return out


def burst() -> list[Request]:
    out: list[Request] = []
    for m in range(MACHINES):
        ip, host = machine_ip(m), f"host-{m}"
        out.append((f"hb1:m{m}", "heartbeat", ip, host, None))
        out.append((f"hb2:m{m}", "heartbeat", ip, host, None))
        out += [(f"gui{k}:m{m}", "gui_update", ip, None, None) for k in range(3)]
    return out


def deal(requests: list[Request]) -> list[list[Request]]:
    """Request i goes to thread i mod n; thread t runs in process t mod PROCESSES, so a
    machine's consecutive requests land in different processes."""
    n = PROCESSES * THREADS
    return [requests[t::n] for t in range(n)]


def _event(req: Request) -> wm.Event:
    _, kind, ip, hostname, assignment = req
    if kind == "claim":
        assert assignment is not None
        return wm.Event.claim(ip, assignment)
    if kind == "heartbeat":
        return wm.Event.heartbeat(ip, hostname=hostname)
    return wm.Event.gui_update(ip, "overall_progress")


def child(
    url: str,
    mapping_spec: dict[str, Any],
    phases: list[list[list[Request]]],
    barrier: Any,
    results: Any,
    policy: wm.Policy = POLICY,
) -> None:
    """One process: its threads wait at the barrier, then run their share of each phase."""
    from workermatch.sql import SQLWorkerRepository, TableMapping

    repo = SQLWorkerRepository.from_url(url, mapping=TableMapping(**mapping_spec))
    out: list[tuple[str, str]] = []
    lock = threading.Lock()

    def run(thread_jobs: list[list[Request]]) -> None:
        for jobs in thread_jobs:
            barrier.wait(timeout=60)
            now = T0 if jobs and jobs[0][1] == "claim" else BURST_AT
            for req in jobs:
                try:
                    outcome = wm.apply_event(_event(req), now, repo, policy)
                    result = outcome.worker.id
                except wm.ClaimRefused as exc:
                    result = f"refused:{exc.reason}"
                except Exception as exc:  # reported to the parent, which fails the test
                    result = f"error:{exc!r}"
                with lock:
                    out.append((req[0], result))

    # phases[phase][thread] -> per thread: [phase0 jobs, phase1 jobs]
    per_thread = [[phase[t] for phase in phases] for t in range(THREADS)]
    threads = [threading.Thread(target=run, args=(jobs,)) for jobs in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    repo.close()
    results.put(out)


def _mapping_spec(mapping: Any) -> dict[str, Any]:
    spec = attrs.asdict(mapping, recurse=False)
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in spec.items()}


def test_guarantee_7_the_startup_burst_from_processes_and_threads_makes_one_worker_per_machine(
    store_factory: StoreFactory,
) -> None:
    from workermatch.sql import SQLWorkerRepository

    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    outcomes = _run(repo, [deal(claims()), deal(burst())], POLICY)
    assert len(outcomes) == len(claims()) + len(burst())
    errors = {k: v for k, v in outcomes.items() if v.startswith("error:")}
    assert not errors

    workers = {w.id: w for w in repo.all_workers()}
    assignments = {a.id: a for a in repo.all_assignments()}
    by_ip = Counter(w.ip for w in workers.values())
    for m in range(MACHINES):
        won = _claimed_once(outcomes, assignments, m)
        # exactly one worker per machine; the rival has one only if it won
        assert by_ip[machine_ip(m)] == 1
        assert by_ip[rival_ip(m)] == (0 if won == outcomes[f"claim:m{m}"] else 1)
        (machine_worker,) = [w for w in workers.values() if w.ip == machine_ip(m)]
        burst_results = {
            v for k, v in outcomes.items() if k.endswith(f":m{m}") and "claim" not in k
        }
        assert burst_results == {machine_worker.id}
        assert machine_worker.hostname == f"host-{m}"
    _held_once(workers, assignments)


def gui_ip(m: int) -> str:
    return f"10.3.{m // 200}.{m % 200 + 1}"


def vpn_burst() -> list[Request]:
    """Each machine's GUI starts on a VPN: two heartbeats at one instant, with the hostname,
    from an address other than its claim's."""
    out: list[Request] = []
    for m in range(MACHINES):
        out.append((f"hb1:m{m}", "heartbeat", gui_ip(m), f"host-{m}", None))
        out.append((f"hb2:m{m}", "heartbeat", gui_ip(m), f"host-{m}", None))
    return out


def test_guarantee_7_a_vpn_start_up_burst_under_the_default_policy_splits_no_pair(
    store_factory: StoreFactory,
) -> None:
    """The same claims, then every machine's GUI starts from another address (a VPN), under
    the full default policy: each first heartbeat reads every recent running worker (the
    recent-orphan rule), the read every concurrent claim conflicts with, which the SQL stores
    serialise with a request lock.  Which worker a pair joins is a matching question (a dozen
    fresh claims are orphans it cannot tell apart); that it is one worker is not."""
    from workermatch.sql import SQLWorkerRepository

    repo = store_factory()
    assert isinstance(repo, SQLWorkerRepository)
    outcomes = _run(repo, [deal(claims()), deal(vpn_burst())], wm.DEFAULT_POLICY)
    errors = {k: v for k, v in outcomes.items() if v.startswith("error:")}
    assert not errors
    workers = {w.id: w for w in repo.all_workers()}
    assignments = {a.id: a for a in repo.all_assignments()}
    for m in range(MACHINES):
        _claimed_once(outcomes, assignments, m)
        assert outcomes[f"hb1:m{m}"] == outcomes[f"hb2:m{m}"]
        (pair_worker,) = [w for w in workers.values() if w.ip == gui_ip(m)]
        assert pair_worker.id == outcomes[f"hb1:m{m}"]
    _held_once(workers, assignments)


def _claimed_once(outcomes: dict[str, str], assignments: dict[str, wm.Assignment], m: int) -> str:
    """Machine ``m``'s assignment was claimed exactly once: the winner's worker id."""
    mine, rival = outcomes[f"claim:m{m}"], outcomes[f"claim:r{m}"]
    won = [o for o in (mine, rival) if not o.startswith("refused:")]
    assert len(won) == 1, (mine, rival)  # two claims of one assignment: exactly one wins
    assert "refused:running_elsewhere" in (mine, rival)
    a = assignments[f"A{m}"]
    assert a.status is wm.AssignmentStatus.RUNNING
    assert a.worker_id == won[0]
    return won[0]


def _held_once(workers: dict[str, wm.Worker], assignments: dict[str, wm.Assignment]) -> None:
    """Nothing is held twice, and each worker's status agrees with what it holds."""
    held = Counter(
        a.worker_id for a in assignments.values() if a.status is wm.AssignmentStatus.RUNNING
    )
    assert all(n == 1 for n in held.values())
    for w in workers.values():
        assert (w.status is wm.WorkerStatus.RUNNING) == (held[w.id] == 1)


def _run(repo: Any, dealt: list[list[list[Request]]], policy: wm.Policy) -> dict[str, str]:
    """Run the dealt phases from PROCESSES processes of THREADS threads; each request's
    outcome (a worker id, ``refused:...`` or ``error:...``) by its label."""
    url = repo.engine.url.render_as_string(hide_password=False)
    for m in range(MACHINES):
        repo.write([wm.InsertAssignment(assignment=wm.Assignment(id=f"A{m}"))])
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES * THREADS)
    results = ctx.Queue()
    procs = []
    for p in range(PROCESSES):
        share = [[phase[t] for t in range(p, PROCESSES * THREADS, PROCESSES)] for phase in dealt]
        procs.append(
            ctx.Process(
                target=child,
                args=(url, _mapping_spec(repo.mapping), share, barrier, results, policy),
            )
        )
    for proc in procs:
        proc.start()
    outcomes: dict[str, str] = {}
    try:
        for _ in procs:
            outcomes.update(results.get(timeout=120))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():  # pragma: no cover - only when the test is already failing
                proc.terminate()
    return outcomes
