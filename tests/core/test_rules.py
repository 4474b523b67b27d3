"""One test per rule of the priority chain, and per ranking, veto and session decision.

Each test seeds an in-memory store directly (``repo.write``), asks for a decision or applies an
event, and checks what a user would see: which worker the request landed on, by which rule,
whether it was flagged ambiguous, and what the explanation says.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest

import workermatch as wm
from _times import NOW

A = wm.AssignmentStatus
S = wm.WorkerStatus


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def new_repo() -> wm.InMemoryWorkerRepository:
    return wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids("n"))


def seed(
    repo: wm.InMemoryWorkerRepository,
    wid: str,
    ip: str,
    *,
    hostname: str | None = None,
    created: float = -60,
    seen: float = -1,
    running: str | None = None,
    session: str | None = None,
    stale: bool = False,
    ended: float | None = None,
    merged_into: str | None = None,
    hostname_seen: float | None = None,
) -> wm.Worker:
    """Put a worker (and the RUNNING assignment ``running`` it holds) into ``repo``.

    Times are seconds relative to ``NOW``.  ``hostname_seen``: when the last request carrying
    the worker's hostname landed on it (its machine's last heartbeat).
    """
    worker = wm.Worker(
        id=wid,
        ip=ip,
        hostname=hostname,
        hostname_seen=None if hostname_seen is None else at(hostname_seen),
        created_at=at(created),
        last_seen=at(seen),
        status=S.RUNNING if running else S.IDLE,
        stale=stale,
        assignment_id=running or session,
        ended_at=None if ended is None else at(ended),
        merged_into=merged_into,
    )
    writes: list[wm.Write] = [wm.InsertWorker(worker=worker)]
    if running:
        writes.append(
            wm.InsertAssignment(
                assignment=wm.Assignment(
                    id=running, status=A.RUNNING, worker_id=wid, started_at=at(created)
                )
            )
        )
    repo.write(writes)
    return worker


def with_table(name: str, **changes: Any) -> wm.Policy:
    """The default policy with a variant of the default rule table (``changes`` to it)."""
    return wm.DEFAULT_POLICY.evolve(rules=attrs.evolve(wm.DEFAULT_RULES, name=name, **changes))


def with_orphan_row(name: str, **changes: Any) -> wm.Policy:
    """The default policy whose RECENT_ORPHAN row has ``changes``."""
    rows = tuple(
        attrs.evolve(r, **changes) if r.rule is wm.Rule.RECENT_ORPHAN else r
        for r in wm.DEFAULT_RULES.rows
    )
    return with_table(name, rows=rows)


def add_assignment(
    repo: wm.InMemoryWorkerRepository, aid: str, status: wm.AssignmentStatus = A.PENDING
) -> None:
    repo.write([wm.InsertAssignment(assignment=wm.Assignment(id=aid, status=status))])


def decide(
    repo: wm.InMemoryWorkerRepository,
    ip: str,
    *,
    hostname: str | None = None,
    worker_id: str | None = None,
    assignment_id: str | None = None,
    now: datetime = NOW,
    policy: wm.Policy = wm.DEFAULT_POLICY,
) -> wm.Decision:
    identity = wm.Identity(
        ip=ip, hostname=hostname, worker_id=worker_id, assignment_id=assignment_id
    )
    return wm.match_worker(identity, now, repo, policy)


def report(decision: wm.Decision, rule: wm.Rule) -> wm.RuleReport:
    (found,) = [r for r in decision.reports if r.rule is rule]
    return found


def verdicts(decision: wm.Decision, rule: wm.Rule) -> dict[str, tuple[wm.Verdict, str]]:
    return {c.worker_id: (c.verdict, c.reason) for c in report(decision, rule).candidates}


def worker(repo: wm.InMemoryWorkerRepository, wid: str) -> wm.Worker:
    w = repo.get_worker(wid)
    assert w is not None
    return w


def assignment(repo: wm.InMemoryWorkerRepository, aid: str) -> wm.Assignment:
    a = repo.get_assignment(aid)
    assert a is not None
    return a


# ---------------------------------------------------------------------------------------------
# Rule 1a: the worker_id hint


class TestWorkerIdHint:
    def test_a_hint_naming_a_live_worker_wins_over_an_exact_ip_match(self) -> None:
        repo = new_repo()
        seed(repo, "ip-match", "10.0.0.1")
        seed(repo, "hinted", "10.9.9.9")
        d = decide(repo, "10.0.0.1", worker_id="hinted")
        assert (d.rule, d.worker_id, d.ambiguous) == (wm.Rule.WORKER_ID, "hinted", False)
        assert report(d, wm.Rule.EXACT_IP).outcome == "not reached"

    def test_a_hint_naming_a_merged_worker_follows_the_forward_pointer(self) -> None:
        repo = new_repo()
        seed(repo, "survivor", "10.0.0.1")
        seed(repo, "duplicate", "10.0.0.2", merged_into="survivor")
        d = decide(repo, "10.0.0.3", worker_id="duplicate")
        assert (d.rule, d.worker_id) == (wm.Rule.WORKER_ID, "survivor")
        assert "merged into survivor" in report(d, wm.Rule.WORKER_ID).detail

    def test_an_unknown_hint_falls_through_and_says_why(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1")
        d = decide(repo, "10.0.0.1", worker_id="no-such-worker")
        assert (d.rule, d.worker_id) == (wm.Rule.EXACT_IP, "w1")
        assert report(d, wm.Rule.WORKER_ID).outcome == "no candidates"
        assert verdicts(d, wm.Rule.WORKER_ID) == {
            "no-such-worker": (wm.Verdict.REJECTED, "no such worker")
        }

    def test_a_hint_naming_a_stale_worker_of_a_running_session_brings_it_back(self) -> None:
        # A machine whose requests stopped for a while (a long VPN outage) names its worker on
        # return: the hint proves whose request it is, so the worker comes back from staleness.
        repo = new_repo()
        seed(repo, "old", "10.0.0.1", seen=-301, running="A1")
        d = decide(repo, "10.0.0.2", worker_id="old")
        assert (d.rule, d.worker_id, d.revived) == (wm.Rule.WORKER_ID, "old", True)
        assert "it went stale, and the hint brings it back" in report(d, wm.Rule.WORKER_ID).detail

    def test_a_hint_naming_a_flagged_worker_clears_its_stale_flag(self) -> None:
        repo = new_repo()
        seed(repo, "flagged", "10.0.0.1", seen=-400, stale=True, running="A1")
        out = wm.apply_event(
            wm.Event.gui_update("10.0.0.2", "progress", worker_id="flagged"), NOW, repo
        )
        assert (out.rule, out.worker.id, out.created, out.decision.revived) == (
            wm.Rule.WORKER_ID,
            "flagged",
            False,
            True,
        )
        w = worker(repo, "flagged")
        assert (w.stale, w.ip, w.last_seen, w.status) == (False, "10.0.0.2", NOW, S.RUNNING)
        assert "flagged was stale; the hint brings it back" in out.explain()

    def test_a_revived_worker_gets_back_the_work_a_new_worker_took_while_it_was_stale(
        self,
    ) -> None:
        # The session's worker went silent; a request from its address made a new worker, which
        # took its RUNNING assignment.  The session's own hint then shows it never stopped: the
        # assignment goes back to the session's worker, and the taker holds nothing again.
        repo = new_repo()
        add_assignment(repo, "A1")
        wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo)
        wm.apply_event(wm.Event.gui_update("10.0.0.1", "progress"), at(5), repo)
        taker = wm.apply_event(wm.Event.gui_update("10.0.0.1", "progress"), at(400), repo)
        assert (taker.worker.id, taker.transferred) == ("n2", ("A1",))
        out = wm.apply_event(
            wm.Event.gui_update("10.0.0.1", "progress", worker_id="n1"), at(410), repo
        )
        assert (out.worker.id, out.decision.revived) == ("n1", True)
        assert assignment(repo, "A1").worker_id == "n1"
        assert assignment(repo, "A1").status is A.RUNNING
        n1, n2 = worker(repo, "n1"), worker(repo, "n2")
        assert (n1.status, n1.stale, n1.assignment_id) == (S.RUNNING, False, "A1")
        assert n2.status is S.IDLE
        assert "moved A1 back from n2" in out.explain()
        # And its end now completes its own assignment.
        done = wm.apply_event(
            wm.Event.gui_update("10.0.0.1", "finished", worker_id="n1"), at(420), repo
        )
        assert (done.worker.id, done.ended) == ("n1", ("A1",))

    @pytest.mark.parametrize("flagged", [False, True], ids=["silent", "flagged"])
    def test_a_hint_naming_a_stale_worker_whose_session_ended_falls_through(
        self, flagged: bool
    ) -> None:
        repo = new_repo()
        seed(repo, "old", "10.0.0.1", seen=-301, stale=flagged, session="A1", ended=-301)
        d = decide(repo, "10.0.0.2", worker_id="old")
        assert (d.rule, d.revived) == (wm.Rule.CREATED, False)
        verdict, reason = verdicts(d, wm.Rule.WORKER_ID)["old"]
        assert verdict is wm.Verdict.REJECTED
        assert reason == (
            "is flagged stale, and its session ended"
            if flagged
            else "was last seen 301 s ago, past stale_after, and its session ended"
        )

    def test_a_hint_naming_a_worker_of_another_hostname_is_vetoed(self) -> None:
        # A configuration file copied between machines carries the other machine's worker id.
        repo = new_repo()
        seed(repo, "theirs", "10.0.0.1", hostname="alpha")
        d = decide(repo, "10.0.0.2", hostname="beta", worker_id="theirs")
        assert d.rule is wm.Rule.CREATED
        assert "hostname veto" in verdicts(d, wm.Rule.WORKER_ID)["theirs"][1]

    def test_a_vetoed_hint_raises_an_alert_and_leaves_the_hinted_worker_alone(self) -> None:
        repo = new_repo()
        theirs = seed(repo, "theirs", "10.0.0.1", hostname="alpha", running="A1")
        out = wm.apply_event(
            wm.Event.heartbeat("10.0.0.2", hostname="beta", worker_id="theirs"), NOW, repo
        )
        assert (out.created, out.alert) == (True, wm.Alert.HINT_REFUSED)
        assert "the hint named a worker with another hostname: not followed" in out.explain()
        assert "alert: hint_refused" in out.explain()
        assert worker(repo, "theirs") == theirs

    def test_a_stale_hinted_worker_of_another_hostname_is_not_brought_back(self) -> None:
        repo = new_repo()
        theirs = seed(repo, "theirs", "10.0.0.1", hostname="alpha", seen=-400, running="A1")
        out = wm.apply_event(
            wm.Event.heartbeat("10.0.0.2", hostname="beta", worker_id="theirs"), NOW, repo
        )
        assert (out.created, out.decision.revived, out.alert) == (
            True,
            False,
            wm.Alert.HINT_REFUSED,
        )
        assert worker(repo, "theirs") == theirs
        assert assignment(repo, "A1").worker_id == "theirs"


# ---------------------------------------------------------------------------------------------
# Rule 1b: the assignment hint


class TestAssignmentHint:
    def test_a_running_assignment_resolves_to_its_live_holder_from_any_ip(self) -> None:
        repo = new_repo()
        seed(repo, "holder", "10.0.0.1", running="A1")
        seed(repo, "same-ip", "10.0.0.2")
        d = decide(repo, "10.0.0.2", assignment_id="A1")
        assert (d.rule, d.worker_id) == (wm.Rule.ASSIGNMENT, "holder")

    @pytest.mark.parametrize(
        ("setup", "says"),
        [
            ("missing", "does not exist"),
            ("pending", "which is PENDING"),
            ("completed", "COMPLETED"),
        ],
    )
    def test_a_hint_naming_no_running_assignment_falls_through(self, setup: str, says: str) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1")
        if setup == "pending":
            add_assignment(repo, "A1")
        elif setup == "completed":
            add_assignment(repo, "A1", A.COMPLETED)
        d = decide(repo, "10.0.0.1", assignment_id="A1")
        assert (d.rule, d.worker_id) == (wm.Rule.EXACT_IP, "w1")
        assert says in report(d, wm.Rule.ASSIGNMENT).detail

    def test_a_hint_whose_holder_is_stale_brings_the_holder_back(self) -> None:
        repo = new_repo()
        seed(repo, "silent", "10.0.0.1", running="A1", seen=-400)
        d = decide(repo, "10.0.0.2", assignment_id="A1")
        assert (d.rule, d.worker_id, d.revived) == (wm.Rule.ASSIGNMENT, "silent", True)
        out = wm.apply_event(wm.Event.gui_update("10.0.0.2", "x", assignment_id="A1"), NOW, repo)
        assert (out.worker.id, out.created) == ("silent", False)
        w = worker(repo, "silent")
        assert (w.stale, w.ip, w.last_seen) == (False, "10.0.0.2", NOW)

    def test_a_hint_whose_holder_has_another_hostname_is_vetoed(self) -> None:
        repo = new_repo()
        seed(repo, "holder", "10.0.0.1", hostname="alpha", running="A1")
        d = decide(repo, "10.0.0.1", hostname="beta", assignment_id="A1")
        assert d.rule is wm.Rule.CREATED
        assert "hostname veto" in verdicts(d, wm.Rule.ASSIGNMENT)["holder"][1]
        out = wm.apply_event(
            wm.Event.heartbeat("10.0.0.1", hostname="beta", assignment_id="A1"), NOW, repo
        )
        assert (out.created, out.alert) == (True, wm.Alert.HINT_REFUSED)
        assert assignment(repo, "A1").worker_id == "holder"


# ---------------------------------------------------------------------------------------------
# Rule 2 (exact IP), 3 (recent orphan), 4 (hostname)


class TestExactIp:
    def test_a_live_worker_with_the_requests_ip_matches(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1")
        seed(repo, "w2", "10.0.0.2")
        d = decide(repo, "10.0.0.2")
        assert (d.rule, d.worker_id, d.ambiguous) == (wm.Rule.EXACT_IP, "w2", False)

    def test_a_stale_worker_with_the_requests_ip_does_not_match(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", seen=-301)
        assert decide(repo, "10.0.0.1").rule is wm.Rule.CREATED

    def test_an_ipv6_request_matches_a_worker_stored_in_another_spelling(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "2001:DB8:0:0::1")
        assert decide(repo, "[2001:db8::0001]").worker_id == "w1"


class TestRecentOrphan:
    def test_a_claim_worker_without_hostname_is_taken_even_when_fed_recently(self) -> None:
        # The GUI started 20 s after the claim: the default policy still takes the claim's
        # worker, because it has no hostname yet (what the real system kept).
        repo = new_repo()
        seed(repo, "claim", "10.0.0.1", created=-20, seen=-20, running="A1")
        d = decide(repo, "10.0.0.2", hostname="box")
        assert (d.rule, d.worker_id) == (wm.Rule.RECENT_ORPHAN, "claim")

    def test_a_worker_with_a_hostname_that_is_being_fed_is_not_an_orphan(self) -> None:
        repo = new_repo()
        seed(repo, "fed", "10.0.0.1", hostname="other", created=-60, seen=-5, running="A1")
        d = decide(repo, "10.0.0.2")
        assert d.rule is wm.Rule.CREATED
        verdict, reason = verdicts(d, wm.Rule.RECENT_ORPHAN)["fed"]
        assert verdict is wm.Verdict.REJECTED
        assert "another live stream feeds it" in reason

    def test_a_worker_with_a_hostname_quiet_for_the_quiet_period_is_an_orphan(self) -> None:
        repo = new_repo()
        seed(repo, "quiet", "10.0.0.1", hostname="box", created=-60, seen=-31, running="A1")
        d = decide(repo, "10.0.0.2")
        assert (d.rule, d.worker_id) == (wm.Rule.RECENT_ORPHAN, "quiet")

    @pytest.mark.parametrize(
        ("seen", "orphan"),
        [(-30.0, False), (-30.001, True)],
        ids=["exactly-the-quiet-period-is-not-quiet", "one-ms-more-is-quiet"],
    )
    def test_quiet_means_strictly_longer_than_the_quiet_period(
        self, seen: float, orphan: bool
    ) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", created=-60, seen=seen, running="A1")
        policy = with_orphan_row("quiet-orphans", orphans=wm.OrphanCondition.QUIET)
        d = decide(repo, "10.0.0.2", policy=policy)
        assert d.rule is (wm.Rule.RECENT_ORPHAN if orphan else wm.Rule.CREATED)

    def test_the_notes_quiet_condition_refuses_a_fresh_claim_worker(self) -> None:
        repo = new_repo()
        seed(repo, "claim", "10.0.0.1", created=-20, seen=-20, running="A1")
        d = decide(repo, "10.0.0.2", hostname="box", policy=wm.NOTE_POLICY)
        assert d.rule is wm.Rule.CREATED
        assert "within the quiet period of 30 s" in verdicts(d, wm.Rule.RECENT_ORPHAN)["claim"][1]

    def test_the_any_condition_takes_a_worker_fed_a_second_ago(self) -> None:
        repo = new_repo()
        seed(repo, "fed", "10.0.0.1", hostname="other", created=-60, seen=-1, running="A1")
        policy = with_orphan_row("any-orphan", orphans=wm.OrphanCondition.ANY)
        assert decide(repo, "10.0.0.2", policy=policy).worker_id == "fed"

    @pytest.mark.parametrize(
        ("created", "orphan"),
        [(-300.0, True), (-300.001, False)],
        ids=["created-exactly-orphan-window-ago", "one-ms-earlier"],
    )
    def test_the_orphan_window_is_inclusive_at_its_edge(self, created: float, orphan: bool) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", created=created, seen=-40, running="A1")
        d = decide(repo, "10.0.0.2")
        assert d.rule is (wm.Rule.RECENT_ORPHAN if orphan else wm.Rule.CREATED)

    def test_a_recent_worker_without_a_running_assignment_is_no_orphan(self) -> None:
        repo = new_repo()
        seed(repo, "idle", "10.0.0.1", created=-20, seen=-20)
        assert decide(repo, "10.0.0.2").rule is wm.Rule.CREATED

    @pytest.mark.parametrize("rival_age_days", [0.001, 0.5, 3, 40])
    def test_the_orphan_guard_finds_a_fed_machine_of_any_age(self, rival_age_days: float) -> None:
        # A request without hostname from a new address may be a running machine whose VPN
        # just moved it: while one is fed, the default policy does not hand it the orphan.
        repo = new_repo()
        seed(repo, "claim", "10.0.0.1", created=-20, seen=-20, running="A1")
        created = -86_400 * rival_age_days
        seed(repo, "busy", "10.0.0.5", hostname="box", created=created, seen=-5, running="A2")
        d = decide(repo, "10.0.0.9")
        assert d.rule is wm.Rule.CREATED
        verdict, reason = verdicts(d, wm.Rule.RECENT_ORPHAN)["claim"]
        assert verdict is wm.Verdict.REJECTED
        assert reason.startswith("the request carries no hostname and busy was fed within")
        assert "the request may come from that machine after an address change" in reason

    @pytest.mark.parametrize(
        "rival",
        [
            {"hostname": "box", "seen": -31, "running": "A2"},  # quiet
            {"seen": -5, "running": "A2"},  # no hostname: another orphan, not a rival
            {"hostname": "box", "seen": -5},  # runs nothing
            {"hostname": "box", "seen": -5, "session": "A2", "ended": -6},  # session ended
        ],
        ids=["quiet", "no-hostname", "idle", "ended"],
    )
    def test_without_a_fed_machine_the_guard_lets_the_orphan_be_taken(
        self, rival: dict[str, Any]
    ) -> None:
        repo = new_repo()
        seed(repo, "claim", "10.0.0.1", created=-20, seen=-20, running="A1")
        seed(repo, "other", "10.0.0.5", created=-86_400, **rival)
        d = decide(repo, "10.0.0.9")
        assert (d.rule, d.worker_id) == (wm.Rule.RECENT_ORPHAN, "claim")

    def test_the_guard_spares_requests_with_a_hostname_and_a_row_that_weighs_no_streams(
        self,
    ) -> None:
        repo = new_repo()
        seed(repo, "claim", "10.0.0.1", created=-20, seen=-20, running="A1")
        seed(repo, "busy", "10.0.0.5", hostname="box", created=-3600, seen=-5, running="A2")
        assert decide(repo, "10.0.0.9", hostname="gui").worker_id == "claim"
        unguarded = with_orphan_row("unweighed", weighs_streams=False)
        assert decide(repo, "10.0.0.9", policy=unguarded).worker_id == "claim"

    def test_taking_an_orphan_moves_it_to_the_requests_ip_and_hostname(self) -> None:
        repo = new_repo()
        seed(repo, "claim", "10.0.0.1", created=-20, seen=-20, running="A1")
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.2", hostname="Box"), NOW, repo)
        assert (out.rule, out.worker.id) == (wm.Rule.RECENT_ORPHAN, "claim")
        w = worker(repo, "claim")
        assert (w.ip, w.hostname, w.last_seen) == ("10.0.0.2", "box", NOW)


class TestOwnStream:
    """Rule 3 weighs the streams (the RECENT_ORPHAN row's ``weighs_streams``): a heartbeat from a
    new address, whose hostname names the one live stream of that hostname, does not quietly
    take another machine's fresh claim."""

    def setup_repo(self) -> wm.InMemoryWorkerRepository:
        repo = new_repo()
        # pc-1 runs A1 and was fed 2 s ago from its old address; pc-2 just claimed A2.
        seed(repo, "mine", "10.0.0.1", hostname="pc-1", created=-3600, seen=-2, running="A1")
        seed(repo, "theirs", "10.0.0.7", created=-10, seen=-10, running="A2")
        return repo

    def test_the_machines_own_stream_outranks_another_machines_fresh_claim_by_evidence(
        self,
    ) -> None:
        # The hostname agrees with the stream's and is unknown on the fresh claim: evidence, so
        # the decision is not in doubt.
        d = decide(self.setup_repo(), "10.0.0.9", hostname="pc-1")
        assert (d.rule, d.worker_id, d.ambiguous, d.doubt) == (
            wm.Rule.RECENT_ORPHAN,
            "mine",
            False,
            (),
        )
        assert verdicts(d, wm.Rule.RECENT_ORPHAN)["theirs"] == (
            wm.Verdict.OUTRANKED,
            "ranked below mine on hostname_agrees",
        )
        assert "its machine may have changed address" in report(d, wm.Rule.RECENT_ORPHAN).detail

    def test_a_row_that_weighs_no_streams_gives_the_machine_the_fresh_claim(self) -> None:
        policy = with_orphan_row("unweighed", weighs_streams=False)
        d = decide(self.setup_repo(), "10.0.0.9", hostname="pc-1", policy=policy)
        assert (d.rule, d.worker_id, d.ambiguous) == (wm.Rule.RECENT_ORPHAN, "theirs", False)

    @pytest.mark.parametrize(
        "mine",
        [
            {"seen": -31, "running": "A1"},  # quiet: rule 3 already weighs it as an orphan
            {"seen": -2},  # runs nothing
            {"seen": -2, "session": "A1", "ended": -3},  # its session ended
        ],
        ids=["quiet", "idle", "ended"],
    )
    def test_only_a_fed_running_unended_stream_joins(self, mine: dict[str, Any]) -> None:
        repo = new_repo()
        seed(repo, "mine", "10.0.0.1", hostname="pc-1", created=-3600, **mine)
        seed(repo, "theirs", "10.0.0.7", created=-10, seen=-10, running="A2")
        d = decide(repo, "10.0.0.9", hostname="pc-1")
        assert "its machine may have changed address" not in report(d, wm.Rule.RECENT_ORPHAN).detail

    def test_two_fed_streams_of_one_hostname_prove_nothing(self) -> None:
        # Cloned machines: two live workers of hostname pc-1 are fed; neither joins.
        repo = self.setup_repo()
        seed(repo, "clone", "10.0.0.3", hostname="pc-1", created=-3600, seen=-1, running="A3")
        d = decide(repo, "10.0.0.9", hostname="pc-1")
        assert (d.rule, d.worker_id, d.ambiguous) == (wm.Rule.RECENT_ORPHAN, "theirs", False)

    def test_with_no_orphan_in_sight_rule_4_finds_the_stream_as_before(self) -> None:
        repo = new_repo()
        seed(repo, "mine", "10.0.0.1", hostname="pc-1", created=-3600, seen=-2, running="A1")
        d = decide(repo, "10.0.0.9", hostname="pc-1")
        assert (d.rule, d.worker_id, d.ambiguous) == (wm.Rule.HOSTNAME, "mine", False)

    def test_requests_without_hostname_and_claims_are_unaffected(self) -> None:
        repo = self.setup_repo()
        # Without hostname the orphan guard applies (mine is fed): a new worker.
        assert decide(repo, "10.0.0.9").rule is wm.Rule.CREATED
        out = wm.apply_event(wm.Event.claim("10.0.0.9", "A9"), NOW, repo, create_assignments=True)
        assert out.created


class TestSharedAddress:
    """A first heartbeat on an address that machines share (a VPN exit): only the workers at
    its address are candidates; a claim waiting at another address is none, and whether the
    decision is in doubt is a matter of evidence among the candidates at the address."""

    def setup_repo(self) -> wm.InMemoryWorkerRepository:
        repo = new_repo()
        vpn = "157.193.240.11"
        # pc-8 ran on this address (a live worker with another hostname: the address is shared).
        seed(repo, "pc8", vpn, hostname="pc-8", created=-900, seen=-20, running="A8")
        seed(repo, "here", vpn, created=-30, seen=-30, running="A1")  # a claim from this address
        seed(repo, "there", "157.193.240.12", created=-60, seen=-60, running="A2")  # and another
        return repo

    def test_the_claim_at_the_address_is_taken_without_doubt(self) -> None:
        d = decide(self.setup_repo(), "157.193.240.11", hostname="pc-3")
        assert (d.rule, d.worker_id, d.ambiguous, d.doubt) == (wm.Rule.EXACT_IP, "here", False, ())
        assert verdicts(d, wm.Rule.EXACT_IP) == {
            "here": (wm.Verdict.TAKEN, "the only eligible candidate"),
            "pc8": (wm.Verdict.REJECTED, "hostname veto: its hostname pc-8 differs from pc-3"),
        }
        assert d.outranked == ()

    @pytest.mark.parametrize("on_ambiguous", list(wm.OnAmbiguous), ids=lambda v: v.value)
    def test_every_doubt_handling_places_it_alike_for_there_is_no_doubt(
        self, on_ambiguous: wm.OnAmbiguous
    ) -> None:
        policy = wm.DEFAULT_POLICY.evolve(on_ambiguous=on_ambiguous)
        d = decide(self.setup_repo(), "157.193.240.11", hostname="pc-3", policy=policy)
        assert (d.rule, d.worker_id, d.ambiguous) == (wm.Rule.EXACT_IP, "here", False)

    def test_without_evidence_of_sharing_the_address_is_trusted(self) -> None:
        repo = new_repo()
        seed(repo, "here", "10.0.0.1", created=-30, seen=-30, running="A1")
        seed(repo, "there", "10.0.0.2", created=-60, seen=-60, running="A2")
        d = decide(repo, "10.0.0.1", hostname="pc-3")
        assert (d.rule, d.worker_id, d.ambiguous) == (wm.Rule.EXACT_IP, "here", False)

    @pytest.mark.parametrize(
        ("request_hostname", "winner", "doubt"),
        [("pc-8", "pc8", ()), ("pc-3", "here", ()), (None, "pc8", ("pc8", "here"))],
        ids=["hostname-agrees", "new-hostname", "no-hostname"],
    )
    def test_only_a_request_without_hostname_is_in_doubt_at_the_address(
        self, request_hostname: str | None, winner: str, doubt: tuple[str, ...]
    ) -> None:
        # Without hostname nothing tells pc-8's worker from the claim at its address: both hold
        # a RUNNING assignment, so the oldest is taken and the decision says it was a guess.
        d = decide(self.setup_repo(), "157.193.240.11", hostname=request_hostname)
        assert (d.worker_id, d.ambiguous, d.doubt) == (winner, bool(doubt), doubt)
        assert "there" not in verdicts(d, wm.Rule.EXACT_IP)

    def test_a_worker_at_the_address_whose_hostname_is_known_leaves_no_doubt(self) -> None:
        repo = self.setup_repo()
        seed(repo, "known", "157.193.240.11", created=-30, seen=-3, running="A3", hostname="pc-3")
        d = decide(repo, "157.193.240.11", hostname="pc-3")
        assert (d.worker_id, d.ambiguous) == ("known", False)
        assert verdicts(d, wm.Rule.EXACT_IP)["here"] == (
            wm.Verdict.OUTRANKED,
            "ranked below known on hostname_agrees",
        )
        assert "there" not in verdicts(d, wm.Rule.EXACT_IP)


class TestSharedLiveness:
    """The KEEP_ALIVE effect: an update without hostname that exact IP cannot attribute keeps
    the address's other running workers alive with the one it lands on."""

    def setup_repo(self) -> wm.InMemoryWorkerRepository:
        repo = new_repo()
        nat = "192.0.2.1"
        seed(repo, "first", nat, created=-900, seen=-200, running="A1")
        seed(repo, "second", nat, created=-600, seen=-250, running="A2")
        seed(repo, "idle", nat, created=-500, seen=-100)  # runs nothing
        seed(repo, "done", nat, created=-400, seen=-5, session="A4", ended=-5)  # ended
        seed(repo, "elsewhere", "192.0.2.9", created=-300, seen=-280, running="A5")
        return repo

    def test_the_other_running_workers_of_the_address_are_refreshed(self) -> None:
        repo = self.setup_repo()
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "overall_progress"), NOW, repo)
        assert (out.worker.id, out.ambiguous, out.kept_alive) == ("first", True, ("second",))
        assert worker(repo, "second").last_seen == NOW
        assert worker(repo, "second").ip == "192.0.2.1"  # nothing but last_seen changes
        for untouched, seen in (("idle", -100), ("done", -5), ("elsewhere", -280)):
            assert worker(repo, untouched).last_seen == at(seen)
        assert "kept second alive" in out.explain()

    def test_the_decision_lists_the_other_candidates_best_first(self) -> None:
        d = decide(self.setup_repo(), "192.0.2.1")
        assert d.worker_id == "first"
        assert [w.id for w in d.outranked] == ["second", "idle", "done"]  # ended last

    @pytest.mark.parametrize(
        "request_",
        [
            wm.Event.heartbeat("192.0.2.1", hostname="lab-1"),  # a hostname: no doubt to share
            wm.Event.gui_update("192.0.2.9", "overall_progress"),  # one candidate
        ],
        ids=["with-hostname", "unambiguous"],
    )
    def test_only_an_ambiguous_request_without_hostname_refreshes_others(
        self, request_: wm.Event
    ) -> None:
        out = wm.apply_event(request_, NOW, self.setup_repo())
        assert out.kept_alive == ()

    def test_nothing_is_refreshed_when_the_policy_refuses_or_skips(self) -> None:
        event = wm.Event.gui_update("192.0.2.1", "overall_progress")
        repo = self.setup_repo()
        refuse = wm.DEFAULT_POLICY.evolve(on_ambiguous=wm.OnAmbiguous.REFUSE)
        with pytest.raises(wm.AmbiguousMatch):
            wm.apply_event(event, NOW, repo, refuse)
        assert worker(repo, "second").last_seen == at(-250)
        skip = wm.DEFAULT_POLICY.evolve(on_ambiguous=wm.OnAmbiguous.SKIP_RULE)
        out = wm.apply_event(event, NOW, repo, skip)
        assert out.kept_alive == ()
        assert worker(repo, "second").last_seen == at(-250)

    def test_a_worker_whose_hostname_is_known_keeps_its_own_liveness(self) -> None:
        # Its heartbeats keep it alive; refreshing it would hide the silence that shows its
        # machine moved (reconciliation needs it).
        repo = self.setup_repo()
        seed(repo, "known", "192.0.2.1", hostname="lab-3", created=-300, seen=-40, running="A6")
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "overall_progress"), NOW, repo)
        assert out.ambiguous
        assert "known" not in out.kept_alive
        assert worker(repo, "known").last_seen == at(-40)

    def test_a_worker_is_refreshed_at_most_once_per_quiet_period(self) -> None:
        repo = self.setup_repo()
        update = wm.Event.gui_update("192.0.2.1", "overall_progress")
        assert wm.apply_event(update, NOW, repo).kept_alive == ("second",)
        assert wm.apply_event(update, at(30), repo).kept_alive == ()  # 30 s: not past it
        assert wm.apply_event(update, at(30.001), repo).kept_alive == ("second",)

    def test_a_table_without_keep_alive_refreshes_nothing(self) -> None:
        repo = self.setup_repo()
        policy = with_table(
            "no-keep-alive", effects=wm.DEFAULT_RULES.effects - {wm.Effect.KEEP_ALIVE}
        )
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "x"), NOW, repo, policy)
        assert out.kept_alive == ()
        assert worker(repo, "second").last_seen == at(-250)


