"""Value types: what a request says, and what the store holds.

Every type here is frozen, keyword-only and validating: a value that exists is a valid value.
Inputs are normalised on construction (IP addresses to canonical form, hostnames to lower case
without a trailing dot, datetimes to UTC at millisecond resolution), so two spellings of the
same machine compare equal.  Invalid input raises :class:`~workermatch.InvalidInput`, whose
message quotes at most a short prefix of the rejected value (:func:`quote`).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, cast

import attrs

from ._errors import InvalidInput

__all__ = [
    "MAX_HOSTNAME_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_IP_LENGTH",
    "MAX_TIME",
    "MIN_TIME",
    "Assignment",
    "AssignmentStatus",
    "Event",
    "EventKind",
    "HeldEnd",
    "Identity",
    "Worker",
    "WorkerStatus",
    "check_id",
    "normalize_hostname",
    "normalize_ip",
    "normalize_time",
    "quote",
]

#: The longest hostname accepted (RFC 1035's limit for a full domain name, without the dot).
MAX_HOSTNAME_LENGTH = 253
#: The longest worker or assignment id accepted.
MAX_ID_LENGTH = 255
#: The longest IP address text accepted, without brackets: an IPv6 address written out in full
#: with an IPv4 tail (``0000:0000:0000:0000:0000:ffff:255.255.255.255``).  Longer text is refused
#: before it is parsed.
MAX_IP_LENGTH = 45

_UTC = timezone.utc

#: The earliest time accepted (inclusive): the Unix epoch.  A request stamped earlier comes from
#: a broken clock.
MIN_TIME = datetime(1970, 1, 1, tzinfo=_UTC)
#: The latest time accepted (exclusive).  It leaves about a thousand years below
#: ``datetime.max``, so ``now + window`` and ``now - window`` cannot overflow for any window
#: shorter than that, and lies inside the range of every supported store's time column.
MAX_TIME = datetime(9000, 1, 1, tzinfo=_UTC)

#: How many characters of a rejected value an error message quotes, at most.
QUOTE_LIMIT = 40

# Characters refused in ids and hints: C0 and C1 control characters and DEL (PostgreSQL cannot
# store NUL; the rest are never part of an id), and lone surrogates (not encodable as UTF-8, so
# no SQL store can take them).
_BAD_ID_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
E = TypeVar("E", bound=enum.Enum)
V = TypeVar("V")


class EventKind(str, enum.Enum):
    """The kind of request a worker sends."""

    CLAIM = "claim"
    """Take an assignment.  The real client sends no hostname with it."""
    HEARTBEAT = "heartbeat"
    """Periodic liveness (every 30 s); the only request of the real client with a hostname."""
    GUI_UPDATE = "gui_update"
    """Progress and log messages, many per second; ``finished``/``fatal_error`` end a session."""
    REGISTER = "register"
    """A plain registration."""

    def __repr__(self) -> str:
        return f"EventKind.{self.name}"


class WorkerStatus(str, enum.Enum):
    """A worker's status, as the real system's dashboard shows it."""

    IDLE = "IDLE"
    RUNNING = "RUNNING"
    ERROR = "ERROR"
    OFFLINE = "OFFLINE"

    def __repr__(self) -> str:
        return f"WorkerStatus.{self.name}"


class AssignmentStatus(str, enum.Enum):
    """An assignment's status."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        """Whether the assignment has ended (completed, failed or cancelled)."""
        return self in _FINAL_ASSIGNMENT_STATES

    def __repr__(self) -> str:
        return f"AssignmentStatus.{self.name}"


_FINAL_ASSIGNMENT_STATES = frozenset(
    {AssignmentStatus.COMPLETED, AssignmentStatus.FAILED, AssignmentStatus.CANCELLED}
)


