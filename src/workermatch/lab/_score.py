"""Scoring: replay a trace under a policy and measure what the ground truth says went wrong;
run scenarios under policies (:func:`simulate`), print the scores (:func:`format_table`), and
the ``workermatch simulate`` command."""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import attrs

from .._engine import apply_event
from .._errors import AmbiguousMatch, ClaimRefused, InvalidInput
from .._memory import InMemoryWorkerRepository, sequential_ids
from .._model import AssignmentStatus, Event, EventKind
from .._policy import Policy
from ._fleet import FleetParams, SimRecord, generate, write_trace
from ._scenarios import CANDIDATE_POLICIES, SCENARIOS, Scenario, resolve_policies

__all__ = [
    "Result",
    "Score",
    "add_simulate_arguments",
    "format_table",
    "main",
    "run_simulate",
    "score",
    "simulate",
]


@attrs.frozen(kw_only=True)
class Score:
    """What went wrong in one replay, by the ground truth.

    * ``workers_per_session``: the mean number of workers each session's requests landed on
      (a worker merged into another counts as its survivor); 1.0 is perfect.
    * ``split``: sessions whose requests landed on more than one worker (duplicates).
    * ``mixed``: workers that received requests of more than one session (hijacks and bad
      merges: one record mixes two sessions' data); ``shared``: sessions that share a worker
      with another session that way.
    * ``lost``: assignments not COMPLETED or FAILED at the end, or ended by a request of
      another session (another machine's ``finished`` completed them).
    * ``ambiguous``: decisions flagged ambiguous.
    * ``wrong``: requests placed on another session's worker (one made by another session's
      request) whose previous request came from another session: each wrong guess counts once,
      not every request that follows it, nor the owner's return to its own worker;
      ``unflagged``: those among them neither flagged ambiguous nor placed on a contested
      worker (one chosen under doubt before); ``silent``: the unflagged ones that no earlier
      wrong guess explains (neither session had been mixed up before).  An unflagged knock-on
      error follows a guess: once one machine's GUI took another machine's claim, the other
      machine's GUI finds only the first machine's claim left (and it is contested).
    * ``right``: requests placed on their own session's worker (the worker their session's
      first request there made or took first); ``right_share`` is their share of all requests.
      Unlike ``workers_per_session``, which a policy that puts a whole NAT address on one
      worker scores perfectly, it counts a request placed on another session's worker as wrong.
    * ``refused``: requests the policy refused (``on_ambiguous="refuse"``, refused claims).
    * ``merged``: duplicates reconciled after the fact.
    * ``misended``: assignments completed or failed by another session's request (a held end
      counts for the request that asked for it, not the one whose evidence applied it): the
      write an operator cannot forgive.
    * ``alerts``: decisions that raised an alert.
    * ``held``: session ends held for want of evidence; ``pending``: those still held at the
      end of the trace.
    """

    requests: int
    sessions: int
    workers: int
    workers_per_session: float
    split: int
    mixed: int
    shared: int
    lost: int
    ambiguous: int
    wrong: int
    unflagged: int
    silent: int
    refused: int
    merged: int
    right: int = 0
    misended: int = 0
    alerts: int = 0
    held: int = 0
    pending: int = 0
    worker_ids: tuple[str | None, ...] = attrs.field(default=(), repr=False, eq=False)

    @property
    def right_share(self) -> float:
        """``right`` as a share of ``requests`` (0.0 when there are none)."""
        return self.right / self.requests if self.requests else 0.0

    def __add__(self, other: Score) -> Score:
        """The scores of two replays summed, as if they were one fleet (``workers_per_session``
        is the mean over both fleets' sessions)."""
        if not isinstance(other, Score):
            return NotImplemented
        sessions = self.sessions + other.sessions
        total = (
            self.workers_per_session * self.sessions + other.workers_per_session * other.sessions
        )
        # Every count adds up; the mean and the per-replay hints do not.
        fields = [
            f.name
            for f in attrs.fields(Score)
            if f.name not in ("sessions", "workers_per_session", "worker_ids")
        ]
        return Score(
            sessions=sessions,
            workers_per_session=total / sessions if sessions else 0.0,
            **{f: getattr(self, f) + getattr(other, f) for f in fields},
        )


