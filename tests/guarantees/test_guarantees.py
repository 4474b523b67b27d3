"""Guarantees 1 to 5 of the library (docs/how-it-decides.md), as properties over generated
fleets and event streams.

The streams come from the conformance kit (:func:`workermatch.testing.fleet_streams`): several
machines, VPN address pools and mid-run IP changes, shared NAT addresses, sequential (batch)
sessions, GUI start delays, silences shorter and longer than ``stale_after``, optional
assignment hints, at the real client's timing.  Each element carries its ground truth
(machine, session), so each guarantee is checked against what really happened.

Preconditions are stated exactly, as functions of the ground truth and the policy, and are
*sufficient* for the guarantee under :data:`~workermatch.DEFAULT_POLICY`.  Where the guarantee
in its plain wording is false for the default policy, the counterexample is a test marked
``xfail(strict=True)`` at the end of this file (docs/tuning.md, "Known limits").
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import attrs
import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

import workermatch as wm
from _stores import state as snapshot
from workermatch.testing import EPOCH, FleetStream, StreamEvent, Truth, fleet_streams

POLICY = wm.DEFAULT_POLICY
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Replaying a stream


@attrs.frozen
class Step:
    element: StreamEvent
    outcome: wm.Outcome | None
    refused: str | None


def replay(
    stream: FleetStream,
    policy: wm.Policy = POLICY,
    repo: wm.WorkerRepository | None = None,
    *,
    after_each: Callable[[wm.WorkerRepository, Step], None] | None = None,
) -> list[Step]:
    repo = repo if repo is not None else wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    steps = []
    for element in stream.events:
        try:
            step = Step(
                element,
                wm.apply_event(element.event, element.now, repo, policy, create_assignments=True),
                None,
            )
        except wm.ClaimRefused as exc:
            step = Step(element, None, exc.reason)
        steps.append(step)
        if after_each is not None:
            after_each(repo, step)
    return steps


def workers_of(steps: Sequence[Step], session: str) -> set[str]:
    return {
        s.outcome.worker.id
        for s in steps
        if s.outcome is not None and s.element.truth.session == session
    }


# --------------------------------------------------------------------------------------------
# Preconditions, from the ground truth


@attrs.frozen
class Session:
    """One session's requests, as the ground truth says, with the facts the rules look at."""

    name: str
    machine: str
    events: tuple[StreamEvent, ...]
    ended: bool
    guarded: frozenset[int] = frozenset()
    """``id()`` of this session's hostname-less requests for which the orphan guard may refuse
    rule 3, because another session's worker with a hostname was fed within ``quiet_period``
    (that machine may have changed address)."""

    @property
    def claim(self) -> datetime:
        return self.events[0].now

    @property
    def last(self) -> datetime:
        return self.events[-1].now

    def ips(self) -> set[str]:
        return {e.event.identity.ip for e in self.events}

    def first_appearances(self) -> list[StreamEvent]:
        """Requests from a new IP: one that differs from the session's previous request's (the
        worker's IP is the last one it saw, so going back to an older address is new too)."""
        return [
            b
            for a, b in zip(self.events, self.events[1:], strict=False)
            if a.event.identity.ip != b.event.identity.ip
        ]

    def before(self, t: datetime, element: StreamEvent | None = None) -> list[StreamEvent]:
        """Requests sent before ``t`` (and, at ``t``, those that precede ``element``)."""
        return [e for e in self.events if e.now < t]

    def hostname_known_before(self, element: StreamEvent) -> bool:
        for e in self.events:
            if e is element:
                return False
            if e.event.identity.hostname is not None:
                return True
        return False


def sessions_of(stream: FleetStream, policy: wm.Policy = POLICY) -> dict[str, Session]:
    out: dict[str, Session] = {}
    for truth in stream.sessions:
        events = tuple(stream.of_session(truth.session))
        out[truth.session] = Session(truth.session, truth.machine, events, truth.ended)
    return {
        name: attrs.evolve(s, guarded=_guarded(s, list(out.values()), policy))
        for name, s in out.items()
    }


