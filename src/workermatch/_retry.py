"""How a database repository runs a unit again after a transient conflict: jittered exponential
back-off, bounded in attempts and in time.  Shared by the SQL repository (``workermatch.sql``)
and the Django one (``workermatch.contrib.django``); imports no database library."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import attrs

from ._errors import InvalidInput

__all__ = ["DEFAULT_RETRY", "PG_CONFLICT", "PG_TRANSIENT", "RetryPolicy"]

#: PostgreSQL SQLSTATEs of a conflict: serialisation failure, deadlock, lock timeout
#: (lock_not_available), and out of memory (53200: under SERIALIZABLE, "out of shared memory"
#: when the predicate locks of concurrent transactions fill their table; it goes away when they
#: end).  The database rolled the unit back; running it again is safe.
PG_CONFLICT = frozenset({"40001", "40P01", "55P03", "53200"})
#: PostgreSQL SQLSTATEs of a transient fault (besides class 08, connection exceptions): too many
#: connections, admin / crash shutdown, cannot connect now, and a statement cancelled
#: (57014: ``statement_timeout`` or an administrator's cancel; the request may succeed later,
#: but running it again at once would only add to the load).  (Disk full, 53100, is left
#: permanent: it does not go away by itself within a retry.)
PG_TRANSIENT = frozenset({"53300", "57P01", "57P02", "57P03", "57014"})


def _positive_int(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(
            f"{attribute.name} must be an int >= 1, not {value!r}",
            field=attribute.name,
            value=value,
        )


def _non_negative(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not value >= 0
        or value == float("inf")
    ):
        raise InvalidInput(
            f"{attribute.name} must be a finite number of seconds >= 0, not {value!r}",
            field=attribute.name,
            value=value,
        )


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When :meth:`~workermatch.sql.SQLWorkerRepository.atomically` (or the Django repository's
    ``atomically``, when it owns the transaction) runs a unit again.

    A unit that fails with a *conflict* (PostgreSQL serialisation failure ``40001``, deadlock
    ``40P01``, lock timeout ``55P03`` or out of (predicate lock) memory ``53200``; MariaDB
    deadlock ``1213`` or lock wait timeout ``1205``; SQLite "database is locked") is rolled
    back and run again after a pause drawn uniformly from
    ``[0, min(cap, base * 2 ** (n - 1))]`` seconds after its ``n``-th failure ("full
    jitter").  It is not run again once ``max_attempts`` runs failed, or when the pause would
    end more than ``max_time`` seconds after the first run started; the repository then raises
    a :class:`~workermatch.TransientStorageError` that says how many runs it made.

    ``sleep``, ``random`` (a float in ``[0, 1)``) and ``clock`` (seconds, monotonic) are
    injectable, so that tests need not wait.  The asyncio repository pauses with
    :func:`asyncio.sleep` while ``sleep`` is the default :func:`time.sleep`, and awaits what an
    injected ``sleep`` returns when it is awaitable (a coroutine function works).
    """

    max_attempts: int = attrs.field(default=30, validator=_positive_int)
    max_time: float = attrs.field(default=30.0, validator=_non_negative)
    base: float = attrs.field(default=0.005, validator=_non_negative)
    cap: float = attrs.field(default=0.5, validator=_non_negative)
    sleep: Callable[[float], object] = attrs.field(default=time.sleep, repr=False)
    random: Callable[[], float] = attrs.field(default=random.random, repr=False)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)

    def delay(self, failures: int) -> float:
        """The pause before the next run, after ``failures`` failed runs (full jitter)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(failures - 1, 60))
        return self.random() * ceiling

    def evolve(self, **changes: Any) -> RetryPolicy:
        """A copy with ``changes`` applied."""
        return attrs.evolve(self, **changes)


DEFAULT_RETRY = RetryPolicy()
"""30 runs at most, no new run more than 30 s after the first, pauses of up to 5 ms, 10 ms,
20 ms, ... capped at 0.5 s."""


def check_retry(retry: object) -> None:
    """Refuse a retry policy of the wrong type (every repository that retries)."""
    if not isinstance(retry, RetryPolicy):
        raise InvalidInput(
            f"retry must be a RetryPolicy, not {type(retry).__name__}",
            field="retry",
            value=retry,
        )
