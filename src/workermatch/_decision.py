"""The decision: which worker a request belongs to, and everything the request writes.

Read this module top to bottom; it is the whole of the library's judgement.

1. **Queries.**  The decision does no I/O.  It is written as generators that *yield* the reads
   they need (:class:`Query`, one method of :class:`~workermatch.WorkerRepository` and its
   arguments) and receive the answers, so one decision runs under any driver: ``_engine`` runs
   it against a synchronous repository; an asynchronous driver awaits the same queries.
2. **The rule table.**  A :class:`Rules` value holds the rows of the priority chain (each row: the
   rule, the event kinds it serves, its candidate query and what it weighs), the ranking that
   orders a rule's candidates, the guards that keep one machine's request off another machine's
   record, and the effects a request has beyond its placement.  Three tables ship:
   :data:`DEFAULT_RULES`, :data:`NOTE_RULES` (the design note to the letter) and
   :data:`LEGACY_RULES` (the code before the note).  A policy picks one.
3. **Evidence and doubt.**  Candidates are ranked by evidence (does the hostname agree? has the
   session ended? do the machine's heartbeats still arrive? does it run work?) and then by a
   tie-break.  Candidates the evidence cannot separate are a *doubt*: the decision is
   ``ambiguous``.  A request may be *placed* under doubt (the tie-break picks; the worker
   becomes *contested*; an alert is raised once per new doubt), but no irreversible write rests
   on a tie-break: an end is held until evidence arrives, a claim starts its own worker, a
   transfer and a merge need one clear candidate.
4. **Placement**: :func:`choose` walks the table and returns the :class:`Decision`.
5. **Writes**: :func:`decide` turns an event into an :class:`Outcome`: the decision, then the
   claim, the revival of a hinted worker, reconciliation, transfers, session ends (applied or
   held) and the writes that do all of it.

Nothing here knows a clock (``now`` is passed in) or a store (only the queries).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Collection, Generator, Sequence
from datetime import datetime, timedelta, timezone
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import attrs

from ._errors import AmbiguousMatch, ClaimRefused, InvalidInput
from ._model import (
    Assignment,
    AssignmentStatus,
    Event,
    EventKind,
    HeldEnd,
    Identity,
    Worker,
    WorkerStatus,
    direct_constructor,
    evolve_valid,
    evolve_valid_worker,
)
from ._protocol import InsertAssignment, InsertWorker, UpdateAssignment, UpdateWorker, Write

if TYPE_CHECKING:
    from ._policy import Policy

__all__ = [
    "DEFAULT_RULES",
    "LEGACY_RULES",
    "NEW_WORKER",
    "NOTE_RULES",
    "Alert",
    "Candidate",
    "Criterion",
    "Decision",
    "Effect",
    "Guard",
    "OnAmbiguous",
    "OrphanCondition",
    "Outcome",
    "Query",
    "Row",
    "Rule",
    "RuleReport",
    "Rules",
    "Verdict",
    "choose",
    "decide",
]

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FINISHED = "finished"
FATAL_ERROR = "fatal_error"
NEW_WORKER = "(new)"
"""The placeholder id :func:`~workermatch.plan` gives a worker it would create."""


# ============================================================================================
# 1. Queries


@attrs.frozen
class Query:
    """One read the decision needs: ``method`` of the repository, called with ``args``."""

    method: str
    args: tuple[Any, ...]


Ask: TypeAlias = Generator[Query, Any, T]
"""A computation that yields queries and returns a ``T``."""

_query = direct_constructor(Query)


def _get_worker(worker_id: str) -> Ask[Worker | None]:
    return (yield _query("get_worker", (worker_id,)))  # type: ignore[no-any-return]


def _get_assignment(assignment_id: str) -> Ask[Assignment | None]:
    return (yield _query("get_assignment", (assignment_id,)))  # type: ignore[no-any-return]


def _by_ip(ip: str, seen_since: datetime) -> Ask[list[Worker]]:
    return list((yield _query("live_workers_by_ip", (ip, seen_since))))


def _by_hostname(hostname: str, seen_since: datetime) -> Ask[list[Worker]]:
    return list((yield _query("live_workers_by_hostname", (hostname, seen_since))))


def _recent_running(created_since: datetime, seen_since: datetime) -> Ask[list[Worker]]:
    return list((yield _query("recent_running_workers", (created_since, seen_since))))


def _stale_running(ip: str, hostname: str | None, seen_before: datetime) -> Ask[list[Worker]]:
    return list((yield _query("stale_running_workers", (ip, hostname, seen_before))))


def _running_of(worker_ids: Sequence[str]) -> Ask[list[Assignment]]:
    if not worker_ids:
        return []
    return list((yield _query("running_assignments_of", (tuple(worker_ids),))))


# ============================================================================================
# 2. The rule table: its vocabulary, then the rows' candidate queries, then the three tables.


class Rule(str, enum.Enum):
    """The rules of the priority chain, and the ``rule`` a decision reports."""

    WORKER_ID = "worker_id"
    """Strong hint: the request names a worker id handed out earlier."""
    ASSIGNMENT = "assignment"
    """Strong hint: the request names the RUNNING assignment it works on."""
    EXACT_IP = "exact_ip"
    """A live worker with the request's IP."""
    RECENT_ORPHAN = "recent_orphan"
    """A recently created worker with a RUNNING assignment that nothing else feeds."""
    HOSTNAME = "hostname"
    """A live worker with the request's hostname, seen recently."""
    CREATED = "created"
    """No rule matched: a new worker is created."""

    def __repr__(self) -> str:
        return f"Rule.{self.name}"


class Criterion(str, enum.Enum):
    """One step of the order that ranks several candidates of one rule (best first).

    The first four are *evidence*: candidates that differ on one of them can be told apart.
    The others only break ties: candidates that differ on nothing else are a doubt.
    """

    LIVE_SESSION = "live_session"
    """A candidate whose session runs on ranks above one whose session ended (or whose end is
    held for want of evidence while its machine's heartbeats stopped)."""
    HOSTNAME_AGREES = "hostname_agrees"
    """A candidate whose hostname equals the request's ranks above a claim worker known by that
    hostname (its claim came right after a session of that hostname ended), which ranks above
    one whose hostname is unknown."""
    HEARTBEATS = "heartbeats"
    """A candidate whose machine's heartbeats (requests carrying its hostname) still arrive
    ranks above one whose heartbeats stopped more than two quiet periods ago."""
    HOLDS_RUNNING = "holds_running"
    """A candidate holding a RUNNING assignment ranks above one that does not."""
    RECENTLY_SEEN = "recently_seen"
    """Tie-break: the most recently seen candidate ranks first."""
    NEAREST_IP = "nearest_ip"
    """Tie-break: the candidate whose IP shares the longest prefix with the request's ranks
    first."""
    NEWEST = "newest"
    """Tie-break: the most recently created candidate ranks first."""
    OLDEST = "oldest"
    """Tie-break: the earliest created candidate ranks first ("first match wins")."""

    @property
    def is_evidence(self) -> bool:
        """Whether candidates that differ on this criterion can be told apart."""
        return self in _EVIDENCE

    def __repr__(self) -> str:
        return f"Criterion.{self.name}"


_EVIDENCE = frozenset(
    {
        Criterion.LIVE_SESSION,
        Criterion.HOSTNAME_AGREES,
        Criterion.HEARTBEATS,
        Criterion.HOLDS_RUNNING,
    }
)


class OrphanCondition(str, enum.Enum):
    """When a recent worker with a RUNNING assignment counts as an orphan (rule 3)."""

    NO_HOSTNAME_OR_QUIET = "no_hostname_or_quiet"
    """No hostname yet, or quiet for ``quiet_period`` (what the real system kept)."""
    QUIET = "quiet"
    """It has been quiet for ``quiet_period`` (the design note as written)."""
    ANY = "any"
    """Any recent worker with a RUNNING assignment (the pre-note gui-update endpoint)."""

    def __repr__(self) -> str:
        return f"OrphanCondition.{self.name}"


class OnAmbiguous(str, enum.Enum):
    """What to do when the evidence cannot separate the winning rule's candidates."""

    TIE_BREAK = "tie_break"
    """Place the request on the best-ranked candidate (flagged ``ambiguous``, the worker
    contested); irreversible writes still wait for evidence where the table guards them."""
    SKIP_RULE = "skip_rule"
    """Pass over the rule as if it had found nothing (prefer a duplicate to a guess)."""
    REFUSE = "refuse"
    """Raise :class:`~workermatch.AmbiguousMatch`; nothing is written."""

    def __repr__(self) -> str:
        return f"OnAmbiguous.{self.name}"


class Guard(str, enum.Enum):
    """What keeps one machine's request off another machine's or session's record."""

    HOSTNAME_VETO = "hostname_veto"
    """A worker whose hostname is known never matches a request with a different hostname."""
    SESSIONS = "sessions"
    """A claim never joins a worker that holds or held another assignment, a repeated claim is
    idempotent, and a claim of an assignment RUNNING on another live worker (or finished) is
    refused.  Without it the last claimer wins."""
    EVIDENCE = "evidence"
    """No irreversible write rests on a tie-break: a session end in doubt is held until
    evidence arrives, a claim in doubt starts its own worker, a transfer in doubt waits."""

    def __repr__(self) -> str:
        return f"Guard.{self.name}"


class Effect(str, enum.Enum):
    """What a request does beyond its placement."""

    TRANSFER_ON_CREATE = "transfer_on_create"
    """A worker created by a request other than a claim takes the RUNNING assignments of stale
    workers with its IP or hostname (a machine back from an outage gets its work back)."""
    TRANSFER_ON_CLAIM = "transfer_on_claim"
    """The same when a claim creates the worker (the design note's chain serves every route)."""
    TRANSFER_ON_HOSTNAME = "transfer_on_hostname"
    """A worker that learns its hostname takes the RUNNING assignments of stale workers with
    that hostname: after an outage on a new address the work follows the machine as soon as it
    identifies itself, whatever kind its first request was."""
    RECONCILE = "reconcile"
    """A duplicate revealed by its hostname is merged into the worker it duplicates (a mid-run
    address change first seen on an update; the start-up race)."""
    KEEP_ALIVE = "keep_alive"
    """A request without hostname placed in doubt at a shared address keeps the address's other
    hostname-less candidates alive (at most once per quiet period): it proves that one of them
    lives, not which."""

    def __repr__(self) -> str:
        return f"Effect.{self.name}"


@attrs.define  # not frozen: made for every decision, and never changed
class _Ctx:
    identity: Identity
    now: datetime
    policy: Policy
    claiming: str | None
    successors: frozenset[str] = frozenset()
    """Claim workers without hostname that the request's hostname is known by: each was made
    by a claim that came right after a session of that hostname ended (batch mode)."""

    @property
    def rules(self) -> Rules:
        return self.policy.rules

    @property
    def live_since(self) -> datetime:
        return self.now - self.policy.stale_after

    def guarded(self, guard: Guard) -> bool:
        return guard in self.policy.rules.guards

    def does(self, effect: Effect) -> bool:
        return effect in self.policy.rules.effects


@attrs.define  # not frozen: made for every rule, and never changed
class _Found:
    """A row's answer: its candidates, those it rejected itself, and what it looked at."""

    workers: list[Worker]
    rejected: list[Candidate]
    detail: str
    revive: bool = False
    """The candidates may be stale: a hint brings its worker back."""


_Find: TypeAlias = Callable[["_Ctx", "Row"], "str | Ask[_Found | str]"]
"""A row's candidate query: why the row does not apply (without a read), or the reads."""


def _find_worker_id(ctx: _Ctx, row: Row) -> str | Ask[_Found | str]:
    hint = ctx.identity.worker_id
    if hint is None:
        return "the request carries no worker_id hint"
    return _find_hinted_worker(ctx, hint)