# --------------------------------------------------------------------------------------------
# Normalisers.  Each returns the canonical form or raises InvalidInput naming the field.


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to at most about ``limit`` characters, for error messages.

    A longer string shows the prefix whose ``repr`` fits, followed by ``...``; so does any
    other value whose ``repr`` is longer.  (:attr:`InvalidInput.value` keeps the whole value.)
    """
    if isinstance(value, str):
        text = value[:limit]
        shown = repr(text)
        while len(shown) > limit + 2:  # escapes (\x00, \ud800) are longer than one character
            text = text[:-1]
            shown = repr(text)
        return shown if len(text) == len(value) else shown + "..."
    shown = repr(value)
    return shown if len(shown) <= limit + 2 else shown[:limit] + "..."


def check_id(value: object, field: str) -> str:
    """Return ``value`` if it is a valid worker or assignment id, else raise
    :class:`~workermatch.InvalidInput` naming ``field``.

    A valid id is a string of 1 to :data:`MAX_ID_LENGTH` characters without surrounding white
    space, control characters (``\\x00``-``\\x1f``, ``\\x7f``-``\\x9f``) or lone surrogates.
    Repositories call it on the id given to ``get_worker`` / ``get_assignment``.
    """
    if not isinstance(value, str):
        raise InvalidInput(
            f"{field} must be a string, not {type(value).__name__}", field=field, value=value
        )
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(
            f"{field} is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed",
            field=field,
            value=value,
        )
    if not value or value != value.strip():
        raise InvalidInput(
            f"{field} {quote(value)} must be non-empty, without surrounding white space",
            field=field,
            value=value,
        )
    if _BAD_ID_CHARS.search(value):
        raise InvalidInput(
            f"{field} {quote(value)} contains a control character or a lone surrogate",
            field=field,
            value=value,
        )
    return value


def normalize_ip(value: object, *, field: str = "ip") -> str:
    """Return the canonical text of an IPv4 or IPv6 address.

    IPv6 is compressed and lower-cased (``2001:DB8:0::1`` becomes ``2001:db8::1``); an
    IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) becomes the IPv4 address it maps, since a
    dual-stack server sees one machine under both spellings.  Brackets (``[::1]``) are accepted.
    Rejected before parsing: text longer than :data:`MAX_IP_LENGTH` (brackets aside) and
    non-ASCII text.  An IPv6 zone id (``fe80::1%eth0``) is rejected too: it names an interface
    of the machine that wrote it, and the public address a request comes from never has one.
    """
    if isinstance(value, str):
        return _ip_text(value, field)
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return _canonical_ip(value, field, value)
    raise InvalidInput(
        f"{field} must be a string, not {type(value).__name__}", field=field, value=value
    )


@functools.lru_cache(maxsize=4096)
def _ip_text(value: str, field: str) -> str:
    """:func:`normalize_ip` of a text; the addresses a server sees again and again are parsed
    once (a rejected text is not kept: it is parsed, and refused, every time)."""
    if len(value) > MAX_IP_LENGTH + 2:
        raise InvalidInput(
            f"{field} is {len(value)} characters long; no IP address is longer than "
            f"{MAX_IP_LENGTH}",
            field=field,
            value=value,
        )
    text = value
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or text != text.strip() or not text.isascii():
        raise InvalidInput(f"{field} {quote(value)} is not an IP address", field=field, value=value)
    if "%" in text:
        raise InvalidInput(
            f"{field} {quote(value)} has an IPv6 zone id (%...); a public address has none",
            field=field,
            value=value,
        )
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(
            f"{field} {quote(value)} is not an IPv4 or IPv6 address", field=field, value=value
        ) from None
    return _canonical_ip(addr, field, value)


def _canonical_ip(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, field: str, value: object
) -> str:
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise InvalidInput(
            f"{field} {quote(str(addr))} has an IPv6 zone id (%...); a public address has none",
            field=field,
            value=value,
        )
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def normalize_hostname(value: object, *, field: str = "hostname") -> str | None:
    """Return a hostname in canonical form: lower case, no trailing dot; ``None`` stays ``None``.

    Rejected: an empty name, one longer than :data:`MAX_HOSTNAME_LENGTH`, an empty label
    (``a..b``), a label longer than 63 characters, white space, control characters or lone
    surrogates.  Lengths are checked on the lower-cased name, which can be longer than the name
    given (``İ``, U+0130, lower-cases to two characters).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(
            f"{field} must be a string or None, not {type(value).__name__}",
            field=field,
            value=value,
        )
    return _hostname_text(value, field)


