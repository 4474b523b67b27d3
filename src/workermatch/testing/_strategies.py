"""Hypothesis strategies for identities, workers, policies and whole fleet event streams.

Every strategy is a function with a plural name and keyword-only arguments; a bad combination
of arguments raises :class:`hypothesis.errors.InvalidArgument` when the strategy is built.

Ids and hostnames include *lookalikes*: texts that differ only in case, accents, Unicode
normalisation (NFC or NFD) or width (fullwidth letters), which a store must keep apart exactly
as Python's ``==`` does (a database collation that ignores case or accents does not).

The fleet streams follow the real client's timing, laid out by the one client model of
:mod:`workermatch.lab` (``docs/stores.md`` has the details): a claim without hostname
from the command-line process, a GUI that starts seconds to minutes later and sends two
heartbeats at once, then a heartbeat every 30 s with the hostname and progress updates without
it (thinned: one every few seconds stands for the real client's many per second), five 100 %
updates 0.5 s apart and ``finished`` at the end, and, in batch mode, the next claim from the
same machine.  Every element carries its ground truth.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import attrs
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from .._decision import (
    DEFAULT_RULES,
    LEGACY_RULES,
    NOTE_RULES,
    Criterion,
    Effect,
    Guard,
    Rule,
    Rules,
)
from .._model import (
    Assignment,
    AssignmentStatus,
    Event,
    EventKind,
    Identity,
    Worker,
    WorkerStatus,
)
from .._policy import DEFAULT_POLICY, LEGACY_POLICY, NOTE_POLICY, OnAmbiguous, Policy
from ..lab._client import FINALE_MS, every, session_requests

__all__ = [
    "EPOCH",
    "FleetStream",
    "SessionTruth",
    "StreamEvent",
    "Truth",
    "assignments",
    "fleet_streams",
    "hostnames",
    "identities",
    "ip_addresses",
    "lookalikes",
    "policies",
    "rule_tables",
    "workers",
]

EPOCH = datetime(2025, 11, 6, 10, 0, 0, tzinfo=timezone.utc)
"""The instant every generated stream and worker starts from."""

_NAMES = ("ug-gns0s34", "lab-pc", "render", "gpu-node", "desktop-7q2", "worker_box", "ws")

_ACCENTED = {
    "a": "\u00e1",
    "e": "\u00e9",
    "i": "\u00ed",
    "o": "\u00f6",
    "u": "\u00fc",
    "n": "\u00f1",
}
_ACCENTED.update({k.upper(): v.upper() for k, v in list(_ACCENTED.items())})
_COMBINING = {"\u00e1": "\u0301", "\u00e9": "\u0301", "\u00ed": "\u0301", "\u00f6": "\u0308"}
_COMBINING.update({"\u00fc": "\u0308", "\u00f1": "\u0303"})
_COMBINING.update({k.upper(): v for k, v in list(_COMBINING.items())})


def lookalikes(text: str, *, case: bool = True) -> tuple[str, ...]:
    """Texts that differ from ``text`` only in what a case- or accent-insensitive collation
    ignores: another case (with ``case``), an accent on the first letter that can carry one,
    composed (NFC) and decomposed (NFD), the first letter or digit in full width, and (with
    ``case``) ``\u00df`` for the first ``s``.  Each is different from ``text`` and from the others;
    ``text`` itself is not included.  For hostnames pass ``case=False``: the library lower-cases
    them, so a case variant is the same hostname (and ``\u00df`` upper-cases to ``SS``)."""
    out: list[str] = []
    if case:
        out += [text.swapcase(), text.upper(), text.lower()]
    for i, ch in enumerate(text):
        if ch in _ACCENTED:
            nfc = _ACCENTED[ch]
            out.append(text[:i] + nfc + text[i + 1 :])
            out.append(text[:i] + ch + _COMBINING[nfc] + text[i + 1 :])
            break
    for i, ch in enumerate(text):
        if ch.isascii() and ch.isalnum():
            out.append(text[:i] + chr(ord(ch) + 0xFEE0) + text[i + 1 :])
            break
    if case and "s" in text:
        out.append(text.replace("s", "\u00df", 1))
    return tuple(v for v in dict.fromkeys(out) if v != text)


# --------------------------------------------------------------------------------------------
# Ground truth


@attrs.frozen(kw_only=True)
class Truth:
    """Who really sent a request: the machine and the session (one run of the client)."""

    machine: str
    session: str


@attrs.frozen(kw_only=True)
class StreamEvent:
    """One element of a fleet stream: the event, the server's ``now``, and the ground truth."""

    event: Event
    now: datetime
    truth: Truth


