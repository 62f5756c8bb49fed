"""CORE (sans-I/O): when to retry a request and when to reconnect a stream.

Both policies are values; their state machines take the clock and the random
source as arguments, so tests drive them deterministically.

Request retries (:class:`RetryPolicy`, qoder-api.md §2):

=======================================  ===========================================
answer                                   retried when
=======================================  ===========================================
connection error, timeout                the request is safe (GET/HEAD, or it carries
408, 5xx                                 an ``Idempotency-Key``)
429                                      always (nothing was done)
409 and every other 4xx                  never
``x-should-retry: true|false``           overrides the two rows above (never for 409)
=======================================  ===========================================

The delay is ``Retry-After``/``retry-after-ms`` when the server sends one (up to
``max_retry_after``; longer waits are not slept, the error carries the value),
else capped exponential backoff with jitter.

Stream reconnects (:class:`ReconnectPolicy`): always retried on transport
errors, clean EOF and stalls; the server's ``retry:`` is a floor on the delay;
the attempt counter resets after progress (a real event) or after a connection
stayed healthy for ``healthy_after`` seconds; after ``max_attempts`` failures
in a row (or ``max_elapsed`` seconds without progress) it gives up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import field, frozen

__all__ = ["Backoff", "ReconnectPolicy", "Reconnector", "RetryPolicy"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@frozen
class Backoff:
    """Capped exponential backoff: ``min(maximum, initial * multiplier**n)``, minus jitter.

    ``jitter`` is the largest fraction taken off a delay (0.25: each delay is
    75-100 % of its nominal value), so concurrent clients spread out without
    ever waiting longer than the cap.
    """

    initial: float = 0.5
    maximum: float = 8.0
    multiplier: float = 2.0
    jitter: float = 0.25

    def delay(self, attempt: int, rand: float, floor: float | None = None) -> float:
        """The delay before retry number ``attempt`` (0-based); ``rand`` in [0, 1)."""
        nominal = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        value = nominal * (1.0 - self.jitter * rand)
        if floor is not None and floor > value:
            return floor
        return value


@frozen(kw_only=True)
class RetryPolicy:
    """How JSON requests are retried. Configurable per client and per call.

    ``max_retries`` counts retries after the first attempt (0 disables them).
    """

    max_retries: int = 2
    backoff: Backoff = field(factory=Backoff)
    max_retry_after: float = 60.0

    def delay(
        self,
        *,
        attempt: int,
        method: str,
        idempotent: bool,
        status: int | None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        rand: float = 0.0,
    ) -> float | None:
        """Seconds to wait before retrying, or ``None`` not to retry.

        ``attempt`` is the number of retries already made; ``status`` is None for
        a connection error or timeout; ``retry_after`` the server's requested
        wait in seconds, if any.
        """
        if attempt >= self.max_retries or status == 409:
            return None
        should = (headers or {}).get("x-should-retry")
        if should == "false":
            return None
        safe = idempotent or method.upper() in SAFE_METHODS
        if should != "true":
            if status is None or status == 408 or status >= 500:
                if not safe:
                    return None
            elif status != 429:
                return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            return retry_after
        return self.backoff.delay(attempt, rand)


@frozen(kw_only=True)
class ReconnectPolicy:
    """How a stream reconnects. ``None`` bounds mean "no bound"."""

    backoff: Backoff = field(factory=lambda: Backoff(initial=0.5, maximum=10.0))
    max_attempts: int | None = 10
    max_elapsed: float | None = None
    healthy_after: float = 5.0


class Reconnector:
    """The reconnect state of one stream (sans-I/O: ``clock`` and ``rand`` injected)."""

    __slots__ = ("_clock", "_connected_at", "_failing_since", "_rand", "attempts", "policy")

    def __init__(
        self,
        policy: ReconnectPolicy,
        *,
        clock: Callable[[], float],
        rand: Callable[[], float],
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rand = rand
        self.attempts = 0
        self._connected_at: float | None = None
        self._failing_since: float | None = None

    def connected(self) -> None:
        """A connection was established (headers received)."""
        self._connected_at = self._clock()

    def progress(self) -> None:
        """A real event arrived: the next failure starts from the first delay again."""
        self.attempts = 0
        self._failing_since = None

    @property
    def failing_for(self) -> float:
        """Seconds since the current run of failures began (0 when none)."""
        if self._failing_since is None:
            return 0.0
        return self._clock() - self._failing_since

    def failed(self, server_retry: float | None = None) -> float | None:
        """The connection failed or ended: seconds to wait, or ``None`` to give up."""
        now = self._clock()
        p = self.policy
        if self._connected_at is not None and now - self._connected_at >= p.healthy_after:
            self.progress()
        self._connected_at = None
        if self._failing_since is None:
            self._failing_since = now
        self.attempts += 1
        if p.max_attempts is not None and self.attempts > p.max_attempts:
            return None
        if p.max_elapsed is not None and now - self._failing_since > p.max_elapsed:
            return None
        return p.backoff.delay(self.attempts - 1, self._rand(), server_retry)