def _find_hinted_worker(ctx: _Ctx, hint: str) -> Ask[_Found | str]:
    worker = yield from _get_worker(hint)
    hops = 0
    while worker is not None and worker.merged_into is not None and hops < 16:
        hops += 1
        worker = yield from _get_worker(worker.merged_into)
    detail = f"the hint names worker {hint}"
    if worker is None:
        reject = Candidate(worker_id=hint, verdict=Verdict.REJECTED, reason="no such worker")
        return _Found(workers=[], rejected=[reject], detail=detail)
    if worker.id != hint:
        detail += f", merged into {worker.id}"
    return (yield from _hinted(ctx, worker, detail))


def _find_assignment(ctx: _Ctx, row: Row) -> str | Ask[_Found | str]:
    hint = ctx.identity.assignment_id
    if hint is None:
        return "the request carries no assignment hint"
    return _find_hinted_assignment(ctx, hint)


def _find_hinted_assignment(ctx: _Ctx, hint: str) -> Ask[_Found | str]:
    detail = f"the hint names assignment {hint}"
    assignment = yield from _get_assignment(hint)
    if assignment is None:
        return _Found(workers=[], rejected=[], detail=detail + ", which does not exist")
    if assignment.status.is_final and assignment.worker_id is not None:
        # A trailing message of a session that just ended: its worker answers it within the
        # grace for trailing messages (and is ineligible after it).
        worker = yield from _get_worker(assignment.worker_id)
        found = [worker] if worker is not None and worker.ended_at is not None else []
        return _Found(
            workers=found,
            rejected=[],
            detail=detail
            + f", which is {assignment.status.value}"
            + (f" on {worker.id}, whose session ended" if found and worker else ""),
        )
    if assignment.status is not AssignmentStatus.RUNNING:
        return _Found(
            workers=[], rejected=[], detail=detail + f", which is {assignment.status.value}"
        )
    if assignment.worker_id is None:
        return _Found(workers=[], rejected=[], detail=detail + ", held by no worker")
    worker = yield from _get_worker(assignment.worker_id)
    if worker is None:
        return _Found(
            workers=[],
            rejected=[],
            detail=detail + f", whose holder {assignment.worker_id} does not exist",
        )
    return (yield from _hinted(ctx, worker, detail + f", RUNNING on {worker.id}"))


def _hinted(ctx: _Ctx, worker: Worker, detail: str) -> Ask[_Found]:
    """A hint's worker: taken even when stale, as long as its session has not ended."""
    stale = worker.is_stale_at(ctx.now, ctx.policy.stale_after)
    if stale and worker.ended_at is not None:
        return _Found(workers=[], rejected=[_stale(worker, ctx)], detail=detail)
    if stale and worker.merged_into is None:
        detail += "; it went stale, and the hint brings it back"
    return _Found(workers=[worker], rejected=[], detail=detail, revive=stale)
    yield  # pragma: no cover - makes this a generator


def _find_exact_ip(ctx: _Ctx, row: Row) -> Ask[_Found | str]:
    found = yield from _by_ip(ctx.identity.ip, ctx.live_since)
    host = ctx.identity.hostname
    detail = f"live workers with ip {ctx.identity.ip}"
    if host is None or not found or found[0].hostname == host:  # the hot row
        return _Found(found, [], detail)
    return (yield from _exact_ip_heir(ctx, found, host, detail))


def _exact_ip_heir(ctx: _Ctx, found: list[Worker], host: str, detail: str) -> Ask[_Found]:
    """The exact-IP row for a request whose hostname no worker at its address has (yet)."""
    if (
        any(w.hostname == host for w in found)
        or ctx.claiming is not None
        or Criterion.HOSTNAME_AGREES not in ctx.rules.ranking
    ):
        return _Found(found, [], detail)
    # A heartbeat whose machine's claim waits elsewhere: addresses are handed on (a VPN pool),
    # and the claim worker that came right after its last session ended is known by its name.
    orphans = [
        w
        for w in (yield from _recent_running(ctx.now - ctx.policy.orphan_window, ctx.live_since))
        if w.hostname is None and w.merged_into is None and w.held_end is None
    ]
    ctx.successors = yield from _successors(ctx, host, orphans)
    if len(ctx.successors) == 1 and all(w.id not in ctx.successors for w in found):
        heir = next(w for w in orphans if w.id in ctx.successors)
        found = [*found, heir]
        detail += (
            f", and {heir.id}, the claim made right after hostname {host}'s last session ended"
        )
    return _Found(found, [], detail)


def _successors(ctx: _Ctx, host: str, workers: list[Worker]) -> Ask[frozenset[str]]:
    """The claim workers among ``workers`` that hostname ``host`` is known by: made without
    hostname by a claim that came within ``ended_grace`` after a session of ``host`` ended
    (a batch client claims its next assignment right after its session's end).  Empty when the
    hostname is shared (clones: another machine's end proves nothing)."""
    policy, now = ctx.policy, ctx.now
    follow = policy.ended_grace or policy.quiet_period
    named = yield from _by_hostname(host, now - policy.orphan_window - follow)
    ends = [w.ended_at for w in named if w.ended_at is not None]
    if not ends or len(ends) + 1 < len(named):
        return frozenset()
    return frozenset(
        w.id
        for w in workers
        if w.hostname is None
        and w.ended_at is None
        and any(w.created_at - follow <= t <= w.created_at for t in ends)
    )


def _find_recent_orphan(ctx: _Ctx, row: Row) -> Ask[_Found | str]:
    policy, now = ctx.policy, ctx.now
    if ctx.claiming is not None and ctx.guarded(Guard.SESSIONS):
        return "a claim starts its own session; it never adopts another claim's worker"
    found: list[Worker] = []
    rejected: list[Candidate] = []
    for w in (yield from _recent_running(now - policy.orphan_window, ctx.live_since)):
        quiet = now - w.last_seen > policy.quiet_period
        cond = row.orphans
        if (
            cond is OrphanCondition.ANY
            or quiet
            or (cond is OrphanCondition.NO_HOSTNAME_OR_QUIET and w.hostname is None)
        ):
            found.append(w)
        else:
            why = "has a hostname and " if cond is OrphanCondition.NO_HOSTNAME_OR_QUIET else ""
            rejected.append(
                Candidate(
                    worker_id=w.id,
                    verdict=Verdict.REJECTED,
                    reason=f"{why}was seen {_age(now, w.last_seen)} ago, within the quiet "
                    f"period of {_span(policy.quiet_period)}: another live stream feeds it",
                )
            )
    detail = f"workers with a RUNNING assignment created within {_span(policy.orphan_window)}"
    if not found or ctx.claiming is not None or not row.weighs_streams:
        return _Found(workers=found, rejected=rejected, detail=detail)
    # The live running streams weigh against an orphan: after an address change, the request may
    # come from one of those machines rather than from the orphan's.
    host = ctx.identity.hostname
    if host is not None:
        suspect = yield from _rename_suspect(ctx, host)
        if suspect is not None:
            why = (
                f"the request may come from {suspect.id}'s machine renamed: {host} is a new "
                f"name, and {suspect.id}'s heartbeat ({suspect.hostname}) was due now at this "
                f"address, which fed it {_age(now, suspect.last_seen)} ago (a duplicate is "
                "reconciled a heartbeat later, a hijack is not)"
            )
            rejected += [
                Candidate(worker_id=w.id, verdict=Verdict.REJECTED, reason=why) for w in found
            ]
            return _Found(workers=[], rejected=rejected, detail=detail)
        # A heartbeat from a new address: its own machine's live stream, when exactly one live
        # running worker of an unended session has its hostname and its machine's heartbeat is
        # due now (fed lately, or silent for whole heartbeat periods: a blip), competes with the
        # orphans (and its hostname agrees).  Two such workers (clones) prove nothing.
        own = [
            w
            for w in (yield from _by_hostname(host, ctx.live_since))
            if w.ended_at is None
            and w.status is WorkerStatus.RUNNING
            and (
                w.last_seen >= now - policy.quiet_period
                or (w.held_end is None and _heartbeat_due(w, now, policy.quiet_period))
            )
        ]
        eligible = [w for w in found if _ineligible(w, ctx) is None]
        if (
            len(own) == 1
            and eligible
            and all(w.id != own[0].id for w in found)
            # its end is held and a claim came right after it: the machine's next session
            and not (own[0].held_end is not None and ctx.successors)
            # its machine's next heartbeat is due: one sooner comes from another machine
            and (
                own[0].hostname_seen is None
                or now - own[0].hostname_seen >= policy.quiet_period - _HEARTBEAT_SLACK
            )
        ):
            found.append(own[0])
            rejected = [c for c in rejected if c.worker_id != own[0].id]
            fed = own[0].last_seen >= now - policy.quiet_period
            detail += (
                f", and {own[0].id}, the one live worker of hostname {host}, "
                + (
                    f"fed within {_span(policy.quiet_period)}"
                    if fed
                    else f"whose heartbeat was due now after {_age(now, own[0].last_seen)} of "
                    "silence"
                )
                + ": its machine may have changed address"
            )
        return _Found(workers=found, rejected=rejected, detail=detail)
    # A request without hostname: while another machine's stream (a worker with a hostname and
    # a RUNNING assignment) was fed within the quiet period, the request may be that machine's
    # first one from a new address.  A duplicate can be reconciled later; a hijack cannot.
    rivals = yield from _fed_streams(ctx, {w.id for w in found})
    if not rivals:
        return _Found(workers=found, rejected=rejected, detail=detail)
    names = ", ".join(rivals[:3]) + (" and others" if len(rivals) > 3 else "")
    why = (
        f"the request carries no hostname and {names} "
        f"{'was' if len(rivals) == 1 else 'were'} fed within the quiet period of "
        f"{_span(policy.quiet_period)}: the request may come from "
        f"{'that machine' if len(rivals) == 1 else 'one of those machines'} after an address "
        "change (a duplicate is reconciled later, a hijack is not)"
    )
    rejected += [Candidate(worker_id=w.id, verdict=Verdict.REJECTED, reason=why) for w in found]
    return _Found(workers=[], rejected=rejected, detail=detail)


def _rename_suspect(ctx: _Ctx, host: str) -> Ask[Worker | None]:
    """The one running worker that a heartbeat with the new name ``host`` may be a rename of:
    fed from the request's address within the quiet period, with another hostname whose next
    heartbeat was due now; ``None`` when the name is known or no single worker fits."""
    policy, now = ctx.policy, ctx.now
    fed = [
        w
        for w in (
            yield from _by_ip(ctx.identity.ip, max(ctx.live_since, now - policy.quiet_period))
        )
        if w.hostname not in (None, host)
        and w.ended_at is None
        and w.held_end is None
        and w.status is WorkerStatus.RUNNING
        and w.hostname_seen is not None
        and abs(now - w.hostname_seen - policy.quiet_period) <= _HEARTBEAT_SLACK
    ]
    if len(fed) != 1 or (yield from _by_hostname(host, ctx.live_since)):
        return None
    return fed[0]


# How far back, by creation time, _fed_streams looks in turn: it needs one stream, not all, and
# a busy fleet has one among its recent claims, so the search usually stops at the first window.
_STREAM_WINDOWS = (timedelta(hours=1), timedelta(days=1), timedelta(days=30))


def _fed_streams(ctx: _Ctx, orphans: set[str]) -> Ask[list[str]]:
    """Live workers with a hostname and a RUNNING assignment of an unended session, fed within
    the quiet period: machines that could send a request without hostname from a new address.
    Those of the newest creation-time window that has any (sorted), or ``[]``."""
    seen_since = max(ctx.live_since, ctx.now - ctx.policy.quiet_period)
    windows = {ctx.now - ctx.policy.orphan_window, *(ctx.now - w for w in _STREAM_WINDOWS)}
    for created_since in [*sorted(windows, reverse=True), _EPOCH]:
        found = sorted(
            w.id
            for w in (yield from _recent_running(created_since, seen_since))
            if w.id not in orphans and w.hostname is not None and w.ended_at is None
        )
        if found:
            return found
    return []