@attrs.frozen(kw_only=True)
class SessionTruth:
    """What the generator did in one session (for stating preconditions)."""

    machine: str
    session: str
    assignment: str
    hostname: str
    """The machine's hostname, canonical (lower case)."""
    ended: bool
    """Whether the session ended with ``finished`` or ``fatal_error``."""


@attrs.frozen(kw_only=True)
class FleetStream:
    """A generated stream of requests from a fleet, in arrival order, with its ground truth."""

    events: tuple[StreamEvent, ...]
    sessions: tuple[SessionTruth, ...]

    def of_session(self, session: str) -> list[StreamEvent]:
        """The elements sent by ``session``, in order."""
        return [e for e in self.events if e.truth.session == session]

    def session(self, session: str) -> SessionTruth:
        """The truth about ``session``."""
        for s in self.sessions:
            if s.session == session:
                return s
        raise KeyError(session)


# --------------------------------------------------------------------------------------------
# Small helpers


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r} must be a bool")


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidArgument(f"{name}={value!r} must be an int >= {low}")


def _check_bounds(min_name: str, lo: int, max_name: str, hi: int) -> None:
    if lo > hi:
        raise InvalidArgument(f"{min_name}={lo} is larger than {max_name}={hi}")


def spell_ip(address: str, rnd: random.Random) -> str:
    """One of the spellings a server may receive for the (canonical) ``address``."""
    addr = ipaddress.ip_address(address)
    if isinstance(addr, ipaddress.IPv4Address):
        choice = rnd.randrange(4)
        if choice == 1:
            return f"::ffff:{addr}"
        if choice == 2:
            return f"[::FFFF:{addr}]"
        return str(addr)
    choice = rnd.randrange(4)
    if choice == 1:
        return addr.exploded
    if choice == 2:
        return str(addr).upper()
    if choice == 3:
        return f"[{addr.exploded.upper()}]"
    return str(addr)


def spell_hostname(hostname: str, rnd: random.Random) -> str:
    """``hostname`` in a random mix of cases, sometimes with a trailing dot."""
    text = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in hostname)
    return text + "." if rnd.random() < 0.2 else text


# --------------------------------------------------------------------------------------------
# Values


def ip_addresses(
    *, v4: bool = True, v6: bool = True, spellings: bool = True
) -> st.SearchStrategy[str]:
    """IP addresses as a request may carry them.

    ``v4`` / ``v6`` choose the families.  With ``spellings`` the text varies the way real
    servers see it (IPv4-mapped IPv6, brackets, upper case, exploded IPv6); every spelling
    normalises to the same canonical address.
    """
    _check_bool("v4", v4)
    _check_bool("v6", v6)
    _check_bool("spellings", spellings)
    if not (v4 or v6):
        raise InvalidArgument("at least one of v4 and v6 must be True")
    families: list[st.SearchStrategy[str]] = []
    if v4:
        families.append(st.ip_addresses(v=4).map(str))
    if v6:
        families.append(st.ip_addresses(v=6).map(str))
    base = st.one_of(families)
    if not spellings:
        return base.map(lambda a: str(ipaddress.ip_address(a)))
    return st.tuples(base, st.randoms(use_true_random=False)).map(
        lambda pair: spell_ip(str(ipaddress.ip_address(pair[0])), pair[1])
    )


def hostnames(
    *, varied_case: bool = True, max_labels: int = 3, lookalike: bool = True
) -> st.SearchStrategy[str]:
    """Valid hostnames (labels of letters, digits, ``-`` and ``_``), in varied case.

    With ``lookalike``, a name is sometimes replaced by one of its :func:`lookalikes` (an
    accented letter, composed or decomposed, or a fullwidth one)."""
    _check_bool("varied_case", varied_case)
    _check_int("max_labels", max_labels, 1)
    _check_bool("lookalike", lookalike)
    label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
    names = st.lists(label, min_size=1, max_size=max_labels).map(".".join)
    if lookalike:
        names = names.flatmap(lambda n: st.sampled_from([n, n, *lookalikes(n, case=False)]))
    if not varied_case:
        return names
    return st.tuples(names, st.randoms(use_true_random=False)).map(
        lambda pair: spell_hostname(pair[0], pair[1])
    )


