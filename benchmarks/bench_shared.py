"""The cost of one request at an address that k machines share (a carrier-grade NAT).

Run by hand from the repository root::

    .venv/bin/python benchmarks/bench_shared.py                       # in memory
    .venv/bin/python benchmarks/bench_shared.py --db postgresql://postgres@127.0.0.1:5432/wt

``--sizes`` picks the numbers of machines behind the address (default ``10,100,1000,10000``),
``--repeat`` the number of timed rounds (default 5), ``--budget`` their length in seconds
(default 0.2; a round is at least one call).  ``--db URL`` runs on a SQL store instead of in
memory: its tables are ``bench_shared_*``, made at the start and dropped at the end (use a
database of your own).  Each figure is the CPU time of this process per call
(``time.process_time``; on a SQL store it leaves out the database server's work) and the wall
time per call (``time.perf_counter``), each the best of its rounds; the rounds of all sizes are
interleaved, so that other load on the machine hits every size alike.

Two groups of k machines sit behind their own address each, at every size:

* **named**: machines whose heartbeats carry their hostname (the real client's GUI).  Every
  worker is live and RUNNING its own assignment, and its machine's last heartbeat came 1 to 29 s
  before ``now`` (so the evidence cannot separate them for a request without hostname).
* **anonymous**: machines that never send a hostname (command-line clients).  Every worker is
  live and RUNNING, heard from 1 to 29 s before ``now``.

What is measured, per k (all by :func:`workermatch.apply_event`, the default policy):

* ``update``: an update without hostname (``overall_progress``) from the named address: the
  decision is ambiguous among all k and lands on the oldest worker (the tie-break).
* ``heartbeat``: a heartbeat with the hostname of one of the named machines (a different one
  each call): its hostname agrees, the other k - 1 are vetoed.
* ``finished``: a ``finished`` without hostname from the named address: which machine sent it
  is in doubt, so the end is held among all k.  Each call is applied inside an outer unit that
  is then rolled back (the held end would otherwise accumulate), so the figure includes undoing
  the writes.
* ``anon update``: an update without hostname from the anonymous address, at ``now``: ambiguous
  among all k; nobody is due for a liveness refresh.
* ``anon refresh``: the same, with time moving on by 31 s per call (past the quiet period), so
  that every call is one that keeps the others alive (``Effect.KEEP_ALIVE``).

The columns ``rows`` give the worker and assignment rows each call writes (``Outcome.writes``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import workermatch as wm
from _bench import Timing, best, calibrate, fresh_repo, load_average, machine, one_round
from _fleet import inserts, worker_and_assignment

NOW = datetime(2025, 11, 6, 12, 0, 0, tzinfo=timezone.utc)
BATCH = 2_000
KEYS = ["update", "heartbeat", "finished", "anon update", "anon refresh"]


class Rollback(Exception):
    """Raised to undo the unit a ``finished`` was applied in."""


def named_ip(k: int) -> str:
    return f"100.64.{k % 251}.{1 + k // 251 % 250}"  # one address per k (RFC 6598 space)


def anon_ip(k: int) -> str:
    return f"100.65.{k % 251}.{1 + k // 251 % 250}"


def refresh_ip(k: int) -> str:
    return f"100.66.{k % 251}.{1 + k // 251 % 250}"


def fleet(k: int, ip: str, prefix: str, *, named: bool) -> list[wm.Write]:
    """k live RUNNING workers behind ``ip``, created 1 to 3 hours before ``now``, in creation
    order, each with its RUNNING assignment; heard from (and heartbeating, when ``named``)
    1 to 29 s ago."""
    writes: list[wm.Write] = []
    for i in range(k):
        created = NOW - timedelta(hours=3) + timedelta(seconds=7_200 * i / k)
        seen = NOW - timedelta(seconds=1 + i % 29)
        writes += inserts(
            *worker_and_assignment(
                f"{prefix}{i}",
                f"{prefix}a{i}",
                ip=ip,
                hostname=f"{prefix}host-{i}" if named else None,
                hostname_seen=seen if named else None,
                created=created,
                seen=seen,
            )
        )
    return writes


def build(repo: Any, sizes: list[int]) -> None:
    for k in sizes:
        t = time.perf_counter()
        writes = [
            *fleet(k, named_ip(k), f"n{k}-", named=True),
            *fleet(k, anon_ip(k), f"x{k}-", named=False),
            *fleet(k, refresh_ip(k), f"r{k}-", named=False),
        ]
        for start in range(0, len(writes), BATCH):
            repo.write(writes[start : start + BATCH])
        print(f"  built 3 x {k:>6,} workers in {time.perf_counter() - t:.1f} s", flush=True)


def cases(repo: Any, k: int, rows: dict[str, int]) -> dict[str, Callable[[], object]]:
    """The measured calls at size ``k``; ``rows`` receives the rows each one writes."""
    named, anon, refresh = named_ip(k), anon_ip(k), refresh_ip(k)
    oldest = f"n{k}-0"

    update = wm.Event.gui_update(named, "overall_progress")
    out = wm.apply_event(update, NOW, repo)
    assert (out.worker.id, out.ambiguous, len(out.decision.doubt)) == (oldest, True, k), (
        out.explain()
    )
    rows["update"] = len(out.writes)

    beats = itertools.cycle(range(1, k))

    def heartbeat() -> None:
        i = next(beats)
        out = wm.apply_event(wm.Event.heartbeat(named, hostname=f"n{k}-host-{i}"), NOW, repo)
        assert out.worker.id == f"n{k}-{i}", out.explain()
        assert not out.ambiguous, out.explain()
        rows["heartbeat"] = len(out.writes)

    finished = wm.Event.gui_update(named, "finished")

    def finish() -> None:
        def unit() -> None:
            out = wm.apply_event(finished, NOW, repo)
            assert len(out.held) == k, out.notes
            rows["finished"] = len(out.writes)
            raise Rollback

        with contextlib.suppress(Rollback):
            repo.atomically(unit)

    anon_update = wm.Event.gui_update(anon, "overall_progress")
    out = wm.apply_event(anon_update, NOW, repo)
    assert out.ambiguous, out.explain()
    assert len(out.decision.doubt) == k, out.explain()
    rows["anon update"] = len(out.writes)

    ticks = itertools.count(1)
    refresh_update = wm.Event.gui_update(refresh, "overall_progress")

    def anon_refresh() -> None:
        out = wm.apply_event(refresh_update, NOW + timedelta(seconds=31 * next(ticks)), repo)
        assert out.ambiguous
        assert len(out.decision.doubt) == k
        rows["anon refresh"] = len(out.writes)

    return {
        "update": lambda: wm.apply_event(update, NOW, repo),
        "heartbeat": heartbeat,
        "finished": finish,
        "anon update": lambda: wm.apply_event(anon_update, NOW, repo),
        "anon refresh": anon_refresh,
    }


def open_repo(db: str | None) -> tuple[Any, Callable[[], None]]:
    if db is None:
        return wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids("new")), lambda: None
    from workermatch.sql import DEFAULT_MAPPING

    repo = fresh_repo(db, DEFAULT_MAPPING.with_table_prefix("bench_shared_"))

    def done() -> None:
        repo.drop_schema()
        repo.close()

    return repo, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per timed round")
    parser.add_argument("--db", default=None, help="a SQL store's URL (default: in memory)")
    parser.add_argument("--skip", default="", help="cases to leave out, comma-separated")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    keys = [k for k in KEYS if k not in skip]

    print(machine("in memory" if args.db is None else args.db.split("://")[0]))
    repo, done = open_repo(args.db)
    try:
        build(repo, sizes)
        rows: dict[int, dict[str, int]] = {k: {} for k in sizes}
        fns = {k: {c: f for c, f in cases(repo, k, rows[k]).items() if c in keys} for k in sizes}
        gc.collect()
        gc.freeze()
        loops = {
            (k, c): calibrate(fn, args.budget, slow_once=True)
            for k in sizes
            for c, fn in fns[k].items()
        }
        table: dict[int, dict[str, Timing]] = {k: {} for k in sizes}
        for _ in range(args.repeat):
            for k in sizes:
                for c, fn in fns[k].items():
                    table[k][c] = best(table[k].get(c), one_round(fn, loops[k, c]))
        gc.unfreeze()
    finally:
        done()

    for which, title in ((0, "CPU time"), (1, "wall time")):
        print(f"\n{title} per call, best of {args.repeat} rounds (ms):\n")
        print("| k | " + " | ".join(keys) + " |")
        print("| ---: | " + " | ".join("---:" for _ in keys) + " |")
        for k in sizes:
            cells = " | ".join(f"{table[k][c][which] * 1e3:.3g}" for c in keys)
            print(f"| {k:,} | {cells} |")
    print("\nrows written per call:\n")
    print("| k | " + " | ".join(keys) + " |")
    print("| ---: | " + " | ".join("---:" for _ in keys) + " |")
    for k in sizes:
        print(f"| {k:,} | " + " | ".join(str(rows[k].get(c, "")) for c in keys) + " |")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        ratios = ", ".join(f"{c} {table[large][c][0] / table[small][c][0]:.1f}x" for c in keys)
        print(f"\nCPU time, k = {large:,} against k = {small:,}: {ratios}")
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
