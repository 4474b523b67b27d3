"""The real client's timing: one model, shared by everything that makes up requests.

The fleet simulator (:mod:`workermatch.lab`), the conformance kit's ``fleet_streams``
strategy, ``workermatch demo``, the story test and the corpus builder all lay out a session's
requests with :func:`session_requests`; they differ only in how they choose its times and
addresses (drawn at random, drawn by Hypothesis, or written by hand).

What one session of the real client sends (as read from the client's source and traffic):

* a claim of its assignment from the command-line process, without hostname;
* the GUI starts after a delay, with two heartbeats at the same instant (two threads), from
  its own address (its own "what is my IP" lookup: another one behind a VPN);
* a heartbeat every :data:`HEARTBEAT_EVERY_MS` until the end, the only request with a hostname;
* progress updates without hostname (the real client sends many a second; the models sample
  one every few seconds: the matching rules see the same thing);
* :data:`FINAL_UPDATES` 100 % updates :data:`FINAL_UPDATE_GAP_MS` apart, then ``finished``
  (or ``fatal_error``);
* sometimes one more update in the :data:`BRIDGE_STOP_MS` before the bridge stops.

Addresses change with time (a VPN reconnecting), the client may go silent for a while (no
request is sent, except the session's end), and a crashed client stops sending altogether.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import attrs

from .._model import Event, EventKind, Identity

__all__ = [
    "BRIDGE_STOP_MS",
    "FINALE_MS",
    "FINAL_UPDATES",
    "FINAL_UPDATE_GAP_MS",
    "HEARTBEAT_EVERY_MS",
    "PROGRESS",
    "TRAILING",
    "Request",
    "address_at",
    "every",
    "session_requests",
]

HEARTBEAT_EVERY_MS = 30_000
"""The GUI's heartbeat period."""
FINAL_UPDATES = 5
"""How many 100 % progress updates come before ``finished``."""
FINAL_UPDATE_GAP_MS = 500
"""The gap between two of them."""
FINALE_MS = FINAL_UPDATES * FINAL_UPDATE_GAP_MS
"""The first 100 % update comes this long before the session's end."""
BRIDGE_STOP_MS = 3_000
"""How long the bridge runs after ``finished`` (a trailing update may come within it)."""
PROGRESS = "overall_progress"
"""The message of a progress update."""
TRAILING = "log"
"""The message of the trailing update after the end."""


@attrs.frozen(kw_only=True)
class Request:
    """One request of a session, at a time in milliseconds from the caller's origin."""

    at_ms: int
    kind: EventKind
    ip: str
    hostname: str | None = None
    assignment: str | None = None
    """A claim's assignment, or the hint of a client that names its assignment."""
    message: str | None = None

    def to_event(self, worker_id: str | None = None) -> Event:
        """The :class:`~workermatch.Event` the server sees (``worker_id``: a hint)."""
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


def every(start: int, gap: int | Callable[[], int], until: int) -> list[int]:
    """``start``, then every ``gap`` ms, while before ``until``.  ``gap`` may be a function that
    gives each gap in turn (it is called after each time, the last one included)."""
    out: list[int] = []
    t = start
    while t < until:
        out.append(t)
        t += gap() if callable(gap) else gap
    return out


def address_at(addresses: Sequence[tuple[int, str]], t: int) -> str:
    """The address at ``t``: that of the last ``(from, address)`` pair from at or before ``t``,
    or the first pair's before them all."""
    ip = addresses[0][1]
    for when, address in addresses:
        if when <= t:
            ip = address
    return ip


def session_requests(
    *,
    assignment: str,
    claim_at: int,
    claim_ip: str,
    gui_at: int,
    end_at: int,
    addresses: Sequence[tuple[int, str]],
    updates: Iterable[int],
    hostname: str | None = None,
    renamed: tuple[int, str | None] | None = None,
    hints: bool = False,
    heartbeats_until: int | None = None,
    finale_ms: int = FINALE_MS,
    ending: str | None = "finished",
    trailing_at: int | None = None,
    silences: Sequence[tuple[int, int]] = (),
    stop_at: int | None = None,
    extra: Sequence[tuple[int, EventKind]] = (),
) -> list[Request]:
    """One session's requests: the claim first, then the GUI's in time order.

    * ``claim_at`` / ``claim_ip``: the claim (no hostname) of ``assignment``.
    * ``gui_at``: the GUI's two start-up heartbeats; then one every
      :data:`HEARTBEAT_EVERY_MS` while before ``heartbeats_until`` (default ``end_at``: the
      real client's heartbeats run until the end).
    * ``updates``: the times of the sampled progress updates (``every`` makes them).
    * ``end_at``: ``ending`` (``"finished"`` or ``"fatal_error"``), after
      :data:`FINAL_UPDATES` 100 % updates that start ``finale_ms`` before it
      (:data:`FINAL_UPDATE_GAP_MS` apart).  ``ending=None``: no finale and no end.
    * ``addresses``: the GUI's ``(from, address)`` changes (:func:`address_at`).
    * ``hostname``: what heartbeats carry (``None``: nothing); ``renamed``: ``(from, new
      hostname)`` for a machine renamed mid-run.
    * ``hints``: every request after the claim names ``assignment``.
    * ``trailing_at``: one more update (:data:`TRAILING`) after the end.
    * ``silences``: ``[start, end)`` spans in which nothing is sent but the session's end.
    * ``stop_at``: a crash; nothing is sent from then on.
    * ``extra``: more requests of the GUI, ``(at, kind)``, placed before the others of their
      instant (a VPN client's first request from a new address).

    Requests of one instant keep this order: ``extra``, heartbeats, progress updates, the
    100 % updates, the end, the trailing update.
    """
    timeline: list[tuple[int, EventKind, str | None]] = [(at, kind, None) for at, kind in extra]
    timeline += [(t, EventKind.HEARTBEAT, None) for t in (gui_at, gui_at)]
    timeline += [
        (t, EventKind.HEARTBEAT, None)
        for t in every(
            gui_at + HEARTBEAT_EVERY_MS,
            HEARTBEAT_EVERY_MS,
            end_at if heartbeats_until is None else heartbeats_until,
        )
    ]
    timeline += [(t, EventKind.GUI_UPDATE, PROGRESS) for t in updates]
    if ending is not None:
        first = end_at - finale_ms
        timeline += [
            (first + k * FINAL_UPDATE_GAP_MS, EventKind.GUI_UPDATE, PROGRESS)
            for k in range(FINAL_UPDATES)
        ]
        timeline.append((end_at, EventKind.GUI_UPDATE, ending))
    if trailing_at is not None:
        timeline.append((trailing_at, EventKind.GUI_UPDATE, TRAILING))
    timeline.sort(key=lambda item: item[0])  # stable: the order above within an instant
    hint = assignment if hints else None
    out = [Request(at_ms=claim_at, kind=EventKind.CLAIM, ip=claim_ip, assignment=assignment)]
    for at, kind, message in timeline:
        if stop_at is not None and at >= stop_at:
            break
        if message is not None and message == ending:
            pass  # the end is sent even from a silence (the client reconnects for it)
        elif any(a <= at < b for a, b in silences):
            continue
        ip = address_at(addresses, at)
        if kind is EventKind.HEARTBEAT:
            name = renamed[1] if renamed is not None and at >= renamed[0] else hostname
            out.append(Request(at_ms=at, kind=kind, ip=ip, hostname=name, assignment=hint))
        else:
            out.append(Request(at_ms=at, kind=kind, ip=ip, assignment=hint, message=message))
    return out
