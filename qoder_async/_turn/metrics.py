"""SHELL: optional OpenTelemetry metrics (``pip install "qoder-async[otel]"``).

Without ``opentelemetry-api`` nothing happens and nothing is imported. With it,
measurements go to the meter provider given as ``QoderClient(meter_provider=...)``,
else to the application's global one (a global provider set after the client
was created is used from then on); the client never installs a provider. The
instruments are made once per client. No attribute ever carries a session id,
a turn id, text or a token (cardinality and privacy). Names follow the GenAI
semantic conventions:

================================================  ===============================================
instrument                                        what it measures, and its attributes
================================================  ===============================================
``gen_ai.client.operation.duration``              one per turn: seconds from the send to the
(histogram, ``s``)                                turn's end (a failed send too);
                                                  ``gen_ai.operation.name`` = ``invoke_agent``,
                                                  ``gen_ai.provider.name`` = ``qoder``,
                                                  ``error.type`` when it failed
``gen_ai.client.token.usage``                     per turn that ended with usage: its
(histogram, ``{token}``)                          ``result().usage`` input and output tokens,
                                                  ``gen_ai.token.type`` = ``input`` / ``output``
``gen_ai.client.operation.time_to_first_chunk``   per turn with text: seconds from the send to
(histogram, ``s``)                                the first agent text (preview or message)
``gen_ai.client.operation.time_per_output_chunk`` per text chunk after the first: seconds since
(histogram, ``s``)                                the chunk before it
``qoder.stream.reconnects`` (counter)             a stream's connection is opened again
``qoder.stream.stalls`` (counter)                 a stream saw no event for ``stall_timeout``
                                                  while an event was expected
``qoder.http.retries`` (counter)                  a request is retried; ``qoder.retry.reason``:
                                                  ``connection_error``, ``timeout``, ``408``,
                                                  ``429``, ``5xx``, ``in_progress``, ``other``
``qoder.listener.overflows`` (counter)            a ``listen()`` reader was detached (it fell
                                                  behind)
``qoder.fleet.deliveries`` (counter)              a fleet handler is called;
                                                  ``qoder.fleet.redelivered`` (bool)
``qoder.fleet.handoffs`` (counter)                a fleet worker handed a session's lease off
``qoder.fleet.leases`` (up-down counter)          the sessions a fleet worker follows now
================================================  ===============================================

The turn's instruments cost one ``time.monotonic()`` per text chunk and one
fold of the turn's events at its end while a provider is set up; with none
(OpenTelemetry absent, or no global provider yet) a turn takes no timestamps
and folds nothing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from qoder_async._core.errors import APITimeoutError, RequestInProgressError
from qoder_async._core.version import __version__
from qoder_async._shell.http import Observer

try:  # the optional extra: pip install "qoder-async[otel]"
    from opentelemetry import metrics as otel_metrics

    HAVE_OTEL = True
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_OTEL = False

__all__ = ["NO_METRICS", "Metrics", "metrics_for", "retry_reason"]

_PROVIDER = "qoder"
_TURN = {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": _PROVIDER}
_INPUT = {**_TURN, "gen_ai.token.type": "input"}
_OUTPUT = {**_TURN, "gen_ai.token.type": "output"}
_REDELIVERED = ({"qoder.fleet.redelivered": False}, {"qoder.fleet.redelivered": True})
# The semantic conventions' advisory buckets (agent turns run longer: a few more).
_SECONDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96)
_TURN_SECONDS = (*_SECONDS, 81.92, 163.84, 327.68, 655.36, 1310.72)
_TTFC = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOC = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_TOKENS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864
# (name, unit, description, buckets) of the turn's histograms, as _Recording unpacks them.
_HISTOGRAMS = (
    ("gen_ai.client.operation.duration", "s", "GenAI operation duration", _TURN_SECONDS),
    ("gen_ai.client.token.usage", "{token}", "Number of input and output tokens used", _TOKENS),
    (
        "gen_ai.client.operation.time_to_first_chunk",
        "s",
        "Time to receive the first chunk of the reply",
        _TTFC,
    ),
    (
        "gen_ai.client.operation.time_per_output_chunk",
        "s",
        "Time between chunks of the reply",
        _TPOC,
    ),
)


def _histogram(meter: Any, name: str, unit: str, description: str, buckets: Any) -> Any:
    """A histogram with the conventions' advisory buckets where the API takes them."""
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # an older opentelemetry-api: the SDK's default buckets
        return meter.create_histogram(name, unit=unit, description=description)


