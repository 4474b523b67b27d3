"""Bad input gets a clear, typed error, and nothing is read or written.

Also: refused claims and refused ambiguous matches write nothing, and a store failure surfaces as
:class:`workermatch.StorageError` with the driver's exception chained, leaving the store as it
was.
"""

from __future__ import annotations

import io
import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs
import pytest

import workermatch as wm
from _stores import State, StoreFactory
from _stores import state as snapshot
from _times import NOW
from workermatch import trace
from workermatch._cli import main
from workermatch._model import MAX_TIME, MIN_TIME, quote

NAIVE = NOW.replace(tzinfo=None)

R = TypeVar("R", bound=wm.WorkerRepository)


def populated() -> wm.InMemoryWorkerRepository:
    """A store with a few workers and assignments, so "nothing changed" means something."""
    return populate(wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids()))


def populate(repo: R) -> R:
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
        ({"on_ambiguous": "guess"}, "on_ambiguous"),
        ({"rules": "strict"}, "rules"),
        ({"rules": {"rows": ()}}, "rules"),
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


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"rows": "exact_ip"}, "rows"),
        ({"rows": (wm.Row(rule="exact_ip"), wm.Row(rule="exact_ip"))}, "rows"),
        ({"rows": ("exact_ip",)}, "rows"),
        ({"ranking": ("tallest",)}, "ranking"),
        ({"ranking": ("newest", "newest")}, "ranking"),
        ({"ranking": ()}, "ranking"),
        ({"ranking": "newest"}, "ranking"),
        ({"guards": ("hostname_veto", "trust_me")}, "guards"),
        ({"effects": ("teleport",)}, "effects"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v!r}" for k, v in v.items()),
)
def test_a_bad_rule_table_value_is_invalid_input(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(wm.InvalidInput) as info:
        attrs.evolve(wm.DEFAULT_RULES, **changes)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rule": "created"}, "rule"),
        ({"rule": "by_mac"}, "rule"),
        ({"rule": "exact_ip", "kinds": ()}, "kinds"),
        ({"rule": "exact_ip", "kinds": ("ping",)}, "kinds"),
        ({"rule": "recent_orphan", "orphans": "sometimes"}, "orphans"),
        ({"rule": "recent_orphan", "weighs_streams": "yes"}, "weighs_streams"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v!r}" for k, v in v.items()),
)
def test_a_bad_row_is_invalid_input(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(wm.InvalidInput) as info:
        wm.Row(**changes)
    assert info.value.field == field


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


# ---------------------------------------------------------------------------------------------
# Bad strings and times: InvalidInput on every path, alike on every store, nothing read or
# written, and a message that quotes a short prefix only.

MB = 2**20
#: The longest message any of these cases may give (the value is quoted to ~40 characters).
SHORT = 120

# (case, where the string goes, the string).  ``where``: an Identity field, "claim" (the
# assignment a claim takes) or "message".
BAD_STRINGS: list[tuple[str, str, str]] = [
    ("ip-surrogate", "ip", "10.0.0.1\ud800"),
    ("ip-nul", "ip", "10.0.0.1\x00"),
    ("ip-zone-id", "ip", "fe80::1%eth0"),
    ("ip-bracketed-zone-id", "ip", "[fe80::1%1]"),
    ("ip-long-zone-id", "ip", "fe80::1%" + "e" * 200),
    ("ip-fullwidth-digits", "ip", "\uff11\uff10.0.0.1"),
    ("ip-1mb", "ip", "1" * MB),
    ("hostname-surrogate", "hostname", "box\ud800"),
    ("hostname-nul", "hostname", "box\x00"),
    ("hostname-escape", "hostname", "box\x1b[31m"),
    ("hostname-label-long-in-lower-case", "hostname", "\u0130" * 63),
    ("hostname-long-in-lower-case", "hostname", ".".join(["\u0130" * 31] * 6)),
    ("hostname-1mb", "hostname", "a" * MB),
    ("worker_id-surrogate", "worker_id", "A\ud800"),
    ("worker_id-nul", "worker_id", "A\x00"),
    ("worker_id-escape", "worker_id", "A\x1b[0m"),
    ("worker_id-del", "worker_id", "A\x7fB"),
    ("worker_id-c1", "worker_id", "A\x85B"),
    ("worker_id-1mb", "worker_id", "w" * MB),
    ("assignment_id-surrogate", "assignment_id", "A\ud800"),
    ("assignment_id-nul", "assignment_id", "A\x00"),
    ("assignment_id-tab", "assignment_id", "A\tB"),
    ("claim-surrogate", "claim", "A\ud800"),
    ("claim-nul", "claim", "A\x00"),
    ("claim-newline", "claim", "A\nB"),
    ("claim-1mb", "claim", "A" * MB),
    ("message-surrogate", "message", "progress \ud800"),
]
BAD_STRING_IDS = [case for case, _, _ in BAD_STRINGS]

UTC = timezone.utc
BAD_TIMES: list[tuple[str, datetime]] = [
    ("min", datetime.min.replace(tzinfo=UTC)),
    ("min-east", datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))),  # before year 1
    ("max", datetime.max.replace(tzinfo=UTC)),
    ("max-west", datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))),  # after 9999
    ("before-1970", MIN_TIME - timedelta(milliseconds=1)),
    ("year-9000", MAX_TIME),
]
BAD_TIME_IDS = [case for case, _ in BAD_TIMES]


