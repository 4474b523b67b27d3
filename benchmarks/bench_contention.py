"""Contention: N machines start at once on a VPN, their requests sent by P server processes.

Run by hand from the repository root, one database at a time::

    .venv/bin/python benchmarks/bench_contention.py --db postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/bench_contention.py --db mysql://root@127.0.0.1:3306/test
    .venv/bin/python benchmarks/bench_contention.py --db sqlite:////tmp/contention.db --processes 4

Options: ``--machines`` (default 1000), ``--processes`` (default 16), ``--lag`` (how many
machines later in the stream a machine's GUI starts after its claim, default 8).

What the fleet sends is the real client's start-up (see :mod:`workermatch.lab`): each
machine claims its assignment from an address of the VPN's pool (``10.8.0.0/16``), without
hostname, and a moment later its GUI sends two heartbeats at the same instant from another
address (``10.9.0.0/16``), with its hostname.  The machines start one after another as fast as
the servers take them: the stream is claim of machine ``m``, then the heartbeat pair of machine
``m - lag``, and so on; request ``i`` of the stream is sent by process ``i mod P``, so the two
heartbeats of a pair always go to two different processes at nearly the same instant.  Every
process runs its share in order, as fast as it can (a closed loop: P requests in flight at
most), from a barrier.  The decisions use the full default policy (the recent-orphan rule
included, which reads every recent running worker) and the database's clock (``now=None``).

It reports, per database: how many machines' heartbeat pairs were split between two workers
(a race: must be 0), the distribution of workers per machine (claim and pair; a machine whose
pair adopted another machine's claim is a matching question, not a race), whether any
assignment is held twice, the repository's ``retries`` per request (runs again after a
conflict) and ``reruns`` per request (runs again from the start to take the lock of the recent
running workers, see docs/stores.md), latency p50/p99/max,
throughput, and CPU time: the client processes' own (``time.process_time``) and the machine's
busy time over the run (from ``/proc/stat``: everything on the machine, the database server
and other work included).  The tables are ``benchc_*``; they are dropped at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections import Counter
from typing import Any

import workermatch as wm
from _bench import fresh_repo, load_average
from workermatch.sql import DEFAULT_MAPPING, SQLWorkerRepository

MAPPING = DEFAULT_MAPPING.with_table_prefix("benchc_")

# (machine, kind, ip, hostname, assignment)
Request = tuple[int, str, str, "str | None", "str | None"]


def claim_ip(m: int) -> str:
    return f"10.8.{m // 250}.{m % 250 + 1}"


def gui_ip(m: int) -> str:
    return f"10.9.{m // 250}.{m % 250 + 1}"


def stream(machines: int, lag: int) -> list[Request]:
    """Claim of machine m, then the heartbeat pair of machine m - lag, for every m."""
    out: list[Request] = []
    for s in range(machines + lag):
        if s < machines:
            out.append((s, "claim", claim_ip(s), None, f"A{s}"))
        g = s - lag
        if g >= 0:
            out.append((g, "heartbeat", gui_ip(g), f"host-{g}", None))
            out.append((g, "heartbeat", gui_ip(g), f"host-{g}", None))
    return out


def _event(req: Request) -> wm.Event:
    _, kind, ip, hostname, assignment = req
    if kind == "claim":
        assert assignment is not None
        return wm.Event.claim(ip, assignment)
    return wm.Event.heartbeat(ip, hostname=hostname)


def client(url: str, jobs: list[tuple[int, Request]], barrier: Any, results: Any) -> None:
    repo = SQLWorkerRepository.from_url(url, mapping=MAPPING)
    repo.get_worker("warm-up")  # the connection is made before the barrier
    out: list[tuple[int, int, str, float]] = []
    barrier.wait(timeout=120)
    cpu0 = time.process_time()
    for index, req in jobs:
        t0 = time.perf_counter()
        try:
            result = wm.apply_event(_event(req), None, repo).worker.id
        except wm.ClaimRefused as exc:
            result = f"refused:{exc.reason}"
        except wm.WorkermatchError as exc:
            result = f"error:{exc!r}"
        out.append((index, req[0], result, time.perf_counter() - t0))
    cpu = time.process_time() - cpu0
    results.put((out, repo.retries, getattr(repo, "reruns", 0), cpu))
    repo.close()


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run(url: str, machines: int, processes: int, lag: int) -> dict[str, Any]:
    repo = fresh_repo(url, MAPPING)
    repo.write([wm.InsertAssignment(assignment=wm.Assignment(id=f"A{m}")) for m in range(machines)])
    requests = stream(machines, lag)
    shares: list[list[tuple[int, Request]]] = [[] for _ in range(processes)]
    for i, req in enumerate(requests):
        shares[i % processes].append((i, req))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=client, args=(url, s, barrier, results)) for s in shares]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)
    busy0, total0 = _busy_jiffies()
    started = time.perf_counter()
    outcomes: list[tuple[int, int, str, float]] = []
    retries = reruns = 0
    client_cpu = 0.0
    for _ in procs:
        out, r, rr, cpu = results.get(timeout=3600)
        outcomes += out
        retries += r
        reruns += rr
        client_cpu += cpu
    wall = time.perf_counter() - started
    busy1, total1 = _busy_jiffies()
    for p in procs:
        p.join(timeout=60)
    hz = os.sysconf("SC_CLK_TCK")

    workers = {w.id: w for w in repo.all_workers()}
    assignments = repo.all_assignments()
    repo.drop_schema()
    repo.close()

    errors = [o for o in outcomes if o[2].startswith("error:")]
    pair: dict[int, set[str]] = {}
    per_machine: dict[int, set[str]] = {}
    for _, m, result, _ in outcomes:
        if result.startswith(("refused:", "error:")):
            continue
        per_machine.setdefault(m, set()).add(result)
    for index, m, result, _ in outcomes:
        if requests[index][1] == "heartbeat" and not result.startswith("error:"):
            pair.setdefault(m, set()).add(result)
    split = sum(1 for ids in pair.values() if len(ids) > 1)
    held = Counter(a.worker_id for a in assignments if a.status is wm.AssignmentStatus.RUNNING)
    latencies = sorted(o[3] for o in outcomes)
    return {
        "requests": len(outcomes),
        "errors": len(errors),
        "first_error": errors[0][2] if errors else "",
        "split_pairs": split,
        "workers_per_machine": dict(sorted(Counter(len(v) for v in per_machine.values()).items())),
        "workers": len(workers),
        "held_twice": sum(1 for n in held.values() if n > 1),
        "retries_per_request": retries / max(1, len(outcomes)),
        "reruns_per_request": reruns / max(1, len(outcomes)),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "max_ms": 1000 * latencies[-1],
        "throughput": len(outcomes) / wall,
        "wall_s": wall,
        "client_cpu_s": client_cpu,
        "machine_busy_s": (busy1 - busy0) / hz,
        "machine_busy_pct": 100.0 * (busy1 - busy0) / max(1, total1 - total0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--lag", type=int, default=8)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"load average before: {load_average()}")
    r = run(args.db, args.machines, args.processes, args.lag)
    print(f"load average after: {load_average()}")
    backend = SQLWorkerRepository.from_url(args.db).engine.dialect.name
    print()
    print(
        "| database | machines x processes | split pairs | workers per machine | held twice "
        "| errors | retries / request | reruns / request | p50 | p99 | max | requests / s "
        "| client CPU | machine busy |"
    )
    print("|" + " --- |" * 14)
    wpm = ", ".join(f"{k}: {v}" for k, v in r["workers_per_machine"].items())
    print(
        f"| {backend} | {args.machines} x {args.processes} | {r['split_pairs']} | {wpm} "
        f"| {r['held_twice']} | {r['errors']} | {r['retries_per_request']:.2f} "
        f"| {r['reruns_per_request']:.2f} "
        f"| {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['max_ms']:.0f} ms "
        f"| {r['throughput']:.0f} | {r['client_cpu_s']:.1f} s "
        f"| {r['machine_busy_s']:.1f} s ({r['machine_busy_pct']:.0f} %) |"
    )
    if r["first_error"]:
        print(f"first error: {r['first_error']}", file=sys.stderr)
    if r["split_pairs"] or r["held_twice"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
