"""The library's exceptions, split by whose fault the failure is.

* :class:`InvalidInput` -- the caller passed something the library cannot accept (a malformed IP,
  a naive datetime, an unknown event kind).  Nothing was read or written.
* :class:`ClaimRefused` -- the request was well formed, but the claim it makes cannot be granted
  (the assignment runs on another live worker, or is already finished).  Nothing was written.
* :class:`AmbiguousMatch` -- the policy asks to refuse ambiguous matches and this request had
  several candidates that could not be told apart.  Nothing was written.
* :class:`StorageError` -- the repository failed (a dropped connection, a constraint error).
  The store is left as it was; the driver's exception is chained as ``__cause__``.

All of them derive from :class:`WorkermatchError`, so ``except WorkermatchError`` catches every
failure the library raises on purpose.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousMatch",
    "ClaimRefused",
    "InvalidInput",
    "StorageError",
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
    """
