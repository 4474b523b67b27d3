"""One clock, at full scale: server processes whose clocks disagree by 60 s, on one database.

Run by hand from the repository root, one database at a time (each mode lasts the fleet's real
time: about 3.5 minutes at full scale with the defaults, so 7 minutes for both)::

    .venv/bin/python benchmarks/bench_skew.py --db postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/bench_skew.py --db mysql://root@127.0.0.1:3306/test
    .venv/bin/python benchmarks/bench_skew.py --db ... --scale 25   # the test's size: seconds

Options: ``--machines`` (default 4), ``--skew`` (seconds process 0's clock runs ahead, default
60: twice the default quiet period), ``--processes`` (default 2), ``--scale`` (divide every
time and window by this, default 1: the default policy as it is).

The fleet and the modes are those of ``tests/stores/test_sql_skew.py`` (``tests/_skew.py``):
in ``store`` mode the library decides at the database's clock (``now=None``), in ``own`` mode
each process passes its own clock's time.  It prints, per mode, the requests sent, the errors,
the sessions split (a machine whose requests went to two or more workers) and the workers
mixed (one worker that answered two or more machines).  The tables are ``benchs_*``; they are
dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from _bench import fresh_repo, load_average
from _skew import run_fleet
from workermatch.sql import DEFAULT_MAPPING


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--machines", type=int, default=4)
    parser.add_argument("--skew", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    repo = fresh_repo(args.db, DEFAULT_MAPPING.with_table_prefix("benchs_"))
    print(f"load average before: {load_average()}")
    print()
    columns = ["database", "mode", "scale", "skew", "requests", "errors", "split sessions"]
    columns += ["mixed workers", "wall"]
    print("| " + " | ".join(columns) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        for mode in ("store", "own"):
            t0 = time.perf_counter()
            r = run_fleet(
                repo,
                machines=args.machines,
                scale=args.scale,
                skew_s=args.skew,
                mode=mode,
                processes=args.processes,
            )
            print(
                f"| {repo.engine.dialect.name} | {mode} | {args.scale:g} | {args.skew:g} s "
                f"| {r.requests} | {len(r.errors)} | {r.split} | {r.mixed} "
                f"| {time.perf_counter() - t0:.0f} s |",
                flush=True,
            )
    finally:
        repo.drop_schema()
        repo.close()
    print()
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
