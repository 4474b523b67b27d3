"""The priority chain: which worker a request belongs to.  Pure; reads, never writes.

This module owns every matching rule and nothing else.  It knows no storage beyond the
read-only queries of :class:`~workermatch.WorkerRepository`, no clock (``now`` is passed in),
and no event semantics beyond "a claim must not join a worker of another session".  What a
request then *does* to the store (claims, transfers, ``finished``) lives in ``_engine``.

The chain is data: :data:`RULES` maps each :class:`~workermatch.Rule` to a small function that
returns the rule's raw candidates, and :func:`run_chain` walks a policy's chain in order,
applying the same filters (ended sessions, hostname veto, session rule), the same ranking and
the same ambiguity handling to every rule.  The first rule left with a candidate wins; when
none is, the decision is to create a worker.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from ._errors import AmbiguousMatch, InvalidInput
from ._model import AssignmentStatus, Identity, Worker, WorkerStatus, normalize_time
from ._policy import DEFAULT_POLICY, Criterion, OnAmbiguous, OrphanCondition, Policy, Rule
from ._protocol import WorkerRepository

__all__ = [
    "RULES",
    "Candidate",
    "Decision",
    "RuleReport",
    "Verdict",
    "match_worker",
    "run_chain",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


@attrs.frozen(kw_only=True)
class Decision:
    """Which worker a request belongs to, and why.

    ``worker`` is the matched worker as read, or ``None`` when a new worker must be created
    (``rule`` is then :attr:`Rule.CREATED`).  ``ambiguous`` says whether the winning rule had
    more than one eligible candidate.  ``reports`` holds one :class:`RuleReport` per rule of
    the chain, in order, with every candidate and why it was taken or passed over.
    """

    identity: Identity
    now: datetime
    policy: str
    rule: Rule
    worker: Worker | None
    ambiguous: bool
    reports: tuple[RuleReport, ...]
    outranked: tuple[Worker, ...] = ()
    """The winning rule's other candidates, as read, best first (empty unless ambiguous)."""

    @property
    def created(self) -> bool:
        """Whether a new worker must be created."""
        return self.worker is None

    @property
    def worker_id(self) -> str | None:
        """The matched worker's id, or ``None`` when one must be created."""
        return None if self.worker is None else self.worker.id

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


def _describe(identity: Identity) -> str:
    parts = [f"ip={identity.ip}"]
    if identity.hostname is not None:
        parts.append(f"hostname={identity.hostname}")
    if identity.worker_id is not None:
        parts.append(f"worker_id={identity.worker_id}")
    if identity.assignment_id is not None:
        parts.append(f"assignment_id={identity.assignment_id}")
    return "request(" + ", ".join(parts) + ")"


# --------------------------------------------------------------------------------------------
# The rules.  Each returns (candidates, rejected, detail) or None when it does not apply.


@attrs.frozen
class _Context:
    identity: Identity
    now: datetime
    repo: WorkerRepository
    policy: Policy
    claiming: str | None

    @property
    def live_since(self) -> datetime:
        return self.now - self.policy.stale_after


_Found = tuple[list[Worker], list[Candidate], str]
_RuleFn = Callable[[_Context], "_Found | str"]


def _rule_worker_id(ctx: _Context) -> _Found | str:
    hint = ctx.identity.worker_id
    if hint is None:
        return "the request carries no worker_id hint"
    worker = ctx.repo.get_worker(hint)
    hops = 0
    while worker is not None and worker.merged_into is not None and hops < 16:
        hops += 1
        worker = ctx.repo.get_worker(worker.merged_into)
    if worker is None:
        return (
            [],
            [Candidate(worker_id=hint, verdict=Verdict.REJECTED, reason="no such worker")],
            (f"the hint names worker {hint}"),
        )
    detail = f"the hint names worker {hint}"
    if worker.id != hint:
        detail += f", merged into {worker.id}"
    if worker.is_stale_at(ctx.now, ctx.policy.stale_after):
        return [], [_stale(worker, ctx)], detail
    return [worker], [], detail


