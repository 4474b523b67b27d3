"""Settings of the example project: the workermatch app, one app of views, and the databases.

``default`` is PostgreSQL when ``WORKERMATCH_TEST_POSTGRESQL_URL`` names a server
(``postgresql://user:password@host:port/database``), else a SQLite file beside this project.
``sqlite`` is a second database, SQLite in memory, on which the tests also run the
conformance kit: it needs no server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "workermatch-example-not-a-secret"  # an example: never deploy this key
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "workermatch.contrib.django",  # the workermatch_workers and workermatch_assignments tables
    "fleet",  # the worker-facing views
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "project.urls"
USE_TZ = True
TIME_ZONE = "UTC"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"fleet": {"handlers": ["console"], "level": "WARNING"}},
}


def postgresql(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry for a ``postgresql://`` URL."""
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Every view runs in a transaction (a common choice); the workermatch views opt out
        # with transaction.non_atomic_requests, so that the repository runs its own
        # SERIALIZABLE transaction and retries conflicts (docs/django.md).
        "ATOMIC_REQUESTS": True,
        # The test database is private to this process: several test runs may share a server.
        "TEST": {"NAME": f"test_workermatch_django_{os.getpid()}"},
    }


POSTGRESQL_URL = os.environ.get("WORKERMATCH_TEST_POSTGRESQL_URL") or None

DATABASES: dict[str, dict[str, Any]] = {
    "default": (
        postgresql(POSTGRESQL_URL)
        if POSTGRESQL_URL
        else {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
            "ATOMIC_REQUESTS": True,
        }
    ),
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        # Its test database can be made without default's (a test may use it alone).
        "TEST": {"DEPENDENCIES": []},
    },
}
