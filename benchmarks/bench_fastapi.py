"""The FastAPI example served by uvicorn over real HTTP on PostgreSQL: a start-up burst, then
heartbeat throughput of the example's async route beside a bare UPDATE and a synchronous route.

    python benchmarks/bench_fastapi.py --db postgresql://postgres@127.0.0.1:5432/test

It serves ``examples/fastapi_service`` with uvicorn (``--processes`` worker processes) on tables
under a private prefix, and:

1. **burst**: ``--machines`` machines at once, each queueing its assignment, claiming it, and
   sending its GUI's two simultaneous start-up heartbeats (the even machines' GUI on the claim's
   address, the odd ones' from another address with the assignment as a hint); then it checks
   that there is exactly one worker per machine;
2. **heartbeats**: for ``--duration`` seconds each, in ``--rounds`` interleaved rounds (best
   kept), heartbeats of those machines, each from its own address, to three routes of one app:

   * ``async``: the example's ``POST /api/heartbeat`` (``workermatch.aio.apply_event`` on
     ``AsyncSQLWorkerRepository``, at the app's clock);
   * ``async, db clock``: the same at the database's clock (``now=None``: one statement more);
   * ``floor``: a bare ``UPDATE workers SET last_seen = ... WHERE ip = ... RETURNING id`` on the
     same ``AsyncEngine``: what a heartbeat costs with no decision at all;
   * ``sync``: a ``def`` route (FastAPI's thread pool) calling ``workermatch.apply_event`` on a
     ``SQLWorkerRepository`` (psycopg) on the same tables, at the app's clock.

The load comes from ``wrk`` when it is installed (``apt-get install wrk``: light, written in C),
else from an httpx client in this process, which takes a core of its own.  Every request names
its machine's address in ``X-Forwarded-For``; the app trusts it from 127.0.0.1 (as behind a
proxy on the same host).  CPU per request is the server processes' CPU time (user + system,
from ``/proc``) over the requests served, and beside it that of the PostgreSQL backends serving
their connections (found through ``pg_stat_activity``'s client ports; a server on this machine
only).  The machine's load average is printed: read the figures against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from fastapi_service.app import (  # noqa: E402
    NO_BODY,
    ClientRequest,
    Reply,
    client_address,
    create_app,
)

import workermatch as wm  # noqa: E402
from workermatch import aio  # noqa: E402
from workermatch.sql import DEFAULT_MAPPING, SQLWorkerRepository  # noqa: E402

VARIANTS = {
    "async": "/api/heartbeat",
    "async, db clock": "/bench/heartbeat-database-clock",
    "floor": "/bench/floor",
    "sync": "/bench/sync-heartbeat",
}


def cli_address(i: int) -> str:
    """Machine ``i``'s claim address (198.18.0.0/15 is the range set aside for benchmarks)."""
    return f"198.18.{i // 250}.{i % 250 + 1}"


def gui_address(i: int) -> str:
    return cli_address(i) if i % 2 == 0 else f"198.19.{i // 250}.{i % 250 + 1}"


# -- the app the server processes run -------------------------------------------------------------


def bench_app() -> FastAPI:
    """The example app plus the two comparison routes (uvicorn ``--factory``)."""
    app = create_app()
    mapping = DEFAULT_MAPPING.with_table_prefix(os.environ["WORKERMATCH_TABLE_PREFIX"])
    pool = int(os.environ.get("WORKERMATCH_POOL_SIZE", "5"))
    sync_repo = SQLWorkerRepository.from_url(
        os.environ["WORKERMATCH_DATABASE_URL"], mapping=mapping, pool_size=pool, max_overflow=0
    )

    @app.post("/bench/floor")
    async def floor(request: Request, body: ClientRequest = NO_BODY) -> dict[str, Any]:
        repo = request.app.state.repo
        w = repo.tables.w
        stmt = (
            sa.update(repo.tables.workers)
            .where(w["ip"] == client_address(request))
            .values({w["last_seen"]: datetime.now(timezone.utc)})
            .returning(w["id"])
        )
        async with repo.engine.begin() as conn:
            worker_id = (await conn.execute(stmt)).scalar_one_or_none()
        return {"workerId": worker_id, "hostname": body.hostname}

    @app.post("/bench/heartbeat-database-clock")
    async def heartbeat_database_clock(request: Request, body: ClientRequest = NO_BODY) -> Reply:
        event = wm.Event.heartbeat(client_address(request), hostname=body.hostname)
        return Reply.of(await aio.apply_event(event, None, request.app.state.repo))

    @app.post("/bench/sync-heartbeat")
    def sync_heartbeat(request: Request, body: ClientRequest = NO_BODY) -> Reply:
        event = wm.Event.heartbeat(client_address(request), hostname=body.hostname)
        return Reply.of(wm.apply_event(event, datetime.now(timezone.utc), sync_repo))

    return app