def identities(*, hostname: bool | None = None, hints: bool = True) -> st.SearchStrategy[Identity]:
    """Identities: an IP in any spelling, maybe a hostname in any case, maybe hints.

    ``hostname``: ``True`` always, ``False`` never, ``None`` sometimes.  ``hints``: whether
    ``worker_id`` / ``assignment_id`` hints may appear.
    """
    if hostname is not None:
        _check_bool("hostname", hostname)
    _check_bool("hints", hints)
    hosts: st.SearchStrategy[str | None]
    if hostname is None:
        hosts = st.none() | hostnames()
    elif hostname:
        hosts = hostnames()
    else:
        hosts = st.none()
    worker_ids: st.SearchStrategy[str | None] = st.none()
    assignment_ids: st.SearchStrategy[str | None] = st.none()
    if hints:
        worker_ids = st.none() | st.sampled_from(list(_WORKER_ID_POOL))
        assignment_ids = st.none() | st.sampled_from(list(_ASSIGNMENT_ID_POOL))
    return st.builds(
        Identity,
        ip=ip_addresses(),
        hostname=hosts,
        worker_id=worker_ids,
        assignment_id=assignment_ids,
    )


#: Small pools of ids and hostnames with lookalikes (``w1`` / ``W1``, ``A2`` / ``\u00c12`` in NFC
#: and NFD / fullwidth ``\uff212``, ``alpha`` / ``\u00e1lpha`` / fullwidth ``\uff41lpha``...).
_WORKER_ID_POOL = ("w1", "W1", "w2", "w3", "\uff573", "ws", "w\u00df")
_ASSIGNMENT_ID_POOL = ("A1", "a1", "A2", "\u00c12", "A\u03012", "\uff212")
_HOSTNAME_POOL = ("alpha", "\u00e1lpha", "a\u0301lpha", "\uff41lpha", "beta")


def _numbered_ids(prefix: str) -> st.SearchStrategy[str]:
    """``prefix`` and a number, sometimes a lookalike of it."""
    return st.integers(1, 10**6).flatmap(
        lambda n: st.sampled_from([f"{prefix}{n}", f"{prefix}{n}", *lookalikes(f"{prefix}{n}")])
    )


def _times(max_offset: timedelta) -> st.SearchStrategy[datetime]:
    ms = int(max_offset.total_seconds() * 1000)
    return st.integers(0, ms).map(lambda m: EPOCH + timedelta(milliseconds=m))


def workers(
    *,
    ids: Sequence[str] | None = None,
    ips: Sequence[str] | None = None,
    hostnames_from: Sequence[str | None] | None = None,
    assignment_ids: Sequence[str | None] | None = None,
    max_offset: timedelta = timedelta(minutes=20),
) -> st.SearchStrategy[Worker]:
    """Worker rows, any combination of status, flag, session end and merge pointer.

    Values are drawn from small pools by default so that several workers share IPs, hostnames
    and creation times (what the queries must tell apart), with :func:`lookalikes` among the ids
    and hostnames; pass your own pools to change that.
    Times lie within ``max_offset`` after :data:`EPOCH`, with ``last_seen >= created_at``.
    """
    if not isinstance(max_offset, timedelta) or max_offset < timedelta(0):
        raise InvalidArgument(f"max_offset={max_offset!r} must be a non-negative timedelta")
    for name, pool in (
        ("ids", ids),
        ("ips", ips),
        ("hostnames_from", hostnames_from),
        ("assignment_ids", assignment_ids),
    ):
        if pool is not None and len(pool) == 0:
            raise InvalidArgument(f"{name} must not be empty")
    id_s = st.sampled_from(list(ids)) if ids else _numbered_ids("w")
    ip_s = st.sampled_from(list(ips or ["10.0.0.1", "10.0.0.2", "2001:db8::1"]))
    host_s = st.sampled_from(list(hostnames_from or [None, *_HOSTNAME_POOL]))
    aid_s = st.sampled_from(list(assignment_ids or [None, *_ASSIGNMENT_ID_POOL]))

    @st.composite
    def build(draw: st.DrawFn) -> Worker:
        created = draw(_times(max_offset))
        seen = created + timedelta(milliseconds=draw(st.integers(0, 10 * 60 * 1000)))
        ended = draw(st.none() | st.just(seen))
        return Worker(
            id=draw(id_s),
            ip=draw(ip_s),
            hostname=draw(host_s),
            created_at=created,
            last_seen=seen,
            status=draw(st.sampled_from(list(WorkerStatus))),
            stale=draw(st.booleans()),
            assignment_id=draw(aid_s),
            ended_at=ended,
            merged_into=draw(st.none() | st.just("w0")),
        )

    return build()


