"""Fleets and traces built by hand (tests and benchmarks).

The benchmarks import this module too (``benchmarks/*.py`` put ``tests/`` on ``sys.path``, as
for :mod:`_skew`), so that a fleet a benchmark builds and one a test builds are made the same
way.  It depends on the installed package only.

* :func:`worker_and_assignment`: a worker, RUNNING its own assignment or IDLE;
  :func:`inserts` turns it into the writes that store it.
* :func:`request_line`: the trace line of a request of the client model
  (:class:`workermatch.lab.Request`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import workermatch as wm
from workermatch import lab, trace

__all__ = ["inserts", "request_line", "worker_and_assignment"]


def worker_and_assignment(
    worker_id: str,
    assignment_id: str,
    *,
    ip: str,
    hostname: str | None,
    created: datetime,
    seen: datetime,
    running: bool = True,
    hostname_seen: datetime | None = None,
) -> tuple[wm.Worker, wm.Assignment | None]:
    """A worker created at ``created`` and last heard from at ``seen``: when ``running``,
    RUNNING assignment ``assignment_id``, which it started when it was created (returned
    too); else IDLE, with no assignment (``None``)."""
    worker = wm.Worker(
        id=worker_id,
        ip=ip,
        hostname=hostname,
        hostname_seen=hostname_seen,
        created_at=created,
        last_seen=seen,
        status=wm.WorkerStatus.RUNNING if running else wm.WorkerStatus.IDLE,
        assignment_id=assignment_id if running else None,
    )
    if not running:
        return worker, None
    assignment = wm.Assignment(
        id=assignment_id,
        status=wm.AssignmentStatus.RUNNING,
        worker_id=worker_id,
        started_at=created,
    )
    return worker, assignment


def inserts(worker: wm.Worker, assignment: wm.Assignment | None) -> list[wm.Write]:
    """The writes that store ``worker`` and then its ``assignment`` (if any)."""
    writes: list[wm.Write] = [wm.InsertWorker(worker=worker)]
    if assignment is not None:
        writes.append(wm.InsertAssignment(assignment=assignment))
    return writes


def request_line(
    origin: datetime, request: lab.Request, truth: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The trace line (:func:`workermatch.trace.line_to_dict`) of ``request``, sent
    ``request.at_ms`` milliseconds after ``origin``, with ``truth`` if given."""
    return trace.line_to_dict(
        origin + timedelta(milliseconds=request.at_ms),
        request.kind,
        request.ip,
        hostname=request.hostname,
        assignment=request.assignment,
        message=request.message,
        truth=truth,
    )
