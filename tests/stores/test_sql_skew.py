"""One clock: server processes whose clocks disagree by twice the quiet period, on one
database, split no session and mix none, because ``now=None`` decides at the database's clock.

Two real processes send a fleet in real time (``tests/_skew.py``); process 0's own clock runs
ahead, and the application reads it for everything it does with time.  A real fleet is slow (a
session lasts minutes, the quiet period is 30 s), so the fleet's timing is compressed: every
request time and every window of the default policy is divided by ``SCALE``, and so is the
skew.  Decisions compare times with windows only, so dividing both keeps every comparison's
outcome: a skew of 60 s against the default quiet period of 30 s (twice over) is a skew of
2.4 s against a quiet period of 1.2 s here.  The decision's one fixed margin, a heartbeat's
5 s slack, does not scale; this fleet never renames a machine nor moves it mid-session, and
the first test below checks that, played in one process on the in-memory store, it decides
exactly alike at full scale and compressed, with and without the skew.  ``SCALE`` is 25 rather
than 100 so that the scheduling delays of a busy 2-core machine (tens, sometimes a hundred
milliseconds) stay well within the compressed windows.

The control runs the same fleet with each process deciding at its own clock: it must split or
mix sessions, or the test could not tell one clock from two.  ``benchmarks/bench_skew.py`` runs
the fleet at full scale.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

import workermatch as wm
from _skew import fleet, run_fleet, scaled_policy
from _stores import StoreFactory
from _times import T0

SCALE = 25
SKEW = 60.0  # full-scale seconds: twice the default quiet period
MACHINES = 4


def _decisions(scale: float, skew_s: float) -> list[tuple[str, bool, str] | str]:
    """The fleet played in time order in one process on the in-memory store, process 0's
    requests at its skewed clock: each request's rule, whether it created, and the worker."""
    shares = fleet(MACHINES, scale=scale)
    jobs = sorted(
        (seq, at, p, request) for p, share in enumerate(shares) for seq, at, _, _, request in share
    )
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    policy = scaled_policy(scale)
    out: list[tuple[str, bool, str] | str] = []
    for _, at, p, request in jobs:
        now = T0 + timedelta(seconds=at + (skew_s / scale if p == 0 else 0))
        try:
            o = wm.apply_event(request.to_event(), now, repo, policy, create_assignments=True)
        except wm.ClaimRefused as exc:
            out.append(exc.reason)
            continue
        out.append((o.rule.value, o.created, o.worker.id))
    return out


@pytest.mark.parametrize("skew", [0.0, SKEW])
def test_the_compressed_fleet_decides_like_the_full_scale_one(skew: float) -> None:
    compressed = _decisions(SCALE, skew)
    assert len(compressed) > 20 * MACHINES
    assert compressed == _decisions(1, skew)
    if skew:  # and the skew changes decisions, compressed as at full scale
        assert compressed != _decisions(SCALE, 0.0)


@pytest.mark.parametrize("store_factory", ["postgresql", "mysql"], indirect=True)
def test_skewed_server_processes_split_and_mix_no_session_on_the_stores_clock(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory()
    one_clock = run_fleet(repo, machines=MACHINES, scale=SCALE, skew_s=SKEW, mode="store")
    assert one_clock.errors == []
    assert one_clock.requests > 20 * MACHINES
    assert (one_clock.split, one_clock.mixed) == (0, 0)

    # The control: the same fleet, each process deciding at its own (skewed) clock.
    own_clocks = run_fleet(repo, machines=MACHINES, scale=SCALE, skew_s=SKEW, mode="own")
    assert own_clocks.errors == []
    assert own_clocks.split + own_clocks.mixed > 0, own_clocks
