"""Build the shipped corpus of traces (``src/workermatch/corpus/``) and its expected outputs
(``tests/corpus_expected/``).

Run ``python tests/build_corpus.py`` after changing a scenario here, or after a deliberate
change of the engine's behaviour: it rewrites every trace, every expected output (the
``workermatch replay --jsonl`` text of each trace under each shipped policy, on the in-memory
store) and the corpus README.  Then read the diff: every changed expected line is a changed
decision.  ``tests/test_corpus.py`` checks that every store prints exactly these outputs.

Each scenario is a handful of machine sessions at the real client's timing (a claim without
hostname; the GUI starting later, often on another address, with two simultaneous heartbeats
that carry the hostname; a progress update every few seconds; a heartbeat every 30 s; five
100 % messages 0.5 s apart and ``finished``), merged in arrival order.  Ground truth goes under
``truth``: ``{"machine": ..., "session": ...}``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import workermatch as wm
from _fleet import request_line
from workermatch import lab, trace

CORPUS = Path(__file__).resolve().parent.parent / "src" / "workermatch" / "corpus"
#: The expected outputs live with the tests; the traces ship with the package as examples.
EXPECTED = Path(__file__).resolve().parent / "corpus_expected"
POLICY_NAMES = ("default", "note", "legacy")
T0 = datetime(2025, 11, 6, 10, 0, 0, tzinfo=timezone.utc)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass
class Session:
    """One run of the client on one machine at chosen times (seconds from :data:`T0`): laid out
    by the client model of :mod:`workermatch.lab`, with a progress update every
    ``update_every`` seconds from ``update_offset`` after the GUI starts."""

    machine: str
    session: str
    assignment: str
    claim_at: float
    claim_ip: str
    gui_at: float
    gui_ip: str
    end_at: float
    hostname: str | None = None
    update_every: float = 5.0
    flips: Sequence[tuple[float, str]] = ()
    """(time, address): the GUI's address from that time on (a VPN reconnecting)."""
    hints: bool = False
    """The client names its assignment on every request after the claim."""
    update_offset: float = 0.4

    def requests(self) -> list[lab.Request]:
        gui_at, end_at = _ms(self.gui_at), _ms(self.end_at)
        return lab.session_requests(
            assignment=self.assignment,
            claim_at=_ms(self.claim_at),
            claim_ip=self.claim_ip,
            gui_at=gui_at,
            end_at=end_at,
            addresses=[(gui_at, self.gui_ip), *((_ms(t), ip) for t, ip in self.flips)],
            updates=lab.every(
                gui_at + _ms(self.update_offset), _ms(self.update_every), end_at - lab.FINALE_MS
            ),
            hostname=self.hostname,
            hints=self.hints,
        )


@dataclass
class Scenario:
    name: str
    title: str
    what: str
    sessions: list[Session] = field(default_factory=list)

    def lines(self) -> list[str]:
        timed: list[tuple[int, int, dict[str, object]]] = []
        for order, s in enumerate(self.sessions):
            truth = {"machine": s.machine, "session": s.session}
            for r in s.requests():
                timed.append((r.at_ms, order, request_line(T0, r, truth)))
        timed.sort(key=lambda item: (item[0], item[1]))
        return [trace.dump_json(line) for _, _, line in timed]


A = "157.193.240.188"  # the note's claim address
B = "157.193.240.190"  # the note's GUI address
HOST = "UG-GNS0S34"


