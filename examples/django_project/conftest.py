"""Django for this folder's tests only: the rest of the suite never loads Django.

The settings are ``project.settings``, passed to ``settings.configure`` (not through
``DJANGO_SETTINGS_MODULE``, which would leak into every subprocess the suite starts).
pytest-django then sets up the test databases for the tests here that ask for them.

Tests that need PostgreSQL skip with a reason containing "needs a database server" when
``WORKERMATCH_TEST_POSTGRESQL_URL`` is not set; under ``WORKERMATCH_REQUIRE_SERVERS=1`` (CI)
such a skip is a failure, as in ``tests/``.
"""

from __future__ import annotations

import django
from django.conf import settings
from project import settings as project_settings

if not settings.configured:
    names = [name for name in dir(project_settings) if name.isupper()]
    settings.configure(**{name: getattr(project_settings, name) for name in names})
    django.setup()