class TestHostname:
    def test_a_request_with_a_known_hostname_from_a_new_ip_takes_that_worker(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", hostname="box", created=-3600, seen=-60)
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.9", hostname="BOX."), NOW, repo)
        assert (out.rule, out.worker.id, out.created) == (wm.Rule.HOSTNAME, "w1", False)
        assert worker(repo, "w1").ip == "10.0.0.9"

    @pytest.mark.parametrize(
        ("seen", "matches"),
        [(-120.0, True), (-120.001, False)],
        ids=["seen-exactly-hostname-window-ago", "one-ms-earlier"],
    )
    def test_the_hostname_window_is_inclusive_at_its_edge(self, seen: float, matches: bool) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", hostname="box", created=-3600, seen=seen)
        policy = wm.DEFAULT_POLICY.evolve(hostname_window=timedelta(minutes=2))
        d = decide(repo, "10.0.0.9", hostname="box", policy=policy)
        assert d.rule is (wm.Rule.HOSTNAME if matches else wm.Rule.CREATED)

    def test_a_request_without_hostname_skips_the_rule_and_says_so(self) -> None:
        repo = new_repo()
        d = decide(repo, "10.0.0.9")
        assert report(d, wm.Rule.HOSTNAME).outcome == "not applicable"
        assert report(d, wm.Rule.HOSTNAME).detail == "the request carries no hostname"


# ---------------------------------------------------------------------------------------------
# Create, and transfer from stale workers


class TestCreateAndTransfer:
    def test_nothing_matches_so_a_worker_is_created_with_the_requests_identity(self) -> None:
        repo = new_repo()
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="Box"), NOW, repo)
        assert (out.rule, out.created, out.worker.id) == (wm.Rule.CREATED, True, "n1")
        assert worker(repo, "n1") == wm.Worker(
            id="n1", ip="10.0.0.1", hostname="box", hostname_seen=NOW, created_at=NOW, last_seen=NOW
        )

    def test_running_work_of_a_stale_worker_with_the_same_ip_moves_to_the_new_one(self) -> None:
        repo = new_repo()
        seed(repo, "silent", "10.0.0.1", created=-3600, seen=-400, running="A1")
        out = wm.apply_event(wm.Event.gui_update("10.0.0.1", "progress"), NOW, repo)
        assert (out.created, out.transferred) == (True, ("A1",))
        assert assignment(repo, "A1").worker_id == out.worker.id
        assert assignment(repo, "A1").status is A.RUNNING
        assert worker(repo, out.worker.id).status is S.RUNNING
        old = worker(repo, "silent")
        assert (old.stale, old.status) == (True, S.IDLE)
        assert "moved RUNNING A1 from stale silent onto n1" in out.explain()

    def test_running_work_of_a_stale_worker_with_the_same_hostname_moves_too(self) -> None:
        repo = new_repo()
        seed(repo, "silent", "10.0.0.1", hostname="box", created=-3600, seen=-400, running="A1")
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.7", hostname="box"), NOW, repo)
        assert out.transferred == ("A1",)
        assert assignment(repo, "A1").worker_id == out.worker.id

    def test_a_stale_worker_of_another_hostname_keeps_its_work(self) -> None:
        repo = new_repo()
        seed(repo, "other", "10.0.0.1", hostname="alpha", created=-3600, seen=-400, running="A1")
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="beta"), NOW, repo)
        assert (out.created, out.transferred) == (True, ())
        assert assignment(repo, "A1").worker_id == "other"

    def test_a_claim_never_receives_transferred_work(self) -> None:
        repo = new_repo()
        seed(repo, "silent", "10.0.0.1", created=-3600, seen=-400, running="A1")
        add_assignment(repo, "A2")
        out = wm.apply_event(wm.Event.claim("10.0.0.1", "A2"), NOW, repo)
        assert (out.created, out.transferred) == (True, ())
        assert assignment(repo, "A1").worker_id == "silent"

    def test_work_that_several_stale_workers_at_the_address_could_own_stays_put(self) -> None:
        # Two machines behind one NAT went silent; a request from the address may be either's.
        # Moving both assignments onto the new worker would rest on a guess: an alert instead.
        repo = new_repo()
        seed(repo, "first", "192.0.2.1", created=-3600, seen=-400, running="A1")
        seed(repo, "second", "192.0.2.1", created=-3000, seen=-350, running="A2")
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "progress"), NOW, repo)
        assert (out.created, out.transferred, out.alert) == (True, (), wm.Alert.TRANSFER_HELD)
        assert (assignment(repo, "A1").worker_id, assignment(repo, "A2").worker_id) == (
            "first",
            "second",
        )
        assert "several machines at this address could own it" in out.explain()

    def test_a_table_without_transfer_on_create_leaves_stale_work_in_place(self) -> None:
        repo = new_repo()
        seed(repo, "silent", "10.0.0.1", created=-3600, seen=-400, running="A1")
        effects = wm.DEFAULT_RULES.effects - {wm.Effect.TRANSFER_ON_CREATE}
        policy = with_table("no-transfer", effects=effects)
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.1"), NOW, repo, policy)
        assert out.transferred == ()
        assert assignment(repo, "A1").worker_id == "silent"


