"""The conformance kit catches broken repositories, with a message that points at the fault.

Each case writes a small test module with one deliberately broken repository (derived from the
in-memory repository; the kit compares it with its own scan-everything reference) and its
ten-line kit subclass, runs pytest on it, and asserts which kit test fails and what its message
says.
"""

from __future__ import annotations

import textwrap

import pytest

HEADER = """
from __future__ import annotations

import attrs
from workermatch import (
    AssignmentStatus, InMemoryWorkerRepository, UpdateAssignment, UpdateWorker,
)
from workermatch.testing import RepositoryContract


class Contract(RepositoryContract):
    max_examples = 100
    repository_class = InMemoryWorkerRepository

    def make_repository(self, *, id_factory):
        return self.repository_class(id_factory=id_factory)

    def seed(self, repository, workers, assignments):
        for w in workers:
            repository._index_worker(None, w)
        for a in assignments:
            repository._index_assignment(None, a)
"""

BROKEN = {
    "ignores_staleness": '''
class Broken(InMemoryWorkerRepository):
    """Forgets the stale flag in the exact-IP query."""

    def live_workers_by_ip(self, ip, seen_since):
        return [w for w in self.all_workers() if w.ip == ip and w.last_seen >= seen_since]
''',
    "drops_candidates": '''
class Broken(InMemoryWorkerRepository):
    """Returns at most one worker per hostname (a LIMIT 1 left in the query)."""

    def live_workers_by_hostname(self, hostname, seen_since):
        return list(super().live_workers_by_hostname(hostname, seen_since))[:1]
''',
    "duplicates_candidates": '''
class Broken(InMemoryWorkerRepository):
    """Returns every recent running worker twice (a join without DISTINCT)."""

    def recent_running_workers(self, created_since, seen_since):
        found = list(super().recent_running_workers(created_since, seen_since))
        return found + found
''',
    "forgets_hostname": '''
class Broken(InMemoryWorkerRepository):
    """An UPDATE that does not set the hostname column."""

    def write(self, writes):
        fixed = []
        for op in writes:
            if isinstance(op, UpdateWorker):
                old = self.get_worker(op.worker.id)
                if old is not None:
                    op = UpdateWorker(worker=attrs.evolve(op.worker, hostname=old.hostname))
            fixed.append(op)
        super().write(fixed)
''',
    "loses_transfer": '''
class Broken(InMemoryWorkerRepository):
    """Skips an assignment update that only moves a RUNNING assignment to another worker."""

    def write(self, writes):
        kept = []
        for op in writes:
            if isinstance(op, UpdateAssignment):
                old = self.get_assignment(op.assignment.id)
                if (
                    old is not None
                    and old.status is AssignmentStatus.RUNNING
                    and op.assignment.status is AssignmentStatus.RUNNING
                    and old.worker_id != op.assignment.worker_id
                    and old.worker_id is not None
                ):
                    continue
            kept.append(op)
        super().write(kept)
''',
    "folds_case": '''
class Broken(InMemoryWorkerRepository):
    """Looks ids up without regard to case, like a column with MariaDB's default collation."""

    def get_worker(self, worker_id):
        for w in self.all_workers():
            if w.id.casefold() == worker_id.casefold():
                return w
        return None

    def get_assignment(self, assignment_id):
        for a in self.all_assignments():
            if a.id.casefold() == assignment_id.casefold():
                return a
        return None
''',
    "not_atomic": '''
class Broken(InMemoryWorkerRepository):
    """Runs the unit without a lock and without undoing its writes on failure."""

    def atomically(self, fn):
        return fn()
''',
}

FOOTER = """

class TestBroken(Contract):
    repository_class = Broken
"""

#: case -> (the kit tests that must fail, text their failure must show)
EXPECTED = {
    "ignores_staleness": (
        ["test_live_workers_by_ip_agrees_with_reference"],
        "returned rows the reference does not",
    ),
    "drops_candidates": (["test_live_workers_by_hostname_agrees_with_reference"], "missed"),
    "duplicates_candidates": (
        ["test_recent_running_workers_agrees_with_reference"],
        "more than once",
    ),
    "forgets_hostname": (["test_write_applies_every_operation"], "hostname: expected"),
    "loses_transfer": (["test_write_applies_every_operation"], "worker_id: expected"),
    "folds_case": (
        [
            "test_get_worker_returns_the_seeded_row",
            "test_get_assignment_returns_the_seeded_row",
        ],
        "expected None, got",
    ),
    "not_atomic": (
        [
            "test_atomically_undoes_writes_when_the_unit_raises",
            "test_atomically_serialises_concurrent_units",
        ],
        "atomically() is not atomic",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_kit_fails_a_broken_repository(pytester: pytest.Pytester, case: str) -> None:
    must_fail, message = EXPECTED[case]
    pytester.makepyfile(
        test_adapter=textwrap.dedent(HEADER) + textwrap.dedent(BROKEN[case]) + FOOTER
    )
    # The state machine and the stream comparison would catch most of these too, but slowly;
    # each case runs the kit tests that name its fault.
    selection = " or ".join(must_fail)
    # In process: pytest-django stays out of the inner run (the outer one may have set up
    # Django for examples/django_project, and its test environment can be set up only once).
    # A fixed seed: whether the kit finds the fault must not depend on the examples a run
    # happens to draw (the dev profile draws new ones every run).
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-p", "no:django", "-q", "--hypothesis-seed=0", "-k", selection
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == len(must_fail), result.stdout.str()
    for name in must_fail:
        result.stdout.fnmatch_lines([f"FAILED *::TestBroken::{name}*"])
    assert message in result.stdout.str()


def test_kit_fails_a_broken_repository_in_the_stream_comparison(pytester: pytest.Pytester) -> None:
    """Over whole fleet streams, a lost transfer shows as a decision or a state that differs."""
    profile = (
        "\nfrom hypothesis import Phase, settings\n"
        "settings.register_profile('find', max_examples=300, database=None,"
        " phases=[Phase.generate])\n"
        "settings.load_profile('find')\n"
    )
    pytester.makepyfile(
        test_adapter=textwrap.dedent(HEADER)
        + profile
        + textwrap.dedent(BROKEN["loses_transfer"])
        + FOOTER
        + "    max_examples = None\n"
    )
    # In a subprocess: the module loads its own Hypothesis profile (no shrinking).
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-q", "-k", "test_decisions_agree_with_reference"
    )
    assert result.parseoutcomes().get("failed") == 1, result.stdout.str()
    text = result.stdout.str()
    assert "decided differently from the reference" in text or "after the same requests" in text
