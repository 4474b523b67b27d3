"""The named scenarios of ``workermatch simulate`` and the candidate policies it compares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import attrs

from .._decision import Effect, Guard
from .._errors import InvalidInput
from .._policy import (
    DEFAULT_POLICY,
    LEGACY_POLICY,
    NOTE_POLICY,
    Criterion,
    OnAmbiguous,
    Policy,
    Rule,
)
from ._fleet import FleetParams

__all__ = ["CANDIDATE_POLICIES", "SCENARIOS", "SHIPPED", "Scenario", "resolve_policies"]


@attrs.frozen(kw_only=True)
class Scenario:
    """A named fleet: one hard case (``docs/how-it-decides.md``), or a realistic mix."""

    name: str
    summary: str
    params: FleetParams
    solvable: bool
    """Whether the library promises one worker per session here (guarantee 1's precondition
    holds for every session, and no two sessions compete for a request)."""


_VPN = FleetParams(machines=1, vpn_share=1.0, vpn_pool=64, flip_rate=1.0)
# Laptops that sleep about 2 h mid-run; the hinted scenario is the same fleet with hints.
_LONG_SLEEP = _VPN.evolve(
    machines=4,
    start_spread_min=10.0,
    session_s=(10800.0, 14400.0),
    outages_per_hour=0.4,
    outage_s=(6600.0, 7800.0),
)
_TWO_RUNS = FleetParams(machines=4, concurrent_share=1.0, start_spread_min=30.0)
# A realistic fleet; the mixed-hints scenario is the same fleet with every client sending hints.
_MIXED = FleetParams(
    machines=20,
    duration_min=120.0,
    start_spread_min=30.0,
    batch=True,
    vpn_share=0.5,
    vpn_pool=6,
    flip_rate=0.5,
    midrun_flips_per_hour=0.3,
    nat_share=0.2,
    slow_gui_share=0.15,
    blips_per_hour=0.5,
    outages_per_hour=0.1,
    concurrent_share=0.05,
    cloned_share=0.1,
)

SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {
        s.name: s
        for s in (
            Scenario(
                name="note-story",
                summary="the design note's story: the VPN gives the GUI another address than "
                "the claim, GUI 5-90 s after it; one machine, sessions one after another",
                params=_VPN.evolve(machines=1, batch=True, duration_min=240.0),
                solvable=True,
            ),
            Scenario(
                name="slow-gui",
                summary="the GUI starts 2 to 4 minutes after the claim, on another address; "
                "no other claim in sight",
                params=_VPN.evolve(machines=1, batch=True, duration_min=240.0, slow_gui_share=1.0),
                solvable=True,
            ),
            Scenario(
                name="batch",
                summary="sequential sessions: each machine claims its next assignment 4-8 s "
                "after finishing, from the same address and hostname",
                params=FleetParams(
                    machines=6,
                    batch=True,
                    duration_min=120.0,
                    start_spread_min=5.0,
                    session_s=(120.0, 600.0),
                ),
                solvable=True,
            ),
            Scenario(
                name="blips",
                summary="silences shorter than stale_after (20-200 s) in the middle of runs",
                params=FleetParams(machines=6, batch=True, duration_min=120.0, blips_per_hour=4.0),
                solvable=True,
            ),
            Scenario(
                name="outages",
                summary="silences longer than stale_after (6-10 min), same address after",
                params=FleetParams(
                    machines=6,
                    batch=True,
                    duration_min=120.0,
                    outages_per_hour=2.0,
                    session_s=(900.0, 1800.0),
                ),
                solvable=False,
            ),
            Scenario(
                name="midrun-flip",
                summary="the VPN changes the GUI's address mid-run; the first request from the "
                "new address is usually an update without hostname",
                params=_VPN.evolve(
                    machines=6,
                    batch=True,
                    duration_min=120.0,
                    flip_rate=0.0,
                    midrun_flips_per_hour=3.0,
                ),
                solvable=False,
            ),
            Scenario(
                name="simultaneous-vpn",
                summary="8 machines claim within 2 minutes on one VPN of 3 addresses; GUIs "
                "start 5-90 s later on fresh lookups",
                params=FleetParams(
                    machines=8, start_spread_min=2.0, vpn_share=1.0, vpn_pool=3, flip_rate=0.5
                ),
                solvable=False,
            ),
            Scenario(
                name="nat",
                summary="machines in threes behind one NAT address, starting within minutes",
                params=FleetParams(
                    machines=6, nat_share=1.0, start_spread_min=5.0, batch=True, duration_min=60.0
                ),
                solvable=False,
            ),
            Scenario(
                name="nat-no-hostname",
                summary="as nat, with clients that never send a hostname",
                params=FleetParams(
                    machines=6,
                    nat_share=1.0,
                    start_spread_min=5.0,
                    batch=True,
                    duration_min=60.0,
                    hostnames=False,
                ),
                solvable=False,
            ),
            Scenario(
                name="two-runs",
                summary="two runs at once on one machine (same address, same hostname)",
                params=_TWO_RUNS,
                solvable=False,
            ),
            Scenario(
                name="two-runs-hints",
                summary="as two-runs, with clients that send the worker_id of their claim "
                "response with every request",
                params=attrs.evolve(_TWO_RUNS, hint_share=1.0, hint_kind="worker_id"),
                solvable=True,
            ),
            Scenario(
                name="cloned-hostnames",
                summary="8 machines cloned from one image (one hostname for all) on the VPN, "
                "claiming within minutes of each other in batch mode",
                params=FleetParams(
                    machines=8,
                    cloned_share=1.0,
                    vpn_share=1.0,
                    vpn_pool=64,
                    flip_rate=0.5,
                    start_spread_min=10.0,
                    batch=True,
                    duration_min=60.0,
                ),
                solvable=False,
            ),
            Scenario(
                name="nat-pair",
                summary="two machines behind one NAT address (heartbeats carry hostnames), "
                "claiming within 3 minutes; half the time the later one finishes first",
                params=FleetParams(
                    machines=2, nat_share=1.0, nat_size=2, start_spread_min=3.0, gui_delay_s=(5, 30)
                ),
                solvable=False,
            ),
            Scenario(
                name="carrier-nat",
                summary="12 machines behind one carrier-grade NAT address (heartbeats carry "
                "hostnames), starting within 10 minutes and finishing in another order",
                params=FleetParams(machines=12, nat_share=1.0, nat_size=12, start_spread_min=10.0),
                solvable=False,
            ),
            Scenario(
                name="dhcp-reuse",
                summary="half the clients crash mid-run; 60 s later the DHCP server gives the "
                "crashed machine's address to a newcomer, which claims and runs from it",
                params=FleetParams(machines=6, start_spread_min=10.0, crash_share=0.5),
                solvable=False,
            ),
            Scenario(
                name="long-sleep",
                summary="laptops on the VPN sleep about 2 h mid-run and wake on a new address",
                params=_LONG_SLEEP,
                solvable=False,
            ),
            Scenario(
                name="long-sleep-hints",
                summary="as long-sleep, with clients that send a hint (worker id or "
                "assignment) with every request",
                params=_LONG_SLEEP.evolve(hint_share=1.0, hint_kind="mixed"),
                solvable=True,
            ),
            Scenario(
                name="vpn-blips",
                summary="silences of 100-200 s mid-run on the VPN, each followed by a new "
                "address; the first request back is usually an update",
                params=_VPN.evolve(
                    machines=6,
                    batch=True,
                    duration_min=120.0,
                    blips_per_hour=3.0,
                    blip_s=(100.0, 200.0),
                ),
                solvable=False,
            ),
            Scenario(
                name="clones-running",
                summary="4 machines cloned from one image (one hostname), started on the VPN "
                "within 3 minutes, each while its twins run",
                params=FleetParams(
                    machines=4,
                    cloned_share=1.0,
                    vpn_share=1.0,
                    vpn_pool=64,
                    flip_rate=0.5,
                    start_spread_min=3.0,
                ),
                solvable=False,
            ),
            Scenario(
                name="rename",
                summary="machines renamed mid-run: later heartbeats carry the new hostname",
                params=FleetParams(machines=6, batch=True, duration_min=60.0, rename_share=0.5),
                solvable=False,
            ),
            Scenario(
                name="mixed",
                summary="a realistic fleet: 20 machines for 2 hours in batch mode; half on a "
                "VPN of 6 addresses, a fifth of the rest behind NAT; slow GUIs, blips, "
                "outages, mid-run flips, clones and double runs, no hints",
                params=_MIXED,
                solvable=False,
            ),
            Scenario(
                name="mixed-hints",
                summary="the mixed fleet with clients that all send hints (half worker_id, "
                "half assignment)",
                params=attrs.evolve(_MIXED, hint_share=1.0, hint_kind="mixed"),
                solvable=False,
            ),
        )
    }
)
"""The named scenarios of ``workermatch simulate``: one per hard case, and a realistic mix."""


def _candidates() -> dict[str, Policy]:
    d = DEFAULT_POLICY
    rules = d.rules
    # The default's ranking up to its tail of "which of several equally good candidates".
    base = tuple(c for c in rules.ranking if c.is_evidence)

    def table(**changes: Any) -> Policy:
        return d.evolve(rules=attrs.evolve(rules, name="variant", **changes))

    def without(*effects: Effect) -> Policy:
        return table(effects=rules.effects - set(effects))

    orphan = rules.row(Rule.RECENT_ORPHAN)
    out = {
        "orphan-2m": d.evolve(orphan_window=timedelta(minutes=2)),
        "orphan-3m": d.evolve(orphan_window=timedelta(minutes=3)),
        "orphan-5m": d.evolve(orphan_window=timedelta(minutes=5)),
        "orphan-10m": d.evolve(orphan_window=timedelta(minutes=10)),
        "quiet-10s": d.evolve(quiet_period=timedelta(seconds=10)),
        "quiet-30s": d.evolve(quiet_period=timedelta(seconds=30)),
        "quiet-60s": d.evolve(quiet_period=timedelta(seconds=60)),
        "grace-5s": d.evolve(ended_grace=timedelta(seconds=5)),
        "grace-10s": d.evolve(ended_grace=timedelta(seconds=10)),
        "grace-30s": d.evolve(ended_grace=timedelta(seconds=30)),
        "stale-3m": d.evolve(stale_after=timedelta(minutes=3)),
        "stale-10m": d.evolve(stale_after=timedelta(minutes=10)),
        "rank-recent": table(ranking=(*base, Criterion.RECENTLY_SEEN, Criterion.NEWEST)),
        "rank-newest": table(ranking=(*base, Criterion.NEWEST)),
        "rank-nearest-ip": table(
            ranking=(*base, Criterion.NEAREST_IP, Criterion.RECENTLY_SEEN, Criterion.NEWEST)
        ),
        "no-heartbeats-evidence": table(
            ranking=tuple(c for c in rules.ranking if c is not Criterion.HEARTBEATS)
        ),
        "hostname-first": table(
            rows=(*tuple(r for r in rules.rows if r.rule is not Rule.RECENT_ORPHAN), orphan)
        ),
        "orphan-unweighed": table(
            rows=tuple(
                attrs.evolve(r, weighs_streams=False) if r.rule is Rule.RECENT_ORPHAN else r
                for r in rules.rows
            )
        ),
        "no-evidence-guard": table(guards=rules.guards - {Guard.EVIDENCE}),
        "no-keep-alive": without(Effect.KEEP_ALIVE),
        "no-reconcile": without(Effect.RECONCILE),
        "no-transfer-on-hostname": without(Effect.TRANSFER_ON_HOSTNAME),
        "skip-ambiguous": d.evolve(on_ambiguous=OnAmbiguous.SKIP_RULE),
    }
    return {name: p.evolve(name=name) for name, p in out.items()}


CANDIDATE_POLICIES: Mapping[str, Policy] = MappingProxyType(_candidates())
"""Variants of the default policy, each changing one choice, that ``--candidates`` adds to the
comparison (the measurements in ``docs/tuning.md``)."""

SHIPPED = {"default": DEFAULT_POLICY, "note": NOTE_POLICY, "legacy": LEGACY_POLICY}


def resolve_policies(names: Iterable[str]) -> list[Policy]:
    """The policies called ``names``: shipped ones or :data:`CANDIDATE_POLICIES`."""
    out = []
    for name in names:
        policy = SHIPPED.get(name) or CANDIDATE_POLICIES.get(name)
        if policy is None:
            known = ", ".join([*SHIPPED, *CANDIDATE_POLICIES])
            raise InvalidInput(f"unknown policy {name!r}; choose among {known}", field="policy")
        out.append(policy)
    return out
