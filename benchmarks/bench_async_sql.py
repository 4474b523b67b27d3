"""The asyncio SQL store against the synchronous one: the cost of one decision.

Run by hand from the repository root, one database at a time (about a minute each)::

    .venv/bin/python benchmarks/bench_async_sql.py --db postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/bench_async_sql.py --db mysql://root@127.0.0.1:3306/test
    .venv/bin/python benchmarks/bench_async_sql.py --db sqlite:////tmp/bench_async.db

A fleet of ``--workers`` workers (default 1000), each on its own IP, then ``--requests``
heartbeats (default 2000) from IPs of the fleet (each matched by exact IP: one ``SELECT`` and one
``UPDATE``), made one after the other by one client: ``SQLWorkerRepository`` with
:func:`workermatch.apply_event`, then ``AsyncSQLWorkerRepository`` with
:func:`workermatch.aio.apply_event` in one task, then the same requests as ``--tasks``
concurrent tasks (default 8) on the asyncio store.  Printed per run: wall time and process
CPU time per decision (the CPU time is this process's only: the database server's is not in
it), and decisions per second of wall time.  Best of ``--rounds`` (default 3).  The tables are
``bench_async_*`` and are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import workermatch as wm
from _bench import fresh_repo
from workermatch import aio
from workermatch.sql import DEFAULT_MAPPING, AsyncSQLWorkerRepository

NOW = datetime(2025, 11, 6, 12, 0, tzinfo=timezone.utc)
MAPPING = DEFAULT_MAPPING.with_table_prefix("bench_async_")


def _ip(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def _events(workers: int, requests: int) -> list[wm.Event]:
    return [wm.Event.heartbeat(_ip(i * 7919 % workers)) for i in range(requests)]


def _measure(run: Callable[[], None], n: int, rounds: int) -> tuple[float, float]:
    """Best wall and CPU seconds per decision over ``rounds`` runs."""
    best_wall = best_cpu = float("inf")
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        best_wall = min(best_wall, (time.perf_counter() - wall) / n)
        best_cpu = min(best_cpu, (time.process_time() - cpu) / n)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    events = _events(args.workers, args.requests)
    at = NOW + timedelta(seconds=10)

    sync = fresh_repo(args.db, MAPPING)
    for i in range(args.workers):
        wm.apply_event(wm.Event.heartbeat(_ip(i), hostname=f"h{i}"), NOW, sync)
    results: list[tuple[str, float, float]] = []

    def sync_run() -> None:
        for event in events:
            wm.apply_event(event, at, sync)

    results.append(("sync, 1 client", *_measure(sync_run, len(events), args.rounds)))

    loop = asyncio.new_event_loop()
    repo = AsyncSQLWorkerRepository.from_url(args.db, mapping=MAPPING)

    async def sequential() -> None:
        for event in events:
            await aio.apply_event(event, at, repo)

    async def concurrent() -> None:
        queue = list(events)

        async def client() -> None:
            while queue:
                await aio.apply_event(queue.pop(), at, repo)

        await asyncio.gather(*(client() for _ in range(args.tasks)))

    results.append(
        (
            "asyncio, 1 task",
            *_measure(lambda: loop.run_until_complete(sequential()), len(events), args.rounds),
        )
    )
    results.append(
        (
            f"asyncio, {args.tasks} tasks",
            *_measure(lambda: loop.run_until_complete(concurrent()), len(events), args.rounds),
        )
    )
    loop.run_until_complete(repo.close())
    loop.close()
    sync.drop_schema()
    sync.close()

    print(f"{args.db}: {args.workers} workers, {args.requests} heartbeats by exact IP")
    print(f"{'run':<20} {'wall ms/decision':>17} {'CPU ms/decision':>16} {'decisions/s':>12}")
    for name, wall, cpu in results:
        print(f"{name:<20} {wall * 1000:>17.3f} {cpu * 1000:>16.3f} {1 / wall:>12.0f}")


if __name__ == "__main__":
    main()
