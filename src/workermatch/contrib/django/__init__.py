"""workermatch in a Django project: the library's two tables as models (with their migration),
and :class:`DjangoWorkerRepository`, the ``WorkerRepository`` protocol on the Django ORM.

Install the ``django`` extra (from a checkout, ``python -m pip install '.[django]'``), add
``"workermatch.contrib.django"`` to ``INSTALLED_APPS``, run ``manage.py migrate workermatch``;
then in a view::

    from workermatch.contrib.django import DjangoWorkerRepository

    outcome = workermatch.apply_event(event, None, DjangoWorkerRepository())

``None`` decides at the database's clock.  ``docs/django.md`` is the guide: transactions and
``ATOMIC_REQUESTS``, retries, and the conformance kit under pytest-django or ``manage.py test``
(:mod:`workermatch.contrib.django.testing`).

This module imports nothing from Django until a name is used, so listing the app in
``INSTALLED_APPS`` loads no model before Django is ready.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..._retry import DEFAULT_RETRY, RetryPolicy
    from .repository import DjangoWorkerRepository

__all__ = ["DEFAULT_RETRY", "DjangoWorkerRepository", "RetryPolicy"]


def __getattr__(name: str) -> Any:
    if name == "DjangoWorkerRepository":
        from .repository import DjangoWorkerRepository

        return DjangoWorkerRepository
    if name in ("DEFAULT_RETRY", "RetryPolicy"):
        from ... import _retry

        return getattr(_retry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
