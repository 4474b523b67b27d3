"""The asynchronous driver runs the same decision: every corpus trace decides alike under
``workermatch.aio`` and the synchronous functions, units are atomic among tasks, and a failing
unit writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import workermatch as wm
from _stores import State, state
from _times import T0
from workermatch import aio, trace

CORPUS = Path(wm.__file__).resolve().parent / "corpus"
TRACES = sorted(p.stem for p in CORPUS.glob("*.jsonl"))


KEYS = ("line", "worker", "rule", "created", "ambiguous", "ended", "alert")


def sync_replay(name: str, policy: wm.Policy) -> tuple[list[dict[str, Any]], State]:
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    with (CORPUS / f"{name}.jsonl").open(encoding="utf-8") as f:
        lines = [line.to_dict() for line in trace.replay(trace.parse_trace(f), repo, policy)]
    out = [
        {"line": x["line"], "worker": None, "refused": x["refused"]}
        if "refused" in x
        else {k: x[k] for k in KEYS}
        for x in lines
    ]
    return out, state(repo)


async def async_replay(name: str, policy: wm.Policy) -> tuple[list[dict[str, Any]], State]:
    repo = aio.AsyncInMemoryWorkerRepository(id_factory=wm.sequential_ids())
    with (CORPUS / f"{name}.jsonl").open(encoding="utf-8") as f:
        records = list(trace.parse_trace(f))
    out: list[dict[str, Any]] = []
    for record in records:
        try:
            o = await aio.apply_event(
                record.event, record.at, repo, policy, create_assignments=True
            )
        except wm.ClaimRefused as exc:
            out.append({"line": record.line, "worker": None, "refused": exc.reason})
            continue
        out.append(
            {
                "line": record.line,
                "worker": o.worker.id,
                "rule": o.rule.value,
                "created": o.created,
                "ambiguous": o.ambiguous,
                "ended": list(o.ended),
                "alert": None if o.alert is None else o.alert.value,
            }
        )
    return out, state(repo.sync)


@pytest.mark.parametrize("policy", [wm.DEFAULT_POLICY, wm.NOTE_POLICY, wm.LEGACY_POLICY])
@pytest.mark.parametrize("name", TRACES)
def test_every_corpus_trace_decides_alike_awaited(name: str, policy: wm.Policy) -> None:
    assert asyncio.run(async_replay(name, policy)) == sync_replay(name, policy)


def test_simultaneous_first_heartbeats_of_one_machine_make_one_worker() -> None:
    async def burst() -> aio.AsyncInMemoryWorkerRepository:
        repo = aio.AsyncInMemoryWorkerRepository()
        beat = wm.Event.heartbeat("10.0.0.1", hostname="pc-1")
        await asyncio.gather(*(aio.apply_event(beat, T0, repo) for _ in range(50)))
        return repo

    repo = asyncio.run(burst())
    assert len(repo.sync.all_workers()) == 1


def test_a_unit_that_fails_while_writing_writes_nothing() -> None:
    class Failing(aio.AsyncInMemoryWorkerRepository):
        async def write(self, writes: Iterable[wm.Write]) -> None:
            await super().write(writes)
            raise RuntimeError("connection lost")

    async def go() -> Failing:
        repo = Failing()
        with pytest.raises(wm.StorageError, match="connection lost"):
            await aio.apply_event(wm.Event.register("10.0.0.1"), T0, repo)
        return repo

    repo = asyncio.run(go())
    assert repo.sync.all_workers() == []


def test_match_worker_plan_and_sweep_mirror_the_synchronous_ones() -> None:
    async def go() -> None:
        repo = aio.AsyncInMemoryWorkerRepository()
        claim = wm.Event.claim("10.0.0.1", "A1")
        await aio.apply_event(claim, T0, repo, create_assignments=True)
        identity = wm.Identity(ip="10.0.0.1")
        decision = await aio.match_worker(identity, T0, repo)
        assert decision == wm.match_worker(identity, T0, repo.sync)
        event = wm.Event.gui_update("10.0.0.1", "finished")
        assert await aio.plan(event, T0, repo) == wm.plan(event, T0, repo.sync)
        later = T0 + timedelta(minutes=10)
        assert await aio.sweep(repo, later) == (decision.worker_id,)

    asyncio.run(go())


def test_bad_input_is_refused_before_anything_is_awaited() -> None:
    async def go() -> None:
        repo = aio.AsyncInMemoryWorkerRepository()
        with pytest.raises(wm.InvalidInput, match="store's clock"):
            await aio.apply_event(wm.Event.register("10.0.0.1"), None, repo)
        with pytest.raises(wm.InvalidInput) as info:
            await aio.match_worker("10.0.0.1", T0, repo)  # type: ignore[arg-type]
        assert info.value.field == "identity"

    asyncio.run(go())


def test_the_memory_store_satisfies_the_async_protocol() -> None:
    assert isinstance(aio.AsyncInMemoryWorkerRepository(), aio.AsyncWorkerRepository)
