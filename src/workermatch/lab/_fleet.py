"""The fleet generator: :class:`FleetParams` in, a trace with ground truth out.

:func:`generate` turns :class:`FleetParams` into the requests a server would see from a fleet
of machines running the real client, in arrival order, each carrying its ground truth (which
machine and which session sent it) under ``truth``.  Each session is laid out by the one model
of the client's timing (:func:`workermatch.lab._client.session_requests`); this module draws
its times, addresses, silences and mishaps from the parameters and a seed.

Everything is deterministic for a seed: the same parameters and seed give the same bytes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

import attrs

from .._errors import InvalidInput
from .._model import Event, EventKind
from ..trace import dump_json, line_to_dict
from ._client import (
    BRIDGE_STOP_MS,
    FINALE_MS,
    Request,
    address_at,
    every,
    session_requests,
)

__all__ = ["EPOCH", "FleetParams", "SimRecord", "generate", "write_trace"]

EPOCH = datetime(2025, 11, 6, 8, 0, 0, tzinfo=timezone.utc)


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
        truth: dict[str, Any] = {"machine": self.machine, "session": self.session}
        if self.hint is not None:
            truth["hint"] = self.hint
        return line_to_dict(
            self.at,
            self.kind,
            self.ip,
            hostname=self.hostname,
            assignment=self.assignment,
            worker_id=worker_id,
            message=self.message,
            truth=truth,
        )

    def to_event(self, worker_id: str | None = None) -> Event:
        """The :class:`~workermatch.Event` the server sees."""
        return Request(
            at_ms=self.at_ms,
            kind=self.kind,
            ip=self.ip,
            hostname=self.hostname,
            assignment=self.assignment,
            message=self.message,
        ).to_event(worker_id)


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
    claim_ip = _lookup(machine, p, rng, vpn)
    slow = rng.random() < p.slow_gui_share
    delay = rng.uniform(*(p.slow_gui_s if slow else p.gui_delay_s))
    t_gui = t_claim + _ms(delay)
    t_fin = t_gui + _ms(rng.uniform(*p.session_s))
    t_last_update = t_fin - FINALE_MS

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

    t_crash: int | None = None
    if crashes is not None and rng.random() < p.crash_share and t_last_update > t_gui + 120_000:
        t_crash = rng.randrange(t_gui + 60_000, t_last_update - 60_000)
        crashes.append((t_crash, address_at(changes, t_crash)))
    t_rename: int | None = None
    renamed = machine.hostname
    if rng.random() < p.rename_share and t_last_update > t_gui + 120_000:
        t_rename = rng.randrange(t_gui + 60_000, t_last_update - 60_000)
        renamed = machine.hostname + "-R"
    first_update = t_gui + rng.randrange(100, 1000)
    if rng.random() < p.startup_race_share:
        first_update = t_gui - rng.randrange(1, 50)
    updates = every(first_update, lambda: _ms(rng.uniform(*p.update_every_s)), t_last_update)
    trailing: int | None = None
    if rng.random() < p.trailing_share:
        trailing = t_fin + rng.randrange(100, BRIDGE_STOP_MS)
    requests = session_requests(
        assignment=assignment,
        claim_at=t_claim,
        claim_ip=claim_ip,
        gui_at=t_gui,
        end_at=t_fin,
        addresses=changes,
        updates=updates,
        hostname=machine.hostname if p.hostnames else None,
        renamed=(t_rename, renamed if p.hostnames else None) if t_rename is not None else None,
        hints=machine.hint == "assignment",
        trailing_at=trailing,
        silences=silences,
        stop_at=t_crash,
    )
    hint = "worker_id" if machine.hint == "worker_id" else None
    out.extend(
        SimRecord(
            at_ms=r.at_ms,
            kind=r.kind,
            ip=r.ip,
            machine=machine.name,
            session=session,
            hostname=r.hostname,
            assignment=r.assignment,
            message=r.message,
            hint=None if r.kind is EventKind.CLAIM else hint,
        )
        for r in requests
    )
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
        out.write(dump_json(record.to_dict(wid)) + "\n")
