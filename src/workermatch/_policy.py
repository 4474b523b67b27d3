"""Policies: every window and every choice the matching rules make, in one immutable value.

Three policies ship:

* :data:`DEFAULT_POLICY` -- what semantics.md asks for, windows chosen by measurement
  (``docs/accuracy.md``).
* :data:`NOTE_POLICY` -- the design note to the letter: its windows, its order, "first match
  wins", no hostname veto, no session rule, no hints.
* :data:`LEGACY_POLICY` -- the per-endpoint logic the note describes before its fix.

Derive your own with :func:`attrs.evolve` or :meth:`Policy.evolve`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import InvalidInput
from ._model import EventKind

__all__ = [
    "DEFAULT_POLICY",
    "LEGACY_POLICY",
    "NOTE_POLICY",
    "POLICIES",
    "Criterion",
    "OnAmbiguous",
    "OrphanCondition",
    "Policy",
    "Rule",
    "get_policy",
]


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
    """One step of the order that ranks several candidates of one rule (best first)."""

    HOSTNAME_AGREES = "hostname_agrees"
    """A candidate whose hostname equals the request's ranks above one whose hostname is unknown."""
    LIVE_SESSION = "live_session"
    """A candidate whose session has not ended ranks above one whose session ended."""
    HOLDS_RUNNING = "holds_running"
    """A candidate holding a RUNNING assignment ranks above one that does not."""
    RECENTLY_SEEN = "recently_seen"
    """The most recently seen candidate ranks first."""
    NEAREST_IP = "nearest_ip"
    """The candidate whose IP shares the longest prefix with the request's ranks first."""
    NEWEST = "newest"
    """The most recently created candidate ranks first."""
    OLDEST = "oldest"
    """The earliest created candidate ranks first ("first match wins")."""

    def __repr__(self) -> str:
        return f"Criterion.{self.name}"


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
    """What to do when the winning rule has several candidates."""

    TIE_BREAK = "tie_break"
    """Take the best-ranked candidate; the decision is flagged ``ambiguous``."""
    SKIP_RULE = "skip_rule"
    """Pass over the rule as if it had found nothing (prefer a duplicate to a guess)."""
    REFUSE = "refuse"
    """Raise :class:`~workermatch.AmbiguousMatch`; nothing is written."""

    def __repr__(self) -> str:
        return f"OnAmbiguous.{self.name}"


_FULL_CHAIN = (
    Rule.WORKER_ID,
    Rule.ASSIGNMENT,
    Rule.EXACT_IP,
    Rule.RECENT_ORPHAN,
    Rule.HOSTNAME,
)


def _positive_delta(field: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, timedelta) or value < timedelta(0):
            raise InvalidInput(
                f"Policy.{attribute.name} must be a non-negative timedelta, not {value!r}",
                field=attribute.name,
                value=value,
            )

    return check


