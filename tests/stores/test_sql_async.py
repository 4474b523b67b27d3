"""The asyncio SQL store (``AsyncSQLWorkerRepository``) decides exactly like the synchronous one.

On aiosqlite, asyncpg and aiomysql (``ASYNC_STORE_IDS``; the server ones need their URLs), driven
by ``workermatch.aio``: every corpus trace replays to the checked-in expected output byte for
byte (as ``tests/tools/test_corpus.py`` checks for the synchronous stores), the hard cases of
``test_sql_decisions.py`` decide like the in-memory reference, the hot path costs the same
statements, and concurrent tasks cannot race.  Also: which URLs and engines each SQL store
accepts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, cast

import pytest
import sqlalchemy as sa

import workermatch as wm
from _stores import ASYNC_STORE_IDS, StoreFactory
from _times import T0
from stores.test_sql_decisions import _events, _play
from tools.test_corpus import POLICY_NAMES, TRACES, expected, trace_lines
from workermatch import aio, trace
from workermatch._decision import choose
from workermatch.sql import (
    AsyncSQLWorkerRepository,
    SQLWorkerRepository,
    normalize_async_url,
)
from workermatch.testing import BlockingRepository

pytest.importorskip("greenlet")

async_stores = pytest.mark.parametrize("store_factory", ASYNC_STORE_IDS, indirect=True)


def _store(store_factory: StoreFactory, **kwargs: Any) -> tuple[Any, Any]:
    """An empty asyncio store and the loop thread it lives on."""
    facade = store_factory(**kwargs)
    assert isinstance(facade, BlockingRepository)
    return facade.repository, facade.loop


async def replay_text(repo: AsyncSQLWorkerRepository, name: str, policy: wm.Policy) -> str:
    """What ``workermatch replay --jsonl`` prints, decided through ``workermatch.aio``."""
    records = list(trace.parse_trace(trace_lines(name)))
    out: list[str] = []
    for record in records:
        event = record.event
        try:
            o = await aio.apply_event(event, record.at, repo, policy, create_assignments=True)
        except wm.ClaimRefused as exc:
            d = await aio.run(
                choose(event.identity, record.at, policy, event.kind, claiming=event.assignment_id),
                repo,
            )
            line = trace.ReplayLine(
                line=record.line,
                worker=None,
                rule=d.rule.value,
                created=False,
                ambiguous=d.ambiguous,
                refused=exc.reason,
            )
        else:
            line = trace.ReplayLine(
                line=record.line,
                worker=o.worker.id,
                rule=o.rule.value,
                created=o.created,
                ambiguous=o.ambiguous,
                ended=o.ended,
                alert=None if o.alert is None else o.alert.value,
            )
        out.append(trace.dump_json(line.to_dict()))
    rows = _Rows(await repo.all_workers(), await repo.all_assignments())
    latest = max(r.at for r in records)
    out.append(trace.dump_json(trace.final_state(cast(Any, rows), latest, policy)))
    return "".join(f"{line}\n" for line in out)


class _Rows:
    def __init__(self, workers: Any, assignments: Any) -> None:
        self.workers, self.assignments = workers, assignments

    def all_workers(self) -> Any:
        return self.workers

    def all_assignments(self) -> Any:
        return self.assignments


# Every trace under the default policy; the note's and the legacy policies on the trace whose
# outcome differs most between policies (the same code decides under every policy, and every
# trace under all three would take minutes on the server stores).
CASES = [(name, "default") for name in TRACES] + [
    ("note-three-workers", policy) for policy in POLICY_NAMES if policy != "default"
]


@async_stores
@pytest.mark.parametrize(("name", "policy_name"), CASES)
def test_the_async_store_prints_the_expected_output_of_every_trace(
    store_factory: StoreFactory, name: str, policy_name: str
) -> None:
    repo, loop = _store(store_factory, id_factory=wm.sequential_ids())
    got = loop.run(replay_text(repo, name, wm.get_policy(policy_name)))
    assert got == expected(name, policy_name)


async def _play_async(repo: AsyncSQLWorkerRepository, policy: wm.Policy) -> list[Any]:
    """``test_sql_decisions._play``, awaited."""
    out: list[Any] = []
    for offset, event in _events():
        now = T0 + timedelta(seconds=offset, microseconds=123_456)
        try:
            outcome = await aio.apply_event(event, now, repo, policy, create_assignments=True)
        except wm.ClaimRefused as exc:
            out.append(("refused", exc.reason, exc.holder))
            continue
        out.append((outcome.decision.to_dict(), outcome.writes, outcome.transferred))
    out.append(sorted(await repo.all_workers(), key=lambda w: w.id))
    out.append(sorted(await repo.all_assignments(), key=lambda a: a.id))
    out.append(await aio.sweep(repo, T0 + timedelta(seconds=2000)))
    out.append(sorted(await repo.all_workers(), key=lambda w: w.id))
    return out


@async_stores
@pytest.mark.parametrize("policy_name", ["default", "note", "legacy"])
def test_the_async_store_decides_the_hard_cases_like_memory(
    store_factory: StoreFactory, policy_name: str
) -> None:
    policy = wm.get_policy(policy_name)
    expected_play = _play(wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids()), policy)
    repo, loop = _store(store_factory, id_factory=wm.sequential_ids())
    assert loop.run(_play_async(repo, policy)) == expected_play


@contextmanager
def counting(repo: AsyncSQLWorkerRepository) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.split(None, 1)[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            statements.append(statement)

    sa.event.listen(repo.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        sa.event.remove(repo.engine.sync_engine, "before_cursor_execute", before)


@async_stores
def test_a_heartbeat_matching_by_exact_ip_costs_the_same_two_statements(
    store_factory: StoreFactory,
) -> None:
    repo, loop = _store(store_factory)

    async def go() -> tuple[list[str], list[str]]:
        await aio.apply_event(wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True)
        later = T0 + timedelta(seconds=30)
        with counting(repo) as statements:
            outcome = await aio.apply_event(wm.Event.heartbeat("10.0.0.1"), later, repo)
        assert outcome.rule is wm.Rule.EXACT_IP
        # The same heartbeat again at the same instant changes no column: no UPDATE at all.
        with counting(repo) as unchanged:
            await aio.apply_event(wm.Event.heartbeat("10.0.0.1"), later, repo)
        return statements, unchanged

    statements, unchanged = loop.run(go())
    assert [s.split(None, 1)[0].upper() for s in statements] == ["SELECT", "UPDATE"]
    assert [s.split(None, 1)[0].upper() for s in unchanged] == ["SELECT"]


@async_stores
def test_simultaneous_first_heartbeats_of_one_machine_make_one_worker(
    store_factory: StoreFactory,
) -> None:
    repo, loop = _store(store_factory)

    async def burst() -> int:
        beat = wm.Event.heartbeat("10.0.0.1", hostname="pc-1")
        await asyncio.gather(*(aio.apply_event(beat, T0, repo) for _ in range(8)))
        return len(await repo.all_workers())

    assert loop.run(burst()) == 1


@async_stores
def test_the_database_clock_decides_when_now_is_none(store_factory: StoreFactory) -> None:
    repo, loop = _store(store_factory)

    async def go() -> tuple[Any, Any]:
        before = await repo.clock()
        outcome = await aio.apply_event(wm.Event.register("10.0.0.1"), None, repo)
        return before, outcome.worker.created_at

    before, created = loop.run(go())
    assert before <= created <= before + timedelta(minutes=1)


@async_stores
def test_a_failed_unit_writes_nothing_and_its_exception_goes_through(
    store_factory: StoreFactory,
) -> None:
    repo, loop = _store(store_factory)

    class Boom(Exception):
        pass

    async def go() -> bool:
        async def unit() -> None:
            await aio.apply_event(wm.Event.register("10.0.0.1"), T0, repo)
            raise Boom

        with pytest.raises(Boom):
            await repo.atomically(unit)
        empty: bool = await repo.is_empty()
        return empty

    assert loop.run(go())


@pytest.mark.parametrize("store_factory", ["postgresql-async", "mysql-async"], indirect=True)
def test_a_connection_that_died_idle_in_the_pool_is_replaced(store_factory: StoreFactory) -> None:
    """The server dropped the pooled connection between two requests: the next request gets a
    live connection (``pool_pre_ping``) and goes through, without a retry."""
    repo, loop = _store(store_factory)
    postgresql = repo.engine.dialect.name == "postgresql"
    who = "SELECT pg_backend_pid()" if postgresql else "SELECT CONNECTION_ID()"

    async def first() -> int:
        await aio.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), T0, repo)
        async with repo.engine.connect() as conn:  # the pooled connection the decision used
            ident: int = (await conn.exec_driver_sql(who)).scalar_one()
        return ident

    ident = loop.run(first())
    url = repo.engine.url.set(drivername="postgresql+psycopg" if postgresql else "mysql+pymysql")
    killer = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with killer.connect() as other:
        if postgresql:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": ident})
        else:
            other.exec_driver_sql(f"KILL CONNECTION {int(ident)}")
    killer.dispose()

    async def second() -> wm.Outcome:
        await asyncio.sleep(0.2)  # the server closes the socket
        later = T0 + timedelta(seconds=5)
        return await aio.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), later, repo)

    assert not loop.run(second()).created
    assert repo.retries == 0


# -- URLs and engines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://user@db.example:5432/app", "postgresql+asyncpg"),
        ("postgres://user@db.example/app", "postgresql+asyncpg"),
        ("mysql://root@127.0.0.1:3306/app", "mysql+aiomysql"),
        ("mariadb://root@127.0.0.1/app", "mariadb+aiomysql"),
        ("sqlite:///workers.db", "sqlite+aiosqlite"),
        ("postgresql+psycopg://user@db/app", "postgresql+psycopg"),
    ],
)
def test_plain_schemes_get_the_asyncio_driver(url: str, driver: str) -> None:
    assert normalize_async_url(url).drivername == driver


def test_the_sync_store_refuses_an_asyncio_url_at_construction() -> None:
    with pytest.raises(wm.InvalidInput, match="AsyncSQLWorkerRepository") as info:
        SQLWorkerRepository.from_url("postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    assert info.value.field == "url"
    with pytest.raises(wm.InvalidInput, match="AsyncSQLWorkerRepository"):
        SQLWorkerRepository.from_url("sqlite+aiosqlite://")


def test_the_sync_store_refuses_an_async_engine() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(wm.InvalidInput, match="AsyncSQLWorkerRepository") as info:
        SQLWorkerRepository(engine)  # type: ignore[arg-type]
    assert info.value.field == "engine"
    with pytest.raises(wm.InvalidInput, match="AsyncSQLWorkerRepository"):
        SQLWorkerRepository(engine.sync_engine)


def test_the_async_store_refuses_a_sync_engine_or_driver() -> None:
    with pytest.raises(wm.InvalidInput, match="SQLWorkerRepository") as info:
        AsyncSQLWorkerRepository(sa.create_engine("sqlite://"))  # type: ignore[arg-type]
    assert info.value.field == "engine"
    with pytest.raises(wm.InvalidInput, match="not an asyncio driver"):
        AsyncSQLWorkerRepository.from_url("sqlite+pysqlite://")
    with pytest.raises(wm.InvalidInput):
        AsyncSQLWorkerRepository.from_url("oracle://scott@db/app")


def test_a_memory_database_works_and_the_protocol_is_satisfied() -> None:
    async def go() -> list[wm.Worker]:
        async with AsyncSQLWorkerRepository.from_url("sqlite://") as repo:
            assert isinstance(repo, aio.AsyncWorkerRepository)
            await repo.create_schema()
            await repo.check_schema()
            await aio.apply_event(wm.Event.register("10.0.0.1"), T0, repo)
            return list(await repo.all_workers())

    assert [w.ip for w in asyncio.run(go())] == ["10.0.0.1"]
