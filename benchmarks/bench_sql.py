"""Decisions per second and CPU per decision of the SQL repository, against the driver's floor
and the note's chain.

Run by hand from the repository root, one database at a time (use a database of your own: the
tables are ``bench_*`` and are dropped at the end)::

    .venv/bin/python benchmarks/bench_sql.py --db postgresql://postgres@127.0.0.1:5432/wt_me
    .venv/bin/python benchmarks/bench_sql.py --db mysql://root@127.0.0.1:3306/wt_me --clients 1,4
    .venv/bin/python benchmarks/bench_sql.py --db sqlite:////tmp/bench.db --clients 1,4

Options: ``--workers`` (fleet size, default 10^5), ``--clients`` (default ``1,4,16``),
``--seconds`` per measurement (default 3), ``--rounds`` (default 3: the implementations are
measured in turn, that many times, and the best round of each is kept), ``--impls`` (default
``workermatch,floor,note``), ``--paths`` (default ``hot,create``).  Each client is its own
process with its own connection, as the processes of a web backend are; all clients warm up
(a few decisions, so that the driver has prepared its statements), then start together at a
barrier and run for the same wall-clock window.

What is measured per decision, beside decisions per second of wall time:

* **client CPU**: each client process's own CPU time over the window (``time.process_time``);
* **server CPU**: PostgreSQL: the CPU time of the backend processes serving the clients'
  connections (``pg_backend_pid()``, read from ``/proc/<pid>/stat`` before and after the
  window; the WAL writer and checkpointer are not counted); MariaDB: the whole server
  process's CPU time over the window (``/proc/<pid>/stat`` of ``mariadbd``; other work on
  the same server counts too, so read it as an upper bound); SQLite runs in the client.

CPU per decision does not depend on how busy the rest of the machine is, which decisions per
second do; on a shared machine compare the CPU columns.

The implementations, measured in the same run on the same data:

* ``workermatch``: :func:`workermatch.apply_event` on :class:`~workermatch.sql.SQLWorkerRepository`
  made by ``from_url`` (the library's indexes, serialisable transactions, the default policy).
* ``floor``: the driver alone, no SQLAlchemy on its path, one statement per request in
  autocommit: psycopg 3's server-side prepared ``UPDATE ... SET last_seen = %s WHERE ip = %s
  RETURNING id`` (``prepare=True``); on MariaDB PyMySQL's plain ``UPDATE`` (MariaDB has
  ``INSERT ... RETURNING`` and ``DELETE ... RETURNING`` but no ``UPDATE ... RETURNING``; the
  matched rows come from ``CLIENT.FOUND_ROWS``); on SQLite the standard library's ``sqlite3``
  with ``UPDATE ... RETURNING`` (SQLite 3.35 or newer).  On the create path an ``INSERT``
  follows when the update matched nothing.  No decision, no isolation beyond the database's
  default, no lock.
* ``floor-tx`` (not run by default): the same statement inside ``BEGIN`` / ``COMMIT``, as a
  driver's default (non-autocommit) mode runs it.
* ``note``: a straightforward implementation of the design note's chain on SQLAlchemy Core:
  one query per rule (exact IP, recent worker with a RUNNING assignment quiet for 30 s,
  hostname within 5 min), then create and transfer the running assignments of stale
  same-IP-or-hostname workers; on copies of the tables with the obvious plain indexes (workers
  by ``ip``, by ``hostname``, assignments by ``worker_id``); default isolation, no locking.
* ``core`` (not run by default): the floor's statement rebuilt with SQLAlchemy Core and run in
  ``engine.begin()`` on every call: what the SQLAlchemy layers cost on top of the driver.

Two paths (``--paths``):

* ``hot``: a heartbeat (with hostname) from the IP of a live worker: matches by exact IP.  Each
  client cycles through its own share of 20,000 live workers (different machines).
* ``create``: a heartbeat from an IP and hostname nobody has seen: every rule runs, a worker is
  inserted.

The fleet (as in ``bench_core.py``): ``n`` workers with their own IP and hostname, created 1 to
25 hours before ``now``; three quarters live, one quarter silent past ``stale_after``; half of
them RUNNING an assignment; ten created within the orphan window.

``--explain`` only builds the fleet and prints ``EXPLAIN`` of every ``SELECT`` the library
sends (on PostgreSQL both the plan for the values given and the generic plan a prepared
statement falls back to).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import multiprocessing
import os
import platform
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import sqlalchemy as sa

import workermatch as wm
from _bench import fleet_ip, fresh_repo, load_average
from _fleet import worker_and_assignment
from workermatch.sql import DEFAULT_MAPPING, SQLWorkerRepository

NOW = datetime(2025, 11, 6, 12, 0, 0, tzinfo=timezone.utc)
HOT = 20_000
RECENT = 10
MAPPING = DEFAULT_MAPPING.with_table_prefix("bench_")
NOTE_WORKERS = "bench_note_workers"
NOTE_ASSIGNMENTS = "bench_note_assignments"


def _new_machine(rnd: random.Random) -> tuple[str, str]:
    """A machine nobody has seen: a random address in 11.0.0.0/8 and a random hostname (new
    machines do not arrive in address order)."""
    return str(
        ipaddress.IPv4Address(0x0B000000 + rnd.getrandbits(24))
    ), f"new-{rnd.getrandbits(48):x}"


def _note_tables(lib: Any) -> tuple[sa.Table, sa.Table]:
    """Copies of the library's tables with the obvious plain indexes: workers by ``ip`` and by
    ``hostname``, assignments by ``worker_id`` (the primary keys index the ids)."""
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

    workers = copy(lib.workers, NOTE_WORKERS)
    assignments = copy(lib.assignments, NOTE_ASSIGNMENTS)
    sa.Index(f"{NOTE_WORKERS}_ip", workers.c.ip)
    sa.Index(f"{NOTE_WORKERS}_hostname", workers.c.hostname)
    sa.Index(f"{NOTE_ASSIGNMENTS}_worker", assignments.c.worker_id)
    return workers, assignments


def build(url: str, n: int) -> None:
    repo = fresh_repo(url, MAPPING)
    note_w, note_a = _note_tables(repo.tables)
    note_w.metadata.drop_all(repo.engine)
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
        w, a = worker_and_assignment(
            f"w{i}",
            f"a{i}",
            ip=fleet_ip(i),
            hostname=f"host-{i}",
            created=created,
            seen=seen,
            running=recent or i % 2 == 1,
        )
        workers.append(repo._worker_values(w))
        if a is not None:
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


# -- the implementations -----------------------------------------------------------------------


def _record_backends(engine: sa.Engine, pids: list[int]) -> None:
    """Remember the PostgreSQL backend of every connection ``engine`` opens."""
    if engine.dialect.name != "postgresql":
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SELECT pg_backend_pid()")
        pids.append(int(cur.fetchone()[0]))
        cur.close()
        dbapi_conn.rollback()


class Library:
    def __init__(self, url: str, client: int) -> None:
        self.repo = SQLWorkerRepository.from_url(
            url, mapping=MAPPING, id_factory=lambda: f"c{client}-{os.urandom(6).hex()}"
        )
        self.pids: list[int] = []
        _record_backends(self.repo.engine, self.pids)

    def heartbeat(self, ip: str, hostname: str, now: datetime) -> None:
        wm.apply_event(wm.Event.heartbeat(ip, hostname=hostname), now, self.repo)

    @property
    def retries(self) -> int:
        return self.repo.retries

    def close(self) -> None:
        self.repo.close()


class Floor:
    """The driver alone: one prepared statement per request, in autocommit (``floor``), or in
    ``BEGIN`` / ``COMMIT`` (``floor-tx``)."""

    transaction = False

    def __init__(self, url: str, client: int) -> None:
        parsed = wm_url(url)
        self.backend = parsed.get_backend_name()
        self.client = client
        self.pids: list[int] = []
        self.retries = 0
        table = MAPPING.workers_table
        if self.backend == "postgresql":
            import psycopg

            self.conn: Any = psycopg.connect(
                host=parsed.host,
                port=parsed.port,
                user=parsed.username,
                password=parsed.password,
                dbname=parsed.database,
                autocommit=not self.transaction,
                options="-c timezone=UTC",
            )
            self.pids.append(int(self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]))
            if self.transaction:
                self.conn.commit()
            mark = "%s"
        elif self.backend in ("mysql", "mariadb"):
            import pymysql
            from pymysql.constants import CLIENT

            self.conn = pymysql.connect(
                host=parsed.host,
                port=parsed.port or 3306,
                user=parsed.username,
                password=parsed.password or "",
                database=parsed.database,
                autocommit=not self.transaction,
                client_flag=CLIENT.FOUND_ROWS,  # rowcount: rows matched, not rows changed
                init_command="SET time_zone = '+00:00'",
            )
            mark = "%s"
        else:
            import sqlite3

            self.conn = sqlite3.connect(
                parsed.database, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            mark = "?"
        false = "0" if self.backend == "sqlite" else "false"
        returning = " RETURNING id" if self.backend in ("postgresql", "sqlite") else ""
        self.update = f"UPDATE {table} SET last_seen = {mark} WHERE ip = {mark}{returning}"
        self.insert = (
            f"INSERT INTO {table} (id, ip, hostname, created_at, last_seen, status, stale) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, 'IDLE', {false})"
        )

    def _execute(self, cur: Any, sql: str, args: tuple[Any, ...]) -> None:
        if self.backend == "postgresql":
            cur.execute(sql, args, prepare=True)
        else:
            cur.execute(sql, args)

    def heartbeat(self, ip: str, hostname: str, now: datetime) -> None:
        at: Any = now.astimezone(timezone.utc).replace(tzinfo=None)
        if self.backend == "sqlite":
            at = at.isoformat(sep=" ", timespec="microseconds")
        cur = self.conn.cursor()
        try:
            if self.transaction and self.backend == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            self._execute(cur, self.update, (at, ip))
            if self.backend in ("mysql", "mariadb"):
                found = cur.rowcount > 0
            else:
                found = cur.fetchone() is not None
            if not found:
                new_id = f"f{self.client}-{os.urandom(6).hex()}"
                self._execute(cur, self.insert, (new_id, ip, hostname, at, at))
            if self.transaction and self.backend == "sqlite":
                cur.execute("COMMIT")
            elif self.transaction:
                self.conn.commit()
        finally:
            cur.close()

    def close(self) -> None:
        self.conn.close()


class FloorTx(Floor):
    transaction = True


def _insert_idle(
    workers: sa.Table, worker_id: str, ip: str, hostname: str, now: datetime
) -> sa.Insert:
    """SQLAlchemy Core's ``INSERT`` of a new IDLE worker first seen ``now`` (``core`` and
    ``note``, where nothing matched)."""
    return sa.insert(workers).values(
        id=worker_id,
        ip=ip,
        hostname=hostname,
        created_at=now,
        last_seen=now,
        status="IDLE",
        stale=False,
    )


class Core:
    """The floor's statement rebuilt with SQLAlchemy Core and run in ``engine.begin()`` on every
    call (the comparison this benchmark used to call "bare")."""

    def __init__(self, url: str, client: int) -> None:
        self.engine = sa.create_engine(wm_url(url))
        self.pids: list[int] = []
        _record_backends(self.engine, self.pids)
        lib = SQLWorkerRepository(self.engine, mapping=MAPPING).tables
        self.w = lib.workers
        self.ip, self.seen = lib.w["ip"], lib.w["last_seen"]
        self.returning = self.engine.dialect.name not in ("mysql", "mariadb")
        self.client = client
        self.retries = 0

    def heartbeat(self, ip: str, hostname: str, now: datetime) -> None:
        stmt = sa.update(self.w).where(self.ip == ip).values({self.seen.name: now})
        with self.engine.begin() as conn:
            if self.returning:
                found = conn.execute(stmt.returning(self.w.c[0])).first() is not None
            else:
                found = conn.execute(stmt).rowcount > 0
            if not found:
                conn.execute(
                    _insert_idle(self.w, f"b{self.client}-{os.urandom(6).hex()}", ip, hostname, now)
                )

    def close(self) -> None:
        self.engine.dispose()


class Note:
    """The note's chain, one query per rule, on tables with plain indexes (SQLAlchemy Core)."""

    def __init__(self, url: str, client: int) -> None:
        self.engine = sa.create_engine(wm_url(url))
        self.pids: list[int] = []
        self.retries = 0
        _record_backends(self.engine, self.pids)
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
            conn.execute(_insert_idle(self.w, new_id, ip, hostname, now))
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


