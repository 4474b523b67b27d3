"""A worker-facing service on FastAPI: workermatch's asyncio driver behind ``async def`` routes.

The routes and bodies are those of ``examples/endpoint.py`` (the real client's), so a client
talks to either unchanged:

    POST /api/assignments/{assignment_id}/claim  {"hostname"?, "workerId"?}
    POST /api/heartbeat                          {"hostname"?, "workerId"?, "assignmentId"?}
    POST /api/gui-update                         {"message", "hostname"?, "workerId"?, ...}
    POST /api/workers                            {"hostname"?}         (a plain registration)
    POST /api/assignments                        {"id"}                (the server's queue)

Each decision route answers ``{"workerId", "rule", "alert", "created", "ambiguous",
"status"}``.  One difference from the standard-library example: the address a request came from
is the connection's (``request.client.host``), never the body's ``machineId``, which the client
looks up itself and anyone can forge; the field is accepted and ignored.  Behind a reverse proxy,
list the proxy in ``trusted_proxies`` (or ``WORKERMATCH_TRUSTED_PROXIES``): the address is then
the right-most one of ``X-Forwarded-For`` that is not a trusted proxy.

Run it (``pip install 'workermatch[postgresql-async]' fastapi uvicorn``)::

    WORKERMATCH_DATABASE_URL=postgresql://app@db.internal/dashboard \\
        uvicorn --factory fastapi_service.app:create_app --app-dir examples \\
        --workers 4 --no-proxy-headers

``--no-proxy-headers`` leaves ``X-Forwarded-For`` to this app's own setting (uvicorn's default
believes it from 127.0.0.1).  Environment:

* ``WORKERMATCH_DATABASE_URL``: the SQL store (default ``sqlite:///workermatch.db``);
* ``WORKERMATCH_POOL_SIZE``: database connections per process (default 5);
* ``WORKERMATCH_TABLE_PREFIX``: a prefix for the library's table names (default none);
* ``WORKERMATCH_TRUSTED_PROXIES``: addresses or networks, comma-separated (default none);
* ``WORKERMATCH_LOG_LEVEL``: ``INFO`` by default (alerts and store failures); ``DEBUG`` adds
  the library's line per decision.

``docs/integration.md`` ("FastAPI") tells the rest.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import workermatch as wm
from workermatch import aio

# A child of the library's logger: configuring "workermatch" shows the library's records (one
# DEBUG line per decision, a WARNING per alert) and this service's.
log = logging.getLogger("workermatch.fastapi_service")

DEFAULT_DATABASE_URL = "sqlite:///workermatch.db"

router = APIRouter()


class ClientRequest(BaseModel):
    """The JSON body of every worker-facing route (every field optional)."""

    hostname: str | None = None
    workerId: str | None = None  # the id of an earlier reply: a hint that places without a guess
    assignmentId: str | None = None  # the assignment the client runs: a hint too
    message: str | None = None  # gui-update: "finished" or "fatal_error" end the session
    machineId: str | None = None  # the client's own idea of its public IP: ignored


class Reply(BaseModel):
    workerId: str  # newer clients send it back as a hint
    rule: str
    alert: str | None  # an operator should look: doubt, end_held, transfer_held, hint_refused
    created: bool
    ambiguous: bool
    status: str

    @classmethod
    def of(cls, outcome: wm.Outcome) -> Reply:
        return cls(
            workerId=outcome.worker.id,
            rule=outcome.rule.value,
            alert=None if outcome.alert is None else outcome.alert.value,
            created=outcome.created,
            ambiguous=outcome.ambiguous,
            status=outcome.worker.status.value,
        )


NO_BODY = Body(default_factory=ClientRequest)


@router.post("/api/heartbeat")
async def heartbeat(request: Request, body: ClientRequest = NO_BODY) -> Reply:
    event = wm.Event.heartbeat(
        client_address(request),  # the connection's address, not the body's machineId
        hostname=body.hostname,
        worker_id=body.workerId,
        assignment_id=body.assignmentId,
    )
    return await decide(request, event)


@router.post("/api/assignments/{assignment_id}/claim")
async def claim(assignment_id: str, request: Request, body: ClientRequest = NO_BODY) -> Reply:
    event = wm.Event.claim(
        client_address(request), assignment_id, hostname=body.hostname, worker_id=body.workerId
    )
    return await decide(request, event)


async def decide(request: Request, event: wm.Event) -> Reply:
    """Decide and write in one atomic unit of the store.  The errors it raises become statuses
    in the exception handlers below (InvalidInput 400, ClaimRefused 409, ...)."""
    state = request.app.state
    outcome = await aio.apply_event(event, state.clock(), state.repo, state.policy)
    if outcome.alert is not None:
        log.warning("alert %s: %s", outcome.alert.value, outcome.explain())
    return Reply.of(outcome)


@router.post("/api/gui-update")
async def gui_update(request: Request, body: ClientRequest = NO_BODY) -> Reply:
    event = wm.Event.gui_update(
        client_address(request),
        body.message,  # "finished" completes the running assignment, "fatal_error" fails it
        hostname=body.hostname,
        worker_id=body.workerId,
        assignment_id=body.assignmentId,
    )
    return await decide(request, event)


@router.post("/api/workers")
async def register(request: Request, body: ClientRequest = NO_BODY) -> Reply:
    return await decide(request, wm.Event.register(client_address(request), hostname=body.hostname))


class NewAssignment(BaseModel):
    id: str


class AssignmentExists(Exception):
    """A second ``POST /api/assignments`` of one id (409)."""


@router.post("/api/assignments", status_code=201)
async def create_assignment(request: Request, body: NewAssignment) -> dict[str, Any]:
    """The server's own queue: insert a PENDING assignment for a worker to claim.

    Decisions never create assignments here (``apply_event`` runs without
    ``create_assignments``), so a claim of an id the queue never made is refused (404)."""
    repo = request.app.state.repo
    assignment = wm.Assignment(id=body.id)  # InvalidInput (400) for a bad id

    async def insert() -> None:  # one unit: the check and the insert
        if await repo.get_assignment(assignment.id) is not None:
            raise AssignmentExists(f"assignment {assignment.id!r} exists")
        await repo.write([wm.InsertAssignment(assignment=assignment)])

    await repo.atomically(insert)
    return {"id": assignment.id, "status": assignment.status.value}


# -- the client's address ----------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(value: str | Iterable[str]) -> tuple[Network, ...]:
    """Trusted proxies from addresses and networks (``"10.0.0.5, 10.1.0.0/16"`` or a list)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))  # an address is a /32
        except ValueError:
            raise wm.InvalidInput(
                f"trusted proxy {item!r} is not an IP address or network",
                field="trusted_proxies",
                value=item,
            ) from None
    return tuple(networks)


