"""Reconciling a duplicate after the fact: the mid-run address change and the renamed machine
(the RECONCILE effect of the default rule table; docs/how-it-decides.md)."""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs
import pytest

import workermatch as wm
from _times import T0

OLD_IP = "157.193.240.188"
NEW_IP = "157.193.240.190"
HOST = "UG-GNS0S34"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_repo() -> wm.InMemoryWorkerRepository:
    return wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())


def apply(
    repo: wm.InMemoryWorkerRepository,
    seconds: float,
    event: wm.Event,
    policy: wm.Policy = wm.DEFAULT_POLICY,
) -> wm.Outcome:
    return wm.apply_event(event, at(seconds), repo, policy, create_assignments=True)


def running_session(
    repo: wm.InMemoryWorkerRepository, policy: wm.Policy = wm.DEFAULT_POLICY
) -> None:
    """A session on OLD_IP: claim, GUI start, updates until 400 s."""
    apply(repo, 0, wm.Event.claim(OLD_IP, "A1"), policy)
    apply(repo, 10, wm.Event.heartbeat(OLD_IP, hostname=HOST), policy)
    for t in range(11, 400, 3):
        apply(repo, t, wm.Event.gui_update(OLD_IP, "overall_progress"), policy)


NO_RECONCILE = wm.DEFAULT_POLICY.evolve(
    rules=attrs.evolve(
        wm.DEFAULT_RULES,
        name="no-reconcile",
        effects=wm.DEFAULT_RULES.effects - {wm.Effect.RECONCILE},
    )
)


def flip(repo: wm.InMemoryWorkerRepository, policy: wm.Policy = wm.DEFAULT_POLICY) -> wm.Outcome:
    """The VPN changes the address at 401 s: an update first, then the heartbeat."""
    first = apply(repo, 401, wm.Event.gui_update(NEW_IP, "overall_progress"), policy)
    assert first.created  # nothing ties an update without hostname to the session
    return apply(repo, 420, wm.Event.heartbeat(NEW_IP, hostname=HOST), policy)


def test_the_heartbeat_merges_the_duplicate_into_the_session_worker() -> None:
    repo = new_repo()
    running_session(repo)
    outcome = flip(repo)
    assert outcome.merged == ("w2",)
    assert outcome.worker.id == "w1"
    assert "merged duplicate w2 into w1" in outcome.explain()
    w1, w2 = repo.get_worker("w1"), repo.get_worker("w2")
    assert w1 is not None
    assert w2 is not None
    assert (w1.ip, w1.hostname, w1.status) == (NEW_IP, "ug-gns0s34", wm.WorkerStatus.RUNNING)
    assert (w2.merged_into, w2.status) == ("w1", wm.WorkerStatus.IDLE)
    assert w2.is_stale_at(at(420), wm.DEFAULT_POLICY.stale_after)
    # The session goes on on its one worker, and finished completes its assignment.
    assert apply(repo, 425, wm.Event.gui_update(NEW_IP, "overall_progress")).worker.id == "w1"
    done = apply(repo, 430, wm.Event.gui_update(NEW_IP, "finished"))
    assert (done.worker.id, done.ended) == ("w1", ("A1",))


def test_a_worker_id_hint_naming_the_duplicate_follows_the_forward_pointer() -> None:
    repo = new_repo()
    running_session(repo)
    flip(repo)
    outcome = apply(repo, 425, wm.Event.gui_update(NEW_IP, "x", worker_id="w2"))
    assert (outcome.worker.id, outcome.rule) == ("w1", wm.Rule.WORKER_ID)


def test_without_reconciliation_the_assignment_is_stranded() -> None:
    policy = NO_RECONCILE
    repo = new_repo()
    running_session(repo)
    outcome = flip(repo, policy)
    assert outcome.merged == ()
    done = apply(repo, 430, wm.Event.gui_update(NEW_IP, "finished"), policy)
    assert (done.worker.id, done.ended) == ("w2", ())
    assignment = repo.get_assignment("A1")
    assert assignment is not None
    assert assignment.status is wm.AssignmentStatus.RUNNING