# ---------------------------------------------------------------------------------------------
# The hostname veto, in every rule that can see a different hostname


class TestHostnameVeto:
    def test_exact_ip_never_joins_two_machines_behind_one_nat(self) -> None:
        repo = new_repo()
        seed(repo, "alpha", "192.0.2.1", hostname="alpha")
        d = decide(repo, "192.0.2.1", hostname="beta")
        assert d.rule is wm.Rule.CREATED
        verdict, reason = verdicts(d, wm.Rule.EXACT_IP)["alpha"]
        assert verdict is wm.Verdict.REJECTED
        assert reason == "hostname veto: its hostname alpha differs from beta"

    def test_a_recent_orphan_of_another_hostname_is_vetoed(self) -> None:
        repo = new_repo()
        seed(repo, "alpha", "10.0.0.1", hostname="alpha", created=-60, seen=-40, running="A1")
        d = decide(repo, "10.0.0.2", hostname="beta")
        assert d.rule is wm.Rule.CREATED
        assert "hostname veto" in verdicts(d, wm.Rule.RECENT_ORPHAN)["alpha"][1]

    def test_a_worker_with_unknown_hostname_is_not_vetoed(self) -> None:
        repo = new_repo()
        seed(repo, "anon", "192.0.2.1")
        assert decide(repo, "192.0.2.1", hostname="beta").worker_id == "anon"

    def test_without_the_veto_the_note_joins_two_machines_behind_one_nat(self) -> None:
        repo = new_repo()
        seed(repo, "alpha", "192.0.2.1", hostname="alpha")
        d = decide(repo, "192.0.2.1", hostname="beta", policy=wm.NOTE_POLICY)
        assert (d.rule, d.worker_id) == (wm.Rule.EXACT_IP, "alpha")

    def test_the_veto_keeps_a_known_hostname_when_the_worker_is_touched(self) -> None:
        # Without the veto (note policy) a request's hostname overwrites the worker's.
        repo = new_repo()
        seed(repo, "alpha", "192.0.2.1", hostname="alpha")
        wm.apply_event(wm.Event.heartbeat("192.0.2.1", hostname="beta"), NOW, repo, wm.NOTE_POLICY)
        assert worker(repo, "alpha").hostname == "beta"


