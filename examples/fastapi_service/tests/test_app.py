"""The FastAPI example in process (httpx over ASGI, no sockets): every route, every error's
status, where the client's address comes from, and the design note's story.

Each client is an ``httpx.AsyncClient`` whose ASGI transport reports a chosen peer address, as a
connection from that address would; the app's lifespan runs around each scenario.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

import workermatch as wm
from fastapi_service.app import create_app
from workermatch import aio

T = TypeVar("T")

CLI = "157.193.240.188"  # the command-line client's address: it claims
GUI = "157.193.240.190"  # the GUI's, through the VPN: heartbeats and updates
PROXY = "10.0.0.5"


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(scenario)


class Service:
    """A running app and a way to talk to it from any address."""

    def __init__(self, app: FastAPI, repo: aio.AsyncInMemoryWorkerRepository | None) -> None:
        self.app = app
        self._repo = repo

    @property
    def repo(self) -> aio.AsyncInMemoryWorkerRepository:
        assert self._repo is not None
        return self._repo

    def client(self, address: str = CLI) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://service")

    async def post(
        self, address: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, dict[str, Any]]:
        async with self.client(address) as client:
            response = await client.post(path, json=body, headers=headers)
        return response.status_code, response.json()

    def workers(self) -> list[wm.Worker]:
        return sorted(self.repo.sync.all_workers(), key=lambda w: w.id)

    def assignment(self, assignment_id: str) -> wm.Assignment | None:
        return self.repo.sync.get_assignment(assignment_id)


@asynccontextmanager
async def service(
    repo: Any = None, *, memory: bool = True, **options: Any
) -> AsyncIterator[Service]:
    if repo is None and memory:
        repo = aio.AsyncInMemoryWorkerRepository(id_factory=wm.sequential_ids())
    app = create_app(repo, **options)
    async with app.router.lifespan_context(app):
        yield Service(app, repo)


async def queue(svc: Service, *ids: str) -> None:
    for assignment_id in ids:
        status, reply = await svc.post(CLI, "/api/assignments", {"id": assignment_id})
        assert (status, reply) == (201, {"id": assignment_id, "status": "PENDING"})


def test_the_design_note_story_is_one_worker_and_a_completed_assignment() -> None:
    """The claim comes from one address; the GUI's two start-up heartbeats, sent at the same
    instant, from another with the hostname; then updates and ``finished``."""

    async def scenario() -> None:
        async with service() as svc:
            await queue(svc, "A1")
            status, claimed = await svc.post(CLI, "/api/assignments/A1/claim", {"machineId": CLI})
            assert (status, claimed["rule"], claimed["created"]) == (200, "created", True)
            beat = {"machineId": GUI, "hostname": "UG-GNS0S34"}
            beats = await asyncio.gather(
                svc.post(GUI, "/api/heartbeat", beat), svc.post(GUI, "/api/heartbeat", beat)
            )
            assert [status for status, _ in beats] == [200, 200]
            assert {reply["workerId"] for _, reply in beats} == {claimed["workerId"]}
            assert sorted(reply["rule"] for _, reply in beats) == ["exact_ip", "recent_orphan"]
            progress = {"machineId": GUI, "message": "overall_progress"}
            assert (await svc.post(GUI, "/api/gui-update", progress))[1]["status"] == "RUNNING"
            await svc.post(GUI, "/api/heartbeat", beat)
            status, done = await svc.post(
                GUI, "/api/gui-update", {**progress, "message": "finished"}
            )
            assert (status, done["workerId"], done["status"]) == (200, claimed["workerId"], "IDLE")
            assert done["alert"] is None
            [worker] = svc.workers()
            assert (worker.ip, worker.hostname) == (GUI, "ug-gns0s34")
            finished = svc.assignment("A1")
            assert finished is not None
            assert (finished.status, finished.worker_id) == (
                wm.AssignmentStatus.COMPLETED,
                worker.id,
            )
            status, refused = await svc.post("10.9.9.9", "/api/assignments/A1/claim", {})
            assert (status, refused["reason"]) == (409, "already_finished")

    run(scenario())


def test_every_route_answers_with_the_worker_the_rule_and_the_alert() -> None:
    async def scenario() -> None:
        async with service() as svc:
            status, reg = await svc.post("192.0.2.1", "/api/workers", {"hostname": "box-1"})
            assert (status, reg) == (
                200,
                {
                    "workerId": "w1",
                    "rule": "created",
                    "alert": None,
                    "created": True,
                    "ambiguous": False,
                    "status": "IDLE",
                },
            )
            status, beat = await svc.post("192.0.2.1", "/api/heartbeat", {"hostname": "box-1"})
            assert (status, beat["workerId"], beat["rule"]) == (200, "w1", "exact_ip")
            # A hint from an earlier reply places the request wherever it comes from.
            status, hinted = await svc.post("192.0.2.99", "/api/heartbeat", {"workerId": "w1"})
            assert (status, hinted["workerId"], hinted["rule"]) == (200, "w1", "worker_id")
            await queue(svc, "A2")
            status, claimed = await svc.post("192.0.2.7", "/api/assignments/A2/claim")
            assert (status, claimed["status"]) == (200, "RUNNING")
            status, failed = await svc.post(
                "192.0.2.7", "/api/gui-update", {"message": "fatal_error"}
            )
            assert (status, failed["workerId"]) == (200, claimed["workerId"])
            assert svc.assignment("A2") is not None
            assert svc.assignment("A2").status == wm.AssignmentStatus.FAILED  # type: ignore[union-attr]

    run(scenario())


def test_the_queue_creates_assignments_and_refuses_a_duplicate_or_a_bad_id() -> None:
    async def scenario() -> None:
        async with service() as svc:
            await queue(svc, "job-1")
            status, reply = await svc.post(CLI, "/api/assignments", {"id": "job-1"})
            assert (status, reply["reason"]) == (409, "exists")
            status, reply = await svc.post(CLI, "/api/assignments", {"id": "bad\nid"})
            assert (status, reply["field"]) == (400, "id")
            status, reply = await svc.post(CLI, "/api/assignments", {})
            assert (status, reply["field"]) == (400, "id")
            assert [a.id for a in svc.repo.sync.all_assignments()] == ["job-1"]

    run(scenario())


def test_errors_become_statuses_and_change_nothing() -> None:
    async def scenario() -> None:
        async with service() as svc:
            await queue(svc, "A1")
            bad_host = await svc.post(GUI, "/api/heartbeat", {"hostname": "not a hostname"})
            assert (bad_host[0], bad_host[1]["field"]) == (400, "hostname")
            not_text = await svc.post(GUI, "/api/heartbeat", {"hostname": 5})
            assert (not_text[0], not_text[1]["field"]) == (400, "hostname")
            not_object = await svc.post(GUI, "/api/heartbeat", ["a", "list"])
            assert (not_object[0], not_object[1]["field"]) == (400, "body")
            bad_id = await svc.post(GUI, "/api/heartbeat", {"workerId": "w\x00"})
            assert (bad_id[0], bad_id[1]["field"]) == (400, "worker_id")
            assert svc.workers() == []
            unknown = await svc.post(CLI, "/api/assignments/nope/claim")
            assert (unknown[0], unknown[1]["reason"]) == (404, "unknown_assignment")
            status, claimed = await svc.post(CLI, "/api/assignments/A1/claim")
            assert status == 200
            elsewhere = await svc.post("192.0.2.50", "/api/assignments/A1/claim")
            assert elsewhere[0] == 409
            assert (elsewhere[1]["reason"], elsewhere[1]["holder"]) == (
                "running_elsewhere",
                claimed["workerId"],
            )
            assert len(svc.workers()) == 1

    run(scenario())


def two_orphans_and_a_stranger(svc: Service) -> Awaitable[tuple[int, dict[str, Any]]]:
    """Two claims from two addresses, then a heartbeat from a third: either claim's GUI."""

    async def go() -> tuple[int, dict[str, Any]]:
        await queue(svc, "A1", "A2")
        assert (await svc.post("198.51.100.1", "/api/assignments/A1/claim"))[0] == 200
        assert (await svc.post("198.51.100.2", "/api/assignments/A2/claim"))[0] == 200
        return await svc.post("203.0.113.9", "/api/heartbeat", {"hostname": "gui"})

    return go()


