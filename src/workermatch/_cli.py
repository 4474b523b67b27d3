"""The ``workermatch`` command: ``demo``, ``replay``, ``corpus``, ``rules`` and ``simulate``
(``docs/cli-and-traces.md``).

Standard library only (argparse), so the command works with nothing but the core installed;
``--db`` imports the SQL repositories lazily and says which extra to install when they are
missing.  Exit status: 0 on success, 2 on a bad trace or bad arguments (one line on standard
error that names the problem), 1 when the store fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import IO, Any, NoReturn, TextIO

import attrs

from . import __version__
from ._decision import _span
from ._engine import plan
from ._errors import InvalidInput, StorageError, WorkermatchError
from ._memory import InMemoryWorkerRepository, sequential_ids
from ._model import AssignmentStatus, EventKind
from ._policy import POLICIES, Policy, get_policy
from ._protocol import WorkerRepository
from .trace import (
    ReplayLine,
    TraceError,
    TraceRecord,
    _replay_record,
    dump_json,
    dump_record,
    final_state,
    format_time,
    parse_trace,
    replay,
)

__all__ = ["main"]

EXIT_OK = 0
EXIT_STORE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or a bad trace: exit status 2, one line on standard error."""


class StoreFailure(Exception):
    """The store failed: exit status 1, one line on standard error."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line on standard error (the trace contract's rule)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (try '{self.prog} --help')\n")


# ------------------------------------------------------------------------------------------------
# Stores


def _open_store(url: str | None, *, reset: bool) -> tuple[WorkerRepository, Callable[[], None]]:
    """A fresh, empty repository with sequential ids, and a function that closes it."""
    if url is None:
        return InMemoryWorkerRepository(id_factory=sequential_ids()), lambda: None
    shown = _redact(url)
    try:
        sql = importlib.import_module("workermatch.sql")
    except ImportError as exc:
        raise UsageError(
            f"--db needs the SQL repositories, which need SQLAlchemy ({exc}); install the sql "
            "extra (from a checkout: python -m pip install '.[sql]'; the postgresql or mysql "
            "extra for a server)"
        ) from None
    try:
        repo = sql.SQLWorkerRepository.from_url(url, id_factory=sequential_ids())
    except InvalidInput as exc:
        raise UsageError(f"--db {shown}: {exc}") from None
    except ImportError as exc:
        raise UsageError(f"--db {shown}: a driver is missing ({exc})") from None
    except WorkermatchError as exc:
        raise StoreFailure(f"--db {shown}: {exc}") from None

    def close() -> None:
        for name in ("close", "dispose"):
            fn = getattr(repo, name, None)
            if callable(fn):
                fn()
                return

    try:
        repo.create_schema()
        if reset:
            repo.reset()
        elif not repo.is_empty():
            close()
            raise UsageError(
                f"the store at {shown} already holds workers; a replay starts from an empty store: "
                "pass --reset to empty the library's tables first"
            )
    except WorkermatchError as exc:
        close()
        raise StoreFailure(f"--db {shown}: {exc}") from None
    return repo, close


def _redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (error lines are often logged)."""
    return re.sub(r"^([^:/]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


# ------------------------------------------------------------------------------------------------
# replay


def _decoded(binary: Iterable[bytes]) -> Iterator[str]:
    for lineno, raw in enumerate(binary, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TraceError(f"not UTF-8 text ({exc.reason})", line=lineno) from None
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield text


#: How much replay output is held in memory before the rest waits on disk.
_SPOOL_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def _trace_lines(source: str) -> Iterator[Iterator[str]]:
    """The lines of the trace at ``source`` (``-``: standard input), read as they are used."""
    if source == "-":
        yield _decoded(sys.stdin.buffer)
        return
    try:
        f = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    with f:
        yield _decoded(f)


def _check_trace(lines: Iterable[str], source: str) -> datetime | None:
    """Read a whole trace, so that a bad line is reported before anything is applied.
    Returns the latest ``at`` (``None`` for an empty trace)."""
    latest: datetime | None = None
    try:
        for record in parse_trace(lines):
            latest = record.at if latest is None else max(latest, record.at)
    except TraceError as exc:
        raise UsageError(f"{_label(source)}: {exc}") from None
    return latest


def _label(source: str) -> str:
    return "<stdin>" if source == "-" else source


def _cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    policy = get_policy(args.policy)
    with contextlib.ExitStack() as stack:
        lines = stack.enter_context(_trace_lines(args.trace))
        if args.db is not None:
            # A database must stay untouched by a bad trace: check the whole trace first, then
            # read it again to replay it (standard input waits in a temporary file meanwhile).
            if args.trace == "-":
                kept = stack.enter_context(tempfile.SpooledTemporaryFile(_SPOOL_BYTES))
                _check_trace(_copied(lines, kept), args.trace)
                kept.seek(0)
                lines = _decoded(kept)
            else:
                _check_trace(lines, args.trace)
                lines = stack.enter_context(_trace_lines(args.trace))
        # In memory, each line is read and applied once, on a store of this command's own; the
        # output waits (in a temporary file past a few megabytes) until the whole trace has
        # been read, so that a bad line still prints nothing.
        spool = stack.enter_context(
            tempfile.SpooledTemporaryFile(_SPOOL_BYTES, mode="w+", encoding="utf-8", newline="")
        )
        repo, close = _open_store(args.db, reset=args.reset)
        stack.callback(close)
        try:
            _replay_to(spool, lines, repo, policy, args)
        except TraceError as exc:
            raise UsageError(f"{_label(args.trace)}: {exc}") from None
        except StorageError as exc:
            raise StoreFailure(f"the store failed: {exc}") from None
        except InvalidInput as exc:  # a value the trace check let through: one line
            raise UsageError(f"{_label(args.trace)}: {exc}") from None
        spool.seek(0)
        shutil.copyfileobj(spool, out)
    return EXIT_OK


def _copied(lines: Iterable[str], into: IO[bytes]) -> Iterator[str]:
    """``lines``, each also written to ``into`` as UTF-8."""
    for text in lines:
        into.write(text.encode("utf-8"))
        yield text


def _replay_to(
    out: IO[str],
    lines: Iterable[str],
    repo: WorkerRepository,
    policy: Policy,
    args: argparse.Namespace,
) -> None:
    """Replay ``lines`` and write the output of ``workermatch replay`` to ``out``."""
    table = None if args.jsonl else _Table(out, explain=args.explain)
    if table is not None:
        store = "memory" if args.db is None else args.db
        table.header(_label(args.trace), policy, store)
    latest: datetime | None = None
    for record in parse_trace(lines):
        latest = record.at if latest is None else max(latest, record.at)
        result = _replay_record(record, repo, policy)
        if table is None:
            out.write(dump_json(result.to_dict()) + "\n")
        else:
            table.row(record, result)
    state = final_state(repo, latest or datetime.now(timezone.utc), policy)
    if table is None:
        out.write(dump_json(state) + "\n")
    else:
        table.footer(state, latest)


class _Table:
    """The human-readable form of a replay: one row per request, then the final state."""

    def __init__(self, out: IO[str], *, explain: bool) -> None:
        self.out = out
        self.explain = explain
        self.day: str | None = None
        self.counts: Counter[str] = Counter()

    def header(self, source: str, policy: Policy, store: str) -> None:
        w = self.out.write
        w(f"Replay of {source} under policy {policy.name!r}, store {store}.\n")
        w("Times are UTC. 'worker' is the worker each request resolved to ('-': refused).\n\n")
        w(
            f"{'line':>5}  {'time':<12}  {'kind':<10}  {'ip':<15}  {'hostname':<14}  "
            f"{'worker':<6}  {'rule':<22}  notes\n"
        )

    def row(self, record: TraceRecord, result: ReplayLine) -> None:
        at = format_time(record.at)
        day, clock = at[:10], at[11:-1]
        if "." not in clock:
            clock += ".000"
        if day != self.day:
            self.out.write(f"{'':>5}  -- {day}\n")
            self.day = day
        event = record.event
        ident = event.identity
        rule = result.rule + (" (ambiguous)" if result.ambiguous else "")
        if result.refused is not None:
            rule = f"({rule})"
        notes = _notes(record, result)
        self.counts["requests"] += 1
        self.counts["created"] += result.created
        self.counts["ambiguous"] += result.ambiguous
        self.counts["refused"] += result.refused is not None
        self.out.write(
            f"{result.line:>5}  {clock:<12}  {event.kind.value:<10}  {ident.ip:<15}  "
            f"{ident.hostname or '-':<14}  {result.worker or '-':<6}  {rule:<22}  "
            f"{'; '.join(notes)}".rstrip()
            + "\n"
        )
        if self.explain and result.decision is not None:
            for text in result.decision.explain().splitlines():
                self.out.write(f"{'':>7}| {text}\n")

    def footer(self, state: dict[str, Any], latest: datetime | None) -> None:
        w = self.out.write
        c = self.counts
        w(
            f"\n{c['requests']} requests; {c['created']} created a worker, "
            f"{c['ambiguous']} ambiguous, {c['refused']} refused.\n"
        )
        when = "" if latest is None else f", stale evaluated at {format_time(latest)}"
        w(f"\nFinal state{when}:\n")
        workers = state["workers"]
        w(f"  {len(workers)} worker{'s' if len(workers) != 1 else ''}\n")
        for wk in workers:
            flags = ["stale"] if wk["stale"] else []
            if wk["merged_into"] is not None:
                flags.append(f"merged into {wk['merged_into']}")
            w(
                f"    {wk['id']:<6}  {wk['ip']:<15}  {wk['hostname'] or '-':<14}  "
                f"{wk['status']:<8}  {', '.join(flags)}".rstrip()
                + "\n"
            )
        assignments = state["assignments"]
        w(f"  {len(assignments)} assignment{'s' if len(assignments) != 1 else ''}\n")
        for a in assignments:
            holder = "" if a["worker"] is None else f"on {a['worker']}"
            w(f"    {a['id']:<6}  {a['status']:<9}  {holder}".rstrip() + "\n")


def _notes(record: TraceRecord, result: ReplayLine) -> list[str]:
    event = record.event
    ident = event.identity
    notes: list[str] = []
    if event.kind is EventKind.CLAIM:
        notes.append(f"claims {event.assignment_id}")
    if ident.worker_id is not None:
        notes.append(f"hint worker_id={ident.worker_id}")
    if ident.assignment_id is not None:
        notes.append(f"hint assignment={ident.assignment_id}")
    if event.message in ("finished", "fatal_error"):
        notes.append(event.message)
    if result.refused is not None:
        notes.append(f"REFUSED: {result.refused}")
    outcome = result.outcome
    if outcome is not None:
        if outcome.idempotent:
            notes.append("repeated claim, nothing changed")
        merged: tuple[str, ...] = getattr(outcome, "merged", ())
        if merged:
            notes.append(f"merged duplicate {', '.join(merged)} into {result.worker}")
        if outcome.transferred:
            notes.append(f"took over {', '.join(outcome.transferred)} from stale workers")
        if outcome.ended:
            verb = "completed" if event.message == "finished" else "failed"
            notes.append(f"{verb} {', '.join(outcome.ended)}")
        elif event.message in ("finished", "fatal_error"):
            notes.append("ended nothing: the worker held no running assignment")
    return notes


# ------------------------------------------------------------------------------------------------
# corpus


def _corpus_dir() -> Path:
    return Path(str(resources.files("workermatch") / "corpus"))


def _cmd_corpus(args: argparse.Namespace, out: TextIO) -> int:
    directory = _corpus_dir()
    traces = sorted(directory.glob("*.jsonl"))
    if args.name is not None:
        path = directory / f"{args.name}.jsonl"
        if not path.is_file():
            names = ", ".join(p.stem for p in traces)
            raise UsageError(f"no corpus trace named {args.name!r}; there are: {names}")
        out.write(f"{path}\n")
        return EXIT_OK
    out.write(f"Traces shipped with workermatch, in {directory}\n")
    out.write("(what each shows, and how each policy decides it, in README.md):\n\n")
    for p in traces:
        out.write(f"  {p.stem}\n")
    out.write('\nReplay one with: workermatch replay "$(workermatch corpus NAME)"\n')
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# demo

T0 = datetime(2025, 11, 6, 10, 0, 1, tzinfo=timezone.utc)
CLAIM_IP = "157.193.240.188"
GUI_IP = "157.193.240.190"
HOSTNAME = "UG-GNS0S34"
GUI_START = 20.0
RUN_END = 600.0


def demo_story(*, hint: bool = False) -> list[TraceRecord]:
    """The design note's story at the real client's timing, as trace records.

    A claim of ``A1`` from one address without hostname; 20 s later the GUI starts on another
    address (the VPN) with two simultaneous heartbeats that carry the hostname; then a progress
    update every 2 s and a heartbeat every 30 s; at the end five 100 % messages 0.5 s apart and
    ``finished``.  ``hint``: the client names its assignment on every request after the claim.
    The client model of :mod:`workermatch.lab` lays it out.
    """
    from .lab import every, session_requests

    gui_at, end_at = round(GUI_START * 1000), round(RUN_END * 1000)
    finale = 2_600  # the story's five 100 % messages start 2.6 s before finished
    requests = session_requests(
        assignment="A1",
        claim_at=0,
        claim_ip=CLAIM_IP,
        gui_at=gui_at,
        end_at=end_at,
        addresses=[(gui_at, GUI_IP)],
        updates=every(gui_at + 400, 2_000, end_at - finale),
        hostname=HOSTNAME,
        hints=hint,
        finale_ms=finale,
    )
    return [
        TraceRecord(line=i, at=T0 + timedelta(milliseconds=r.at_ms), event=r.to_event())
        for i, r in enumerate(requests, start=1)
    ]


@attrs.frozen
class _DemoRun:
    label: str
    policy: Policy
    hint: bool = False
    racy: bool = False


def _racy_replay(
    records: Sequence[TraceRecord], repo: WorkerRepository, policy: Policy
) -> list[tuple[TraceRecord, str, str, bool]]:
    """Replay like the deployed legacy server: requests that arrive at the same instant each
    read the store before any of them writes (find-then-create, no transaction)."""
    out: list[tuple[TraceRecord, str, str, bool]] = []
    i = 0
    while i < len(records):
        j = i
        while j < len(records) and records[j].at == records[i].at:
            j += 1
        outcomes = [
            plan(
                r.event,
                r.at,
                repo,
                policy,
                create_assignments=True,
                new_worker_id=repo.new_worker_id,
            )
            for r in records[i:j]
        ]
        for r, o in zip(records[i:j], outcomes, strict=True):
            repo.write(o.writes)
            out.append((r, o.worker.id, o.rule.value, o.created))
        i = j
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    w = out.write
    plain = demo_story()
    kinds = Counter(r.event.kind.value for r in plain)
    w(
        "workermatch demo: which worker record does each request belong to?\n"
        "==================================================================\n\n"
        "A compute worker tells a server who it is only by weak signals: the public IP a\n"
        "request comes from, and sometimes a hostname. The server must file every request under\n"
        "the right worker record. One machine running one job should be ONE worker.\n\n"
        "The story (from the design note behind this library, at the real client's timing):\n"
        f"  +0 s     the command-line client claims assignment A1 from {CLAIM_IP}, no hostname\n"
        f"  +{GUI_START:.0f} s    the GUI starts; the VPN gives it another address, {GUI_IP};\n"
        f"           it sends two heartbeats at the same instant with hostname {HOSTNAME}\n"
        "  then     a progress update every 2 s, a heartbeat every 30 s (the only requests\n"
        "           that carry the hostname)\n"
        f"  +{RUN_END / 60:.0f} min  five 100 % progress messages 0.5 s apart, then 'finished',\n"
        "           which must mark A1 COMPLETED\n"
        f"In all: {_plural(kinds['claim'], 'claim')}, {_plural(kinds['heartbeat'], 'heartbeat')} "
        f"and {_plural(kinds['gui_update'], 'gui_update')} from one machine, one session.\n"
        "The right answer: 1 worker, and A1 COMPLETED on it.\n\n"
        "Each request is placed by the first rule that finds a worker:\n"
        "  assignment     the request names the assignment it works on (a hint)\n"
        "  exact_ip       a live worker with the request's address\n"
        "  recent_orphan  a worker created moments ago that runs an assignment and that no\n"
        "                 other live stream feeds (a claim waiting for its GUI)\n"
        "  hostname       a live worker with the request's hostname\n"
        "  created        nothing matched: a new worker\n"
    )
    runs = [
        _DemoRun("legacy", POLICIES["legacy"]),
        _DemoRun("legacy, racing", POLICIES["legacy"], racy=True),
        _DemoRun("note", POLICIES["note"]),
        _DemoRun("default", POLICIES["default"]),
        _DemoRun("default + hint", POLICIES["default"], hint=True),
    ]
    blurbs = {
        "legacy": "the server's code before the note: each endpoint matches by IP, then its own\n"
        "   fallback (heartbeat: hostname; gui_update: a recent worker running something),\n"
        "   else creates. Each request applied atomically, one after the other.",
        "legacy, racing": "the same code as deployed, without a transaction: the two heartbeats\n"
        "   that arrive at the same instant both look before either writes.",
        "note": "the design note's fix, to the letter: exact IP, then a worker created within\n"
        "   2 min that runs an assignment and has been quiet for 30 s, then hostname, then create.",
        "default": "workermatch's default: a recent worker that runs an assignment and has no\n"
        "   hostname yet is an orphan even if not quiet; hostname veto; sessions.",
        "default + hint": "the default policy, with a client that names its assignment (A1) on\n"
        "   every request after the claim: a strong hint, matched before any guess.",
    }
    summary: list[tuple[str, int, str, str]] = []
    first_store = True
    for n, run in enumerate(runs, start=1):
        records = demo_story(hint=run.hint)
        repo, close = _open_store(args.db, reset=args.reset or not first_store)
        first_store = False
        try:
            if run.racy:
                placed = _racy_replay(records, repo, run.policy)
            else:
                placed = [
                    (records[r.line - 1], r.worker or "-", r.rule, r.created)
                    for r in replay(records, repo, run.policy)
                ]
            state = final_state(repo, records[-1].at, run.policy)
        finally:
            close()
        workers = state["workers"]
        (a1,) = state["assignments"]
        w(f"\n{n}. {run.label}: {blurbs[run.label]}\n")
        w(f"   workers made:  {len(workers)}\n")
        for wk in workers:
            w(f"     {wk['id']}  {wk['ip']:<15}  hostname {wk['hostname'] or '(none)'}\n")
        for kind in ("claim", "heartbeat", "gui_update"):
            rules: Counter[str] = Counter()
            for rec, wid, rule, created in placed:
                if rec.event.kind.value == kind:
                    rules[f"{'created ' + wid if created else rule + ' -> ' + wid}"] += 1
            text = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in rules.items())
            w(f"   {kind + ':':<13}  {text}\n")
        where = f"{a1['status']} on {a1['worker']}"
        w(f"   A1 ends:       {where}\n")
        ok = len(workers) == 1 and a1["status"] == AssignmentStatus.COMPLETED.value
        if ok:
            short = "right: one worker, A1 completed" + (", no guess needed" if run.hint else "")
            verdict = "RIGHT: one worker, and 'finished' completed A1 on it"
            if run.hint:
                verdict += ";\n                  every request placed by the hint, no guess needed"
        else:
            finisher = placed[-1][1]
            short = f"wrong: {len(workers) - 1} duplicate(s), A1 stuck {a1['status']}"
            verdict = (
                f"WRONG: {len(workers)} workers for one session; 'finished' reached {finisher},\n"
                f"                  which holds nothing, so A1 stays {a1['status']} forever"
            )
        w(f"   verdict:       {verdict}\n")
        summary.append((run.label, len(workers), where, short))

    w("\nSummary\n\n")
    w(f"  {'policy':<16}  {'workers':>7}  {'A1 ends':<16}  verdict\n")
    for label, count, where, verdict in summary:
        w(f"  {label:<16}  {count:>7}  {where:<16}  {verdict}\n")
    w(
        "\nThe note reported three workers: the third comes from the two simultaneous\n"
        "heartbeats racing through code without a transaction (run 2). workermatch applies\n"
        "each request atomically, and its default policy places the first heartbeat on the\n"
        "claim's worker (rule recent_orphan), so the session stays one worker. A client that\n"
        "names its assignment removes the guess entirely.\n\n"
        "Next: workermatch replay TRACE.jsonl (your own requests, or a shipped example:\n"
        "workermatch corpus), and docs/cli-and-traces.md for the format.\n"
    )
    if args.write_trace is not None:
        with open(args.write_trace, "w", encoding="utf-8") as f:
            for r in plain:
                f.write(dump_record(r) + "\n")
        w(f"\nWrote the story (without hints) to {args.write_trace}.\n")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# main


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="workermatch",
        description="Decide which worker record a compute worker's request belongs to, and "
        "explain every decision.",
    )
    parser.add_argument("--version", action="version", version=f"workermatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="play the design note's story under each policy and compare",
        description="Play one machine's run (claim, VPN address change, heartbeats, updates, "
        "finished) under the legacy, note and default policies, and with a hinting client.",
    )
    demo.add_argument(
        "--db", metavar="URL", help="play against this store instead of memory (sqlite:///x.db)"
    )
    demo.add_argument(
        "--reset", action="store_true", help="empty the library's tables in --db first"
    )
    demo.add_argument(
        "--write-trace", metavar="FILE", help="also write the story as a trace to FILE"
    )

    rep = sub.add_parser(
        "replay",
        help="replay a trace (JSON Lines) and print what each request resolved to",
        description="Replay TRACE (JSON Lines, docs/cli-and-traces.md; '-' reads standard input) "
        "from an empty store and print, per request, the worker, the rule and whether it was "
        "created or ambiguous, then the final state.",
    )
    rep.add_argument("trace", metavar="TRACE", help="the trace file, or - for standard input")
    rep.add_argument(
        "--jsonl", action="store_true", help="print the contract's JSON Lines instead of a table"
    )
    rep.add_argument(
        "--policy", choices=sorted(POLICIES), default="default", help="default: %(default)s"
    )
    rep.add_argument(
        "--db",
        metavar="URL",
        help="replay against this store instead of memory: sqlite:///file.db, "
        "postgresql://user@host:5432/db, mysql://... or mariadb://...",
    )
    rep.add_argument(
        "--reset",
        action="store_true",
        help="empty the library's tables in --db first (a replay refuses a store with workers)",
    )
    rep.add_argument(
        "--explain", action="store_true", help="in the table, explain every decision in full"
    )

    corpus = sub.add_parser(
        "corpus",
        help="list the example traces shipped with workermatch",
        description="List the shipped example traces, or print the path of one.",
    )
    corpus.add_argument("name", nargs="?", help="print the path of this trace")

    rules = sub.add_parser(
        "rules",
        help="print a shipped policy's rule table",
        description="Print the rule table of a shipped policy (Markdown): its rows in order, "
        "its ranking, guards and effects, and its windows.",
    )
    rules.add_argument(
        "--policy", choices=sorted(POLICIES), default="default", help="default: %(default)s"
    )

    simulation = _simulation()
    if simulation is not None:
        sim = sub.add_parser(
            "simulate",
            help="generate fleets with ground truth, replay them under policies, and score",
            description="Generate fleets with ground truth, replay them under each policy, "
            "and score fragmentation, hijacks, lost assignments and ambiguity "
            "(docs/tuning.md).",
        )
        simulation.add_simulate_arguments(sim)
    return parser


