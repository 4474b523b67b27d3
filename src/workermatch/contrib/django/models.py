"""The library's two tables as Django models: ``workermatch_workers`` and
``workermatch_assignments``, with the columns, types, nullability and indexes of
``workermatch.sql``'s default mapping (``workermatch.sql.schema_ddl`` prints that schema).

The models are plain storage: read them in your own views, admin or dashboards, but write
through :class:`~workermatch.contrib.django.DjangoWorkerRepository` (``apply_event``), which
keeps every decision atomic and race-safe.  Statuses are the library's
(:class:`~workermatch.WorkerStatus`, :class:`~workermatch.AssignmentStatus`) as text.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeAlias

from django.db import models

from ..._model import (
    MAX_HOSTNAME_LENGTH,
    MAX_ID_LENGTH,
    MAX_IP_LENGTH,
    AssignmentStatus,
    WorkerStatus,
)
from .fields import IdField, NamedIndex, UTCDateTimeField

__all__ = ["Assignment", "Worker"]

_Time: TypeAlias = "models.DateTimeField[datetime | None, datetime | None]"
_WORKER_STATUSES = [(s.value, s.value) for s in WorkerStatus]
_ASSIGNMENT_STATUSES = [(s.value, s.value) for s in AssignmentStatus]


class Worker(models.Model):
    """One worker record (:class:`workermatch.Worker`)."""

    id: models.CharField[str, str] = IdField(primary_key=True, max_length=MAX_ID_LENGTH)
    ip: models.CharField[str, str] = models.CharField(max_length=MAX_IP_LENGTH)
    hostname: models.CharField[str | None, str | None] = models.CharField(
        max_length=MAX_HOSTNAME_LENGTH, null=True, blank=True
    )
    created_at: models.DateTimeField[datetime, datetime] = UTCDateTimeField()
    last_seen: models.DateTimeField[datetime, datetime] = UTCDateTimeField()
    status: models.CharField[str, str] = models.CharField(max_length=32, choices=_WORKER_STATUSES)
    stale: models.BooleanField[bool, bool] = models.BooleanField()
    assignment_id: models.CharField[str | None, str | None] = models.CharField(
        max_length=MAX_ID_LENGTH, null=True, blank=True
    )
    ended_at: _Time = UTCDateTimeField(null=True, blank=True)
    merged_into: models.CharField[str | None, str | None] = models.CharField(
        max_length=MAX_ID_LENGTH, null=True, blank=True
    )
    hostname_seen: _Time = UTCDateTimeField(null=True, blank=True)
    # JSON text: the contested worker's candidates, and a held end (HeldEnd.to_json()).
    contested: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    held_end: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "workermatch_workers"
        # No index holds last_seen, the column every request updates: on PostgreSQL a
        # heartbeat's UPDATE then changes no indexed value and can be a heap-only (HOT) update.
        indexes = [  # noqa: RUF012
            # Rule 2 (exact IP) and the transfer's "same IP".
            NamedIndex(fields=["ip"], name="workermatch_workers_ip_idx"),
            # Rule 4 (hostname) and the transfer's "same hostname".
            NamedIndex(fields=["hostname"], name="workermatch_workers_hostname_idx"),
            # Rule 3 (recent workers holding a RUNNING assignment).
            NamedIndex(
                fields=["status", "created_at"], name="workermatch_workers_status_created_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.ip}, {self.hostname or 'no hostname'}, {self.status})"


class Assignment(models.Model):
    """One assignment (:class:`workermatch.Assignment`); ``worker`` is its holder."""

    id: models.CharField[str, str] = IdField(primary_key=True, max_length=MAX_ID_LENGTH)
    status: models.CharField[str, str] = models.CharField(
        max_length=32, choices=_ASSIGNMENT_STATUSES
    )
    # The column is worker_id, as in the SQL store; its (worker_id, status) index below serves
    # the foreign key too, so Django's own index on it is not made.
    worker: models.ForeignKey[Worker | None, Worker | None] = models.ForeignKey(
        Worker,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_index=False,
        related_name="assignments",
    )
    worker_id: str | None  # the column, set by Django
    started_at: _Time = UTCDateTimeField(null=True, blank=True)
    ended_at: _Time = UTCDateTimeField(null=True, blank=True)

    class Meta:
        db_table = "workermatch_assignments"
        indexes = [  # noqa: RUF012
            # running_assignments_of: the RUNNING assignments a worker holds.
            NamedIndex(fields=["worker", "status"], name="workermatch_workers_asg_holder_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status}, held by {self.worker_id or 'nobody'})"