def _optional_delta(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _positive_delta(attribute.name)(_, attribute, value)


def _convert_chain(value: object) -> tuple[Rule, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInput("a chain must be a sequence of rules", field="chain", value=value)
    try:
        rules = tuple(Rule(v) for v in value)
    except ValueError as exc:
        raise InvalidInput(f"unknown rule in chain: {exc}", field="chain", value=value) from None
    if Rule.CREATED in rules:
        raise InvalidInput(
            "'created' is not a rule to list: every chain ends by creating a worker",
            field="chain",
            value=value,
        )
    if len(set(rules)) != len(rules):
        raise InvalidInput("a chain lists each rule at most once", field="chain", value=value)
    return rules


def _convert_chains(value: object) -> tuple[tuple[EventKind, tuple[Rule, ...]], ...]:
    items: Any = value.items() if isinstance(value, Mapping) else value
    result: dict[EventKind, tuple[Rule, ...]] = {}
    try:
        for kind, chain in items:
            result[EventKind(kind)] = _convert_chain(chain)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(
            f"chains must map event kinds to rule sequences: {exc}", field="chains", value=value
        ) from None
    return tuple(sorted(result.items(), key=lambda kv: list(EventKind).index(kv[0])))


def _convert_ranking(value: object) -> tuple[Criterion, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInput("ranking must be a sequence of criteria", field="ranking", value=value)
    try:
        ranking = tuple(Criterion(v) for v in value)
    except ValueError as exc:
        raise InvalidInput(f"unknown criterion: {exc}", field="ranking", value=value) from None
    if len(set(ranking)) != len(ranking):
        raise InvalidInput("ranking lists each criterion once", field="ranking", value=value)
    return ranking


def _c_orphan_condition(value: object) -> OrphanCondition:
    try:
        return OrphanCondition(value)
    except ValueError:
        raise InvalidInput(
            f"orphan_condition {value!r} is not one of "
            + ", ".join(repr(m.value) for m in OrphanCondition),
            field="orphan_condition",
            value=value,
        ) from None


def _c_on_ambiguous(value: object) -> OnAmbiguous:
    try:
        return OnAmbiguous(value)
    except ValueError:
        raise InvalidInput(
            f"on_ambiguous {value!r} is not one of "
            + ", ".join(repr(m.value) for m in OnAmbiguous),
            field="on_ambiguous",
            value=value,
        ) from None


@attrs.frozen(kw_only=True)
class Policy:
    """Every window and choice of the matching rules.  Immutable; derive with :meth:`evolve`.

    The defaults here are :data:`DEFAULT_POLICY`'s; ``docs/policies.md`` explains each and the
    measurement that chose it.
    """

    name: str = attrs.field(default="custom")
    """A label that shows in explanations and replays."""

    stale_after: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_delta("stale_after")
    )
    """A worker silent for longer than this is stale: no rule matches it any more."""

    orphan_window: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_delta("orphan_window")
    )
    """Rule 3 considers workers created within this window before ``now``."""

    quiet_period: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_positive_delta("quiet_period")
    )
    """Rule 3: a worker silent for this long is not being fed by another live stream."""

    orphan_condition: OrphanCondition = attrs.field(
        default=OrphanCondition.NO_HOSTNAME_OR_QUIET,
        converter=_c_orphan_condition,
    )
    """Rule 3: which recent workers with a RUNNING assignment count as orphans."""

    orphan_guard: bool = attrs.field(default=True)
    """Rule 3 adopts an orphan for a request *without* hostname only when no other live stream
    could have sent it: while a worker with a hostname and a RUNNING assignment was fed within
    ``quiet_period``, the request may come from that machine after an address change (the VPN
    flips mid-run, and the first request from the new address is an update), so rule 3 passes
    and the chain goes on (usually creating a duplicate that :attr:`merge_gap` reconciles when
    the next heartbeat reveals its hostname).  Claims and requests with a hostname are never
    guarded.  ``False``: rule 3 as the note writes it.  Figures in ``docs/accuracy.md``."""

    own_stream: bool = attrs.field(default=True)
    """Rule 3 and a stream that moves: for a request *with* a hostname, when exactly one live
    worker of an unended session has that hostname, holds a RUNNING assignment and was fed
    within ``quiet_period``, that stream may be the request's own machine, whose address just
    changed.  It is then no "other live stream": it joins rule 3's candidates (and ranks above
    hostname-less orphans by ``hostname_agrees``), so a heartbeat from a new address does not
    quietly take another machine's fresh claim worker, and the decision is flagged ambiguous.
    Two or more such workers (cloned hostnames) prove nothing and none joins.  ``False``: rule 3
    as semantics.md writes it.  Figures in ``docs/accuracy.md``."""

    address_rivals: bool = attrs.field(default=True)
    """Rule 2 on a shared address: when a request *with* a hostname finds at its IP only recent
    orphans whose hostname is still unknown, and the address is known to be shared (a live
    worker there has another hostname), the other recent orphans of the fleet are candidates
    too, ranked below those at the request's IP: the request may come from one of those claims'
    machines after an address change.  The decision still takes the worker at its address, and
    is flagged ambiguous.  Figures in ``docs/accuracy.md``."""

    shared_liveness: bool = attrs.field(default=True)
    """A request without hostname that rule 2 cannot attribute (several live workers at its
    address: machines behind one NAT, two runs on one machine) proves that *one* of them is
    alive, not which.  It is placed on the best-ranked one, as always, and refreshes the
    ``last_seen`` of the others that run an unended session and whose hostname is unknown, so
    that a machine whose requests keep landing on a neighbour's worker does not see its own go
    stale, its running work stranded, and its ``finished`` land elsewhere.  (A worker whose
    hostname is known has its own heartbeats to keep it alive, and its silence must stay
    visible to reconciliation.)  A worker is refreshed at most once per ``quiet_period``, so
    that it costs one more row written per such candidate and period, not per request.  Figures
    in ``docs/accuracy.md``."""

    hostname_window: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_delta("hostname_window")
    )
    """Rule 4 considers workers with the request's hostname seen within this window."""

    ended_grace: timedelta | None = attrs.field(
        # 10 s: the real client stops 3 s after "finished"; 30 s let the next batch session's
        # first requests see the ended worker too (flagged ambiguous; docs/accuracy.md).
        default=timedelta(seconds=10),
        validator=_optional_delta,
    )
    """After its session ended, a worker answers its machine's trailing messages this long, then
    no rule matches it.  ``None``: forever (until stale)."""

    merge_gap: timedelta | None = attrs.field(
        default=timedelta(seconds=30), validator=_optional_delta
    )
    """Reconcile a duplicate after the fact (the mid-run address change): when a request with a
    hostname lands on a worker that had none, and exactly one other live worker of an unended
    session has that hostname and went silent at most this long before the duplicate appeared
    (and not after), the duplicate is merged into it, leaving ``merged_into`` as a forward
    pointer.  ``None``: never merge."""

    hostname_veto: bool = attrs.field(default=True)
    """A worker whose hostname is known never matches a request with a different hostname."""

    sessions: bool = attrs.field(default=True)
    """The claim's session rule: a claim never joins a worker that holds or held another
    assignment, a repeated claim is idempotent, and a claim of an assignment RUNNING on another
    live worker (or already finished) is refused.  ``False``: the last claimer wins."""

    transfer_stale: bool = attrs.field(default=True)
    """On create, move the RUNNING assignments of stale workers with the request's IP or
    hostname onto the new worker (never on a claim, whose worker runs the claimed assignment)."""

    ranking: tuple[Criterion, ...] = attrs.field(
        default=(
            # A live session outranks an ended one before hostnames are compared: the next batch
            # session's first heartbeat (same IP, same hostname) arrives within ended_grace of
            # the previous session's end and must join the new session's claim worker, not the
            # ended worker whose hostname is already known (guarantee 2, sessions stay apart).
            Criterion.LIVE_SESSION,
            Criterion.HOSTNAME_AGREES,
            Criterion.HOLDS_RUNNING,
            # Then the oldest: among workers that cannot be told apart (machines sharing a NAT
            # or VPN address, updates without hostname), first come, first served.  Measured
            # against recently_seen + newest in docs/accuracy.md: far fewer lost assignments
            # behind shared addresses, the same elsewhere.
            Criterion.OLDEST,
        ),
        converter=_convert_ranking,
    )
    """How several candidates of one rule are ordered, best first.  The worker id, smallest
    first, breaks any tie that remains, so every decision is deterministic."""

    on_ambiguous: OnAmbiguous = attrs.field(
        default=OnAmbiguous.TIE_BREAK, converter=_c_on_ambiguous
    )
    """What to do when the winning rule has more than one candidate."""

    chain: tuple[Rule, ...] = attrs.field(default=_FULL_CHAIN, converter=_convert_chain)
    """The rules every event kind goes through, in order; creating a worker always ends it."""

    chains: tuple[tuple[EventKind, tuple[Rule, ...]], ...] = attrs.field(
        default=(), converter=_convert_chains
    )
    """Per-event-kind chains that replace :attr:`chain` for that kind (the legacy endpoints)."""

    @name.validator
    def _check_name(self, _: object, value: object) -> None:
        if not isinstance(value, str) or not value:
            raise InvalidInput("Policy.name must be a non-empty string", field="name", value=value)

    @hostname_veto.validator
    @orphan_guard.validator
    @own_stream.validator
    @address_rivals.validator
    @shared_liveness.validator
    @sessions.validator
    @transfer_stale.validator
    def _check_bool(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, bool):
            raise InvalidInput(
                f"Policy.{attribute.name} must be a bool", field=attribute.name, value=value
            )

    def chain_for(self, kind: EventKind) -> tuple[Rule, ...]:
        """The rules a request of ``kind`` goes through, in order."""
        for k, rules in self.chains:
            if k is kind:
                return rules
        return self.chain

    def evolve(self, **changes: Any) -> Policy:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return attrs.evolve(self, **changes)


