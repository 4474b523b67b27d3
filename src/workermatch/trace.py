"""Traces: requests as a server saw them, as JSON Lines, and their replay.

A trace is a language-neutral record of requests in arrival order, one JSON object a line
(``docs/cli-and-traces.md`` describes the format and every choice this module makes).  This module
reads traces (:func:`parse_trace`), writes them (:func:`record_to_dict`, :func:`dump_record`),
replays them against any :class:`~workermatch.WorkerRepository` (:func:`replay`) and prints the
store's state afterwards (:func:`final_state`), exactly as ``workermatch replay`` does::

    repo = workermatch.InMemoryWorkerRepository(id_factory=workermatch.sequential_ids())
    with open("trace.jsonl", encoding="utf-8") as f:
        for line in replay(parse_trace(f), repo, workermatch.DEFAULT_POLICY):
            print(dump_json(line.to_dict()))

Everything here is deterministic: the same trace, policy and (empty) store give the same text,
whatever store it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import attrs

from ._decision import Decision, Outcome, choose
from ._engine import apply_event, run
from ._errors import AmbiguousMatch, ClaimRefused, InvalidInput
from ._model import AssignmentStatus, Event, EventKind, Identity, normalize_time, quote
from ._policy import Policy, Rule
from ._protocol import WorkerRepository

__all__ = [
    "MAX_SKEW",
    "REQUIRED_KEYS",
    "TRACE_KEYS",
    "ReplayLine",
    "TraceError",
    "TraceRecord",
    "dump_json",
    "dump_record",
    "final_state",
    "format_time",
    "line_to_dict",
    "parse_time",
    "parse_trace",
    "record_to_dict",
    "replay",
]

#: Every key a trace line may carry, in the order :func:`record_to_dict` writes them.
TRACE_KEYS = ("at", "kind", "ip", "hostname", "assignment", "worker_id", "message", "truth")
#: The keys every trace line must carry (a claim must also carry ``assignment``).
REQUIRED_KEYS = ("at", "kind", "ip")
#: How far a line's ``at`` may lie before the latest ``at`` of the lines above it (clock skew
#: between several server processes that wrote one log).  Further back is a :class:`TraceError`.
MAX_SKEW = timedelta(seconds=5)

_UTC = timezone.utc

# RFC 3339 date-time: full date, "T" (or "t" or a space, which RFC 3339 allows), full time with
# optional fraction, and a mandatory offset ("Z" or +hh:mm / -hh:mm).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_NAIVE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?")
# The longest time text parse_time reads (a fraction of up to 35 digits and an offset); longer
# text is refused before it is parsed.
_MAX_TIME_TEXT = 64


class TraceError(InvalidInput):
    """A trace line breaks the format; ``line`` is its 1-based number.

    The message starts with ``line N:`` and names the problem, so it can be printed as is.
    Nothing from this line on is applied by :func:`replay`.
    """

    def __init__(
        self, message: str, *, line: int, field: str | None = None, value: object = None
    ) -> None:
        super().__init__(f"line {line}: {message}", field=field, value=value)
        self.line = line


def parse_time(text: object, *, field: str = "at") -> datetime:
    """Parse an RFC 3339 time with a UTC offset into an aware UTC datetime (millisecond
    resolution, the library's).  Raises :class:`~workermatch.InvalidInput` otherwise."""
    if not isinstance(text, str):
        raise InvalidInput(
            f"{field} must be an RFC 3339 time string, not {_json_type(text)}",
            field=field,
            value=text,
        )
    if len(text) > _MAX_TIME_TEXT:
        raise InvalidInput(
            f"{field} is {len(text)} characters long; an RFC 3339 time has at most "
            f"{_MAX_TIME_TEXT}",
            field=field,
            value=text,
        )
    m = _RFC3339.fullmatch(text)
    if m is None:
        if _NAIVE.fullmatch(text):
            raise InvalidInput(
                f"{field} {quote(text)} has no UTC offset; write it as {text}Z (UTC) or with "
                "+hh:mm",
                field=field,
                value=text,
            )
        raise InvalidInput(
            f"{field} {quote(text)} is not an RFC 3339 time such as 2025-11-06T10:00:21.4Z",
            field=field,
            value=text,
        )
    year, month, day, hour, minute, second, frac, z, sign, oh, om = m.groups()
    if z:
        tz = _UTC
    else:
        if int(oh) > 23 or int(om) > 59:
            raise InvalidInput(f"{field} {quote(text)} has an invalid UTC offset", field=field)
        offset = timedelta(hours=int(oh), minutes=int(om))
        tz = timezone(-offset if sign == "-" else offset)
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        value = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
    except ValueError as exc:
        raise InvalidInput(
            f"{field} {quote(text)} is not a valid time: {exc}", field=field
        ) from None
    return normalize_time(value, field=field)


def format_time(value: datetime) -> str:
    """Write a time as traces do: UTC, ``Z``, milliseconds only when not zero
    (``2025-11-06T10:00:21Z``, ``2025-11-06T10:00:21.400Z``)."""
    t = normalize_time(value, field="at")
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond // 1000:03d}"
    return text + "Z"


@attrs.frozen(kw_only=True)
class TraceRecord:
    """One request of a trace: its line number, its time, the event, and the ground truth."""

    line: int
    at: datetime
    event: Event
    truth: Mapping[str, Any] | None = None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json gives nothing else


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {quote(key)}")
        seen.add(key)
    raise AssertionError("unreachable")  # pragma: no cover


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)
_KEYS = frozenset(TRACE_KEYS)
_KINDS = frozenset(k.value for k in EventKind)
_CLAIM = EventKind.CLAIM.value