def _rule_assignment(ctx: _Context) -> _Found | str:
    hint = ctx.identity.assignment_id
    if hint is None:
        return "the request carries no assignment hint"
    detail = f"the hint names assignment {hint}"
    assignment = ctx.repo.get_assignment(hint)
    if assignment is None:
        return [], [], detail + ", which does not exist"
    if assignment.status is not AssignmentStatus.RUNNING:
        return [], [], detail + f", which is {assignment.status.value}, not RUNNING"
    if assignment.worker_id is None:
        return [], [], detail + ", which is RUNNING but held by no worker"
    worker = ctx.repo.get_worker(assignment.worker_id)
    if worker is None:
        return [], [], detail + f", whose holder {assignment.worker_id} does not exist"
    if worker.is_stale_at(ctx.now, ctx.policy.stale_after):
        return [], [_stale(worker, ctx)], detail
    return [worker], [], detail + f", RUNNING on {worker.id}"


def _rule_exact_ip(ctx: _Context) -> _Found | str:
    found = list(ctx.repo.live_workers_by_ip(ctx.identity.ip, ctx.live_since))
    return found, [], f"live workers with ip {ctx.identity.ip}"


def _rule_recent_orphan(ctx: _Context) -> _Found | str:
    policy, now = ctx.policy, ctx.now
    if ctx.claiming is not None and policy.sessions:
        # An orphan is a claim's worker waiting for its GUI.  A claim starts a session of its
        # own: adopting an orphan would either join another session (which the session rule
        # forbids) or, for the orphan's own assignment, let a claim from an unrelated address
        # pass as a repeat of the holder's claim instead of being refused.
        return "a claim starts its own session; it never adopts another claim's worker"
    since = now - policy.orphan_window
    found: list[Worker] = []
    rejected: list[Candidate] = []
    for w in ctx.repo.recent_running_workers(since, ctx.live_since):
        quiet = now - w.last_seen > policy.quiet_period
        cond = policy.orphan_condition
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
    if (
        policy.own_stream
        and ctx.identity.hostname is not None
        and ctx.claiming is None
        and any(_ineligible(w, ctx) is None for w in found)
    ):
        own = _own_stream(ctx, found)
        if own is not None:
            found.append(own)
            rejected = [c for c in rejected if c.worker_id != own.id]
            detail += (
                f", and {own.id}, the one live worker of hostname {ctx.identity.hostname}, fed "
                f"within {_span(policy.quiet_period)}: its machine may have changed address"
            )
    if found and policy.orphan_guard and ctx.identity.hostname is None and ctx.claiming is None:
        rivals = _rivals(ctx, {w.id for w in found})
        if rivals:
            names = ", ".join(rivals[:3]) + (" and others" if len(rivals) > 3 else "")
            why = (
                f"the request carries no hostname and {names} "
                f"{'was' if len(rivals) == 1 else 'were'} fed within the quiet period of "
                f"{_span(policy.quiet_period)}: the request may come from "
                f"{'that machine' if len(rivals) == 1 else 'one of those machines'} after an "
                "address change (orphan guard; a duplicate is reconciled later, a hijack is not)"
            )
            rejected += [
                Candidate(worker_id=w.id, verdict=Verdict.REJECTED, reason=why) for w in found
            ]
            return [], rejected, detail
    return found, rejected, detail


# How far back, by creation time, _rivals looks in turn.  The guard needs one rival, not all of
# them: a busy fleet has one among its recent claims, so the search usually stops at the first
# window instead of reading every running worker of the fleet (which made a request without
# hostname cost time proportional to the fleet: 0.1 s at 2 * 10^5 workers).
_RIVAL_WINDOWS = (timedelta(hours=1), timedelta(days=1), timedelta(days=30))


def _rivals(ctx: _Context, orphans: set[str]) -> list[str]:
    """Live workers with a hostname and a RUNNING assignment, fed within the quiet period: the
    machines that could have sent a request without hostname from a new address.

    Returns those of the newest creation-time window that has any (sorted by id), or ``[]``
    when the whole fleet has none: whether the list is empty never depends on the windows.
    """
    seen_since = max(ctx.live_since, ctx.now - ctx.policy.quiet_period)
    windows = {ctx.now - ctx.policy.orphan_window, *(ctx.now - w for w in _RIVAL_WINDOWS)}
    for created_since in [*sorted(windows, reverse=True), _EPOCH]:
        found = sorted(
            w.id
            for w in ctx.repo.recent_running_workers(created_since, seen_since)
            if w.id not in orphans and w.hostname is not None and w.ended_at is None
        )
        if found:
            return found
    return []