# ---------------------------------------------------------------------------------------------
# Ranking and ambiguity


class TestRanking:
    def test_agreement_before_ignorance_two_machines_behind_one_nat(self) -> None:
        # Machine alpha runs A1 behind the NAT address; machine beta claims A2 from the same
        # address.  beta's claim worker has no hostname yet and was seen last, yet alpha's next
        # heartbeat must land on alpha's worker; beta's heartbeat then lands on beta's.
        repo = new_repo()
        nat = "192.0.2.1"
        add_assignment(repo, "A1")
        add_assignment(repo, "A2")
        wm.apply_event(wm.Event.claim(nat, "A1"), at(0), repo)
        wm.apply_event(wm.Event.heartbeat(nat, hostname="alpha"), at(5), repo)
        beta_claim = wm.apply_event(wm.Event.claim(nat, "A2"), at(60), repo)
        assert (beta_claim.created, beta_claim.worker.id) == (True, "n2")

        alpha = wm.apply_event(wm.Event.heartbeat(nat, hostname="alpha"), at(65), repo)
        # The hostname agrees: evidence, not a guess.
        assert (alpha.worker.id, alpha.rule, alpha.ambiguous) == ("n1", wm.Rule.EXACT_IP, False)
        assert verdicts(alpha.decision, wm.Rule.EXACT_IP)["n2"] == (
            wm.Verdict.OUTRANKED,
            "ranked below n1 on hostname_agrees",
        )
        beta = wm.apply_event(wm.Event.heartbeat(nat, hostname="beta"), at(70), repo)
        assert (beta.worker.id, beta.ambiguous) == ("n2", False)
        assert [(w.id, w.hostname) for w in sorted(repo.all_workers(), key=lambda w: w.id)] == [
            ("n1", "alpha"),
            ("n2", "beta"),
        ]

    def test_a_worker_holding_a_running_assignment_is_preferred(self) -> None:
        repo = new_repo()
        seed(repo, "idle", "10.0.0.1", seen=-1)
        seed(repo, "busy", "10.0.0.1", seen=-10, running="A1")
        d = decide(repo, "10.0.0.1")
        assert (d.worker_id, d.ambiguous) == ("busy", False)
        assert verdicts(d, wm.Rule.EXACT_IP)["idle"] == (
            wm.Verdict.OUTRANKED,
            "ranked below busy on holds_running",
        )

    def test_a_live_session_is_preferred_to_one_that_ended(self) -> None:
        repo = new_repo()
        seed(repo, "ended", "10.0.0.1", seen=-1, session="A0", ended=-2)
        seed(repo, "live", "10.0.0.1", seen=-10)
        d = decide(repo, "10.0.0.1")
        assert d.worker_id == "live"
        assert verdicts(d, wm.Rule.EXACT_IP)["ended"][1] == "ranked below live on live_session"

    # Each criterion on its own: two candidates that differ only in what the criterion looks
    # at; the winner's id sorts last, so the final tie-break on the id cannot be what picks it.
    # An evidence criterion tells them apart; a tie-break picks one of two it cannot separate.
    @pytest.mark.parametrize(
        ("criterion", "winner", "loser"),
        [
            (wm.Criterion.HOSTNAME_AGREES, {"hostname": "box"}, {}),
            (wm.Criterion.LIVE_SESSION, {}, {"session": "A0", "ended": -2}),
            (
                wm.Criterion.HEARTBEATS,
                {"hostname": "box", "hostname_seen": -10},
                {"hostname": "box", "hostname_seen": -61},
            ),
            (wm.Criterion.HOLDS_RUNNING, {"running": "A1"}, {}),
            (wm.Criterion.RECENTLY_SEEN, {"seen": -2}, {"seen": -10}),
            (wm.Criterion.NEWEST, {"created": -50}, {"created": -100}),
            (wm.Criterion.OLDEST, {"created": -100}, {"created": -50}),
        ],
        ids=lambda v: v.value if isinstance(v, wm.Criterion) else None,
    )
    def test_each_criterion_ranks_the_candidates(
        self, criterion: wm.Criterion, winner: dict[str, Any], loser: dict[str, Any]
    ) -> None:
        repo = new_repo()
        seed(repo, "z-winner", "10.0.0.1", **winner)
        seed(repo, "a-loser", "10.0.0.1", **loser)
        policy = with_table(f"only-{criterion.value}", ranking=(criterion,))
        d = decide(repo, "10.0.0.1", hostname="box", policy=policy)
        evidence = criterion.is_evidence
        assert (d.rule, d.worker_id, d.ambiguous) == (wm.Rule.EXACT_IP, "z-winner", not evidence)
        assert d.doubt == (() if evidence else ("z-winner", "a-loser"))
        assert verdicts(d, wm.Rule.EXACT_IP)["a-loser"] == (
            wm.Verdict.OUTRANKED,
            f"ranked below z-winner on {criterion.value}"
            if evidence
            else f"could not be told apart from z-winner; ranked below it on {criterion.value}",
        )

    def test_the_evidence_criteria_are_the_first_four(self) -> None:
        assert {c for c in wm.Criterion if c.is_evidence} == {
            wm.Criterion.LIVE_SESSION,
            wm.Criterion.HOSTNAME_AGREES,
            wm.Criterion.HEARTBEATS,
            wm.Criterion.HOLDS_RUNNING,
        }
        assert wm.DEFAULT_RULES.ranking == (
            wm.Criterion.LIVE_SESSION,
            wm.Criterion.HOSTNAME_AGREES,
            wm.Criterion.HEARTBEATS,
            wm.Criterion.HOLDS_RUNNING,
            wm.Criterion.OLDEST,
        )

    def test_a_machine_whose_heartbeats_stopped_ranks_below_a_worker_without_hostname(
        self,
    ) -> None:
        # Behind a NAT address: alpha's heartbeats stopped 90 s ago (its machine moved away or
        # stopped), and a claim worker whose hostname is unknown is there too.  An update
        # without hostname from the address comes from the machine that still talks, although
        # alpha's worker is older.
        repo = new_repo()
        seed(
            repo,
            "alpha",
            "192.0.2.1",
            hostname="alpha",
            hostname_seen=-90,
            created=-900,
            running="A1",
        )
        seed(repo, "claim", "192.0.2.1", created=-60, running="A2")
        d = decide(repo, "192.0.2.1")
        assert (d.worker_id, d.ambiguous) == ("claim", False)
        assert verdicts(d, wm.Rule.EXACT_IP)["alpha"] == (
            wm.Verdict.OUTRANKED,
            "ranked below claim on heartbeats",
        )

    @pytest.mark.parametrize(
        ("hostname_seen", "stopped"),
        [(-60.0, False), (-60.001, True)],
        ids=["two-quiet-periods-is-not-stopped", "one-ms-more-is-stopped"],
    )
    def test_heartbeats_stop_after_strictly_more_than_two_quiet_periods(
        self, hostname_seen: float, stopped: bool
    ) -> None:
        repo = new_repo()
        seed(
            repo, "alpha", "192.0.2.1", hostname="alpha", hostname_seen=hostname_seen, created=-900
        )
        seed(repo, "anon", "192.0.2.1", created=-60)
        d = decide(repo, "192.0.2.1")
        # Not stopped: nothing tells them apart, and the oldest is taken in doubt.
        assert (d.worker_id, d.ambiguous) == (("anon", False) if stopped else ("alpha", True))

    def test_a_heartbeat_landing_on_a_worker_restarts_its_heartbeats(self) -> None:
        repo = new_repo()
        seed(repo, "alpha", "192.0.2.1", hostname="alpha", hostname_seen=-90, created=-900)
        out = wm.apply_event(wm.Event.heartbeat("192.0.2.1", hostname="alpha"), NOW, repo)
        assert out.worker.id == "alpha"
        assert worker(repo, "alpha").hostname_seen == NOW
        # A request without hostname does not count as a heartbeat.
        wm.apply_event(wm.Event.gui_update("192.0.2.1", "x"), at(5), repo)
        assert worker(repo, "alpha").hostname_seen == NOW

    def test_nearest_ip_ranks_the_longest_common_prefix_first(self) -> None:
        repo = new_repo()
        seed(repo, "z-near", "10.0.0.2", hostname="box")
        seed(repo, "a-far", "10.200.0.1", hostname="box")
        seed(repo, "a-other-family", "2001:db8::1", hostname="box")
        policy = with_table("nearest", ranking=(wm.Criterion.NEAREST_IP,))
        d = decide(repo, "10.0.0.9", hostname="box", policy=policy)
        assert (d.rule, d.worker_id) == (wm.Rule.HOSTNAME, "z-near")
        assert verdicts(d, wm.Rule.HOSTNAME)["a-far"][1] == (
            "could not be told apart from z-near; ranked below it on nearest_ip"
        )
        assert [w.id for w in d.outranked] == ["a-far", "a-other-family"]

    def test_criteria_apply_in_the_policys_order(self) -> None:
        repo = new_repo()
        seed(repo, "busy-earlier", "10.0.0.1", seen=-10, running="A1")
        seed(repo, "idle-later", "10.0.0.1", seen=-1)
        running_first = (wm.Criterion.HOLDS_RUNNING, wm.Criterion.RECENTLY_SEEN)
        policy = with_table("running-first", ranking=running_first)
        assert decide(repo, "10.0.0.1", policy=policy).worker_id == "busy-earlier"
        policy = with_table("seen-first", ranking=running_first[::-1])
        assert decide(repo, "10.0.0.1", policy=policy).worker_id == "idle-later"

    def test_the_smallest_id_breaks_a_tie_on_every_criterion(self) -> None:
        repo = new_repo()
        for wid in ("c", "a", "b"):
            seed(repo, wid, "10.0.0.1")
        d = decide(repo, "10.0.0.1")
        assert (d.worker_id, d.ambiguous, d.doubt) == ("a", True, ("a", "b", "c"))
        assert verdicts(d, wm.Rule.EXACT_IP)["b"] == (
            wm.Verdict.OUTRANKED,
            "could not be told apart from a; ranked below it on worker id",
        )

    def test_the_notes_first_match_wins_takes_the_earliest_created(self) -> None:
        repo = new_repo()
        seed(repo, "first", "10.0.0.1", created=-100, seen=-50)
        seed(repo, "second", "10.0.0.1", created=-50, seen=-1, running="A1")
        assert decide(repo, "10.0.0.1", policy=wm.NOTE_POLICY).worker_id == "first"


