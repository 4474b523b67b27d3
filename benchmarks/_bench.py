"""What the benchmark scripts share: timing, the machine's load, a fresh SQL store.

The scripts run as ``python benchmarks/bench_x.py`` from the repository root, so this folder is
first on ``sys.path`` and ``import _bench`` finds this module.  What a benchmark shares with the
tests (the fleets and traces built by hand) is in ``tests/_fleet.py`` instead: a script that
needs it puts ``tests/`` on ``sys.path`` first.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import workermatch as wm

if TYPE_CHECKING:
    from workermatch.sql import SQLWorkerRepository, TableMapping

__all__ = [
    "Timing",
    "best",
    "calibrate",
    "fleet_ip",
    "fresh_repo",
    "load_average",
    "machine",
    "one_round",
]

#: A timing: (CPU seconds, wall seconds) per call.
Timing = tuple[float, float]


def calibrate(fn: Callable[[], object], budget: float, *, slow_once: bool = False) -> int:
    """How many calls of ``fn`` take about ``budget`` seconds.  The first call warms up; with
    ``slow_once``, when that call alone takes a quarter of the budget, one call (a round is at
    least one call)."""
    start = time.perf_counter()
    fn()
    if slow_once and time.perf_counter() - start >= budget / 4:
        return 1
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= budget / 4:
            return max(1, int(loops * budget / elapsed))
        loops *= 4


def one_round(fn: Callable[[], object], loops: int) -> Timing:
    """CPU and wall seconds per call of ``fn`` over ``loops`` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.process_time() - cpu) / loops, (time.perf_counter() - wall) / loops


def best(old: Timing | None, new: Timing) -> Timing:
    """The best CPU time and the best wall time of two timings (each on its own)."""
    if old is None:
        return new
    return min(old[0], new[0]), min(old[1], new[1])


def load_average(sep: str = " ") -> str:
    """The machine's load averages over 1, 5 and 15 minutes, two decimals each."""
    return sep.join(f"{x:.2f}" for x in os.getloadavg())


def machine(store: str | None = None) -> str:
    """The line that says what ran the benchmark: versions, machine, CPUs, ``store`` if given,
    and the load average now."""
    where = "" if store is None else f"{store}, "
    return (
        f"workermatch {wm.__version__}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{where}load average {load_average()}"
    )


def fleet_ip(i: int) -> str:
    """The address of worker ``i`` of a benchmark's fleet: 10.0.0.0 onwards."""
    return str(ipaddress.IPv4Address(0x0A000000 + i))


def fresh_repo(url: str, mapping: TableMapping) -> SQLWorkerRepository:
    """A SQL store on ``url`` whose tables (``mapping``'s) are dropped if they exist and made
    anew."""
    from workermatch.sql import SQLWorkerRepository  # SQLAlchemy only when a benchmark asks

    repo = SQLWorkerRepository.from_url(url, mapping=mapping)
    repo.drop_schema()
    repo.create_schema()
    return repo