# -- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serving(url: str, prefix: str, processes: int, pool: int) -> Iterator[tuple[str, int]]:
    """uvicorn with ``processes`` workers; yields (base URL, process group id)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "examples"), os.environ.get("PYTHONPATH", "")]),
        "WORKERMATCH_DATABASE_URL": url,
        "WORKERMATCH_TABLE_PREFIX": prefix,
        "WORKERMATCH_TRUSTED_PROXIES": "127.0.0.1",
        "WORKERMATCH_POOL_SIZE": str(pool),
        "WORKERMATCH_LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench_fastapi:bench_app",
        "--app-dir",
        str(ROOT / "benchmarks"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(processes),
        "--no-proxy-headers",
        "--no-access-log",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "uvicorn.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + 60
            while log.read_text(errors="replace").count("startup complete") < processes:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"uvicorn did not start:\n{log.read_text(errors='replace')}")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}", server.pid
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if server.poll() is None:
                    os.killpg(server.pid, sig)
                    try:
                        server.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        continue
            with contextlib.suppress(ProcessLookupError):  # workers left without a supervisor
                os.killpg(server.pid, signal.SIGKILL)
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                first = text[text.index("Traceback") :].splitlines()[:60]
                print(f"the server failed {text.count('Traceback')} times; first:", file=sys.stderr)
                print(*first, sep="\n  ", file=sys.stderr)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:  # state, ppid, pgrp
                pids.append(int(entry.name))
    return pids


def cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) the live processes ``pids`` have used."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def database_backends(pids: list[int], repo: SQLWorkerRepository) -> list[int]:
    """The PostgreSQL backends serving the server processes ``pids``: matched by the client
    port of each backend's connection (``pg_stat_activity``) to the ports of the processes'
    sockets (``/proc``).  Only on a server on this machine."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    with repo.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT pid, client_port FROM pg_stat_activity").all()
    return [pid for pid, port in rows if port in ports]


# -- load ----------------------------------------------------------------------------------------


async def post(http: Any, address: str, path: str, body: dict[str, Any]) -> tuple[Any, int]:
    """POST as from ``address``; a 503 is retried after its Retry-After (as the real client
    should).  Returns the reply and how many 503s it met."""
    retried = 0
    while True:
        response = await http.post(path, json=body, headers={"X-Forwarded-For": address})
        if response.status_code != 503 or retried >= 20:
            break
        retried += 1
        await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 4)
    if response.status_code not in (200, 201):
        raise SystemExit(f"{path} from {address}: {response.status_code} {response.text}")
    return response.json(), retried


async def burst(base_url: str, machines: int, connections: int) -> tuple[float, int, list[str]]:
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as http:

        async def machine(i: int) -> tuple[set[str], int]:
            assignment = f"B{i}"
            _, r0 = await post(http, cli_address(i), "/api/assignments", {"id": assignment})
            claimed, r1 = await post(
                http, cli_address(i), f"/api/assignments/{assignment}/claim", {}
            )
            beat = {"hostname": f"m{i}"} | ({"assignmentId": assignment} if i % 2 else {})
            (a, r2), (b, r3) = await asyncio.gather(
                post(http, gui_address(i), "/api/heartbeat", beat),
                post(http, gui_address(i), "/api/heartbeat", beat),
            )
            return {claimed["workerId"], a["workerId"], b["workerId"]}, r0 + r1 + r2 + r3

        started = time.perf_counter()
        results = await asyncio.gather(*(machine(i) for i in range(machines)))
        elapsed = time.perf_counter() - started
    split = [i for i, (ids, _) in enumerate(results) if len(ids) != 1]
    if split:
        raise SystemExit(f"machines placed on several workers: {split[:10]}")
    return elapsed, sum(r for _, r in results), [next(iter(ids)) for ids, _ in results]


WRK_SCRIPT = """
-- Each of wrk's threads cycles through its own share of the machines, so that no two
-- requests in flight are one machine's.
local machines = %(machines)d
local threads = %(threads)d
local path = "%(path)s"
local started = 0
local counter = 0

function setup(thread)
  thread:set("part", started)
  started = started + 1
end

local function address(i)
  local block = math.floor(i / 250)
  local host = i %% 250 + 1
  if i %% 2 == 0 then
    return "198.18." .. block .. "." .. host
  end
  return "198.19." .. block .. "." .. host
end

function request()
  local size = math.floor(machines / threads)
  local i = tonumber(part) * size + counter %% size
  counter = counter + 1
  local body = '{"hostname": "m' .. i .. '"}'
  return wrk.format("POST", path, {["Content-Type"] = "application/json",
                                   ["X-Forwarded-For"] = address(i)}, body)
end
"""

