"""SHELL: optional OpenTelemetry spans (``pip install "qoder-async[otel]"``), and a turn's metrics.

Without ``opentelemetry-api`` nothing happens and nothing is imported. With it,
spans go to the tracer provider the application configured (or the one given
as ``QoderClient(tracer_provider=...)``); the client never installs a global
provider. Names and attributes follow the GenAI semantic conventions:

==============================  ===========================================================
span / event                    when, and its attributes
==============================  ===========================================================
``invoke_agent`` (CLIENT)       one per turn, from the send to its end:
                                ``gen_ai.operation.name`` = ``invoke_agent``,
                                ``gen_ai.provider.name`` = ``qoder``,
                                ``gen_ai.conversation.id`` = the session id,
                                ``qoder.turn.id``, ``gen_ai.usage.input_tokens`` /
                                ``output_tokens``, ``gen_ai.response.finish_reasons`` =
                                the stop reason; an error status (``error.type``) when
                                the turn failed
``qoder.stream.reconnect``      an event on the turn's span each time the session's
                                connection is re-established (``qoder.cursor``)
``execute_tool {name}``         one per custom tool the turn runs, child of the turn's span:
(INTERNAL)                      ``gen_ai.operation.name`` = ``execute_tool``,
                                ``gen_ai.tool.name``, ``gen_ai.tool.call.id``,
                                ``gen_ai.tool.type`` = ``function``; an error status when
                                the handler raised
==============================  ===========================================================

A :class:`TurnSpan` also carries the turn's metrics (``_metrics``): when the
turn starts, when each text chunk arrived (``chunks``), and its end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from qoder_async._core.version import __version__
from qoder_async._turn.metrics import _PROVIDER, _TURN, NO_METRICS, Metrics

try:  # the optional extra: pip install "qoder-async[otel]"
    from opentelemetry import trace as otel_trace

    HAVE_OTEL = True
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_OTEL = False

__all__ = ["NO_SPAN", "TurnSpan", "tracer_for"]


class TurnSpan:
    """The span and the metrics of one turn (a no-op when both are off).

    ``chunks`` is None unless the turn is measured: then the turn appends the
    ``time.monotonic()`` of each text chunk as it arrives.
    """

    __slots__ = ("_metrics", "_span", "_started", "_tracer", "chunks")

    def __init__(self, tracer: Any = None, span: Any = None, metrics: Metrics | None = None):
        self._tracer = tracer
        self._span = span
        self._metrics = metrics
        self._started = time.monotonic() if metrics is not None else 0.0
        self.chunks: list[float] | None = [] if metrics is not None else None

    @property
    def recording(self) -> bool:
        """True while the span records attributes or the turn is measured (worth
        computing the result for).

        False for :data:`NO_SPAN`, after :meth:`ended`, and for the spans of a
        tracer that drops them (OpenTelemetry installed but no provider set up,
        or a sampler that left this turn out) when no metrics are wanted.
        """
        span = self._span
        return self._metrics is not None or (span is not None and bool(span.is_recording()))

    def reconnected(self, cursor: str | None) -> None:
        """The session's connection was re-established (from ``cursor``)."""
        if self._span is not None:
            self._span.add_event("qoder.stream.reconnect", {"qoder.cursor": cursor or ""})

    @contextlib.contextmanager
    def tool(self, name: str, call_id: str) -> Iterator[None]:
        """A span around running one custom tool's handler."""
        if self._span is None or not HAVE_OTEL:
            yield
            return
        context = otel_trace.set_span_in_context(self._span)
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.provider.name": _PROVIDER,
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "function",
        }
        with self._tracer.start_as_current_span(
            f"execute_tool {name}",
            context=context,
            kind=otel_trace.SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            try:
                yield
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                raise

    def ended(
        self,
        *,
        turn_id: str | None = None,
        stop_reason: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        """The turn ended (``error`` when it failed); ends the span, records the metrics."""
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            chunks = self.chunks or ()
            metrics.turn_ended(self._started, chunks, error, input_tokens, output_tokens)
        span, self._span = self._span, None
        if span is None or not HAVE_OTEL:
            return
        if turn_id:
            span.set_attribute("qoder.turn.id", turn_id)
        if stop_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [stop_reason])
        if input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if error is not None:
            span.set_attribute("error.type", type(error).__qualname__)
            span.record_exception(error)
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, str(error)))
        span.end()


NO_SPAN = TurnSpan()
"""The span of every turn when tracing is off."""


class Tracing:
    """Starts turn spans on a tracer, or does nothing (no OpenTelemetry, or none set up).

    ``metrics``: the client's metrics (:data:`NO_METRICS` when off).
    """

    __slots__ = ("_tracer", "metrics")

    def __init__(self, tracer: Any, metrics: Metrics = NO_METRICS) -> None:
        self._tracer = tracer
        self.metrics = metrics

    def turn(self, session_id: str) -> TurnSpan:
        """A started ``invoke_agent`` span (and the metrics) of a new turn of ``session_id``."""
        measured = self.metrics if self.metrics.turn_started() else None
        if self._tracer is None or not HAVE_OTEL:
            return NO_SPAN if measured is None else TurnSpan(metrics=measured)
        span = self._tracer.start_span(
            "invoke_agent",
            kind=otel_trace.SpanKind.CLIENT,
            attributes={**_TURN, "gen_ai.conversation.id": session_id},
        )
        return TurnSpan(self._tracer, span, measured)


def tracer_for(provider: Any = None, metrics: Metrics = NO_METRICS) -> Tracing:
    """Tracing on ``provider`` (else the application's global one), or off without OTel."""
    if not HAVE_OTEL:
        return Tracing(None, metrics)
    source = otel_trace if provider is None else provider  # the global provider's, or this one's
    return Tracing(source.get_tracer("qoder_async", __version__), metrics)
