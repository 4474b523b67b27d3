"""The shipped corpus: every trace, under every shipped policy, on every store, prints exactly
its checked-in expected output; and what the outputs show agrees with the ground truth.

Regenerate the corpus with ``python tests/build_corpus.py`` (then read the diff).
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path

import pytest

import workermatch as wm
from _stores import StoreFactory
from build_corpus import attribution, scenarios, truth_map
from workermatch import trace
from workermatch._cli import main

CORPUS = Path(str(resources.files("workermatch") / "corpus"))
EXPECTED = Path(__file__).resolve().parents[1] / "corpus_expected"
TRACES = sorted(p.stem for p in CORPUS.glob("*.jsonl"))
POLICY_NAMES = ("default", "note", "legacy")

# Scenarios whose sessions can be told apart without guessing: the default policy must give one
# worker per session, and never give one worker two sessions.
SOLVABLE = (
    "note-three-workers",
    "fast-gui-start",
    "slow-gui-start",
    "batch-next-claim",
    "midrun-flip-heartbeat-first",
    "two-runs-one-machine-hints",
    "nat-two-machines-hints",
    "midrun-flip-fresh-claim",
)
# Scenarios that cannot be told apart without hints: the default policy must say so.
AMBIGUOUS = (
    "simultaneous-starts-vpn",
    "nat-two-machines-hostnames",
    "nat-two-machines-no-hostnames",
    "two-runs-one-machine",
    "cloned-hostnames",
    "shared-vpn-first-heartbeat",
    "nat-long-runs-no-hostnames",
)


def trace_lines(name: str) -> list[str]:
    return (CORPUS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()


def expected(name: str, policy_name: str) -> str:
    return (EXPECTED / f"{name}.{policy_name}.jsonl").read_text(encoding="utf-8")


def replay_text(repo: wm.WorkerRepository, name: str, policy: wm.Policy) -> str:
    """What ``workermatch replay --jsonl`` prints, computed through the library."""
    records = list(trace.parse_trace(trace_lines(name)))
    out = [trace.dump_json(line.to_dict()) for line in trace.replay(records, repo, policy)]
    latest = max(r.at for r in records)
    out.append(trace.dump_json(trace.final_state(repo, latest, policy)))
    return "".join(f"{line}\n" for line in out)


def test_the_corpus_has_a_trace_per_hard_case_and_note_scenario() -> None:
    assert set(TRACES) == {sc.name for sc in scenarios()}
    assert set(SOLVABLE) | set(AMBIGUOUS) <= set(TRACES)
    assert sorted(p.name for p in EXPECTED.iterdir()) == sorted(
        f"{name}.{policy}.jsonl" for name in TRACES for policy in POLICY_NAMES
    )


@pytest.mark.parametrize("name", TRACES)
def test_the_checked_in_trace_is_what_the_build_script_makes(name: str) -> None:
    (scenario,) = [sc for sc in scenarios() if sc.name == name]
    assert trace_lines(name) == scenario.lines()


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
@pytest.mark.parametrize("name", TRACES)
def test_every_store_prints_the_expected_output(
    store_factory: StoreFactory, name: str, policy_name: str
) -> None:
    repo = store_factory(wm.sequential_ids())
    assert replay_text(repo, name, wm.get_policy(policy_name)) == expected(name, policy_name), (
        "if the engine's behaviour changed on purpose, run python tests/build_corpus.py and "
        "read the diff of tests/corpus_expected/"
    )


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
@pytest.mark.parametrize("name", TRACES)
def test_the_command_prints_the_expected_output(name: str, policy_name: str) -> None:
    out = io.StringIO()
    path = str(CORPUS / f"{name}.jsonl")
    assert main(["replay", path, "--jsonl", "--policy", policy_name], stdout=out) == 0
    assert out.getvalue() == expected(name, policy_name)


@pytest.mark.parametrize("name", SOLVABLE)
def test_default_gives_one_worker_per_session_where_semantics_says_it_can(name: str) -> None:
    by_session, by_worker = truth_map(trace_lines(name), expected(name, "default"))
    assert attribution(trace_lines(name), expected(name, "default")) == "one worker per session"
    assert all(len(workers) == 1 for workers in by_session.values())
    assert all(len(sessions) == 1 for sessions in by_worker.values())
    state = json.loads(expected(name, "default").splitlines()[-1])
    assert {a["status"] for a in state["assignments"]} == {"COMPLETED"}


@pytest.mark.parametrize("name", AMBIGUOUS)
def test_default_flags_the_cases_it_cannot_tell_apart(name: str) -> None:
    results = [json.loads(x) for x in expected(name, "default").splitlines()[:-1]]
    assert any(r["ambiguous"] for r in results)


@pytest.mark.parametrize("name", TRACES)
def test_default_never_merges_sessions_in_a_trace_without_flagging_a_decision(name: str) -> None:
    # A trace in which one worker received events of two sessions shows at least one ambiguous
    # decision: no silent merge.  (The merging decision itself may have had one candidate left:
    # in simultaneous-starts-vpn the third GUI takes the last orphan left by an earlier
    # ambiguous tie-break.)
    lines = trace_lines(name)
    results = [json.loads(x) for x in expected(name, "default").splitlines()[:-1]]
    _, by_worker = truth_map(lines, expected(name, "default"))
    if any(len(sessions) > 1 for sessions in by_worker.values()):
        assert any(r["ambiguous"] for r in results)