class TestAmbiguity:
    def test_one_eligible_candidate_among_rejected_ones_is_not_ambiguous(self) -> None:
        repo = new_repo()
        seed(repo, "alpha", "192.0.2.1", hostname="alpha")
        seed(repo, "beta", "192.0.2.1", hostname="beta")
        d = decide(repo, "192.0.2.1", hostname="beta")
        assert (d.worker_id, d.ambiguous) == ("beta", False)

    def test_tie_break_takes_the_best_ranked_and_flags_it(self) -> None:
        # Nothing but their age tells w1 and w2 apart: the oldest is taken, in doubt.
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", created=-100, seen=-5)
        seed(repo, "w2", "10.0.0.1", created=-50, seen=-1)
        d = decide(repo, "10.0.0.1")
        assert (d.rule, d.worker_id, d.ambiguous, d.doubt) == (
            wm.Rule.EXACT_IP,
            "w1",
            True,
            ("w1", "w2"),
        )
        assert d.to_dict()["ambiguous"] is True
        assert d.to_dict()["doubt"] == ["w1", "w2"]
        assert "(ambiguous)" in d.explain().splitlines()[0]
        assert verdicts(d, wm.Rule.EXACT_IP) == {
            "w1": (
                wm.Verdict.TAKEN,
                "could not be told apart from 1 other(s); first by live_session, hostname_agrees, "
                "heartbeats, holds_running, oldest, worker id",
            ),
            "w2": (
                wm.Verdict.OUTRANKED,
                "could not be told apart from w1; ranked below it on oldest",
            ),
        }

    def test_candidates_told_apart_by_evidence_are_no_doubt(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", created=-100, seen=-5)
        seed(repo, "w2", "10.0.0.1", created=-50, seen=-1, running="A1")
        d = decide(repo, "10.0.0.1")
        assert (d.worker_id, d.ambiguous, d.doubt) == ("w2", False, ())
        assert verdicts(d, wm.Rule.EXACT_IP)["w2"] == (
            wm.Verdict.TAKEN,
            "best of 2 candidates by live_session, hostname_agrees, heartbeats, holds_running, "
            "oldest, worker id",
        )
        assert "(ambiguous)" not in d.explain().splitlines()[0]

    def test_the_doubt_lists_only_the_candidates_tied_with_the_winner_on_evidence(self) -> None:
        repo = new_repo()
        seed(repo, "idle", "10.0.0.1", created=-300)
        seed(repo, "run-old", "10.0.0.1", created=-100, running="A1")
        seed(repo, "run-new", "10.0.0.1", created=-50, running="A2")
        d = decide(repo, "10.0.0.1")
        assert (d.worker_id, d.ambiguous, d.doubt) == ("run-old", True, ("run-old", "run-new"))
        assert [w.id for w in d.outranked] == ["run-new", "idle"]
        assert verdicts(d, wm.Rule.EXACT_IP)["idle"] == (
            wm.Verdict.OUTRANKED,
            "ranked below run-old on holds_running",
        )

    @pytest.mark.parametrize("policy", [wm.NOTE_POLICY, wm.LEGACY_POLICY], ids=lambda p: p.name)
    def test_with_a_tie_break_only_ranking_every_choice_among_several_is_in_doubt(
        self, policy: wm.Policy
    ) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", created=-100, seen=-5)
        seed(repo, "w2", "10.0.0.1", created=-50, seen=-1, running="A1")
        d = decide(repo, "10.0.0.1", policy=policy)
        assert (d.worker_id, d.ambiguous, d.doubt) == ("w1", True, ("w1", "w2"))

    def test_skip_rule_passes_over_the_ambiguous_rule_and_prefers_a_duplicate(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", seen=-5)
        seed(repo, "w2", "10.0.0.1", seen=-1)
        policy = wm.DEFAULT_POLICY.evolve(on_ambiguous=wm.OnAmbiguous.SKIP_RULE)
        d = decide(repo, "10.0.0.1", policy=policy)
        assert (d.rule, d.ambiguous) == (wm.Rule.CREATED, False)
        rep = report(d, wm.Rule.EXACT_IP)
        assert rep.outcome == "passed over"
        assert {c.worker_id: c.verdict for c in rep.candidates} == {
            "w1": wm.Verdict.PASSED_OVER,
            "w2": wm.Verdict.PASSED_OVER,
        }

    def test_skip_rule_lets_a_later_rule_decide(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", seen=-5)
        seed(repo, "w2", "10.0.0.1", seen=-1)
        seed(repo, "by-name", "10.0.0.5", hostname="box", seen=-1)
        policy = wm.DEFAULT_POLICY.evolve(on_ambiguous=wm.OnAmbiguous.SKIP_RULE)
        d = decide(repo, "10.0.0.1", hostname="box", policy=policy)
        # w1 and w2 have no hostname: both eligible under exact IP, so the rule is passed over.
        assert (d.rule, d.worker_id) == (wm.Rule.HOSTNAME, "by-name")

    def test_refuse_raises_ambiguous_match_carrying_the_decision(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", seen=-5)
        seed(repo, "w2", "10.0.0.1", seen=-1)
        policy = wm.DEFAULT_POLICY.evolve(on_ambiguous=wm.OnAmbiguous.REFUSE)
        with pytest.raises(wm.AmbiguousMatch, match="found 2 candidates") as info:
            decide(repo, "10.0.0.1", policy=policy)
        decision = info.value.decision
        assert isinstance(decision, wm.Decision)
        assert decision.ambiguous
        assert set(verdicts(decision, wm.Rule.EXACT_IP)) == {"w1", "w2"}

    def test_refuse_lets_an_unambiguous_match_through(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1")
        policy = wm.DEFAULT_POLICY.evolve(on_ambiguous=wm.OnAmbiguous.REFUSE)
        assert decide(repo, "10.0.0.1", policy=policy).worker_id == "w1"


# ---------------------------------------------------------------------------------------------
# Sessions: claims


class TestClaimSessions:
    def test_a_claim_joins_a_worker_an_early_heartbeat_created(self) -> None:
        repo = new_repo()
        add_assignment(repo, "A1")
        first = wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), at(0), repo)
        claim = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(3), repo)
        assert (claim.worker.id, claim.created, claim.rule) == (
            first.worker.id,
            False,
            wm.Rule.EXACT_IP,
        )
        w = worker(repo, first.worker.id)
        assert (w.status, w.assignment_id) == (S.RUNNING, "A1")
        assert assignment(repo, "A1") == wm.Assignment(
            id="A1", status=A.RUNNING, worker_id=first.worker.id, started_at=at(3)
        )

    def test_a_repeated_claim_is_idempotent(self) -> None:
        repo = new_repo()
        add_assignment(repo, "A1")
        first = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo)
        again = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(2), repo)
        assert (again.worker.id, again.idempotent, again.created) == (first.worker.id, True, False)
        assert "repeated claim" in again.explain()
        assert len(repo.all_workers()) == 1
        assert assignment(repo, "A1").started_at == at(0)
        assert worker(repo, first.worker.id).last_seen == at(2)

    def test_a_claim_of_an_assignment_running_on_another_live_worker_is_refused(self) -> None:
        repo = new_repo()
        seed(repo, "holder", "10.0.0.1", hostname="alpha", running="A1", seen=-10)
        before = (repo.all_workers(), repo.all_assignments())
        with pytest.raises(wm.ClaimRefused) as info:
            wm.apply_event(wm.Event.claim("10.0.0.2", "A1", hostname="beta"), NOW, repo)
        assert (info.value.reason, info.value.assignment_id, info.value.holder) == (
            "running_elsewhere",
            "A1",
            "holder",
        )
        assert (repo.all_workers(), repo.all_assignments()) == before

    def test_a_claim_from_another_address_never_adopts_the_holder_as_an_orphan(self) -> None:
        # The holder is a fresh claim worker without hostname: an orphan for a GUI's request,
        # but a second claim of its assignment from an unrelated address must be refused, not
        # taken for a repeat of the holder's claim (which would move the holder's address).
        repo = new_repo()
        add_assignment(repo, "A1")
        first = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo)
        before = (repo.all_workers(), repo.all_assignments())
        with pytest.raises(wm.ClaimRefused) as info:
            wm.apply_event(wm.Event.claim("198.51.100.7", "A1"), at(40), repo)
        assert (info.value.reason, info.value.holder) == ("running_elsewhere", first.worker.id)
        assert (repo.all_workers(), repo.all_assignments()) == before

    @pytest.mark.parametrize("status", [A.COMPLETED, A.FAILED, A.CANCELLED])
    def test_a_claim_of_a_finished_assignment_is_refused(self, status: wm.AssignmentStatus) -> None:
        repo = new_repo()
        add_assignment(repo, "A1", status)
        with pytest.raises(wm.ClaimRefused, match=f"already {status.value}") as info:
            wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), NOW, repo)
        assert info.value.reason == "already_finished"
        assert repo.all_workers() == []

    def test_a_claim_of_an_unknown_assignment_is_refused_unless_asked_to_create_it(self) -> None:
        repo = new_repo()
        with pytest.raises(wm.ClaimRefused) as info:
            wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), NOW, repo)
        assert info.value.reason == "unknown_assignment"
        out = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), NOW, repo, create_assignments=True)
        assert assignment(repo, "A1").worker_id == out.worker.id

    def test_a_claim_takes_over_from_a_stale_holder(self) -> None:
        repo = new_repo()
        seed(repo, "lost", "10.0.0.1", running="A1", created=-3600, seen=-301)
        out = wm.apply_event(wm.Event.claim("10.0.0.2", "A1"), NOW, repo)
        assert out.created
        assert assignment(repo, "A1").worker_id == out.worker.id
        assert worker(repo, "lost").status is S.IDLE

    def test_a_claim_never_joins_a_worker_of_another_session(self) -> None:
        # Batch mode: the next claim comes from the same machine 4 s after "finished".
        repo = new_repo()
        add_assignment(repo, "A1")
        add_assignment(repo, "A2")
        first = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), at(0), repo)
        wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), at(200), repo)
        second = wm.apply_event(wm.Event.claim("10.0.0.1", "A2"), at(204), repo)
        assert second.created
        assert second.worker.id != first.worker.id
        reason = verdicts(second.decision, wm.Rule.EXACT_IP)[first.worker.id][1]
        assert (
            reason == "session rule: it runs or ran assignment A1, so a claim starts a new worker"
        )

    def test_a_claim_does_not_join_an_ended_session_without_assignment(self) -> None:
        repo = new_repo()
        add_assignment(repo, "A1")
        seed(repo, "ended", "10.0.0.1", ended=-2)
        out = wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), NOW, repo)
        assert out.created
        assert "session rule: its session ended" in out.explain()

    def test_a_claim_in_doubt_starts_its_own_worker(self) -> None:
        # Two machines behind one NAT registered and hold nothing yet: a claim from the address
        # could be either's, and joining one for good would rest on a guess.
        repo = new_repo()
        add_assignment(repo, "A1")
        seed(repo, "first", "192.0.2.1", created=-60, seen=-5)
        seed(repo, "second", "192.0.2.1", created=-30, seen=-5)
        out = wm.apply_event(wm.Event.claim("192.0.2.1", "A1"), NOW, repo)
        assert (out.created, out.ambiguous, out.alert) == (True, True, wm.Alert.DOUBT)
        assert out.decision.doubt == ("first", "second")
        assert assignment(repo, "A1").worker_id == out.worker.id
        assert "did not join first, second" in out.explain()
        for wid in ("first", "second"):
            assert worker(repo, wid).assignment_id is None

    def test_without_sessions_the_last_claimer_wins(self) -> None:
        repo = new_repo()
        seed(repo, "holder", "10.0.0.1", running="A1", seen=-10)
        out = wm.apply_event(wm.Event.claim("10.0.0.2", "A1"), NOW, repo, wm.NOTE_POLICY)
        assert assignment(repo, "A1").worker_id == out.worker.id != "holder"
        assert worker(repo, "holder").status is S.IDLE

    def test_without_sessions_a_second_claim_joins_the_previous_sessions_worker(self) -> None:
        repo = new_repo()
        add_assignment(repo, "A2")
        seed(repo, "w1", "10.0.0.1", session="A1", ended=-4)
        out = wm.apply_event(wm.Event.claim("10.0.0.1", "A2"), NOW, repo, wm.NOTE_POLICY)
        assert (out.worker.id, out.worker.assignment_id) == ("w1", "A2")