def retry_reason(error: BaseException, status: int | None) -> str:
    """Why a request is retried, from a small closed set (a metric attribute)."""
    if isinstance(error, RequestInProgressError):
        return "in_progress"
    if status is None:
        return "timeout" if isinstance(error, APITimeoutError) else "connection_error"
    if status in (408, 429):
        return str(status)
    return "5xx" if status >= 500 else "other"


class Metrics(Observer):
    """A client's metrics; this one (:data:`NO_METRICS`) records nothing."""

    __slots__ = ()

    def turn_started(self) -> bool:
        """Whether a turn starting now is measured (a provider is set up)."""
        return False

    def turn_ended(
        self,
        started: float,
        chunks: Sequence[float],
        error: BaseException | None,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        """A measured turn ended (``chunks``: when each text chunk arrived)."""

    def overflowed(self) -> None:
        """A ``listen()`` reader was detached."""

    def delivered(self, redelivered: bool) -> None:
        """A fleet handler is called."""

    def handed_off(self) -> None:
        """A fleet worker handed a lease off."""

    def leases(self, change: int) -> None:
        """A fleet worker follows ``change`` more (or fewer) sessions."""


NO_METRICS = Metrics()
"""The metrics of a client without OpenTelemetry (or with a no-op provider)."""


class _Recording(Metrics):
    """Metrics on a meter; instruments made once."""

    __slots__ = (
        "_deliveries",
        "_duration",
        "_handoffs",
        "_leases",
        "_overflows",
        "_pending",
        "_reconnects",
        "_retries",
        "_stalls",
        "_tokens",
        "_tpoc",
        "_ttfc",
    )

    def __init__(self, meter: Any, pending: Any) -> None:
        # ``pending``: the global provider's stand-in while none is set (turns are not
        # measured until the application sets one; counters go through it for free).
        self._pending = pending
        self._duration, self._tokens, self._ttfc, self._tpoc = (
            _histogram(meter, *spec) for spec in _HISTOGRAMS
        )
        counter = meter.create_counter
        self._reconnects = counter("qoder.stream.reconnects", description="Stream reconnects")
        self._stalls = counter("qoder.stream.stalls", description="Stream stalls")
        self._retries = counter("qoder.http.retries", description="Request retries")
        self._overflows = counter(
            "qoder.listener.overflows", description="listen() readers detached"
        )
        self._deliveries = counter("qoder.fleet.deliveries", description="Fleet deliveries")
        self._handoffs = counter("qoder.fleet.handoffs", description="Fleet lease hand-offs")
        self._leases = meter.create_up_down_counter(
            "qoder.fleet.leases", description="Sessions a fleet worker follows"
        )

    def turn_started(self) -> bool:
        pending = self._pending
        if pending is None:
            return True
        if otel_metrics.get_meter_provider() is pending:
            return False
        self._pending = None  # the application set its provider: measured from now on
        return True

    def turn_ended(
        self,
        started: float,
        chunks: Sequence[float],
        error: BaseException | None,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        now = time.monotonic()
        attributes: Mapping[str, str] = _TURN
        if error is not None:
            attributes = {**_TURN, "error.type": type(error).__qualname__}
        self._duration.record(now - started, attributes)
        if input_tokens is not None:
            self._tokens.record(input_tokens, _INPUT)
        if output_tokens is not None:
            self._tokens.record(output_tokens, _OUTPUT)
        if chunks:
            self._ttfc.record(chunks[0] - started, _TURN)
            record = self._tpoc.record
            for before, at in itertools.pairwise(chunks):
                record(at - before, _TURN)

    def retrying(self, error: BaseException, status: int | None) -> None:
        self._retries.add(1, {"qoder.retry.reason": retry_reason(error, status)})

    def stream_dropped(self, stalled: bool, reconnecting: bool) -> None:
        if stalled:
            self._stalls.add(1)
        if reconnecting:
            self._reconnects.add(1)

    def overflowed(self) -> None:
        self._overflows.add(1)

    def delivered(self, redelivered: bool) -> None:
        self._deliveries.add(1, _REDELIVERED[redelivered])

    def handed_off(self) -> None:
        self._handoffs.add(1)

    def leases(self, change: int) -> None:
        self._leases.add(change)


def metrics_for(provider: Any = None) -> Metrics:
    """Metrics on ``provider`` (else the application's global one), or none without OTel."""
    if not HAVE_OTEL:
        return NO_METRICS
    pending = None
    if provider is None:
        provider = otel_metrics.get_meter_provider()
        # Before the application sets one, the global provider is a stand-in that
        # forwards to the real one once set: keep its instruments, skip the turns' work.
        if type(provider).__name__ == "_ProxyMeterProvider":
            pending = provider
    if isinstance(provider, otel_metrics.NoOpMeterProvider):
        return NO_METRICS
    return _Recording(provider.get_meter("qoder_async", __version__), pending)
