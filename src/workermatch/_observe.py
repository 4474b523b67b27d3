"""Watching decisions: the ``workermatch`` logger, outcome hooks, and instruments.

Every decision that :func:`~workermatch.apply_event` (either driver: :mod:`workermatch.aio`
reports the same way) writes is reported once, after it is committed:

* to the ``workermatch`` logger (a :class:`logging.NullHandler` by default, so nothing is
  printed unless the application configures logging): one ``DEBUG`` record per decision, and a
  ``WARNING`` instead for a decision that raised an alert.  Each record carries the outcome's
  :meth:`~workermatch.Outcome.to_dict` under ``record.workermatch`` (``extra``), for structured
  log handlers.  ``DEBUG``, because a server makes one decision per request: at ``INFO`` a busy
  fleet would fill the application's log;
* to every hook added with :func:`add_outcome_hook`, called with the
  :class:`~workermatch.Outcome` (a hook that raises is logged and does not fail the request);
* to the instruments installed by :mod:`workermatch.otel` (one span around each decision, and
  counters).

The SQL stores (synchronous and asyncio) and the Django repository report here too: a
``WARNING`` when their retries of a conflicting transaction run out, and each retry to the
instruments.  Hooks and instruments are kept in tuples replaced under a lock, so adding or
removing one while other threads decide is safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._decision import Outcome
    from ._model import Event

__all__ = ["add_outcome_hook", "logger", "remove_outcome_hook"]

logger = logging.getLogger("workermatch")
"""The library's logger."""
logger.addHandler(logging.NullHandler())

_lock = threading.Lock()
_hooks: tuple[Callable[[Outcome], object], ...] = ()


class Instrument(Protocol):
    """What :mod:`workermatch.otel` installs: told when a decision starts and ends, and when a
    SQL store runs a transaction again.  Its methods must not raise (a failure is logged)."""

    def start(self, event: Event) -> Any: ...

    def finish(self, token: Any, outcome: Outcome | None, error: BaseException | None) -> None: ...

    def retried(self, backend: str) -> None: ...


_instruments: tuple[Instrument, ...] = ()


def add_outcome_hook(hook: Callable[[Outcome], object]) -> Callable[[], None]:
    """Call ``hook(outcome)`` after every decision :func:`~workermatch.apply_event` writes
    (in the thread that applied it, after the commit).  Returns a function that removes it."""
    global _hooks
    if not callable(hook):
        from ._errors import InvalidInput

        raise InvalidInput("a hook must be callable", field="hook", value=hook)
    with _lock:
        _hooks = (*_hooks, hook)

    def remove() -> None:
        remove_outcome_hook(hook)

    return remove


def remove_outcome_hook(hook: Callable[[Outcome], object]) -> None:
    """Stop calling ``hook`` (nothing happens if it was not added)."""
    global _hooks
    with _lock:
        hooks = list(_hooks)
        if hook in hooks:
            hooks.remove(hook)
        _hooks = tuple(hooks)


def add_instrument(instrument: Instrument) -> None:
    global _instruments
    with _lock:
        _instruments = (*_instruments, instrument)


def remove_instrument(instrument: Instrument) -> None:
    global _instruments
    with _lock:
        _instruments = tuple(i for i in _instruments if i is not instrument)


def report(outcome: Outcome) -> None:
    """Report a committed decision to the logger and the hooks."""
    alert = outcome.alert
    level = logging.WARNING if alert is not None else logging.DEBUG
    if logger.isEnabledFor(level):
        what = "created" if outcome.created else "matched"
        message = "%s %s by rule %s for %s"
        args: tuple[object, ...] = (
            what,
            outcome.worker.id,
            outcome.rule.value,
            outcome.event.kind.value,
        )
        if alert is not None:
            message += " (alert: %s)"
            args += (alert.value,)
        logger.log(level, message, *args, extra={"workermatch": outcome.to_dict()})
    for hook in _hooks:
        try:
            hook(outcome)
        except Exception:
            logger.exception("an outcome hook failed: %r", hook)


_APPLYING: ContextVar[Event | None] = ContextVar("workermatch_applying", default=None)


def applying() -> Event | None:
    """The event :func:`~workermatch.apply_event` is applying in this thread or asyncio task,
    or ``None``: a SQL store takes its locks for the request's address and hostname from it
    before the decision's first read."""
    return _APPLYING.get()


class Deciding:
    """One decision being applied, for the instruments: ``with deciding(event) as d: ...;
    d.report(outcome)``.  Costs next to nothing when no instrument is installed."""

    __slots__ = ("event", "outcome", "started", "token")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.outcome: Outcome | None = None
        self.started: list[tuple[Instrument, Any]] = []
        self.token: Token[Event | None] | None = None

    def __enter__(self) -> Deciding:
        self.token = _APPLYING.set(self.event)
        for instrument in _instruments:
            try:
                self.started.append((instrument, instrument.start(self.event)))
            except Exception:
                logger.exception("an instrument failed: %r", instrument)
        return self

    def report(self, outcome: Outcome) -> None:
        """The decision was committed: report it (logger, hooks) inside the instruments' span."""
        self.outcome = outcome
        report(outcome)

    def __exit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        if self.token is not None:
            _APPLYING.reset(self.token)
        for instrument, token in reversed(self.started):
            try:
                instrument.finish(token, self.outcome, error)
            except Exception:
                logger.exception("an instrument failed: %r", instrument)


deciding = Deciding


def retried(backend: str) -> None:
    """A SQL store (or the Django repository) ran a unit again after a conflict on ``backend``."""
    for instrument in _instruments:
        try:
            instrument.retried(backend)
        except Exception:
            logger.exception("an instrument failed: %r", instrument)


def gave_up(attempts: int, elapsed: float, message: str) -> None:
    """A SQL store's (or the Django repository's) retries of a conflicting unit ran out."""
    logger.warning(
        "gave up after %d attempts in %.2f s of conflicts: %s", attempts, elapsed, message
    )