def flip_before_heartbeat() -> Session:
    """One run whose VPN flips 0.1 s before a heartbeat, so that the heartbeat is the first
    request from the new address (the next update comes 2.4 s into each 5 s period)."""
    return Session(
        "m1", "m1-s1", "A1", 0, A, 20, A, 600, HOST, flips=[(379.9, B)], update_offset=2.4
    )


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            "note-three-workers",
            "The design note's story, as the note imagined it",
            "A claim from one VPN address without hostname; the GUI starts 45 s later on "
            "another address. One session: the right answer is one worker with A1 COMPLETED.",
            [Session("m1", "m1-s1", "A1", 0, A, 45, B, 300, HOST)],
        ),
        Scenario(
            "fast-gui-start",
            "Fast GUI start (8 s after the claim), on another address",
            "The note's 'quiet for 30 s' condition makes the claim worker too fresh: the note "
            "policy creates a second worker and strands A1; the default policy does not.",
            [Session("m1", "m1-s1", "A1", 0, A, 8, B, 240, HOST)],
        ),
        Scenario(
            "batch-next-claim",
            "Batch mode: the same machine claims the next assignment",
            "Two sessions one after the other on one machine, same address and hostname. "
            "Sessions stay apart: two workers, A1 and A2 each COMPLETED on its own.",
            [
                Session("m1", "m1-s1", "A1", 0, A, 20, A, 180, HOST),
                Session("m1", "m1-s2", "A2", 183.5, A, 200, A, 360, HOST),
            ],
        ),
        Scenario(
            "midrun-flip-no-hostname",
            "Mid-run IP change first seen on a request without hostname",
            "The VPN flips 6 min into the run; the next gui_update (no hostname) comes before "
            "the next heartbeat. Without hints the chain cannot link the new address to the "
            "session: a second worker appears, the old one goes silent holding A1.",
            [Session("m1", "m1-s1", "A1", 0, A, 20, A, 600, HOST, flips=[(380.2, B)])],
        ),
        Scenario(
            "midrun-flip-heartbeat-first",
            "Mid-run IP change first seen on a heartbeat (with hostname)",
            "The VPN flips just before a heartbeat: the hostname links the new address to the "
            "session (rule hostname), and the run stays one worker.",
            [
                flip_before_heartbeat(),
            ],
        ),
        Scenario(
            "simultaneous-starts-vpn",
            "Simultaneous starts on one VPN",
            "Three machines claim within 40 s from three VPN addresses; their GUIs appear on "
            "three new addresses 60-80 s later. Each first heartbeat sees three recent orphans "
            "it cannot tell apart (ambiguous): a tie-break can hand one machine's claim to "
            "another machine's GUI (a hijack).",
            [
                Session("m1", "m1-s1", "A1", 0, "145.10.0.11", 60, "145.10.1.11", 300, "lab-pc-1"),
                Session("m2", "m2-s1", "A2", 20, "145.10.0.12", 70, "145.10.1.12", 310, "lab-pc-2"),
                Session("m3", "m3-s1", "A3", 40, "145.10.0.13", 80, "145.10.1.13", 320, "lab-pc-3"),
            ],
        ),
        Scenario(
            "nat-two-machines-hostnames",
            "Two machines behind one NAT address, hostnames known",
            "Two machines share one public address and send their hostnames in heartbeats. "
            "The hostname veto keeps the heartbeats apart; the gui_updates, which carry no "
            "hostname, cannot be told apart (ambiguous exact_ip).",
            [
                Session("m1", "m1-s1", "A1", 0, "193.190.1.5", 10, "193.190.1.5", 240, "lab-01"),
                Session("m2", "m2-s1", "A2", 60, "193.190.1.5", 75, "193.190.1.5", 330, "lab-02"),
            ],
        ),
        Scenario(
            "nat-two-machines-no-hostnames",
            "Two machines behind one NAT address, no hostnames",
            "The same two machines, but no request ever carries a hostname. The session rule "
            "still gives the second claim its own worker; every other request is a guess.",
            [
                Session("m1", "m1-s1", "A1", 0, "193.190.1.5", 10, "193.190.1.5", 240),
                Session("m2", "m2-s1", "A2", 60, "193.190.1.5", 75, "193.190.1.5", 330),
            ],
        ),
        Scenario(
            "nat-two-machines-hints",
            "Two machines behind one NAT address, with assignment hints",
            "The same two machines with hostnames, from a client that names its assignment on "
            "every request: nothing is left to guess.",
            [
                Session(
                    "m1",
                    "m1-s1",
                    "A1",
                    0,
                    "193.190.1.5",
                    10,
                    "193.190.1.5",
                    240,
                    "lab-01",
                    hints=True,
                ),
                Session(
                    "m2",
                    "m2-s1",
                    "A2",
                    60,
                    "193.190.1.5",
                    75,
                    "193.190.1.5",
                    330,
                    "lab-02",
                    hints=True,
                ),
            ],
        ),
        Scenario(
            "two-runs-one-machine",
            "Two runs at once on one machine, no hints",
            "Two clients on one machine (same address, same hostname) run A1 and A2 at once. "
            "Without a strong hint they cannot be told apart: say so (ambiguous).",
            [
                Session("m1", "m1-s1", "A1", 0, A, 15, A, 240, HOST),
                Session("m1", "m1-s2", "A2", 30, A, 45, A, 270, HOST, update_offset=1.9),
            ],
        ),
        Scenario(
            "two-runs-one-machine-hints",
            "Two runs at once on one machine, with assignment hints",
            "The same two runs, from a client that names its assignment on every request: "
            "rule assignment places each request on its own session, two workers, both "
            "COMPLETED.",
            [
                Session("m1", "m1-s1", "A1", 0, A, 15, A, 240, HOST, hints=True),
                Session(
                    "m1", "m1-s2", "A2", 30, A, 45, A, 270, HOST, hints=True, update_offset=1.9
                ),
            ],
        ),
        Scenario(
            "cloned-hostnames",
            "Cloned hostnames",
            "Two machines made from one image share the hostname 'worker-template' at two "
            "sites. While each keeps its address, exact IP keeps them apart; when m2's VPN "
            "flips, its heartbeat's hostname matches both workers (ambiguous).",
            [
                Session(
                    "m1",
                    "m1-s1",
                    "A1",
                    0,
                    "131.174.5.20",
                    10,
                    "131.174.5.20",
                    420,
                    "worker-template",
                ),
                Session(
                    "m2",
                    "m2-s1",
                    "A2",
                    5,
                    "84.195.7.31",
                    15,
                    "84.195.7.31",
                    430,
                    "worker-template",
                    flips=[(284.9, "84.195.7.99")],
                    update_offset=2.4,
                ),
            ],
        ),
        Scenario(
            "midrun-flip-fresh-claim",
            "Mid-run IP change first seen on a heartbeat, with another machine's fresh claim",
            "m1's VPN flips just before a heartbeat, 10 s after m2 claimed A2 from another "
            "address. Rule 3 runs before rule 4, and m2's claim worker has no hostname yet: "
            "without the own-stream rule the heartbeat takes it (a hijack that strands both "
            "runs). The default weighs m1's own fed worker in rule 3, where its hostname "
            "outranks the claim, and flags the guess.",
            [
                flip_before_heartbeat(),
                Session(
                    "m2", "m2-s1", "A2", 370, "145.10.0.12", 400, "145.10.1.12", 660, "lab-pc-2"
                ),
            ],
        ),
        Scenario(
            "shared-vpn-first-heartbeat",
            "A GUI starts on a VPN address that other machines share",
            "m1 runs on VPN address X; m2 claims from Y, m3 claims from X, and m2's GUI then "
            "appears on X. At X the only candidate for m2's first heartbeat is m3's claim "
            "worker, whose hostname is unknown; X is known to be shared (m1's worker there has "
            "another hostname), so the other waiting claim (m2's, at Y) is a rival and the "
            "decision is flagged. The guess is wrong here: m2's heartbeats join m3's claim "
            "worker, and m3's GUI, from Z, then takes the one claim left, m2's (a knock-on of "
            "the flagged guess). Updates from X carry no hostname and are flagged too. The "
            "note puts everything seen at X on one worker.",
            [
                Session("m1", "m1-s1", "A1", 0, "145.10.1.20", 10, "145.10.1.20", 500, "lab-pc-1"),
                Session(
                    "m2", "m2-s1", "A2", 100, "145.10.1.21", 160, "145.10.1.20", 460, "lab-pc-2"
                ),
                Session(
                    "m3", "m3-s1", "A3", 130, "145.10.1.20", 190, "145.10.1.22", 480, "lab-pc-3"
                ),
            ],
        ),
        Scenario(
            "nat-long-runs-no-hostnames",
            "Two long runs behind one NAT address, no hostnames",
            "Two machines share one address and never send a hostname; each run lasts longer "
            "than stale_after. Every update lands on the oldest worker of the address; the "
            "default keeps the other worker alive with it (shared liveness), so each "
            "'finished' ends the run that started first, which here is the right one.",
            [
                Session("m1", "m1-s1", "A1", 0, "193.190.1.5", 10, "193.190.1.5", 900),
                Session("m2", "m2-s1", "A2", 60, "193.190.1.5", 75, "193.190.1.5", 1000),
            ],
        ),
        Scenario(
            "slow-gui-start",
            "Slow GUI start (3.5 min after the claim), on another address",
            "Past the note's 2 min orphan window: the note policy creates a second worker and "
            "strands A1. The default policy's orphan window still links them.",
            [Session("m1", "m1-s1", "A1", 0, A, 210, B, 480, HOST)],
        ),
    ]