def _guarded(s: Session, sessions: Sequence[Session], policy: wm.Policy) -> frozenset[int]:
    """The requests of ``s`` that the orphan guard may keep from rule 3 (conservatively: any
    other running session that already sent its hostname and was heard within the quiet
    period counts as a rival)."""
    if not policy.rules.row(wm.Rule.RECENT_ORPHAN).weighs_streams:
        return frozenset()
    out = set()
    for e in s.events:
        if e.event.identity.hostname is not None:
            continue
        for y in sessions:
            if y is s:
                continue
            sent = [x for x in y.events if x.now <= e.now]
            if not sent or (y.ended and sent[-1] is y.events[-1]):
                continue
            known = any(x.event.identity.hostname is not None for x in sent)
            if known and e.now - sent[-1].now <= policy.quiet_period:
                out.add(id(e))
                break
    return frozenset(out)


def pairs(events: Sequence[StreamEvent]) -> list[tuple[StreamEvent, StreamEvent]]:
    return list(itertools.pairwise(events))


def never_silent(s: Session, policy: wm.Policy = POLICY) -> bool:
    """The session never goes silent for longer than ``stale_after``."""
    return all(
        b.now - a.now <= policy.stale_after for a, b in zip(s.events, s.events[1:], strict=False)
    )


def new_ips_reach_their_worker(s: Session, policy: wm.Policy = POLICY) -> bool:
    """Each new IP first shows up on a request that rule 3 or rule 4 leads to the session's
    worker: within ``orphan_window`` of the claim while the worker has no hostname yet or has
    been quiet for ``quiet_period`` (rule 3), or carrying the hostname the worker already
    has, within ``hostname_window`` of the session's previous request (rule 4).  A request
    without hostname that the orphan guard may stop (``Session.guarded``) does not count for
    rule 3: the guard prefers a duplicate, which the next heartbeat merges back.  A hinted
    session (the client sends its assignment id) needs nothing: the hint finds its worker."""
    if all(e.event.identity.assignment_id is not None for e in s.events[1:]):
        return True
    index = {id(e): i for i, e in enumerate(s.events)}
    for e in s.first_appearances():
        prev = s.events[index[id(e)] - 1]
        known = s.hostname_known_before(e)
        gap = e.now - prev.now
        orphan = (
            e.now - s.claim <= policy.orphan_window
            and (not known or gap > policy.quiet_period)
            and id(e) not in s.guarded
        )
        by_host = e.event.identity.hostname is not None and known and gap <= policy.hostname_window
        if not (orphan or by_host):
            return False
    return True


def orphan_at(y: Session, request: StreamEvent, policy: wm.Policy = POLICY) -> bool:
    """Whether ``y``'s worker can be a rule-3 candidate for ``request`` (from another session):
    created within ``orphan_window``, still running, and without hostname or quiet, and not
    vetoed by the request's hostname."""
    t = request.now
    sent = [e for e in y.events if e.now < t or (e.now == t and e is not request)]
    if not sent or t - y.claim > policy.orphan_window:
        return False
    if y.ended and sent[-1] is y.events[-1]:
        return False
    known = any(e.event.identity.hostname is not None for e in sent)
    if known and request.event.identity.hostname is not None:
        return False  # hostname veto (different machines have different hostnames)
    return not known or t - sent[-1].now > policy.quiet_period


def apart(x: Session, y: Session, policy: wm.Policy = POLICY) -> bool:
    """No rule can take a request of one of the two sessions to the other's worker."""
    if x.machine != y.machine and x.ips() & y.ips():
        return False  # shared address: exact IP (or NAT) can confuse them
    for a, b in ((x, y), (y, x)):
        for request in may_reach_rule_3(a, policy):
            if orphan_at(b, request, policy):
                return False  # a blind rule-3 guess is possible
    if x.machine == y.machine:
        earlier, later = (x, y) if x.claim < y.claim else (y, x)
        for e in later.events[1:]:
            if e.now - earlier.last <= policy.stale_after and (
                not earlier.ended or e.now - earlier.last <= (policy.ended_grace or e.now - e.now)
            ):
                return False  # the earlier worker still answers by exact IP or hostname
    return True