def score(
    records: Sequence[SimRecord],
    policy: Policy,
    *,
    events: Sequence[Event | None] | None = None,
) -> Score:
    """Replay ``records`` under ``policy`` on a fresh in-memory store and score the result.

    ``events``: the records' events made beforehand (``None`` where a worker_id hint must be
    filled in), to save building them again for each policy.
    """
    repo = InMemoryWorkerRepository(id_factory=sequential_ids())
    claim_worker: dict[str, str] = {}
    last_session: dict[str, str] = {}
    owners: dict[str, str] = {}
    workers_of: dict[str, set[str]] = {}
    ended_by: dict[str, str] = {}
    assignment_of: dict[str, str] = {}
    sent_ids: list[str | None] = []
    ambiguous = wrong = unflagged = silent = refused = right = 0
    misended = alerts = held = 0
    session_of_assignment: dict[str, str] = {}
    asked: dict[datetime, list[str]] = {}
    tainted: set[str] = set()
    for i, record in enumerate(records):
        session = record.session
        wid = claim_worker.get(session) if record.hint == "worker_id" else None
        sent_ids.append(wid)
        if record.kind is EventKind.CLAIM:
            assert record.assignment is not None
            assignment_of[session] = record.assignment
            session_of_assignment.setdefault(record.assignment, session)
        at = record.at
        if record.message in ("finished", "fatal_error"):
            asked.setdefault(at, []).append(session)
        event = events[i] if events is not None else None
        if event is None:
            event = record.to_event(wid)
        try:
            outcome = apply_event(event, at, repo, policy, create_assignments=True)
        except (ClaimRefused, AmbiguousMatch):
            refused += 1
            continue
        worker = outcome.worker.id
        if outcome.ambiguous:
            ambiguous += 1
        previous = last_session.get(worker, session)
        owner = owners.setdefault(worker, session)
        if owner == session:
            right += 1
        if not outcome.created and previous != session and owner != session:
            wrong += 1
            if outcome.ambiguous or outcome.contested:
                tainted.update((session, previous))
            else:
                unflagged += 1
                if session not in tainted and previous not in tainted:
                    silent += 1
                tainted.update((session, previous))
        last_session[worker] = session
        workers_of.setdefault(session, set()).add(worker)
        if record.kind is EventKind.CLAIM:
            claim_worker[session] = worker
        if outcome.alert is not None:
            alerts += 1
        if outcome.held:
            held += 1
        settled = dict(outcome.settled)
        for aid in outcome.ended:
            own = session_of_assignment.get(aid)
            askers = (
                [s for t in settled[aid].asked for s in asked.get(t, [])]
                if aid in settled
                else [session]
            )
            by = own if own in askers else (askers[0] if askers else session)
            ended_by.setdefault(aid, by)
            if own is not None and own not in askers:
                misended += 1

    all_workers = {w.id: w for w in repo.all_workers()}

    def survivor(wid: str) -> str:
        hops = 0
        while all_workers[wid].merged_into is not None and hops < 64:
            wid = all_workers[wid].merged_into  # type: ignore[assignment]
            hops += 1
        return wid

    final_sessions: dict[str, set[str]] = {}
    per_session: dict[str, set[str]] = {}
    for session, wids in workers_of.items():
        per_session[session] = {survivor(w) for w in wids}
        for s in per_session[session]:
            final_sessions.setdefault(s, set()).add(session)
    sessions = sorted({r.session for r in records})
    assignments = {a.id: a for a in repo.all_assignments()}
    lost = 0
    for session in sessions:
        claimed = assignment_of.get(session)
        a = assignments.get(claimed) if claimed is not None else None
        if (
            a is None
            or a.status not in (AssignmentStatus.COMPLETED, AssignmentStatus.FAILED)
            or ended_by.get(a.id) != session
        ):
            lost += 1
    total = sum(len(per_session.get(s, ())) for s in sessions)
    merged = sum(1 for w in all_workers.values() if w.merged_into is not None)
    return Score(
        requests=len(records),
        sessions=len(sessions),
        workers=len(all_workers) - merged,
        workers_per_session=total / len(sessions) if sessions else 0.0,
        split=sum(1 for s in sessions if len(per_session.get(s, ())) > 1),
        mixed=sum(1 for ss in final_sessions.values() if len(ss) > 1),
        shared=len(set().union(*(ss for ss in final_sessions.values() if len(ss) > 1))),
        lost=lost,
        ambiguous=ambiguous,
        wrong=wrong,
        unflagged=unflagged,
        silent=silent,
        refused=refused,
        merged=merged,
        right=right,
        misended=misended,
        alerts=alerts,
        held=held,
        pending=len({w.held_end for w in all_workers.values() if w.held_end is not None}),
        worker_ids=tuple(sent_ids),
    )