DEFAULT_POLICY = Policy(name="default")
"""The library's default policy (semantics.md; windows chosen by measurement)."""

NOTE_POLICY = Policy(
    name="note",
    stale_after=timedelta(minutes=5),
    orphan_window=timedelta(minutes=2),
    quiet_period=timedelta(seconds=30),
    orphan_condition=OrphanCondition.QUIET,
    hostname_window=timedelta(minutes=5),
    ended_grace=None,
    merge_gap=None,
    orphan_guard=False,
    own_stream=False,
    address_rivals=False,
    shared_liveness=False,
    hostname_veto=False,
    sessions=False,
    transfer_stale=True,
    ranking=(Criterion.OLDEST,),
    on_ambiguous=OnAmbiguous.TIE_BREAK,
    chain=(Rule.EXACT_IP, Rule.RECENT_ORPHAN, Rule.HOSTNAME),
)
"""The design note to the letter: exact IP, then a recent worker (2 min) with a RUNNING
assignment quiet for 30 s, then hostname (5 min), then create and transfer; "first match wins"
(the earliest created candidate, as an unordered ``findFirst`` returns it); no veto, no session
rule, no hints."""

LEGACY_POLICY = Policy(
    name="legacy",
    stale_after=timedelta(minutes=5),
    orphan_window=timedelta(minutes=2),
    quiet_period=timedelta(seconds=30),
    orphan_condition=OrphanCondition.ANY,
    hostname_window=timedelta(minutes=5),
    ended_grace=None,
    merge_gap=None,
    orphan_guard=False,
    own_stream=False,
    address_rivals=False,
    shared_liveness=False,
    hostname_veto=False,
    sessions=False,
    transfer_stale=False,
    ranking=(Criterion.OLDEST,),
    on_ambiguous=OnAmbiguous.TIE_BREAK,
    chain=(Rule.EXACT_IP,),
    chains={
        EventKind.HEARTBEAT: (Rule.EXACT_IP, Rule.HOSTNAME),
        EventKind.GUI_UPDATE: (Rule.EXACT_IP, Rule.RECENT_ORPHAN),
    },
)
"""The per-endpoint logic before the note's fix ("Current Logic Flow"): claim and register
match by IP or create; heartbeat by IP, then hostname, then create; gui-update by IP, then a
recent worker (2 min) holding a RUNNING assignment, then create.  No veto, no sessions, no
transfer, no hints; the last claimer wins."""

POLICIES: Mapping[str, Policy] = MappingProxyType(
    {p.name: p for p in (DEFAULT_POLICY, NOTE_POLICY, LEGACY_POLICY)}
)
"""The shipped policies by name: ``default``, ``note`` and ``legacy``."""


def get_policy(name: str) -> Policy:
    """The shipped policy called ``name``; :class:`~workermatch.InvalidInput` if there is none."""
    try:
        return POLICIES[name]
    except KeyError:
        raise InvalidInput(
            f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}",
            field="policy",
            value=name,
        ) from None