def _own_stream(ctx: _Context, orphans: list[Worker]) -> Worker | None:
    """The one live worker of the request's hostname, of an unended session, holding a RUNNING
    assignment and fed within the quiet period, when it is not already an orphan candidate.
    ``None`` when there is none, or several (cloned hostnames prove nothing)."""
    assert ctx.identity.hostname is not None
    fed_since = max(ctx.live_since, ctx.now - ctx.policy.quiet_period)
    fed = [
        w
        for w in ctx.repo.live_workers_by_hostname(ctx.identity.hostname, fed_since)
        if w.ended_at is None and w.status is WorkerStatus.RUNNING
    ]
    if len(fed) != 1 or any(w.id == fed[0].id for w in orphans):
        return None
    return fed[0]


def _address_rivals(ctx: _Context, found: list[Worker], eligible: list[Worker]) -> list[Worker]:
    """Rule 2's rivals on a shared address (``Policy.address_rivals``): the other recent
    orphans of the fleet, when a request with a hostname finds at its IP only recent orphans
    whose hostname is unknown, and a live worker at that IP has another hostname."""
    host = ctx.identity.hostname
    if host is None or ctx.claiming is not None:
        return []
    since = ctx.now - ctx.policy.orphan_window
    for w in eligible:
        if (
            w.hostname is not None
            or w.ended_at is not None
            or w.status is not WorkerStatus.RUNNING
            or w.created_at < since
        ):
            return []
    if not any(w.hostname is not None and w.hostname != host for w in found):
        return []
    at_address = {w.id for w in found}
    return [
        w
        for w in ctx.repo.recent_running_workers(since, ctx.live_since)
        if w.id not in at_address and w.hostname is None and w.ended_at is None
    ]


def _rule_hostname(ctx: _Context) -> _Found | str:
    hostname = ctx.identity.hostname
    if hostname is None:
        return "the request carries no hostname"
    since = max(ctx.live_since, ctx.now - ctx.policy.hostname_window)
    found = list(ctx.repo.live_workers_by_hostname(hostname, since))
    return (
        found,
        [],
        (f"live workers with hostname {hostname} seen within {_span(ctx.policy.hostname_window)}"),
    )


RULES: dict[Rule, _RuleFn] = {
    Rule.WORKER_ID: _rule_worker_id,
    Rule.ASSIGNMENT: _rule_assignment,
    Rule.EXACT_IP: _rule_exact_ip,
    Rule.RECENT_ORPHAN: _rule_recent_orphan,
    Rule.HOSTNAME: _rule_hostname,
}
"""The rule table: each rule of the chain and the function that finds its candidates."""


# --------------------------------------------------------------------------------------------
# Filters shared by every rule.  Each returns a rejection reason or None.


def _stale(worker: Worker, ctx: _Context) -> Candidate:
    if worker.stale:
        why = "is flagged stale"
    else:
        why = f"was last seen {_age(ctx.now, worker.last_seen)} ago, past stale_after"
    return Candidate(worker_id=worker.id, verdict=Verdict.REJECTED, reason=why)


def _ineligible(worker: Worker, ctx: _Context) -> str | None:
    policy, identity = ctx.policy, ctx.identity
    if (
        worker.ended_at is not None
        and policy.ended_grace is not None
        and ctx.now - worker.ended_at > policy.ended_grace
    ):
        return (
            f"its session ended {_age(ctx.now, worker.ended_at)} ago, past the grace of "
            f"{_span(policy.ended_grace)} for trailing messages"
        )
    if (
        policy.hostname_veto
        and identity.hostname is not None
        and worker.hostname is not None
        and worker.hostname != identity.hostname
    ):
        return f"hostname veto: its hostname {worker.hostname} differs from {identity.hostname}"
    if ctx.claiming is not None and policy.sessions:
        if worker.assignment_id is not None and worker.assignment_id != ctx.claiming:
            return (
                f"session rule: it runs or ran assignment {worker.assignment_id}, "
                "so a claim starts a new worker"
            )
        if worker.ended_at is not None:
            return "session rule: its session ended, so a claim starts a new worker"
    return None


