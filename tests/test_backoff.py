"""Retry policies (sans-I/O: randomness is an argument); reconnects are in test_engine_core."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qoder_async import Backoff, RetryPolicy


@given(st.integers(0, 200), st.floats(0, 0.999999))
def test_backoff_is_capped_and_jitter_only_shortens(attempt: int, rand: float) -> None:
    b = Backoff(initial=0.5, maximum=8.0, jitter=0.25)
    nominal = min(8.0, 0.5 * 2 ** min(attempt, 64))
    assert 0.75 * nominal <= b.delay(attempt, rand) <= nominal


def test_backoff_grows_then_caps() -> None:
    b = Backoff(initial=0.5, maximum=8.0, jitter=0.0)
    assert [b.delay(n, 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_server_retry_is_a_floor() -> None:
    b = Backoff(initial=0.5, maximum=8.0, jitter=0.0)
    assert b.delay(0, 0.0, floor=3.0) == 3.0
    assert b.delay(5, 0.0, floor=3.0) == 8.0


@pytest.mark.parametrize(
    ("method", "idempotent", "status", "retries"),
    [
        ("GET", False, None, True),  # connection error on a safe request
        ("GET", False, 408, True),
        ("GET", False, 500, True),
        ("GET", False, 503, True),
        ("GET", False, 429, True),
        ("GET", False, 404, False),
        ("GET", False, 400, False),
        ("POST", False, None, False),  # unsafe write: the request may have been applied
        ("POST", False, 500, False),
        ("POST", False, 429, True),  # throttled: nothing was done
        ("POST", True, None, True),  # an Idempotency-Key makes it safe
        ("POST", True, 502, True),
        ("POST", True, 409, False),  # 409 is never retried blindly
        ("GET", False, 409, False),
    ],
)
def test_retry_matrix(method: str, idempotent: bool, status: int | None, retries: bool) -> None:
    policy = RetryPolicy(max_retries=2)
    delay = policy.delay(attempt=0, method=method, idempotent=idempotent, status=status)
    assert (delay is not None) is retries


def test_retry_budget_and_headers() -> None:
    p = RetryPolicy(max_retries=2, max_retry_after=5.0)
    kw = {"method": "GET", "idempotent": False, "status": 503}
    assert p.delay(attempt=2, **kw) is None  # type: ignore[arg-type]
    assert p.delay(attempt=0, retry_after=1.5, **kw) == 1.5  # type: ignore[arg-type]
    assert p.delay(attempt=0, retry_after=30.0, **kw) is None  # type: ignore[arg-type]
    no = {"x-should-retry": "false"}
    assert p.delay(attempt=0, headers=no, **kw) is None  # type: ignore[arg-type]
    yes = {"x-should-retry": "true"}
    assert p.delay(attempt=0, method="POST", idempotent=False, status=400, headers=yes) is not None
    assert p.delay(attempt=0, method="POST", idempotent=True, status=409, headers=yes) is None


def test_retries_are_bounded_by_a_deadline_not_a_count() -> None:
    """A throttling gateway is retried as long as the deadline allows."""
    p = RetryPolicy(timeout=60.0, backoff=Backoff(initial=0.5, maximum=8.0, jitter=0.0))
    kw = {"method": "POST", "idempotent": True, "status": 503}
    elapsed, attempt = 0.0, 0
    while (delay := p.delay(attempt=attempt, elapsed=elapsed, **kw)) is not None:  # type: ignore[arg-type]
        elapsed += delay
        attempt += 1
    assert attempt > 8  # far more than the old count of 2
    assert elapsed <= 60.0
    # Retry-After is honoured, but never past the deadline
    assert p.delay(attempt=0, elapsed=50.0, retry_after=5.0, **kw) == 5.0  # type: ignore[arg-type]
    assert p.delay(attempt=0, elapsed=58.0, retry_after=5.0, **kw) is None  # type: ignore[arg-type]
    assert RetryPolicy(max_retries=0).delay(attempt=0, **kw) is None  # type: ignore[arg-type]


def test_a_request_in_progress_is_retried_only_with_its_key() -> None:
    p = RetryPolicy()
    assert p.delay(attempt=0, method="POST", idempotent=True, status=409, in_progress=True)
    assert p.delay(attempt=0, method="POST", idempotent=False, status=409, in_progress=True) is None
    assert p.delay(attempt=0, method="POST", idempotent=True, status=409) is None