# ---------------------------------------------------------------------------------------------
# Sessions: the end of a session


class TestSessionEnd:
    def test_finished_completes_the_running_assignment_and_ends_the_session(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", running="A1")
        out = wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), NOW, repo)
        assert out.ended == ("A1",)
        assert assignment(repo, "A1").status is A.COMPLETED
        assert assignment(repo, "A1").ended_at == NOW
        w = worker(repo, "w1")
        assert (w.status, w.ended_at, w.assignment_id) == (S.IDLE, NOW, "A1")

    def test_fatal_error_fails_the_running_assignment(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", running="A1")
        out = wm.apply_event(wm.Event.gui_update("10.0.0.1", "fatal_error"), NOW, repo)
        assert out.ended == ("A1",)
        assert assignment(repo, "A1").status is A.FAILED
        assert worker(repo, "w1").status is S.ERROR

    def test_finished_on_a_worker_holding_nothing_only_ends_its_session(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1")
        out = wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), NOW, repo)
        assert out.ended == ()
        assert worker(repo, "w1").ended_at == NOW

    def test_finished_on_a_heartbeat_is_just_a_heartbeat(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", running="A1")
        wm.apply_event(wm.Event.heartbeat("10.0.0.1"), NOW, repo)
        assert assignment(repo, "A1").status is A.RUNNING

    def nat(self) -> wm.InMemoryWorkerRepository:
        """Two machines behind one NAT address, neither hostname known, each running work."""
        repo = new_repo()
        seed(repo, "a", "192.0.2.1", created=-900, seen=-2, running="A1")
        seed(repo, "b", "192.0.2.1", created=-600, seen=-3, running="A2")
        return repo

    def test_an_end_that_could_be_either_machines_is_held_not_guessed(self) -> None:
        repo = self.nat()
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "finished"), NOW, repo)
        assert (out.ambiguous, out.held, out.ended, out.alert) == (
            True,
            ("a", "b"),
            (),
            wm.Alert.END_HELD,
        )
        assert "held the end (COMPLETED) among a, b" in out.explain()
        assert (assignment(repo, "A1").status, assignment(repo, "A2").status) == (
            A.RUNNING,
            A.RUNNING,
        )
        for wid in ("a", "b"):
            w = worker(repo, wid)
            assert (w.ended_at, w.status) == (None, S.RUNNING)
            assert w.held_end is not None
            assert w.held_end.candidates == ("a", "b")

    def test_an_end_among_sessions_that_all_ended_already_ends_nothing(self) -> None:
        """A second ``finished`` within the grace, when every candidate's session has ended:
        nothing is left to end, and nothing is held (a conformance-kit counterexample)."""
        repo = new_repo()
        seed(repo, "a", "192.0.2.1", created=-900, seen=-2, session="A1", ended=-3)
        seed(repo, "b", "192.0.2.1", created=-600, seen=-3, session="A2", ended=-4)
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "finished"), NOW, repo)
        assert (out.ambiguous, out.held, out.ended, out.alert) == (True, (), (), None)
        assert [w.held_end for w in repo.all_workers()] == [None, None]

    def test_a_held_end_goes_to_the_other_machine_once_one_is_heard_from(self) -> None:
        repo = self.nat()
        wm.apply_event(wm.Event.gui_update("192.0.2.1", "finished"), NOW, repo)
        # Within ended_grace a request of a's may be a trailing message: it proves nothing.
        early = wm.apply_event(wm.Event.gui_update("192.0.2.1", "x", worker_id="a"), at(5), repo)
        assert (early.ended, early.settled) == ((), ())
        # Past the grace, a's machine is still talking: the end was b's, as of when it came.
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "x", worker_id="a"), at(20), repo)
        assert out.ended == ("A2",)
        ((aid, held),) = out.settled
        assert (aid, held.candidates, held.asked) == ("A2", ("a", "b"), (NOW,))
        a2 = assignment(repo, "A2")
        assert (a2.status, a2.ended_at) == (A.COMPLETED, NOW)
        assert assignment(repo, "A1").status is A.RUNNING
        assert (worker(repo, "a").held_end, worker(repo, "b").held_end) == (None, None)
        assert "a did not send the end held among a, b" in out.explain()

    def test_a_heartbeat_that_may_open_the_next_session_settles_nothing(self) -> None:
        # Two machines behind one NAT address, hostnames known; one finishes (held), a claim
        # follows at the address 5 s later, and pc-a's heartbeat comes 16 s after the end:
        # pc-a's run going on, or pc-a's next run (batch mode) whose GUI has just started?
        repo = new_repo()
        ip = "192.0.2.1"
        seed(repo, "a", ip, hostname="pc-a", created=-900, seen=-2, running="A1", hostname_seen=-10)
        seed(repo, "b", ip, hostname="pc-b", created=-600, seen=-3, running="A2", hostname_seen=-3)
        add_assignment(repo, "A3")
        held = wm.apply_event(wm.Event.gui_update(ip, "finished"), NOW, repo)
        assert held.held == ("a", "b")
        wm.apply_event(wm.Event.claim(ip, "A3"), at(5), repo)
        out = wm.apply_event(wm.Event.heartbeat(ip, hostname="pc-a"), at(16), repo)
        assert (out.worker.id, out.ended, out.settled) == ("a", (), ())
        assert "may be its next session" in out.explain()
        assert {assignment(repo, aid).status for aid in ("A1", "A2")} == {A.RUNNING}
        assert worker(repo, "b").held_end is not None

    def test_an_end_is_not_given_to_a_machine_only_for_the_work_it_holds(self) -> None:
        # Two live streams at one address (a VPN handed b's machine a's address); b's claim was
        # adopted elsewhere, so only a holds work.  A finished from the address may be b's.
        repo = new_repo()
        ip = "192.0.2.1"
        seed(repo, "a", ip, hostname="pc-a", created=-900, seen=-2, running="A1", hostname_seen=-5)
        seed(repo, "b", ip, hostname="pc-b", created=-600, seen=-3, hostname_seen=-8)
        out = wm.apply_event(wm.Event.gui_update(ip, "finished"), NOW, repo)
        assert (out.worker.id, out.ambiguous, out.ended, out.held) == ("a", False, (), ("a", "b"))
        assert out.alert is wm.Alert.END_HELD
        assert "a ranks above b only by the work it holds" in out.explain()
        assert assignment(repo, "A1").status is A.RUNNING
        # a's machine goes on (its heartbeat, past the grace): the end was b's, and A1 runs on.
        later = wm.apply_event(wm.Event.heartbeat(ip, hostname="pc-a"), at(25), repo)
        assert later.ended == ()
        assert assignment(repo, "A1").status is A.RUNNING
        assert worker(repo, "b").ended_at == NOW

    def test_as_many_ends_as_candidates_end_them_all(self) -> None:
        repo = self.nat()
        wm.apply_event(wm.Event.gui_update("192.0.2.1", "finished"), NOW, repo)
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "finished"), at(3), repo)
        assert out.ended == ("A1", "A2")
        assert {assignment(repo, aid).status for aid in ("A1", "A2")} == {A.COMPLETED}

    def test_counting_never_ends_a_worker_whose_machine_was_heard_from_after_its_end(
        self,
    ) -> None:
        # Three machines behind one address (one hostname unknown) and three ends held among
        # them.  b's and c's machines were both heard from after the second end: only one of
        # them can have sent the third, so one sent none, and counting would end its session
        # for another machine's request.  The ends stay held, listed for an operator.
        repo = new_repo()
        ip = "192.0.2.1"
        seed(repo, "a", ip, created=-900, seen=-2, running="A1")
        seed(repo, "b", ip, hostname="pc-b", created=-600, seen=-3, running="A2", hostname_seen=-3)
        seed(repo, "c", ip, hostname="pc-c", created=-500, seen=-4, running="A3", hostname_seen=-4)
        wm.apply_event(wm.Event.gui_update(ip, "finished"), NOW, repo)
        wm.apply_event(wm.Event.gui_update(ip, "finished"), at(31), repo)
        wm.apply_event(wm.Event.heartbeat(ip, hostname="pc-b"), at(42), repo)
        wm.apply_event(wm.Event.heartbeat(ip, hostname="pc-c"), at(45), repo)
        out = wm.apply_event(wm.Event.gui_update(ip, "finished"), at(46), repo)
        assert out.ended == ()
        assert out.alert is wm.Alert.END_HELD
        assert {assignment(repo, aid).status for aid in ("A1", "A2", "A3")} == {A.RUNNING}
        held = worker(repo, "a").held_end
        assert held is not None
        assert (held.count, held.candidates) == (3, ("a", "b", "c"))

    def contested_nat(self) -> wm.InMemoryWorkerRepository:
        """The NAT pair, where ``a`` was adopted under doubt with ``c``, a worker elsewhere whose
        machine's heartbeats go on: pc-a's stream is on ``a``, but whether A1 or A3 is its
        work is unknown."""
        repo = self.nat()
        seed(repo, "c", "198.51.100.7", hostname="pc-c", running="A3", seen=-1, hostname_seen=-1)
        for wid in ("a", "c"):
            contested = attrs.evolve(worker(repo, wid), contested=("a", "c"))
            repo.write([wm.UpdateWorker(worker=contested)])
        return repo

    def test_counting_waits_for_the_stream_a_counted_worker_was_adopted_with(self) -> None:
        repo = self.contested_nat()
        wm.apply_event(wm.Event.gui_update("192.0.2.1", "finished"), NOW, repo)
        wm.apply_event(wm.Event.heartbeat("198.51.100.7", hostname="pc-c"), at(1), repo)
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "finished"), at(3), repo)
        # Two ends among a and b, but a's may be c's work: c's machine is still heard from, so
        # ending A1 could end c's session for pc-a's request.
        assert (out.ended, out.alert) == ((), wm.Alert.END_HELD)
        assert {assignment(repo, aid).status for aid in ("A1", "A2", "A3")} == {A.RUNNING}
        held = worker(repo, "c").held_end
        assert held is not None
        assert (held.count, held.candidates) == (2, ("a", "b", "c"))
        assert "held the end (COMPLETED) among a, b, c (2 ends held among them)" in out.explain()
        # c's own end comes: as many ends as candidates, and whichever was whose, all three end.
        done = wm.apply_event(wm.Event.gui_update("198.51.100.7", "finished"), at(40), repo)
        assert sorted(done.ended) == ["A1", "A2", "A3"]
        assert {held.asked for _, held in done.settled} == {(NOW, at(3), at(40))}

    def test_a_worker_contested_twice_keeps_both_doubts(self) -> None:
        # Three claims wait; pc-1 takes one of w1, w2, w3 under doubt, then pc-2 one of the two
        # left: the worker pc-2 takes was in both doubts, and it stays contested with all three.
        repo = new_repo()
        for k in (1, 2, 3):
            add_assignment(repo, f"A{k}")
            wm.apply_event(wm.Event.claim(f"203.0.113.{k}", f"A{k}"), at(-60 + k), repo)
        first = wm.apply_event(wm.Event.heartbeat("198.51.100.1", hostname="pc-1"), at(-20), repo)
        second = wm.apply_event(wm.Event.heartbeat("198.51.100.2", hostname="pc-2"), at(-10), repo)
        assert (first.ambiguous, first.alert) == (True, wm.Alert.DOUBT)
        # The two left were seen together in the first doubt: no new alert.
        assert (second.ambiguous, second.alert) == (True, None)
        assert second.worker.contested == tuple(sorted(w.id for w in repo.all_workers()))

    def test_without_the_evidence_guard_the_tie_break_takes_the_end(self) -> None:
        repo = self.nat()
        policy = with_table("no-evidence", guards=wm.DEFAULT_RULES.guards - {wm.Guard.EVIDENCE})
        out = wm.apply_event(wm.Event.gui_update("192.0.2.1", "finished"), NOW, repo, policy)
        assert (out.worker.id, out.ambiguous, out.ended, out.held) == ("a", True, ("A1",), ())

    @pytest.mark.parametrize(
        ("after", "same_worker"),
        [(3.0, True), (10.0, True), (10.001, False)],  # the default ended_grace is 10 s
        ids=["trailing-3s", "grace-edge", "past-grace"],
    )
    def test_an_ended_worker_answers_trailing_messages_for_the_grace(
        self, after: float, same_worker: bool
    ) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", running="A1")
        wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), NOW, repo)
        out = wm.apply_event(wm.Event.gui_update("10.0.0.1", "progress"), at(after), repo)
        assert (out.worker.id == "w1") is same_worker
        if not same_worker:
            reason = verdicts(out.decision, wm.Rule.EXACT_IP)["w1"][1]
            assert reason == (
                "its session ended 10.001 s ago, past the grace of 10 s for trailing messages"
            )

    def test_the_next_sessions_heartbeat_does_not_land_on_the_previous_worker(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", hostname="box", running="A1")
        wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), NOW, repo)
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="box"), at(45), repo)
        assert out.created

    def test_without_a_grace_limit_an_ended_worker_matches_until_stale(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", running="A1")
        wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), NOW, repo, wm.NOTE_POLICY)
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.1"), at(290), repo, wm.NOTE_POLICY)
        assert out.worker.id == "w1"


