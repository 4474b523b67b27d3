"""A fleet simulator with ground truth: generate traces, replay them under policies, score them.

The simulator is how the default policy was chosen (``docs/accuracy.md``).  It has three parts:

* :func:`generate` turns :class:`FleetParams` into a trace: the requests a server would see from
  a fleet of machines running the real client, in arrival order, each carrying its ground truth
  (which machine and which session sent it) under ``truth``.  The timing follows the real
  client (``shared/research/real-system.md``): a claim without hostname; at GUI start two
  heartbeats at the same instant; a heartbeat every 30 s, the only request with a hostname;
  progress updates without hostname; five 100 % updates 0.5 s apart, then ``finished``.  The
  real client sends many updates a second; the simulator samples one every 1 to 5 s (the
  matching rules see the same thing: a request without hostname, from the GUI's address).
* :func:`score` replays a trace under one policy on a fresh in-memory store and measures what
  the ground truth says went wrong.
* :func:`simulate` does both for named :data:`SCENARIOS` and several policies, and
  :func:`format_table` prints the scores side by side.  ``workermatch simulate`` is the command.

Everything is deterministic for a seed: the same parameters and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

import attrs

from ._decision import Effect, Guard
from ._engine import apply_event
from ._errors import AmbiguousMatch, ClaimRefused, InvalidInput
from ._memory import InMemoryWorkerRepository, sequential_ids
from ._model import AssignmentStatus, Event, EventKind, Identity
from ._policy import (
    DEFAULT_POLICY,
    LEGACY_POLICY,
    NOTE_POLICY,
    Criterion,
    OnAmbiguous,
    Policy,
    Rule,
)

__all__ = [
    "CANDIDATE_POLICIES",
    "SCENARIOS",
    "FleetParams",
    "Scenario",
    "Score",
    "SimRecord",
    "add_simulate_arguments",
    "format_table",
    "generate",
    "main",
    "run_simulate",
    "score",
    "simulate",
    "write_trace",
]

#: Where every generated trace starts (the design note's day).
EPOCH = datetime(2025, 11, 6, 8, 0, 0, tzinfo=timezone.utc)

HEARTBEAT_EVERY_MS = 30_000
FINAL_UPDATES = 5
FINAL_UPDATE_GAP_MS = 500
BRIDGE_STOP_MS = 3_000


def _check_range(name: str, value: tuple[float, float], *, low: float = 0.0) -> None:
    lo, hi = value
    if not (low <= lo <= hi) or math.isinf(hi):
        raise InvalidInput(
            f"{name} must be a (min, max) pair with {low} <= min <= max, not {value!r}",
            field=name,
            value=value,
        )


def _share(name: str) -> Callable[[Any, Any, float], None]:
    def check(_: Any, __: Any, value: float) -> None:
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise InvalidInput(f"{name} must be between 0 and 1, not {value!r}", field=name)

    return check


def _non_negative(name: str) -> Callable[[Any, Any, float], None]:
    def check(_: Any, __: Any, value: float) -> None:
        if not isinstance(value, (int, float)) or value < 0 or math.isinf(value):
            raise InvalidInput(f"{name} must be a non-negative number, not {value!r}", field=name)

    return check


def _pair(value: Any) -> tuple[float, float]:
    lo, hi = value
    return (float(lo), float(hi))


@attrs.frozen(kw_only=True)
class FleetParams:
    """What a generated fleet looks like.  Times are in seconds unless the name says minutes.

    Every share is a probability between 0 and 1, drawn per machine (``vpn_share``,
    ``nat_share``, ``cloned_share``, ``concurrent_share``, ``hint_share``) or per session
    (``slow_gui_share``) or per IP lookup (``flip_rate``).
    """

    machines: int = 10
    """How many machines."""
    duration_min: float = attrs.field(default=60.0, validator=_non_negative("duration_min"))
    """Machines start sessions within this many minutes; with ``batch`` each keeps claiming
    the next assignment until it has run this long.  Every session runs to its end, so a trace
    lasts a little longer."""
    start_spread_min: float = attrs.field(default=30.0, validator=_non_negative("start_spread"))
    """Each machine's first claim comes at a uniform time within this many minutes."""
    batch: bool = False
    """Sequential sessions: after ``finished`` a machine claims its next assignment."""
    session_s: tuple[float, float] = attrs.field(default=(300.0, 900.0), converter=_pair)
    """How long a run lasts, from GUI start to ``finished``."""
    gui_delay_s: tuple[float, float] = attrs.field(default=(5.0, 90.0), converter=_pair)
    """When the GUI starts after the claim (its first requests: two heartbeats at once)."""
    slow_gui_share: float = attrs.field(default=0.0, validator=_share("slow_gui_share"))
    """The share of sessions whose GUI starts slowly: within ``slow_gui_s`` of the claim."""
    slow_gui_s: tuple[float, float] = attrs.field(default=(120.0, 240.0), converter=_pair)
    update_every_s: tuple[float, float] = attrs.field(default=(1.0, 5.0), converter=_pair)
    """The gap between two sampled progress updates."""
    vpn_share: float = attrs.field(default=0.0, validator=_share("vpn_share"))
    """The share of machines on the VPN, whose public address comes from ``vpn_pool``."""
    vpn_pool: int = 8
    """How many public addresses the VPN hands out (machines on the VPN share them)."""
    flip_rate: float = attrs.field(default=0.5, validator=_share("flip_rate"))
    """For a machine on the VPN: the chance that an IP lookup (the claiming process's, the
    GUI's, a reconnection's after a silence) gives another address than the previous one."""
    midrun_flips_per_hour: float = attrs.field(default=0.0, validator=_non_negative("midrun"))
    """For a machine on the VPN: how often, per hour of run, the GUI's address changes
    mid-run (always to another address; the first request from the new address is then
    usually an update)."""
    nat_share: float = attrs.field(default=0.0, validator=_share("nat_share"))
    """The share of machines off the VPN that sit behind a shared NAT address."""
    nat_size: int = 3
    """How many machines share one NAT address."""
    blips_per_hour: float = attrs.field(default=0.0, validator=_non_negative("blips"))
    """Silences shorter than the stale window, per hour of run."""
    blip_s: tuple[float, float] = attrs.field(default=(20.0, 200.0), converter=_pair)
    outages_per_hour: float = attrs.field(default=0.0, validator=_non_negative("outages"))
    """Silences longer than the stale window, per hour of run."""
    outage_s: tuple[float, float] = attrs.field(default=(360.0, 600.0), converter=_pair)
    concurrent_share: float = attrs.field(default=0.0, validator=_share("concurrent_share"))
    """The share of machines that start a second run while their first one runs (same
    address, same hostname)."""
    cloned_share: float = attrs.field(default=0.0, validator=_share("cloned_share"))
    """The share of machines cloned from the previous machine's image: same hostname."""
    hostnames: bool = True
    """Whether heartbeats carry the hostname (they do in the real client)."""
    hint_share: float = attrs.field(default=0.0, validator=_share("hint_share"))
    """The share of machines whose client sends a strong hint with every request after the
    claim."""
    hint_kind: str = "worker_id"
    """``worker_id`` (the id from the claim response), ``assignment`` (the assignment the client
    runs) or ``mixed`` (machines alternate)."""
    startup_race_share: float = attrs.field(default=0.2, validator=_share("startup_race"))
    """The chance that the GUI's first update overtakes its two start-up heartbeats (the real
    client sends from several threads at once, with no order between them)."""
    trailing_share: float = attrs.field(default=0.5, validator=_share("trailing_share"))
    """The chance of one more update in the 3 s between ``finished`` and the bridge stopping."""
    crash_share: float = attrs.field(default=0.0, validator=_share("crash_share"))
    """The chance that a session's client crashes mid-run (it stops without ``finished``) and
    the DHCP server hands its address to a newcomer 60 s later, which runs a session from it."""
    rename_share: float = attrs.field(default=0.0, validator=_share("rename_share"))
    """The chance that a machine is renamed mid-run: its later heartbeats carry a new hostname."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.machines, int) or self.machines < 1:
            raise InvalidInput("machines must be at least 1", field="machines")
        if self.vpn_pool < 1 or self.nat_size < 1:
            raise InvalidInput("vpn_pool and nat_size must be at least 1", field="vpn_pool")
        if self.hint_kind not in ("worker_id", "assignment", "mixed"):
            raise InvalidInput(
                "hint_kind must be worker_id, assignment or mixed", field="hint_kind"
            )
        for name in ("session_s", "gui_delay_s", "slow_gui_s", "blip_s", "outage_s"):
            _check_range(name, getattr(self, name))
        _check_range("update_every_s", self.update_every_s, low=0.05)

    def evolve(self, **changes: Any) -> FleetParams:
        """A copy with ``changes`` applied."""
        return attrs.evolve(self, **changes)


@attrs.frozen(kw_only=True)
class SimRecord:
    """One generated request, with its ground truth.

    ``hint`` is ``"worker_id"`` when the client sends the worker id of its claim response:
    that id depends on the policy the server runs, so :func:`score` fills it in as it replays
    (``"assignment"`` hints are in the record itself).
    """

    at_ms: int
    kind: EventKind
    ip: str
    machine: str
    session: str
    hostname: str | None = None
    assignment: str | None = None
    message: str | None = None
    hint: str | None = None

    @property
    def at(self) -> datetime:
        """The request's time (the ``now`` of its decision)."""
        return EPOCH + timedelta(milliseconds=self.at_ms)

    def to_dict(self, worker_id: str | None = None) -> dict[str, Any]:
        """The trace-format object of this request (``worker_id``: the hint as sent)."""
        at = self.at
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S")
        if at.microsecond:
            stamp += f".{at.microsecond // 1000:03d}"
        out: dict[str, Any] = {"at": stamp + "Z", "kind": self.kind.value, "ip": self.ip}
        if self.hostname is not None:
            out["hostname"] = self.hostname
        if self.assignment is not None:
            out["assignment"] = self.assignment
        if worker_id is not None:
            out["worker_id"] = worker_id
        if self.message is not None:
            out["message"] = self.message
        truth: dict[str, Any] = {"machine": self.machine, "session": self.session}
        if self.hint is not None:
            truth["hint"] = self.hint
        out["truth"] = truth
        return out

    def to_event(self, worker_id: str | None = None) -> Event:
        """The :class:`~workermatch.Event` the server sees."""
        if self.kind is EventKind.CLAIM:
            assert self.assignment is not None
            return Event.claim(self.ip, self.assignment, hostname=self.hostname)
        return Event(
            kind=self.kind,
            identity=Identity(
                ip=self.ip,
                hostname=self.hostname,
                worker_id=worker_id,
                assignment_id=self.assignment,
            ),
            message=self.message,
        )