def test_an_alert_is_in_the_reply_and_in_the_workermatch_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with service() as svc:
            caplog.set_level(logging.DEBUG, logger="workermatch")
            status, reply = await two_orphans_and_a_stranger(svc)
            assert (status, reply["alert"], reply["ambiguous"]) == (200, "doubt", True)

    run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert {r.name for r in warnings} == {"workermatch", "workermatch.fastapi_service"}
    explained = next(r for r in warnings if r.name == "workermatch.fastapi_service")
    assert "alert doubt" in explained.getMessage()
    assert "recent_orphan" in explained.getMessage()  # the explanation of every candidate
    decisions = [
        r for r in caplog.records if r.name == "workermatch" and r.levelno == logging.DEBUG
    ]
    assert len(decisions) == 2  # one record per decision: the two claims


def test_an_ambiguous_match_under_a_refusing_policy_is_409() -> None:
    refuse = wm.DEFAULT_POLICY.evolve(on_ambiguous=wm.OnAmbiguous.REFUSE)

    async def scenario() -> None:
        async with service(policy=refuse) as svc:
            status, reply = await two_orphans_and_a_stranger(svc)
            assert (status, reply["reason"]) == (409, "ambiguous")
            assert len(svc.workers()) == 2  # the two claims' workers, nothing more

    run(scenario())


