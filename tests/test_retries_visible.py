"""Retries and reconnects are visible in the logs; errors name a request one way; request ids.

Each retry of a request logs one WARNING on the ``qoder_async`` logger (what
failed, the attempt, the delay, the deadline left; never the token or the
query); a stream that reconnects after a failure logs a WARNING too. Every
error names its request by the API path. The fake server's request ids are
unique across servers. Timeouts only guard against hangs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket

import pytest

from qoder_async import (
    APIConnectionError,
    Backoff,
    NotFoundError,
    QoderClient,
    RateLimitError,
    RetryPolicy,
)
from qoder_async.testing import CannedResponse, FakeQoderServer

TIMEOUT = 30.0
TOKEN = "pat_secret_token_value_123456"
QUERY_SECRET = "sig-0123456789abcdef"
FAST = Backoff(initial=0.01, maximum=0.02)


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "qoder_async" and r.levelno == logging.WARNING and "retrying" in r.message
    ]


async def test_each_retry_of_a_refused_connection_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="qoder_async")
    base_url = f"http://127.0.0.1:{refused_port()}/api/v1/cloud"
    policy = RetryPolicy(timeout=5.0, max_retries=3, backoff=FAST)
    async with QoderClient(token=TOKEN, base_url=base_url, retry=policy) as client:
        with pytest.raises(APIConnectionError) as excinfo:
            async with asyncio.timeout(TIMEOUT):
                await client.environments.retrieve("env_1", extra_query={"signature": QUERY_SECRET})
    records = retry_records(caplog)
    assert len(records) == 3, [r.message for r in records]
    for number, record in enumerate(records, start=1):
        message = record.message
        assert message.startswith(f"GET /environments/env_1 failed (attempt {number}): ")
        assert "connection refused" in message.lower()
        assert re.search(r"retrying in \d+\.\d\ds \(\d+\.\ds of the retry deadline left\)", message)
        assert TOKEN not in message
        assert QUERY_SECRET not in message
        assert "signature" not in message
    assert "/api/v1/cloud" not in str(excinfo.value)


async def test_a_retried_status_is_a_warning_naming_the_status(
    server: FakeQoderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qoder_async")
    server.faults.throttle_first = 2
    server.faults.throttle_status = 503
    server.faults.retry_after = 0.01
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        async with asyncio.timeout(TIMEOUT):
            await client.environments.create(name="sandbox", idempotency_key="k-1")
    records = retry_records(caplog)
    assert [r.message.split(":")[0] for r in records] == [
        "POST /environments failed (attempt 1)",
        "POST /environments failed (attempt 2)",
    ]
    assert all(": 503: " in r.message for r in records)
    assert all("of the retry deadline left" in r.message for r in records)


async def test_a_request_that_is_not_retried_logs_no_warning(
    server: FakeQoderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qoder_async")
    server.faults.throttle_first = 1
    server.faults.retry_after = 3600.0  # longer than anyone waits: raised at once
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        with pytest.raises(RateLimitError):
            await client.environments.retrieve("env_1")
    assert retry_records(caplog) == []


def reconnect_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.message
        for r in caplog.records
        if r.name == "qoder_async" and r.levelno == logging.WARNING and "reconnecting" in r.message
    ]


async def test_a_stream_that_cannot_be_opened_warns_as_it_reconnects(
    server: FakeQoderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qoder_async")
    session_id = server.add_session()["id"]
    unavailable = CannedResponse(
        "GET", r"/stream$", 503, {"Content-Type": "application/json", "Retry-After": "0"}, b"{}"
    )
    server.faults.respond_next.append(unavailable)
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        async with asyncio.timeout(TIMEOUT):
            result = await (await client.session(session_id).send("hello")).result()
    assert result.text
    warnings = reconnect_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "retryable status" in warnings[0]
    assert server.token not in warnings[0]


async def test_an_open_stream_that_breaks_off_resumes_without_a_warning(
    server: FakeQoderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="qoder_async")
    session_id = server.add_session()["id"]
    server.faults.drop_after_events = 1
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        async with asyncio.timeout(TIMEOUT):
            result = await (await client.session(session_id).send("hello")).result()
    assert result.text
    assert any("reconnecting" in r.message for r in caplog.records)  # it did reconnect
    assert reconnect_warnings(caplog) == []


# --------------------------------------------------------------------------- one form of path


def test_request_path_is_the_api_path() -> None:
    from qoder_async._core.errors import request_path

    assert request_path("/sessions/s1/events") == "/sessions/s1/events"
    assert request_path("/api/v1/cloud/sessions/s1/events") == "/sessions/s1/events"
    assert request_path("https://h.example/api/v1/cloud/files/f1/content?sig=x") == (
        "/files/f1/content"
    )
    assert request_path("https://proxy.example/q/api/v1/cloud/agents") == "/agents"
    assert request_path("https://cdn.example/bucket/obj?X-Amz-Signature=s") == "/bucket/obj"


async def test_connection_and_status_errors_name_the_request_alike(
    server: FakeQoderServer,
) -> None:
    no_retry = RetryPolicy(max_retries=0)
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        with pytest.raises(NotFoundError) as status:
            await client.environments.retrieve("env_missing")
    base_url = f"http://127.0.0.1:{refused_port()}/api/v1/cloud"
    async with QoderClient(token=TOKEN, base_url=base_url, retry=no_retry) as client:
        with pytest.raises(APIConnectionError) as connection:
            await client.environments.retrieve("env_missing")
    assert status.value.url == connection.value.url == "/environments/env_missing"
    assert "(GET /environments/env_missing)" in str(status.value)
    assert "(GET /environments/env_missing)" in str(connection.value)


# --------------------------------------------------------------------------- request ids


async def test_two_fake_servers_hand_out_different_request_ids() -> None:
    ids: list[str] = []
    for _ in range(2):
        async with (
            FakeQoderServer() as server,  # the same (default) seed
            QoderClient(token=server.token, base_url=server.base_url) as client,
        ):
            for _ in range(3):
                raw = await client.environments.with_raw_response.create(name="e")
                assert raw.request_id is not None
                ids.append(raw.request_id)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids), ids
    assert len(set(ids)) == len(ids), ids