# --------------------------------------------------------------------------------------------
# The generator


@attrs.define
class _Machine:
    name: str
    hostname: str
    network: str  # "vpn", "nat" or "direct"
    address: str  # the current public address (VPN: changes with lookups)
    hint: str | None
    concurrent: bool


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _vpn_address(i: int) -> str:
    return f"157.193.240.{10 + i}"


def _build_machines(p: FleetParams, rng: random.Random, vpn: _Pool) -> list[_Machine]:
    machines: list[_Machine] = []
    nat_members = 0
    nat_group = -1
    for i in range(p.machines):
        name = f"m{i + 1}"
        hostname = f"PC-{i + 1:03d}"
        if machines and rng.random() < p.cloned_share:
            hostname = machines[-1].hostname
        if rng.random() < p.vpn_share:
            network = "vpn"
            address = vpn.pick(p, rng, None)
        elif rng.random() < p.nat_share:
            network = "nat"
            if nat_members % p.nat_size == 0:
                nat_group += 1
            nat_members += 1
            address = f"198.51.100.{1 + nat_group % 250}"
        else:
            network = "direct"
            address = f"203.0.{113 + i // 250}.{1 + i % 250}"
        hint: str | None = None
        if rng.random() < p.hint_share:
            if p.hint_kind == "mixed":
                hint = "worker_id" if i % 2 == 0 else "assignment"
            else:
                hint = p.hint_kind
        concurrent = rng.random() < p.concurrent_share
        machines.append(_Machine(name, hostname, network, address, hint, concurrent))
    return machines