# --------------------------------------------------------------------------------------------
# Ranking


def _ip_prefix(a: str, b: str) -> int:
    x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    if x.version != y.version:
        return 0
    bits = x.max_prefixlen
    diff = int(x) ^ int(y)
    return bits - diff.bit_length()


def _key_part(criterion: Criterion, w: Worker, ctx: _Context) -> Any:
    if criterion is Criterion.HOSTNAME_AGREES:
        host = ctx.identity.hostname
        return 0 if host is not None and w.hostname == host else 1
    if criterion is Criterion.LIVE_SESSION:
        return 0 if w.ended_at is None else 1
    if criterion is Criterion.HOLDS_RUNNING:
        return 0 if w.status is WorkerStatus.RUNNING else 1
    if criterion is Criterion.RECENTLY_SEEN:
        return _EPOCH - w.last_seen
    if criterion is Criterion.NEAREST_IP:
        return -_ip_prefix(w.ip, ctx.identity.ip)
    if criterion is Criterion.NEWEST:
        return _EPOCH - w.created_at
    return w.created_at - _EPOCH  # Criterion.OLDEST


def _rank(workers: list[Worker], ctx: _Context) -> list[tuple[Worker, tuple[Any, ...]]]:
    keyed = [(w, (*(_key_part(c, w, ctx) for c in ctx.policy.ranking), w.id)) for w in workers]
    keyed.sort(key=lambda pair: pair[1])
    return keyed


def _why_outranked(
    key: tuple[Any, ...], best_key: tuple[Any, ...], winner: str, ranking: Sequence[Criterion]
) -> str:
    for criterion, mine, theirs in zip(ranking, key, best_key, strict=False):
        if mine != theirs:
            return f"ranked below {winner} on {criterion.value}"
    return f"ranked below {winner} on worker id (every criterion tied)"


# --------------------------------------------------------------------------------------------
# The chain