@pytest.mark.parametrize("policy", [wm.NOTE_POLICY, wm.LEGACY_POLICY], ids=lambda p: p.name)
def test_the_shipped_note_and_legacy_policies_never_merge(policy: wm.Policy) -> None:
    assert wm.Effect.RECONCILE not in policy.rules.effects
    repo = new_repo()
    running_session(repo, policy)
    outcome = flip(repo, policy)
    assert (outcome.merged, outcome.worker.id) == ((), "w2")
    w2 = repo.get_worker("w2")
    assert w2 is not None
    assert w2.merged_into is None


def test_never_merges_while_the_older_worker_is_still_fed() -> None:
    # Lifetimes overlap: the old address still sends after the new worker appeared (two runs
    # on one machine, or a clone), so the two are not one session.
    repo = new_repo()
    running_session(repo)
    apply(repo, 401, wm.Event.gui_update(NEW_IP, "overall_progress"))
    apply(repo, 403, wm.Event.gui_update(OLD_IP, "overall_progress"))
    outcome = apply(repo, 420, wm.Event.heartbeat(NEW_IP, hostname=HOST))
    assert outcome.merged == ()
    assert repo.get_worker("w2") is not None


def test_merges_after_any_silence_shorter_than_stale_after() -> None:
    # The merge window is stale_after: a VPN that takes a minute to reconnect still ends with
    # one worker per session.
    repo = new_repo()
    running_session(repo)
    apply(repo, 460, wm.Event.gui_update(NEW_IP, "overall_progress"))  # 61 s of silence
    outcome = apply(repo, 470, wm.Event.heartbeat(NEW_IP, hostname=HOST))
    assert (outcome.merged, outcome.worker.id) == (("w2",), "w1")


def test_never_merges_into_a_stale_worker_but_its_work_follows_the_machine() -> None:
    # Silent past stale_after: no merge (the stale worker is no candidate).  The heartbeat that
    # reveals the new worker's hostname moves the stale worker's RUNNING work onto it instead.
    repo = new_repo()
    running_session(repo)
    apply(repo, 700, wm.Event.gui_update(NEW_IP, "overall_progress"))  # 303 s of silence
    outcome = apply(repo, 710, wm.Event.heartbeat(NEW_IP, hostname=HOST))
    assert (outcome.merged, outcome.worker.id, outcome.transferred) == ((), "w2", ("A1",))
    w1 = repo.get_worker("w1")
    assert w1 is not None
    assert (w1.merged_into, w1.stale) == (None, True)
    done = apply(repo, 720, wm.Event.gui_update(NEW_IP, "finished"))
    assert (done.worker.id, done.ended) == ("w2", ("A1",))


def test_never_merges_two_sessions() -> None:
    # The newer worker claimed its own assignment: it is another session, not a duplicate.
    repo = new_repo()
    running_session(repo)
    apply(repo, 401, wm.Event.claim(NEW_IP, "A2"))
    outcome = apply(repo, 420, wm.Event.heartbeat(NEW_IP, hostname=HOST))
    assert outcome.merged == ()
    a1, a2 = repo.get_assignment("A1"), repo.get_assignment("A2")
    assert a1 is not None
    assert a2 is not None
    assert (a1.worker_id, a2.worker_id) == ("w1", "w2")


def test_never_merges_when_two_machines_could_be_the_one() -> None:
    # Two machines cloned from one image (same hostname) both went silent just before the
    # duplicate appeared: a duplicate can be repaired later, a bad merge cannot.
    clone = "203.0.113.9"
    repo = new_repo()
    apply(repo, 0, wm.Event.claim(OLD_IP, "A1"))
    apply(repo, 5, wm.Event.claim(clone, "A2"))
    apply(repo, 10, wm.Event.heartbeat(OLD_IP, hostname=HOST))
    apply(repo, 12, wm.Event.heartbeat(clone, hostname=HOST))
    for t in range(13, 400, 3):
        apply(repo, t, wm.Event.gui_update(OLD_IP, "overall_progress"))
        apply(repo, t + 1, wm.Event.gui_update(clone, "overall_progress"))
    outcome = flip(repo)
    assert outcome.merged == ()
    assert {w.id for w in repo.all_workers() if w.merged_into is None} == {"w1", "w2", "w3"}