@attrs.define
class _Pool:
    """The VPN's addresses: who holds each now, and which were ever handed out."""

    held: set[str] = attrs.field(factory=set)
    used: set[str] = attrs.field(factory=set)

    def pick(self, p: FleetParams, rng: random.Random, current: str | None) -> str:
        pool = [_vpn_address(i) for i in range(p.vpn_pool)]
        # A fresh address while there is one, then a free one, then a shared one (the VPN NATs
        # its users once its pool is exhausted).
        choices = (
            [a for a in pool if a not in self.used]
            or [a for a in pool if a not in self.held and a != current]
            or [a for a in pool if a != current]
            or pool
        )
        address = choices[rng.randrange(len(choices))]
        if current is not None:
            self.held.discard(current)
        self.held.add(address)
        self.used.add(address)
        return address


def _lookup(
    machine: _Machine, p: FleetParams, rng: random.Random, vpn: _Pool, *, force: bool = False
) -> str:
    """One "what is my IP" lookup: on the VPN it may give another address than the last one."""
    if machine.network == "vpn" and p.vpn_pool > 1 and (force or rng.random() < p.flip_rate):
        machine.address = vpn.pick(p, rng, machine.address)
    return machine.address


def _session(
    p: FleetParams,
    rng: random.Random,
    machine: _Machine,
    session: str,
    assignment: str,
    t_claim: int,
    out: list[SimRecord],
    vpn: _Pool,
    crashes: list[tuple[int, str]] | None = None,
) -> int:
    """Append one session's requests to ``out``; return when the machine may claim again.

    A session that crashes (``crash_share``) appends ``(when, its address then)`` to
    ``crashes``, and ends there."""

    def rec(at: int, kind: EventKind, ip: str, **kw: Any) -> None:
        if kind is not EventKind.CLAIM and machine.hint == "assignment":
            kw["assignment"] = assignment
        hint = machine.hint if kind is not EventKind.CLAIM and machine.hint == "worker_id" else None
        out.append(
            SimRecord(
                at_ms=at, kind=kind, ip=ip, machine=machine.name, session=session, hint=hint, **kw
            )
        )

    rec(t_claim, EventKind.CLAIM, _lookup(machine, p, rng, vpn), assignment=assignment)
    slow = rng.random() < p.slow_gui_share
    delay = rng.uniform(*(p.slow_gui_s if slow else p.gui_delay_s))
    t_gui = t_claim + _ms(delay)
    t_fin = t_gui + _ms(rng.uniform(*p.session_s))
    t_last_update = t_fin - FINAL_UPDATES * FINAL_UPDATE_GAP_MS

    # Address changes of the GUI process: at start (its own lookup), mid-run, after silences.
    changes: list[tuple[int, str]] = [(t_gui, _lookup(machine, p, rng, vpn))]
    run_hours = (t_fin - t_gui) / 3_600_000
    silences: list[tuple[int, int]] = []
    for rate, span in ((p.blips_per_hour, p.blip_s), (p.outages_per_hour, p.outage_s)):
        for _ in range(_poisson(rng, rate * run_hours)):
            length = _ms(rng.uniform(*span))
            lo, hi = t_gui + 60_000, t_last_update - 60_000 - length
            if hi > lo:
                start = rng.randrange(lo, hi)
                silences.append((start, start + length))
    silences.sort()
    # Silences never run into each other: two blips back to back would make an outage.
    kept: list[tuple[int, int]] = []
    for start, end in silences:
        if not kept or start >= kept[-1][1] + 60_000:
            kept.append((start, end))
    silences = kept
    flips: list[tuple[int, bool]] = []
    if machine.network == "vpn" and p.vpn_pool > 1:
        for _ in range(_poisson(rng, p.midrun_flips_per_hour * run_hours)):
            if t_last_update - 30_000 > t_gui + 30_000:
                flips.append((rng.randrange(t_gui + 30_000, t_last_update - 30_000), True))
    for _, end in silences:
        flips.append((end, False))  # a reconnection looks the address up again
    for t, force in sorted(flips):
        changes.append((t, _lookup(machine, p, rng, vpn, force=force)))
    changes.sort()

    def ip_at(t: int) -> str:
        ip = changes[0][1]
        for when, address in changes:
            if when <= t:
                ip = address
        return ip

    def silent(t: int) -> bool:
        return any(a <= t < b for a, b in silences)

    t_crash: int | None = None
    if crashes is not None and rng.random() < p.crash_share and t_last_update > t_gui + 120_000:
        t_crash = rng.randrange(t_gui + 60_000, t_last_update - 60_000)
        crashes.append((t_crash, ip_at(t_crash)))
    t_rename: int | None = None
    renamed = machine.hostname
    if rng.random() < p.rename_share and t_last_update > t_gui + 120_000:
        t_rename = rng.randrange(t_gui + 60_000, t_last_update - 60_000)
        renamed = machine.hostname + "-R"
    hostname = machine.hostname if p.hostnames else None
    timeline: list[tuple[int, EventKind, str | None]] = [
        (t_gui, EventKind.HEARTBEAT, None),
        (t_gui, EventKind.HEARTBEAT, None),
    ]
    t = t_gui + HEARTBEAT_EVERY_MS
    while t < t_fin:
        timeline.append((t, EventKind.HEARTBEAT, None))
        t += HEARTBEAT_EVERY_MS
    t = t_gui + rng.randrange(100, 1000)
    if rng.random() < p.startup_race_share:
        t = t_gui - rng.randrange(1, 50)
    while t < t_last_update:
        timeline.append((t, EventKind.GUI_UPDATE, "overall_progress"))
        t += _ms(rng.uniform(*p.update_every_s))
    for k in range(FINAL_UPDATES):
        timeline.append(
            (t_last_update + k * FINAL_UPDATE_GAP_MS, EventKind.GUI_UPDATE, "overall_progress")
        )
    timeline.append((t_fin, EventKind.GUI_UPDATE, "finished"))
    if rng.random() < p.trailing_share:
        timeline.append((t_fin + rng.randrange(100, BRIDGE_STOP_MS), EventKind.GUI_UPDATE, "log"))
    timeline.sort(key=lambda item: item[0])  # stable: the two start heartbeats stay together
    for at, kind, message in timeline:
        if t_crash is not None and at >= t_crash:
            break
        if silent(at) and message != "finished":
            continue
        if kind is EventKind.HEARTBEAT:
            name = renamed if t_rename is not None and at >= t_rename else hostname
            rec(at, kind, ip_at(at), hostname=name if p.hostnames else None)
        else:
            rec(at, kind, ip_at(at), message=message)
    machine.hostname = renamed
    if t_crash is not None:
        return 2**62  # the crashed client claims nothing more
    return t_fin + BRIDGE_STOP_MS + rng.randrange(1000, 5000)


