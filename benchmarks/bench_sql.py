"""Decisions per second of the SQL repository, against a bare endpoint and the note's chain.

Run by hand from the repository root, one database at a time (a few minutes each)::

    .venv/bin/python benchmarks/bench_sql.py --db postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/bench_sql.py --db mysql://root@127.0.0.1:3306/test --clients 1,4
    .venv/bin/python benchmarks/bench_sql.py --db sqlite:////tmp/bench.db --clients 1,4

Options: ``--workers`` (fleet size, default 10^5), ``--clients`` (default ``1,4,16``),
``--seconds`` per measurement (default 3), ``--rounds`` (default 3: the three implementations
are measured in turn, three times, and the best round of each is kept, which keeps the load of
other processes on a shared machine out of the comparison as far as it can be).  Each client
is its own process with its own connection, as the processes of a web backend are; all clients
start together at a barrier and run for the same wall-clock window.  The tables are
``bench_*`` and are dropped at the end.

Three implementations, measured in the same run on the same data:

* ``workermatch``: :func:`workermatch.apply_event` on :class:`~workermatch.sql.SQLWorkerRepository`
  (the library's indexes, serialisable transactions, the default policy).
* ``bare``: the least a hand-written endpoint would do through the same driver: one indexed
  ``UPDATE ... SET last_seen = ... WHERE ip = ... RETURNING id`` (plain ``UPDATE`` on MariaDB,
  which has no ``UPDATE ... RETURNING``), and on the create path an ``INSERT`` when it updated
  nothing.  Default isolation, no lock, no decision.
* ``note``: a straightforward implementation of the design note's chain: one query per rule
  (exact IP, recent worker with a RUNNING assignment quiet for 30 s, hostname within 5 min),
  then create and transfer the running assignments of stale same-IP-or-hostname workers; on
  copies of the tables with no index beyond the primary keys; default isolation, no locking.

Two paths:

* ``hot``: a heartbeat (with hostname) from the IP of a live worker: matches by exact IP.  Each
  client cycles through its own share of 20,000 live workers (different machines).
* ``create``: a heartbeat from an IP and hostname nobody has seen: every rule runs, a worker is
  inserted.

The fleet (as in ``bench_core.py``): ``n`` workers with their own IP and hostname, created 1 to
25 hours before ``now``; three quarters live, one quarter silent past ``stale_after``; half of
them RUNNING an assignment; ten created within the orphan window.
"""

from __future__ import annotations

import argparse
import ipaddress
import multiprocessing
import os
import platform
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

import workermatch as wm
from workermatch.sql import DEFAULT_MAPPING, SQLWorkerRepository

NOW = datetime(2025, 11, 6, 12, 0, 0, tzinfo=timezone.utc)
HOT = 20_000
RECENT = 10
MAPPING = DEFAULT_MAPPING.with_table_prefix("bench_")
NOTE_WORKERS = "bench_note_workers"
NOTE_ASSIGNMENTS = "bench_note_assignments"


def _ip(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + i))  # 10.0.0.0 onwards


def _new_machine(rnd: random.Random) -> tuple[str, str]:
    """A machine nobody has seen: a random address in 11.0.0.0/8 and a random hostname (new
    machines do not arrive in address order)."""
    return str(
        ipaddress.IPv4Address(0x0B000000 + rnd.getrandbits(24))
    ), f"new-{rnd.getrandbits(48):x}"


def _note_tables(lib: Any) -> tuple[sa.Table, sa.Table]:
    """Copies of the library's tables with primary keys only."""
    md = sa.MetaData()

    def copy(table: sa.Table, name: str) -> sa.Table:
        return sa.Table(
            name,
            md,
            *(
                sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                for c in table.columns
            ),
        )

    return copy(lib.workers, NOTE_WORKERS), copy(lib.assignments, NOTE_ASSIGNMENTS)


