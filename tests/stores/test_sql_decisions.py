"""Guarantee 6, every repository decides alike: the corpus and hard cases on every store.

Each trace of the shipped corpus is replayed on the store under test and on the in-memory
reference repository; the decisions (with their full explanations), the outcomes and the final
state must be identical.
"""

from __future__ import annotations

from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import workermatch as wm
from _stores import StoreFactory
from _times import T0
from workermatch import trace

CORPUS = Path(str(resources.files("workermatch") / "corpus"))
TRACES = sorted(p.name for p in CORPUS.glob("*.jsonl"))
# Every trace under the default policy; the note's and the legacy policies on the traces whose
# outcome differs most between policies (every trace would take minutes on a server store).
CASES = [(name, "default") for name in TRACES] + [
    (name, policy)
    for name in (
        "note-three-workers.jsonl",
        "fast-gui-start.jsonl",
        "simultaneous-starts-vpn.jsonl",
    )
    for policy in ("note", "legacy")
]


def run_trace(repo: wm.WorkerRepository, name: str, policy: wm.Policy) -> list[Any]:
    records = list(trace.parse_trace((CORPUS / name).read_text().splitlines()))
    out: list[Any] = []
    for line in trace.replay(records, repo, policy):
        decision = None if line.decision is None else line.decision.to_dict()
        writes = None if line.outcome is None else line.outcome.writes
        out.append((line.to_dict(), decision, writes))
    out.append(trace.final_state(repo, records[-1].at, policy))
    return out


@pytest.mark.parametrize(("name", "policy_name"), CASES)
def test_guarantee_6_every_store_replays_the_corpus_like_memory(
    store_factory: StoreFactory, name: str, policy_name: str
) -> None:
    policy = wm.get_policy(policy_name)
    expected = run_trace(wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids()), name, policy)
    got = run_trace(store_factory(wm.sequential_ids()), name, policy)
    assert got == expected


def _events() -> list[tuple[float, wm.Event]]:
    """Hard cases in one stream: NAT twins, a claim race, hints, session end, transfer."""
    return [
        (0.0, wm.Event.claim("10.0.0.1", "A1")),
        (0.0, wm.Event.claim("10.0.0.1", "A2")),  # second machine behind the same NAT
        (5.0, wm.Event.heartbeat("10.0.0.1", hostname="lab-1")),
        (5.0, wm.Event.heartbeat("10.0.0.1", hostname="lab-2")),
        (6.0, wm.Event.gui_update("10.0.0.1", "progress")),
        (7.0, wm.Event.claim("10.9.9.9", "A1")),  # refused: A1 runs on a live worker
        (8.0, wm.Event.gui_update("192.168.5.5", "progress", assignment_id="A2")),
        (9.0, wm.Event.heartbeat("192.168.5.5", hostname="lab-2.", worker_id="w2")),
        (10.0, wm.Event.gui_update("10.0.0.1", "finished", hostname="LAB-1")),
        (11.0, wm.Event.claim("10.0.0.1", "A1")),  # refused: already finished
        (12.0, wm.Event.claim("2001:DB8::1", "A3")),
        (13.0, wm.Event.register("::ffff:10.0.0.7", hostname="solo")),
        # A2's machine goes silent past stale_after; its next heartbeat creates a worker that
        # takes A2 over.
        (400.0, wm.Event.heartbeat("192.168.5.6", hostname="lab-2")),
        (401.0, wm.Event.gui_update("192.168.5.6", "fatal_error")),
        (700.0, wm.Event.claim("2001:db8::1", "A4")),
    ]


def _play(repo: wm.WorkerRepository, policy: wm.Policy) -> list[Any]:
    out: list[Any] = []
    for offset, event in _events():
        now = T0 + timedelta(seconds=offset, microseconds=123_456)
        try:
            outcome = wm.apply_event(event, now, repo, policy, create_assignments=True)
        except wm.ClaimRefused as exc:
            out.append(("refused", exc.reason, exc.holder))
            continue
        out.append((outcome.decision.to_dict(), outcome.writes, outcome.transferred))
    out.append(sorted(repo.all_workers(), key=lambda w: w.id))
    out.append(sorted(repo.all_assignments(), key=lambda a: a.id))
    out.append(wm.sweep(repo, T0 + timedelta(seconds=2000)))
    out.append(sorted(repo.all_workers(), key=lambda w: w.id))
    return out


@pytest.mark.parametrize("policy_name", ["default", "note", "legacy"])
def test_guarantee_6_every_store_decides_the_hard_cases_like_memory(
    store_factory: StoreFactory, policy_name: str
) -> None:
    policy = wm.get_policy(policy_name)
    expected = _play(wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids()), policy)
    got = _play(store_factory(wm.sequential_ids()), policy)
    assert got == expected