def generate(params: FleetParams, seed: int = 0) -> list[SimRecord]:
    """The requests of a fleet described by ``params``, in arrival order, with ground truth.

    Deterministic: the same ``params`` and ``seed`` give the same records.
    """
    if not isinstance(params, FleetParams):
        raise InvalidInput("params must be FleetParams", field="params", value=params)
    rng = random.Random(f"workermatch-simulate:{seed}")
    vpn = _Pool()
    machines = _build_machines(params, rng, vpn)
    records: list[SimRecord] = []
    end_of_starts = _ms(params.duration_min * 60)
    n_assignment = 0
    crashes: list[tuple[int, str]] = []
    for machine in machines:
        t = _ms(rng.uniform(0, params.start_spread_min * 60))
        first = True
        n_session = 0
        while True:
            n_session += 1
            n_assignment += 1
            session = f"{machine.name}-s{n_session}"
            next_t = _session(
                params, rng, machine, session, f"A{n_assignment}", t, records, vpn, crashes
            )
            if first and machine.concurrent:
                n_session += 1
                n_assignment += 1
                t2 = t + _ms(rng.uniform(5, 90))
                _session(
                    params,
                    rng,
                    machine,
                    f"{machine.name}-s{n_session}",
                    f"A{n_assignment}",
                    t2,
                    records,
                    vpn,
                )
            first = False
            if not params.batch or next_t >= end_of_starts:
                break
            t = next_t
    # Each crashed client's address goes to a newcomer 60 s later (a DHCP lease handed on).
    for k, (t_crash, address) in enumerate(crashes):
        n_assignment += 1
        newcomer = _Machine(f"d{k + 1}", f"NEW-{k + 1:03d}", "direct", address, None, False)
        _session(
            params,
            rng,
            newcomer,
            f"d{k + 1}-s1",
            f"A{n_assignment}",
            t_crash + 60_000,
            records,
            vpn,
        )
    order = sorted(range(len(records)), key=lambda i: (records[i].at_ms, i))
    return [records[i] for i in order]


