"""The one start time of the tests: every scenario is dated 6 November 2025, UTC.

* :data:`T0` -- when a scenario starts (10:00 UTC): the first request of a stream, trace or
  session is sent at ``T0`` or a few seconds after.  It is the conformance kit's
  :data:`workermatch.testing.EPOCH`, the instant its generated streams start from.
* :data:`NOW` -- the instant a single decision is asked at (12:00 UTC, two hours into the day):
  rows are seeded with times relative to it (``NOW - timedelta(...)``).

Both are aware UTC datetimes at millisecond resolution, so they round-trip through every store.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

__all__ = ["NOW", "T0"]

T0 = datetime(2025, 11, 6, 10, 0, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=2)