# --------------------------------------------------------------------------------------------
# Running it


@attrs.frozen(kw_only=True)
class Result:
    """The score of one scenario under one policy."""

    scenario: str
    policy: str
    score: Score


def _score_fleet(scenario: Scenario, fleet_seed: int, policies: Sequence[Policy]) -> list[Score]:
    """Generate one fleet of ``scenario`` and score it under each policy."""
    records = generate(scenario.params, fleet_seed)
    # A fleet sends the same request many times over (a progress update from one address):
    # its events are made once (they are immutable), and shared by every policy.
    made: dict[tuple[object, ...], Event] = {}
    events: list[Event | None] = []
    for r in records:
        if r.hint == "worker_id":
            events.append(None)
            continue
        key = (r.kind, r.ip, r.hostname, r.assignment, r.message)
        event = made.get(key)
        if event is None:
            event = made[key] = r.to_event()
        events.append(event)
    return [score(records, policy, events=events) for policy in policies]


def simulate(
    scenarios: Sequence[Scenario],
    policies: Sequence[Policy],
    seed: int = 0,
    *,
    fleets: int = 1,
    traces: Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    jobs: int = 1,
) -> list[Result]:
    """Generate ``fleets`` traces of each scenario (seeds ``seed``, ``seed + 1``, ...), replay
    each under each policy, and score them: one :class:`Result` per scenario and policy, whose
    score sums the fleets' (every policy sees the same fleets).

    ``traces``: a directory that keeps each generated trace as ``<scenario>.jsonl`` (with
    several fleets, ``<scenario>.<seed>.jsonl``) and, when clients send worker_id hints, which
    depend on the policy, ``<scenario>[.<seed>].<policy>.jsonl`` with the hints as that policy's
    server handed them out.  ``progress(done, total, label)`` is called after each fleet.
    ``jobs``: how many processes score fleets at once (the results do not depend on it).
    """
    if not isinstance(fleets, int) or isinstance(fleets, bool) or fleets < 1:
        raise InvalidInput(f"fleets must be a positive integer, not {fleets!r}", field="fleets")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InvalidInput(f"jobs must be a positive integer, not {jobs!r}", field="jobs")
    work = [(sc, s) for sc in scenarios for s in range(seed, seed + fleets)]
    total = len(work) * len(policies)
    scored: dict[tuple[str, int], list[Score]] = {}

    def finish(sc: Scenario, fleet_seed: int, scores: list[Score]) -> None:
        scored[(sc.name, fleet_seed)] = scores
        stem = sc.name if fleets == 1 else f"{sc.name}.{fleet_seed}"
        if traces is not None:
            records = generate(sc.params, fleet_seed)
            traces.mkdir(parents=True, exist_ok=True)
            with (traces / f"{stem}.jsonl").open("w", encoding="utf-8") as f:
                write_trace(records, f)
            if any(r.hint == "worker_id" for r in records):
                for policy, s in zip(policies, scores, strict=True):
                    with (traces / f"{stem}.{policy.name}.jsonl").open("w", encoding="utf-8") as f:
                        write_trace(records, f, s.worker_ids)
        if progress is not None:
            progress(len(scored) * len(policies), total, stem)

    if jobs == 1 or len(work) == 1:
        for sc, fleet_seed in work:
            finish(sc, fleet_seed, _score_fleet(sc, fleet_seed, policies))
    else:
        spawn = multiprocessing.get_context("spawn")  # no fork of a threaded process
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=spawn) as pool:
            futures = {
                pool.submit(_score_fleet, sc, fleet_seed, policies): (sc, fleet_seed)
                for sc, fleet_seed in work
            }
            for future in concurrent.futures.as_completed(futures):
                sc, fleet_seed = futures[future]
                finish(sc, fleet_seed, future.result())
    results: list[Result] = []
    for sc in scenarios:
        for i, policy in enumerate(policies):
            parts = [scored[(sc.name, s)][i] for s in range(seed, seed + fleets)]
            total_score = parts[0]
            for part in parts[1:]:
                total_score = total_score + part
            results.append(Result(scenario=sc.name, policy=policy.name, score=total_score))
    return results