IMPLS: dict[str, Any] = {
    "workermatch": Library,
    "floor": Floor,
    "floor-tx": FloorTx,
    "note": Note,
    "core": Core,
}


def wm_url(url: str) -> Any:
    from workermatch.sql import normalize_url

    return normalize_url(url)


# -- clients ------------------------------------------------------------------------------------


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> float:
    """CPU time (user + system, seconds) of process ``pid`` on this machine, or 0."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _server_pid(url: str) -> int | None:
    """The local MariaDB / MySQL server process, for its CPU time (``None`` if not found)."""
    if wm_url(url).get_backend_name() not in ("mysql", "mariadb"):
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in ("mariadbd", "mysqld"):
                        return int(entry)
            except OSError:
                continue
    return None


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
    # Warm up: connections made, statements prepared by the driver (psycopg prepares a
    # statement on its fifth execution).
    for k in range(8):
        if path == "hot":
            i = hot[-1 - k]
            runner.heartbeat(fleet_ip(i), f"host-{i}", NOW)
        else:
            ip, hostname = _new_machine(rnd)
            runner.heartbeat(ip, hostname, NOW)
    barrier.wait(timeout=120)
    pids = list(runner.pids)
    server0 = {pid: _proc_cpu(pid) for pid in pids}
    cpu0 = time.process_time()
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
                runner.heartbeat(fleet_ip(i), f"host-{i}", now)
            else:
                ip, hostname = _new_machine(rnd)
                runner.heartbeat(ip, hostname, now)
        except (sa.exc.OperationalError, sa.exc.DBAPIError):
            # The baselines have no retry of their own: a deadlock between two concurrent
            # inserts (MariaDB's gap locks) aborts the request; it is counted and sent again.
            # (workermatch retries inside the repository and never gets here.)
            baseline_retries += 1
            continue
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("psycopg", "pymysql", "sqlite3"):
                baseline_retries += 1
                with contextlib.suppress(Exception):
                    runner.conn.rollback()
                continue
            raise
        done += 1
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu0
    server = sum(_proc_cpu(pid) - server0.get(pid, 0.0) for pid in runner.pids)
    runner.close()
    retries = runner.retries + baseline_retries
    results.put((done, elapsed, retries, cpu, server))


class Figure:
    """One measurement: decisions per second, CPU per decision (client, server), retries."""

    def __init__(self, rate: float, decisions: int, client: float, server: float, retries: int):
        self.rate = rate
        self.decisions = decisions
        self.client = client
        self.server = server
        self.retries = retries

    @property
    def cpu(self) -> float:
        return self.client + self.server


def measure(url: str, impl: str, path: str, nclients: int, seconds: float) -> Figure:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(nclients + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=client, args=(url, impl, path, i, nclients, seconds, barrier, results))
        for i in range(nclients)
    ]
    for p in procs:
        p.start()
    server_pid = _server_pid(url)
    barrier.wait(timeout=300)
    server0 = _proc_cpu(server_pid) if server_pid else 0.0
    outs = [results.get(timeout=seconds + 300) for _ in procs]
    server_all = (_proc_cpu(server_pid) - server0) if server_pid else 0.0
    for p in procs:
        p.join()
    decisions = sum(o[0] for o in outs)
    rate = decisions / max(o[1] for o in outs)
    per = max(decisions, 1)
    server = server_all if server_pid else sum(o[4] for o in outs)
    return Figure(
        rate, decisions, sum(o[3] for o in outs) / per, server / per, sum(o[2] for o in outs)
    )


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
        ("hot heartbeat (rule 2, exact IP)", wm.Event.heartbeat(fleet_ip(7), hostname="host-7")),
        ("new machine (rules 2-4, transfer search)", wm.Event.heartbeat("12.0.0.1", hostname="x")),
        ("claim (assignment, holder)", wm.Event.claim(fleet_ip(9), "a9")),
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
            if conn.dialect.name == "postgresql":
                print("  the generic plan (what a prepared statement may fall back to):")
                for line in generic_plan(conn, statement, params):
                    print("    " + line)
            print()
            conn.rollback()
    repo.close()


def generic_plan(conn: Any, statement: str, params: dict[str, Any]) -> list[str]:
    """PostgreSQL's generic plan of ``statement`` (psycopg's ``%(name)s`` placeholders), as a
    server-side prepared statement gets it once the plan cache prefers it: ``PREPARE`` it,
    then ``EXPLAIN EXECUTE`` with ``plan_cache_mode = force_generic_plan`` (PostgreSQL 12 and
    newer; 16 also has ``EXPLAIN (GENERIC_PLAN)``)."""
    import re

    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", number, statement)
    conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.exec_driver_sql(f"PREPARE wm_generic AS {text}")
    try:
        from psycopg import sql

        raw = conn.connection.dbapi_connection
        args = ", ".join(sql.Literal(params[name]).as_string(raw) for name in order)
        rows = conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) EXECUTE wm_generic({args})")
        return [str(r[0]) for r in rows]
    finally:
        conn.exec_driver_sql("DEALLOCATE wm_generic")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--workers", type=int, default=100_000)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--impls",
        default="workermatch,floor,note",
        help="among workermatch, floor, floor-tx, note, core (default workermatch,floor,note)",
    )
    parser.add_argument("--paths", default="hot,create")
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
    paths = args.paths.split(",")
    url = args.db
    print(f"# bench_sql: {wm_url(url).render_as_string(hide_password=True)}")
    print(
        f"# python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"workermatch {wm.__version__}, sqlalchemy {sa.__version__}, {_server_version(url)}"
    )
    print(f"# load before: {load_average(', ')}")
    t = time.monotonic()
    build(url, args.workers)
    print(f"# built {args.workers} workers in {time.monotonic() - t:.1f} s")
    best: dict[tuple[str, str, int], Figure] = {}
    try:
        for path in paths:
            for n in clients:
                for r in range(args.rounds):
                    for impl in impls:
                        fig = measure(url, impl, path, n, args.seconds)
                        key = (path, impl, n)
                        old = best.get(key)
                        if old is None:
                            best[key] = fig
                        else:  # the best of the rounds, each figure on its own
                            old.rate = max(old.rate, fig.rate)
                            if fig.cpu < old.cpu:
                                old.client, old.server = fig.client, fig.server
                            old.retries = max(old.retries, fig.retries)
                        print(
                            f"{path:6} {impl:12} clients={n:<3} round {r + 1}: {fig.rate:7.0f} "
                            f"decisions/s, CPU per decision {fig.client * 1e6:6.0f} us client + "
                            f"{fig.server * 1e6:6.0f} us server, {fig.retries} retries, "
                            f"load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
    finally:
        if not args.keep:
            drop(url)
    print(f"# load after: {load_average(', ')}")
    print()
    print(
        "| path | clients | implementation | decisions/s | client CPU (µs) | server CPU (µs) "
        "| CPU per decision (µs) | retries |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for path in paths:
        for n in clients:
            for impl in impls:
                f = best[(path, impl, n)]
                print(
                    f"| {path} | {n} | {impl} | {f.rate:.0f} | {f.client * 1e6:.0f} | "
                    f"{f.server * 1e6:.0f} | {f.cpu * 1e6:.0f} | {f.retries} |"
                )
    if "workermatch" in impls and ("floor" in impls or "note" in impls):
        print()
        print(
            "| path | clients | throughput vs floor | CPU vs floor | note's throughput vs ours "
            "| note's CPU vs ours |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for path in paths:
            for n in clients:
                ours = best[(path, "workermatch", n)]
                floor = best.get((path, "floor", n))
                note = best.get((path, "note", n))
                cells = [
                    f"{ours.rate / floor.rate:.0%}" if floor else "-",
                    f"{floor.cpu / ours.cpu:.0%}" if floor else "-",
                    f"{note.rate / ours.rate:.2f}x" if note else "-",
                    f"{note.cpu / ours.cpu:.2f}x" if note else "-",
                ]
                print(f"| {path} | {n} | " + " | ".join(cells) + " |")
    return 0


def _server_version(url: str) -> str:
    engine = sa.create_engine(wm_url(url))
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                return f"SQLite {conn.exec_driver_sql('SELECT sqlite_version()').scalar()}"
            return str(conn.exec_driver_sql("SELECT version()").scalar()).split(" on ")[0]
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
