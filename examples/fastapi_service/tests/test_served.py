"""The FastAPI example served for real: uvicorn with three worker processes on PostgreSQL, driven
over HTTP.  The design note's story, then a start-up burst of many machines at once; the
repository is read afterwards.

Where requests come from: the app takes the client's address from the connection, and every
request of this test comes from 127.0.0.1.  So the app runs as it would behind a reverse proxy
on the same host: ``WORKERMATCH_TRUSTED_PROXIES=127.0.0.1``, and each request names its
machine's public address in ``X-Forwarded-For``, as the proxy would.  (uvicorn runs with
``--no-proxy-headers`` so that the app's own setting is the one that reads the header.)

Needs ``WORKERMATCH_TEST_POSTGRESQL_URL``; skips visibly without it.  The tables carry a
per-process prefix and are dropped at the end; uvicorn's process group is ended whatever
happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import workermatch as wm
from _stores import process_prefix, skip_without_server

pytest.importorskip("asyncpg")

EXAMPLES = Path(__file__).resolve().parents[2]
PROCESSES = 3
MACHINES = 150  # the CI size for two shared cores: 600 requests; the benchmark runs 1,000
STARTUP_TIMEOUT = 40.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    def __init__(self, base_url: str, repo: Any, log: Path) -> None:
        self.base_url = base_url
        self.repo = repo  # a synchronous SQLWorkerRepository on the app's tables
        self.log = log


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    url = skip_without_server("postgresql")
    from workermatch.sql import DEFAULT_MAPPING, SQLWorkerRepository

    prefix = f"{process_prefix()}fa_"
    repo = SQLWorkerRepository.from_url(url, mapping=DEFAULT_MAPPING.with_table_prefix(prefix))
    repo.drop_schema()  # a previous run's leftovers; the app's processes create the tables
    log = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    port = free_port()
    env = {
        **os.environ,
        "WORKERMATCH_DATABASE_URL": url,
        "WORKERMATCH_TABLE_PREFIX": prefix,
        "WORKERMATCH_TRUSTED_PROXIES": "127.0.0.1",
        # Two transactions per process at most: on two cores, more simultaneous SERIALIZABLE
        # transactions conflict and run again more than they gain (docs/integration.md).
        "WORKERMATCH_POOL_SIZE": "2",
        "WORKERMATCH_LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "fastapi_service.app:create_app",
        "--app-dir",
        str(EXAMPLES),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(PROCESSES),
        "--no-proxy-headers",
        "--no-access-log",
    ]
    with log.open("wb") as out:
        # Its own process group: the supervisor and its workers end together below.
        server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_started(server, log)
        yield Served(f"http://127.0.0.1:{port}", repo, log)
    finally:
        stop(server)
        try:
            repo.drop_schema()
        finally:
            repo.close()


def wait_until_started(server: subprocess.Popen[bytes], log: Path) -> None:
    """Until every worker process has run its start-up (the tables made by one of them)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if text.count("Application startup complete") >= PROCESSES:
            return
        if server.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"uvicorn did not start {PROCESSES} workers:\n{log.read_text(errors='replace')}")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
    # The workers, should the supervisor have died without them.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)


