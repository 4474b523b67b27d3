"""Value types: validation, normalisation, reprs that are valid Python, immutability."""

from __future__ import annotations

import datetime as dt
import ipaddress
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import workermatch as wm
from _times import NOW
from workermatch._model import evolve_valid
from workermatch.testing import assignments, workers

# Everything a repr may name: the public names and the datetime module.
NAMESPACE: dict[str, Any] = {name: getattr(wm, name) for name in wm.__all__}
NAMESPACE["datetime"] = dt


def new_repo() -> wm.InMemoryWorkerRepository:
    return wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())


# ---------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize(
    "spelling",
    [
        "2001:db8::1",
        "2001:DB8::1",
        "2001:0db8:0000:0000:0000:0000:0000:0001",
        "2001:db8:0:0::1",
        "[2001:db8::1]",
        "[2001:DB8:0::0001]",
        ipaddress.IPv6Address("2001:db8::1"),
    ],
)
def test_every_spelling_of_an_ipv6_address_is_one_address(spelling: object) -> None:
    assert wm.normalize_ip(spelling) == "2001:db8::1"
    assert wm.Identity(ip=spelling).ip == "2001:db8::1"


@pytest.mark.parametrize(
    "spelling",
    ["10.0.0.1", "::ffff:10.0.0.1", "::FFFF:10.0.0.1", "::ffff:a00:1", "[::ffff:10.0.0.1]"],
)
def test_an_ipv4_mapped_ipv6_address_is_the_ipv4_address(spelling: str) -> None:
    assert wm.normalize_ip(spelling) == "10.0.0.1"


@pytest.mark.parametrize("spelling", ["UG-GNS0S34", "ug-gns0s34", "Ug-Gns0S34.", "ug-gns0s34."])
def test_a_hostname_in_any_case_with_or_without_trailing_dot_is_one_hostname(
    spelling: str,
) -> None:
    assert wm.normalize_hostname(spelling) == "ug-gns0s34"
    assert wm.Identity(ip="10.0.0.1", hostname=spelling).hostname == "ug-gns0s34"


def test_hostnames_keep_the_characters_windows_machines_use() -> None:
    assert wm.normalize_hostname("DESKTOP_01.Lab.Example.") == "desktop_01.lab.example"
    assert wm.normalize_hostname("Büro-PC") == "büro-pc"


def test_the_longest_hostnames_and_labels_are_accepted() -> None:
    longest = ".".join(["a" * 63] * 3) + "." + "b" * 61
    assert len(longest) == wm._model.MAX_HOSTNAME_LENGTH
    assert wm.normalize_hostname(longest + ".") == longest


def test_times_become_utc_at_millisecond_resolution() -> None:
    cet = timezone(timedelta(hours=1))
    local = datetime(2025, 11, 6, 13, 0, 0, 123_987, tzinfo=cet)
    assert wm.normalize_time(local) == datetime(2025, 11, 6, 12, 0, 0, 123_000, tzinfo=timezone.utc)
    assert wm.normalize_time(local).tzinfo is timezone.utc
    worker = wm.Worker(id="w1", ip="10.0.0.1", created_at=local, last_seen=local)
    assert worker.created_at == worker.last_seen == wm.normalize_time(local)


def test_spellings_identify_the_same_machine_end_to_end() -> None:
    # A dual-stack server sees the claim over IPv4-mapped IPv6, the GUI's updates as plain IPv4,
    # and heartbeats with the hostname in whatever case the OS reports it.
    repo = new_repo()
    wm.apply_event(
        wm.Event.claim("::ffff:157.193.240.188", "A1"), NOW, repo, create_assignments=True
    )
    steps = [
        wm.Event.heartbeat("157.193.240.188", hostname="UG-GNS0S34."),
        wm.Event.gui_update("[::ffff:157.193.240.188]", "progress"),
        wm.Event.heartbeat("2001:DB8::7", hostname="ug-gns0s34"),  # a move to IPv6
        wm.Event.gui_update("[2001:db8:0:0::7]", "progress"),
        wm.Event.heartbeat("2001:0db8::0007", hostname="Ug-Gns0S34"),
        wm.Event.gui_update("2001:db8::7", "finished"),
    ]
    rules = [
        wm.apply_event(e, NOW + timedelta(seconds=i + 1), repo).rule for i, e in enumerate(steps)
    ]
    assert rules == [
        wm.Rule.EXACT_IP,
        wm.Rule.EXACT_IP,
        wm.Rule.HOSTNAME,
        wm.Rule.EXACT_IP,
        wm.Rule.EXACT_IP,
        wm.Rule.EXACT_IP,
    ]
    (worker,) = repo.all_workers()
    assert (worker.ip, worker.hostname) == ("2001:db8::7", "ug-gns0s34")
    (assignment,) = repo.all_assignments()
    assert assignment.status is wm.AssignmentStatus.COMPLETED