def write_trace(
    records: Iterable[SimRecord], out: TextIO, worker_ids: Sequence[str | None] | None = None
) -> None:
    """Write ``records`` as a trace (JSON Lines).  ``worker_ids``: the hints as sent, by index."""
    for i, record in enumerate(records):
        wid = worker_ids[i] if worker_ids is not None else None
        out.write(json.dumps(record.to_dict(wid), separators=(", ", ": ")) + "\n")


# --------------------------------------------------------------------------------------------
# Scoring


@attrs.frozen(kw_only=True)
class Score:
    """What went wrong in one replay, by the ground truth.

    * ``workers_per_session``: the mean number of workers each session's requests landed on
      (a worker merged into another counts as its survivor); 1.0 is perfect.
    * ``split``: sessions whose requests landed on more than one worker (duplicates).
    * ``mixed``: workers that received requests of more than one session (hijacks and bad
      merges: one record mixes two sessions' data); ``shared``: sessions that share a worker
      with another session that way.
    * ``lost``: assignments not COMPLETED or FAILED at the end, or ended by a request of
      another session (another machine's ``finished`` completed them).
    * ``ambiguous``: decisions flagged ambiguous.
    * ``wrong``: requests placed on another session's worker (one made by another session's
      request) whose previous request came from another session: each wrong guess counts once,
      not every request that follows it, nor the owner's return to its own worker;
      ``unflagged``: those among them neither flagged ambiguous nor placed on a contested
      worker (one chosen under doubt before); ``silent``: the unflagged ones that no earlier
      wrong guess explains (neither session had been mixed up before).  An unflagged knock-on
      error follows a guess: once one machine's GUI took another machine's claim, the other
      machine's GUI finds only the first machine's claim left (and it is contested).
    * ``right``: requests placed on their own session's worker (the worker their session's
      first request there made or took first); ``right_share`` is their share of all requests.
      Unlike ``workers_per_session``, which a policy that puts a whole NAT address on one
      worker scores perfectly, it counts a request placed on another session's worker as wrong.
    * ``refused``: requests the policy refused (``on_ambiguous="refuse"``, refused claims).
    * ``merged``: duplicates reconciled after the fact.
    * ``misended``: assignments completed or failed by another session's request (a held end
      counts for the request that asked for it, not the one whose evidence applied it): the
      write an operator cannot forgive.
    * ``alerts``: decisions that raised an alert.
    * ``held``: session ends held for want of evidence; ``pending``: those still held at the
      end of the trace.
    """

    requests: int
    sessions: int
    workers: int
    workers_per_session: float
    split: int
    mixed: int
    shared: int
    lost: int
    ambiguous: int
    wrong: int
    unflagged: int
    silent: int
    refused: int
    merged: int
    right: int = 0
    misended: int = 0
    alerts: int = 0
    held: int = 0
    pending: int = 0
    worker_ids: tuple[str | None, ...] = attrs.field(default=(), repr=False, eq=False)

    @property
    def right_share(self) -> float:
        """``right`` as a share of ``requests`` (0.0 when there are none)."""
        return self.right / self.requests if self.requests else 0.0

    def __add__(self, other: Score) -> Score:
        """The scores of two replays summed, as if they were one fleet (``workers_per_session``
        is the mean over both fleets' sessions)."""
        if not isinstance(other, Score):
            return NotImplemented
        sessions = self.sessions + other.sessions
        total = (
            self.workers_per_session * self.sessions + other.workers_per_session * other.sessions
        )
        # Every count adds up; the mean and the per-replay hints do not.
        fields = [
            f.name
            for f in attrs.fields(Score)
            if f.name not in ("sessions", "workers_per_session", "worker_ids")
        ]
        return Score(
            sessions=sessions,
            workers_per_session=total / sessions if sessions else 0.0,
            **{f: getattr(self, f) + getattr(other, f) for f in fields},
        )