class Client:
    """An HTTP client that sends each request as from a machine's public address (in
    ``X-Forwarded-For``, through the trusted proxy 127.0.0.1), and retries a 503 after its
    ``Retry-After``, as the real client should."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.retried = 0

    async def post(self, address: str, path: str, body: Any = None) -> dict[str, Any]:
        for _ in range(10):
            response = await self.http.post(
                path, json=body or {}, headers={"X-Forwarded-For": address}
            )
            if response.status_code != 503:
                break
            self.retried += 1
            await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 4)
        assert response.status_code in (200, 201), (path, response.status_code, response.text)
        reply: dict[str, Any] = response.json()
        return reply


@asynccontextmanager
async def client(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=48, max_keepalive_connections=48)
    async with httpx.AsyncClient(base_url=served.base_url, limits=limits, timeout=30) as http:
        yield http
    # Let the closed connections' transports finish closing before the event loop ends (else
    # a busy machine may see "unclosed transport" warnings when they are collected).
    await asyncio.sleep(0.05)


def test_the_design_note_story_over_http_is_one_worker(served: Served) -> None:
    served.repo.reset()
    cli, gui = "157.193.240.188", "157.193.240.190"

    async def story() -> list[dict[str, Any]]:
        async with client(served) as http:
            c = Client(http)
            await c.post(cli, "/api/assignments", {"id": "A1"})
            replies = [await c.post(cli, "/api/assignments/A1/claim", {"machineId": cli})]
            beat = {"machineId": gui, "hostname": "UG-GNS0S34"}
            replies += await asyncio.gather(
                c.post(gui, "/api/heartbeat", beat), c.post(gui, "/api/heartbeat", beat)
            )
            for message in ("overall_progress", "overall_progress", "finished"):
                replies.append(await c.post(gui, "/api/gui-update", {"message": message}))
            return replies

    replies = asyncio.run(story())
    assert len({reply["workerId"] for reply in replies}) == 1
    assert replies[-1]["status"] == "IDLE"
    [worker] = served.repo.all_workers()
    assert (worker.ip, worker.hostname) == (gui, "ug-gns0s34")
    [assignment] = served.repo.all_assignments()
    assert (assignment.status, assignment.worker_id) == (wm.AssignmentStatus.COMPLETED, worker.id)


def test_an_alert_reaches_the_server_log(served: Served) -> None:
    """Under plain uvicorn nobody configured logging: the app shows the ``workermatch`` logger's
    warnings on standard error, with the explanation."""
    served.repo.reset()

    async def doubt() -> dict[str, Any]:
        async with client(served) as http:
            c = Client(http)
            for n in (1, 2):
                await c.post(f"192.0.2.{n}", "/api/assignments", {"id": f"D{n}"})
                await c.post(f"192.0.2.{n}", f"/api/assignments/D{n}/claim")
            return await c.post("192.0.2.9", "/api/heartbeat", {"hostname": "gui"})

    reply = asyncio.run(doubt())
    assert reply["alert"] == "doubt"
    deadline = time.monotonic() + 10
    while "alert doubt" not in served.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, served.log.read_text(errors="replace")
        time.sleep(0.1)
    assert "recent_orphan" in served.log.read_text(errors="replace")


def test_a_startup_burst_of_many_machines_gives_one_worker_per_machine(served: Served) -> None:
    """Every machine at once: its assignment queued, its claim, then its GUI's two simultaneous
    start-up heartbeats with its hostname.  Even machines' GUIs share the claim's address; odd
    ones come through a VPN from another address and carry the assignment as a hint (a burst of
    hostname-less claims from unrelated addresses is where the evidence cannot tell one
    machine's claim from another's: without the hint the library places in doubt and says so)."""
    served.repo.reset()

    def cli(i: int) -> str:
        return f"198.51.100.{i + 1}"

    def gui(i: int) -> str:
        return cli(i) if i % 2 == 0 else f"203.0.113.{i + 1}"

    async def machine(c: Client, i: int) -> list[str]:
        assignment = f"B{i}"
        await c.post(cli(i), "/api/assignments", {"id": assignment})
        claimed = await c.post(cli(i), f"/api/assignments/{assignment}/claim")
        beat = {"hostname": f"m{i}"} | ({"assignmentId": assignment} if i % 2 else {})
        beats = await asyncio.gather(
            c.post(gui(i), "/api/heartbeat", beat), c.post(gui(i), "/api/heartbeat", beat)
        )
        return [claimed["workerId"], *(reply["workerId"] for reply in beats)]

    async def burst() -> tuple[list[list[str]], int]:
        async with client(served) as http:
            c = Client(http)
            ids = await asyncio.gather(*(machine(c, i) for i in range(MACHINES)))
            return ids, c.retried

    started = time.monotonic()
    ids, retried = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert all(len(set(per_machine)) == 1 for per_machine in ids)
    workers = {w.id: w for w in served.repo.all_workers()}
    assert len(workers) == MACHINES, f"{len(workers)} workers for {MACHINES} machines"
    assert len({per_machine[0] for per_machine in ids}) == MACHINES
    for i, per_machine in enumerate(ids):
        worker = workers[per_machine[0]]
        assert (worker.ip, worker.hostname) == (gui(i), f"m{i}")
    assignments = served.repo.all_assignments()
    assert Counter(a.status for a in assignments) == {wm.AssignmentStatus.RUNNING: MACHINES}
    assert {a.worker_id for a in assignments} == set(workers)
    print(f"{MACHINES} machines, {4 * MACHINES} requests in {elapsed:.1f} s; 503 retried {retried}")
    assert "Traceback" not in served.log.read_text(errors="replace")
