"""The kit's strategies: valid values, honest ground truth, and InvalidArgument on bad bounds."""

from __future__ import annotations

import ipaddress
import itertools
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis.errors import InvalidArgument

import workermatch as wm
from workermatch.testing import (
    FleetStream,
    assignments,
    fleet_streams,
    hostnames,
    identities,
    ip_addresses,
    policies,
    workers,
)


@given(ip=ip_addresses())
def test_every_ip_spelling_normalises_to_one_canonical_address(ip: str) -> None:
    canonical = wm.normalize_ip(ip)
    assert wm.normalize_ip(canonical) == canonical
    assert str(ipaddress.ip_address(canonical)) == canonical


@given(name=hostnames())
def test_hostnames_are_valid_in_any_case(name: str) -> None:
    assert wm.normalize_hostname(name) == wm.normalize_hostname(name.upper())


@given(identity=identities(), worker=workers(), assignment=assignments(), policy=policies())
def test_value_strategies_build_valid_values(
    identity: wm.Identity, worker: wm.Worker, assignment: wm.Assignment, policy: wm.Policy
) -> None:
    assert worker.last_seen >= worker.created_at
    assert isinstance(identity, wm.Identity)
    assert isinstance(assignment, wm.Assignment)
    assert isinstance(policy, wm.Policy)


@settings(max_examples=100)
@given(stream=fleet_streams(max_machines=3, max_sessions=3))
def test_fleet_streams_follow_the_real_client(stream: FleetStream) -> None:
    times = [e.now for e in stream.events]
    assert times == sorted(times), "a stream is in arrival order"
    for truth in stream.sessions:
        mine = stream.of_session(truth.session)
        assert mine[0].event.kind is wm.EventKind.CLAIM
        assert mine[0].event.assignment_id == truth.assignment
        assert all(e.event.kind is not wm.EventKind.CLAIM for e in mine[1:])
        for e in mine:
            host = e.event.identity.hostname
            # Only heartbeats carry the hostname, in any case; it is always the machine's.
            assert (host is not None) == (e.event.kind is wm.EventKind.HEARTBEAT)
            assert host is None or host == truth.hostname
        heartbeats = [e.now for e in mine if e.event.kind is wm.EventKind.HEARTBEAT]
        if heartbeats:
            assert heartbeats[0] == heartbeats[1], "two heartbeats at once at GUI start"
        if truth.ended:
            assert mine[-1].event.message in ("finished", "fatal_error")


@settings(max_examples=100)
@given(stream=fleet_streams(long_silences=False, ip_changes=False, shared_nat=False, hints=False))
def test_fleet_streams_honour_their_switches(stream: FleetStream) -> None:
    for truth in stream.sessions:
        mine = stream.of_session(truth.session)
        assert len({e.event.identity.ip for e in mine}) == 1
        assert all(e.event.identity.assignment_id is None for e in mine)
        for a, b in itertools.pairwise(mine):
            assert b.now - a.now <= wm.DEFAULT_POLICY.stale_after


@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [
        (fleet_streams, {"min_machines": 3, "max_machines": 2}),
        (fleet_streams, {"min_machines": 0}),
        (fleet_streams, {"max_sessions": 0}),
        (fleet_streams, {"hints": "yes"}),
        (fleet_streams, {"stale_after": timedelta(seconds=10)}),
        (fleet_streams, {"max_machines": 100}),
        (ip_addresses, {"v4": False, "v6": False}),
        (hostnames, {"max_labels": 0}),
        (workers, {"ips": []}),
        (workers, {"max_offset": timedelta(seconds=-1)}),
        (assignments, {"ids": []}),
        (policies, {"shipped_only": 1}),
    ],
)
def test_bad_arguments_raise_invalid_argument(strategy: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        strategy(**kwargs)