def assignments(
    *, ids: Sequence[str] | None = None, worker_ids: Sequence[str | None] | None = None
) -> st.SearchStrategy[Assignment]:
    """Assignment rows in any status, held by one of ``worker_ids`` (or by nobody)."""
    if ids is not None and len(ids) == 0:
        raise InvalidArgument("ids must not be empty")
    id_s = st.sampled_from(list(ids)) if ids else _numbered_ids("A")
    holder_s = st.sampled_from(list(worker_ids)) if worker_ids else st.none()
    return st.builds(
        Assignment,
        id=id_s,
        status=st.sampled_from(list(AssignmentStatus)),
        worker_id=holder_s,
        started_at=st.none() | _times(timedelta(minutes=20)),
        ended_at=st.none() | _times(timedelta(minutes=20)),
    )


@st.composite
def _rule_tables(draw: st.DrawFn) -> Rules:
    base = draw(st.sampled_from([DEFAULT_RULES, NOTE_RULES, LEGACY_RULES]))
    criteria = draw(st.permutations(list(Criterion)))
    keep = draw(st.integers(1, len(criteria)))
    rows = tuple(
        attrs.evolve(r, weighs_streams=draw(st.booleans())) if r.rule is Rule.RECENT_ORPHAN else r
        for r in base.rows
    )
    return attrs.evolve(
        base,
        name="drawn",
        rows=rows,
        ranking=tuple(criteria[:keep]),
        guards=draw(st.frozensets(st.sampled_from(list(Guard)))),
        effects=draw(st.frozensets(st.sampled_from(list(Effect)))),
    )


def rule_tables() -> st.SearchStrategy[Rules]:
    """Rule tables: a shipped table with any combination of guards, effects and ranking."""
    return _rule_tables()


def policies(*, shipped_only: bool = False) -> st.SearchStrategy[Policy]:
    """Policies: the shipped ones, and (unless ``shipped_only``) variations of the default."""
    _check_bool("shipped_only", shipped_only)
    shipped = st.sampled_from([DEFAULT_POLICY, NOTE_POLICY, LEGACY_POLICY])
    if shipped_only:
        return shipped
    secs = st.integers(0, 600).map(lambda s: timedelta(seconds=s))
    varied = st.builds(
        DEFAULT_POLICY.evolve,
        stale_after=secs,
        orphan_window=secs,
        quiet_period=secs,
        hostname_window=secs,
        ended_grace=st.none() | secs,
        on_ambiguous=st.sampled_from([OnAmbiguous.TIE_BREAK, OnAmbiguous.SKIP_RULE]),
        rules=rule_tables(),
    )
    return shipped | varied


# --------------------------------------------------------------------------------------------
# Fleet streams


@attrs.frozen
class _Pools:
    home: str
    vpn: tuple[str, ...]


def _machine_pools(index: int, family: int, vpn_size: int) -> _Pools:
    if family == 4:
        home = f"10.{index}.0.1"
        vpn = tuple(f"172.16.{index}.{k + 10}" for k in range(vpn_size))
    else:
        home = f"2001:db8:{index:x}::1"
        vpn = tuple(f"2001:db8:{index:x}:1::{k + 10:x}" for k in range(vpn_size))
    return _Pools(home=home, vpn=vpn)


@attrs.frozen
class _Options:
    family: int
    nat_ip: str
    long_silences: bool
    hints: bool
    fatal_errors: bool
    stale_ms: int


@attrs.frozen
class _Machine:
    name: str
    index: int
    hostname: str
    pools: _Pools
    behind_nat: bool
    on_vpn: bool