def build(where: str, value: str) -> wm.Event:
    """The request carrying ``value`` at ``where`` (raises InvalidInput when it is bad)."""
    if where == "ip":
        return wm.Event.gui_update(value, "progress")
    if where == "claim":
        return wm.Event.claim("10.0.0.1", value)
    if where == "message":
        return wm.Event.gui_update("10.0.0.1", value)
    return wm.Event.heartbeat("10.0.0.1", **{where: value})


def field_of(where: str) -> str:
    return "assignment_id" if where == "claim" else where


def short_invalid_input(call: Callable[[], object], field: str) -> wm.InvalidInput:
    """Run ``call``, expecting InvalidInput naming ``field`` with a short message."""
    with pytest.raises(wm.InvalidInput) as info:
        call()
    assert info.value.field == field
    message = str(info.value)
    assert len(message) <= SHORT, message
    return info.value


def test_quote_shows_a_short_prefix_of_a_long_or_escaped_value() -> None:
    assert quote("1.2.3") == "'1.2.3'"
    assert quote("x" * MB) == "'" + "x" * 40 + "'..."
    nuls = quote("\x00" * 100)
    assert nuls.startswith("'\\x00")
    assert nuls.endswith("'...")
    assert len(nuls) <= 45
    assert quote(b"y" * MB) == "b'" + "y" * 38 + "..."
    assert quote(None) == "None"


@pytest.mark.parametrize(
    ("where", "value"), [(w, v) for _, w, v in BAD_STRINGS], ids=BAD_STRING_IDS
)
def test_a_bad_string_is_invalid_input_with_a_short_message(where: str, value: str) -> None:
    error = short_invalid_input(lambda: build(where, value), field_of(where))
    assert error.value == value  # the whole value, for the caller's logs
    if where not in ("claim", "message"):
        fields = {"ip": "10.0.0.1", where: value}
        short_invalid_input(lambda: wm.Identity(**fields), where)


@pytest.mark.parametrize("value", [v for _, w, v in BAD_STRINGS if w == "ip"])
def test_a_bad_ip_is_refused_by_normalize_ip_too(value: str) -> None:
    short_invalid_input(lambda: wm.normalize_ip(value), "ip")


def test_an_address_object_with_a_zone_id_is_refused() -> None:
    address = ipaddress.IPv6Address("fe80::1%eth0")
    short_invalid_input(lambda: wm.Identity(ip=address), "ip")


