"""How fast a trace replays in memory, and that a replay's memory does not grow with the trace.

Run by hand from the repository root (5 to 10 minutes for a million requests, most of it under
tracemalloc)::

    .venv/bin/python benchmarks/bench_replay.py
    .venv/bin/python benchmarks/bench_replay.py --events 100000   # a quick look

It writes a long trace to a temporary file, one line at a time: a fleet of ``--machines``
machines (default 50), each running sessions one after another (a claim without hostname,
the GUI from another address 20 s later, a heartbeat every 30 s with the hostname, a progress
update every 2 s, the finale and ``finished``), laid out by the client model of
:mod:`workermatch.lab`; sessions last one to three hours, so the store ends with a few hundred
workers however long the trace.  Then, on that file:

* ``parse``: :func:`workermatch.trace.parse_trace` alone, every line read and checked;
* ``replay``: ``replay(parse_trace(file))`` on an empty in-memory store, each
  :class:`~workermatch.trace.ReplayLine` turned into its output line (what
  ``workermatch replay --jsonl`` prints), written nowhere;
* ``command``: ``workermatch replay FILE --jsonl`` run in this process, its output thrown away;
* ``memory``: the ``replay`` case again under :mod:`tracemalloc` (which slows it several times),
  with the peak of traced memory after each tenth of the trace: a replay that held the trace
  or its output would grow with it.

Each timing is the CPU time of this process (``time.process_time``) and the wall time; the
machine is shared, so the CPU time is the figure to compare.
"""

from __future__ import annotations

import argparse
import heapq
import io
import itertools
import os
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import workermatch as wm
from _bench import load_average
from _fleet import request_line
from workermatch import trace
from workermatch._cli import main as cli
from workermatch.lab import Request, every, session_requests

T0 = datetime(2025, 11, 6, 8, 0, 0, tzinfo=timezone.utc)


def machine(m: int, rng: random.Random) -> Iterator[Request]:
    """The requests of machine ``m``: sessions one after another, forever."""
    start = rng.randrange(600_000)
    for n in itertools.count(1):
        gui = start + 20_000
        end = gui + rng.randrange(3_600_000, 3 * 3_600_000)
        yield from session_requests(
            assignment=f"A{m}-{n}",
            claim_at=start,
            claim_ip=f"10.{m // 250}.{m % 250}.1",
            gui_at=gui,
            end_at=end,
            addresses=[(gui, f"10.{m // 250}.{m % 250}.2")],
            updates=every(gui + 400, 2_000, end - 2_600),
            hostname=f"host-{m}",
        )
        start = end + 10_000


def write_trace(path: Path, events: int, machines: int, seed: int = 0) -> None:
    """``events`` requests of ``machines`` machines, in arrival order, one line at a time."""
    rng = random.Random(seed)
    streams = [machine(m, rng) for m in range(machines)]
    merged = heapq.merge(*streams, key=lambda r: r.at_ms)
    with path.open("w", encoding="utf-8") as f:
        for r in itertools.islice(merged, events):
            f.write(trace.dump_json(request_line(T0, r)) + "\n")


def timed(fn: object) -> tuple[float, float]:
    """CPU and wall seconds of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()  # type: ignore[operator]
    return time.process_time() - cpu, time.perf_counter() - wall


def parse(path: Path) -> None:
    with path.open(encoding="utf-8") as f:
        for _ in trace.parse_trace(f):
            pass


def replay(path: Path, checkpoints: set[int] | None = None) -> list[tuple[int, int]]:
    """Replay the trace as ``workermatch replay --jsonl`` does, the output thrown away;
    with ``checkpoints``, the peak of traced memory after each of those lines."""
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    peaks: list[tuple[int, int]] = []
    with path.open(encoding="utf-8") as f:
        for result in trace.replay(trace.parse_trace(f), repo, wm.DEFAULT_POLICY):
            trace.dump_json(result.to_dict())
            if checkpoints is not None and result.line in checkpoints:
                peaks.append((result.line, tracemalloc.get_traced_memory()[1]))
    return peaks


def command(path: Path) -> None:
    status = cli(["replay", str(path), "--jsonl"], stdout=_Null())
    assert status == 0


class _Null(io.StringIO):
    """Standard output that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--skip", default="", help="cases to leave out, e.g. command,memory")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    print(
        f"workermatch {wm.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load_average()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.jsonl"
        cpu, wall = timed(lambda: write_trace(path, args.events, args.machines))
        size = path.stat().st_size
        print(f"wrote {args.events:,} requests ({size / 1e6:.0f} MB) in {wall:.0f} s")
        print("\n| case | CPU s | wall s | requests/s (CPU) | requests/s (wall) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, fn in (("parse", parse), ("replay", replay), ("command", command)):
            if name in skip:
                continue
            cpu, wall = timed(lambda fn=fn: fn(path))  # type: ignore[misc]
            print(
                f"| {name} | {cpu:.1f} | {wall:.1f} | {args.events / cpu:,.0f} | "
                f"{args.events / wall:,.0f} |",
                flush=True,
            )
        if "memory" not in skip:
            tenth = max(1, args.events // 10)
            tracemalloc.start()
            peaks = replay(path, checkpoints=set(range(tenth, args.events + 1, tenth)))
            tracemalloc.stop()
            print("\nPeak of traced memory during the replay (MB), after each tenth of the trace:")
            print("  " + ", ".join(f"{line:,}: {peak / 1e6:.1f}" for line, peak in peaks))
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