def well_behaved(stream: FleetStream, policy: wm.Policy = POLICY) -> bool:
    """Every session meets guarantee 1's own precondition and every pair is apart."""
    sessions = list(sessions_of(stream).values())
    if not all(never_silent(s, policy) and new_ips_reach_their_worker(s, policy) for s in sessions):
        return False
    return all(apart(a, b, policy) for i, a in enumerate(sessions) for b in sessions[i + 1 :])


# --------------------------------------------------------------------------------------------
# Guarantee 1


@given(stream=fleet_streams(max_machines=3, long_silences=False))
def test_one_session_one_worker(stream: FleetStream) -> None:
    """Guarantee 1: the events of one session, whose IP changes any number of times, resolve to
    one worker, when the session never goes silent past ``stale_after``, each new IP first shows
    up on a request that reaches its worker (``new_ips_reach_their_worker``), and no other
    session could be confused with it (``apart``: no shared address, no possible blind rule-3
    guess, the machine's previous session ended more than ``ended_grace`` earlier)."""
    if not well_behaved(stream):
        event("precondition not met")
        return
    steps = replay(stream)
    note(describe(steps))
    event(f"checked {len(stream.sessions)} sessions")
    for truth in stream.sessions:
        got = workers_of(steps, truth.session)
        assert len(got) == 1, f"session {truth.session} resolved to workers {sorted(got)}"


# --------------------------------------------------------------------------------------------
# Guarantee 2


def earlier_session_done(earlier: Session, later: Session, policy: wm.Policy = POLICY) -> bool:
    """The earlier session's worker no longer answers when the later session speaks: it ended
    more than ``ended_grace`` before the later session's first request after its claim, or went
    silent for longer than ``stale_after``.  If the earlier session may have split into several
    workers (guarantee 1's own precondition fails), the ones left behind never see its end and
    answer until ``stale_after``."""
    single = never_silent(earlier, policy) and new_ips_reach_their_worker(earlier, policy)
    for e in later.events[1:]:
        gap = e.now - earlier.last
        grace = policy.ended_grace if policy.ended_grace is not None else policy.stale_after
        if gap <= policy.stale_after and (not (single and earlier.ended) or gap <= grace):
            return False
    return True


@given(stream=fleet_streams(max_machines=3, max_sessions=3))
def test_sessions_stay_apart(stream: FleetStream) -> None:
    """Guarantee 2: events of two sessions of one machine (one after the other) never resolve to
    the same worker, when the earlier session's worker no longer answers once the later one
    speaks (``earlier_session_done``) and no request of one machine can reach another
    machine's worker (``apart``, for every pair of sessions of different machines)."""
    sessions = sessions_of(stream)
    steps = replay(stream)
    note(describe(steps))
    # Every pair of sessions of different machines must be apart, not only those with the
    # earlier session: a session another machine disturbed can disturb a third in turn (one
    # machine back from a silence takes another's claim, whose GUI then takes a third's).
    machines_apart = all(
        apart(x, y)
        for x, y in itertools.combinations(sessions.values(), 2)
        if x.machine != y.machine
    )
    checked = 0
    for a in sessions.values():
        for b in sessions.values():
            if a.machine != b.machine or a.claim >= b.claim:
                continue
            if not machines_apart or not earlier_session_done(a, b):
                continue
            checked += 1
            shared = workers_of(steps, a.name) & workers_of(steps, b.name)
            assert not shared, f"sessions {a.name} and {b.name} both resolved to {sorted(shared)}"
    event(f"checked {checked} pairs of sessions")


# --------------------------------------------------------------------------------------------
# Guarantee 3


def may_reach_rule_3(s: Session, policy: wm.Policy = POLICY) -> list[StreamEvent]:
    """Requests that may find no live worker with their IP: a new IP, or after a silence past
    ``stale_after`` (these may also create a worker)."""
    out = s.first_appearances()
    out += [
        b
        for a, b in zip(s.events, s.events[1:], strict=False)
        if b.now - a.now > policy.stale_after
    ]
    return out