def build(url: str, n: int) -> None:
    repo = SQLWorkerRepository.from_url(url, mapping=MAPPING)
    repo.drop_schema()
    note_w, note_a = _note_tables(repo.tables)
    note_w.metadata.drop_all(repo.engine)
    repo.create_schema()
    note_w.metadata.create_all(repo.engine)
    t = repo.tables
    workers: list[dict[str, Any]] = []
    assignments: list[dict[str, Any]] = []
    rnd = random.Random(7)
    for i in range(n):
        recent = i >= n - RECENT
        created = NOW - timedelta(minutes=1) if recent else NOW - timedelta(hours=1 + 24 * i / n)
        if i < HOT or recent:
            seen = NOW - timedelta(seconds=rnd.randrange(60))
        elif i < n * 3 // 4:
            seen = NOW - timedelta(seconds=rnd.randrange(240))
        else:
            seen = NOW - timedelta(hours=1)
        running = recent or i % 2 == 1
        w = wm.Worker(
            id=f"w{i}",
            ip=_ip(i),
            hostname=f"host-{i}",
            created_at=created,
            last_seen=seen,
            status=wm.WorkerStatus.RUNNING if running else wm.WorkerStatus.IDLE,
            assignment_id=f"a{i}" if running else None,
        )
        workers.append(repo._worker_values(w))
        if running:
            a = wm.Assignment(
                id=f"a{i}", status=wm.AssignmentStatus.RUNNING, worker_id=w.id, started_at=created
            )
            assignments.append(repo._assignment_values(a))
    # Insert in creation order (oldest first), as a live table grows: the live workers a
    # sequential scan looks for sit at the end of the heap.
    workers.reverse()
    assignments.reverse()
    with repo.engine.begin() as conn:
        for table, rows in ((t.workers, workers), (t.assignments, assignments)):
            for k in range(0, len(rows), 5000):
                conn.execute(sa.insert(table), rows[k : k + 5000])
    with repo.engine.begin() as conn:
        conn.execute(sa.insert(note_w).from_select(list(t.workers.c.keys()), t.workers.select()))
        conn.execute(
            sa.insert(note_a).from_select(list(t.assignments.c.keys()), t.assignments.select())
        )
    if repo.engine.dialect.name == "postgresql":
        with repo.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name in (t.workers.name, t.assignments.name, NOTE_WORKERS, NOTE_ASSIGNMENTS):
                conn.exec_driver_sql(f"VACUUM ANALYZE {name}")
    elif repo.engine.dialect.name in ("mysql", "mariadb"):
        with repo.engine.connect() as conn:
            for name in (t.workers.name, t.assignments.name, NOTE_WORKERS, NOTE_ASSIGNMENTS):
                conn.exec_driver_sql(f"ANALYZE TABLE {name}").all()
    else:
        with repo.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    repo.close()


def drop(url: str) -> None:
    repo = SQLWorkerRepository.from_url(url, mapping=MAPPING)
    note_w, _ = _note_tables(repo.tables)
    note_w.metadata.drop_all(repo.engine)
    repo.drop_schema()
    repo.close()


# -- the three implementations ------------------------------------------------------------------


class Library:
    def __init__(self, url: str, client: int) -> None:
        self.repo = SQLWorkerRepository.from_url(
            url, mapping=MAPPING, id_factory=lambda: f"c{client}-{os.urandom(6).hex()}"
        )

    def heartbeat(self, ip: str, hostname: str, now: datetime) -> None:
        wm.apply_event(wm.Event.heartbeat(ip, hostname=hostname), now, self.repo)

    def close(self) -> None:
        self.repo.close()


class Bare:
    def __init__(self, url: str, client: int) -> None:
        self.engine = sa.create_engine(wm_url(url))
        lib = SQLWorkerRepository(self.engine, mapping=MAPPING).tables
        self.w = lib.workers
        self.ip, self.seen = lib.w["ip"], lib.w["last_seen"]
        self.returning = self.engine.dialect.name not in ("mysql", "mariadb")
        self.client = client

    def heartbeat(self, ip: str, hostname: str, now: datetime) -> None:
        stmt = sa.update(self.w).where(self.ip == ip).values({self.seen.name: now})
        with self.engine.begin() as conn:
            if self.returning:
                found = conn.execute(stmt.returning(self.w.c[0])).first() is not None
            else:
                found = conn.execute(stmt).rowcount > 0
            if not found:
                conn.execute(
                    sa.insert(self.w).values(
                        id=f"b{self.client}-{os.urandom(6).hex()}",
                        ip=ip,
                        hostname=hostname,
                        created_at=now,
                        last_seen=now,
                        status="IDLE",
                        stale=False,
                    )
                )

    def close(self) -> None:
        self.engine.dispose()


