"""OpenTelemetry: one span per decision, under both drivers, and the counters of decisions,
alerts and storage retries."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import workermatch as wm
import workermatch.otel
from core.test_observe import T0, two_machines_behind_one_address
from workermatch import aio


class Recorded:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def counts(self, name: str) -> dict[tuple[tuple[str, Any], ...], int]:
        """The counter's value per attribute set."""
        data = self.reader.get_metrics_data()
        out: dict[tuple[tuple[str, Any], ...], int] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            key = tuple(sorted((point.attributes or {}).items()))
                            out[key] = int(point.value)  # type: ignore[union-attr]
        return out


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    rec = Recorded()
    workermatch.otel.instrument(
        tracer_provider=rec.tracer_provider, meter_provider=rec.meter_provider
    )
    try:
        yield rec
    finally:
        workermatch.otel.uninstrument()
        rec.meter_provider.shutdown()
        rec.tracer_provider.shutdown()


def test_each_decision_is_one_span_with_what_was_decided(recorded: Recorded) -> None:
    outcomes = two_machines_behind_one_address(wm.InMemoryWorkerRepository())
    spans = recorded.finished()
    assert [s.name for s in spans] == [workermatch.otel.SPAN_NAME] * len(outcomes)
    for span, outcome in zip(spans, outcomes, strict=True):
        attrs = dict(span.attributes or {})
        assert attrs["workermatch.event.kind"] == outcome.event.kind.value
        assert attrs["workermatch.rule"] == outcome.rule.value
        assert attrs["workermatch.created"] is outcome.created
        assert attrs["workermatch.ambiguous"] is outcome.ambiguous
        assert attrs["workermatch.worker.id"] == outcome.worker.id
        assert attrs.get("workermatch.alert") == (outcome.alert and outcome.alert.value)
    assert outcomes[-1].alert is wm.Alert.END_HELD
    assert spans[0].status.status_code is StatusCode.UNSET


def test_decisions_and_alerts_are_counted(recorded: Recorded) -> None:
    outcomes = two_machines_behind_one_address(wm.InMemoryWorkerRepository())
    decisions = recorded.counts("workermatch.decisions")
    assert sum(decisions.values()) == len(outcomes)
    by_rule: dict[str, int] = {}
    for key, n in decisions.items():
        rule = dict(key)["workermatch.rule"]
        by_rule[rule] = by_rule.get(rule, 0) + n
    expected: dict[str, int] = {}
    for o in outcomes:
        expected[o.rule.value] = expected.get(o.rule.value, 0) + 1
    assert by_rule == expected
    assert recorded.counts("workermatch.alerts") == {(("workermatch.alert", "end_held"),): 1}


def test_the_async_driver_is_instrumented_alike(recorded: Recorded) -> None:
    async def play() -> list[wm.Outcome]:
        repo = aio.AsyncInMemoryWorkerRepository()
        first = await aio.apply_event(
            wm.Event.claim("10.0.0.1", "A1"), T0, repo, create_assignments=True
        )
        again = await aio.apply_event(wm.Event.heartbeat("10.0.0.1"), T0, repo)
        return [first, again]

    outcomes = asyncio.run(play())
    spans = recorded.finished()
    assert [dict(s.attributes or {})["workermatch.worker.id"] for s in spans] == [
        o.worker.id for o in outcomes
    ]
    assert sum(recorded.counts("workermatch.decisions").values()) == 2


def test_the_decision_span_is_current_while_it_runs_and_hooks_run_inside_it(
    recorded: Recorded,
) -> None:
    from opentelemetry import trace

    inside: list[int] = []
    remove = wm.add_outcome_hook(
        lambda _: inside.append(trace.get_current_span().get_span_context().span_id)
    )
    try:
        wm.apply_event(wm.Event.register("10.0.0.1"), T0, wm.InMemoryWorkerRepository())
    finally:
        remove()
    (span,) = recorded.finished()
    assert inside == [span.context.span_id]
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_refused_request_ends_its_span_as_an_error(recorded: Recorded) -> None:
    with pytest.raises(wm.ClaimRefused):
        wm.apply_event(wm.Event.claim("10.0.0.1", "A9"), T0, wm.InMemoryWorkerRepository())
    (span,) = recorded.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "ClaimRefused"
    assert [e.name for e in span.events] == ["exception"]
    assert recorded.counts("workermatch.decisions") == {}


