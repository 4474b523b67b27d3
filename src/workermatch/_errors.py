"""The library's exceptions, split by whose fault the failure is.

* :class:`InvalidInput` -- the caller passed something the library cannot accept (a malformed IP,
  a naive datetime, an unknown event kind).  Nothing was read or written.
* :class:`ClaimRefused` -- the request was well formed, but the claim it makes cannot be granted
  (the assignment runs on another live worker, or is already finished).  Nothing was written.
* :class:`AmbiguousMatch` -- the policy asks to refuse ambiguous matches and this request had
  several candidates that could not be told apart.  Nothing was written.
* :class:`StorageError` -- the repository failed (a dropped connection, a constraint error).
  The store is left as it was; the driver's exception is chained as ``__cause__``.  Its
  ``retryable`` attribute says whether sending the same request again may succeed;
  :class:`TransientStorageError` is the subclass for such faults (a lost connection, a
  serialisation failure or lock timeout the repository gave up retrying).

All of them derive from :class:`WorkermatchError`, so ``except WorkermatchError`` catches every
failure the library raises on purpose.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousMatch",
    "ClaimRefused",
    "InvalidInput",
    "StorageError",
    "TransientStorageError",
    "WorkermatchError",
]


class WorkermatchError(Exception):
    """Base class of every exception workermatch raises on purpose."""


class InvalidInput(WorkermatchError, ValueError):
    """The caller's input is malformed; nothing was read or written.

    ``field`` names the offending argument or attribute (``"ip"``, ``"hostname"``, ``"now"``, ...),
    ``value`` is the rejected value.
    """

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class ClaimRefused(WorkermatchError):
    """A claim that cannot be granted; nothing was written.

    ``reason`` is a stable machine-readable code:

    * ``"running_elsewhere"`` -- the assignment is ``RUNNING`` on another worker that is not stale
      (``holder`` names it);
    * ``"already_finished"`` -- the assignment is ``COMPLETED``, ``FAILED`` or ``CANCELLED``;
    * ``"unknown_assignment"`` -- the store has no such assignment and the caller did not ask
      to create missing ones.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        assignment_id: str,
        holder: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.assignment_id = assignment_id
        self.holder = holder


class AmbiguousMatch(WorkermatchError):
    """The policy refuses ambiguous matches and this request had several equal candidates.

    ``decision`` is the full :class:`~workermatch.Decision`, whose explanation lists them.
    """

    def __init__(self, message: str, *, decision: object) -> None:
        super().__init__(message)
        self.decision = decision


class StorageError(WorkermatchError):
    """The repository failed while reading or applying a decision.

    The store is left exactly as it was before the failed operation.  The driver's exception is
    available as ``__cause__``.

    ``retryable`` is ``True`` when the fault is transient and sending the same request again may
    succeed (then the exception is a :class:`TransientStorageError`); ``False`` when it will fail
    the same way until someone changes something (a missing table, a constraint violation), or
    when retrying is unsafe (a connection lost during ``COMMIT``: the decision may or may not
    be stored).  ``attempts`` is how many times the repository ran the unit before giving up
    (``None`` when it does not say).
    """

    def __init__(
        self, message: str, *, retryable: bool = False, attempts: int | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.attempts = attempts


class TransientStorageError(StorageError):
    """A :class:`StorageError` that may go away by itself: a lost connection, a serialisation
    failure, a deadlock or a lock timeout that the repository's own bounded retries did not
    overcome.  ``retryable`` is always ``True``; retry the request later, with back-off."""

    def __init__(self, message: str, *, attempts: int | None = None) -> None:
        super().__init__(message, retryable=True, attempts=attempts)