# ---------------------------------------------------------------------------------------------
# Reprs are valid Python


def _values() -> list[object]:
    repo = new_repo()
    outcome = wm.apply_event(
        wm.Event.claim("2001:db8::1", "A1", hostname="Box"),
        NOW,
        repo,
        create_assignments=True,
    )
    later = wm.apply_event(
        wm.Event.gui_update("2001:db8::1", "finished"), NOW + timedelta(seconds=1), repo
    )
    worker = wm.Worker(
        id="w1",
        ip="10.0.0.1",
        hostname="box",
        created_at=NOW,
        last_seen=NOW + timedelta(seconds=1, milliseconds=5),
        status=wm.WorkerStatus.ERROR,
        stale=True,
        assignment_id="A1",
        ended_at=NOW,
        merged_into="w0",
    )
    assignment = wm.Assignment(
        id="A1",
        status=wm.AssignmentStatus.FAILED,
        worker_id="w1",
        started_at=NOW,
        ended_at=NOW,
    )
    return [
        wm.Identity(ip="10.0.0.1"),
        wm.Identity(ip="::1", hostname="Box.", worker_id="w1", assignment_id="A1"),
        wm.Event.claim("10.0.0.1", "A1"),
        wm.Event.heartbeat("10.0.0.1", hostname="box", worker_id="w1", assignment_id="A1"),
        wm.Event.gui_update("10.0.0.1", "finished"),
        wm.Event.register("10.0.0.1", hostname="box"),
        worker,
        assignment,
        wm.InsertWorker(worker=worker),
        wm.UpdateWorker(worker=worker),
        wm.InsertAssignment(assignment=assignment),
        wm.UpdateAssignment(assignment=assignment),
        wm.DEFAULT_POLICY,
        wm.NOTE_POLICY,
        wm.LEGACY_POLICY,
        outcome,
        outcome.decision,
        later,
        later.decision.reports[2],
        later.decision.reports[2].candidates[0],
    ]


@pytest.mark.parametrize("value", _values(), ids=lambda v: type(v).__name__)
def test_repr_is_python_that_rebuilds_the_value(value: object) -> None:
    assert eval(repr(value), NAMESPACE) == value


@pytest.mark.parametrize(
    "member",
    [
        *wm.EventKind,
        *wm.WorkerStatus,
        *wm.AssignmentStatus,
        *wm.Rule,
        *wm.Criterion,
        *wm.OrphanCondition,
        *wm.OnAmbiguous,
        *wm.Verdict,
    ],
    ids=repr,
)
def test_enum_members_repr_as_their_qualified_name(member: Any) -> None:
    assert repr(member) == f"{type(member).__name__}.{member.name}"
    assert eval(repr(member), NAMESPACE) is member