def test_never_merges_into_an_ended_session() -> None:
    repo = new_repo()
    running_session(repo)
    apply(repo, 400, wm.Event.gui_update(OLD_IP, "finished"))
    apply(repo, 401, wm.Event.gui_update(NEW_IP, "log"))
    outcome = apply(repo, 410, wm.Event.heartbeat(NEW_IP, hostname=HOST))
    assert outcome.merged == ()


# ---------------------------------------------------------------------------------------------
# A machine renamed mid-run

NEW_NAME = "UG-RENAMED"


def session_with_heartbeats(repo: wm.InMemoryWorkerRepository, until: int = 400) -> None:
    """A session on OLD_IP whose machine sends its heartbeats (hostname HOST) every 30 s, the
    last at 370 s, and its updates every 3 s until ``until``."""
    apply(repo, 0, wm.Event.claim(OLD_IP, "A1"))
    for t in range(10, until, 30):
        apply(repo, t, wm.Event.heartbeat(OLD_IP, hostname=HOST))
    for t in range(11, until, 3):
        apply(repo, t, wm.Event.gui_update(OLD_IP, "overall_progress"))


def rename(repo: wm.InMemoryWorkerRepository, policy: wm.Policy = wm.DEFAULT_POLICY) -> wm.Outcome:
    """The machine is renamed at 400 s: its heartbeats carry NEW_NAME from then on."""
    first = apply(repo, 400, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME), policy)
    assert first.created  # the hostname veto keeps the new name off the old name's worker
    for t in range(403, 430, 3):
        assert apply(repo, t, wm.Event.gui_update(OLD_IP, "x"), policy).worker.id == "w1"
    return apply(repo, 430, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME), policy)


def test_a_renamed_machines_next_heartbeat_merges_its_new_worker_into_the_session() -> None:
    repo = new_repo()
    session_with_heartbeats(repo)
    outcome = rename(repo)
    assert (outcome.merged, outcome.worker.id) == (("w2",), "w1")
    assert "ug-gns0s34 was renamed ug-renamed" in outcome.explain()
    w1, w2 = repo.get_worker("w1"), repo.get_worker("w2")
    assert w1 is not None
    assert w2 is not None
    assert (w1.hostname, w1.hostname_seen, w1.status) == (
        "ug-renamed",
        at(430),
        wm.WorkerStatus.RUNNING,
    )
    assert (w2.merged_into, w2.status) == ("w1", wm.WorkerStatus.IDLE)
    # Later, when the old name's heartbeats count as stopped, the session's updates and its
    # end still reach its worker.
    assert apply(repo, 460, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME)).worker.id == "w1"
    assert apply(repo, 470, wm.Event.gui_update(OLD_IP, "x")).worker.id == "w1"
    done = apply(repo, 480, wm.Event.gui_update(OLD_IP, "finished"))
    assert (done.worker.id, done.ended) == ("w1", ("A1",))


def test_a_rename_is_not_merged_before_a_heartbeat_period_has_passed() -> None:
    # One heartbeat of a new name may be another machine starting at the shared address: the
    # old name's heartbeats must have had time to go on.
    repo = new_repo()
    session_with_heartbeats(repo)
    apply(repo, 400, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME))
    assert apply(repo, 420, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME)).merged == ()


