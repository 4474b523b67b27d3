"""A fleet sent in real time by server processes whose clocks disagree (tests and benchmarks).

Two (or more) server processes write to one database.  Process 0's clock runs ``skew`` seconds
ahead of the others': everything the *application* does with time (here: the time it would
pass to the library, and the receive time it notes for each request) reads that clock.  In
``"store"`` mode the library is called with ``now=None`` and decides at the database's clock;
in ``"own"`` mode (the control) each process passes its own clock's time.

The fleet is the real client's (:func:`workermatch.lab.session_requests`): machines
start one after another, each claims its assignment from one address without hostname, and
its GUI, from another address, first sends a progress update without hostname (a VPN client's
first request from a new address), then its two start-up heartbeats with the hostname, one
every heartbeat period, progress updates and the finale.  Times are written at full scale and
divided by ``scale`` (as are all the policy's windows, :func:`scaled_policy`), so that a fleet
of minutes runs in seconds with the same ratios; ``skew`` is given in full-scale seconds too.

The requests of one machine go to the processes in turn and keep their order (a request is
not sent before the machine's previous one was answered, as the real client's GUI does): only
the clocks, not the order, differ between the modes.  The result counts *split* sessions (a
machine whose requests went to two or more workers, after following merges) and *mixed*
workers (one worker that answered two or more machines).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

import workermatch as wm
from workermatch.lab import every, session_requests

# (sequence, at (scaled seconds), machine, index within the machine, request)
Job = tuple[int, float, int, int, Any]


def scaled_policy(scale: float, base: wm.Policy = wm.DEFAULT_POLICY) -> wm.Policy:
    """``base`` with every window divided by ``scale``."""
    grace = base.ended_grace
    return base.evolve(
        name=f"{base.name}/{scale:g}",
        stale_after=base.stale_after / scale,
        orphan_window=base.orphan_window / scale,
        quiet_period=base.quiet_period / scale,
        hostname_window=base.hostname_window / scale,
        ended_grace=None if grace is None else grace / scale,
    )


def fleet(
    machines: int, *, scale: float, gap_s: float = 30, length_s: float = 100, processes: int = 2
) -> list[list[Job]]:
    """Each process's share of the fleet, in time order.  Machine ``m`` claims at
    ``m * gap_s``; its session lasts ``length_s`` (full-scale seconds)."""
    timeline: list[tuple[int, int, int, Any]] = []
    for m in range(machines):
        claim = int(m * gap_s * 1000)
        gui = claim + 5000
        end = claim + int(length_s * 1000)
        requests = session_requests(
            assignment=f"A{m}",
            claim_at=claim,
            claim_ip=f"10.8.0.{m + 1}",
            gui_at=gui,
            end_at=end,
            addresses=[(0, f"10.9.0.{m + 1}")],
            updates=every(gui + 2000, 10_000, end - 5000),
            hostname=f"host-{m}",
            extra=[(gui, wm.EventKind.GUI_UPDATE)],
        )
        timeline += [(r.at_ms, m, i, r) for i, r in enumerate(requests)]
    timeline.sort(key=lambda item: (item[0], item[1], item[2]))
    shares: list[list[Job]] = [[] for _ in range(processes)]
    for seq, (at_ms, m, i, request) in enumerate(timeline):
        shares[(m + i) % processes].append((seq, at_ms / 1000 / scale, m, i, request))
    return shares


def _server(
    url: str,
    mapping_spec: dict[str, Any],
    jobs: list[Job],
    skew_s: float,
    mode: str,
    policy: wm.Policy,
    start_at: float,
    done: Any,
    results: Any,
) -> None:
    """One server process: sends its jobs at their times, in each machine's order."""
    from workermatch.sql import SQLWorkerRepository, TableMapping

    ahead = timedelta(seconds=skew_s)

    def app_clock() -> datetime:  # this process's own clock
        return datetime.now(timezone.utc) + ahead

    repo = SQLWorkerRepository.from_url(url, mapping=TableMapping(**mapping_spec))
    out: list[tuple[int, str, str]] = []
    try:
        for _, at, m, i, request in jobs:
            deadline = time.time() + 120
            while done[m] != i:  # the machine's previous request is not answered yet
                if time.time() > deadline:
                    raise TimeoutError(f"machine {m} request {i} never came up")
                time.sleep(0.001)
            pause = start_at + at - time.time()
            if pause > 0:
                time.sleep(pause)
            received_at = app_clock()  # what the application notes (and, in "own", decides at)
            now = received_at if mode == "own" else None
            try:
                outcome = wm.apply_event(
                    request.to_event(), now, repo, policy, create_assignments=True
                )
                result = outcome.worker.id
            except wm.ClaimRefused as exc:
                result = f"refused:{exc.reason}"
            except wm.WorkermatchError as exc:
                result = f"error:{exc!r}"
            out.append((m, result, received_at.isoformat()))
            done[m] = i + 1
    finally:
        repo.close()
        results.put(out)


@attrs.frozen
class Result:
    requests: int
    errors: list[str]
    split: int
    """Machines whose requests went to two or more workers (merges followed)."""
    mixed: int
    """Workers that answered two or more machines (merges followed)."""


def run_fleet(
    repo: Any,
    *,
    machines: int,
    scale: float,
    skew_s: float,
    mode: str,
    processes: int = 2,
) -> Result:
    """Run the fleet on ``repo``'s database (emptied first) from ``processes`` processes,
    process 0's clock ``skew_s`` full-scale seconds ahead (``skew_s / scale`` real ones)."""
    repo.reset()
    url = repo.engine.url.render_as_string(hide_password=False)
    spec = attrs.asdict(repo.mapping, recurse=False)
    spec = {k: dict(v) if isinstance(v, Mapping) else v for k, v in spec.items()}
    shares = fleet(machines, scale=scale, processes=processes)
    policy = scaled_policy(scale)
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Array("i", machines)
    results = ctx.Queue()
    start_at = time.time() + 3.0  # spawned processes import the library meanwhile
    procs = [
        ctx.Process(
            target=_server,
            args=(
                url,
                spec,
                share,
                skew_s / scale if p == 0 else 0.0,
                mode,
                policy,
                start_at,
                done,
                results,
            ),
        )
        for p, share in enumerate(shares)
    ]
    for proc in procs:
        proc.start()
    answered: list[tuple[int, str, str]] = []
    try:
        for _ in procs:
            answered += results.get(timeout=300)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():  # pragma: no cover - only when something already failed
                proc.terminate()
    workers = {w.id: w for w in repo.all_workers()}

    def root(worker_id: str) -> str:
        while workers[worker_id].merged_into is not None:
            worker_id = workers[worker_id].merged_into
        return worker_id

    per_machine: dict[int, set[str]] = {}
    per_worker: dict[str, set[int]] = {}
    errors = [r for _, r, _ in answered if r.startswith("error:")]
    for m, r, _ in answered:
        if r.startswith(("error:", "refused:")):
            continue
        per_machine.setdefault(m, set()).add(root(r))
        per_worker.setdefault(root(r), set()).add(m)
    return Result(
        requests=len(answered),
        errors=errors,
        split=sum(1 for ids in per_machine.values() if len(ids) > 1),
        mixed=sum(1 for ms in per_worker.values() if len(ms) > 1),
    )