def score(
    records: Sequence[SimRecord],
    policy: Policy,
    *,
    events: Sequence[Event | None] | None = None,
) -> Score:
    """Replay ``records`` under ``policy`` on a fresh in-memory store and score the result.

    ``events``: the records' events made beforehand (``None`` where a worker_id hint must be
    filled in), to save building them again for each policy.
    """
    repo = InMemoryWorkerRepository(id_factory=sequential_ids())
    claim_worker: dict[str, str] = {}
    last_session: dict[str, str] = {}
    owners: dict[str, str] = {}
    workers_of: dict[str, set[str]] = {}
    ended_by: dict[str, str] = {}
    assignment_of: dict[str, str] = {}
    sent_ids: list[str | None] = []
    ambiguous = wrong = unflagged = silent = refused = right = 0
    misended = alerts = held = 0
    session_of_assignment: dict[str, str] = {}
    asked: dict[datetime, list[str]] = {}
    tainted: set[str] = set()
    for i, record in enumerate(records):
        session = record.session
        wid = claim_worker.get(session) if record.hint == "worker_id" else None
        sent_ids.append(wid)
        if record.kind is EventKind.CLAIM:
            assert record.assignment is not None
            assignment_of[session] = record.assignment
            session_of_assignment.setdefault(record.assignment, session)
        if record.message in ("finished", "fatal_error"):
            asked.setdefault(record.at, []).append(session)
        event = events[i] if events is not None else None
        if event is None:
            event = record.to_event(wid)
        try:
            outcome = apply_event(event, record.at, repo, policy, create_assignments=True)
        except (ClaimRefused, AmbiguousMatch):
            refused += 1
            continue
        worker = outcome.worker.id
        if outcome.ambiguous:
            ambiguous += 1
        previous = last_session.get(worker, session)
        owner = owners.setdefault(worker, session)
        if owner == session:
            right += 1
        if not outcome.created and previous != session and owner != session:
            wrong += 1
            if outcome.ambiguous or outcome.contested:
                tainted.update((session, previous))
            else:
                unflagged += 1
                if session not in tainted and previous not in tainted:
                    silent += 1
                tainted.update((session, previous))
        last_session[worker] = session
        workers_of.setdefault(session, set()).add(worker)
        if record.kind is EventKind.CLAIM:
            claim_worker[session] = worker
        if outcome.alert is not None:
            alerts += 1
        if outcome.held:
            held += 1
        settled = dict(outcome.settled)
        for aid in outcome.ended:
            own = session_of_assignment.get(aid)
            askers = (
                [s for t in settled[aid].asked for s in asked.get(t, [])]
                if aid in settled
                else [session]
            )
            by = own if own in askers else (askers[0] if askers else session)
            ended_by.setdefault(aid, by)
            if own is not None and own not in askers:
                misended += 1

    all_workers = {w.id: w for w in repo.all_workers()}

    def survivor(wid: str) -> str:
        hops = 0
        while all_workers[wid].merged_into is not None and hops < 64:
            wid = all_workers[wid].merged_into  # type: ignore[assignment]
            hops += 1
        return wid

    final_sessions: dict[str, set[str]] = {}
    per_session: dict[str, set[str]] = {}
    for session, wids in workers_of.items():
        per_session[session] = {survivor(w) for w in wids}
        for s in per_session[session]:
            final_sessions.setdefault(s, set()).add(session)
    sessions = sorted({r.session for r in records})
    assignments = {a.id: a for a in repo.all_assignments()}
    lost = 0
    for session in sessions:
        claimed = assignment_of.get(session)
        a = assignments.get(claimed) if claimed is not None else None
        if (
            a is None
            or a.status not in (AssignmentStatus.COMPLETED, AssignmentStatus.FAILED)
            or ended_by.get(a.id) != session
        ):
            lost += 1
    total = sum(len(per_session.get(s, ())) for s in sessions)
    merged = sum(1 for w in all_workers.values() if w.merged_into is not None)
    return Score(
        requests=len(records),
        sessions=len(sessions),
        workers=len(all_workers) - merged,
        workers_per_session=total / len(sessions) if sessions else 0.0,
        split=sum(1 for s in sessions if len(per_session.get(s, ())) > 1),
        mixed=sum(1 for ss in final_sessions.values() if len(ss) > 1),
        shared=len(set().union(*(ss for ss in final_sessions.values() if len(ss) > 1))),
        lost=lost,
        ambiguous=ambiguous,
        wrong=wrong,
        unflagged=unflagged,
        silent=silent,
        refused=refused,
        merged=merged,
        right=right,
        misended=misended,
        alerts=alerts,
        held=held,
        pending=len({w.held_end for w in all_workers.values() if w.held_end is not None}),
        worker_ids=tuple(sent_ids),
    )


# --------------------------------------------------------------------------------------------
# Scenarios and candidate policies


@attrs.frozen(kw_only=True)
class Scenario:
    """A named fleet: one hard case of ``semantics.md``, or a realistic mix."""

    name: str
    summary: str
    params: FleetParams
    solvable: bool
    """Whether semantics.md promises one worker per session here (guarantee 1's precondition
    holds for every session, and no two sessions compete for a request)."""


