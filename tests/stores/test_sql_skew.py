"""One clock: server processes whose clocks disagree by twice the quiet period, on one
database, split no session and mix none, because ``now=None`` decides at the database's clock.

Two real processes send a fleet in real time (``tests/_skew.py``); process 0's own clock runs
ahead, and the application reads it for everything it does with time.  A real fleet is slow (a
session lasts minutes, the quiet period is 30 s), so the fleet's timing is compressed: every
request time and every window of the default policy is divided by ``SCALE``, and so is the
skew.  Decisions compare times with windows only, so dividing both keeps every comparison's
outcome: a skew of 60 s against the default quiet period of 30 s (twice over) is a skew of
2.4 s against a quiet period of 1.2 s here.  (The decision's one fixed margin, a heartbeat's
5 s slack, does not scale; this fleet never renames a machine nor moves it while a heartbeat
is due, where that margin counts.)  ``SCALE`` is 25 rather than 100 so that the scheduling
delays of a busy 2-core machine (tens of milliseconds) stay small against the windows (they
are 25 times as large at full scale).

The control runs the same fleet with each process deciding at its own clock: it must split or
mix sessions, or the test could not tell one clock from two.  ``benchmarks/bench_skew.py`` runs
the fleet at full scale.
"""

from __future__ import annotations

import pytest

from _skew import run_fleet
from _stores import StoreFactory

SCALE = 25
SKEW = 60.0  # full-scale seconds: twice the default quiet period
MACHINES = 4


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
