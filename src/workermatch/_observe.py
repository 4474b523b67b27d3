"""Watching decisions: the ``workermatch`` logger and outcome hooks.

Every decision that :func:`~workermatch.apply_event` writes is reported once, after it is
committed:

* to the ``workermatch`` logger (a :class:`logging.NullHandler` by default, so nothing is
  printed unless the application configures logging): one ``DEBUG`` record per decision, and a
  ``WARNING`` for a decision that raised an alert.  Each record carries the outcome's
  :meth:`~workermatch.Outcome.to_dict` under ``record.workermatch`` (``extra``), for structured
  log handlers;
* to every hook added with :func:`add_outcome_hook`, called with the
  :class:`~workermatch.Outcome` (a hook that raises is logged and does not fail the request).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._decision import Outcome

__all__ = ["add_outcome_hook", "logger", "remove_outcome_hook"]

logger = logging.getLogger("workermatch")
"""The library's logger."""
logger.addHandler(logging.NullHandler())

_lock = threading.Lock()
_hooks: tuple[Callable[[Outcome], object], ...] = ()


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
