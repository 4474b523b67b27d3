"""The trace format: reading, writing and replaying traces (docs/cli-and-traces.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import workermatch as wm
from workermatch import trace
from workermatch.trace import TraceError, TraceRecord

T0 = datetime(2025, 11, 6, 10, 0, 1, tzinfo=timezone.utc)
CLAIM = (
    '{"at": "2025-11-06T10:00:01Z", "kind": "claim", "ip": "157.193.240.188", "assignment": "A1"}'
)
HEARTBEAT = (
    '{"at": "2025-11-06T10:00:21Z", "kind": "heartbeat", "ip": "157.193.240.190", '
    '"hostname": "UG-GNS0S34"}'
)
UPDATE = (
    '{"at": "2025-11-06T10:00:21.4Z", "kind": "gui_update", "ip": "157.193.240.190", '
    '"message": "overall_progress"}'
)
FINISHED = (
    '{"at": "2025-11-06T10:10:02Z", "kind": "gui_update", "ip": "157.193.240.190", '
    '"message": "finished"}'
)
SPEC_EXAMPLE = [CLAIM, HEARTBEAT, UPDATE, FINISHED]


def fresh() -> wm.InMemoryWorkerRepository:
    return wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())


def replayed(lines: list[str], policy: wm.Policy = wm.DEFAULT_POLICY) -> list[dict[str, object]]:
    repo = fresh()
    return [r.to_dict() for r in trace.replay(trace.parse_trace(lines), repo, policy)]


# -- reading ---------------------------------------------------------------------------------


def test_the_spec_example_parses_into_events() -> None:
    records = list(trace.parse_trace(SPEC_EXAMPLE))
    assert [r.line for r in records] == [1, 2, 3, 4]
    assert records[0].event == wm.Event.claim("157.193.240.188", "A1")
    assert records[1].event == wm.Event.heartbeat("157.193.240.190", hostname="ug-gns0s34")
    assert records[2].at == T0 + timedelta(seconds=20.4)
    assert records[3].event.message == "finished"


def test_the_spec_example_replays_to_one_worker() -> None:
    repo = fresh()
    records = list(trace.parse_trace(SPEC_EXAMPLE))
    lines = [r.to_dict() for r in trace.replay(records, repo, wm.DEFAULT_POLICY)]
    assert lines[0] == {
        "line": 1,
        "worker": "w1",
        "rule": "created",
        "created": True,
        "ambiguous": False,
        "ended": [],
        "alert": None,
    }
    # The example is abridged: ten silent minutes pass before "finished", so w1 is stale by
    # then; the finished request makes w2, which takes over A1 from the stale w1 and completes
    # it.
    assert [line["rule"] for line in lines] == ["created", "recent_orphan", "exact_ip", "created"]
    assert [line["worker"] for line in lines] == ["w1", "w1", "w1", "w2"]
    state = trace.final_state(repo, records[-1].at, wm.DEFAULT_POLICY)
    assert state == {
        "workers": [
            {
                "id": "w1",
                "ip": "157.193.240.190",
                "hostname": "ug-gns0s34",
                "status": "IDLE",
                "stale": True,
                "merged_into": None,
            },
            {
                "id": "w2",
                "ip": "157.193.240.190",
                "hostname": None,
                "status": "IDLE",
                "stale": False,
                "merged_into": None,
            },
        ],
        "assignments": [{"id": "A1", "status": "COMPLETED", "worker": "w2"}],
        "pending": [],
    }
    assert list(state["workers"][0]) == ["id", "ip", "hostname", "status", "stale", "merged_into"]
    assert list(state["assignments"][0]) == ["id", "status", "worker"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"at": "2025-11-06T10:00:01Z", "kind": "claim"', "not valid JSON"),
        ('["claim"]', "must be a JSON object, not an array"),
        (CLAIM[:-1] + ', "colour": "red"}', "unknown key 'colour'"),
        ('{"at": "2025-11-06T10:00:01Z", "kind": "register"}', "missing key 'ip'"),
        ('{"kind": "register", "ip": "10.0.0.1"}', "missing key 'at'"),
        ('{"at": "2025-11-06T10:00:01Z", "ip": "10.0.0.1"}', "missing key 'kind'"),
        (CLAIM.replace("10:00:01Z", "10:00:01"), "has no UTC offset"),
        (CLAIM.replace("2025-11-06T10:00:01Z", "yesterday"), "is not an RFC 3339 time"),
        (CLAIM.replace("2025-11-06T10:00:01Z", "2025-02-30T10:00:01Z"), "is not a valid time"),
        (CLAIM.replace('"2025-11-06T10:00:01Z"', "1762423201"), "must be an RFC 3339 time string"),
        (CLAIM.replace("157.193.240.188", "157.193.240.300"), "not an IPv4 or IPv6 address"),
        (CLAIM.replace('"157.193.240.188"', "null"), "ip must be a string"),
        (CLAIM.replace('"claim"', '"ping"'), "kind 'ping' is not one of"),
        (CLAIM.replace(', "assignment": "A1"', ""), "a claim must name its assignment"),
        (CLAIM.replace(', "assignment": "A1"', ', "assignment": null'), "must name its assign"),
        (HEARTBEAT.replace('"UG-GNS0S34"', '"bad host"'), "white space"),
        (HEARTBEAT.replace('"UG-GNS0S34"', "7"), "hostname must be a string, not a number"),
        (HEARTBEAT[:-1] + ', "truth": [1]}', "truth must be an object"),
        (HEARTBEAT[:-1] + ', "ip": "10.0.0.1"}', "duplicate key 'ip'"),
        (HEARTBEAT[:-1] + ', "worker_id": ""}', "worker_id"),
    ],
)
def test_a_bad_line_is_an_error_that_names_it(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message) as info:
        list(trace.parse_trace([CLAIM, "", text]))
    assert info.value.line == 3
    assert str(info.value).startswith("line 3: ")
    assert isinstance(info.value, wm.InvalidInput)
    assert "\n" not in str(info.value)


def test_a_trace_error_is_raised_lazily_when_reached() -> None:
    records = trace.parse_trace([CLAIM, HEARTBEAT, "{oops"])
    assert next(records).line == 1
    assert next(records).line == 2
    with pytest.raises(TraceError):
        next(records)


def test_nothing_after_a_bad_line_is_applied() -> None:
    repo = fresh()
    results = trace.replay(trace.parse_trace([CLAIM, "{oops", HEARTBEAT]), repo, wm.DEFAULT_POLICY)
    assert next(results).line == 1
    with pytest.raises(TraceError) as info:
        next(results)
    assert info.value.line == 2
    assert [w.id for w in repo.all_workers()] == ["w1"]


def test_a_replay_reads_one_line_at_a_time() -> None:
    # A trace is replayed as it is read: a trace of any length is never held whole.
    read: list[str] = []

    def lines() -> Iterator[str]:
        for line in SPEC_EXAMPLE:
            read.append(line)
            yield line

    results = trace.replay(trace.parse_trace(lines()), fresh(), wm.DEFAULT_POLICY)
    assert read == []
    assert next(results).line == 1
    assert read == SPEC_EXAMPLE[:1]
    assert next(results).line == 2
    assert read == SPEC_EXAMPLE[:2]
    assert [r.line for r in results] == [3, 4]


def test_blank_lines_are_skipped_but_counted() -> None:
    records = list(trace.parse_trace(["", CLAIM, "   \n", HEARTBEAT + "\n"]))
    assert [r.line for r in records] == [2, 4]


def test_optional_keys_may_be_null() -> None:
    (record,) = trace.parse_trace(
        [
            '{"at": "2025-11-06T10:00:01Z", "kind": "heartbeat", "ip": "10.0.0.1", '
            '"hostname": null, "assignment": null, "worker_id": null, "message": null, '
            '"truth": null}'
        ]
    )
    assert record.event == wm.Event.heartbeat("10.0.0.1")
    assert record.truth is None


def test_hints_and_truth_are_read() -> None:
    (record,) = trace.parse_trace(
        [
            '{"at": "2025-11-06T10:00:21Z", "kind": "gui_update", "ip": "10.0.0.1", '
            '"assignment": "A1", "worker_id": "w1", "truth": {"machine": "m1", "session": "s"}}'
        ]
    )
    assert record.event.identity == wm.Identity(ip="10.0.0.1", worker_id="w1", assignment_id="A1")
    assert record.event.assignment_id is None
    assert record.truth == {"machine": "m1", "session": "s"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-11-06T10:00:01Z", T0),
        ("2025-11-06t10:00:01z", T0),
        ("2025-11-06 10:00:01Z", T0),
        ("2025-11-06T11:00:01+01:00", T0),
        ("2025-11-06T05:30:01-04:30", T0),
        ("2025-11-06T10:00:01.0004999Z", T0),
        ("2025-11-06T10:00:01.123456789Z", T0 + timedelta(milliseconds=123)),
    ],
)
def test_times_are_rfc3339_with_an_offset_read_to_the_millisecond(
    text: str, expected: datetime
) -> None:
    assert trace.parse_time(text) == expected


def test_times_may_go_back_by_a_small_skew_only() -> None:
    back = CLAIM.replace("10:00:01Z", "09:59:56Z").replace("A1", "A2")
    assert len(list(trace.parse_trace([CLAIM, back]))) == 2  # 5 s back: accepted
    too_far = CLAIM.replace("10:00:01Z", "09:59:55.999Z").replace("A1", "A2")
    with pytest.raises(TraceError, match=r"goes back 5\.001 s") as info:
        list(trace.parse_trace([CLAIM, too_far]))
    assert info.value.line == 2


def test_skew_is_measured_from_the_latest_time_seen() -> None:
    later = HEARTBEAT  # 10:00:21
    early = CLAIM.replace("10:00:01Z", "10:00:18Z").replace("A1", "A2")  # 3 s back: fine
    earlier = CLAIM.replace("10:00:01Z", "10:00:15Z").replace("A1", "A3")  # 6 s back from 21
    with pytest.raises(TraceError) as info:
        list(trace.parse_trace([CLAIM, later, early, earlier]))
    assert info.value.line == 4


# -- writing ---------------------------------------------------------------------------------


def test_record_to_dict_writes_keys_in_order_and_leaves_out_absent_ones() -> None:
    (claim, heartbeat, update, _) = trace.parse_trace(SPEC_EXAMPLE)
    assert trace.dump_record(claim) == CLAIM
    assert trace.record_to_dict(heartbeat) == {
        "at": "2025-11-06T10:00:21Z",
        "kind": "heartbeat",
        "ip": "157.193.240.190",
        "hostname": "ug-gns0s34",
    }
    assert trace.record_to_dict(update)["at"] == "2025-11-06T10:00:21.400Z"


ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
hostnames = st.one_of(st.none(), st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True))
ids = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True))
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]
    ),
)


@st.composite
def records(draw: st.DrawFn) -> TraceRecord:
    kind = draw(st.sampled_from(list(wm.EventKind)))
    ip, hostname, worker_id = draw(ips), draw(hostnames), draw(ids)
    message = draw(st.one_of(st.none(), st.sampled_from(["finished", "fatal_error", "x é"])))
    if kind is wm.EventKind.CLAIM:
        event = wm.Event(
            kind=kind,
            identity=wm.Identity(ip=ip, hostname=hostname, worker_id=worker_id),
            assignment_id=draw(ids.filter(lambda x: x is not None)),
            message=message,
        )
    else:
        event = wm.Event(
            kind=kind,
            identity=wm.Identity(
                ip=ip, hostname=hostname, worker_id=worker_id, assignment_id=draw(ids)
            ),
            message=message,
        )
    truth = draw(st.one_of(st.none(), st.just({"machine": "m1", "session": "m1-s1"})))
    return TraceRecord(line=1, at=wm.normalize_time(draw(times)), event=event, truth=truth)


@given(records())
def test_writing_then_reading_a_record_gives_it_back(record: TraceRecord) -> None:
    text = trace.dump_record(record)
    assert "\n" not in text
    (back,) = trace.parse_trace([text])
    assert back == record
    assert json.loads(text) == trace.record_to_dict(record)


# -- replaying -------------------------------------------------------------------------------


def test_a_refused_claim_is_reported_not_raised() -> None:
    # Another machine claims A1 while the first machine's GUI is feeding w1 (hostname known,
    # not quiet): no rule links the claim to w1, and A1 runs on a live worker.
    other = CLAIM.replace("157.193.240.188", "10.9.9.9").replace("10:00:01", "10:00:30")
    lines = replayed([CLAIM, HEARTBEAT, other])
    assert lines[2] == {
        "line": 3,
        "worker": None,
        "rule": "created",
        "created": False,
        "ambiguous": False,
        "ended": [],
        "alert": None,
        "refused": "running_elsewhere",
    }


def test_a_claim_of_a_finished_assignment_is_refused() -> None:
    again = CLAIM.replace("10:00:01", "10:10:05")
    lines = replayed([*SPEC_EXAMPLE, again])
    assert lines[-1]["refused"] == "already_finished"
    assert lines[-1]["worker"] is None


def test_a_policy_that_refuses_ambiguity_reports_it() -> None:
    policy = wm.DEFAULT_POLICY.evolve(name="strict", on_ambiguous=wm.OnAmbiguous.REFUSE)
    twin = CLAIM.replace("A1", "A2").replace("10:00:01", "10:00:02")
    update = UPDATE.replace("157.193.240.190", "157.193.240.188")
    lines = replayed([CLAIM, twin, update], policy)
    assert lines[2] == {
        "line": 3,
        "worker": None,
        "rule": "exact_ip",
        "created": False,
        "ambiguous": True,
        "ended": [],
        "alert": None,
        "refused": "ambiguous",
    }


def test_final_state_sorts_ids_as_numbers_and_evaluates_staleness_at_the_given_time() -> None:
    repo = fresh()
    lines = [
        json.dumps(
            {
                "at": trace.format_time(T0 + timedelta(seconds=i)),
                "kind": "register",
                "ip": f"10.0.0.{i + 1}",
            }
        )
        for i in range(11)
    ]
    records = list(trace.parse_trace(lines))
    list(trace.replay(records, repo, wm.DEFAULT_POLICY))
    state = trace.final_state(repo, records[-1].at, wm.DEFAULT_POLICY)
    assert [w["id"] for w in state["workers"]] == [f"w{i}" for i in range(1, 12)]
    assert not any(w["stale"] for w in state["workers"])
    later = trace.final_state(repo, T0 + timedelta(minutes=5, seconds=5), wm.DEFAULT_POLICY)
    assert [w["stale"] for w in later["workers"]] == [True] * 5 + [False] * 6


def test_two_replays_of_one_trace_print_the_same_text() -> None:
    assert replayed(SPEC_EXAMPLE) == replayed(SPEC_EXAMPLE)


# -- the docs' worked example is what the code does -------------------------------------------


def test_the_worked_example_in_the_docs_prints_what_the_docs_say() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cli-and-traces.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```json\n")[1:]]
    story, default_out, note_out = (b.strip().splitlines() for b in blocks[:3])
    for policy, documented in ((wm.DEFAULT_POLICY, default_out), (wm.NOTE_POLICY, note_out)):
        repo = fresh()
        records = list(trace.parse_trace(story))
        printed = [trace.dump_json(r.to_dict()) for r in trace.replay(records, repo, policy)]
        printed.append(trace.dump_json(trace.final_state(repo, records[-1].at, policy)))
        assert printed == documented