# ---------------------------------------------------------------------------------------------
# Frozen, keyword-only


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (wm.Identity(ip="10.0.0.1"), "ip"),
        (wm.Event.heartbeat("10.0.0.1"), "kind"),
        (wm.Worker(id="w1", ip="10.0.0.1", created_at=NOW, last_seen=NOW), "last_seen"),
        (wm.Assignment(id="A1"), "status"),
        (wm.DEFAULT_POLICY, "stale_after"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_values_are_frozen(value: object, field: str) -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(value, field, getattr(value, field))


def test_constructors_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        wm.Identity("10.0.0.1")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        wm.Assignment("A1")  # type: ignore[call-arg]


def test_evolve_validates_like_the_constructor() -> None:
    identity = wm.Identity(ip="10.0.0.1", hostname="box")
    assert attrs.evolve(identity, hostname="OTHER.").hostname == "other"
    with pytest.raises(wm.InvalidInput):
        attrs.evolve(identity, ip="nonsense")
    policy = wm.DEFAULT_POLICY.evolve(stale_after=timedelta(minutes=10))
    assert policy.stale_after == timedelta(minutes=10)
    assert wm.DEFAULT_POLICY.stale_after == timedelta(minutes=5)


def test_values_compare_and_hash_by_content() -> None:
    a = wm.Identity(ip="::ffff:10.0.0.1", hostname="BOX.")
    b = wm.Identity(ip="10.0.0.1", hostname="box")
    assert a == b
    assert hash(a) == hash(b)
    assert len({wm.DEFAULT_POLICY, wm.DEFAULT_POLICY.evolve()}) == 1


_LATER = st.integers(0, 10**9).map(lambda ms: NOW + timedelta(milliseconds=ms))


@given(
    worker=workers(),
    changes=st.fixed_dictionaries(
        {},
        optional={
            "ip": st.sampled_from(["10.0.0.9", "2001:db8::9"]),
            "hostname": st.sampled_from([None, "box", "other"]),
            "last_seen": _LATER,
            "hostname_seen": st.none() | _LATER,
            "status": st.sampled_from(list(wm.WorkerStatus)),
            "stale": st.booleans(),
            "assignment_id": st.sampled_from([None, "A1"]),
            "ended_at": st.none() | _LATER,
            "merged_into": st.sampled_from([None, "w0"]),
            "contested": st.sampled_from([(), ("w1", "w2")]),
        },
    ),
)
def test_a_valid_worker_copied_with_valid_changes_is_what_the_constructor_makes(
    worker: wm.Worker, changes: dict[str, Any]
) -> None:
    # Decisions copy the workers they write without validating again what is valid already.
    copy = evolve_valid(worker, **changes)
    assert copy == attrs.evolve(worker, **changes)
    assert repr(copy) == repr(attrs.evolve(worker, **changes))


@given(
    assignment=assignments(worker_ids=["w1", "w2"]),
    changes=st.fixed_dictionaries(
        {},
        optional={
            "status": st.sampled_from(list(wm.AssignmentStatus)),
            "worker_id": st.sampled_from([None, "w3"]),
            "started_at": st.none() | _LATER,
            "ended_at": st.none() | _LATER,
        },
    ),
)
def test_a_valid_assignment_copied_with_valid_changes_is_what_the_constructor_makes(
    assignment: wm.Assignment, changes: dict[str, Any]
) -> None:
    assert evolve_valid(assignment, **changes) == attrs.evolve(assignment, **changes)


# ---------------------------------------------------------------------------------------------
# Small behaviours of the values


def test_a_worker_is_stale_when_flagged_merged_or_silent_past_stale_after() -> None:
    five = timedelta(minutes=5)
    base = wm.Worker(id="w1", ip="10.0.0.1", created_at=NOW, last_seen=NOW)
    assert not base.is_stale_at(NOW + five, five)
    assert base.is_stale_at(NOW + five + timedelta(milliseconds=1), five)
    assert attrs.evolve(base, stale=True).is_stale_at(NOW, five)
    assert attrs.evolve(base, merged_into="w0").is_stale_at(NOW, five)
    assert not base.is_stale_at(NOW - timedelta(hours=1), five)  # clock skew: age zero


def test_final_assignment_states() -> None:
    assert {s for s in wm.AssignmentStatus if s.is_final} == {
        wm.AssignmentStatus.COMPLETED,
        wm.AssignmentStatus.FAILED,
        wm.AssignmentStatus.CANCELLED,
    }


def test_event_kinds_and_statuses_accept_their_string_values() -> None:
    event = wm.Event(kind="gui_update", identity=wm.Identity(ip="10.0.0.1"), message="x")
    assert event.kind is wm.EventKind.GUI_UPDATE
    worker = wm.Worker(id="w", ip="10.0.0.1", created_at=NOW, last_seen=NOW, status="RUNNING")
    assert worker.status is wm.WorkerStatus.RUNNING


def test_shipped_policies_are_found_by_name() -> None:
    assert dict(wm.POLICIES) == {
        "default": wm.DEFAULT_POLICY,
        "note": wm.NOTE_POLICY,
        "legacy": wm.LEGACY_POLICY,
    }
    assert wm.get_policy("note") is wm.NOTE_POLICY
    assert wm.LEGACY_POLICY.chain_for(wm.EventKind.HEARTBEAT) == (
        wm.Rule.EXACT_IP,
        wm.Rule.HOSTNAME,
    )
    assert wm.LEGACY_POLICY.chain_for(wm.EventKind.CLAIM) == (wm.Rule.EXACT_IP,)
    assert wm.DEFAULT_POLICY.chain_for(wm.EventKind.CLAIM) == tuple(
        row.rule for row in wm.DEFAULT_RULES.rows
    )