# ---------------------------------------------------------------------------------------------
# Staleness and clocks


class TestStaleness:
    @pytest.mark.parametrize(
        ("seen", "live"),
        [(-300.0, True), (-300.001, False)],
        ids=["exactly-stale-after-is-live", "one-ms-more-is-stale"],
    )
    def test_staleness_is_evaluated_at_now_without_any_sweep(self, seen: float, live: bool) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", seen=seen)
        d = decide(repo, "10.0.0.1")
        assert d.rule is (wm.Rule.EXACT_IP if live else wm.Rule.CREATED)
        assert worker(repo, "w1").stale is False  # nobody swept; the decision did not need it

    def test_a_last_seen_in_the_future_is_age_zero_not_an_error(self) -> None:
        # Another server process with a clock 2 s ahead wrote last_seen.
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", hostname="box", created=-20, seen=2, running="A1")
        assert decide(repo, "10.0.0.1").worker_id == "w1"
        assert decide(repo, "10.0.0.2", hostname="box").worker_id == "w1"
        out = wm.apply_event(wm.Event.heartbeat("10.0.0.1"), NOW, repo)
        assert out.worker.last_seen == at(2)  # never moved backwards

    def test_a_skewed_worker_is_not_mistaken_for_quiet(self) -> None:
        repo = new_repo()
        seed(repo, "w1", "10.0.0.1", hostname="box", created=-20, seen=2, running="A1")
        d = decide(repo, "10.0.0.2")
        assert d.rule is wm.Rule.CREATED
        assert verdicts(d, wm.Rule.RECENT_ORPHAN)["w1"][1].startswith(
            "has a hostname and was seen 0 s ago"
        )