def _optional_str(obj: Mapping[str, Any], key: str, lineno: int) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TraceError(
        f"{key} must be a string, not {_json_type(value)}", line=lineno, field=key, value=value
    )


def _parse_line(text: str, lineno: int) -> TraceRecord:
    try:
        if isinstance(text, str) and not text.startswith("\ufeff"):
            obj = _DECODER.decode(text)  # what json.loads does, without a decoder per line
        else:
            obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise TraceError(f"not valid JSON ({exc})", line=lineno) from None
    if not isinstance(obj, dict):
        raise TraceError(f"a trace line must be a JSON object, not {_json_type(obj)}", line=lineno)
    unknown = sorted(obj.keys() - _KEYS)
    if unknown:
        raise TraceError(
            f"unknown key {quote(unknown[0])}; a trace line has only {', '.join(TRACE_KEYS)}",
            line=lineno,
            field=unknown[0],
        )
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise TraceError(f"missing key {key!r}", line=lineno, field=key)
    try:
        at = parse_time(obj["at"])
    except InvalidInput as exc:
        raise TraceError(str(exc), line=lineno, field="at", value=obj["at"]) from None
    kind = obj["kind"]
    if not isinstance(kind, str) or kind not in _KINDS:
        raise TraceError(
            f"kind {quote(kind)} is not one of " + ", ".join(repr(k.value) for k in EventKind),
            line=lineno,
            field="kind",
            value=kind,
        )
    ip = obj["ip"]
    if not isinstance(ip, str):
        raise TraceError(
            f"ip must be a string, not {_json_type(ip)}", line=lineno, field="ip", value=ip
        )
    hostname = _optional_str(obj, "hostname", lineno)
    assignment = _optional_str(obj, "assignment", lineno)
    worker_id = _optional_str(obj, "worker_id", lineno)
    message = _optional_str(obj, "message", lineno)
    truth = obj.get("truth")
    if truth is not None and not isinstance(truth, dict):
        raise TraceError(
            f"truth must be an object, not {_json_type(truth)}",
            line=lineno,
            field="truth",
            value=truth,
        )
    if kind == _CLAIM and assignment is None:
        raise TraceError(
            "a claim must name its assignment (key 'assignment')", line=lineno, field="assignment"
        )
    try:
        if kind == _CLAIM:
            event = Event(
                kind=kind,
                identity=Identity(ip=ip, hostname=hostname, worker_id=worker_id),
                assignment_id=assignment,
                message=message,
            )
        else:
            event = Event(
                kind=kind,
                identity=Identity(
                    ip=ip, hostname=hostname, worker_id=worker_id, assignment_id=assignment
                ),
                message=message,
            )
    except InvalidInput as exc:
        field = "assignment" if exc.field == "assignment_id" else exc.field
        raise TraceError(str(exc), line=lineno, field=field, value=exc.value) from None
    return TraceRecord(
        line=lineno,
        at=at,
        event=event,
        truth=None if truth is None else MappingProxyType(truth),
    )