def test_a_hostname_is_measured_in_lower_case() -> None:
    # "İ" (U+0130) lower-cases to two characters: "i" and a combining dot above.
    assert wm.normalize_hostname("\u0130" * 31) == "i\u0307" * 31
    with pytest.raises(wm.InvalidInput, match="label longer than 63"):
        wm.normalize_hostname("\u0130" * 32)
    with pytest.raises(wm.InvalidInput, match="377 characters long in lower case; at most 253"):
        wm.normalize_hostname(".".join(["\u0130" * 31] * 6))


def test_an_address_of_a_megabyte_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(wm.InvalidInput, match=r"^ip is 1048576 characters long; no IP address"):
        wm.normalize_ip("1" * MB)


def test_a_zone_id_error_says_a_public_address_has_none() -> None:
    with pytest.raises(wm.InvalidInput, match=r"zone id .*a public address has none"):
        wm.normalize_ip("fe80::1%eth0")


@pytest.mark.parametrize("now", [t for _, t in BAD_TIMES], ids=BAD_TIME_IDS)
def test_a_time_outside_1970_to_8999_is_refused_before_anything_is_read(now: datetime) -> None:
    event = wm.Event.heartbeat("10.0.0.1")
    for call in (
        lambda: wm.match_worker(event.identity, now, UNTOUCHABLE),
        lambda: wm.plan(event, now, UNTOUCHABLE),
        lambda: wm.apply_event(event, now, UNTOUCHABLE),
        lambda: wm.sweep(UNTOUCHABLE, now),
        lambda: wm.normalize_time(now),
    ):
        error = short_invalid_input(call, "now")
        assert "1970 to 8999" in str(error)
    short_invalid_input(
        lambda: wm.Worker(id="w1", ip="10.0.0.1", created_at=now, last_seen=NOW), "created_at"
    )


def test_the_bounds_of_accepted_times() -> None:
    assert wm.normalize_time(MIN_TIME) == MIN_TIME
    last = MAX_TIME - timedelta(milliseconds=1)
    assert wm.normalize_time(last) == last
    # The same instants written with an offset.
    east = timezone(timedelta(hours=2))
    assert wm.normalize_time(MIN_TIME.astimezone(east)) == MIN_TIME
    with pytest.raises(wm.InvalidInput):
        wm.normalize_time((MIN_TIME - timedelta(milliseconds=1)).astimezone(east))


def apply_built(
    run: Callable[..., object], where: str, value: str, repo: wm.WorkerRepository
) -> object:
    return run(build(where, value), NOW, repo)


def test_bad_strings_and_times_change_nothing_on_any_store(store_factory: StoreFactory) -> None:
    repo = populate(store_factory(id_factory=wm.sequential_ids()))
    with nothing_changes(repo):
        for _, where, value in BAD_STRINGS:
            field = field_of(where)
            for run in (wm.apply_event, wm.plan):
                short_invalid_input(partial(apply_built, run, where, value, repo), field)
        event = wm.Event.heartbeat("10.0.0.1", hostname="alpha")
        for _, now in BAD_TIMES:
            short_invalid_input(partial(wm.apply_event, event, now, repo), "now")
            short_invalid_input(partial(wm.match_worker, event.identity, now, repo), "now")
            short_invalid_input(partial(wm.sweep, repo, now), "now")


def test_a_bad_id_given_to_a_store_read_is_invalid_input_alike_on_every_store(
    store_factory: StoreFactory,
) -> None:
    repo = populate(store_factory(id_factory=wm.sequential_ids()))
    memory = populated()
    bad_ids: list[Any] = [
        v for _, w, v in BAD_STRINGS if w in ("worker_id", "assignment_id", "claim")
    ]
    with nothing_changes(repo):
        for value in [*bad_ids, "", " w1", 7]:
            for method, field in (("get_worker", "worker_id"), ("get_assignment", "assignment_id")):
                got = short_invalid_input(partial(getattr(repo, method), value), field)
                expected = short_invalid_input(partial(getattr(memory, method), value), field)
                assert str(got) == str(expected)
                assert got.value == value


