"""Shared by every test folder (``tests/`` and the examples' own tests): with
``WORKERMATCH_REQUIRE_SERVERS=1`` (CI), a test that skipped for a missing database server (a
reason containing "needs a database server") fails instead, so CI always tests the real
databases."""

from __future__ import annotations

import os

import pytest

SERVER_SKIP_MARKER = "needs a database server"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("WORKERMATCH_REQUIRE_SERVERS") == "1"
        and report.skipped
        and SERVER_SKIP_MARKER in str(report.longrepr)
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: skipped for a missing server, but WORKERMATCH_REQUIRE_SERVERS=1 "
            f"forbids that: {report.longrepr}"
        )
