"""Decisions per second of the Django repository, beside the SQL store on the same tables.

Run by hand from the repository root (about a minute)::

    .venv/bin/python benchmarks/bench_django.py --db postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/bench_django.py --db sqlite

Options: ``--workers`` (fleet size, default 10^4), ``--decisions`` per measurement (default
2000), ``--rounds`` (default 3; the best round of each measurement is kept, which keeps the
load of other processes on a shared machine out of the comparison as far as it can be).

One client, one connection.  Django makes a scratch database the way its test runner does
(``test_workermatch_bench`` on the server, or SQLite in memory) and migrates the
``workermatch`` app; the fleet is seeded there.  Two repositories decide on those same tables:

* ``django``: :func:`workermatch.apply_event` on
  :class:`~workermatch.contrib.django.DjangoWorkerRepository`;
* ``sql``: the same on :class:`~workermatch.sql.SQLWorkerRepository` (SQLAlchemy Core, raw
  driver cursors, its statements compiled once).

Two paths, as in ``bench_sql.py``: ``hot``, a heartbeat (with hostname) from the IP of a live
worker, matched by exact IP; ``create``, a heartbeat from an IP and hostname nobody has seen,
where every rule runs and a worker is inserted.  Each figure is decisions per second of wall
time, and the client's CPU time per decision (``time.process_time``: the library and the ORM,
not the server).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

import django
from django.conf import settings

NOW = datetime(2025, 11, 6, 12, 0, 0, tzinfo=timezone.utc)


def databases(db: str) -> dict[str, Any]:
    if db == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    parts = urlsplit(db)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "TEST": {"NAME": "test_workermatch_bench"},
    }


def ip(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + i))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a postgresql:// URL, or 'sqlite'")
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    settings.configure(
        DATABASES={"default": databases(args.db)},
        INSTALLED_APPS=["workermatch.contrib.django"],
        USE_TZ=True,
    )
    django.setup()
    import sqlalchemy as sa
    from django.db import connection

    import workermatch as wm
    from workermatch.contrib.django import DjangoWorkerRepository
    from workermatch.contrib.django.models import Worker
    from workermatch.sql import SQLWorkerRepository, normalize_url

    name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        n = args.workers
        Worker.objects.bulk_create(
            [
                Worker(
                    id=f"seed{i}",
                    ip=ip(i),
                    hostname=f"host{i}",
                    created_at=NOW - timedelta(hours=2),
                    last_seen=NOW - timedelta(seconds=10),
                    status="IDLE",
                    stale=False,
                )
                for i in range(n)
            ],
            batch_size=5000,
        )
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
            sql_repo = SQLWorkerRepository.from_url(normalize_url(args.db).set(database=name))
        else:
            engine = sa.create_engine(
                f"sqlite+pysqlite:///{name}&uri=true", poolclass=sa.pool.NullPool
            )
            sql_repo = SQLWorkerRepository(engine)
        repos: dict[str, Any] = {"django": DjangoWorkerRepository(), "sql": sql_repo}
        fresh = iter(range(n, 10 * n + 10**7))
        best: dict[tuple[str, str], tuple[float, float]] = {}
        for round_ in range(args.rounds):
            for path in ("hot", "create"):
                for label, repo in repos.items():
                    now = NOW + timedelta(seconds=round_)
                    events = [
                        wm.Event.heartbeat(ip(i % n), hostname=f"host{i % n}")
                        if path == "hot"
                        else wm.Event.heartbeat(ip(j := next(fresh)), hostname=f"new{j}")
                        for i in range(args.decisions)
                    ]
                    wall, cpu = time.perf_counter(), time.process_time()
                    for event in events:
                        wm.apply_event(event, now, repo)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    rate, cost = len(events) / wall, cpu / len(events) * 1e6
                    if rate > best.get((path, label), (0.0, 0.0))[0]:
                        best[(path, label)] = (rate, cost)
        sql_repo.close()
        sql_repo.engine.dispose()
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)

    print(
        f"{connection.vendor}, {args.workers} workers, {args.decisions} decisions per "
        f"measurement, best of {args.rounds}; Python {platform.python_version()}, "
        f"Django {django.get_version()}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print()
    print("| path | store | decisions/s | client CPU per decision |")
    print("| --- | --- | ---: | ---: |")
    for (path, label), (rate, cost) in sorted(best.items()):
        print(f"| {path} | {label} | {rate:,.0f} | {cost:,.0f} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
