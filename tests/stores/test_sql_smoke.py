"""Every store starts empty and answers the story alike (quick smoke test of store_factory)."""

from __future__ import annotations

from datetime import timedelta

import workermatch as wm
from _stores import StoreFactory
from _times import T0

START = T0 + timedelta(seconds=1)  # the story's first request, as in test_story


def test_a_fresh_store_is_empty_and_keeps_what_a_decision_writes(
    store_factory: StoreFactory,
) -> None:
    repo = store_factory(wm.sequential_ids())
    assert repo.all_workers() == []
    claim = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), START, repo, create_assignments=True)
    beat = wm.apply_event(
        wm.Event.heartbeat("10.0.0.2", hostname="Box"), START + timedelta(seconds=20.123456), repo
    )
    assert (claim.worker.id, beat.worker.id, beat.rule) == ("w1", "w1", wm.Rule.RECENT_ORPHAN)
    (worker,) = repo.all_workers()
    assert worker == beat.worker
    assert worker.last_seen == START + timedelta(seconds=20.123)
    again = store_factory(wm.sequential_ids())
    assert again.all_workers() == []