def test_storage_retries_are_counted(recorded: Recorded, tmp_path: Path) -> None:
    from workermatch.sql import RetryPolicy, SQLWorkerRepository

    path = tmp_path / "locked.db"
    with SQLWorkerRepository.from_url(f"sqlite:///{path}") as repo:
        repo.create_schema()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            other.execute("COMMIT")

    retry = RetryPolicy(sleep=sleep)
    try:
        with SQLWorkerRepository.from_url(
            f"sqlite:///{path}", retry=retry, connect_args={"timeout": 0.01}
        ) as repo:
            assert wm.apply_event(wm.Event.heartbeat("10.0.0.1"), T0, repo).created
            assert repo.retries == 2
    finally:
        other.close()
    assert recorded.counts("workermatch.storage.retries") == {(("db.system.name", "sqlite"),): 2}
    (span,) = recorded.finished()
    assert span.status.status_code is StatusCode.UNSET


def test_the_asyncio_sql_stores_retries_are_counted_and_its_give_up_logged(
    recorded: Recorded, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("aiosqlite")
    from workermatch.sql import AsyncSQLWorkerRepository, RetryPolicy, SQLWorkerRepository

    path = tmp_path / "locked.db"
    with SQLWorkerRepository.from_url(f"sqlite:///{path}") as repo:
        repo.create_schema()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            other.execute("COMMIT")

    async def play(retry: RetryPolicy) -> tuple[wm.Outcome, int]:
        async with AsyncSQLWorkerRepository.from_url(
            f"sqlite:///{path}", retry=retry, connect_args={"timeout": 0.01}
        ) as repo:
            outcome = await aio.apply_event(wm.Event.heartbeat("10.0.0.1"), T0, repo)
            return outcome, repo.retries

    try:
        outcome, retries = asyncio.run(play(RetryPolicy(sleep=sleep)))
        assert (outcome.created, retries) == (True, 2)
        # Retries that run out: one more retry counted, and the warning of the give-up.
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(wm.TransientStorageError):
            asyncio.run(play(RetryPolicy(max_attempts=2, sleep=lambda _: None)))
    finally:
        other.close()
    assert recorded.counts("workermatch.storage.retries") == {(("db.system.name", "sqlite"),): 3}
    (warning,) = [r for r in caplog.records if r.name == "workermatch" and r.levelno >= 30]
    assert warning.getMessage().startswith("gave up after 2 attempts")
    first, failed = recorded.finished()
    assert first.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR


def test_uninstrument_stops_spans_and_instrument_twice_replaces() -> None:
    rec = Recorded()
    workermatch.otel.instrument(
        tracer_provider=rec.tracer_provider, meter_provider=rec.meter_provider
    )
    workermatch.otel.instrument(
        tracer_provider=rec.tracer_provider, meter_provider=rec.meter_provider
    )
    assert workermatch.otel.is_instrumented()
    repo = wm.InMemoryWorkerRepository()
    wm.apply_event(wm.Event.register("10.0.0.1"), T0, repo)
    workermatch.otel.uninstrument()
    workermatch.otel.uninstrument()
    assert not workermatch.otel.is_instrumented()
    wm.apply_event(wm.Event.register("10.0.0.2"), T0, repo)
    assert len(rec.finished()) == 1
    rec.meter_provider.shutdown()
    rec.tracer_provider.shutdown()


def test_counters_are_exact_under_threads(recorded: Recorded) -> None:
    import threading

    repo = wm.InMemoryWorkerRepository()

    def decide(n: int) -> None:
        for i in range(25):
            wm.apply_event(wm.Event.heartbeat(f"10.{n}.0.{i}"), T0, repo)

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(recorded.counts("workermatch.decisions").values()) == 200
    assert len(recorded.finished()) == 200


def test_the_package_root_never_imports_opentelemetry() -> None:
    import subprocess
    import sys

    code = "import sys, workermatch, workermatch.aio; print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