class Note:
    """The note's chain, one query per rule, on tables with primary keys only."""

    def __init__(self, url: str, client: int) -> None:
        self.engine = sa.create_engine(wm_url(url))
        lib = SQLWorkerRepository(self.engine, mapping=MAPPING).tables
        self.w, self.a = _note_tables(lib)
        self.client = client

    def heartbeat(self, ip: str, hostname: str, now: datetime) -> None:
        w, a = self.w.c, self.a.c
        with self.engine.begin() as conn:
            # Priority 1: exact IP
            row = conn.execute(
                sa.select(w.id).where(w.ip == ip, w.stale == sa.false()).limit(1)
            ).first()
            if row is None:
                # Priority 2: recent worker with a RUNNING assignment, quiet for 30 s
                running = sa.select(a.id).where(a.worker_id == w.id, a.status == "RUNNING").exists()
                row = conn.execute(
                    sa.select(w.id)
                    .where(
                        w.stale == sa.false(),
                        w.created_at >= now - timedelta(minutes=2),
                        w.last_seen < now - timedelta(seconds=30),
                        running,
                    )
                    .limit(1)
                ).first()
            if row is None:
                # Priority 3: hostname seen within 5 min
                row = conn.execute(
                    sa.select(w.id)
                    .where(
                        w.hostname == hostname,
                        w.stale == sa.false(),
                        w.last_seen >= now - timedelta(minutes=5),
                    )
                    .limit(1)
                ).first()
            if row is not None:
                conn.execute(sa.update(self.w).where(w.id == row[0]).values(last_seen=now, ip=ip))
                return
            # Priority 4: create, and transfer from stale same-IP-or-hostname workers
            new_id = f"n{self.client}-{os.urandom(6).hex()}"
            conn.execute(
                sa.insert(self.w).values(
                    id=new_id,
                    ip=ip,
                    hostname=hostname,
                    created_at=now,
                    last_seen=now,
                    status="IDLE",
                    stale=False,
                )
            )
            stale = [
                r[0]
                for r in conn.execute(
                    sa.select(w.id).where(
                        sa.or_(w.ip == ip, w.hostname == hostname),
                        sa.or_(w.stale == sa.true(), w.last_seen < now - timedelta(minutes=5)),
                        w.id != new_id,
                    )
                )
            ]
            if stale:
                conn.execute(
                    sa.update(self.a)
                    .where(a.worker_id.in_(stale), a.status == "RUNNING")
                    .values(worker_id=new_id)
                )

    def close(self) -> None:
        self.engine.dispose()


IMPLS: dict[str, Any] = {"workermatch": Library, "bare": Bare, "note": Note}


def wm_url(url: str) -> Any:
    from workermatch.sql import normalize_url

    return normalize_url(url)


# -- clients ------------------------------------------------------------------------------------


def client(
    url: str,
    impl: str,
    path: str,
    index: int,
    nclients: int,
    seconds: float,
    barrier: Any,
    results: Any,
) -> None:
    runner = IMPLS[impl](url, index)
    hot = list(range(index, HOT, nclients))
    rnd = random.Random(os.urandom(8))
    rnd.shuffle(hot)
    barrier.wait(timeout=120)
    start = time.monotonic()
    done = 0
    baseline_retries = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        now = NOW + timedelta(seconds=elapsed)
        try:
            if path == "hot":
                i = hot[done % len(hot)]
                runner.heartbeat(_ip(i), f"host-{i}", now)
            else:
                ip, hostname = _new_machine(rnd)
                runner.heartbeat(ip, hostname, now)
        except sa.exc.OperationalError:
            # The baselines have no retry of their own: a deadlock between two concurrent
            # inserts (MariaDB's gap locks) aborts the request; it is counted and sent again.
            # (workermatch retries inside the repository and never gets here.)
            baseline_retries += 1
            continue
        done += 1
    elapsed = time.monotonic() - start
    runner.close()
    retries = getattr(getattr(runner, "repo", None), "retries", 0) + baseline_retries
    results.put((done, elapsed, retries))