WRK_THREADS = 2


def run_wrk(
    base_url: str, path: str, machines: int, connections: int, duration: float
) -> tuple[int, int, float]:
    """(requests, errors, seconds) of one wrk run."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"machines": machines, "threads": WRK_THREADS, "path": path})
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{WRK_THREADS}",
                f"-c{connections}",
                f"-d{duration:g}s",
                "--timeout",
                "30s",
                "-s",
                script.name,
                base_url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if done is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    seconds = float(done[2]) / (1000 if done[3] == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad[1]) if bad else 0) + (sum(map(int, failed.groups())) if failed else 0)
    return int(done[1]), errors, seconds


def run_httpx(
    base_url: str, path: str, machines: int, connections: int, duration: float
) -> tuple[int, int, float]:
    import httpx

    async def load() -> tuple[int, int, float]:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        counts = [0, 0]
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
            started = time.perf_counter()
            stop = started + duration

            async def loop(k: int) -> None:
                i = k  # each connection its own machines: k, k + connections, ...
                while time.perf_counter() < stop:
                    i = (i + connections) % machines
                    response = await http.post(
                        path,
                        json={"hostname": f"m{i}"},
                        headers={"X-Forwarded-For": gui_address(i)},
                    )
                    counts[response.status_code != 200] += 1

            await asyncio.gather(*(loop(k) for k in range(connections)))
            return counts[0] + counts[1], counts[1], time.perf_counter() - started

    return asyncio.run(load())


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--processes", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--pool", type=int, default=5, help="connections per process")
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="0: the burst alone")
    parser.add_argument("--load", choices=("wrk", "httpx"), default=None)
    args = parser.parse_args(argv)
    loader = args.load or ("wrk" if shutil.which("wrk") else "httpx")
    load: Callable[[str, str, int, int, float], tuple[int, int, float]] = (
        run_wrk if loader == "wrk" else run_httpx
    )

    prefix = f"wmbench{os.getpid()}_"
    repo = SQLWorkerRepository.from_url(args.db, mapping=DEFAULT_MAPPING.with_table_prefix(prefix))
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    print(
        f"# uvicorn --workers {args.processes}, pool {args.pool} per process, {loader} with "
        f"{args.connections} connections, {args.machines} machines, {args.duration:g} s per run"
    )
    try:
        with serving(args.db, prefix, args.processes, args.pool) as (base_url, pgid):
            cpu = cpu_of(group_pids(pgid))
            elapsed, retried, ids = asyncio.run(burst(base_url, args.machines, args.connections))
            cpu = cpu_of(group_pids(pgid)) - cpu
            workers = repo.all_workers()
            requests = 4 * args.machines
            print(
                f"\nburst: {args.machines} machines, {requests} requests in {elapsed:.1f} s "
                f"({requests / elapsed:.0f}/s, server CPU {1000 * cpu / requests:.2f} ms per "
                f"request); {retried} answers 503 retried; {len(workers)} workers for "
                f"{args.machines} machines"
            )
            if len(workers) != args.machines or len(set(ids)) != args.machines:
                raise SystemExit("not one worker per machine")

            best: dict[str, tuple[float, float, float, int]] = {}
            servers = group_pids(pgid)
            for round_ in range(args.rounds):
                for name, path in VARIANTS.items():
                    backends = database_backends(servers, repo)
                    cpu, db = cpu_of(servers), cpu_of(backends)
                    count, errors, seconds = load(
                        base_url, path, args.machines, args.connections, args.duration
                    )
                    cpu, db = cpu_of(servers) - cpu, cpu_of(backends) - db
                    n = max(count, 1)
                    rate, per, db_per = count / seconds, 1000 * cpu / n, 1000 * db / n
                    print(
                        f"round {round_ + 1} {name:16}: {rate:5.0f} requests/s, CPU per request "
                        f"{per:.2f} ms server + {db_per:.2f} ms database, {errors} errors, "
                        f"load {os.getloadavg()[0]:.2f}"
                    )
                    if name not in best or rate > best[name][0]:
                        best[name] = (rate, per, db_per, errors)
            if len(repo.all_workers()) != args.machines:
                raise SystemExit("heartbeats made new workers")
    finally:
        repo.drop_schema()
        repo.close()

    if not best:  # --rounds 0: the burst alone
        return 0
    floor = best["floor"][0]
    print("\n| route | requests/s | CPU per request: server | database | vs floor |")
    print("| --- | --- | --- | --- | --- |")
    for name in VARIANTS:
        rate, per, db_per, errors = best[name]
        note = f" ({errors} errors)" if errors else ""
        print(
            f"| {name} | {rate:.0f}{note} | {per:.2f} ms | {db_per:.2f} ms | {rate / floor:.2f}x |"
        )
    print(f"\n# load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