def parse_trace(lines: Iterable[str]) -> Iterator[TraceRecord]:
    """Read a trace lazily, one :class:`TraceRecord` per request line.

    ``lines`` is any iterable of text lines (an open file, ``text.splitlines()``).  Lines that
    hold only white space are skipped (they still count in the numbering).  A line that breaks
    the format raises :class:`TraceError` naming it, when the iteration reaches it; so does a
    line whose ``at`` lies more than :data:`MAX_SKEW` before the latest ``at`` above it.
    """
    latest: datetime | None = None
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        record = _parse_line(text, lineno)
        if latest is not None and latest - record.at > MAX_SKEW:
            raise TraceError(
                f"at {format_time(record.at)} goes back {(latest - record.at).total_seconds():g} s "
                f"before an earlier line's {format_time(latest)}; a trace is in arrival order "
                f"and tolerates at most {MAX_SKEW.total_seconds():g} s of clock skew",
                line=lineno,
                field="at",
                value=format_time(record.at),
            )
        latest = record.at if latest is None else max(latest, record.at)
        yield record


def line_to_dict(
    at: datetime,
    kind: EventKind | str,
    ip: str,
    *,
    hostname: str | None = None,
    assignment: str | None = None,
    worker_id: str | None = None,
    message: str | None = None,
    truth: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A trace line as a dict from its fields as given (not normalised), keys in
    :data:`TRACE_KEYS` order, ``None`` values left out.  :func:`record_to_dict` and the fleet
    simulator (:mod:`workermatch.lab`) both write their lines through it."""
    out: dict[str, Any] = {
        "at": format_time(at),
        "kind": kind.value if isinstance(kind, EventKind) else kind,
        "ip": ip,
    }
    for key, value in (
        ("hostname", hostname),
        ("assignment", assignment),
        ("worker_id", worker_id),
        ("message", message),
    ):
        if value is not None:
            out[key] = value
    if truth is not None:
        out["truth"] = dict(truth)
    return out


def record_to_dict(record: TraceRecord) -> dict[str, Any]:
    """The trace line of ``record`` as a dict, keys in :data:`TRACE_KEYS` order, absent values
    left out (the inverse of :func:`parse_trace`, up to normalisation: addresses and hostnames
    come back in canonical form, times in UTC at millisecond resolution)."""
    event = record.event
    identity = event.identity
    return line_to_dict(
        record.at,
        event.kind,
        identity.ip,
        hostname=identity.hostname,
        assignment=(
            event.assignment_id if event.kind is EventKind.CLAIM else identity.assignment_id
        ),
        worker_id=identity.worker_id,
        message=event.message,
        truth=record.truth,
    )


def dump_json(obj: Mapping[str, Any]) -> str:
    """One line of JSON as ``workermatch`` writes it: keys in the given order, ``", "`` and
    ``": "`` separators, non-ASCII characters escaped, no trailing newline."""
    return json.dumps(obj, ensure_ascii=True)


def dump_record(record: TraceRecord) -> str:
    """The trace line of ``record`` as text (without the newline)."""
    return dump_json(record_to_dict(record))


@attrs.frozen(kw_only=True)
class ReplayLine:
    """What one trace line did in a replay.

    ``worker`` is the id of the worker the request resolved to, ``rule`` the rule that placed it
    (``"created"`` when it made a worker), ``ambiguous`` whether that rule had more than one
    eligible candidate.  A claim the engine refused (the assignment runs on another live worker,
    or has already finished) is not a bad trace: ``worker`` is ``None``, ``created`` is false,
    ``refused`` holds :attr:`ClaimRefused.reason` (or ``"ambiguous"`` under a policy that
    refuses ambiguous matches), ``rule`` and ``ambiguous`` say what the chain had found, and
    ``outcome`` is ``None``.  ``ended`` lists the assignments the request completed or failed
    (held ends included on the line whose evidence applied them), ``alert`` why an operator
    should look, or ``None``.  ``decision`` is the full explained decision.
    """

    line: int
    worker: str | None
    rule: str
    created: bool
    ambiguous: bool
    ended: tuple[str, ...] = ()
    alert: str | None = None
    refused: str | None = None
    outcome: Outcome | None = None
    decision: Decision | None = attrs.field(default=None, repr=False, eq=False)

    def to_dict(self) -> dict[str, Any]:
        """The output line of ``workermatch replay --jsonl``: the contract's keys in order,
        then ``refused`` when the request was refused."""
        out: dict[str, Any] = {
            "line": self.line,
            "worker": self.worker,
            "rule": self.rule,
            "created": self.created,
            "ambiguous": self.ambiguous,
            "ended": list(self.ended),
            "alert": self.alert,
        }
        if self.refused is not None:
            out["refused"] = self.refused
        return out


def replay(
    records: Iterable[TraceRecord], repo: WorkerRepository, policy: Policy
) -> Iterator[ReplayLine]:
    """Apply each record to ``repo`` under ``policy``, in order, lazily; one
    :class:`ReplayLine` per record.

    Each request is applied with :func:`~workermatch.apply_event` at its ``at``, creating the
    assignments a claim names the first time the trace names them.  Give ``repo`` the id
    factory :func:`~workermatch.sequential_ids` for the ids ``w1``, ``w2``, ... of a replay.
    A :class:`TraceError` raised by ``records`` propagates when the iteration reaches it;
    nothing from that record on is applied.  Refused claims are reported, not raised.

    Records are read one at a time, as the lines are asked for: a replay of
    ``parse_trace(file)`` holds one line of the trace at a time, whatever its length.
    """
    for record in records:
        yield _replay_record(record, repo, policy)


def _replay_record(record: TraceRecord, repo: WorkerRepository, policy: Policy) -> ReplayLine:
    """Apply one record to ``repo`` under ``policy``: one step of :func:`replay`."""
    event = record.event
    try:
        outcome = apply_event(event, record.at, repo, policy, create_assignments=True)
    except ClaimRefused as exc:
        decision = run(
            choose(event.identity, record.at, policy, event.kind, claiming=event.assignment_id),
            repo,
        )
        return ReplayLine(
            line=record.line,
            worker=None,
            rule=decision.rule.value,
            created=False,
            ambiguous=decision.ambiguous,
            refused=exc.reason,
            decision=decision,
        )
    except AmbiguousMatch as exc:
        found = exc.decision if isinstance(exc.decision, Decision) else None
        return ReplayLine(
            line=record.line,
            worker=None,
            rule=found.rule.value if found is not None else Rule.CREATED.value,
            created=False,
            ambiguous=True,
            refused="ambiguous",
            decision=found,
        )
    return ReplayLine(
        line=record.line,
        worker=outcome.worker.id,
        rule=outcome.rule.value,
        created=outcome.created,
        ambiguous=outcome.ambiguous,
        ended=outcome.ended,
        alert=None if outcome.alert is None else outcome.alert.value,
        outcome=outcome,
        decision=outcome.decision,
    )


def _natural_key(text: str) -> tuple[Any, ...]:
    # "w2" before "w10": digit runs compare as numbers.
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts)


def final_state(repo: WorkerRepository, now: datetime, policy: Policy) -> dict[str, Any]:
    """The store's workers and assignments, as the final line of a replay prints them.

    ``{"workers": [{"id", "ip", "hostname", "status", "stale", "merged_into"}, ...],
    "assignments": [{"id", "status", "worker"}, ...], "pending": [{"assignment",
    "candidates"}, ...]}``, keys in that order, the lists sorted by id with digit runs compared
    as numbers (``w2`` before ``w10``; creation order for the ids of a replay).  ``pending``
    lists each RUNNING assignment whose end is held for want of evidence, with the workers that
    could have asked for it.  ``stale`` is :meth:`Worker.is_stale_at` at ``now`` under ``policy``
    (a replay passes the latest ``at`` of the trace): flagged, merged, or silent past
    ``policy.stale_after``.  Hostnames are in canonical form (lower case).
    """
    now = normalize_time(now)
    workers = sorted(repo.all_workers(), key=lambda w: _natural_key(w.id))
    assignments = sorted(repo.all_assignments(), key=lambda a: _natural_key(a.id))
    held = {w.id: w.held_end for w in workers if w.held_end is not None}
    return {
        "workers": [
            {
                "id": w.id,
                "ip": w.ip,
                "hostname": w.hostname,
                "status": w.status.value,
                "stale": w.is_stale_at(now, policy.stale_after),
                "merged_into": w.merged_into,
            }
            for w in workers
        ],
        "assignments": [
            {"id": a.id, "status": a.status.value, "worker": a.worker_id} for a in assignments
        ],
        "pending": [
            {"assignment": a.id, "candidates": list(held[a.worker_id].candidates)}
            for a in assignments
            if a.status is AssignmentStatus.RUNNING and a.worker_id in held
        ],
    }
