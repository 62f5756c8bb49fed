"""CORE (sans-I/O): when to retry a request, and the policies of stream reconnects.

Both policies are values; the random source is an argument, so tests drive
them deterministically.

Request retries (:class:`RetryPolicy`, qoder-api.md §2):

=======================================  ===========================================
answer                                   retried when
=======================================  ===========================================
connection error, timeout                the request is safe (GET/HEAD, or it carries
408, 5xx                                 an ``Idempotency-Key``)
429                                      always (nothing was done)
409 "a request with this key is in       the request carries its ``Idempotency-Key``
progress"                                (the first attempt is still running)
any other 409 and every other 4xx        never
``x-should-retry: true|false``           overrides the 408/429/5xx rows (never a 409)
=======================================  ===========================================

The delay is ``Retry-After``/``retry-after-ms`` when the server sends one (up to
``max_retry_after``; longer waits are not slept, the error carries the value),
else capped exponential backoff with jitter. Retries stop once the next one
would start more than ``timeout`` seconds after the first attempt (a deadline,
not a count: a gateway that throttles for 20 s does not lose the message).

Stream reconnects (:class:`ReconnectPolicy`) are decided by the stream machine
(``_core/machine.py``), which holds their rule table.
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen

__all__ = ["Backoff", "ReconnectPolicy", "RetryPolicy"]

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
    """How requests are retried. Configurable per client and per call.

    Retries are bounded by time, not by a count: a request is retried until
    ``timeout`` seconds have passed since its first attempt (``None``: no time
    bound), like stamina's deadline. ``max_retries`` optionally bounds the
    count as well (``0`` disables retries). A server's ``Retry-After`` is
    honoured up to ``max_retry_after`` seconds and within the deadline.
    """

    max_retries: int | None = None
    timeout: float | None = 60.0
    backoff: Backoff = field(factory=Backoff)
    max_retry_after: float = 60.0

    def delay(
        self,
        *,
        attempt: int,
        method: str,
        idempotent: bool,
        status: int | None,
        elapsed: float = 0.0,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        rand: float = 0.0,
        in_progress: bool = False,
    ) -> float | None:
        """Seconds to wait before retrying, or ``None`` not to retry.

        ``attempt`` is the number of retries already made and ``elapsed`` the
        seconds since the first attempt; ``status`` is None for a connection
        error or timeout; ``retry_after`` the server's requested wait in
        seconds, if any; ``in_progress`` marks a 409 saying the first attempt
        with this ``Idempotency-Key`` is still being processed.
        """
        if self.max_retries is not None and attempt >= self.max_retries:
            return None
        safe = idempotent or method.upper() in SAFE_METHODS
        if status == 409:
            if not (in_progress and idempotent):
                return None
        else:
            should = (headers or {}).get("x-should-retry")
            if should == "false":
                return None
            if should != "true":
                if status is None or status == 408 or status >= 500:
                    if not safe:
                        return None
                elif status != 429:
                    return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            wait = retry_after
        else:
            wait = self.backoff.delay(attempt, rand)
        if self.timeout is not None and elapsed + wait > self.timeout:
            return None
        return wait


@frozen(kw_only=True)
class ReconnectPolicy:
    """How a stream reconnects. ``None`` bounds mean "no bound".

    See the stream machine (``_core/machine.py``) for how the attempts are counted.
    """

    backoff: Backoff = field(factory=lambda: Backoff(initial=0.5, maximum=10.0))
    max_attempts: int | None = 10
    max_elapsed: float | None = None
    healthy_after: float = 5.0