def _session(
    draw: st.DrawFn,
    rnd: random.Random,
    opts: _Options,
    machine: _Machine,
    number: int,
    t: int,
    assignment: str,
) -> tuple[SessionTruth, list[tuple[int, Event]], int]:
    """One session of ``machine`` starting at ``t`` (ms): its truth, events, and the next start.

    The times, addresses and silence are drawn; the client model of :mod:`workermatch.lab`
    lays out the requests (:func:`~workermatch.lab.session_requests`)."""
    session = f"{machine.name}-s{number}"
    hints = opts.hints and draw(st.booleans())
    hostname = machine.hostname
    pools = machine.pools
    if machine.behind_nat:
        claim_ip = gui_ip = opts.nat_ip
    elif machine.on_vpn:
        claim_ip = draw(st.sampled_from(pools.vpn))
        gui_ip = draw(st.sampled_from(pools.vpn))
    else:
        claim_ip = gui_ip = pools.home
    gui_start = t + draw(st.integers(2_000, 240_000))
    end = gui_start + draw(st.integers(20_000, 300_000))  # where the finale starts
    update_every = draw(st.integers(4_000, 30_000))
    flips: list[tuple[int, bool]] = []
    if machine.on_vpn:
        for _ in range(draw(st.integers(0, 2))):
            flips.append((draw(st.integers(gui_start + 1, end)), draw(st.booleans())))
        flips.sort()
    silences: list[tuple[int, int]] = []
    if draw(st.booleans()):
        at = draw(st.integers(gui_start + 1, end))
        if opts.long_silences and draw(st.booleans()):
            length = draw(st.integers(opts.stale_ms + 1_000, opts.stale_ms + 200_000))
        else:
            # Short enough that, with the requests around it, the gap stays within stale_after.
            length = draw(st.integers(31_000, opts.stale_ms - 61_000))
        silences.append((at, at + length))
        end += length
    endings: list[str | None] = (
        ["finished", "fatal_error", None] if opts.fatal_errors else ["finished"]
    )
    outcome = draw(st.sampled_from(endings))

    # A VPN flip moves the GUI to another pool address; the first request from there is sent
    # at once, a heartbeat (with hostname) or an update (without).
    addresses = [(gui_start, gui_ip)]
    extra: list[tuple[int, EventKind]] = []
    ip = gui_ip
    for flip_at, heartbeat_first in flips:
        ip = rnd.choice([a for a in pools.vpn if a != ip])
        addresses.append((flip_at, ip))
        extra.append((flip_at, EventKind.HEARTBEAT if heartbeat_first else EventKind.GUI_UPDATE))
    # Without an outcome the client crashes where its finale would start.
    end_at = end + FINALE_MS if outcome is not None else end
    requests = session_requests(
        assignment=assignment,
        claim_at=t,
        claim_ip=claim_ip,
        gui_at=gui_start,
        end_at=end_at,
        addresses=addresses,
        updates=every(gui_start + 300 + rnd.randrange(update_every), update_every, end),
        hostname=hostname,
        hints=hints,
        ending=outcome,
        silences=silences,
        extra=extra,
    )
    hint = assignment if hints else None
    out: list[tuple[int, Event]] = []
    for r in requests:
        spelled = spell_ip(r.ip, rnd)
        if r.kind is EventKind.CLAIM:
            event = Event.claim(spelled, assignment)
        elif r.kind is EventKind.HEARTBEAT:
            name = spell_hostname(hostname, rnd)
            event = Event.heartbeat(spelled, hostname=name, assignment_id=hint)
        else:
            event = Event.gui_update(spelled, r.message, assignment_id=hint)
        out.append((r.at_ms, event))
    if outcome is not None:
        next_start = end_at + draw(st.integers(1_000, 400_000))
    else:
        next_start = end + opts.stale_ms + draw(st.integers(1_000, 200_000))
    truth = SessionTruth(
        machine=machine.name,
        session=session,
        assignment=assignment,
        hostname=hostname.lower(),
        ended=outcome is not None,
    )
    return truth, out, next_start


