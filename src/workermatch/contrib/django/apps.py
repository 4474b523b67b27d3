"""The Django application configuration of ``workermatch.contrib.django``."""

from __future__ import annotations

from django.apps import AppConfig


class WorkermatchConfig(AppConfig):
    """Add ``"workermatch.contrib.django"`` to ``INSTALLED_APPS``; its label is
    ``workermatch`` (``manage.py migrate workermatch``)."""

    name = "workermatch.contrib.django"
    label = "workermatch"
    verbose_name = "workermatch"