def run_chain(
    identity: Identity,
    now: datetime,
    repo: WorkerRepository,
    policy: Policy,
    chain: Sequence[Rule],
    *,
    claiming: str | None = None,
) -> Decision:
    """Walk ``chain`` in order and return the decision.  Arguments must be valid already.

    ``claiming`` is the assignment a claim takes: with ``policy.sessions`` it makes workers of
    other sessions ineligible (the session rule).  Raises :class:`~workermatch.AmbiguousMatch`
    when the policy refuses ambiguous matches and the winning rule has several candidates.
    """
    ctx = _Context(identity, now, repo, policy, claiming)
    reports: list[RuleReport] = []
    for index, rule in enumerate(chain):
        found = RULES[rule](ctx)
        if isinstance(found, str):
            reports.append(RuleReport(rule=rule, outcome="not applicable", detail=found))
            continue
        workers, rejected, detail = found
        eligible: list[Worker] = []
        for w in workers:
            why = _ineligible(w, ctx)
            if why is None:
                eligible.append(w)
            else:
                rejected.append(Candidate(worker_id=w.id, verdict=Verdict.REJECTED, reason=why))
        if not eligible:
            reports.append(
                RuleReport(
                    rule=rule,
                    outcome="no candidates",
                    detail=detail,
                    candidates=_sorted(rejected),
                )
            )
            continue
        ranked = _rank(eligible, ctx)
        rivals: dict[str, str] = {}
        if rule is Rule.EXACT_IP and policy.address_rivals:
            extra = [
                w for w in _address_rivals(ctx, workers, eligible) if _ineligible(w, ctx) is None
            ]
            if extra:
                # Ranked below every worker at the request's address, by the same order.
                ranked += _rank(extra, ctx)
                rivals = {
                    w.id: (
                        f"a claim at {w.ip} still waiting for its GUI: on a shared address the "
                        "request may come from its machine after an address change; ranked "
                        f"below {ranked[0][0].id}, at the request's address"
                    )
                    for w in extra
                }
                detail += (
                    ", which other machines share (a live worker there has another hostname): "
                    "the fleet's other recent orphans are rivals"
                )
        ambiguous = len(ranked) > 1
        if ambiguous and policy.on_ambiguous is OnAmbiguous.SKIP_RULE:
            passed = [
                Candidate(
                    worker_id=w.id,
                    verdict=Verdict.PASSED_OVER,
                    reason="the rule had several candidates and the policy skips ambiguous rules",
                )
                for w, _ in ranked
            ]
            reports.append(
                RuleReport(
                    rule=rule,
                    outcome="passed over",
                    detail=detail + f"; {len(ranked)} candidates could not be told apart",
                    candidates=tuple(passed) + _sorted(rejected),
                )
            )
            continue
        winner, best_key = ranked[0]
        taken = [
            Candidate(
                worker_id=winner.id,
                verdict=Verdict.TAKEN,
                reason=(
                    f"best of {len(ranked)} candidates by {_order(policy)}"
                    if ambiguous
                    else "the only eligible candidate"
                ),
            )
        ]
        taken += [
            Candidate(
                worker_id=w.id,
                verdict=Verdict.OUTRANKED,
                reason=rivals.get(w.id) or _why_outranked(key, best_key, winner.id, policy.ranking),
            )
            for w, key in ranked[1:]
        ]
        reports.append(
            RuleReport(
                rule=rule,
                outcome="matched",
                detail=detail,
                candidates=tuple(taken) + _sorted(rejected),
            )
        )
        reports.extend(
            RuleReport(rule=r, outcome="not reached", detail=f"{rule.value} matched first")
            for r in chain[index + 1 :]
        )
        decision = Decision(
            identity=identity,
            now=now,
            policy=policy.name,
            rule=rule,
            worker=winner,
            ambiguous=ambiguous,
            reports=tuple(reports),
            outranked=tuple(w for w, _ in ranked[1:]),
        )
        if ambiguous and policy.on_ambiguous is OnAmbiguous.REFUSE:
            raise AmbiguousMatch(
                f"rule {rule.value} found {len(ranked)} candidates "
                f"({', '.join(w.id for w, _ in ranked)}) and the policy refuses ambiguous "
                "matches",
                decision=decision,
            )
        return decision
    return Decision(
        identity=identity,
        now=now,
        policy=policy.name,
        rule=Rule.CREATED,
        worker=None,
        ambiguous=False,
        reports=tuple(reports),
    )


def _sorted(candidates: list[Candidate]) -> tuple[Candidate, ...]:
    return tuple(sorted(candidates, key=lambda c: c.worker_id))


def _order(policy: Policy) -> str:
    return ", ".join(c.value for c in policy.ranking) + ", worker id"


def match_worker(
    identity: Identity,
    now: datetime,
    repo: WorkerRepository,
    policy: Policy = DEFAULT_POLICY,
    *,
    kind: Any = None,
) -> Decision:
    """Decide which worker a request with ``identity`` belongs to at ``now``.  Writes nothing.

    ``kind`` (an :class:`~workermatch.EventKind`) selects a per-kind chain where the policy has
    one (the legacy policy's endpoints); by default the policy's common chain is used.  A claim's
    session rule needs the claimed assignment: use :func:`~workermatch.plan` for events.

    Raises :class:`~workermatch.InvalidInput` for a bad argument (before reading anything) and
    :class:`~workermatch.AmbiguousMatch` when the policy refuses an ambiguous match.
    """
    from ._model import EventKind

    if not isinstance(identity, Identity):
        raise InvalidInput(
            f"identity must be an Identity, not {type(identity).__name__}",
            field="identity",
            value=identity,
        )
    now = normalize_time(now)
    if not isinstance(policy, Policy):
        raise InvalidInput(
            f"policy must be a Policy, not {type(policy).__name__}", field="policy", value=policy
        )
    if kind is None:
        chain = policy.chain
    else:
        try:
            chain = policy.chain_for(EventKind(kind))
        except ValueError:
            raise InvalidInput(f"unknown event kind {kind!r}", field="kind", value=kind) from None
    return run_chain(identity, now, repo, policy, chain)


def _age(now: datetime, then: datetime) -> str:
    return _span(max(now - then, now - now))


def _span(delta: Any) -> str:
    seconds = delta.total_seconds()
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    if seconds == int(seconds):
        return f"{int(seconds)} s"
    return f"{seconds:.3f} s"
