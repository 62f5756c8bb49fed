"""SHELL: optional OpenTelemetry spans (``pip install "qoder-async[otel]"``).

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ._version import __version__

try:  # the optional extra: pip install "qoder-async[otel]"
    from opentelemetry import trace as otel_trace

    HAVE_OTEL = True
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_OTEL = False

__all__ = ["NO_SPAN", "TurnSpan", "tracer_for"]

_PROVIDER = "qoder"


class TurnSpan:
    """The span of one turn (a no-op when tracing is off)."""

    __slots__ = ("_span", "_tracer")

    def __init__(self, tracer: Any = None, span: Any = None) -> None:
        self._tracer = tracer
        self._span = span

    @property
    def recording(self) -> bool:
        """True while the span records attributes (worth computing them for).

        False for :data:`NO_SPAN`, after :meth:`ended`, and for the spans of a
        tracer that drops them (OpenTelemetry installed but no provider set up,
        or a sampler that left this turn out).
        """
        span = self._span
        return span is not None and bool(span.is_recording())

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
        turn_id: str | None,
        stop_reason: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        error: BaseException | None,
    ) -> None:
        """The turn ended (``error`` when it failed); ends the span."""
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
    """Starts turn spans on a tracer, or does nothing (no OpenTelemetry, or none set up)."""

    __slots__ = ("_tracer",)

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def turn(self, session_id: str) -> TurnSpan:
        """A started ``invoke_agent`` span for a new turn of ``session_id``."""
        if self._tracer is None or not HAVE_OTEL:
            return NO_SPAN
        span = self._tracer.start_span(
            "invoke_agent",
            kind=otel_trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.provider.name": _PROVIDER,
                "gen_ai.conversation.id": session_id,
            },
        )
        return TurnSpan(self._tracer, span)


def tracer_for(provider: Any = None) -> Tracing:
    """Tracing on ``provider`` (else the application's global one), or off without OTel."""
    if not HAVE_OTEL:
        return Tracing(None)
    if provider is not None:
        return Tracing(provider.get_tracer("qoder_async", __version__))
    return Tracing(otel_trace.get_tracer("qoder_async", __version__))