def may_be_orphan(x: Session, request: StreamEvent, policy: wm.Policy = POLICY) -> bool:
    """Whether some worker of session ``x`` may be a rule-3 candidate for ``request``."""
    if never_silent(x, policy) and new_ips_reach_their_worker(x, policy):
        return orphan_at(x, request, policy)  # x has one worker, whose state we know
    t = request.now
    if x.ended and x.last < t:
        return False
    starts = [x.events[0], *may_reach_rule_3(x, policy)]
    return any(timedelta(0) <= t - c.now <= policy.orphan_window for c in starts)


def reused_addresses(s: Session, mine: Sequence[Session]) -> list[StreamEvent]:
    """Requests of ``s`` from an address its machine's previous session used: within the grace
    for trailing messages they may land on that session's ended worker, and after it they may
    find no eligible worker with their IP (rule 3)."""
    earlier = [p.ips() for p in mine if p is not s and p.last <= s.claim]
    used = set().union(*earlier)
    return [e for e in s.events if e.event.identity.ip in used]


def machines_apart(xs: Sequence[Session], ys: Sequence[Session]) -> bool:
    """No shared address and no possible blind rule-3 guess between two machines' sessions."""
    for x in xs:
        for y in ys:
            if x.ips() & y.ips():
                return False
            for a, b, mine in ((x, y, xs), (y, x, ys)):
                reach = may_reach_rule_3(a) + reused_addresses(a, mine)
                if any(may_be_orphan(b, r) for r in reach):
                    return False
    return True


@given(stream=fleet_streams(min_machines=2, max_machines=3))
def test_machines_stay_apart(stream: FleetStream) -> None:
    """Guarantee 3: once two machines' hostnames are both known and differ, their events never
    resolve to the same worker.

    Without precondition, for requests that carry the hostname (the veto): no worker ever
    receives hostname-carrying requests from two machines.  For every request, when neither
    machine can be confused with any other machine (``machines_apart``: no shared address, no
    possible blind rule-3 guess)."""
    steps = replay(stream)
    note(describe(steps))
    by_worker: dict[str, set[str]] = {}
    for s in steps:
        if s.outcome is not None and s.element.event.identity.hostname is not None:
            by_worker.setdefault(s.outcome.worker.id, set()).add(s.element.truth.machine)
    mixed = {w: sorted(m) for w, m in by_worker.items() if len(m) > 1}
    assert not mixed, f"hostname-carrying requests of several machines on one worker: {mixed}"

    sessions = sessions_of(stream)
    machines: dict[str, list[Session]] = {}
    for sess in sessions.values():
        machines.setdefault(sess.machine, []).append(sess)
    isolated = [
        m
        for m, mine in machines.items()
        if all(machines_apart(mine, theirs) for o, theirs in machines.items() if o != m)
    ]
    event(f"{len(isolated)} of {len(machines)} machines isolated")
    known: dict[str, datetime] = {}
    for s in steps:
        if s.element.event.identity.hostname is not None:
            known.setdefault(s.element.truth.machine, s.element.now)
    for i, x in enumerate(isolated):
        for y in isolated[i + 1 :]:
            if x not in known or y not in known:
                continue
            since = max(known[x], known[y])
            after = [s for s in steps if s.outcome is not None and s.element.now >= since]
            wx = {s.outcome.worker.id for s in after if s.element.truth.machine == x}  # type: ignore[union-attr]
            wy = {s.outcome.worker.id for s in after if s.element.truth.machine == y}  # type: ignore[union-attr]
            assert not wx & wy, f"machines {x} and {y} both resolved to {sorted(wx & wy)}"


# --------------------------------------------------------------------------------------------
# Guarantee 4


class ShuffledReads:
    """A repository that answers every query in a random order (as a SQL store may)."""

    def __init__(self, inner: wm.WorkerRepository, rnd: random.Random) -> None:
        self._inner = inner
        self._rnd = rnd

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name in ("atomically", "write", "new_worker_id"):
            return attr

        def shuffled(*args: Any) -> Any:
            result = attr(*args)
            if isinstance(result, list | tuple):
                result = list(result)
                self._rnd.shuffle(result)
            return result

        return shuffled