def client_address(request: Request) -> str:
    """The address the request came from: the connection's peer.  When the peer is a trusted
    proxy, the right-most address of ``X-Forwarded-For`` that is not a trusted proxy (each
    proxy appends the address it saw, so the entries left of it are the client's to forge)."""
    peer = request.client.host if request.client is not None else ""
    trusted: tuple[Network, ...] = request.app.state.trusted_proxies
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getlist("x-forwarded-for")
        for hop in header.split(",")
    ]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return wm.normalize_ip(hop, field="X-Forwarded-For")
    return hops[0] if hops else peer  # every hop is a proxy: the proxy's own request


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(wm.normalize_ip(address))  # ::ffff:10.0.0.1 is 10.0.0.1
    except wm.InvalidInput:
        return False
    return any(ip in network for network in trusted)


# -- errors ------------------------------------------------------------------------------------


def _reply(status: int, body: dict[str, Any], **headers: str) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers or None)


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, wm.InvalidInput)
    return _reply(400, {"error": str(exc), "field": exc.field})


async def _bad_body(request: Request, exc: Exception) -> JSONResponse:
    """A body that is not a JSON object of the fields above: 400, like InvalidInput."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return _reply(400, {"error": first.get("msg", "invalid body"), "field": field})


async def _claim_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, wm.ClaimRefused)
    status = 404 if exc.reason == "unknown_assignment" else 409
    return _reply(status, {"error": str(exc), "reason": exc.reason, "holder": exc.holder})


async def _ambiguous(request: Request, exc: Exception) -> JSONResponse:
    # Only under a policy with on_ambiguous=REFUSE; the shipped policies never raise it.
    return _reply(409, {"error": str(exc), "reason": "ambiguous"})


async def _exists(request: Request, exc: Exception) -> JSONResponse:
    return _reply(409, {"error": str(exc), "reason": "exists"})


async def _storage_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, wm.StorageError)
    if exc.retryable:  # TransientStorageError: a lost connection, retries that ran out
        log.warning("store busy or unreachable: %s", exc)
        return _reply(503, {"error": "the store is busy; retry"}, **{"Retry-After": "1"})
    log.error("store failed: %s", exc, exc_info=exc)
    return _reply(500, {"error": "the store failed"})


# -- the application ---------------------------------------------------------------------------


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def create_app(
    repo: aio.AsyncWorkerRepository | None = None,
    *,
    trusted_proxies: str | Iterable[str] | None = None,
    policy: wm.Policy = wm.DEFAULT_POLICY,
    clock: Callable[[], datetime | None] = utc_now,
    environ: Mapping[str, str] = os.environ,
) -> FastAPI:
    """The service.  ``repo``: a store of yours (it stays open after shutdown); without one,
    the app opens ``WORKERMATCH_DATABASE_URL`` at start-up, creates the library's tables where
    missing, and closes it at shutdown.  ``trusted_proxies``: addresses or networks whose
    ``X-Forwarded-For`` is believed (default ``WORKERMATCH_TRUSTED_PROXIES``, else none).
    ``policy``: the decision policy (``docs/tuning.md``).  ``clock``: the time each decision
    is made at: this process's clock; ``lambda: None`` decides at the SQL store's database
    clock instead (one statement more per decision), for server processes on hosts whose clocks
    may disagree.  ``environ``: where the settings are read (the process environment)."""
    if trusted_proxies is None:
        trusted_proxies = environ.get("WORKERMATCH_TRUSTED_PROXIES", "")
    proxies = parse_proxies(trusted_proxies)  # a bad entry fails here, not per request
    _show_logs(environ.get("WORKERMATCH_LOG_LEVEL", "INFO"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = repo is None
        app.state.repo = await open_store(environ) if own else repo
        try:
            yield
        finally:
            if own and hasattr(app.state.repo, "close"):
                await app.state.repo.close()

    app = FastAPI(title="workermatch example service", lifespan=lifespan)
    app.state.trusted_proxies = proxies
    app.state.policy = policy
    app.state.clock = clock
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _bad_body)
    app.add_exception_handler(wm.InvalidInput, _invalid_input)
    app.add_exception_handler(wm.ClaimRefused, _claim_refused)
    app.add_exception_handler(wm.AmbiguousMatch, _ambiguous)
    app.add_exception_handler(AssignmentExists, _exists)
    app.add_exception_handler(wm.StorageError, _storage_failed)
    return app


async def open_store(environ: Mapping[str, str]) -> aio.AsyncWorkerRepository:
    """The SQL store named by ``WORKERMATCH_DATABASE_URL``, its tables created where missing."""
    from workermatch.sql import DEFAULT_MAPPING, AsyncSQLWorkerRepository

    url = environ.get("WORKERMATCH_DATABASE_URL") or DEFAULT_DATABASE_URL
    if "WORKERMATCH_DATABASE_URL" not in environ:
        log.warning("WORKERMATCH_DATABASE_URL is not set: using %s", url)
    mapping = DEFAULT_MAPPING.with_table_prefix(environ.get("WORKERMATCH_TABLE_PREFIX", ""))
    options: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        # At most this many decisions of this process at once; the others wait for a
        # connection.  Under SERIALIZABLE, more simultaneous transactions than the database
        # has cores conflict and run again more than they gain (docs/integration.md).
        options = {"pool_size": int(environ.get("WORKERMATCH_POOL_SIZE", "5")), "max_overflow": 0}
    repo = AsyncSQLWorkerRepository.from_url(url, mapping=mapping, **options)
    # Several server processes start at once: a concurrent CREATE TABLE of another process may
    # fail this one's; the second try finds the tables made.
    for attempt in range(3):
        try:
            await repo.create_schema()
            break
        except wm.StorageError:
            if attempt == 2:
                await repo.close()
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    return repo


def _show_logs(level: str) -> None:
    """When nobody configured logging (as under plain uvicorn), show the ``workermatch``
    logger's records at ``level`` on stderr; a configured application keeps its own setup."""
    library = logging.getLogger("workermatch")
    configured = logging.getLogger().handlers or any(
        not isinstance(h, logging.NullHandler) for h in library.handlers
    )
    if configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    library.addHandler(handler)
    library.setLevel(level.upper())
