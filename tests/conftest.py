"""Shared test configuration.

Hypothesis profiles: ``dev`` (default, quick, random) and ``ci`` (300 examples per property,
derandomized so CI is reproducible),
selected with the ``HYPOTHESIS_PROFILE`` environment variable.

Server tests read their URLs from ``WORKERMATCH_TEST_POSTGRESQL_URL`` and
``WORKERMATCH_TEST_MYSQL_URL`` and skip, with a visible reason, when they are absent.  With
``WORKERMATCH_REQUIRE_SERVERS=1`` (set by ``.ci/run``) such a skip is a failure instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from _stores import (  # noqa: F401  (fixtures for every test)
    _server_stores,
    event_loop_thread,
    store_factory,
)

# The kit-catches-bugs tests run pytest inside pytest (tests/test_kit_catches_bugs.py).
pytest_plugins = ["pytester"]

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    # CI explores the same 300 examples every run, so a submission's result is reproducible;
    # the dev profile draws new examples each run and keeps finding new cases.
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
