"""Bad input gets a clear, typed error, and nothing is read or written.

Also: refused claims and refused ambiguous matches write nothing, and a store failure surfaces as
:class:`workermatch.StorageError` with the driver's exception chained, leaving the store as it
was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any, NoReturn

import pytest

import workermatch as wm

NOW = datetime(2025, 11, 6, 12, 0, 0, tzinfo=timezone.utc)
NAIVE = datetime(2025, 11, 6, 12, 0, 0)

State = tuple[list[wm.Worker], list[wm.Assignment]]


def snapshot(repo: wm.WorkerRepository) -> State:
    return (
        sorted(repo.all_workers(), key=lambda w: w.id),
        sorted(repo.all_assignments(), key=lambda a: a.id),
    )


def populated() -> wm.InMemoryWorkerRepository:
    """A store with a few workers and assignments, so "nothing changed" means something."""
    repo = wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids())
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), NOW, repo, create_assignments=True)
    wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname="alpha"), NOW, repo)
    wm.apply_event(wm.Event.heartbeat("10.0.0.2", hostname="beta"), NOW, repo)
    wm.apply_event(wm.Event.claim("10.0.0.3", "A2"), NOW, repo, create_assignments=True)
    wm.apply_event(wm.Event.gui_update("10.0.0.3", "finished"), NOW, repo)
    return repo


@contextmanager
def nothing_changes(repo: wm.WorkerRepository) -> Iterator[None]:
    before = snapshot(repo)
    try:
        yield
    finally:
        assert snapshot(repo) == before


class Untouchable:
    """A repository that fails the test on any use: proves a check ran before any read."""

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):  # introspection (pytest, copy, ...), not a repository call
            raise AttributeError(name)
        pytest.fail(f"the repository was used ({name}) before the input was checked")


UNTOUCHABLE: Any = Untouchable()


# ---------------------------------------------------------------------------------------------
# IP addresses

BAD_IPS = [
    "",
    "1.2.3",
    "256.1.1.1",
    "1.2.3.4.5",
    "01.2.3.4",
    " 1.2.3.4",
    "1.2.3.4 ",
    "1.2.3.4\n",
    "1.2.3.4/32",
    "1.2.3.4:8080",
    "[1.2.3.4",
    "[]",
    "::g",
    "2001:db8::1::2",
    "fe80::1%eth0%",
    "localhost",
    "157.193.240.188, 10.0.0.1",
    None,
    12345,
    b"1.2.3.4",
]


@pytest.mark.parametrize("ip", BAD_IPS, ids=repr)
def test_a_malformed_ip_is_invalid_input(ip: Any) -> None:
    with pytest.raises(wm.InvalidInput) as info:
        wm.Identity(ip=ip)
    assert info.value.field == "ip"
    assert info.value.value == ip
    with pytest.raises(wm.InvalidInput):
        wm.Event.heartbeat(ip)
    with pytest.raises(wm.InvalidInput):
        wm.normalize_ip(ip)


@pytest.mark.parametrize("ip", BAD_IPS[:6], ids=repr)
def test_a_malformed_ip_writes_nothing(ip: Any) -> None:
    repo = populated()
    with nothing_changes(repo), pytest.raises(wm.InvalidInput):
        wm.apply_event(wm.Event.gui_update(ip, "progress"), NOW, repo)


def test_the_error_names_the_field_and_the_value() -> None:
    with pytest.raises(wm.InvalidInput, match=r"ip '1\.2\.3' is not an IPv4 or IPv6 address"):
        wm.Identity(ip="1.2.3")


# ---------------------------------------------------------------------------------------------
# Hostnames

BAD_HOSTNAMES = [
    "",
    ".",
    "a" * 254,
    "." + "a" * 10,
    "a..b",
    "a" * 64 + ".example",
    "has space",
    " box",
    "box\t",
    "line\nbreak",
    "nul\x00",
    "bell\x07",
    "..",
    5,
    b"box",
]


@pytest.mark.parametrize("hostname", BAD_HOSTNAMES, ids=repr)
def test_an_empty_overlong_or_garbled_hostname_is_invalid_input(hostname: Any) -> None:
    with pytest.raises(wm.InvalidInput) as info:
        wm.Identity(ip="10.0.0.1", hostname=hostname)
    assert info.value.field == "hostname"
    repo = populated()
    with nothing_changes(repo), pytest.raises(wm.InvalidInput):
        wm.apply_event(wm.Event.heartbeat("10.0.0.1", hostname=hostname), NOW, repo)


def test_an_overlong_hostname_error_says_how_long() -> None:
    with pytest.raises(wm.InvalidInput, match="254 characters long; at most 253"):
        wm.normalize_hostname("a" * 254)


# ---------------------------------------------------------------------------------------------
# Times


@pytest.mark.parametrize("now", [NAIVE, "2025-11-06T12:00:00Z", 1762430400, date(2025, 11, 6)])
def test_a_naive_or_non_datetime_now_is_refused_before_anything_is_read(now: Any) -> None:
    event = wm.Event.heartbeat("10.0.0.1")
    for call in (
        lambda: wm.match_worker(event.identity, now, UNTOUCHABLE),
        lambda: wm.plan(event, now, UNTOUCHABLE),
        lambda: wm.apply_event(event, now, UNTOUCHABLE),
        lambda: wm.sweep(UNTOUCHABLE, now),
    ):
        with pytest.raises(wm.InvalidInput) as info:
            call()
        assert info.value.field == "now"


def test_the_naive_datetime_error_says_what_to_do() -> None:
    with pytest.raises(wm.InvalidInput, match=r"naive datetime.*datetime\.now\(timezone\.utc\)"):
        wm.normalize_time(NAIVE)


@pytest.mark.parametrize("field", ["created_at", "last_seen", "ended_at"])
def test_a_worker_with_a_naive_time_is_invalid_input(field: str) -> None:
    fields: dict[str, Any] = {"id": "w1", "ip": "10.0.0.1", "created_at": NOW, "last_seen": NOW}
    fields[field] = NAIVE
    with pytest.raises(wm.InvalidInput) as info:
        wm.Worker(**fields)
    assert info.value.field == field


# ---------------------------------------------------------------------------------------------
# Events


@pytest.mark.parametrize("kind", ["ping", "HEARTBEAT", "", None, 3])
def test_an_unknown_event_kind_is_invalid_input(kind: Any) -> None:
    with pytest.raises(wm.InvalidInput) as info:
        wm.Event(kind=kind, identity=wm.Identity(ip="10.0.0.1"))
    assert info.value.field == "kind"
    assert "'claim', 'heartbeat', 'gui_update', 'register'" in str(info.value)


def test_an_unknown_kind_passed_to_match_worker_is_refused_before_anything_is_read() -> None:
    with pytest.raises(wm.InvalidInput) as info:
        wm.match_worker(wm.Identity(ip="10.0.0.1"), NOW, UNTOUCHABLE, kind="ping")
    assert info.value.field == "kind"


def test_a_claim_without_assignment_is_invalid_input() -> None:
    with pytest.raises(wm.InvalidInput, match="a claim must name the assignment") as info:
        wm.Event(kind=wm.EventKind.CLAIM, identity=wm.Identity(ip="10.0.0.1"))
    assert info.value.field == "assignment_id"


def test_a_non_claim_taking_an_assignment_is_pointed_to_the_hint() -> None:
    with pytest.raises(wm.InvalidInput, match=r"Identity\(assignment_id=\.\.\.\)"):
        wm.Event(
            kind=wm.EventKind.HEARTBEAT, identity=wm.Identity(ip="10.0.0.1"), assignment_id="A1"
        )


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: wm.Event(kind="heartbeat", identity="10.0.0.1"), "identity"),  # type: ignore[arg-type]
        (lambda: wm.Event.gui_update("10.0.0.1", 42), "message"),  # type: ignore[arg-type]
        (lambda: wm.Identity(ip="10.0.0.1", worker_id=""), "worker_id"),
        (lambda: wm.Identity(ip="10.0.0.1", worker_id=" w1"), "worker_id"),
        (lambda: wm.Identity(ip="10.0.0.1", assignment_id="x" * 256), "assignment_id"),
        (lambda: wm.Event.claim("10.0.0.1", ""), "assignment_id"),
        (lambda: wm.Worker(id="", ip="10.0.0.1", created_at=NOW, last_seen=NOW), "id"),
        (
            lambda: wm.Worker(id="w", ip="10.0.0.1", created_at=NOW, last_seen=NOW, status="BUSY"),
            "status",
        ),
        (
            lambda: wm.Worker(id="w", ip="10.0.0.1", created_at=NOW, last_seen=NOW, stale="no"),
            "stale",
        ),
        (lambda: wm.Assignment(id="A1", status="DONE"), "status"),
    ],
    ids=[
        "identity-not-identity",
        "message-not-str",
        "empty-worker-id",
        "padded-worker-id",
        "overlong-assignment-id",
        "empty-claim-assignment",
        "empty-worker-id-field",
        "unknown-worker-status",
        "stale-not-bool",
        "unknown-assignment-status",
    ],
)
def test_other_malformed_values_are_invalid_input(build: Callable[[], object], field: str) -> None:
    with pytest.raises(wm.InvalidInput) as info:
        build()
    assert info.value.field == field


def test_arguments_of_the_wrong_type_are_refused_before_anything_is_read() -> None:
    event = wm.Event.heartbeat("10.0.0.1")
    checks: list[tuple[Callable[[], object], str]] = [
        (lambda: wm.match_worker("10.0.0.1", NOW, UNTOUCHABLE), "identity"),  # type: ignore[arg-type]
        (lambda: wm.plan({"kind": "heartbeat"}, NOW, UNTOUCHABLE), "event"),  # type: ignore[arg-type]
        (lambda: wm.apply_event(event, NOW, UNTOUCHABLE, "default"), "policy"),  # type: ignore[arg-type]
        (lambda: wm.match_worker(event.identity, NOW, UNTOUCHABLE, None), "policy"),  # type: ignore[arg-type]
        (lambda: wm.sweep(UNTOUCHABLE, NOW, "note"), "policy"),  # type: ignore[arg-type]
    ]
    for call, field in checks:
        with pytest.raises(wm.InvalidInput) as info:
            call()
        assert info.value.field == field


# ---------------------------------------------------------------------------------------------
# Policies


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stale_after": timedelta(seconds=-1)}, "stale_after"),
        ({"stale_after": 300}, "stale_after"),
        ({"orphan_window": None}, "orphan_window"),
        ({"quiet_period": "30s"}, "quiet_period"),
        ({"hostname_window": timedelta(minutes=-5)}, "hostname_window"),
        ({"ended_grace": timedelta(seconds=-3)}, "ended_grace"),
        ({"orphan_condition": "sometimes"}, "orphan_condition"),
        ({"on_ambiguous": "guess"}, "on_ambiguous"),
        ({"ranking": ("tallest",)}, "ranking"),
        ({"ranking": ("newest", "newest")}, "ranking"),
        ({"ranking": "newest"}, "ranking"),
        ({"chain": ("exact_ip", "created")}, "chain"),
        ({"chain": ("exact_ip", "exact_ip")}, "chain"),
        ({"chain": "exact_ip"}, "chain"),
        ({"chain": ("by_mac",)}, "chain"),
        ({"chains": {"ping": ("exact_ip",)}}, "chains"),
        ({"chains": {"heartbeat": ("by_mac",)}}, "chain"),
        ({"hostname_veto": "yes"}, "hostname_veto"),
        ({"sessions": 1}, "sessions"),
        ({"transfer_stale": None}, "transfer_stale"),
        ({"name": ""}, "name"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v!r}" for k, v in v.items()),
)
def test_a_bad_policy_value_is_invalid_input(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(wm.InvalidInput) as info:
        wm.Policy(**changes)
    assert info.value.field == field
    with pytest.raises(wm.InvalidInput):
        wm.DEFAULT_POLICY.evolve(**changes)


def test_an_unknown_policy_name_lists_the_shipped_ones() -> None:
    with pytest.raises(wm.InvalidInput, match="choose one of default, legacy, note") as info:
        wm.get_policy("strict")
    assert info.value.field == "policy"


# ---------------------------------------------------------------------------------------------
# Refusals write nothing


def test_a_claim_running_elsewhere_writes_nothing() -> None:
    repo = populated()
    with nothing_changes(repo), pytest.raises(wm.ClaimRefused) as info:
        wm.apply_event(wm.Event.claim("10.0.0.9", "A1", hostname="gamma"), NOW, repo)
    assert info.value.reason == "running_elsewhere"


def test_a_claim_of_a_finished_assignment_writes_nothing() -> None:
    repo = populated()
    with nothing_changes(repo), pytest.raises(wm.ClaimRefused) as info:
        wm.apply_event(wm.Event.claim("10.0.0.3", "A2"), NOW, repo, create_assignments=True)
    assert info.value.reason == "already_finished"


def test_a_claim_of_an_unknown_assignment_writes_nothing() -> None:
    repo = populated()
    with nothing_changes(repo), pytest.raises(wm.ClaimRefused) as info:
        wm.apply_event(wm.Event.claim("10.0.0.9", "A9"), NOW, repo)
    assert info.value.reason == "unknown_assignment"


def test_a_refused_ambiguous_match_writes_nothing() -> None:
    repo = populated()
    # A second live worker on 10.0.0.1 that no hostname tells apart from the first.
    wm.apply_event(wm.Event.claim("10.0.0.1", "A3"), NOW, repo, create_assignments=True)
    policy = wm.DEFAULT_POLICY.evolve(on_ambiguous=wm.OnAmbiguous.REFUSE)
    with nothing_changes(repo), pytest.raises(wm.AmbiguousMatch):
        wm.apply_event(wm.Event.gui_update("10.0.0.1", "finished"), NOW, repo, policy)


# ---------------------------------------------------------------------------------------------
# Store failures


class FailingRepository(wm.InMemoryWorkerRepository):
    """Once ``failing`` is set, applies a write, then fails as a dropped connection does."""

    failing = False

    def write(self, writes: Iterable[wm.Write]) -> None:
        super().write(writes)
        if self.failing:
            raise ConnectionResetError("server closed the connection unexpectedly")


class FailingReads(wm.InMemoryWorkerRepository):
    def live_workers_by_ip(self, ip: str, seen_since: datetime) -> list[wm.Worker]:
        raise OSError("network is unreachable")


def test_a_failure_while_writing_is_a_storage_error_and_leaves_the_store_as_it_was() -> None:
    repo = FailingRepository(id_factory=wm.sequential_ids())
    wm.apply_event(wm.Event.claim("10.0.0.1", "A1"), NOW, repo, create_assignments=True)
    repo.failing = True
    with nothing_changes(repo), pytest.raises(wm.StorageError) as info:
        wm.apply_event(wm.Event.gui_update("10.0.0.2", "finished"), NOW, repo)
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert "server closed the connection" in str(info.value)


def test_a_failure_while_reading_is_a_storage_error() -> None:
    repo = FailingReads()
    with nothing_changes(repo), pytest.raises(wm.StorageError) as info:
        wm.apply_event(wm.Event.heartbeat("10.0.0.1"), NOW, repo)
    assert isinstance(info.value.__cause__, OSError)


def test_errors_are_split_by_fault_under_one_base_class() -> None:
    for cls in (wm.InvalidInput, wm.ClaimRefused, wm.AmbiguousMatch, wm.StorageError):
        assert issubclass(cls, wm.WorkermatchError)
    assert issubclass(wm.InvalidInput, ValueError)  # the caller's fault, as Python spells it
    assert not issubclass(wm.StorageError, wm.InvalidInput)
    assert not issubclass(wm.ClaimRefused, wm.InvalidInput)