_VPN = FleetParams(machines=1, vpn_share=1.0, vpn_pool=64, flip_rate=1.0)
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
                params=_VPN.evolve(
                    machines=4,
                    start_spread_min=10.0,
                    session_s=(10800.0, 14400.0),
                    outages_per_hour=0.4,
                    outage_s=(6600.0, 7800.0),
                ),
                solvable=False,
            ),
            Scenario(
                name="long-sleep-hints",
                summary="as long-sleep, with clients that send a hint (worker id or "
                "assignment) with every request",
                params=_VPN.evolve(
                    machines=4,
                    start_spread_min=10.0,
                    session_s=(10800.0, 14400.0),
                    outages_per_hour=0.4,
                    outage_s=(6600.0, 7800.0),
                    hint_share=1.0,
                    hint_kind="mixed",
                ),
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
comparison (the measurements in ``docs/accuracy.md``)."""

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


# --------------------------------------------------------------------------------------------
# Running it


@attrs.frozen(kw_only=True)
class Result:
    """The score of one scenario under one policy."""

    scenario: str
    policy: str
    score: Score


def _score_fleet(scenario: Scenario, fleet_seed: int, policies: Sequence[Policy]) -> list[Score]:
    """Generate one fleet of ``scenario`` and score it under each policy."""
    records = generate(scenario.params, fleet_seed)
    events = [None if r.hint == "worker_id" else r.to_event() for r in records]
    return [score(records, policy, events=events) for policy in policies]


def simulate(
    scenarios: Sequence[Scenario],
    policies: Sequence[Policy],
    seed: int = 0,
    *,
    fleets: int = 1,
    traces: Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    jobs: int = 1,
) -> list[Result]:
    """Generate ``fleets`` traces of each scenario (seeds ``seed``, ``seed + 1``, ...), replay
    each under each policy, and score them: one :class:`Result` per scenario and policy, whose
    score sums the fleets' (every policy sees the same fleets).

    ``traces``: a directory that keeps each generated trace as ``<scenario>.jsonl`` (with
    several fleets, ``<scenario>.<seed>.jsonl``) and, when clients send worker_id hints, which
    depend on the policy, ``<scenario>[.<seed>].<policy>.jsonl`` with the hints as that policy's
    server handed them out.  ``progress(done, total, label)`` is called after each fleet.
    ``jobs``: how many processes score fleets at once (the results do not depend on it).
    """
    if not isinstance(fleets, int) or isinstance(fleets, bool) or fleets < 1:
        raise InvalidInput(f"fleets must be a positive integer, not {fleets!r}", field="fleets")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InvalidInput(f"jobs must be a positive integer, not {jobs!r}", field="jobs")
    work = [(sc, s) for sc in scenarios for s in range(seed, seed + fleets)]
    total = len(work) * len(policies)
    scored: dict[tuple[str, int], list[Score]] = {}

    def finish(sc: Scenario, fleet_seed: int, scores: list[Score]) -> None:
        scored[(sc.name, fleet_seed)] = scores
        stem = sc.name if fleets == 1 else f"{sc.name}.{fleet_seed}"
        if traces is not None:
            records = generate(sc.params, fleet_seed)
            traces.mkdir(parents=True, exist_ok=True)
            with (traces / f"{stem}.jsonl").open("w", encoding="utf-8") as f:
                write_trace(records, f)
            if any(r.hint == "worker_id" for r in records):
                for policy, s in zip(policies, scores, strict=True):
                    with (traces / f"{stem}.{policy.name}.jsonl").open("w", encoding="utf-8") as f:
                        write_trace(records, f, s.worker_ids)
        if progress is not None:
            progress(len(scored) * len(policies), total, stem)

    if jobs == 1 or len(work) == 1:
        for sc, fleet_seed in work:
            finish(sc, fleet_seed, _score_fleet(sc, fleet_seed, policies))
    else:
        spawn = multiprocessing.get_context("spawn")  # no fork of a threaded process
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=spawn) as pool:
            futures = {
                pool.submit(_score_fleet, sc, fleet_seed, policies): (sc, fleet_seed)
                for sc, fleet_seed in work
            }
            for future in concurrent.futures.as_completed(futures):
                sc, fleet_seed = futures[future]
                finish(sc, fleet_seed, future.result())
    results: list[Result] = []
    for sc in scenarios:
        for i, policy in enumerate(policies):
            parts = [scored[(sc.name, s)][i] for s in range(seed, seed + fleets)]
            total_score = parts[0]
            for part in parts[1:]:
                total_score = total_score + part
            results.append(Result(scenario=sc.name, policy=policy.name, score=total_score))
    return results


_COLUMNS = (
    ("right", "right_share"),
    ("workers/session", "workers_per_session"),
    ("split", "split"),
    ("mixed", "mixed"),
    ("shared", "shared"),
    ("lost", "lost"),
    ("misended", "misended"),
    ("alerts", "alerts"),
    ("ambiguous", "ambiguous"),
    ("wrong", "wrong"),
    ("unflagged", "unflagged"),
    ("silent", "silent"),
    ("merged", "merged"),
)


def format_table(results: Sequence[Result], *, markdown: bool = False) -> str:
    """The scores side by side: one row per scenario and policy."""
    header = ["scenario", "policy", "sessions", *(title for title, _ in _COLUMNS)]
    rows: list[list[str]] = []
    for r in results:
        s = r.score
        cells = [r.scenario, r.policy, str(s.sessions)]
        for _, attr in _COLUMNS:
            value = getattr(s, attr)
            if attr == "right_share":
                cells.append(f"{100 * value:.1f}%")
            else:
                cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |"]
        lines.append("| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = []
    previous = None
    for n, row in enumerate([header, *rows]):
        if n > 1 and row[0] != previous:
            out.append("")
        previous = row[0]
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


class _ProgressBar:
    """A progress bar on a terminal, drawn with ``\\r`` (standard library only)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width

    def __call__(self, done: int, total: int, label: str) -> None:
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} {label[:40]:<40}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _params_from_args(base: FleetParams, args: argparse.Namespace) -> FleetParams:
    changes: dict[str, Any] = {}
    for name in (
        "machines",
        "duration_min",
        "start_spread_min",
        "vpn_share",
        "vpn_pool",
        "flip_rate",
        "midrun_flips_per_hour",
        "nat_share",
        "nat_size",
        "slow_gui_share",
        "blips_per_hour",
        "outages_per_hour",
        "concurrent_share",
        "cloned_share",
        "hint_share",
        "hint_kind",
    ):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if getattr(args, "gui_delay", None) is not None:
        changes["gui_delay_s"] = tuple(args.gui_delay)
    if getattr(args, "batch", None):
        changes["batch"] = True
    return base.evolve(**changes) if changes else base


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``workermatch simulate`` to ``parser``."""
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="a named scenario (repeatable; default: all of them): "
        + ", ".join(SCENARIOS)
        + "; 'custom' uses only the fleet options below",
    )
    parser.add_argument(
        "--policy",
        action="append",
        metavar="NAME",
        help="a policy to score (repeatable; default: default, note, legacy); also any "
        "candidate: " + ", ".join(CANDIDATE_POLICIES),
    )
    parser.add_argument(
        "--candidates", action="store_true", help="also score every candidate policy"
    )
    parser.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
    parser.add_argument(
        "--fleets",
        type=int,
        default=1,
        metavar="N",
        help="score N fleets of each scenario (seeds SEED to SEED+N-1) and sum their counts "
        "(default 1)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="score N fleets at once, one process each (default: the number of CPUs); the "
        "figures do not depend on it",
    )
    parser.add_argument("--traces", type=Path, metavar="DIR", help="keep the generated traces")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on standard error (default: when it is a terminal)",
    )
    fleet = parser.add_argument_group(
        "fleet", "override a scenario's fleet (or describe the 'custom' one)"
    )
    fleet.add_argument("--machines", type=int)
    fleet.add_argument("--duration", dest="duration_min", type=float, metavar="MINUTES")
    fleet.add_argument("--start-spread", dest="start_spread_min", type=float, metavar="MINUTES")
    fleet.add_argument("--batch", action="store_true", help="sequential sessions")
    fleet.add_argument("--vpn-share", type=float, metavar="SHARE")
    fleet.add_argument("--vpn-pool", type=int, metavar="N")
    fleet.add_argument("--flip-rate", type=float, metavar="P")
    fleet.add_argument(
        "--midrun-flips", dest="midrun_flips_per_hour", type=float, metavar="PER_HOUR"
    )
    fleet.add_argument("--nat-share", type=float, metavar="SHARE")
    fleet.add_argument("--nat-size", type=int, metavar="N")
    fleet.add_argument("--gui-delay", type=float, nargs=2, metavar=("MIN_S", "MAX_S"))
    fleet.add_argument("--slow-gui-share", type=float, metavar="SHARE")
    fleet.add_argument("--blips", dest="blips_per_hour", type=float, metavar="PER_HOUR")
    fleet.add_argument("--outages", dest="outages_per_hour", type=float, metavar="PER_HOUR")
    fleet.add_argument("--concurrent-share", type=float, metavar="SHARE")
    fleet.add_argument("--cloned-share", type=float, metavar="SHARE")
    fleet.add_argument("--hint-share", type=float, metavar="SHARE")
    fleet.add_argument("--hint-kind", choices=("worker_id", "assignment", "mixed"))


def run_simulate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``workermatch simulate`` with parsed ``args``; return the exit status."""
    try:
        names = args.scenario or list(SCENARIOS)
        scenarios = []
        for name in names:
            if name == "custom":
                params = _params_from_args(FleetParams(), args)
                scenarios.append(Scenario(name="custom", summary="", params=params, solvable=False))
                continue
            if name not in SCENARIOS:
                raise InvalidInput(
                    f"unknown scenario {name!r}; choose among {', '.join(SCENARIOS)}, custom",
                    field="scenario",
                )
            s = SCENARIOS[name]
            scenarios.append(attrs.evolve(s, params=_params_from_args(s.params, args)))
        policy_names = list(args.policy or ["default", "note", "legacy"])
        if args.candidates:
            policy_names += [n for n in CANDIDATE_POLICIES if n not in policy_names]
        policies = resolve_policies(policy_names)
    except (InvalidInput, ValueError) as exc:
        stderr.write(f"workermatch simulate: {exc}\n")
        return 2
    show = args.progress if args.progress is not None else stderr.isatty()
    bar = _ProgressBar(stderr) if show else None
    try:
        results = simulate(
            scenarios,
            policies,
            args.seed,
            fleets=args.fleets,
            traces=args.traces,
            progress=bar,
            jobs=args.jobs,
        )
    except InvalidInput as exc:
        stderr.write(f"workermatch simulate: {exc}\n")
        return 2
    stdout.write(format_table(results, markdown=args.markdown))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workermatch.simulation``: the same as ``workermatch simulate``."""
    parser = argparse.ArgumentParser(
        prog="workermatch simulate",
        description="Generate fleets with ground truth, replay them under policies, and score.",
    )
    add_simulate_arguments(parser)
    args = parser.parse_args(argv)
    return run_simulate(args, sys.stdout, sys.stderr)


def _iter_lines(results: Sequence[Result]) -> Iterator[str]:  # pragma: no cover - debugging aid
    for r in results:
        yield f"{r.scenario} {r.policy} {r.score}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