@functools.lru_cache(maxsize=4096)
def _hostname_text(value: str, field: str) -> str:
    """:func:`normalize_hostname` of a text; the hostnames a server sees again and again are
    checked once (a rejected text is not kept: it is checked, and refused, every time)."""
    # Lower-casing never shortens a string: refuse what is too long already before any work.
    if len(value) > MAX_HOSTNAME_LENGTH + 1:
        raise InvalidInput(
            f"{field} is {len(value)} characters long; at most {MAX_HOSTNAME_LENGTH} are allowed",
            field=field,
            value=value,
        )
    given = value[:-1] if value.endswith(".") else value
    if not given:
        raise InvalidInput(f"{field} must not be empty", field=field, value=value)
    # Checked on the lower-cased name, the one that is compared and stored.
    text = given.lower()
    if len(text) > MAX_HOSTNAME_LENGTH:
        grown = " in lower case" if len(text) != len(given) else ""
        raise InvalidInput(
            f"{field} is {len(text)} characters long{grown}; at most {MAX_HOSTNAME_LENGTH} "
            "are allowed",
            field=field,
            value=value,
        )
    for ch in text:
        if ch.isspace() or not ch.isprintable():
            raise InvalidInput(
                f"{field} {quote(value)} contains white space or an unprintable character",
                field=field,
                value=value,
            )
    labels = text.split(".")
    if any(not label for label in labels):
        raise InvalidInput(f"{field} {quote(value)} has an empty label", field=field, value=value)
    if any(len(label) > 63 for label in labels):
        raise InvalidInput(
            f"{field} {quote(value)} has a label longer than 63 characters (in lower case)",
            field=field,
            value=value,
        )
    return text


