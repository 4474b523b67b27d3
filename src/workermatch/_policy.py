"""Policies: the windows of the matching rules, what to do with doubt, and the rule table.

Three policies ship:

* :data:`DEFAULT_POLICY` -- the library's table, windows chosen by measurement
  (``docs/tuning.md``).
* :data:`NOTE_POLICY` -- the design note to the letter: its windows, its table.
* :data:`LEGACY_POLICY` -- the per-endpoint logic the note describes before its fix.

Derive your own with :func:`attrs.evolve` or :meth:`Policy.evolve`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import attrs

from ._decision import (
    DEFAULT_RULES,
    LEGACY_RULES,
    NOTE_RULES,
    Criterion,
    OnAmbiguous,
    OrphanCondition,
    Rule,
    Rules,
)
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
    "Rules",
    "get_policy",
]


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


def _c_rules(value: object) -> Rules:
    if isinstance(value, str):
        try:
            return _TABLES[value]
        except KeyError:
            raise InvalidInput(
                f"rules {value!r} is not one of {', '.join(map(repr, _TABLES))}",
                field="rules",
                value=value,
            ) from None
    if not isinstance(value, Rules):
        raise InvalidInput("rules must be a Rules table", field="rules", value=value)
    return value


@attrs.frozen(kw_only=True)
class Policy:
    """The windows the rules use, what to do with doubt, and the rule table.  Immutable; derive
    with :meth:`evolve`.

    The defaults here are :data:`DEFAULT_POLICY`'s; ``docs/tuning.md`` explains each and the
    measurement that chose it.  What the rules *do* is the table (:class:`Rules`):
    :data:`DEFAULT_RULES`, :data:`NOTE_RULES` or :data:`LEGACY_RULES`.
    """

    name: str = attrs.field(default="custom")
    """A label that shows in explanations and replays."""

    stale_after: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_delta("stale_after")
    )
    """A worker silent for longer than this is stale: only a hint brings it back.  Also the
    longest silence after which a duplicate is still reconciled with the worker it repeats."""

    orphan_window: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_delta("orphan_window")
    )
    """Rule 3 considers workers created within this window before ``now``."""

    quiet_period: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_positive_delta("quiet_period")
    )
    """How long a stream may pause and still be "fed": rule 3's quiet condition, the live
    streams that weigh against an orphan, the throttle of keeping an address alive, and (twice
    over) when a machine's heartbeats count as stopped."""

    hostname_window: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=_positive_delta("hostname_window")
    )
    """Rule 4 considers workers with the request's hostname seen within this window."""

    ended_grace: timedelta | None = attrs.field(
        # 10 s: the real client stops 3 s after "finished"; 30 s let the next batch session's
        # first requests see the ended worker too.
        default=timedelta(seconds=10),
        validator=_optional_delta,
    )
    """After its session ended, a worker answers its machine's trailing messages this long, then
    no rule matches it; a held end's candidate heard from within it proves nothing.  ``None``:
    forever (until stale)."""

    on_ambiguous: OnAmbiguous = attrs.field(
        default=OnAmbiguous.TIE_BREAK, converter=_c_on_ambiguous
    )
    """What to do when the evidence cannot separate the winning rule's best candidates."""

    rules: Rules = attrs.field(default=DEFAULT_RULES, converter=_c_rules)
    """The rule table: the chain, the ranking, the guards and the effects."""

    @name.validator
    def _check_name(self, _: object, value: object) -> None:
        if not isinstance(value, str) or not value:
            raise InvalidInput("Policy.name must be a non-empty string", field="name", value=value)

    def chain_for(self, kind: EventKind) -> tuple[Rule, ...]:
        """The rules a request of ``kind`` goes through, in order."""
        return self.rules.chain_for(kind)

    def evolve(self, **changes: Any) -> Policy:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return attrs.evolve(self, **changes)


_TABLES = {t.name: t for t in (DEFAULT_RULES, NOTE_RULES, LEGACY_RULES)}

DEFAULT_POLICY = Policy(name="default")
"""The library's default policy: the default table, windows chosen by measurement."""

NOTE_POLICY = Policy(
    name="note",
    stale_after=timedelta(minutes=5),
    orphan_window=timedelta(minutes=2),
    quiet_period=timedelta(seconds=30),
    hostname_window=timedelta(minutes=5),
    ended_grace=None,
    rules=NOTE_RULES,
)
"""The design note to the letter: exact IP, then a recent worker (2 min) with a RUNNING
assignment quiet for 30 s, then hostname (5 min), then create and transfer, on every route;
"first match wins" (the earliest created candidate, as an unordered ``findFirst`` returns it);
no guard, no hints."""

LEGACY_POLICY = Policy(
    name="legacy",
    stale_after=timedelta(minutes=5),
    orphan_window=timedelta(minutes=2),
    quiet_period=timedelta(seconds=30),
    hostname_window=timedelta(minutes=5),
    ended_grace=None,
    rules=LEGACY_RULES,
)
"""The per-endpoint logic before the note's fix: claim and register match by IP or create;
heartbeat by IP, then hostname, then create; gui-update by IP, then a recent worker (2 min)
holding a RUNNING assignment, then create; a new worker takes the RUNNING work of stale workers
with its IP or hostname.  No guard, no hints; the last claimer wins."""

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