def test_the_edge_of_every_cap_is_accepted_alike_on_every_store(
    store_factory: StoreFactory,
) -> None:
    """The longest accepted values, and the first and last accepted instants, work on every
    store and leave it as they leave memory."""
    events = [
        (MIN_TIME, wm.Event.claim("10.0.0.1", "A" * 255, hostname="\u0130" * 31)),
        (MIN_TIME, wm.Event.heartbeat("10.0.0.2", hostname=".".join(["b" * 63] * 4)[:253])),
        (MIN_TIME, wm.Event.register("0000:0000:0000:0000:0000:0000:255.255.255.255")),
        (MIN_TIME, wm.Event.gui_update("[2001:0db8:0000:0000:0000:0000:0000:0001]", "x" * MB)),
    ]
    last = MAX_TIME - timedelta(milliseconds=1)
    events.append((last, wm.Event.heartbeat("10.0.0.1", hostname="\u0130" * 31)))

    def run(repo: wm.WorkerRepository) -> State:
        for at, event in events:
            wm.apply_event(event, at, repo, create_assignments=True)
        wm.sweep(repo, last)
        return snapshot(repo)

    expected = run(wm.InMemoryWorkerRepository(id_factory=wm.sequential_ids()))
    assert run(store_factory(id_factory=wm.sequential_ids())) == expected


# -- the command --------------------------------------------------------------------------------

GOOD_LINE = '{"at": "2025-11-06T10:00:01Z", "kind": "claim", "ip": "10.0.0.1", "assignment": "A1"}'


def trace_line(where: str, value: str) -> str:
    """A trace line carrying ``value`` at ``where`` (JSON escapes a lone surrogate)."""
    line: dict[str, Any] = {"at": "2025-11-06T10:00:02Z", "kind": "heartbeat", "ip": "10.0.0.1"}
    if where == "claim":
        line.update(kind="claim", assignment=value)
    elif where == "message":
        line.update(kind="gui_update", message=value)
    else:
        line[{"assignment_id": "assignment"}.get(where, where)] = value
    return json.dumps(line)


BAD_TRACE_LINES = [(case, trace_line(where, value)) for case, where, value in BAD_STRINGS] + [
    (f"at-{case}", trace_line("ip", "10.0.0.1").replace("2025-11-06T10:00:02Z", at))
    for case, at in [
        ("year-1", "0001-01-01T00:00:00Z"),
        ("year-1-east", "0001-01-01T00:00:00+05:00"),
        ("year-9999", "9999-12-31T23:59:59.999Z"),
        ("year-9999-west", "9999-12-31T23:59:59.999-05:00"),
        ("1969", "1969-12-31T23:59:59.999Z"),
        ("long-fraction", "2025-11-06T10:00:02." + "0" * MB + "Z"),
    ]
]
BAD_TRACE_LINES.append(("kind-array", trace_line("ip", "10.0.0.1").replace('"heartbeat"', "[]")))


@pytest.mark.parametrize(
    "line", [line for _, line in BAD_TRACE_LINES], ids=[case for case, _ in BAD_TRACE_LINES]
)
def test_a_bad_string_in_a_trace_exits_2_with_one_short_line_and_applies_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(f"{GOOD_LINE}\n{GOOD_LINE}\n{line}\n{GOOD_LINE}\n", encoding="utf-8")
    db = tmp_path / "untouched.db"
    for argv in (["--jsonl"], ["--db", f"sqlite:///{db}"]):
        out = io.StringIO()
        assert main(["replay", str(path), *argv], stdout=out) == 2
        assert out.getvalue() == ""
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.endswith("\n")
        prefix = f"workermatch replay: {path}: line 3: "
        assert err.startswith(prefix), err
        assert len(err) - len(prefix) <= SHORT, err
    assert not db.exists()  # refused before the store was opened


def test_a_bad_string_in_a_trace_is_a_trace_error_naming_its_line() -> None:
    for _, line in BAD_TRACE_LINES:
        with pytest.raises(trace.TraceError) as info:
            list(trace.parse_trace([GOOD_LINE, line]))
        assert info.value.line == 2
        assert len(str(info.value)) <= SHORT + len("line 2: ")