def normalize_time(value: object, *, field: str = "now") -> datetime:
    """Return an aware datetime in UTC, truncated to whole milliseconds.

    Naive datetimes are rejected: the library cannot guess which clock they were read from.
    So are times before :data:`MIN_TIME` (1970) or from :data:`MAX_TIME` (the year 9000) on, so
    that adding or subtracting a policy's windows can never overflow.  Millisecond resolution
    is the coarsest of the supported stores (the real system's ``timestamp(3)`` columns), so
    every store sees the same instants.
    """
    if (
        type(value) is datetime
        and value.tzinfo is _UTC
        and not value.microsecond % 1000
        and MIN_TIME <= value < MAX_TIME
    ):
        return value  # canonical already: UTC, whole milliseconds, within the accepted years
    if not isinstance(value, datetime):
        raise InvalidInput(
            f"{field} must be a datetime, not {type(value).__name__}", field=field, value=value
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(
            f"{field} is a naive datetime ({value.isoformat()}); pass an aware one, "
            "for example datetime.now(timezone.utc)",
            field=field,
            value=value,
        )
    try:
        utc: datetime | None = value.astimezone(_UTC)
    except OverflowError:  # within a day of datetime.min or datetime.max
        utc = None
    if utc is None or not MIN_TIME <= utc < MAX_TIME:
        raise InvalidInput(
            f"{field} {value.isoformat()} is outside the accepted years 1970 to 8999",
            field=field,
            value=value,
        )
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


def _check_id(value: object, field: str, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    return check_id(value, field)


def _enum_value(cls: type[E], value: object, field: str) -> E:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise InvalidInput(
            f"{field} {quote(value)} is not one of {allowed}", field=field, value=value
        ) from None


# Named converters (the attrs mypy plugin needs named functions).


def _c_id(value: object) -> str:
    result = _check_id(value, "id", optional=False)
    assert result is not None
    return result


def _c_worker_id(value: object) -> str | None:
    return _check_id(value, "worker_id", optional=True)


def _c_assignment_id(value: object) -> str | None:
    return _check_id(value, "assignment_id", optional=True)


def _c_merged_into(value: object) -> str | None:
    return _check_id(value, "merged_into", optional=True)


def _c_created_at(value: object) -> datetime:
    return normalize_time(value, field="created_at")


def _c_last_seen(value: object) -> datetime:
    return normalize_time(value, field="last_seen")


def _c_started_at(value: object) -> datetime | None:
    return None if value is None else normalize_time(value, field="started_at")


def _c_ended_at(value: object) -> datetime | None:
    return None if value is None else normalize_time(value, field="ended_at")


def _c_hostname_seen(value: object) -> datetime | None:
    return None if value is None else normalize_time(value, field="hostname_seen")


def _c_contested(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise InvalidInput(
            "contested must be a sequence of worker ids", field="contested", value=value
        )
    ids = [_check_id(v, "contested", optional=False) for v in value]
    return tuple(sorted({i for i in ids if i is not None}))


def _c_kind(value: object) -> EventKind:
    return _enum_value(EventKind, value, "kind")


def _c_worker_status(value: object) -> WorkerStatus:
    return _enum_value(WorkerStatus, value, "status")


def _c_assignment_status(value: object) -> AssignmentStatus:
    return _enum_value(AssignmentStatus, value, "status")


def _c_stale(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput("stale must be a bool", field="stale", value=value)
    return value


def _c_ip(value: object) -> str:
    return normalize_ip(value)


def _c_hostname(value: object) -> str | None:
    return normalize_hostname(value)


# --------------------------------------------------------------------------------------------
# Values


@attrs.frozen(kw_only=True)
class Identity:
    """What one request tells the server about who sent it.

    ``ip`` is always present: the public address the request came from.  ``hostname`` is sent by
    some requests only (the real client's heartbeats).  ``worker_id`` and ``assignment_id`` are
    strong hints that newer clients can carry: a worker id that an earlier response handed out,
    and the assignment the client is working on.
    """

    ip: str = attrs.field(converter=_c_ip)
    hostname: str | None = attrs.field(default=None, converter=_c_hostname)
    worker_id: str | None = attrs.field(default=None, converter=_c_worker_id)
    assignment_id: str | None = attrs.field(default=None, converter=_c_assignment_id)


@attrs.frozen(kw_only=True)
class Event:
    """One request: its kind, who sent it, and what it carries.

    ``assignment_id`` is the assignment a ``claim`` takes (required for claims, refused on
    other kinds: their assignment hint belongs in :attr:`Identity.assignment_id`).
    ``message`` is read on ``gui_update`` only: ``"finished"`` completes the worker's running
    assignment, ``"fatal_error"`` fails it; any other value is a plain update.
    """

    kind: EventKind = attrs.field(converter=_c_kind)
    identity: Identity = attrs.field()
    assignment_id: str | None = attrs.field(default=None, converter=_c_assignment_id)
    message: str | None = attrs.field(default=None)

    @identity.validator
    def _check_identity(self, _: object, value: object) -> None:
        if not isinstance(value, Identity):
            raise InvalidInput(
                f"identity must be an Identity, not {type(value).__name__}",
                field="identity",
                value=value,
            )

    @message.validator
    def _check_message(self, _: object, value: object) -> None:
        if value is not None and not isinstance(value, str):
            raise InvalidInput("message must be a string or None", field="message", value=value)
        if value is not None and _SURROGATE.search(value):
            raise InvalidInput(
                f"message {quote(value)} contains a lone surrogate (not encodable as UTF-8)",
                field="message",
                value=value,
            )

    def __attrs_post_init__(self) -> None:
        if self.kind is EventKind.CLAIM and self.assignment_id is None:
            raise InvalidInput(
                "a claim must name the assignment it takes", field="assignment_id", value=None
            )
        if self.kind is not EventKind.CLAIM and self.assignment_id is not None:
            raise InvalidInput(
                f"only a claim takes an assignment; pass the {self.kind.value}'s assignment as "
                "the hint Identity(assignment_id=...)",
                field="assignment_id",
                value=self.assignment_id,
            )

    @classmethod
    def claim(
        cls,
        ip: str,
        assignment_id: str,
        *,
        hostname: str | None = None,
        worker_id: str | None = None,
    ) -> Event:
        """A claim of ``assignment_id`` from ``ip``."""
        return cls(
            kind=EventKind.CLAIM,
            identity=Identity(ip=ip, hostname=hostname, worker_id=worker_id),
            assignment_id=assignment_id,
        )

    @classmethod
    def heartbeat(
        cls,
        ip: str,
        *,
        hostname: str | None = None,
        worker_id: str | None = None,
        assignment_id: str | None = None,
    ) -> Event:
        """A heartbeat from ``ip``."""
        return cls(
            kind=EventKind.HEARTBEAT,
            identity=Identity(
                ip=ip, hostname=hostname, worker_id=worker_id, assignment_id=assignment_id
            ),
        )

    @classmethod
    def gui_update(
        cls,
        ip: str,
        message: str | None = None,
        *,
        hostname: str | None = None,
        worker_id: str | None = None,
        assignment_id: str | None = None,
    ) -> Event:
        """A GUI update from ``ip``; ``message`` may be ``"finished"`` or ``"fatal_error"``."""
        return cls(
            kind=EventKind.GUI_UPDATE,
            identity=Identity(
                ip=ip, hostname=hostname, worker_id=worker_id, assignment_id=assignment_id
            ),
            message=message,
        )

    @classmethod
    def register(cls, ip: str, *, hostname: str | None = None) -> Event:
        """A plain registration from ``ip``."""
        return cls(kind=EventKind.REGISTER, identity=Identity(ip=ip, hostname=hostname))


def _c_held_status(value: object) -> AssignmentStatus:
    status = _enum_value(AssignmentStatus, value, "status")
    if status not in (AssignmentStatus.COMPLETED, AssignmentStatus.FAILED):
        raise InvalidInput(
            "a held end completes or fails its assignment", field="status", value=value
        )
    return status


def _c_candidates(value: object) -> tuple[str, ...]:
    ids = _c_contested(value)
    if not ids:
        raise InvalidInput("a held end has candidates", field="candidates", value=value)
    return ids


def _c_count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput("count must be a positive integer", field="count", value=value)
    return value


def _c_asked(value: object) -> tuple[datetime, ...]:
    if isinstance(value, (str, datetime)) or not hasattr(value, "__iter__"):
        raise InvalidInput("asked must be a sequence of times", field="asked", value=value)
    times = tuple(sorted(normalize_time(t, field="asked") for t in value))
    if not times:
        raise InvalidInput("a held end was asked for at least once", field="asked", value=value)
    return times


@attrs.frozen(kw_only=True)
class HeldEnd:
    """A session end (``finished`` or ``fatal_error``) held for want of evidence.

    Nothing separated ``candidates`` (worker ids): every candidate carries the same held end,
    and ``count`` is how many such ends were asked for among them.  ``doubt`` says what is in
    doubt:

    * ``"request"``: which candidate's machine sent the request.  A candidate whose machine is
      heard from on its own more than ``ended_grace`` after ``at`` did not send it.
    * ``"assignment"``: which candidate's assignment is the sender's (the candidates are claim
      workers adopted under doubt: which claim was whose is unknown).  Only counting settles it.

    Once as few candidates are left as ends were asked for, all of them end.
    """

    status: AssignmentStatus = attrs.field(converter=_c_held_status)
    asked: tuple[datetime, ...] = attrs.field(converter=_c_asked)
    """When the requests that asked for the held ends came, earliest first (an end that moved
    here from another held end keeps the times of the requests it may have come from)."""
    candidates: tuple[str, ...] = attrs.field(converter=_c_candidates)
    count: int = attrs.field(converter=_c_count)
    """How many ends are held among the candidates."""
    doubt: str = attrs.field(default="request")

    @doubt.validator
    def _check_doubt(self, _: object, value: object) -> None:
        if value not in ("request", "assignment"):
            raise InvalidInput(
                "doubt must be 'request' or 'assignment'", field="doubt", value=value
            )

    @property
    def at(self) -> datetime:
        """When the first of the held ends was asked for."""
        return self.asked[0]

    def to_json(self) -> str:
        """A compact JSON text of this value (how SQL stores keep it in one column)."""
        return json.dumps(
            {
                "status": self.status.value,
                "asked": [t.isoformat() for t in self.asked],
                "candidates": list(self.candidates),
                "count": self.count,
                "doubt": self.doubt,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> HeldEnd:
        """The inverse of :meth:`to_json`."""
        try:
            obj = json.loads(text)
            return cls(
                status=obj["status"],
                asked=[datetime.fromisoformat(t) for t in obj["asked"]],
                candidates=obj["candidates"],
                count=obj["count"],
                doubt=obj["doubt"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"not a held end: {exc}", field="held_end") from None


def _c_held_end(value: object) -> HeldEnd | None:
    if value is None or isinstance(value, HeldEnd):
        return value
    if isinstance(value, str):
        return HeldEnd.from_json(value)
    raise InvalidInput("held_end must be a HeldEnd or None", field="held_end", value=value)


@attrs.frozen(kw_only=True)
class Worker:
    """A worker record: one session of one machine.

    ``stale`` is the *persisted* flag that a sweep writes for dashboards; whether a worker is
    stale for a decision is :meth:`is_stale_at`, which also looks at ``last_seen``.
    ``assignment_id`` is the assignment of this worker's session (kept after it ends, as
    history); which assignments a worker *holds* is on the assignments.  ``ended_at`` is when
    its session ended (``finished`` or ``fatal_error``).  ``merged_into`` points at the worker
    this duplicate was merged into, if any.
    """

    id: str = attrs.field(converter=_c_id)
    ip: str = attrs.field(converter=_c_ip)
    hostname: str | None = attrs.field(default=None, converter=_c_hostname)
    created_at: datetime = attrs.field(converter=_c_created_at)
    last_seen: datetime = attrs.field(converter=_c_last_seen)
    status: WorkerStatus = attrs.field(default=WorkerStatus.IDLE, converter=_c_worker_status)
    stale: bool = attrs.field(default=False, converter=_c_stale)
    assignment_id: str | None = attrs.field(default=None, converter=_c_assignment_id)
    ended_at: datetime | None = attrs.field(default=None, converter=_c_ended_at)
    merged_into: str | None = attrs.field(default=None, converter=_c_merged_into)
    hostname_seen: datetime | None = attrs.field(default=None, converter=_c_hostname_seen)
    """When a request carrying this worker's hostname last landed on it: the liveness of its
    machine's hostname stream (the real client's heartbeats), which requests without hostname
    cannot prove."""
    contested: tuple[str, ...] = attrs.field(default=(), converter=_c_contested)
    """The candidates of every doubt this worker was in, chosen or passed over, without
    evidence to separate them (itself included, sorted): the union of those doubts; empty when
    it never was.  Decisions that land on a contested worker say so, and an alert is raised
    only for a doubt whose candidates were not all together in an earlier one."""
    held_end: HeldEnd | None = attrs.field(default=None, converter=_c_held_end)
    """A session end that this worker's machine may have asked for, held for want of evidence
    (:class:`HeldEnd`); every candidate of it carries the same value."""

    def is_stale_at(self, now: datetime, stale_after: timedelta) -> bool:
        """Whether the worker is stale at ``now``: flagged, merged, or silent past ``stale_after``.

        A ``last_seen`` after ``now`` (clock skew between server processes) counts as age zero.
        """
        if self.stale or self.merged_into is not None:
            return True
        return now - self.last_seen > stale_after


@attrs.frozen(kw_only=True)
class Assignment:
    """A unit of work, held by at most one worker."""

    id: str = attrs.field(converter=_c_id)
    status: AssignmentStatus = attrs.field(
        default=AssignmentStatus.PENDING, converter=_c_assignment_status
    )
    worker_id: str | None = attrs.field(default=None, converter=_c_worker_id)
    started_at: datetime | None = attrs.field(default=None, converter=_c_started_at)
    ended_at: datetime | None = attrs.field(default=None, converter=_c_ended_at)


# --------------------------------------------------------------------------------------------
# Canonical copies


def _slot_writer(cls: type[V], *, copy: bool) -> Callable[..., V]:
    """A function that makes ``cls`` values (a frozen attrs class with slots) by writing each
    field straight into its slot: no converter, no validator, no ``__attrs_post_init__``.

    ``copy``: the function is ``copy(value, **changes)``, a copy of ``value`` with ``changes``;
    otherwise it takes the constructor's arguments, with its defaults.
    """
    fields = attrs.fields(cast(Any, cls))
    if copy:
        params = ["value", "*", *(f"{f.alias}=_SAME" for f in fields)]
        values = [f"value.{f.name} if {f.alias} is _SAME else {f.alias}" for f in fields]
    else:
        star = ["*"] if all(f.kw_only for f in fields) else []
        params = [
            *star,
            *(f.alias if f.default is attrs.NOTHING else f"{f.alias}=_d_{f.name}" for f in fields),
        ]
        values = [f.alias for f in fields]
    lines = [f"def make({', '.join(params)}):", "    new = _new(_cls)"]
    lines += [f"    _set_{f.name}(new, {v})" for f, v in zip(fields, values, strict=True)]
    lines.append("    return new")
    scope: dict[str, Any] = {"_SAME": object(), "_new": object.__new__, "_cls": cls}
    scope.update({f"_set_{f.name}": cls.__dict__[f.name].__set__ for f in fields})
    scope.update({f"_d_{f.name}": f.default for f in fields if f.default is not attrs.NOTHING})
    exec("\n".join(lines), scope)  # code made above from the field names only
    make: Callable[..., V] = scope["make"]
    return make


def direct_constructor(cls: type[V]) -> Callable[..., V]:
    """A function taking the keyword arguments of ``cls`` (a frozen attrs class with slots
    whose fields have no converter, no validator and no default factory) that makes the same
    value as ``cls(...)`` about twice as fast: it writes the fields straight into the slots,
    where a frozen class's ``__init__`` goes through ``object.__setattr__`` and a call of the
    class through a dict of the arguments.  For the values made for every decision."""
    if any(
        f.converter is not None or f.validator is not None or not f.init
        for f in attrs.fields(cast(Any, cls))
    ) or hasattr(cls, "__attrs_post_init__"):
        raise TypeError(f"{cls.__name__} converts, validates or computes a field")
    return _slot_writer(cls, copy=False)


_COPIERS: dict[type, Callable[..., Any]] = {}


def evolve_valid(value: V, **changes: Any) -> V:
    """A copy of ``value`` (a valid :class:`Worker` or :class:`Assignment`) with ``changes``,
    which must be valid and canonical already (derived from valid values: an identity's ``ip``,
    a normalised ``now``, ids read from the store, enum members).  They are not validated
    again, where :func:`attrs.evolve` would re-parse every address and re-normalise every time;
    the public constructors and :func:`attrs.evolve` still validate everything they are
    given.  Any other type goes through :func:`attrs.evolve`."""
    copy = _COPIERS.get(type(value))
    if copy is None:
        return attrs.evolve(cast(Any, value), **changes)  # type: ignore[no-any-return]
    return copy(value, **changes)  # type: ignore[no-any-return]


_COPIERS.update({c: _slot_writer(c, copy=True) for c in (Worker, Assignment)})
evolve_valid_worker: Callable[..., Worker] = _COPIERS[Worker]
""":func:`evolve_valid` of a :class:`Worker`, without the look-up by type: the copy that every
request placed on a worker makes."""