def copy_in_order(repo: wm.WorkerRepository, rnd: random.Random) -> wm.InMemoryWorkerRepository:
    """The same rows, inserted in a random order."""
    workers, assignments = snapshot(repo)
    rnd.shuffle(workers)
    rnd.shuffle(assignments)
    copy = wm.InMemoryWorkerRepository()
    copy.write([wm.InsertWorker(worker=w) for w in workers])
    copy.write([wm.InsertAssignment(assignment=a) for a in assignments])
    return copy


def attempt(fn: Callable[[], T]) -> T | str:
    try:
        return fn()
    except wm.ClaimRefused as exc:
        return f"ClaimRefused({exc.reason})"


@given(stream=fleet_streams(max_machines=2), seed=st.integers(0, 2**32 - 1))
def test_purity(stream: FleetStream, seed: int) -> None:
    """Guarantee 4: ``match_worker`` (and ``plan``) write nothing, and the same identity, ``now``,
    policy and repository contents give the same decision whatever order the repository holds
    its rows in and returns them in."""
    rnd = random.Random(seed)

    def check(repo: wm.WorkerRepository, element: StreamEvent) -> None:
        ev, now = element.event, element.now
        before = snapshot(repo)
        decision = wm.match_worker(ev.identity, now, repo, POLICY, kind=ev.kind)
        planned = attempt(lambda: wm.plan(ev, now, repo, POLICY, create_assignments=True))
        assert snapshot(repo) == before, "match_worker or plan wrote to the repository"
        for other in (
            copy_in_order(repo, rnd),
            ShuffledReads(copy_in_order(repo, rnd), rnd),
        ):
            other_repo: Any = other
            assert wm.match_worker(ev.identity, now, other_repo, POLICY, kind=ev.kind) == decision
            assert attempt(
                partial(wm.plan, ev, now, other_repo, POLICY, create_assignments=True)
            ) == (planned)

    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    for element in stream.events:
        if rnd.random() < 0.3:
            check(repo, element)
        attempt(
            partial(
                wm.apply_event, element.event, element.now, repo, POLICY, create_assignments=True
            )
        )


# --------------------------------------------------------------------------------------------
# Guarantee 5


@given(
    stream=fleet_streams(max_machines=3, max_sessions=3),
    policy=st.sampled_from([wm.DEFAULT_POLICY, wm.NOTE_POLICY, wm.LEGACY_POLICY]),
)
def test_nothing_lost(stream: FleetStream, policy: wm.Policy) -> None:
    """Guarantee 5: after every decision is applied, every RUNNING assignment is held by exactly
    one existing worker, and the RUNNING assignments change only as the request says: a claim
    adds its assignment, ``finished``/``fatal_error`` end the ones it names; a transfer never
    drops or duplicates one.  A worker's status is RUNNING exactly when it holds one."""
    previous: dict[str, str | None] = {}

    def check(repo: wm.WorkerRepository, step: Step) -> None:
        workers = {w.id: w for w in repo.all_workers()}
        running = {
            a.id: a.worker_id
            for a in repo.all_assignments()
            if a.status is wm.AssignmentStatus.RUNNING
        }
        for aid, holder in running.items():
            assert holder in workers, f"RUNNING {aid} is held by {holder!r}, which is no worker"
        expected = set(previous)
        if step.outcome is not None:
            expected -= set(step.outcome.ended)
            if step.element.event.assignment_id is not None:
                expected.add(step.element.event.assignment_id)
        assert set(running) == expected, (
            f"RUNNING assignments went from {sorted(previous)} to {sorted(running)} on "
            f"{step.element.event!r}"
        )
        holders = set(running.values())
        for w in workers.values():
            assert (w.status is wm.WorkerStatus.RUNNING) == (w.id in holders), (
                f"worker {w.id} has status {w.status.value} but "
                f"{'holds' if w.id in holders else 'does not hold'} a RUNNING assignment"
            )
        previous.clear()
        previous.update(running)

    steps = replay(stream, policy, after_each=check)
    note(describe(steps))


