"""Guarantee 6 as a property: random event streams decide alike on every store and in memory.

Each example draws a short stream of requests from a few machines (a handful of IPs,
hostnames and assignments, time steps that straddle every window of the policies) and applies
it to a fresh repository of the store under test and to the in-memory reference repository.
Every outcome (the decision with its explanation, the writes, or the refusal) and the final
state must be identical.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workermatch as wm
from _stores import StoreFactory
from _times import T0

IPS = ["10.0.0.1", "10.0.0.2", "2001:db8::7", "10.0.0.3"]
HOSTS = [None, "lab-1", "lab-2", "LAB-1."]
STEPS = [0.0, 0.0005, 0.4, 3.0, 20.0, 31.0, 45.0, 130.0, 301.0, 400.0]


@st.composite
def events(draw: st.DrawFn) -> tuple[float, wm.Event]:
    step = draw(st.sampled_from(STEPS))
    kind = draw(st.sampled_from(["claim", "heartbeat", "gui_update", "register"]))
    ip = draw(st.sampled_from(IPS))
    host = draw(st.sampled_from(HOSTS))
    if kind == "claim":
        return step, wm.Event.claim(ip, draw(st.sampled_from(["A1", "A2", "A3"])))
    if kind == "heartbeat":
        hint = draw(st.sampled_from([None, None, "w1", "w2"]))
        return step, wm.Event.heartbeat(ip, hostname=host, worker_id=hint)
    if kind == "gui_update":
        message = draw(st.sampled_from([None, "overall_progress", "finished", "fatal_error"]))
        hint = draw(st.sampled_from([None, None, "A1", "A2"]))
        return step, wm.Event.gui_update(ip, message, assignment_id=hint)
    return step, wm.Event.register(ip, hostname=host)


def play(
    repo: wm.WorkerRepository, stream: list[tuple[float, wm.Event]], policy: wm.Policy
) -> list[Any]:
    out: list[Any] = []
    now = T0
    for step, event in stream:
        now += timedelta(seconds=step)
        try:
            outcome = wm.apply_event(event, now, repo, policy, create_assignments=True)
        except (wm.ClaimRefused, wm.AmbiguousMatch) as exc:
            out.append(("refused", type(exc).__name__, getattr(exc, "reason", None)))
            continue
        out.append((outcome.decision.to_dict(), outcome.writes))
    out.append(sorted(repo.all_workers(), key=lambda w: w.id))
    out.append(sorted(repo.all_assignments(), key=lambda a: a.id))
    return out


@settings(
    max_examples=40,  # each example is a fresh store on a real server: keep the suite short
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(
    stream=st.lists(events(), min_size=1, max_size=14),
    policy_name=st.sampled_from(["default", "note", "legacy"]),
)
def test_guarantee_6_every_store_decides_random_streams_like_memory(
    store_factory: StoreFactory, stream: list[tuple[float, wm.Event]], policy_name: str
) -> None:
    policy = wm.get_policy(policy_name)
    expected = play(wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids()), stream, policy)
    got = play(store_factory(wm.sequential_ids()), stream, policy)
    assert got == expected
