"""Run the same request on a repository under test and on the reference, and compare.

Every mismatch raises :class:`AssertionError` with a message that names what differs (the rule,
the worker, a candidate, a write, a row), so a failing kit points at the fault.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

import attrs

from .._decision import Outcome
from .._engine import apply_event, sweep
from .._errors import AmbiguousMatch, ClaimRefused, StorageError, WorkermatchError
from .._model import Assignment, Event, Worker
from .._policy import Policy
from .._protocol import WorkerRepository
from ._reference import ReferenceRepository

__all__ = ["Result", "apply_to_both", "assert_same_rows", "assert_same_state", "sweep_both"]


@attrs.frozen
class Result:
    """What applying one request gave: an outcome, or a refusal the library raises on purpose."""

    outcome: Outcome | None
    error: str | None

    def describe(self) -> str:
        if self.outcome is None:
            return f"raised {self.error}"
        o = self.outcome
        return (
            f"worker {o.worker.id} by rule {o.rule.value}"
            f"{' (ambiguous)' if o.ambiguous else ''}{' (created)' if o.created else ''}"
        )


def _error_text(exc: WorkermatchError) -> str:
    if isinstance(exc, ClaimRefused):
        return f"ClaimRefused(reason={exc.reason!r}, holder={exc.holder!r})"
    if isinstance(exc, AmbiguousMatch):
        return "AmbiguousMatch"
    return f"{type(exc).__name__}({exc})"


def apply_one(repo: WorkerRepository, event: Event, now: datetime, policy: Policy) -> Result:
    """Apply ``event`` with :func:`~workermatch.apply_event` (creating assignments on claim)."""
    try:
        return Result(apply_event(event, now, repo, policy, create_assignments=True), None)
    except (ClaimRefused, AmbiguousMatch) as exc:
        return Result(None, _error_text(exc))


def _row_diff(mine: object, theirs: object) -> str:
    if mine is None or theirs is None or type(mine) is not type(theirs):
        return f"expected {theirs!r}, got {mine!r}"
    if not attrs.has(type(mine)):
        return f"expected {theirs!r}, got {mine!r}"
    fields = [
        f"{a.name}: expected {getattr(theirs, a.name)!r}, got {getattr(mine, a.name)!r}"
        for a in attrs.fields(cast(Any, type(mine)))
        if getattr(mine, a.name) != getattr(theirs, a.name)
    ]
    return "; ".join(fields) or "equal"


def _outcome_diff(mine: Outcome, ref: Outcome) -> list[str]:
    out: list[str] = []
    md, rd = mine.decision, ref.decision
    if md.rule is not rd.rule:
        out.append(f"rule: expected {rd.rule.value}, got {md.rule.value}")
    if md.worker_id != rd.worker_id:
        out.append(f"worker: expected {rd.worker_id}, got {md.worker_id}")
    elif md.worker != rd.worker:
        out.append(f"the matched worker as read differs: {_row_diff(md.worker, rd.worker)}")
    if md.ambiguous != rd.ambiguous:
        out.append(f"ambiguous: expected {rd.ambiguous}, got {md.ambiguous}")
    for mr, rr in zip(md.reports, rd.reports, strict=False):
        if mr != rr:
            mine_c = {c.worker_id: c for c in mr.candidates}
            ref_c = {c.worker_id: c for c in rr.candidates}
            missing = sorted(set(ref_c) - set(mine_c))
            extra = sorted(set(mine_c) - set(ref_c))
            parts = [f"rule {rr.rule.value} saw different candidates"]
            if missing:
                parts.append("missing " + ", ".join(f"{w} ({ref_c[w].reason})" for w in missing))
            if extra:
                parts.append("extra " + ", ".join(f"{w} ({mine_c[w].reason})" for w in extra))
            if len(mr.candidates) != len(mine_c):
                parts.append("a candidate was returned more than once")
            if not (missing or extra) and len(mr.candidates) == len(mine_c):
                parts.append(f"expected {rr!r}, got {mr!r}")
            out.append("; ".join(parts))
    if mine.writes != ref.writes:
        out.append(
            "writes differ:\n      expected "
            + "\n               ".join(repr(w) for w in ref.writes)
            + "\n      got      "
            + "\n               ".join(repr(w) for w in mine.writes)
        )
    if mine.transferred != ref.transferred:
        out.append(f"transferred: expected {ref.transferred}, got {mine.transferred}")
    if mine.ended != ref.ended:
        out.append(f"ended: expected {ref.ended}, got {mine.ended}")
    return out


def apply_to_both(
    repo: WorkerRepository,
    reference: WorkerRepository,
    event: Event,
    now: datetime,
    policy: Policy,
    *,
    step: str = "",
) -> Result:
    """Apply ``event`` to both repositories; fail unless the decisions and writes are equal."""
    expected = apply_one(reference, event, now, policy)
    try:
        got = apply_one(repo, event, now, policy)
    except StorageError as exc:
        raise AssertionError(
            f"{step}{event!r} at {now.isoformat()}: the repository under test failed with "
            f"{exc!r} (cause: {exc.__cause__!r}); the reference decided {expected.describe()}"
        ) from exc
    problems: list[str] = []
    if (got.outcome is None) != (expected.outcome is None) or got.error != expected.error:
        problems.append(f"expected {expected.describe()}, got {got.describe()}")
    elif got.outcome is not None and expected.outcome is not None:
        problems = _outcome_diff(got.outcome, expected.outcome)
    if problems:
        explanation = expected.outcome.explain() if expected.outcome is not None else ""
        got_expl = got.outcome.explain() if got.outcome is not None else ""
        raise AssertionError(
            f"{step}{event!r} at {now.isoformat()} was decided differently from the reference "
            f"(policy {policy.name}):\n  - "
            + "\n  - ".join(problems)
            + f"\n  reference:\n{_indent(explanation)}"
            + f"\n  repository under test:\n{_indent(got_expl)}"
        )
    return got


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def sweep_both(
    repo: WorkerRepository,
    reference: WorkerRepository,
    now: datetime,
    policy: Policy,
) -> None:
    """Sweep both repositories; fail unless they flag the same workers."""
    expected = sweep(reference, now, policy)
    got = sweep(repo, now, policy)
    if got != expected:
        raise AssertionError(
            f"sweep at {now.isoformat()} flagged {list(got)}; the reference flagged "
            f"{list(expected)} (unflagged_workers_seen_before is the query a sweep uses)"
        )


def assert_same_rows(
    what: str, got: Sequence[Any], expected: Sequence[Any], *, key: Callable[[Any], str]
) -> None:
    """Fail unless ``got`` and ``expected`` hold the same rows, in any order, each once."""
    got_ids = sorted(key(r) for r in got)
    exp_ids = sorted(key(r) for r in expected)
    problems = []
    dup = sorted({i for i in got_ids if got_ids.count(i) > 1})
    if dup:
        problems.append(f"returned {', '.join(dup)} more than once")
    missing = sorted(set(exp_ids) - set(got_ids))
    if missing:
        problems.append(f"missed {', '.join(missing)}")
    exp_by = {key(r): r for r in expected}
    extra = [r for r in got if key(r) not in exp_by]
    if extra:
        problems.append(
            "returned rows the reference does not: " + ", ".join(repr(r) for r in extra)
        )
    for r in got:
        k = key(r)
        if k in exp_by and r != exp_by[k]:
            problems.append(f"row {k} differs from the reference: {_row_diff(r, exp_by[k])}")
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems))


def assert_same_state(
    repo: WorkerRepository, reference: WorkerRepository, *, step: str = ""
) -> None:
    """Fail unless both repositories hold the same workers and assignments."""
    assert_same_rows(
        f"{step}all_workers() after the same requests",
        repo.all_workers(),
        reference.all_workers(),
        key=_worker_key,
    )
    assert_same_rows(
        f"{step}all_assignments() after the same requests",
        repo.all_assignments(),
        reference.all_assignments(),
        key=_assignment_key,
    )


def _worker_key(w: Worker) -> str:
    return w.id


def _assignment_key(a: Assignment) -> str:
    return a.id


def new_reference() -> ReferenceRepository:
    """A fresh, empty reference repository whose ids are ``w1``, ``w2``, ..."""
    return ReferenceRepository()