def test_two_machines_behind_one_address_are_not_taken_for_a_rename() -> None:
    # The old name's heartbeats go on after the new name appeared: two machines.
    repo = new_repo()
    session_with_heartbeats(repo)
    apply(repo, 400, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME))
    apply(repo, 401, wm.Event.heartbeat(OLD_IP, hostname=HOST))
    outcome = apply(repo, 430, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME))
    assert (outcome.merged, outcome.worker.id) == ((), "w2")
    w1 = repo.get_worker("w1")
    assert w1 is not None
    assert w1.hostname == "ug-gns0s34"


def test_a_new_name_at_another_address_is_not_a_rename() -> None:
    repo = new_repo()
    session_with_heartbeats(repo)
    apply(repo, 400, wm.Event.heartbeat(NEW_IP, hostname=NEW_NAME))
    outcome = apply(repo, 430, wm.Event.heartbeat(NEW_IP, hostname=NEW_NAME))
    assert (outcome.merged, outcome.worker.id) == ((), "w2")


def test_a_new_name_whose_worker_claimed_work_is_another_session() -> None:
    repo = new_repo()
    session_with_heartbeats(repo)
    apply(repo, 400, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME))
    apply(repo, 405, wm.Event.claim(OLD_IP, "A2", hostname=NEW_NAME))
    outcome = apply(repo, 430, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME))
    assert outcome.merged == ()


def test_a_renamed_machine_does_not_adopt_another_machines_fresh_claim() -> None:
    # Another machine claims just before the rename: the new name's first heartbeat could be
    # that machine's GUI (rule 3), or this machine renamed (its heartbeat was due, from its
    # address).  It makes a worker of its own, which the next heartbeat merges as a rename.
    repo = new_repo()
    session_with_heartbeats(repo)
    other = apply(repo, 399, wm.Event.claim("203.0.113.7", "A2"))
    outcome = rename(repo)
    assert (outcome.merged, outcome.worker.id) == (("w3",), "w1")
    assert apply(repo, 431, wm.Event.heartbeat("203.0.113.7", hostname="PC-7")).worker.id == (
        other.worker.id
    )
    done = apply(repo, 440, wm.Event.gui_update(OLD_IP, "finished"))
    assert (done.worker.id, done.ended) == ("w1", ("A1",))


def test_a_machine_passed_over_for_a_rename_joins_its_claim_a_heartbeat_later() -> None:
    # A second machine's GUI starts behind the first one's address just when the first one's
    # heartbeat is due: it might be a rename, so the second machine's claim is passed over.
    # The first machine's heartbeats go on under its old name, so the next heartbeat of the
    # new name merges its worker into the claim it passed over.
    repo = new_repo()
    session_with_heartbeats(repo)
    claim = apply(repo, 380, wm.Event.claim("10.8.0.5", "A2"))
    first = apply(repo, 400, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME))
    assert first.created
    assert "may come from w1's machine renamed" in first.explain()
    assert apply(repo, 400.5, wm.Event.heartbeat(OLD_IP, hostname=HOST)).worker.id == "w1"
    outcome = apply(repo, 430, wm.Event.heartbeat(OLD_IP, hostname=NEW_NAME))
    assert (outcome.merged, outcome.worker.id) == ((first.worker.id,), claim.worker.id)
    assert "heartbeats went on under its old name" in outcome.explain()
    w1 = repo.get_worker("w1")
    assert w1 is not None
    assert w1.hostname == "ug-gns0s34"


def test_a_clones_heartbeat_sooner_than_its_twins_next_is_not_the_twin_moving() -> None:
    # A clone (same hostname) starts while its twin runs, its GUI on another address.  Its
    # first heartbeat comes 15 s after the twin's last one: too soon to be the twin's next
    # heartbeat from a new address, so the clone's own claim is adopted.
    repo = new_repo()
    session_with_heartbeats(repo, until=380)
    claim = apply(repo, 378, wm.Event.claim("10.8.0.5", "A2"))
    outcome = apply(repo, 385, wm.Event.heartbeat("10.8.0.9", hostname=HOST))
    assert outcome.worker.id == claim.worker.id
    assert outcome.rule is wm.Rule.RECENT_ORPHAN