# ---------------------------------------------------------------------------------------------
# The explanation


class TestExplanation:
    def scenario(self) -> wm.Decision:
        repo = new_repo()
        seed(repo, "vetoed", "10.0.0.1", hostname="other")
        seed(repo, "idle", "10.0.0.1", seen=-2)
        seed(repo, "busy", "10.0.0.1", seen=-20, running="A1")
        return decide(repo, "10.0.0.1", hostname="box", worker_id="ghost")

    def test_explain_names_every_candidate_and_what_became_of_it(self) -> None:
        text = self.scenario().explain()
        lines = text.splitlines()
        assert lines[0] == (
            "request(ip=10.0.0.1, hostname=box, worker_id=ghost) at 2025-11-06T12:00:00+00:00 "
            "-> worker busy by rule exact_ip [policy default]"
        )
        assert "  worker_id: no candidates - the hint names worker ghost" in lines
        assert "    ghost: rejected - no such worker" in lines
        assert "  assignment: not applicable - the request carries no assignment hint" in lines
        assert any(line.startswith("    busy: taken - best of 2 candidates by ") for line in lines)
        assert "    idle: outranked - ranked below busy on holds_running" in lines
        assert "    vetoed: rejected - hostname veto: its hostname other differs from box" in lines
        assert "  recent_orphan: not reached - exact_ip matched first" in lines
        assert "  hostname: not reached - exact_ip matched first" in lines

    def test_to_dict_is_json_ready_and_lists_the_same_candidates(self) -> None:
        d = self.scenario()
        data = json.loads(json.dumps(d.to_dict()))
        assert {
            k: data[k] for k in ("ip", "hostname", "rule", "worker", "created", "ambiguous")
        } == {
            "ip": "10.0.0.1",
            "hostname": "box",
            "rule": "exact_ip",
            "worker": "busy",
            "created": False,
            "ambiguous": False,
        }
        assert data["doubt"] == []
        chain = wm.DEFAULT_POLICY.chain_for(wm.EventKind.REGISTER)
        assert [r["rule"] for r in data["reports"]] == [r.value for r in chain]
        (exact,) = [r for r in data["reports"] if r["rule"] == "exact_ip"]
        assert {c["worker"]: c["verdict"] for c in exact["candidates"]} == {
            "busy": "taken",
            "idle": "outranked",
            "vetoed": "rejected",
        }

    def test_a_created_decision_explains_every_rule_that_found_nothing(self) -> None:
        d = decide(new_repo(), "10.0.0.1")
        assert (d.created, d.worker_id, d.worker) == (True, None, None)
        assert (
            d.explain().splitlines()[0].endswith("-> a new worker by rule created [policy default]")
        )
        assert [r.outcome for r in d.reports] == [
            "not applicable",
            "not applicable",
            "no candidates",
            "no candidates",
            "not applicable",
        ]