_COLUMNS = (
    ("right", "right_share"),
    ("workers/session", "workers_per_session"),
    ("split", "split"),
    ("mixed", "mixed"),
    ("shared", "shared"),
    ("lost", "lost"),
    ("misended", "misended"),
    ("alerts", "alerts"),
    ("ambiguous", "ambiguous"),
    ("wrong", "wrong"),
    ("unflagged", "unflagged"),
    ("silent", "silent"),
    ("merged", "merged"),
)


def format_table(results: Sequence[Result], *, markdown: bool = False) -> str:
    """The scores side by side: one row per scenario and policy."""
    header = ["scenario", "policy", "sessions", *(title for title, _ in _COLUMNS)]
    rows: list[list[str]] = []
    for r in results:
        s = r.score
        cells = [r.scenario, r.policy, str(s.sessions)]
        for _, attr in _COLUMNS:
            value = getattr(s, attr)
            if attr == "right_share":
                cells.append(f"{100 * value:.1f}%")
            else:
                cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |"]
        lines.append("| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = []
    previous = None
    for n, row in enumerate([header, *rows]):
        if n > 1 and row[0] != previous:
            out.append("")
        previous = row[0]
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


class _ProgressBar:
    """A progress bar on a terminal, drawn with ``\\r`` (standard library only)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width

    def __call__(self, done: int, total: int, label: str) -> None:
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} {label[:40]:<40}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _params_from_args(base: FleetParams, args: argparse.Namespace) -> FleetParams:
    changes: dict[str, Any] = {}
    for name in (
        "machines",
        "duration_min",
        "start_spread_min",
        "vpn_share",
        "vpn_pool",
        "flip_rate",
        "midrun_flips_per_hour",
        "nat_share",
        "nat_size",
        "slow_gui_share",
        "blips_per_hour",
        "outages_per_hour",
        "concurrent_share",
        "cloned_share",
        "hint_share",
        "hint_kind",
    ):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if getattr(args, "gui_delay", None) is not None:
        changes["gui_delay_s"] = tuple(args.gui_delay)
    if getattr(args, "batch", None):
        changes["batch"] = True
    return base.evolve(**changes) if changes else base


def _cpus() -> int:
    """How many CPUs this process may run on (all of the machine's where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``workermatch simulate`` to ``parser``."""
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="a named scenario (repeatable; default: all of them): "
        + ", ".join(SCENARIOS)
        + "; 'custom' uses only the fleet options below",
    )
    parser.add_argument(
        "--policy",
        action="append",
        metavar="NAME",
        help="a policy to score (repeatable; default: default, note, legacy); also any "
        "candidate: " + ", ".join(CANDIDATE_POLICIES),
    )
    parser.add_argument(
        "--candidates", action="store_true", help="also score every candidate policy"
    )
    parser.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
    parser.add_argument(
        "--fleets",
        type=int,
        default=1,
        metavar="N",
        help="score N fleets of each scenario (seeds SEED to SEED+N-1) and sum their counts "
        "(default 1)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=_cpus(),
        metavar="N",
        help="score N fleets at once, one process each (default: the number of CPUs this "
        "process may run on, %(default)s here); the figures do not depend on it",
    )
    parser.add_argument("--traces", type=Path, metavar="DIR", help="keep the generated traces")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on standard error (default: when it is a terminal)",
    )
    fleet = parser.add_argument_group(
        "fleet", "override a scenario's fleet (or describe the 'custom' one)"
    )
    fleet.add_argument("--machines", type=int)
    fleet.add_argument("--duration", dest="duration_min", type=float, metavar="MINUTES")
    fleet.add_argument("--start-spread", dest="start_spread_min", type=float, metavar="MINUTES")
    fleet.add_argument("--batch", action="store_true", help="sequential sessions")
    fleet.add_argument("--vpn-share", type=float, metavar="SHARE")
    fleet.add_argument("--vpn-pool", type=int, metavar="N")
    fleet.add_argument("--flip-rate", type=float, metavar="P")
    fleet.add_argument(
        "--midrun-flips", dest="midrun_flips_per_hour", type=float, metavar="PER_HOUR"
    )
    fleet.add_argument("--nat-share", type=float, metavar="SHARE")
    fleet.add_argument("--nat-size", type=int, metavar="N")
    fleet.add_argument("--gui-delay", type=float, nargs=2, metavar=("MIN_S", "MAX_S"))
    fleet.add_argument("--slow-gui-share", type=float, metavar="SHARE")
    fleet.add_argument("--blips", dest="blips_per_hour", type=float, metavar="PER_HOUR")
    fleet.add_argument("--outages", dest="outages_per_hour", type=float, metavar="PER_HOUR")
    fleet.add_argument("--concurrent-share", type=float, metavar="SHARE")
    fleet.add_argument("--cloned-share", type=float, metavar="SHARE")
    fleet.add_argument("--hint-share", type=float, metavar="SHARE")
    fleet.add_argument("--hint-kind", choices=("worker_id", "assignment", "mixed"))