def expected_output(lines: Sequence[str], policy: wm.Policy) -> str:
    """``workermatch replay --jsonl`` of ``lines`` under ``policy`` on the in-memory store."""
    from workermatch._cli import main

    path = CORPUS / "_tmp_build.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    try:
        out = io.StringIO()
        status = main(["replay", str(path), "--jsonl", "--policy", policy.name], stdout=out)
        assert status == 0, status
        return out.getvalue()
    finally:
        path.unlink()


def build() -> None:
    expected_dir = EXPECTED
    expected_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sc in scenarios():
        lines = sc.lines()
        (CORPUS / f"{sc.name}.jsonl").write_text(
            "".join(f"{line}\n" for line in lines), encoding="utf-8"
        )
        summary = []
        for name in POLICY_NAMES:
            text = expected_output(lines, wm.get_policy(name))
            (expected_dir / f"{sc.name}.{name}.jsonl").write_text(text, encoding="utf-8")
            summary.append(f"`{name}`: {_summary(text)}; {attribution(lines, text)}")
        rows.append((sc, len(lines), summary))
    readme = [
        "# The workermatch corpus",
        "",
        "Traces in the trace format (`docs/cli-and-traces.md`), one per hard case of the",
        "specification and per scenario of the design note, with ground truth under `truth`.",
        "The project's tests hold the exact output of",
        "`workermatch replay NAME.jsonl --jsonl --policy POLICY`; every store prints the same.",
        "Generated by `tests/build_corpus.py` (do not edit by hand); checked by",
        "`tests/test_corpus.py`.",
        "",
    ]
    for sc, count, summary in rows:
        readme += [f"## `{sc.name}`: {sc.title}", "", sc.what, ""]
        readme += [f"{count} requests. Outcome per policy:", ""]
        readme += [f"- {s}" for s in summary]
        readme.append("")
    (CORPUS / "README.md").write_text("\n".join(readme), encoding="utf-8")