def fleet_streams(
    *,
    min_machines: int = 1,
    max_machines: int = 3,
    max_sessions: int = 2,
    ip_changes: bool = True,
    shared_nat: bool = True,
    long_silences: bool = True,
    hints: bool = True,
    fatal_errors: bool = True,
    lookalike: bool = True,
    stale_after: timedelta = DEFAULT_POLICY.stale_after,
    max_start: timedelta = timedelta(minutes=5),
) -> st.SearchStrategy[FleetStream]:
    """Streams of requests from a fleet of machines, in arrival order, with ground truth.

    Each machine (``m1``, ``m2``, ...) has a hostname and runs 1 to ``max_sessions`` sessions
    one after the other (batch mode), starting within ``max_start`` of :data:`EPOCH`.

    * ``ip_changes``: a machine behind a VPN claims from one pool address and runs its GUI from
      another, and may flip address mid-run; the first request from a new address is either a
      heartbeat (with hostname) or an update (without).
    * ``shared_nat``: some machines share one public address.
    * ``long_silences``: a session may go silent for longer than ``stale_after`` (otherwise
      silences stay shorter).
    * ``hints``: a session's GUI may carry the assignment id as a hint (a newer client).
    * ``fatal_errors``: a session may end with ``fatal_error`` instead of ``finished``, or stop
      without either (a crash; the next session then starts after ``stale_after``).
    * ``lookalike``: a machine's hostname may be a :func:`lookalikes` variant of another
      machine's (``render-1`` and ``r\u00e9nder-1``), and an assignment id one of another
      session's (``A-m1-s1`` and ``a-m1-s1``): different machines and assignments that only a
      case- or accent-insensitive store would confuse.
    """
    _check_int("min_machines", min_machines, 1)
    _check_int("max_machines", max_machines, 1)
    _check_bounds("min_machines", min_machines, "max_machines", max_machines)
    if max_machines > 16:
        raise InvalidArgument(f"max_machines={max_machines} is more than 16")
    _check_int("max_sessions", max_sessions, 1)
    for name, flag in (
        ("ip_changes", ip_changes),
        ("shared_nat", shared_nat),
        ("long_silences", long_silences),
        ("hints", hints),
        ("fatal_errors", fatal_errors),
        ("lookalike", lookalike),
    ):
        _check_bool(name, flag)
    if not isinstance(stale_after, timedelta) or stale_after < timedelta(seconds=100):
        raise InvalidArgument(f"stale_after={stale_after!r} must be a timedelta of 100 s or more")
    if not isinstance(max_start, timedelta) or max_start < timedelta(0):
        raise InvalidArgument(f"max_start={max_start!r} must be a non-negative timedelta")
    stale_ms = int(stale_after.total_seconds() * 1000)
    start_ms = int(max_start.total_seconds() * 1000)

    @st.composite
    def build(draw: st.DrawFn) -> FleetStream:
        n = draw(st.integers(min_machines, max_machines))
        family = draw(st.sampled_from([4, 6]))
        nat_group: set[int] = set()
        if shared_nat and n > 1:
            nat_group = draw(st.sets(st.integers(1, n), max_size=n))
        if len(nat_group) < 2:
            nat_group = set()
        rnd = draw(st.randoms(use_true_random=False))
        opts = _Options(
            family=family,
            nat_ip="192.0.2.1" if family == 4 else "2001:db8:ffff::1",
            long_silences=long_silences,
            hints=hints,
            fatal_errors=fatal_errors,
            stale_ms=stale_ms,
        )
        raw: list[tuple[int, int, int, Event, Truth]] = []
        sessions: list[SessionTruth] = []
        hosts: list[str] = []
        aids: list[str] = []

        def pick(own: str, used: list[str], case: bool) -> str:
            """``own``, or (with ``lookalike``, sometimes) an unused lookalike of a used name."""
            if lookalike and used and draw(st.booleans()):
                fresh = [v for u in used for v in lookalikes(u, case=case) if v not in used]
                if fresh:
                    own = draw(st.sampled_from(fresh))
            used.append(own)
            return own

        for m in range(1, n + 1):
            machine = _Machine(
                name=f"m{m}",
                index=m,
                hostname=pick(f"{draw(st.sampled_from(_NAMES))}-{m}", hosts, False),
                pools=_machine_pools(m, family, 3),
                behind_nat=m in nat_group,
                on_vpn=ip_changes and m not in nat_group and draw(st.booleans()),
            )
            t = draw(st.integers(0, start_ms))
            for s in range(1, draw(st.integers(1, max_sessions)) + 1):
                aid = pick(f"A-m{m}-s{s}", aids, True)
                truth, sent, t = _session(draw, rnd, opts, machine, s, t, aid)
                sessions.append(truth)
                tr = Truth(machine=machine.name, session=truth.session)
                raw.extend((at, m, len(raw) + i, ev, tr) for i, (at, ev) in enumerate(sent))
        raw.sort(key=lambda r: (r[0], r[1], r[2]))
        events = tuple(
            StreamEvent(event=ev, now=EPOCH + timedelta(milliseconds=at), truth=tr)
            for at, _, _, ev, tr in raw
        )
        return FleetStream(events=events, sessions=tuple(sessions))

    return build()
