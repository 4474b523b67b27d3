"""The ``workermatch`` command: replay, demo and corpus, as a user runs them."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import workermatch as wm
from workermatch import trace
from workermatch._cli import main

CORPUS = Path(str(resources.files("workermatch") / "corpus"))
STORY = CORPUS / "note-three-workers.jsonl"
CLAIM = (
    '{"at": "2025-11-06T10:00:01Z", "kind": "claim", "ip": "157.193.240.188", "assignment": "A1"}'
)
HEARTBEAT = (
    '{"at": "2025-11-06T10:00:21Z", "kind": "heartbeat", "ip": "157.193.240.190", '
    '"hostname": "UG-GNS0S34"}'
)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(argv), stdout=out)
    return status, out.getvalue()


def write(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    return err


# -- replay ----------------------------------------------------------------------------------


def test_replay_jsonl_prints_one_line_per_request_then_the_final_state(tmp_path: Path) -> None:
    status, out = run("replay", write(tmp_path, CLAIM, HEARTBEAT), "--jsonl")
    assert status == 0
    assert out == (
        '{"line": 1, "worker": "w1", "rule": "created", "created": true, "ambiguous": false, '
        '"ended": [], "alert": null}\n'
        '{"line": 2, "worker": "w1", "rule": "recent_orphan", "created": false, '
        '"ambiguous": false, "ended": [], "alert": null}\n'
        '{"workers": [{"id": "w1", "ip": "157.193.240.190", "hostname": "ug-gns0s34", '
        '"status": "RUNNING", "stale": false, "merged_into": null}], '
        '"assignments": [{"id": "A1", "status": "RUNNING", "worker": "w1"}], "pending": []}\n'
    )


def test_replay_prints_a_readable_table_by_default(tmp_path: Path) -> None:
    status, out = run("replay", write(tmp_path, CLAIM, HEARTBEAT), "--policy", "note")
    assert status == 0
    assert "under policy 'note', store memory" in out
    assert re.search(
        r"^\s+1\s+10:00:01\.000\s+claim\s+157\.193\.240\.188\s+-\s+w1\s+created", out, re.M
    )
    assert re.search(r"^\s+2\s+10:00:21\.000\s+heartbeat\s+.*ug-gns0s34\s+w2\s+created", out, re.M)
    assert "2 requests; 2 created a worker, 0 ambiguous, 0 refused." in out
    assert re.search(r"^\s+A1\s+RUNNING\s+on w1$", out, re.M)


def test_replay_explain_shows_every_rule_and_candidate(tmp_path: Path) -> None:
    status, out = run("replay", write(tmp_path, CLAIM, HEARTBEAT), "--explain")
    assert status == 0
    assert "| request(ip=157.193.240.190, hostname=ug-gns0s34)" in out
    assert "|   recent_orphan: matched" in out


def test_replay_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    data = f"{CLAIM}\n{HEARTBEAT}\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    status, out = run("replay", "-", "--jsonl")
    assert status == 0
    assert out.count("\n") == 3


def test_replay_of_standard_input_on_a_database_prints_what_memory_prints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A database replay checks the whole trace before it writes anything: standard input is
    # read twice for that.
    pytest.importorskip("sqlalchemy")
    data = STORY.read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    memory = run("replay", "-", "--jsonl")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert run("replay", "-", "--jsonl", "--db", f"sqlite:///{tmp_path / 'stdin.db'}") == memory
    assert memory == run("replay", str(STORY), "--jsonl")


def test_a_bad_last_line_of_a_long_trace_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The output of the lines applied before the bad one is more than is held in memory: it
    # waits on disk, and is dropped with the rest.
    in_memory = run("replay", str(STORY), "--explain")
    monkeypatch.setattr("workermatch._cli._SPOOL_BYTES", 1024)
    assert len(in_memory[1]) > 10 * 1024
    assert run("replay", str(STORY), "--explain") == in_memory
    lines = STORY.read_text(encoding="utf-8").splitlines()
    path = write(tmp_path, *lines, *lines[-1:], "{")
    status, out = run("replay", path, "--explain")
    assert (status, out) == (2, "")
    assert f"line {len(lines) + 2}: not valid JSON" in one_error_line(capsys)


def test_replay_prints_the_corpus_expected_output() -> None:
    expected = (
        Path(__file__).resolve().parents[1] / "corpus_expected" / "note-three-workers.legacy.jsonl"
    ).read_text()
    assert run("replay", str(STORY), "--jsonl", "--policy", "legacy") == (0, expected)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"at": "2025-11-06T10:00:21Z", "kind": "heartbeat", "ip": "1.2.3.4", "x": 1}',
            "unknown key 'x'",
        ),
        ('{"at": "2025-11-06T10:00:21Z", "kind": "heartbeat"}', "missing key 'ip'"),
        (
            '{"at": "2025-11-06T10:00:21Z", "kind": "heartbeat", "ip": "1.2.3"}',
            "not an IPv4 or IPv6",
        ),
        ('{"at": "2025-11-06T10:00:21", "kind": "heartbeat", "ip": "1.2.3.4"}', "no UTC offset"),
        (
            '{"at": "2025-11-06T10:00:21Z", "kind": "claim", "ip": "1.2.3.4"}',
            "must name its assign",
        ),
        ("not json", "not valid JSON"),
    ],
)
def test_a_bad_trace_exits_2_with_one_line_naming_it_and_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    path = write(tmp_path, CLAIM, HEARTBEAT, line, CLAIM)
    status, out = run("replay", path, "--jsonl")
    assert status == 2
    assert out == ""
    err = one_error_line(capsys)
    assert err.startswith(f"workermatch replay: {path}: line 3: ")
    assert message in err


def test_text_that_is_not_utf8_is_a_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(CLAIM.encode() + b"\n" + HEARTBEAT.replace("UG", "\xc9G").encode("latin-1"))
    assert run("replay", str(path)) == (2, "")
    assert "line 2: not UTF-8 text" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "/nonexistent/trace.jsonl"], "cannot read /nonexistent/trace.jsonl"),
        (["replay", "x.jsonl", "--policy", "best"], "invalid choice: 'best'"),
        (["replay"], "the following arguments are required: TRACE"),
        (["replay", "x.jsonl", "--colour"], "unrecognized arguments: --colour"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["corpus", "no-such-trace"], "no corpus trace named 'no-such-trace'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(*argv) == (2, "")
    assert message in one_error_line(capsys)


def test_no_command_prints_help_and_exits_2() -> None:
    status, out = run()
    assert status == 2
    assert "replay" in out
    assert "demo" in out


def test_db_without_the_sql_extra_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes "import workermatch.sql" fail as if SQLAlchemy were missing.
    monkeypatch.setitem(sys.modules, "workermatch.sql", None)
    status, out = run("replay", write(tmp_path, CLAIM), "--db", "sqlite:///x.db")
    assert (status, out) == (2, "")
    line = one_error_line(capsys)
    assert "install the sql extra" in line
    assert "pip install '.[sql]'" in line


def test_replay_on_sqlite_prints_what_memory_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    memory = run("replay", str(STORY), "--jsonl")
    assert run("replay", str(STORY), "--jsonl", "--db", url) == memory
    # The store now holds workers: a second replay refuses it, unless --reset empties it.
    assert run("replay", str(STORY), "--jsonl", "--db", url) == (2, "")
    assert "pass --reset" in one_error_line(capsys)
    assert run("replay", str(STORY), "--jsonl", "--db", url, "--reset") == memory


def test_a_bad_trace_leaves_the_database_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sqlalchemy")
    db = tmp_path / "untouched.db"
    status, _ = run("replay", write(tmp_path, CLAIM, "{"), "--db", f"sqlite:///{db}")
    assert status == 2
    assert not db.exists()
    one_error_line(capsys)


def test_an_empty_trace_prints_an_empty_final_state(tmp_path: Path) -> None:
    assert run("replay", write(tmp_path), "--jsonl") == (
        0,
        '{"workers": [], "assignments": [], "pending": []}\n',
    )


def test_python_dash_m_workermatch_runs_the_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workermatch", "replay", write(tmp_path, CLAIM), "--jsonl"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        '{"line": 1, "worker": "w1", "rule": "created", "created": true, "ambiguous": false, '
        '"ended": [], "alert": null}'
    )


# -- demo ------------------------------------------------------------------------------------


def summary_rows(out: str) -> dict[str, tuple[int, str]]:
    section = out.split("\nSummary\n", 1)[1]
    rows = {}
    for m in re.finditer(r"^  (.+?)\s{2,}(\d+)  (\w+ on w\d+)\s", section, re.M):
        rows[m.group(1)] = (int(m.group(2)), m.group(3))
    return rows


def test_demo_shows_how_many_workers_each_policy_makes_and_where_a1_ends() -> None:
    status, out = run("demo")
    assert status == 0
    assert summary_rows(out) == {
        "legacy": (2, "RUNNING on w1"),
        "legacy, racing": (3, "RUNNING on w1"),
        "note": (2, "RUNNING on w1"),
        "default": (1, "COMPLETED on w1"),
        "default + hint": (1, "COMPLETED on w1"),
    }
    assert "heartbeat:     recent_orphan -> w1, exact_ip -> w1 x20" in out
    assert "heartbeat:     assignment -> w1 x21" in out
    assert out.count("verdict:       RIGHT") == 2
    assert out.count("verdict:       WRONG") == 3


def test_demo_on_sqlite_prints_what_memory_prints(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    memory = run("demo")
    assert run("demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}") == memory


def test_demo_writes_its_story_as_a_replayable_trace(tmp_path: Path) -> None:
    path = tmp_path / "story.jsonl"
    status, out = run("demo", "--write-trace", str(path))
    assert status == 0
    assert f"Wrote the story (without hints) to {path}." in out
    records = list(trace.parse_trace(path.read_text().splitlines()))
    assert records[0].event == wm.Event.claim("157.193.240.188", "A1")
    status, jsonl = run("replay", str(path), "--jsonl")
    assert status == 0
    assert '"assignments": [{"id": "A1", "status": "COMPLETED", "worker": "w1"}]' in jsonl


# -- corpus ----------------------------------------------------------------------------------


def test_corpus_lists_the_shipped_traces_and_prints_a_path() -> None:
    status, out = run("corpus")
    assert status == 0
    assert "  note-three-workers\n" in out
    status, out = run("corpus", "note-three-workers")
    assert status == 0
    assert Path(out.strip()) == STORY


def test_the_demo_summary_in_the_docs_is_what_the_demo_prints() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli-and-traces.md").read_text()
    documented = doc.split("```\nSummary\n", 1)[1].split("```", 1)[0]
    status, out = run("demo")
    assert status == 0
    assert "\nSummary\n" + documented in out
    assert "317 requests" in doc
    assert "1 claim, 21 heartbeats and 295 gui_updates" in out


def test_a_store_that_cannot_be_reached_exits_1_without_showing_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    url = "postgresql://someone:s3cret@127.0.0.1:1/nothing"
    assert run("replay", write(tmp_path, CLAIM), "--db", url) == (1, "")
    err = one_error_line(capsys)
    assert err.startswith("workermatch replay: --db postgresql://someone:***@127.0.0.1:1/nothing: ")
    assert "s3cret" not in err