class FailingStore(aio.AsyncInMemoryWorkerRepository):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def atomically(self, fn: Callable[[], Awaitable[T]]) -> T:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (wm.TransientStorageError("the server went away", attempts=3), 503, "1"),
        (wm.StorageError("relation does not exist"), 500, None),
    ],
    ids=["transient", "permanent"],
)
def test_a_store_failure_is_503_with_retry_after_when_transient_else_500(
    error: Exception, status: int, retry_after: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> httpx.Response:
        async with service(FailingStore(error)) as svc, svc.client(GUI) as client:
            return await client.post("/api/heartbeat", json={"hostname": "box"})

    response = run(scenario())
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert str(error) not in response.text  # the store's message stays in the log
    assert any(str(error) in r.getMessage() for r in caplog.records)


# -- the client's address ------------------------------------------------------------------------


def addresses_seen(
    peer: str, forwarded: Iterable[str] | None, trusted: str | list[str] | None
) -> tuple[int, str]:
    """Send one heartbeat from ``peer`` with these ``X-Forwarded-For`` headers; return the
    status and the address the worker got (or the error's field)."""

    async def scenario() -> tuple[int, str]:
        async with service(trusted_proxies=trusted, environ={}) as svc:
            headers = [("x-forwarded-for", value) for value in forwarded or ()]
            async with svc.client(peer) as client:
                response = await client.post("/api/heartbeat", json={}, headers=headers)
            if response.status_code != 200:
                return response.status_code, response.json()["field"]
            [worker] = svc.workers()
            return response.status_code, worker.ip

    return run(scenario())


def test_the_address_is_the_connections_and_x_forwarded_for_is_ignored_by_default() -> None:
    assert addresses_seen(GUI, None, None) == (200, GUI)
    assert addresses_seen("127.0.0.1", ["203.0.113.9"], None) == (200, "127.0.0.1")
    assert addresses_seen(PROXY, ["203.0.113.9"], None) == (200, PROXY)


def test_behind_a_trusted_proxy_the_address_is_the_rightmost_untrusted_hop() -> None:
    assert addresses_seen(PROXY, ["203.0.113.9"], [PROXY]) == (200, "203.0.113.9")
    # A client forges hops on the left; the proxy appends what it saw, on the right.
    assert addresses_seen(PROXY, ["6.6.6.6, 203.0.113.9"], "10.0.0.0/8") == (200, "203.0.113.9")
    # Two proxies (10.0.0.5 saw 10.1.2.3, the first proxy); both trusted.
    chain = ["6.6.6.6, 203.0.113.9, 10.1.2.3"]
    assert addresses_seen(PROXY, chain, "10.0.0.0/8") == (200, "203.0.113.9")
    assert addresses_seen(PROXY, ["6.6.6.6", "203.0.113.9"], "10.0.0.0/8") == (200, "203.0.113.9")
    # A peer that is not a trusted proxy: its header is the client's to forge, ignored.
    assert addresses_seen(GUI, ["203.0.113.9"], [PROXY]) == (200, GUI)
    # The proxy's own request (no header), an IPv4-mapped peer, and a hop that is no address.
    assert addresses_seen(PROXY, None, [PROXY]) == (200, PROXY)
    assert addresses_seen(f"::ffff:{PROXY}", ["203.0.113.9"], [PROXY]) == (200, "203.0.113.9")
    assert addresses_seen(PROXY, ["203.0.113.9, unknown"], [PROXY]) == (400, "X-Forwarded-For")


def test_trusted_proxies_come_from_the_environment_and_a_bad_one_fails_at_start() -> None:
    async def scenario() -> str:
        environ = {"WORKERMATCH_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"}
        async with service(environ=environ) as svc:
            await svc.post(PROXY, "/api/heartbeat", {}, **{"X-Forwarded-For": "203.0.113.9"})
            return svc.workers()[0].ip

    assert run(scenario()) == "203.0.113.9"
    with pytest.raises(wm.InvalidInput, match="not an IP address or network"):
        create_app(aio.AsyncInMemoryWorkerRepository(), trusted_proxies="10.0.0.0/8, proxy-1")


# -- the store the app opens itself ----------------------------------------------------------


def test_without_a_store_the_app_opens_the_database_url_and_creates_its_tables(
    tmp_path: Path,
) -> None:
    """``WORKERMATCH_DATABASE_URL`` (here a SQLite file) and ``WORKERMATCH_TABLE_PREFIX``: the
    lifespan opens the asyncio SQL store and creates the tables, the decisions are made at the
    database's clock (``clock=lambda: None``), and the store is closed at shutdown."""
    pytest.importorskip("aiosqlite")
    from workermatch.sql import DEFAULT_MAPPING, SQLWorkerRepository

    url = f"sqlite:///{tmp_path / 'service.db'}"
    environ = {"WORKERMATCH_DATABASE_URL": url, "WORKERMATCH_TABLE_PREFIX": "fleet_"}

    async def scenario() -> list[int]:
        async with service(memory=False, environ=environ, clock=lambda: None) as svc:
            await queue(svc, "A1")
            claimed = await svc.post(CLI, "/api/assignments/A1/claim")
            beats = await asyncio.gather(
                *(svc.post(GUI, "/api/heartbeat", {"hostname": "box"}) for _ in range(2))
            )
            return [claimed[0], *(status for status, _ in beats)]

    assert run(scenario()) == [200, 200, 200]
    mapping = DEFAULT_MAPPING.with_table_prefix("fleet_")
    with SQLWorkerRepository.from_url(url, mapping=mapping) as stored:
        [worker] = stored.all_workers()
        assert (worker.ip, worker.hostname, worker.status) == (GUI, "box", wm.WorkerStatus.RUNNING)