def measure(url: str, impl: str, path: str, nclients: int, seconds: float) -> tuple[float, int]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(nclients)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=client, args=(url, impl, path, i, nclients, seconds, barrier, results))
        for i in range(nclients)
    ]
    for p in procs:
        p.start()
    outs: list[tuple[int, float, int]] = [results.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    rate = sum(done for done, _, _ in outs) / max(elapsed for _, elapsed, _ in outs)
    return rate, sum(retries for _, _, retries in outs)


def explain(url: str) -> None:
    """EXPLAIN ANALYZE every statement the library sends for the rule queries, on the fleet."""
    repo = SQLWorkerRepository.from_url(url, mapping=MAPPING, id_factory=lambda: "x-new")
    captured: list[tuple[str, str, Any]] = []
    label = [""]

    def before(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((label[0], statement, params))

    sa.event.listen(repo.engine, "before_cursor_execute", before)
    cases = [
        ("hot heartbeat (rule 2, exact IP)", wm.Event.heartbeat(_ip(7), hostname="host-7")),
        ("new machine (rules 2-4, transfer search)", wm.Event.heartbeat("12.0.0.1", hostname="x")),
        ("claim (assignment, holder)", wm.Event.claim(_ip(9), "a9")),
    ]
    for name, event in cases:
        label[0] = name

        def probe(event: wm.Event = event) -> None:
            wm.plan(event, NOW, repo, new_worker_id=repo.new_worker_id)

        repo.atomically(probe)
    sa.event.remove(repo.engine, "before_cursor_execute", before)
    seen: set[str] = set()
    with repo.engine.connect() as conn:
        for name, statement, params in captured:
            if statement in seen:
                continue
            seen.add(statement)
            prefix = "EXPLAIN (ANALYZE, COSTS OFF, BUFFERS OFF) "
            if conn.dialect.name == "sqlite":
                prefix = "EXPLAIN QUERY PLAN "
            elif conn.dialect.name != "postgresql":
                prefix = "EXPLAIN "
            rows = conn.exec_driver_sql(prefix + statement, params).all()
            print(f"-- {name}")
            print(" ".join(statement.split()))
            for row in rows:
                print("    " + " | ".join(str(v) for v in row))
            print()
    repo.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--workers", type=int, default=100_000)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--impls", default="workermatch,bare,note")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure each figure this many times, interleaved, and keep the best (default 3)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench_* tables")
    parser.add_argument(
        "--explain", action="store_true", help="only build the fleet and EXPLAIN the rule queries"
    )
    args = parser.parse_args(argv)
    if args.explain:
        build(args.db, args.workers)
        try:
            explain(args.db)
        finally:
            if not args.keep:
                drop(args.db)
        return 0
    clients = [int(c) for c in args.clients.split(",")]
    impls = args.impls.split(",")
    url = args.db
    print(f"# bench_sql: {wm_url(url).render_as_string(hide_password=True)}")
    print(
        f"# python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"workermatch {wm.__version__}, sqlalchemy {sa.__version__}"
    )
    print(f"# load before: {os.getloadavg()}")
    t = time.monotonic()
    build(url, args.workers)
    print(f"# built {args.workers} workers in {time.monotonic() - t:.1f} s")
    table: dict[tuple[str, str, int], float] = {}
    try:
        for path in ("hot", "create"):
            for n in clients:
                for r in range(args.rounds):
                    for impl in impls:
                        rate, retries = measure(url, impl, path, n, args.seconds)
                        key = (path, impl, n)
                        table[key] = max(table.get(key, 0.0), rate)
                        print(
                            f"{path:6} {impl:12} clients={n:<3} round {r + 1}: {rate:7.0f} "
                            f"decisions/s, {retries} retries, load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
    finally:
        if not args.keep:
            drop(url)
    print(f"# load after: {os.getloadavg()}")
    print()
    print("| path | clients | " + " | ".join(impls) + " | vs bare | vs note |")
    print("| --- | ---: | " + " | ".join("---:" for _ in impls) + " | ---: | ---: |")
    for path in ("hot", "create"):
        for n in clients:
            rates = [table[(path, impl, n)] for impl in impls]
            ours = table.get((path, "workermatch", n))
            bare = table.get((path, "bare", n))
            note = table.get((path, "note", n))
            vs_bare = f"{ours / bare:.0%}" if ours and bare else "-"
            vs_note = f"{ours / note:.1f}x" if ours and note else "-"
            print(
                f"| {path} | {n} | "
                + " | ".join(f"{r:.0f}" for r in rates)
                + f" | {vs_bare} | {vs_note} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