def _simulation() -> Any:
    """The simulator (:mod:`workermatch.lab`, ``workermatch simulate``), or ``None`` where it is
    absent."""
    try:
        return importlib.import_module("workermatch.lab")
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return None


def _cmd_rules(args: argparse.Namespace, out: TextIO) -> int:
    policy = POLICIES[args.policy]
    out.write(policy.rules.to_markdown())
    windows = ", ".join(
        f"`{name}` {_span(getattr(policy, name))}"
        for name in ("stale_after", "orphan_window", "quiet_period", "hostname_window")
    )
    grace = "forever" if policy.ended_grace is None else _span(policy.ended_grace)
    out.write(f"\nWindows: {windows}, `ended_grace` {grace}.\n")
    return 0


def _cmd_simulate(args: argparse.Namespace, out: TextIO) -> int:
    simulation = _simulation()
    assert simulation is not None
    status: int = simulation.run_simulate(args, out, sys.stderr)
    return status


def _error_line(command: str, exc: Exception) -> None:
    # One line, whatever the driver's message holds (they often span several).
    print(f"workermatch {command}: {' '.join(str(exc).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None) -> int:
    """Run the ``workermatch`` command; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out: TextIO = stdout or sys.stdout  # type: ignore[assignment]
    commands: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
        "demo": _cmd_demo,
        "replay": _cmd_replay,
        "corpus": _cmd_corpus,
        "rules": _cmd_rules,
        "simulate": _cmd_simulate,
    }
    if args.command is None:
        parser.print_help(out)
        return EXIT_USAGE
    try:
        return commands[args.command](args, out)
    except UsageError as exc:
        _error_line(args.command, exc)
        return EXIT_USAGE
    except StoreFailure as exc:
        _error_line(args.command, exc)
        return EXIT_STORE
    except BrokenPipeError:  # pragma: no cover - e.g. piped into head
        return EXIT_OK