def describe(steps: Sequence[Step]) -> str:
    """One line per request: time, session, request, and where it landed."""
    lines = []
    for s in steps:
        e, ev = s.element, s.element.event
        where = (
            f"{s.outcome.worker.id} by {s.outcome.rule.value}"
            f"{' (ambiguous)' if s.outcome.ambiguous else ''}"
            if s.outcome is not None
            else f"refused: {s.refused}"
        )
        extra = ev.assignment_id or ev.message or ""
        lines.append(
            f"{(e.now - EPOCH).total_seconds():9.3f}s {e.truth.session:6} {ev.kind.value:10} "
            f"{ev.identity.ip:22} {ev.identity.hostname or '-':14} {extra:18} -> {where}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Where the plain wording of a guarantee is false for the default policy.  Each is the
# smallest stream found; each xfail is strict, so a policy or core change that makes it pass
# fails here and the preconditions above can be relaxed.


def run_script(script: Sequence[tuple[float, str, wm.Event]]) -> list[Step]:
    stream = FleetStream(
        events=tuple(
            StreamEvent(
                event=ev,
                now=EPOCH + timedelta(seconds=at),
                truth=Truth(machine=session.split("-")[0], session=session),
            )
            for at, session, ev in script
        ),
        sessions=(),
    )
    return replay(stream)


@pytest.mark.xfail(
    strict=True,
    reason="rule 3 needs the worker hostname-less or quiet: a VPN flip first seen on an update "
    "within orphan_window of the claim, while heartbeats flow, makes a second worker",
)
def test_counterexample_one_session_one_worker_vpn_flip_within_orphan_window() -> None:
    steps = run_script(
        [
            (0.0, "m1-s1", wm.Event.claim("172.16.1.10", "A1")),
            (20.0, "m1-s1", wm.Event.heartbeat("172.16.1.11", hostname="pc-1")),
            (25.0, "m1-s1", wm.Event.gui_update("172.16.1.11", "overall_progress")),
            (40.0, "m1-s1", wm.Event.gui_update("172.16.1.12", "overall_progress")),
        ]
    )
    assert len(workers_of(steps, "m1-s1")) == 1, describe(steps)


def test_a_heartbeat_from_a_new_ip_keeps_its_worker_despite_a_fresh_claim() -> None:
    """Once a strict expected failure (rule 3 runs before rule 4, so the heartbeat took the
    other machine's fresh claim worker, which has no hostname yet).  The default table's rule 3
    weighs the machine's own fed stream as a candidate, and its hostname agreement is evidence
    that separates it from the other machine's claim: no guess, no doubt."""
    steps = run_script(
        [
            (0.0, "m1-s1", wm.Event.claim("172.16.1.10", "A1")),
            (10.0, "m1-s1", wm.Event.heartbeat("172.16.1.11", hostname="pc-1")),
            (20.0, "m1-s1", wm.Event.gui_update("172.16.1.11", "overall_progress")),
            (30.0, "m2-s1", wm.Event.claim("172.16.2.10", "A2")),
            (35.0, "m1-s1", wm.Event.heartbeat("172.16.1.12", hostname="pc-1")),
        ]
    )
    assert len(workers_of(steps, "m1-s1")) == 1, describe(steps)
    last = steps[-1].outcome
    assert last is not None
    assert not last.ambiguous, describe(steps)
    assert last.alert is None, describe(steps)
    assert len(workers_of(steps, "m2-s1")) == 1, describe(steps)


@pytest.mark.xfail(
    strict=True,
    reason="own_stream: a client killed mid-run and restarted at once (a new claim from another "
    "VPN address) sends its first heartbeat within quiet_period of the dead run's last update: "
    "the dead run's worker is the one fed stream of that hostname, and outranks the new claim",
)
def test_counterexample_sessions_stay_apart_after_a_crash_and_fast_restart() -> None:
    steps = run_script(
        [
            (0.0, "m1-s1", wm.Event.claim("172.16.1.10", "A1")),
            (10.0, "m1-s1", wm.Event.heartbeat("172.16.1.11", hostname="pc-1")),
            (40.0, "m1-s1", wm.Event.heartbeat("172.16.1.11", hostname="pc-1")),
            (100.0, "m1-s1", wm.Event.gui_update("172.16.1.11", "overall_progress")),
            (104.0, "m1-s2", wm.Event.claim("172.16.1.12", "A2")),
            (115.0, "m1-s2", wm.Event.heartbeat("172.16.1.13", hostname="pc-1")),
        ]
    )
    assert not workers_of(steps, "m1-s1") & workers_of(steps, "m1-s2"), describe(steps)


@pytest.mark.xfail(
    strict=True,
    reason="ended_grace lets a worker answer its machine for 10 s after 'finished': the next "
    "batch session's first heartbeat, from the previous session's GUI address (a VPN gives the "
    "claim another one), lands on the previous session's worker",
)
def test_counterexample_sessions_stay_apart_fast_batch_restart_on_a_vpn() -> None:
    steps = run_script(
        [
            (0.0, "m1-s1", wm.Event.claim("172.16.1.10", "A1")),
            (5.0, "m1-s1", wm.Event.heartbeat("172.16.1.11", hostname="pc-1")),
            (60.0, "m1-s1", wm.Event.gui_update("172.16.1.11", "finished")),
            (62.0, "m1-s2", wm.Event.claim("172.16.1.10", "A2")),
            (70.0, "m1-s2", wm.Event.heartbeat("172.16.1.11", hostname="pc-1")),
        ]
    )
    assert not workers_of(steps, "m1-s1") & workers_of(steps, "m1-s2"), describe(steps)


@pytest.mark.xfail(
    strict=True,
    reason="behind one NAT address a request without hostname cannot be told apart: an update "
    "of one machine lands on the oldest live worker of the address (the default ranking's "
    "tie-break), the other machine's, hostnames known or not",
)
def test_counterexample_machines_stay_apart_behind_one_nat() -> None:
    nat = "192.0.2.1"
    steps = run_script(
        [
            (0.0, "m1-s1", wm.Event.claim(nat, "A1")),
            (5.0, "m1-s1", wm.Event.heartbeat(nat, hostname="pc-1")),
            (10.0, "m2-s1", wm.Event.claim(nat, "A2")),
            (15.0, "m2-s1", wm.Event.heartbeat(nat, hostname="pc-2")),
            (16.0, "m2-s1", wm.Event.gui_update(nat, "overall_progress")),
        ]
    )
    m1 = {s.outcome.worker.id for s in steps if s.outcome and s.element.truth.machine == "m1"}
    m2 = {s.outcome.worker.id for s in steps if s.outcome and s.element.truth.machine == "m2"}
    assert not m1 & m2, describe(steps)


@pytest.mark.xfail(
    strict=True,
    reason="a session split by a VPN flip leaves its first worker live and never ended: the "
    "next batch session's requests from that address land on it, and its 'finished' completes "
    "the previous session's assignment while its own stays RUNNING",
)
def test_counterexample_sessions_stay_apart_after_a_split_session() -> None:
    steps = run_script(
        [
            (0.0, "m1-s1", wm.Event.claim("172.16.1.10", "A1")),
            (2.0, "m1-s1", wm.Event.heartbeat("172.16.1.10", hostname="pc-1")),
            (2.001, "m1-s1", wm.Event.gui_update("172.16.1.11", "overall_progress")),
            (24.5, "m1-s1", wm.Event.gui_update("172.16.1.11", "finished")),
            (26.5, "m1-s2", wm.Event.claim("172.16.1.10", "A2")),
            (54.5, "m1-s2", wm.Event.heartbeat("172.16.1.10", hostname="pc-1")),
            (77.0, "m1-s2", wm.Event.gui_update("172.16.1.10", "finished")),
        ]
    )
    assert not workers_of(steps, "m1-s1") & workers_of(steps, "m1-s2"), describe(steps)