def attribution(trace_lines: Sequence[str], output: str) -> str:
    """Ground truth against the replay: which sessions each worker received, in words."""
    by_session, by_worker = truth_map(trace_lines, output)
    split = {s: ws for s, ws in by_session.items() if len(ws) > 1}
    shared = {w: ss for w, ss in by_worker.items() if len(ss) > 1}
    if not split and not shared:
        return "one worker per session"
    parts = [f"session {s} spread over {', '.join(sorted(ws))}" for s, ws in sorted(split.items())]
    parts += [f"{w} received sessions {', '.join(sorted(ss))}" for w, ss in sorted(shared.items())]
    return "; ".join(parts)


def truth_map(
    trace_lines: Sequence[str], output: str
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Sessions to the workers their requests resolved to, and workers to their sessions."""
    by_session: dict[str, set[str]] = {}
    by_worker: dict[str, set[str]] = {}
    results = [json.loads(x) for x in output.splitlines()][:-1]
    for text, result in zip(trace_lines, results, strict=True):
        session = json.loads(text)["truth"]["session"]
        worker = result["worker"]
        if worker is None:
            continue
        by_session.setdefault(session, set()).add(worker)
        by_worker.setdefault(worker, set()).add(session)
    return by_session, by_worker


def _summary(text: str) -> str:
    lines = [json.loads(x) for x in text.splitlines()]
    state = lines[-1]
    requests = lines[:-1]
    ambiguous = sum(1 for r in requests if r["ambiguous"])
    refused = sum(1 for r in requests if "refused" in r)
    count = len(state["workers"])
    parts = [f"{count} worker{'' if count == 1 else 's'}"]
    parts += [
        f"{a['id']} {a['status']}" + (f" on {a['worker']}" if a["worker"] else "")
        for a in state["assignments"]
    ]
    if ambiguous:
        parts.append(f"{ambiguous} ambiguous")
    if refused:
        parts.append(f"{refused} refused")
    return ", ".join(parts)


if __name__ == "__main__":
    build()