def test_without_reconciliation_a_rename_is_not_merged() -> None:
    repo = new_repo()
    session_with_heartbeats(repo)
    outcome = rename(repo, NO_RECONCILE)
    assert (outcome.merged, outcome.worker.id) == ((), "w2")


def test_work_moved_off_a_contested_worker_carries_its_doubt() -> None:
    """Two claims without hostname, then a heartbeat that could be either's: the adoption is
    contested.  When that machine returns from a long outage on a new address, its work
    follows it, and so does the doubt: its `finished` is held, not given to a guess."""
    repo = new_repo()
    apply(repo, 0, wm.Event.claim("10.8.0.1", "A1"))
    apply(repo, 5, wm.Event.claim("10.8.0.2", "A2"))
    first = apply(repo, 20, wm.Event.heartbeat("10.8.0.3", hostname="PC-1"))
    assert first.alert is wm.Alert.DOUBT
    adopted = first.worker.id
    assert first.worker.contested == ("w1", "w2")
    # Its machine goes silent past stale_after, then comes back elsewhere.
    back = 20 + wm.DEFAULT_POLICY.stale_after.total_seconds() + 60
    apply(repo, back, wm.Event.gui_update("10.8.0.9", "overall_progress"))
    moved = apply(repo, back + 10, wm.Event.heartbeat("10.8.0.9", hostname="PC-1"))
    assert moved.transferred
    heir = moved.worker.id
    assert heir != adopted
    other = "w2" if adopted == "w1" else "w1"
    assert moved.worker.contested == tuple(sorted((heir, other)))
    stale = repo.get_worker(adopted)
    assert stale is not None
    assert stale.contested == ()
    done = apply(repo, back + 20, wm.Event.gui_update("10.8.0.9", "finished"))
    assert done.ended == ()
    assert done.held == tuple(sorted((heir, other)))
    assert done.alert is wm.Alert.END_HELD


def test_a_finished_that_names_work_from_another_session_ends_that_one_alone() -> None:
    """Clones share a hostname: the stale work of one follows the other when it identifies
    itself.  When the first clone's `finished` names its own assignment, now on its twin's
    worker, that assignment alone ends: the twin's session on that worker goes on."""
    repo = new_repo()
    apply(repo, 0, wm.Event.claim("10.0.0.1", "A1"))
    apply(repo, 10, wm.Event.heartbeat("10.0.0.1", hostname=HOST))
    later = 10 + wm.DEFAULT_POLICY.stale_after.total_seconds() + 60
    apply(repo, later, wm.Event.claim("10.0.0.2", "A2"))
    took = apply(repo, later + 10, wm.Event.heartbeat("10.0.0.2", hostname=HOST))
    assert took.transferred == ("A1",)
    twin = took.worker.id
    done = apply(repo, later + 100, wm.Event.gui_update("10.0.0.1", "finished", assignment_id="A1"))
    assert (done.worker.id, done.ended) == (twin, ("A1",))
    assert "ended A1 alone" in done.explain()
    a2 = repo.get_assignment("A2")
    assert a2 is not None
    assert (a2.status, a2.worker_id) == (wm.AssignmentStatus.RUNNING, twin)
    worker = repo.get_worker(twin)
    assert worker is not None
    assert (worker.ended_at, worker.assignment_id) == (None, "A2")
    # The twin's own end still ends its own work.
    own = apply(repo, later + 110, wm.Event.gui_update("10.0.0.2", "finished", assignment_id="A2"))
    assert (own.worker.id, own.ended) == (twin, ("A2",))


# ------------------------------------------------------------------------------------------
# Blips on a VPN: the address changes after a silence, and other machines' claims wait for
# their GUIs in the meantime.

OTHER_IP = "157.193.240.7"
OTHER_CLI = "157.193.240.8"