def _find_hostname(ctx: _Ctx, row: Row) -> Ask[_Found | str]:
    hostname = ctx.identity.hostname
    if hostname is None:
        return "the request carries no hostname"
    window = ctx.policy.hostname_window
    found = yield from _by_hostname(hostname, max(ctx.live_since, ctx.now - window))
    return _Found(
        workers=found,
        rejected=[],
        detail=f"live workers with hostname {hostname} seen within {_span(window)}",
    )


_FINDERS: dict[Rule, _Find] = {
    Rule.WORKER_ID: _find_worker_id,
    Rule.ASSIGNMENT: _find_assignment,
    Rule.EXACT_IP: _find_exact_ip,
    Rule.RECENT_ORPHAN: _find_recent_orphan,
    Rule.HOSTNAME: _find_hostname,
}

_ALL_KINDS = frozenset(EventKind)


def _members(enum_cls: type[E], value: object, field: str) -> list[E]:
    """The members named by ``value`` (a sequence of members or their values)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInput(f"{field} must be a collection", field=field, value=value)
    try:
        return [enum_cls(v) for v in value]
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}", field=field, value=value) from None


def _c_kinds(value: object) -> frozenset[EventKind]:
    kinds = frozenset(_members(EventKind, value, "kinds"))
    if not kinds:
        raise InvalidInput("a row serves at least one event kind", field="kinds", value=value)
    return kinds


def _c_rule(value: object) -> Rule:
    rule = _members(Rule, [value], "rule")[0]
    if rule is Rule.CREATED:
        raise InvalidInput(
            "'created' is not a row: every chain ends by creating a worker",
            field="rule",
            value=value,
        )
    return rule


def _c_orphans(value: object) -> OrphanCondition:
    return _members(OrphanCondition, [value], "orphans")[0]


def _c_rows(value: object) -> tuple[Row, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInput("rows must be a sequence of Row", field="rows", value=value)
    rows = tuple(value)
    if not all(isinstance(r, Row) for r in rows):
        raise InvalidInput("rows must be a sequence of Row", field="rows", value=value)
    if len({r.rule for r in rows}) != len(rows):
        raise InvalidInput("a table lists each rule at most once", field="rows", value=value)
    return rows


def _c_ranking(value: object) -> tuple[Criterion, ...]:
    ranking = tuple(_members(Criterion, value, "ranking"))
    if not ranking or len(set(ranking)) != len(ranking):
        raise InvalidInput(
            "ranking lists one or more criteria, each once", field="ranking", value=value
        )
    return ranking


def _c_guards(value: object) -> frozenset[Guard]:
    return frozenset(_members(Guard, value, "guards"))


def _c_effects(value: object) -> frozenset[Effect]:
    return frozenset(_members(Effect, value, "effects"))


def _check_flag(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidInput(f"{attribute.name} must be a bool", field=attribute.name, value=value)


def _check_name(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInput("a table's name is a non-empty string", field="name", value=value)


@attrs.frozen(kw_only=True)
class Row:
    """One row of a rule table: a rule, the event kinds it serves, and how it finds and weighs
    its candidates.  Taking a candidate updates its address (and its hostname when unknown);
    a hint row's candidate comes back from staleness."""

    rule: Rule = attrs.field(converter=_c_rule)
    kinds: frozenset[EventKind] = attrs.field(default=_ALL_KINDS, converter=_c_kinds)
    orphans: OrphanCondition = attrs.field(
        default=OrphanCondition.NO_HOSTNAME_OR_QUIET, converter=_c_orphans
    )
    """Rule 3 only: which recent workers with a RUNNING assignment count as orphans."""
    weighs_streams: bool = attrs.field(default=False, validator=_check_flag)
    """Rule 3 only: weigh the live running streams against the orphans (a heartbeat's own
    machine may have moved; a request without hostname may come from a machine that moved)."""

    @property
    def asks(self) -> str:
        """What the row's candidate query asks, in words (the docs' table is made from it)."""
        return _ASKS[self.rule]

    def find(self, ctx: _Ctx) -> str | Ask[_Found | str]:
        return _FINDERS[self.rule](ctx, self)


_ASKS = {
    Rule.WORKER_ID: "the worker the hint names (following merges), stale or not, unless its "
    "session ended",
    Rule.ASSIGNMENT: "the holder of the RUNNING assignment the hint names, stale or not",
    Rule.EXACT_IP: "live workers with the request's IP",
    Rule.RECENT_ORPHAN: "live workers created within orphan_window that hold a RUNNING "
    "assignment and count as orphans",
    Rule.HOSTNAME: "live workers with the request's hostname seen within hostname_window",
}


@attrs.frozen(kw_only=True)
class Rules:
    """A rule table: the rows of the chain in order, the ranking of one rule's candidates, the
    guards and the effects.  ``workermatch rules`` and ``docs/how-it-decides.md`` print it."""

    name: str = attrs.field(validator=_check_name)
    rows: tuple[Row, ...] = attrs.field(converter=_c_rows)
    ranking: tuple[Criterion, ...] = attrs.field(converter=_c_ranking)
    guards: frozenset[Guard] = attrs.field(default=frozenset(), converter=_c_guards)
    effects: frozenset[Effect] = attrs.field(default=frozenset(), converter=_c_effects)
    _serving: dict[EventKind, tuple[Row, ...]] = attrs.field(init=False, eq=False, repr=False)
    """The rows that serve each event kind, made once."""

    def __attrs_post_init__(self) -> None:
        serving = {k: tuple(r for r in self.rows if k in r.kinds) for k in EventKind}
        object.__setattr__(self, "_serving", serving)

    def chain_for(self, kind: EventKind) -> tuple[Rule, ...]:
        """The rules a request of ``kind`` goes through, in order (creating a worker ends it)."""
        return tuple(r.rule for r in self._serving[kind])

    def rows_for(self, kind: EventKind) -> tuple[Row, ...]:
        """The rows a request of ``kind`` goes through, in order."""
        return self._serving[kind]

    def row(self, rule: Rule) -> Row:
        """The row of ``rule``."""
        for r in self.rows:
            if r.rule is rule:
                return r
        raise KeyError(rule)

    def to_markdown(self) -> str:
        """The table as the docs show it (``workermatch rules`` prints it): its rows in order,
        then the ranking, the guards and the effects."""
        kinds = [k.value for k in EventKind]
        lines = [
            f"Rule table `{self.name}`: every request goes down the rows that serve its kind; "
            "the first with an eligible candidate places it, else a worker is created.",
            "",
            "| # | rule | serves | candidates | weighs |",
            "| --- | --- | --- | --- | --- |",
        ]
        for n, r in enumerate(self.rows, start=1):
            served = (
                "every kind"
                if r.kinds == _ALL_KINDS
                else ", ".join(k for k in kinds if EventKind(k) in r.kinds)
            )
            weighs = ""
            if r.rule is Rule.RECENT_ORPHAN:
                weighs = f"orphans: {r.orphans.value}"
                if r.weighs_streams:
                    weighs += "; the live running streams"
            lines.append(f"| {n} | `{r.rule.value}` | {served} | {r.asks} | {weighs} |")
        lines.append(f"| {len(self.rows) + 1} | `created` | every kind | none matched | |")
        lines += [
            "",
            "Ranking (evidence first, then tie-break): "
            + ", ".join(
                f"`{c.value}`" + ("" if c.is_evidence else " (tie-break)") for c in self.ranking
            )
            + ", worker id.",
            "",
            "Guards: "
            + (", ".join(f"`{g.value}`" for g in Guard if g in self.guards) or "none")
            + ".",
            "",
            "Effects: "
            + (", ".join(f"`{e.value}`" for e in Effect if e in self.effects) or "none")
            + ".",
        ]
        return "\n".join(lines) + "\n"


DEFAULT_RULES = Rules(
    name="default",
    rows=(
        Row(rule=Rule.WORKER_ID),
        Row(rule=Rule.ASSIGNMENT),
        Row(rule=Rule.EXACT_IP),
        Row(rule=Rule.RECENT_ORPHAN, weighs_streams=True),
        Row(rule=Rule.HOSTNAME),
    ),
    ranking=(
        # A live session outranks an ended one before hostnames are compared: the next batch
        # session's first heartbeat must join the new session's claim worker, not the ended
        # worker whose hostname is already known.
        Criterion.LIVE_SESSION,
        Criterion.HOSTNAME_AGREES,
        Criterion.HEARTBEATS,
        Criterion.HOLDS_RUNNING,
        # Among workers that cannot be told apart, first come, first served.
        Criterion.OLDEST,
    ),
    guards=frozenset(Guard),
    effects=frozenset(Effect) - {Effect.TRANSFER_ON_CLAIM},
)
"""The library's table: hints first, then exact IP, recent orphan, hostname; every guard."""

NOTE_RULES = Rules(
    name="note",
    rows=(
        Row(rule=Rule.EXACT_IP),
        Row(rule=Rule.RECENT_ORPHAN, orphans=OrphanCondition.QUIET),
        Row(rule=Rule.HOSTNAME),
    ),
    ranking=(Criterion.OLDEST,),
    effects=frozenset({Effect.TRANSFER_ON_CREATE, Effect.TRANSFER_ON_CLAIM}),
)
"""The design note to the letter: exact IP, a recent worker quiet for 30 s, hostname, create
and transfer, on every route (the claim's included); first match wins; no guard."""

LEGACY_RULES = Rules(
    name="legacy",
    rows=(
        Row(rule=Rule.EXACT_IP),
        Row(rule=Rule.RECENT_ORPHAN, kinds={EventKind.GUI_UPDATE}, orphans=OrphanCondition.ANY),
        Row(rule=Rule.HOSTNAME, kinds={EventKind.HEARTBEAT}),
    ),
    ranking=(Criterion.OLDEST,),
    effects=frozenset({Effect.TRANSFER_ON_CREATE, Effect.TRANSFER_ON_CLAIM}),
)
"""The per-endpoint code before the note's fix: every route matches by IP or creates;
heartbeat falls back on the hostname, gui-update on any recent worker holding a RUNNING
assignment; a new worker takes the RUNNING assignments of stale workers with its IP or
hostname; no guard (the last claimer wins)."""


# ============================================================================================
# 3. Evidence and doubt


class Verdict(str, enum.Enum):
    """What became of one candidate."""

    TAKEN = "taken"
    """The request resolves to this worker."""
    OUTRANKED = "outranked"
    """A candidate of the winning rule that ranked lower than the one taken."""
    REJECTED = "rejected"
    """Found by the rule's query, but not eligible (the reason says why)."""
    PASSED_OVER = "passed_over"
    """Eligible, but the rule was passed over as ambiguous (``OnAmbiguous.SKIP_RULE``)."""

    def __repr__(self) -> str:
        return f"Verdict.{self.name}"


@attrs.frozen(kw_only=True)
class Candidate:
    """One worker a rule looked at, and what became of it."""

    worker_id: str
    verdict: Verdict
    reason: str


@attrs.frozen(kw_only=True)
class RuleReport:
    """What one rule of the chain saw."""

    rule: Rule
    outcome: str
    """One of ``"matched"``, ``"no candidates"``, ``"not applicable"``, ``"passed over"``,
    ``"not reached"``."""
    detail: str
    candidates: tuple[Candidate, ...] = ()


