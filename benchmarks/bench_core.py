"""The cost of one decision, for in-memory fleets of 10^2, 10^4 and 10^6 workers.

Run by hand from the repository root (a few minutes, most of it building the 10^6 fleet)::

    .venv/bin/python benchmarks/bench_core.py

``--sizes 100,10000`` picks other fleet sizes, ``--repeat`` the number of timed rounds and
``--budget`` their length.  Each figure is given twice: the CPU time of this process per call
(``time.process_time``), which other processes on a busy machine disturb least, and the wall
time per call (``time.perf_counter``).  The best round of each is reported, the usual way to
keep other load on the machine out of the figure, and the rounds of all sizes are interleaved
so that such load hits every size alike.

What is measured, per fleet size:

* ``hot  match``: :func:`workermatch.match_worker` for a heartbeat that matches a live worker by
  exact IP (the recent-orphan rule is never reached).  This is what almost every request of a
  running fleet costs.
* ``hot  apply``: :func:`workermatch.apply_event` for the same heartbeat: the decision plus the
  write that moves ``last_seen``, inside the repository's atomic unit.
* ``cold match``: :func:`workermatch.match_worker` for a request from an IP and hostname the
  store has never seen: every rule runs and finds nothing, the decision is "create".
* ``cold apply``: :func:`workermatch.apply_event` for such a request: the decision, the search
  for stale workers to transfer from, and the insert of the new worker.
* ``guard match``: :func:`workermatch.match_worker` for a request without hostname from an
  unknown IP while an orphan is in sight: the orphan guard looks for a running machine fed
  within the quiet period (one exists), passes the orphan over, and the decision is "create".
* ``nat  apply``: :func:`workermatch.apply_event` for an update without hostname from an
  address that three live running workers share (machines behind one NAT that never send a
  hostname): the decision is
  ambiguous, and with ``Policy.shared_liveness`` the two workers not taken are refreshed too
  (three rows written instead of one; time moves on by 31 s per call, past the quiet period
  that limits those refreshes to one per worker and period).
* ``end  apply``: :func:`workermatch.apply_event` for a ``finished`` that ends the session of a
  worker created about 12 hours earlier (matched by exact IP): the assignment is completed and
  the worker stops running.  Each call consumes a worker, so this one is
  timed over rounds of 3 calls on different workers instead of a calibrated loop.

The fleet: ``n`` workers, each with its own IP and hostname, created one to 25 hours before
``now``; three quarters seen within ``stale_after`` (live), one quarter silent past it; half of
them RUNNING an assignment.  Ten workers created within the orphan window hold a RUNNING
assignment at every size, so the recent-orphan rule has the same candidates whatever the size
of the fleet (the number of recent claims depends on the arrival rate, not on the size of the
fleet); nine were heard from a second ago, one has been quiet for 40 s (an orphan).
The fleet is built through ``repo.write`` with batches of ``InsertWorker``/``InsertAssignment``.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import workermatch as wm
from _bench import Timing, best, calibrate, fleet_ip, load_average, machine, one_round
from _fleet import inserts, worker_and_assignment

NOW = datetime(2025, 11, 6, 12, 0, 0, tzinfo=timezone.utc)
RECENT = 10
BATCH = 50_000
NAT_IP = "198.51.100.7"
NAT_SIZE = 3


def build_fleet(n: int) -> wm.InMemoryWorkerRepository:
    """An in-memory repository holding ``n`` workers (see the module docstring)."""
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids("new"))
    writes: list[wm.Write] = []
    old = n - RECENT
    for i in range(n):
        if i < old:
            # Created 25 h to 1 h before now, in creation order (keeps the time index cheap).
            created = NOW - timedelta(hours=25) + timedelta(seconds=86_400 * i / max(old, 1))
            live = i % 4 != 0
            seen = NOW - timedelta(seconds=(i % 240) if live else 600 + i % 600)
            running = i % 2 == 0
            hostname: str | None = f"host-{i}"
        else:
            # The recent claims: created within the orphan window, heard from a second ago,
            # except the last one, quiet for 40 s: an orphan in sight of every request.
            created = NOW - timedelta(seconds=20 + (n - i))
            seen = NOW - timedelta(seconds=40 if i == n - 1 else 1)
            running = True
            hostname = f"host-{i}"
        writes += inserts(
            *worker_and_assignment(
                f"w{i}",
                f"a{i}",
                ip=fleet_ip(i),
                hostname=hostname,
                created=created,
                seen=seen,
                running=running,
            )
        )
        if len(writes) >= BATCH:
            repo.write(writes)
            writes = []
    # Three machines behind one NAT address, each running, no hostname known (clients that
    # never send one), heard from 1 to 3 minutes ago.
    for k in range(NAT_SIZE):
        writes += inserts(
            *worker_and_assignment(
                f"nat{k}",
                f"nat-a{k}",
                ip=NAT_IP,
                hostname=None,
                created=NOW - timedelta(hours=2, seconds=k),
                seen=NOW - timedelta(seconds=60 * (k + 1)),
            )
        )
    repo.write(writes)
    return repo


def cases(repo: wm.InMemoryWorkerRepository, n: int) -> dict[str, Callable[[], object]]:
    """The four measured calls on a fleet of ``n`` workers (see the module docstring)."""
    # A live worker in the middle of the fleet (i % 4 != 0), matched by its exact IP.
    i = (n // 2) | 1
    hot = wm.Event.heartbeat(fleet_ip(i), hostname=f"host-{i}")
    decision = wm.match_worker(hot.identity, NOW, repo)
    assert (decision.rule, decision.worker_id) == (wm.Rule.EXACT_IP, f"w{i}"), decision.explain()

    cold_identity = wm.Identity(ip="192.0.2.1", hostname="never-seen")
    decision = wm.match_worker(cold_identity, NOW, repo)
    assert decision.rule is wm.Rule.CREATED, decision.explain()

    # No hostname: the quiet orphan is eligible, and the orphan guard looks for a rival.
    guarded_identity = wm.Identity(ip="192.0.2.2")
    decision = wm.match_worker(guarded_identity, NOW, repo)
    assert decision.rule is wm.Rule.CREATED, decision.explain()
    assert "a hijack is not" in decision.explain(), decision.explain()

    nat = wm.Event.gui_update(NAT_IP, "overall_progress")
    outcome = wm.plan(nat, NOW, repo)
    assert outcome.ambiguous, outcome.explain()
    assert len(outcome.kept_alive) == NAT_SIZE - 1, outcome.explain()

    # Time moves on by more than the quiet period per call, so that every call refreshes the
    # other two (shared liveness refreshes a worker at most once per quiet period).
    ticks = itertools.count(1)

    def nat_apply() -> None:
        outcome = wm.apply_event(nat, NOW + timedelta(seconds=31 * next(ticks)), repo)
        assert len(outcome.kept_alive) == NAT_SIZE - 1

    # Each cold apply creates a worker, so each needs an address and hostname never seen.
    counter = iter(range(10**9))

    def cold_apply() -> None:
        k = next(counter)
        event = wm.Event.heartbeat(
            str(ipaddress.IPv6Address((0x20010DB8 << 96) + k)), hostname=f"new-{k}"
        )
        outcome = wm.apply_event(event, NOW, repo)
        assert outcome.created

    return {
        "hot  match": lambda: wm.match_worker(hot.identity, NOW, repo),
        "hot  apply": lambda: wm.apply_event(hot, NOW, repo),
        "cold match": lambda: wm.match_worker(cold_identity, NOW, repo),
        "cold apply": cold_apply,
        "guard match": lambda: wm.match_worker(guarded_identity, NOW, repo),
        "nat  apply": nat_apply,
    }


def session_ends(n: int) -> Iterator[wm.Event]:
    """``finished`` from live RUNNING workers (i % 4 == 2) created about 12 h before ``now``,
    one worker per event, starting from the middle of the fleet."""
    old = n - RECENT
    middle = (old // 2) - (old // 2) % 4 + 2
    for i in itertools.chain(range(middle, old, 4), range(2, middle, 4)):
        yield wm.Event.gui_update(fleet_ip(i), "finished")


def time_session_ends(
    repo: wm.InMemoryWorkerRepository, events: Iterator[wm.Event], per_round: int = 3
) -> Timing:
    """CPU and wall seconds per ``finished`` over the next ``per_round`` events (each ends
    another worker's session, so the same call cannot be repeated); ``inf`` when the fleet has
    run out."""
    batch = list(itertools.islice(events, per_round))
    if len(batch) < per_round:
        return float("inf"), float("inf")
    cpu, wall = time.process_time(), time.perf_counter()
    for event in batch:
        outcome = wm.apply_event(event, NOW, repo)
    elapsed = (time.process_time() - cpu) / per_round, (time.perf_counter() - wall) / per_round
    assert outcome.rule is wm.Rule.EXACT_IP, outcome.explain()
    assert outcome.ended, outcome.explain()
    return elapsed


def measure(
    sizes: list[int], repeat: int, budget: float
) -> tuple[dict[int, dict[str, Timing]], dict[int, float]]:
    """Best CPU and wall seconds per call for each size and case, and each fleet's build time.

    Every fleet is built first; then each round times every case on every fleet in turn, so
    that a burst of load from other processes on the machine hits all sizes alike.
    """
    fleets: dict[int, dict[str, Callable[[], object]]] = {}
    repos: dict[int, wm.InMemoryWorkerRepository] = {}
    table: dict[int, dict[str, Timing]] = {}
    built: dict[int, float] = {}
    for n in sizes:
        t = time.perf_counter()
        repos[n] = repo = build_fleet(n)
        built[n] = time.perf_counter() - t
        table[n] = {}
        fleets[n] = cases(repo, n)
        print(f"  built {n:>9,} workers in {built[n]:.1f} s", flush=True)
    gc.collect()
    gc.freeze()  # the fleets are long-lived: keep the collector from rescanning them
    loops = {(n, k): calibrate(fn, budget) for n, fns in fleets.items() for k, fn in fns.items()}
    for _ in range(repeat):
        for n, fns in fleets.items():
            for k, fn in fns.items():
                table[n][k] = best(table[n].get(k), one_round(fn, loops[n, k]))
    ends = {n: session_ends(n) for n in sizes}
    for _ in range(repeat):
        for n, repo in repos.items():
            table[n]["end  apply"] = best(
                table[n].get("end  apply"), time_session_ends(repo, ends[n])
            )
    gc.unfreeze()
    return table, built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000,1000000")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per timed round")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(machine())
    table, _ = measure(sizes, args.repeat, args.budget)

    keys = [
        "hot  match",
        "hot  apply",
        "cold match",
        "cold apply",
        "guard match",
        "nat  apply",
        "end  apply",
    ]
    for which, title in ((0, "CPU time"), (1, "wall time")):
        print(f"\n{title} per call, best of {args.repeat} rounds (µs):\n")
        print("| fleet | " + " | ".join(k.replace("  ", " ") for k in keys) + " |")
        print("| ---: | " + " | ".join("---:" for _ in keys) + " |")
        for n in sizes:
            row = " | ".join(f"{table[n][k][which] * 1e6:.1f}" for k in keys)
            print(f"| {n:,} | {row} |")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        ratios = ", ".join(
            f"{k.replace('  ', ' ')} {table[large][k][0] / table[small][k][0]:.2f}x" for k in keys
        )
        print(f"\nCPU time, {large:,} vs {small:,} workers: {ratios} (target: within 1.5x)")
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
