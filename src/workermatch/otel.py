"""OpenTelemetry for workermatch: a span around every decision, and three counters.

Needs only the OpenTelemetry *API* (the ``otel`` extra: from a checkout,
``python -m pip install '.[otel]'``); the application installs the SDK and its exporters as it
does for any other library.  The package root never imports this module.

>>> import workermatch.otel
>>> workermatch.otel.instrument()          # the global tracer and meter providers
>>> workermatch.otel.uninstrument()

While instrumented, every :func:`workermatch.apply_event` and :func:`workermatch.aio.apply_event`
(whichever store) is one span named ``workermatch.apply_event``, current while the decision
runs (so the database client's own spans, if it is instrumented, are its children), with these
attributes:

=============================  ==========================================================
``workermatch.event.kind``     ``claim``, ``heartbeat``, ``gui_update`` or ``register``
``workermatch.rule``           the rule that placed the request (``created`` for a new worker)
``workermatch.created``        whether a new worker was made
``workermatch.ambiguous``      whether only a tie-break chose
``workermatch.alert``          the alert's kind, when the decision raised one
``workermatch.worker.id``      the worker the request landed on
=============================  ==========================================================

A request that fails (``ClaimRefused``, ``InvalidInput`` found while deciding,
``StorageError``, ...) ends its span with status ``ERROR``, the exception recorded and
``error.type`` set to its class name.  The counters:

* ``workermatch.decisions``: written decisions, by ``workermatch.rule``,
  ``workermatch.event.kind`` and ``workermatch.created``;
* ``workermatch.alerts``: decisions that raised an alert, by ``workermatch.alert``;
* ``workermatch.storage.retries``: transactions a SQL store (:mod:`workermatch.sql`,
  synchronous or asyncio, or the Django repository) ran again after a conflict, by
  ``db.system.name`` (``sqlite``, ``postgresql``, ``mysql`` or ``mariadb``).
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from opentelemetry import context, metrics, trace
    from opentelemetry.trace import Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "workermatch.otel needs the OpenTelemetry API: install the otel extra (from a checkout: "
        f"python -m pip install '.[otel]') ({exc})"
    ) from exc

from . import __version__
from ._decision import Outcome
from ._model import Event
from ._observe import add_instrument, remove_instrument

__all__ = ["SPAN_NAME", "instrument", "is_instrumented", "uninstrument"]

SPAN_NAME = "workermatch.apply_event"
"""The name of the span around each decision."""


class _Instrument:
    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self.tracer = trace.get_tracer("workermatch", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("workermatch", __version__, meter_provider=meter_provider)
        self.decisions = meter.create_counter(
            "workermatch.decisions",
            unit="{decision}",
            description="Decisions written, by the rule that placed the request",
        )
        self.alerts = meter.create_counter(
            "workermatch.alerts",
            unit="{alert}",
            description="Decisions that raised an alert, by kind",
        )
        self.retries = meter.create_counter(
            "workermatch.storage.retries",
            unit="{retry}",
            description="Transactions a SQL store ran again after a conflict",
        )

    def start(self, event: Event) -> tuple[trace.Span, object]:
        span = self.tracer.start_span(
            SPAN_NAME, attributes={"workermatch.event.kind": event.kind.value}
        )
        return span, context.attach(trace.set_span_in_context(span))

    def finish(
        self, token: tuple[trace.Span, Any], outcome: Outcome | None, error: BaseException | None
    ) -> None:
        span, attached = token
        try:
            if outcome is not None:
                rule, kind = outcome.rule.value, outcome.event.kind.value
                span.set_attributes(
                    {
                        "workermatch.rule": rule,
                        "workermatch.created": outcome.created,
                        "workermatch.ambiguous": outcome.ambiguous,
                        "workermatch.worker.id": outcome.worker.id,
                    }
                )
                self.decisions.add(
                    1,
                    {
                        "workermatch.rule": rule,
                        "workermatch.event.kind": kind,
                        "workermatch.created": outcome.created,
                    },
                )
                if outcome.alert is not None:
                    span.set_attribute("workermatch.alert", outcome.alert.value)
                    self.alerts.add(1, {"workermatch.alert": outcome.alert.value})
            if error is not None:
                span.record_exception(error)
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        finally:
            context.detach(attached)
            span.end()

    def retried(self, backend: str) -> None:
        self.retries.add(1, {"db.system.name": backend})


_lock = threading.Lock()
_current: _Instrument | None = None


def instrument(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> None:
    """Make a span of every decision and count decisions, alerts and storage retries, with the
    given providers (default: OpenTelemetry's global ones, as set by the application or its
    auto-instrumentation).  Calling it again replaces the previous instrumentation."""
    global _current
    with _lock:
        if _current is not None:
            remove_instrument(_current)
        _current = _Instrument(tracer_provider, meter_provider)
        add_instrument(_current)


def uninstrument() -> None:
    """Stop what :func:`instrument` started (nothing happens if it was not)."""
    global _current
    with _lock:
        if _current is not None:
            remove_instrument(_current)
            _current = None


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in force."""
    return _current is not None