def _stale(worker: Worker, ctx: _Ctx) -> Candidate:
    if worker.stale:
        why = "is flagged stale"
    elif worker.merged_into is not None:
        why = f"was merged into {worker.merged_into}"
    else:
        why = f"was last seen {_age(ctx.now, worker.last_seen)} ago, past stale_after"
    if worker.ended_at is not None:
        why += ", and its session ended"
    return Candidate(worker_id=worker.id, verdict=Verdict.REJECTED, reason=why)


def _ineligible(worker: Worker, ctx: _Ctx) -> str | None:
    """Why ``worker`` cannot take the request at all, or ``None``."""
    policy, identity = ctx.policy, ctx.identity
    grace = policy.ended_grace
    if worker.ended_at is not None and grace is not None and ctx.now - worker.ended_at > grace:
        return (
            f"its session ended {_age(ctx.now, worker.ended_at)} ago, past the grace of "
            f"{_span(grace)} for trailing messages"
        )
    if (
        identity.hostname is not None
        and worker.hostname is not None
        and worker.hostname != identity.hostname
        and ctx.guarded(Guard.HOSTNAME_VETO)
    ):
        return f"hostname veto: its hostname {worker.hostname} differs from {identity.hostname}"
    if ctx.claiming is not None and ctx.guarded(Guard.SESSIONS):
        if worker.assignment_id is not None and worker.assignment_id != ctx.claiming:
            return (
                f"session rule: it runs or ran assignment {worker.assignment_id}, "
                "so a claim starts a new worker"
            )
        if worker.ended_at is not None:
            return "session rule: its session ended, so a claim starts a new worker"
    return None


def _heartbeats_stopped(w: Worker, ctx: _Ctx) -> bool:
    return (
        w.hostname is not None
        and w.hostname_seen is not None
        and ctx.now - w.hostname_seen > 2 * ctx.policy.quiet_period
    )


# How late a heartbeat may be and still continue its stream (the real client's heartbeats come
# every 30 s, the quiet period).
_HEARTBEAT_SLACK = timedelta(seconds=5)


def _heartbeat_due(w: Worker, now: datetime, period: timedelta) -> bool:
    """Whether ``w``'s machine's heartbeat is due at ``now``: a whole number of heartbeat
    periods (at least one) after its last, within the slack.  A machine silenced by a network
    blip keeps its heartbeat timer; another machine's heartbeats have their own phase."""
    if w.hostname_seen is None or now - w.hostname_seen < period - _HEARTBEAT_SLACK:
        return False
    off = (now - w.hostname_seen) % period
    return off <= _HEARTBEAT_SLACK or period - off <= _HEARTBEAT_SLACK


def _may_have_ended(w: Worker, ctx: _Ctx) -> bool:
    """Whether ``w``'s end is held and its machine's heartbeats did not go on across it: its
    last heartbeat came before the end was asked, and the next one is overdue."""
    held, seen = w.held_end, w.hostname_seen
    if held is None or seen is None or seen >= held.at:
        return False
    return ctx.now - seen > ctx.policy.quiet_period + _HEARTBEAT_SLACK


def _ip_prefix(a: str, b: str) -> int:
    x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    if x.version != y.version:
        return 0
    return x.max_prefixlen - (int(x) ^ int(y)).bit_length()


_Pair: TypeAlias = tuple[Worker, tuple[Any, ...]]
_Ranked: TypeAlias = list[_Pair]


def _key_fn(criterion: Criterion, ctx: _Ctx) -> Callable[[Worker], Any]:
    """A worker's place on ``criterion`` (smaller ranks first), as a function of the worker with
    its constants computed once: a rule at an address that many machines share ranks each of
    them."""
    if criterion is Criterion.LIVE_SESSION:
        return lambda w: (
            0 if w.ended_at is None and (w.held_end is None or not _may_have_ended(w, ctx)) else 1
        )
    if criterion is Criterion.HOSTNAME_AGREES:
        host, successors = ctx.identity.hostname, ctx.successors
        if host is None:
            return lambda w: 2
        return lambda w: 0 if w.hostname == host else 1 if w.id in successors else 2
    if criterion is Criterion.HEARTBEATS:
        # _heartbeats_stopped: now - hostname_seen > 2 * quiet_period
        cutoff = ctx.now - 2 * ctx.policy.quiet_period
        return lambda w: (
            1
            if w.hostname is not None and w.hostname_seen is not None and w.hostname_seen < cutoff
            else 0
        )
    if criterion is Criterion.HOLDS_RUNNING:
        return lambda w: 0 if w.status is WorkerStatus.RUNNING else 1
    if criterion is Criterion.RECENTLY_SEEN:
        return lambda w: _EPOCH - w.last_seen
    if criterion is Criterion.NEAREST_IP:
        ip = ctx.identity.ip
        return lambda w: -_ip_prefix(w.ip, ip)
    if criterion is Criterion.NEWEST:
        return lambda w: _EPOCH - w.created_at
    return attrgetter("created_at")  # Criterion.OLDEST: earliest first


def _rank(workers: list[Worker], ctx: _Ctx) -> _Ranked:
    """Several candidates, best first, each with its key (``choose`` does not rank one)."""
    fns = [_key_fn(c, ctx) for c in ctx.rules.ranking]
    if len(fns) == 5:  # the default table's ranking: one tuple per candidate, made at once
        a, b, c, d, e = fns
        keyed = [(w, (a(w), b(w), c(w), d(w), e(w), w.id)) for w in workers]
    else:
        keyed = [(w, (*[f(w) for f in fns], w.id)) for w in workers]
    keyed.sort(key=itemgetter(1))
    return keyed


def _doubt(ranked: _Ranked, ctx: _Ctx) -> list[Worker]:
    """The candidates the evidence cannot separate from the best one (the best included)."""
    ranking = ctx.rules.ranking
    evidence = [i for i, c in enumerate(ranking) if c.is_evidence]
    if not evidence:
        return [w for w, _ in ranked]
    part = itemgetter(*evidence)
    best = part(ranked[0][1])
    return [w for w, key in ranked if part(key) == best]


def _why_outranked(key: tuple[Any, ...], best: tuple[Any, ...], winner: str, ctx: _Ctx) -> str:
    for criterion, mine, theirs in zip(ctx.rules.ranking, key, best, strict=False):
        if mine != theirs:
            if criterion.is_evidence:
                return f"ranked below {winner} on {criterion.value}"
            return f"could not be told apart from {winner}; ranked below it on {criterion.value}"
    return f"could not be told apart from {winner}; ranked below it on worker id"


# ============================================================================================
# 4. Placement