def test_after_a_blip_a_heartbeat_rejoins_its_own_worker_not_another_machines_claim() -> None:
    # The machine's heartbeats stop for 150 s (five heartbeat periods) and come back, on time,
    # from a new address; meanwhile another machine claimed from elsewhere and its GUI has not
    # started yet.  The heartbeat continues its own stream: it does not adopt that claim.
    repo = new_repo()
    apply(repo, 0, wm.Event.claim(OLD_IP, "A1"))
    for t in range(10, 371, 30):
        apply(repo, t, wm.Event.heartbeat(OLD_IP, hostname=HOST))
    other = apply(repo, 470, wm.Event.claim(OTHER_CLI, "B1"))
    back = apply(repo, 520, wm.Event.heartbeat(NEW_IP, hostname=HOST))
    assert back.worker.id == "w1"
    assert back.worker.ip == NEW_IP
    assert "whose heartbeat was due now after" in back.explain()
    assert repo.get_assignment("B1").worker_id == other.worker.id  # type: ignore[union-attr]
    done = apply(repo, 560, wm.Event.gui_update(NEW_IP, "finished"))
    assert done.ended == ("A1",)


def test_a_heartbeat_off_its_machines_beat_does_not_take_a_silent_stream() -> None:
    # The same silence, but the heartbeat comes off the stream's beat: another machine with the
    # same name could send it; the claim and the silent stream are weighed as before.
    repo = new_repo()
    apply(repo, 0, wm.Event.claim(OLD_IP, "A1"))
    for t in range(10, 371, 30):
        apply(repo, t, wm.Event.heartbeat(OLD_IP, hostname=HOST))
    apply(repo, 470, wm.Event.claim(OTHER_CLI, "B1"))
    out = apply(repo, 532, wm.Event.heartbeat(NEW_IP, hostname=HOST))
    assert "whose heartbeat was due now" not in out.explain()


def test_a_batch_machines_heartbeat_finds_its_next_claim_by_its_last_sessions_end() -> None:
    # Two batch machines on a VPN: each ends a session and claims the next one seconds later
    # from a new address.  The second machine's claim got the address the first machine's GUI
    # comes back on; the first machine's heartbeat joins its own claim (made right after its
    # session ended), not the claim that happens to sit at its address.
    repo = new_repo()
    apply(repo, 0, wm.Event.claim(OLD_IP, "A1"))
    apply(repo, 10, wm.Event.heartbeat(OLD_IP, hostname=HOST))
    apply(repo, 1, wm.Event.claim(OTHER_IP, "B1"))
    apply(repo, 11, wm.Event.heartbeat(OTHER_IP, hostname="PC-OTHER"))
    assert apply(repo, 300, wm.Event.gui_update(OLD_IP, "finished")).ended == ("A1",)
    mine = apply(repo, 305, wm.Event.claim("157.193.240.30", "A2"))
    assert apply(repo, 310, wm.Event.gui_update(OTHER_IP, "finished")).ended == ("B1",)
    theirs = apply(repo, 314, wm.Event.claim(NEW_IP, "B2"))
    gui = apply(repo, 370, wm.Event.heartbeat(NEW_IP, hostname=HOST))
    assert gui.worker.id == mine.worker.id != theirs.worker.id
    assert "the claim made right after hostname" in gui.explain()
    other = apply(repo, 375, wm.Event.heartbeat("157.193.240.31", hostname="PC-OTHER"))
    assert other.worker.id == theirs.worker.id


def test_a_claim_never_heard_from_again_keeps_its_work_from_a_newcomer_at_its_address() -> None:
    # A claim whose GUI went to another address, then silence past stale_after: a request from
    # the claim's address (handed on to another machine) makes a worker that does not take the
    # claim's work: nothing says it is the claim's machine.
    repo = new_repo()
    claim = apply(repo, 0, wm.Event.claim(OLD_IP, "A1"))
    out = apply(repo, 400, wm.Event.gui_update(OLD_IP, "overall_progress"))
    assert out.created
    assert out.transferred == ()
    assert "a claim never heard from again" in out.explain()
    assert repo.get_assignment("A1").worker_id == claim.worker.id  # type: ignore[union-attr]