def run_simulate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``workermatch simulate`` with parsed ``args``; return the exit status."""
    try:
        names = args.scenario or list(SCENARIOS)
        scenarios = []
        for name in names:
            if name == "custom":
                params = _params_from_args(FleetParams(), args)
                scenarios.append(Scenario(name="custom", summary="", params=params, solvable=False))
                continue
            if name not in SCENARIOS:
                raise InvalidInput(
                    f"unknown scenario {name!r}; choose among {', '.join(SCENARIOS)}, custom",
                    field="scenario",
                )
            s = SCENARIOS[name]
            scenarios.append(attrs.evolve(s, params=_params_from_args(s.params, args)))
        policy_names = list(args.policy or ["default", "note", "legacy"])
        if args.candidates:
            policy_names += [n for n in CANDIDATE_POLICIES if n not in policy_names]
        policies = resolve_policies(policy_names)
    except (InvalidInput, ValueError) as exc:
        stderr.write(f"workermatch simulate: {exc}\n")
        return 2
    show = args.progress if args.progress is not None else stderr.isatty()
    bar = _ProgressBar(stderr) if show else None
    try:
        results = simulate(
            scenarios,
            policies,
            args.seed,
            fleets=args.fleets,
            traces=args.traces,
            progress=bar,
            jobs=args.jobs,
        )
    except InvalidInput as exc:
        stderr.write(f"workermatch simulate: {exc}\n")
        return 2
    stdout.write(format_table(results, markdown=args.markdown))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workermatch.simulation``: the same as ``workermatch simulate``."""
    parser = argparse.ArgumentParser(
        prog="workermatch simulate",
        description="Generate fleets with ground truth, replay them under policies, and score.",
    )
    add_simulate_arguments(parser)
    args = parser.parse_args(argv)
    return run_simulate(args, sys.stdout, sys.stderr)