@attrs.frozen(kw_only=True, repr=False)
class Decision:
    """Which worker a request belongs to, and why.

    ``worker`` is the matched worker as read, or ``None`` when a new worker must be created
    (``rule`` is then :attr:`Rule.CREATED`).  ``ambiguous`` says whether the evidence could not
    separate the winning rule's best candidates; ``doubt`` lists them (the winner first), and is
    empty otherwise.  ``reports`` holds one :class:`RuleReport` per rule of the chain, in order,
    with every candidate and why it was taken or passed over.
    """

    identity: Identity
    now: datetime
    policy: str
    rule: Rule
    worker: Worker | None
    ambiguous: bool
    _reports: tuple[RuleReport, ...] | _Seen = attrs.field(alias="reports", eq=lambda r: _made(r))
    """The reports, or what the rules saw, from which :attr:`reports` makes them when read."""
    outranked: tuple[Worker, ...] = ()
    """The winning rule's other eligible candidates, as read, best first."""
    doubt: tuple[str, ...] = ()
    """The ids of the candidates the evidence could not separate, the winner first."""
    revived: bool = False
    """The winner was stale and a hint brings it back."""

    def __repr__(self) -> str:
        names = (a.alias or a.name for a in attrs.fields(Decision))
        fields = (f"{name}={getattr(self, name)!r}" for name in names)
        return f"Decision({', '.join(fields)})"

    @property
    def reports(self) -> tuple[RuleReport, ...]:
        """One :class:`RuleReport` per rule of the chain, in order (made when first read)."""
        reports = self._reports
        if isinstance(reports, _Seen):
            reports = reports.reports()
            object.__setattr__(self, "_reports", reports)  # kept: the same text every time
        return reports

    @property
    def created(self) -> bool:
        """Whether a new worker must be created."""
        return self.worker is None

    @property
    def worker_id(self) -> str | None:
        """The matched worker's id, or ``None`` when one must be created."""
        return None if self.worker is None else self.worker.id

    @property
    def contested(self) -> bool:
        """Whether the request lands on a worker that was chosen under doubt, now or before."""
        return bool(self.doubt) or (self.worker is not None and bool(self.worker.contested))

    def explain(self) -> str:
        """A human-readable account of the decision, one line per rule and candidate."""
        who = "a new worker" if self.worker is None else f"worker {self.worker.id}"
        amb = " (ambiguous)" if self.ambiguous else ""
        lines = [
            f"{_describe(self.identity)} at {self.now.isoformat()} -> {who} "
            f"by rule {self.rule.value}{amb} [policy {self.policy}]"
        ]
        for report in self.reports:
            lines.append(f"  {report.rule.value}: {report.outcome} - {report.detail}")
            for c in report.candidates:
                lines.append(f"    {c.worker_id}: {c.verdict.value} - {c.reason}")
        if self.worker is not None and self.worker.contested and not self.doubt:
            lines.append(
                f"  contested: {self.worker.id} was chosen under doubt among "
                f"{', '.join(self.worker.contested)}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the decision, for structured logs."""
        return {
            "ip": self.identity.ip,
            "hostname": self.identity.hostname,
            "now": self.now.isoformat(),
            "policy": self.policy,
            "rule": self.rule.value,
            "worker": self.worker_id,
            "created": self.created,
            "ambiguous": self.ambiguous,
            "doubt": list(self.doubt),
            "contested": self.contested,
            "reports": [
                {
                    "rule": r.rule.value,
                    "outcome": r.outcome,
                    "detail": r.detail,
                    "candidates": [
                        {"worker": c.worker_id, "verdict": c.verdict.value, "reason": c.reason}
                        for c in r.candidates
                    ],
                }
                for r in self.reports
            ],
        }


_new_decision = direct_constructor(Decision)


def _describe(identity: Identity) -> str:
    parts = [f"ip={identity.ip}"]
    if identity.hostname is not None:
        parts.append(f"hostname={identity.hostname}")
    if identity.worker_id is not None:
        parts.append(f"worker_id={identity.worker_id}")
    if identity.assignment_id is not None:
        parts.append(f"assignment_id={identity.assignment_id}")
    return "request(" + ", ".join(parts) + ")"


def choose(
    identity: Identity,
    now: datetime,
    policy: Policy,
    kind: EventKind,
    *,
    claiming: str | None = None,
) -> Ask[Decision]:
    """Walk the policy's table for a request of ``kind`` and return the decision.

    ``claiming`` is the assignment a claim takes (the session guard needs it).  Raises
    :class:`~workermatch.AmbiguousMatch` when the policy refuses ambiguous matches and the
    winning rule's best candidates cannot be told apart.
    """
    ctx = _Ctx(identity, now, policy, claiming)
    rows = ctx.rules.rows_for(kind)
    # What each rule saw, as found: the reports are made from it when first read.
    seen = _Seen(ctx, rows)
    for row in rows:
        rule = row.rule
        finding = row.find(ctx)
        found = finding if isinstance(finding, str) else (yield from finding)
        if isinstance(found, str):
            seen.steps.append((rule, "not applicable", found, (), ()))
            continue
        rejected: list[Candidate | tuple[str, str]] = list(found.rejected)
        eligible: list[Worker] = []
        for w in found.workers:
            why = _ineligible(w, ctx)
            if why is None:
                eligible.append(w)
            else:
                rejected.append((w.id, why))  # made a Candidate when the reports are read
        if not eligible:
            seen.steps.append((rule, "no candidates", found.detail, rejected, ()))
            continue
        if len(eligible) == 1:  # the hot case: nothing to rank, no doubt
            ranked, doubt = [(eligible[0], ())], eligible
        else:
            ranked = _rank(eligible, ctx)
            doubt = _doubt(ranked, ctx)
        ambiguous = len(doubt) > 1
        if ambiguous and policy.on_ambiguous is OnAmbiguous.SKIP_RULE:
            detail = found.detail + f"; {len(doubt)} candidates could not be told apart"
            seen.steps.append((rule, "passed over", detail, rejected, ranked))
            continue
        seen.steps.append((rule, "matched", found.detail, rejected, ranked))
        seen.doubt = len(doubt)
        decision = _new_decision(
            identity=identity,
            now=now,
            policy=policy.name,
            rule=rule,
            worker=ranked[0][0],
            ambiguous=ambiguous,
            reports=seen,
            outranked=tuple(w for w, _ in ranked[1:]) if len(ranked) > 1 else (),
            doubt=tuple(w.id for w in doubt) if ambiguous else (),
            revived=found.revive,
        )
        if ambiguous and policy.on_ambiguous is OnAmbiguous.REFUSE:
            raise AmbiguousMatch(
                f"rule {rule.value} found {len(doubt)} candidates the evidence cannot separate "
                f"({', '.join(w.id for w in doubt)}) and the policy refuses ambiguous matches",
                decision=decision,
            )
        return decision
    return _new_decision(
        identity=identity,
        now=now,
        policy=policy.name,
        rule=Rule.CREATED,
        worker=None,
        ambiguous=False,
        reports=seen,
    )


class _Seen:
    """What each rule of a decision's chain saw, kept as found, and the reports made from it
    (:meth:`reports`) when someone reads them: most decisions are never explained, and their
    texts cost more than the decision.  The texts are the same whenever they are made."""

    __slots__ = ("ctx", "doubt", "rows", "steps")

    def __init__(self, ctx: _Ctx, rows: tuple[Row, ...]) -> None:
        self.ctx = ctx
        self.rows = rows
        # One step per rule reached: (rule, outcome, detail, rejected, ranked).
        # A rejected candidate is a Candidate, or (worker id, reason) until the reports are made.
        self.steps: list[
            tuple[Rule, str, str, Sequence[Candidate | tuple[str, str]], Sequence[_Pair]]
        ] = []
        self.doubt = 0
        """How many candidates of the matching rule the evidence could not separate."""

    def reports(self) -> tuple[RuleReport, ...]:
        """One :class:`RuleReport` per rule of the chain, in order."""
        ctx = self.ctx
        reports: list[RuleReport] = []
        for rule, outcome, detail, rejected, ranked in self.steps:
            candidates = _sorted(rejected)
            if outcome == "passed over":
                passed = tuple(
                    Candidate(
                        worker_id=w.id,
                        verdict=Verdict.PASSED_OVER,
                        reason="the evidence could not tell the candidates apart and the policy "
                        "skips ambiguous rules",
                    )
                    for w, _ in ranked
                )
                candidates = passed + candidates
            elif outcome == "matched":
                winner, best = ranked[0]
                if self.doubt > 1:
                    why = (
                        f"could not be told apart from {self.doubt - 1} other(s); "
                        f"first by {_order(ctx)}"
                    )
                elif len(ranked) > 1:
                    why = f"best of {len(ranked)} candidates by {_order(ctx)}"
                else:
                    why = "the only eligible candidate"
                taken = [Candidate(worker_id=winner.id, verdict=Verdict.TAKEN, reason=why)]
                taken += [
                    Candidate(
                        worker_id=w.id,
                        verdict=Verdict.OUTRANKED,
                        reason=_why_outranked(key, best, winner.id, ctx),
                    )
                    for w, key in ranked[1:]
                ]
                candidates = tuple(taken) + candidates
            reports.append(
                RuleReport(rule=rule, outcome=outcome, detail=detail, candidates=candidates)
            )
            if outcome == "matched":
                reports.extend(
                    RuleReport(
                        rule=r.rule, outcome="not reached", detail=f"{rule.value} matched first"
                    )
                    for r in self.rows[len(self.steps) :]
                )
        return tuple(reports)


def _made(reports: tuple[RuleReport, ...] | _Seen) -> tuple[RuleReport, ...]:
    return reports.reports() if isinstance(reports, _Seen) else reports


def _sorted(candidates: Sequence[Candidate | tuple[str, str]]) -> tuple[Candidate, ...]:
    made = [
        c
        if isinstance(c, Candidate)
        else Candidate(worker_id=c[0], verdict=Verdict.REJECTED, reason=c[1])
        for c in candidates
    ]
    return tuple(sorted(made, key=lambda c: c.worker_id))


def _order(ctx: _Ctx) -> str:
    return ", ".join(c.value for c in ctx.rules.ranking) + ", worker id"


# ============================================================================================
# 5. What a request writes


class Alert(str, enum.Enum):
    """Why an operator should look at a decision (``Outcome.alert``)."""

    DOUBT = "doubt"
    """The request was placed among candidates the evidence could not separate, a set of
    candidates not seen together before."""
    END_HELD = "end_held"
    """A session end could have come from several workers' machines: it is held until evidence
    arrives, never given to a tie-break."""
    TRANSFER_HELD = "transfer_held"
    """Stale RUNNING work that the new worker might own was left where it was: several machines
    could claim it."""
    HINT_REFUSED = "hint_refused"
    """A hint named a worker that the request's other evidence contradicts (another hostname):
    the request was not placed on it."""
    HINT_ELSEWHERE = "hint_elsewhere"
    """An assignment hint (ids of assignments can be guessed) placed a request that comes from
    another machine's address (a live worker runs there) on a worker whose machine was heard
    from its own address within the quiet period: another machine may name its work."""

    def __repr__(self) -> str:
        return f"Alert.{self.name}"


@attrs.frozen(kw_only=True)
class Outcome:
    """What one request resolved to and what it wrote.

    ``worker`` is the worker as it is after the writes.  ``transferred`` lists the RUNNING
    assignments moved onto it from stale workers; ``ended`` the assignments this request
    completed or failed (including held ends its evidence settled, listed in ``settled`` too);
    ``held`` the candidates of a session end it held for want of evidence; ``alert`` why an
    operator should look, or ``None``; ``notes`` what the request did beyond its placement and
    what it considered and refused, in words.
    """

    event: Event
    decision: Decision
    worker: Worker
    created: bool
    writes: tuple[Write, ...]
    transferred: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()
    idempotent: bool = False
    merged: tuple[str, ...] = ()
    """Duplicates this request revealed and merged into :attr:`worker`."""
    kept_alive: tuple[str, ...] = ()
    """Other workers of the request's address whose ``last_seen`` this request refreshed."""
    held: tuple[str, ...] = ()
    """The candidates of the session end this request asked for and that was held."""
    settled: tuple[tuple[str, HeldEnd], ...] = ()
    """Held ends this request applied (its evidence, or one end too many to hold): each ended
    assignment with the held end it came from."""
    alert: Alert | None = None
    notes: tuple[str, ...] = ()

    @property
    def rule(self) -> Rule:
        """The rule that placed the request (``created`` when a worker was made)."""
        return self.decision.rule

    @property
    def ambiguous(self) -> bool:
        """Whether the evidence could not separate the winning rule's best candidates."""
        return self.decision.ambiguous

    @property
    def contested(self) -> bool:
        """Whether the request landed on a worker chosen under doubt, now or before."""
        return bool(self.worker.contested)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the outcome, for structured logs: the decision's
        :meth:`Decision.to_dict`, then what the request did."""
        return {
            **self.decision.to_dict(),
            "kind": self.event.kind.value,
            "worker": self.worker.id,
            "created": self.created,
            "transferred": list(self.transferred),
            "ended": list(self.ended),
            "merged": list(self.merged),
            "held": list(self.held),
            "alert": None if self.alert is None else self.alert.value,
            "contested": self.contested,
            "notes": list(self.notes),
        }

    def explain(self) -> str:
        """The decision's explanation, followed by what the request wrote and why."""
        lines = [self.decision.explain()]
        if self.created:
            lines.append(f"  created worker {self.worker.id}")
        lines += [f"  {note}" for note in self.notes]
        if self.ended:
            final = {
                w.assignment.id: w.assignment.status.value.lower()
                for w in self.writes
                if isinstance(w, (InsertAssignment, UpdateAssignment))
            }
            lines.append(
                "  ended " + ", ".join(f"{a} ({final.get(a, 'ended')})" for a in self.ended)
            )
        if self.idempotent:
            lines.append("  repeated claim of the same assignment: nothing changed")
        if self.alert is not None:
            lines.append(f"  alert: {self.alert.value}")
        return "\n".join(lines)


_new_outcome = direct_constructor(Outcome)
_update_worker = direct_constructor(UpdateWorker)


class _Writes:
    """The writes of one request, collected: the latest version of each row wins its place."""

    def __init__(self) -> None:
        self.workers: dict[str, Worker] = {}
        self.inserted: set[str] = set()
        self.assignments: dict[str, Assignment] = {}
        self.new_assignments: set[str] = set()
        self.order: list[tuple[str, str]] = []

    def worker(self, w: Worker, *, insert: bool = False) -> Worker:
        if w.id not in self.workers:
            self.order.append(("w", w.id))
        if insert:
            self.inserted.add(w.id)
        self.workers[w.id] = w
        return w

    def assignment(self, a: Assignment, *, insert: bool = False) -> Assignment:
        if a.id not in self.assignments:
            self.order.append(("a", a.id))
        if insert:
            self.new_assignments.add(a.id)
        self.assignments[a.id] = a
        return a

    def latest(self, w: Worker) -> Worker:
        return self.workers.get(w.id, w)

    def ops(self) -> tuple[Write, ...]:
        """The writes: new workers first, then new assignments, then updates, each in the order
        they were first made (so that every row an operation names exists before it)."""
        out: list[Write] = []
        order = self.order
        if self.inserted or self.new_assignments:
            rank = {("w", k): 0 for k in self.inserted}
            rank |= {("a", k): 1 for k in self.new_assignments}
            order = sorted(order, key=lambda item: rank.get(item, 2))
        for what, key in order:
            if what == "w":
                w = self.workers[key]
                out.append(
                    InsertWorker(worker=w) if key in self.inserted else _update_worker(worker=w)
                )
            else:
                a = self.assignments[key]
                out.append(
                    InsertAssignment(assignment=a)
                    if key in self.new_assignments
                    else UpdateAssignment(assignment=a)
                )
        return tuple(out)


def _touch(worker: Worker, event: Event, now: datetime, ctx: _Ctx) -> Worker:
    identity = event.identity
    hostname, seen = worker.hostname, worker.hostname_seen
    if identity.hostname is not None:
        if hostname != identity.hostname and (
            hostname is None or not ctx.guarded(Guard.HOSTNAME_VETO)
        ):
            hostname = identity.hostname
        if hostname == identity.hostname:
            seen = now
    return evolve_valid_worker(
        worker,
        ip=identity.ip,
        hostname=hostname,
        hostname_seen=seen,
        last_seen=max(worker.last_seen, now),
        stale=False,
    )


def _new_worker(event: Event, now: datetime, worker_id: str) -> Worker:
    host = event.identity.hostname
    return Worker(
        id=worker_id,
        ip=event.identity.ip,
        hostname=host,
        hostname_seen=None if host is None else now,
        created_at=now,
        last_seen=now,
    )


def decide(
    event: Event,
    now: datetime,
    policy: Policy,
    *,
    create_assignments: bool = False,
    new_worker_id: Callable[[], str] | None = None,
) -> Ask[Outcome]:
    """Decide what ``event`` does at ``now``: the decision and the writes that follow from it.

    Arguments must be valid already.  Raises :class:`~workermatch.ClaimRefused` or
    :class:`~workermatch.AmbiguousMatch`.
    """
    make_id = new_worker_id or (lambda: NEW_WORKER)
    if event.kind is EventKind.CLAIM:
        return (yield from _claim(event, now, policy, create_assignments, make_id))
    return (yield from _request(event, now, policy, make_id))


def _claim(
    event: Event,
    now: datetime,
    policy: Policy,
    create_assignments: bool,
    make_id: Callable[[], str],
) -> Ask[Outcome]:
    aid = event.assignment_id
    assert aid is not None
    ctx = _Ctx(event.identity, now, policy, aid)
    out = _Writes()
    notes: list[str] = []
    assignment = yield from _get_assignment(aid)
    if assignment is None:
        if not create_assignments:
            raise ClaimRefused(
                f"assignment {aid} does not exist", reason="unknown_assignment", assignment_id=aid
            )
        assignment = out.assignment(Assignment(id=aid), insert=True)
    sessions = ctx.guarded(Guard.SESSIONS)
    holder: Worker | None = None
    if assignment.status is AssignmentStatus.RUNNING and assignment.worker_id is not None:
        holder = yield from _get_worker(assignment.worker_id)
    holder_live = holder is not None and not holder.is_stale_at(now, policy.stale_after)
    if sessions and assignment.status.is_final:
        raise ClaimRefused(
            f"assignment {aid} is already {assignment.status.value}",
            reason="already_finished",
            assignment_id=aid,
        )
    decision = yield from choose(event.identity, now, policy, event.kind, claiming=aid)
    matched = decision.worker
    if sessions and holder is not None and holder_live:
        if matched is not None and matched.id == holder.id:
            worker = out.worker(_touch(matched, event, now, ctx))
            return _new_outcome(
                event=event,
                decision=decision,
                worker=worker,
                created=False,
                writes=out.ops(),
                idempotent=True,
            )
        raise ClaimRefused(
            f"assignment {aid} is RUNNING on worker {holder.id}, which is not stale",
            reason="running_elsewhere",
            assignment_id=aid,
            holder=holder.id,
        )
    alerts: list[Alert] = []
    if decision.ambiguous and ctx.guarded(Guard.EVIDENCE):
        # A claim joins a worker for good: in doubt, it starts its own.
        notes.append(
            f"did not join {', '.join(decision.doubt)}: the evidence could not tell them apart, "
            "and a claim needs evidence"
        )
        alerts.append(Alert.DOUBT)
        matched = None
    created = matched is None
    if matched is None:
        worker = _new_worker(event, now, make_id())
    else:
        worker = _touch(matched, event, now, ctx)
    worker = evolve_valid(worker, status=WorkerStatus.RUNNING, assignment_id=aid, ended_at=None)
    out.worker(worker, insert=created)
    transferred: list[str] = []
    if created and ctx.does(Effect.TRANSFER_ON_CLAIM):
        transferred = yield from _transfer(ctx, event, worker, out, notes, alerts, exclude=aid)
    if holder is not None and holder.id != worker.id:
        # The previous holder is stale (or loses to the last claimer, without the session
        # guard): it no longer runs this assignment.
        others = [a for a in (yield from _running_of([holder.id])) if a.id != aid]
        out.worker(
            evolve_valid(
                out.latest(holder), status=WorkerStatus.RUNNING if others else WorkerStatus.IDLE
            )
        )
    started = assignment.started_at if assignment.worker_id == worker.id else now
    out.assignment(
        evolve_valid(
            assignment,
            status=AssignmentStatus.RUNNING,
            worker_id=worker.id,
            started_at=started or now,
            ended_at=None,
        ),
        insert=aid in out.new_assignments,
    )
    if matched is not None and decision.ambiguous:
        yield from _contest(decision, out, alerts)
    return _new_outcome(
        event=event,
        decision=decision,
        worker=out.latest(worker),
        created=created,
        writes=out.ops(),
        transferred=tuple(transferred),
        alert=min(alerts, key=_ALERT_ORDER.index) if alerts else None,
        notes=tuple(notes),
    )


def _request(
    event: Event, now: datetime, policy: Policy, make_id: Callable[[], str]
) -> Ask[Outcome]:
    ctx = _Ctx(event.identity, now, policy, None)
    decision = yield from choose(event.identity, now, policy, event.kind)
    out = _Writes()
    notes: list[str] = []
    alerts: list[Alert] = []
    if _hint_refused(decision):
        alerts.append(Alert.HINT_REFUSED)
        notes.append("the hint named a worker with another hostname: not followed")
    placed = decision.worker
    if (
        decision.rule is Rule.ASSIGNMENT
        and placed is not None
        and placed.ip != event.identity.ip
        and now - placed.last_seen <= policy.quiet_period
    ):
        # The request comes from another machine's address (a live worker runs there), while
        # the hinted worker's machine was heard from its own a moment ago.
        here = [
            w.id
            for w in (yield from _by_ip(event.identity.ip, ctx.live_since))
            if w.id != placed.id
        ]
        if here:
            alerts.append(Alert.HINT_ELSEWHERE)
            notes.append(
                f"the assignment hint names {placed.id}, whose machine was heard from "
                f"{placed.ip} {_age(now, placed.last_seen)} ago, from the address of "
                f"{', '.join(sorted(here)[:3])}: another machine may name its work"
            )
    transferred: list[str] = []
    merged: tuple[str, ...] = ()
    kept: list[str] = []
    if decision.worker is None:
        worker = out.worker(_new_worker(event, now, make_id()), insert=True)
        if ctx.does(Effect.TRANSFER_ON_CREATE):
            transferred = yield from _transfer(ctx, event, worker, out, notes, alerts)
    else:
        before = decision.worker
        worker = out.worker(_touch(before, event, now, ctx))
        if decision.revived:
            yield from _revive(worker, out, notes)
        if decision.ambiguous:
            if before.ip != event.identity.ip or (
                before.hostname is None and event.identity.hostname is not None
            ):
                # The request gives the worker its address or hostname: an adoption.
                yield from _contest(decision, out, alerts)
            if ctx.does(Effect.KEEP_ALIVE):
                kept = _keep_alive(event, now, ctx, decision, out)
                if kept:
                    notes.append(
                        f"kept {', '.join(kept)} alive: the request, from their address, may be "
                        "theirs"
                    )
        if event.identity.hostname is not None and ctx.does(Effect.RECONCILE):
            # Both reconciliations start from the hostname the request reveals.
            survivor = yield from _reconcile(ctx, event, before, out, notes)
            if survivor is None:
                survivor = yield from _renamed(ctx, event, before, out, notes)
            if survivor is not None:
                merged, worker = (before.id,), survivor
        if (
            before.hostname is None
            and event.identity.hostname is not None
            and not merged
            and ctx.does(Effect.TRANSFER_ON_HOSTNAME)
        ):
            transferred = yield from _transfer(
                ctx, event, out.latest(worker), out, notes, alerts, by_ip=False
            )
    worker = out.latest(worker)
    pending = worker.held_end
    ended: list[str] = []
    settled: list[tuple[str, HeldEnd]] = []
    held: tuple[str, ...] = ()
    ending = event.kind is EventKind.GUI_UPDATE and event.message in (FINISHED, FATAL_ERROR)
    status = AssignmentStatus.COMPLETED if event.message == FINISHED else AssignmentStatus.FAILED
    known = (
        {w.id: w for w in (decision.worker, *decision.outranked) if w is not None}
        if (ending or pending is not None)
        else {}
    )
    evidence = ending and ctx.guarded(Guard.EVIDENCE)
    senders = _senders(decision, ctx) if evidence and not decision.ambiguous else ()
    if ending and evidence and decision.ambiguous:
        # Which machine sent it is in doubt.
        held, done = yield from _hold(ctx, decision.doubt, "request", status, out, notes, known)
    elif ending and evidence and len(senders) > 1:
        # Only the work it holds puts the worker first: a machine whose work went elsewhere
        # still sends its end.
        others = ", ".join(w for w in senders if w != worker.id)
        notes.append(
            f"{worker.id} ranks above {others} only by the work it holds: a machine whose work "
            "was placed elsewhere still sends its end, so the end may be theirs"
        )
        held, done = yield from _hold(ctx, senders, "request", status, out, notes, known)
    elif ending and evidence and len(worker.contested) > 1:
        # The sender is known, but which of the contested claims is its own is not.
        held, done = yield from _hold(
            ctx, worker.contested, "assignment", status, out, notes, known
        )
    elif ending:
        # Under the evidence guard, a request that names its assignment ends that one alone.
        named = event.identity.assignment_id if evidence else None
        ended += yield from _end(worker, status, now, out, notes, named)
        done = []
    else:
        done = []
    if held:
        alerts.append(Alert.END_HELD)
    ended += [a for a, _ in done]
    settled += done
    if pending is not None and pending.doubt == "request" and not decision.ambiguous:
        more = yield from _settle(ctx, worker.id, pending, ending, out, notes, known)
        ended += [a for a, _ in more]
        settled += more
    return _new_outcome(
        event=event,
        decision=decision,
        worker=out.latest(worker),
        created=decision.worker is None,
        writes=out.ops(),
        transferred=tuple(transferred),
        ended=tuple(ended),
        merged=merged,
        kept_alive=tuple(kept),
        held=held,
        settled=tuple(settled),
        alert=min(alerts, key=_ALERT_ORDER.index) if alerts else None,
        notes=tuple(notes),
    )


def _senders(decision: Decision, ctx: _Ctx) -> tuple[str, ...]:
    """The candidates that may have sent a session end placed without doubt: those that the
    evidence, the work they hold aside, cannot separate from the chosen worker (a hint names
    its sender: then none)."""
    if (
        decision.worker is None
        or not decision.outranked
        or decision.rule in (Rule.WORKER_ID, Rule.ASSIGNMENT)
    ):
        return ()
    ranking = ctx.rules.ranking
    picks = [i for i, c in enumerate(ranking) if c.is_evidence and c is not Criterion.HOLDS_RUNNING]
    if len(picks) == sum(c.is_evidence for c in ranking):
        return ()  # the work held is no evidence in this table
    ranked = _rank([decision.worker, *decision.outranked], ctx)
    key = {w.id: k for w, k in ranked}
    part = itemgetter(*picks) if picks else (lambda _: ())
    best = part(key[decision.worker.id])
    return tuple(w.id for w, k in ranked if part(k) == best)


def _hint_refused(decision: Decision) -> bool:
    identity = decision.identity
    if identity.hostname is None or (identity.worker_id is None and identity.assignment_id is None):
        return False  # no hint row saw a candidate, or none was vetoed (without reading reports)
    return any(
        c.verdict is Verdict.REJECTED and c.reason.startswith("hostname veto")
        for r in decision.reports
        if r.rule in (Rule.WORKER_ID, Rule.ASSIGNMENT)
        for c in r.candidates
    )


_ALERT_ORDER = [
    Alert.END_HELD,
    Alert.TRANSFER_HELD,
    Alert.HINT_REFUSED,
    Alert.HINT_ELSEWHERE,
    Alert.DOUBT,
]


def _contest(decision: Decision, out: _Writes, alerts: list[Alert]) -> Ask[None]:
    """A worker adopted under doubt: it and the candidates it could not be told apart from are
    contested (whoever adopts one of the others later inherits the doubt, and an end among
    them is held until as many ends are asked as there are candidates); each keeps the union
    of its doubts.  An alert is raised when the candidates were not all together in one of the
    winner's earlier doubts."""
    assert decision.worker is not None
    doubt = tuple(sorted(decision.doubt))
    read = {w.id: w for w in decision.outranked}
    winner = out.latest(decision.worker)
    if not set(doubt) <= set(winner.contested):
        alerts.append(Alert.DOUBT)
    for wid in doubt:
        w = winner if wid == winner.id else out.latest(read[wid])
        if not set(doubt) <= set(w.contested):
            # A worker contested twice keeps both doubts: each says whose work may be whose.
            out.worker(evolve_valid(w, contested=tuple(sorted({*w.contested, *doubt}))))
    return
    yield  # pragma: no cover - makes this a generator


def _end(
    worker: Worker,
    status: AssignmentStatus,
    at: datetime,
    out: _Writes,
    notes: list[str] | None = None,
    named: str | None = None,
) -> Ask[list[str]]:
    """End ``worker``'s session as asked at ``at``: its RUNNING assignments take ``status``.

    Its assignments are those the store holds for it, as this request's writes leave them
    (work it just took by a transfer or a merge included, work moved away excluded).  When the
    request ``named`` an assignment that came to the worker from another session, that one
    alone ends, and the worker's own session goes on."""
    stored = [] if worker.id in out.inserted else (yield from _running_of([worker.id]))
    mine = {a.id: out.assignments.get(a.id, a) for a in stored}
    mine.update({k: a for k, a in out.assignments.items() if a.worker_id == worker.id})
    own = out.latest(worker).assignment_id
    if named is not None and named != own and named in mine:
        a = mine[named]
        if a.worker_id == worker.id and a.status is AssignmentStatus.RUNNING:
            # The named work came to this worker from another session (a transfer, a merge):
            # that session ends, and this worker's own goes on.
            out.assignment(evolve_valid(a, status=status, ended_at=at))
            if notes is not None:
                notes.append(
                    f"ended {named} alone: the request names it, and it came to {worker.id} "
                    f"from another session, while {worker.id}'s own ({own}) goes on"
                )
            return [named]
    ended: list[str] = []
    for aid in sorted(mine):
        a = mine[aid]
        if a.worker_id == worker.id and a.status is AssignmentStatus.RUNNING:
            out.assignment(evolve_valid(a, status=status, ended_at=at))
            ended.append(aid)
    final = WorkerStatus.IDLE if status is AssignmentStatus.COMPLETED else WorkerStatus.ERROR
    latest = out.latest(worker)
    out.worker(evolve_valid(latest, status=final, ended_at=latest.ended_at or at, held_end=None))
    return ended


def _could_have_sent(
    workers: Collection[Worker], asked: Sequence[datetime], grace: timedelta
) -> bool:
    """Whether each of ``workers`` can have sent one of the ends ``asked`` for, each a
    different one.  A machine sends nothing with its hostname after its end (the GUI stops with
    the session; ``grace`` allows for a trailing message), so a worker heard from with its
    hostname after every end still open to it sent none of them, and counting the ends would
    end its session for another machine's request.  The latest heartbeats are matched with the
    latest ends."""
    beats = sorted((w.hostname_seen for w in workers if w.hostname_seen is not None), reverse=True)
    ends = sorted(asked, reverse=True)
    return len(beats) <= len(ends) and all(
        h <= t + grace for h, t in zip(beats, ends, strict=False)
    )


def _heard_since(w: Worker, asked: Sequence[datetime]) -> bool:
    """Whether ``w``'s machine was heard from (with its hostname) after the first of the ends
    ``asked``: its session went on."""
    return w.hostname_seen is not None and w.hostname_seen > min(asked)


def _hold(
    ctx: _Ctx,
    ids: Sequence[str],
    doubt: str,
    status: AssignmentStatus,
    out: _Writes,
    notes: list[str],
    known: dict[str, Worker],
    asked: Sequence[datetime] = (),
) -> Ask[tuple[tuple[str, ...], list[tuple[str, HeldEnd]]]]:
    """Hold a session end among the workers ``ids``: ``doubt`` says what is in doubt.

    Held ends over overlapping candidates are counted together: ``count`` ends among the union
    of their candidates (an ``"assignment"`` doubt absorbs a ``"request"`` one).  When as many
    ends are held as there are candidates, all of them end.  Returns the candidates and the
    ends applied.  ``asked``: when the end was asked for, if not by this request.
    """
    members: dict[str, Worker] = {}
    for wid in ids:
        w = out.workers.get(wid) or known.get(wid) or (yield from _get_worker(wid))
        if w is not None and w.ended_at is None:
            members[wid] = out.latest(w)
    asked = list(asked) or [ctx.now]
    count = 1
    seen: set[HeldEnd] = set()
    grown = True
    while grown:
        # The candidates grow by the ends held among them and by the workers they were adopted
        # under doubt with: which of those sessions is whose is unknown.
        grown = False
        for w in list(members.values()):
            earlier = w.held_end
            more: list[tuple[str, HeldEnd | None]] = [(wid, None) for wid in w.contested]
            if earlier is not None and earlier not in seen:
                seen.add(earlier)
                asked += earlier.asked
                count += earlier.count
                doubt = "assignment" if earlier.doubt != doubt else doubt
                more += [(wid, earlier) for wid in earlier.candidates]
            for wid, by in more:
                if wid not in members:
                    v = out.workers.get(wid) or known.get(wid) or (yield from _get_worker(wid))
                    if (
                        v is not None
                        and v.ended_at is None
                        and (v.held_end == by if by is not None else _heard_since(v, asked))
                    ):
                        members[wid] = out.latest(v)
                        grown = True
    if not members:
        return (), []  # every candidate's session ended meanwhile: nothing left to end
    names = ", ".join(sorted(members))
    end = HeldEnd(status=status, asked=asked, candidates=tuple(members), count=count, doubt=doubt)
    grace = ctx.policy.ended_grace or timedelta(0)
    if end.count < len(members) or not _could_have_sent(members.values(), end.asked, grace):
        for w in members.values():
            out.worker(evolve_valid(w, held_end=end))
        why = (
            "it could have come from any of them"
            if doubt == "request"
            else "they were adopted under doubt, so which assignment is whose is unknown"
        )
        held = f" ({end.count} ends held among them)" if end.count > 1 else ""
        notes.append(f"held the end ({status.value}) among {names}{held}: {why}")
        return end.candidates, []
    done: list[tuple[str, HeldEnd]] = []
    for w in members.values():
        done += [(aid, end) for aid in (yield from _end(w, status, end.at, out))]
    notes.append(f"as many ends asked as candidates ({names}): all of them ended")
    return (), done


def _settle(
    ctx: _Ctx,
    worker_id: str,
    held: HeldEnd,
    ending: bool,
    out: _Writes,
    notes: list[str],
    known: dict[str, Worker],
) -> Ask[list[tuple[str, HeldEnd]]]:
    """Evidence about one candidate of an end held because its sender was in doubt: a request
    placed on it without doubt.

    More than ``ended_grace`` after the held end, a request from its machine shows that the
    machine did not stop, so it did not send the end (within the grace, the request may be a
    trailing message).  A session end of its own says it stops now: the held ends belong to
    the others.  Once as few candidates are left as ends are held, their sessions end as of the
    time the end was asked (or, for a contested worker, the end is held among its contest).
    """
    grace = ctx.policy.ended_grace or timedelta(0)
    if not ending and ctx.now - held.at <= grace:
        return []
    others: list[Worker] = []
    for wid in held.candidates:
        if wid != worker_id:
            w = out.workers.get(wid) or known.get(wid) or (yield from _get_worker(wid))
            if w is not None and w.held_end == held:
                others.append(out.latest(w))
    identity = ctx.identity
    hinted = identity.worker_id is not None or identity.assignment_id is not None
    host = identity.hostname
    if (
        not ending
        and not hinted
        and (host is None or any(w.hostname is None or w.hostname == host for w in others))
    ):
        # Only a hint, or a hostname that none of the others can have, says whose machine
        # this request comes from.
        return []
    if not ending:
        # A claim made at this address since the end may be the candidate's machine's next
        # session (batch mode): then this request is that session's, not the candidate's.
        claims = [
            w.id
            for w in (yield from _by_ip(identity.ip, ctx.live_since))
            if w.hostname is None and w.status is WorkerStatus.RUNNING and w.created_at > held.at
        ]
        if claims:
            notes.append(
                f"{worker_id}'s machine may not have been heard from since the end held among "
                f"{', '.join(held.candidates)}: {', '.join(sorted(claims))}, claimed at this "
                "address since, may be its next session"
            )
            return []
        out.worker(evolve_valid(out.workers[worker_id], held_end=None))
    why = "it ended on its own" if ending else "its machine was heard from since"
    notes.append(f"{worker_id} did not send the end held among {', '.join(held.candidates)}: {why}")
    if held.count < len(others) or not _could_have_sent(others, held.asked, grace):
        rest = evolve_valid(held, candidates=tuple(w.id for w in others))
        for w in others:
            out.worker(evolve_valid(w, held_end=rest))
        return []
    done: list[tuple[str, HeldEnd]] = []
    for w in others:
        w = out.latest(w)
        if w.ended_at is not None:
            continue  # ended already, by the held end of a contest settled just above
        out.worker(evolve_valid(w, held_end=None))
        if len(w.contested) > 1:
            _, more = yield from _hold(
                ctx, w.contested, "assignment", held.status, out, notes, known, held.asked
            )
            done += more
        else:
            done += [(aid, held) for aid in (yield from _end(w, held.status, held.at, out))]
    if others:
        notes.append(f"the held end belongs to {', '.join(w.id for w in others)}")
    return done


def _revive(worker: Worker, out: _Writes, notes: list[str]) -> Ask[None]:
    """A hint brought ``worker`` back from staleness: its session's work comes back with it."""
    notes.append(f"{worker.id} was stale; the hint brings it back")
    aid = worker.assignment_id
    if aid is None:
        return
    a = yield from _get_assignment(aid)
    if a is None or a.status is not AssignmentStatus.RUNNING or a.worker_id is None:
        return
    if a.worker_id == worker.id:
        return
    taker = yield from _get_worker(a.worker_id)
    out.assignment(evolve_valid(a, worker_id=worker.id))
    out.worker(evolve_valid(out.latest(worker), status=WorkerStatus.RUNNING))
    if taker is not None:
        left = [x for x in (yield from _running_of([taker.id])) if x.id != aid]
        if not left:
            out.worker(evolve_valid(out.latest(taker), status=WorkerStatus.IDLE))
    notes.append(f"moved {aid} back from {a.worker_id}, which took it while {worker.id} was stale")


def _keep_alive(
    event: Event, now: datetime, ctx: _Ctx, decision: Decision, out: _Writes
) -> list[str]:
    """A request without hostname placed in doubt proves that one of the address's machines
    lives, not which: refresh the others that run an unended session and whose hostname is
    unknown, at most once per quiet period.  (A worker whose hostname is known has its own
    heartbeats, and its silence must stay visible to reconciliation.)"""
    if decision.rule is not Rule.EXACT_IP or event.identity.hostname is not None:
        return []
    kept = []
    doubt = set(decision.doubt)
    for w in decision.outranked:
        if (
            w.id in doubt
            and w.ip == event.identity.ip
            and w.status is WorkerStatus.RUNNING
            and w.ended_at is None
            and now - w.last_seen > ctx.policy.quiet_period
            and w.hostname is None
        ):
            out.worker(evolve_valid(out.latest(w), last_seen=now))
            kept.append(w.id)
    return kept


def _transfer(
    ctx: _Ctx,
    event: Event,
    worker: Worker,
    out: _Writes,
    notes: list[str],
    alerts: list[Alert],
    *,
    by_ip: bool = True,
    exclude: str | None = None,
) -> Ask[list[str]]:
    """Move the RUNNING assignments of stale workers with the request's IP (when ``by_ip``) or
    the worker's hostname onto ``worker``.  Under the evidence guard, work found by address
    alone moves only when a single stale worker there could own it; otherwise it stays where
    it is, with an alert."""
    host = worker.hostname
    found = yield from _stale_running(event.identity.ip, host, ctx.now - ctx.policy.stale_after)
    veto = ctx.guarded(Guard.HOSTNAME_VETO)
    stale = [
        w
        for w in found
        if w.id != worker.id
        and w.merged_into is None
        # Work whose end is held has probably ended: it waits for evidence where it is.
        and w.held_end is None
        and (by_ip or (host is not None and w.hostname == host))
        and not (veto and host is not None and w.hostname is not None and w.hostname != host)
    ]
    if ctx.guarded(Guard.EVIDENCE):
        # A claim never heard from again: its machine's other requests went to another worker
        # (the client's GUI reached the server from another address), not silent at this one.
        lone = [w for w in stale if w.hostname is None and w.last_seen == w.created_at]
        if lone:
            notes.append(
                f"left the RUNNING work of stale {', '.join(sorted(w.id for w in lone))} where "
                "it is: a claim never heard from again, whose machine is not known to be this "
                "one"
            )
            stale = [w for w in stale if w not in lone]
        by_address = [w for w in stale if host is None or w.hostname != host]
        if len(by_address) > 1:
            notes.append(
                f"left the RUNNING work of stale {', '.join(sorted(w.id for w in by_address))} "
                "where it is: several machines at this address could own it"
            )
            alerts.append(Alert.TRANSFER_HELD)
            stale = [w for w in stale if w not in by_address]
    if not stale:
        return []
    running = yield from _running_of([w.id for w in stale])
    moved = sorted((a for a in running if a.id != exclude), key=lambda a: a.id)
    for w in sorted(stale, key=lambda w: w.id):
        out.worker(evolve_valid(out.latest(w), status=WorkerStatus.IDLE, stale=True))
    for a in moved:
        out.assignment(evolve_valid(a, worker_id=worker.id))
    if moved:
        latest = max(moved, key=lambda a: (a.started_at or ctx.now, a.id))
        current = out.latest(worker)
        out.worker(
            evolve_valid(
                current,
                status=WorkerStatus.RUNNING,
                assignment_id=current.assignment_id or latest.id,
            )
        )
        notes.append(
            f"moved RUNNING {', '.join(a.id for a in moved)} from stale "
            f"{', '.join(sorted(w.id for w in stale))} onto {worker.id}"
        )
        for w in sorted(stale, key=lambda w: w.id):
            yield from _inherit_contest(w, worker, out)
    return [a.id for a in moved]


def _inherit_contest(source: Worker, heir: Worker, out: _Writes) -> Ask[None]:
    """Work that moves off a contested worker (a transfer or a merge) carries the doubt with
    it: ``heir`` takes ``source``'s place in its contest, in its own record and in those of the
    workers contested with it, so that an end on ``heir`` is held as it would have been on
    ``source``."""
    source = out.latest(source)
    if len(source.contested) < 2 or source.id == heir.id:
        return
    doubt = tuple(
        sorted(
            {heir.id if wid == source.id else wid for wid in source.contested}
            | set(out.latest(heir).contested)
        )
    )
    for wid in (source.id, *doubt):
        w = out.workers.get(wid) or (yield from _get_worker(wid))
        if w is None:
            continue
        w = out.latest(w)
        contested = () if wid == source.id else doubt
        if w.contested != contested:
            out.worker(evolve_valid(w, contested=contested))


def _reconcile(
    ctx: _Ctx, event: Event, before: Worker, out: _Writes, notes: list[str]
) -> Ask[Worker | None]:
    """Reconcile a duplicate after the fact; returns the survivor it was merged into, or ``None``.

    The real client sends a hostname only with its heartbeats.  After an address change the
    first request from the new address is usually an update: no rule can tie it to the
    session's worker, so a duplicate is made.  The next heartbeat lands on the duplicate and
    reveals its hostname.  When exactly one other live worker of an unended session has that
    hostname, was created before the duplicate, and went silent no later than the duplicate
    appeared and less than ``stale_after`` before (lifetimes that do not overlap), the duplicate
    is merged into it, leaving ``merged_into`` as a forward pointer.  The same heartbeat repairs
    the start-up race: the GUI's first update overtook its heartbeats, and exactly one recent
    claim worker without hostname is in sight.  Two sessions and two machines are never merged:
    a claim's worker carries its assignment, and a second candidate (clones) cancels the merge.
    """
    policy, now = ctx.policy, ctx.now
    hostname = event.identity.hostname
    if hostname is None or before.hostname is not None:
        return None
    if before.ended_at is not None or before.merged_into is not None or before.held_end:
        return None
    same_name = [
        w
        for w in (yield from _by_hostname(hostname, ctx.live_since))
        if w.id != before.id
        and w.merged_into is None
        and w.ended_at is None
        and w.created_at < before.created_at
    ]
    named = [w for w in same_name if w.held_end is None]
    back = [
        w
        for w in same_name
        if w.held_end is not None
        and w.last_seen <= before.created_at
        and _heartbeat_due(w, now, policy.quiet_period)
    ]
    if back:
        # The machine's worker may have sent its end (held), or may be running on after a
        # blip: neither it nor a claim waiting for its GUI can be told to be the duplicate's.
        held = min(w.id for w in back)
        notes.append(
            f"not merged: {held} has hostname {hostname} and a held session end: the machine "
            "may be back from a silence or starting a new session"
        )
        return None
    found = [
        w
        for w in named
        if w.last_seen <= before.created_at
        and (before.assignment_id is None or before.assignment_id == w.assignment_id)
    ]
    refused = ""
    if named and not found:
        w = min(named, key=lambda w: w.id)
        refused = (
            f"{w.id} has hostname {hostname} but was heard from after {before.id} appeared"
            if w.last_seen > before.created_at
            else f"{w.id} has hostname {hostname} but runs another session"
        )
    if (
        not named
        and now - before.created_at <= policy.quiet_period
        and before.assignment_id is None
    ):
        found = [
            w
            for w in (yield from _recent_running(now - policy.orphan_window, ctx.live_since))
            if w.id != before.id
            and w.hostname is None
            and w.merged_into is None
            and w.ended_at is None
            and w.held_end is None
            and w.created_at < before.created_at
        ]
    if len(found) > 1:
        refused = (
            f"{', '.join(sorted(w.id for w in found))} could each be the worker {before.id} "
            "duplicates"
        )
    if len(found) != 1:
        if refused:
            notes.append(f"not merged: {refused}")
        return None
    notes.append(
        f"merged duplicate {before.id} into {found[0].id} (same hostname, lifetimes do not overlap)"
    )
    return (yield from _merge(ctx, event, before, found[0], out))


def _merge(ctx: _Ctx, event: Event, before: Worker, older: Worker, out: _Writes) -> Ask[Worker]:
    """Merge the duplicate ``before`` into ``older``, which takes the request's address and
    hostname and ``before``'s work; returns the survivor."""
    now = ctx.now
    moved = sorted((yield from _running_of([before.id])), key=lambda a: a.id)
    duplicate = out.latest(before)
    runs = older.status is WorkerStatus.RUNNING or bool(moved)
    survivor = out.worker(
        evolve_valid(
            out.latest(older),
            ip=event.identity.ip,
            hostname=event.identity.hostname,
            hostname_seen=now,
            last_seen=max(older.last_seen, duplicate.last_seen, now),
            status=WorkerStatus.RUNNING if runs else older.status,
            assignment_id=older.assignment_id or (moved[-1].id if moved else None),
        )
    )
    out.worker(evolve_valid(duplicate, status=WorkerStatus.IDLE, merged_into=older.id))
    for a in moved:
        out.assignment(evolve_valid(a, worker_id=older.id))
    yield from _inherit_contest(duplicate, survivor, out)
    return survivor


def _renamed(
    ctx: _Ctx, event: Event, before: Worker, out: _Writes, notes: list[str]
) -> Ask[Worker | None]:
    """Reconcile a machine renamed mid-run; returns the worker it was merged into, or ``None``.

    A heartbeat with a new name from a running machine's address finds the machine's worker
    vetoed (another hostname) and makes a worker of its own.  When that worker claimed nothing,
    and, a heartbeat period later, exactly one live running worker at its address has another
    hostname whose heartbeats stopped when the new name's began (the new name's first came when
    the old name's next was due, one heartbeat period after its last), the new worker is the
    old one renamed: it is merged into it, which takes the new name.
    """
    policy, now = ctx.policy, ctx.now
    host = event.identity.hostname
    if (
        host is None
        or before.hostname != host
        or before.assignment_id is not None
        or before.ended_at is not None
        or before.merged_into is not None
        or before.held_end is not None
        or before.ip != event.identity.ip
        or not policy.quiet_period <= now - before.created_at <= policy.stale_after
    ):
        return None
    found = [
        w
        for w in (yield from _by_ip(before.ip, ctx.live_since))
        if w.id != before.id
        and w.hostname not in (None, host)
        and w.ended_at is None
        and w.held_end is None
        and w.status is WorkerStatus.RUNNING
        and w.created_at < before.created_at
        and w.hostname_seen is not None
        # the new name's first heartbeat came when the old name's next one was due
        and abs(before.created_at - w.hostname_seen - policy.quiet_period) <= _HEARTBEAT_SLACK
    ]
    if len(found) != 1:
        return (yield from _passed_over(ctx, event, before, out, notes))
    older = found[0]
    survivor = out.worker(
        evolve_valid(
            out.latest(older),
            hostname=host,
            hostname_seen=now,
            last_seen=max(older.last_seen, now),
        )
    )
    out.worker(evolve_valid(out.latest(before), status=WorkerStatus.IDLE, merged_into=older.id))
    yield from _inherit_contest(before, survivor, out)
    notes.append(
        f"merged {before.id} into {older.id}: {older.hostname} was renamed {host} (its "
        "heartbeats stopped when the new name's began, at the same address)"
    )
    return survivor


def _passed_over(
    ctx: _Ctx, event: Event, before: Worker, out: _Writes, notes: list[str]
) -> Ask[Worker | None]:
    """The other half of the rename suspicion: a heartbeat with a new name passed over a claim
    without hostname because it might come from a renamed machine at its address.  A heartbeat
    period later, that machine's heartbeats went on under its old name, so it was not renamed:
    the new worker is the claim's GUI after all, and is merged into the claim's worker when
    exactly one such claim was open."""
    went_on = [
        w
        for w in (yield from _by_ip(before.ip, ctx.live_since))
        if w.id != before.id
        and w.hostname not in (None, before.hostname)
        and w.created_at < before.created_at
        and w.hostname_seen is not None
        and w.hostname_seen > before.created_at
    ]
    went_on.sort(key=lambda w: w.id)  # the note names the first: not the store's row order
    if not went_on:
        return None
    orphans = [
        w
        for w in (
            yield from _recent_running(before.created_at - ctx.policy.orphan_window, ctx.live_since)
        )
        if w.id != before.id
        and w.hostname is None
        and w.merged_into is None
        and w.ended_at is None
        and w.held_end is None
        and w.created_at < before.created_at
    ]
    if len(orphans) != 1:
        if orphans:
            notes.append(
                f"not merged: {', '.join(sorted(w.id for w in orphans))} could each be the "
                f"claim {before.id}'s machine made"
            )
        return None
    notes.append(
        f"merged {before.id} into {orphans[0].id}: {before.id} was made apart from the claim "
        f"in case it was {went_on[0].id}'s machine renamed, but {went_on[0].id}'s heartbeats "
        "went on under its old name"
    )
    return (yield from _merge(ctx, event, before, orphans[0], out))


def _age(now: datetime, then: datetime) -> str:
    return _span(max(now - then, now - now))


def _span(delta: Any) -> str:
    seconds = delta.total_seconds()
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    if seconds == int(seconds):
        return f"{int(seconds)} s"
    return f"{seconds:.3f} s"
