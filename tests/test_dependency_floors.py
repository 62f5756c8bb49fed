"""What the oldest declared dependency versions lack, and the shims that stand in.

CI runs the whole fast suite at the lowest versions pyproject.toml allows
(``.ci/run``); these tests pin each shim down on the newest versions too, by
taking away what the old version does not have.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from qoder_async import APIConnectionError, APITimeoutError, QoderClient, RetryPolicy


class _NoSuchHost(AbstractResolver):
    """A resolver that fails every lookup the way the system resolver does."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        return None


@pytest.fixture
def aiohttp_before_3_10_10(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp 3.10.0 to 3.10.9: no ``aiohttp.ClientConnectorDNSError``."""
    monkeypatch.delattr(aiohttp, "ClientConnectorDNSError", raising=False)


async def _failure(base_url: str, **kwargs: Any) -> APIConnectionError:
    async with QoderClient(
        token="t", base_url=base_url, retry=RetryPolicy(max_retries=0), **kwargs
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.sessions.retrieve("sess_x")
    return info.value


@pytest.mark.usefixtures("aiohttp_before_3_10_10")
async def test_a_refused_connection_reads_as_refused_without_the_dns_error_class() -> None:
    """Issue 22 item 14: on aiohttp < 3.10.10 a connection error was an AttributeError."""
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = await _failure(f"http://127.0.0.1:{port}/api/v1/cloud")
    assert not isinstance(err, APITimeoutError)
    assert f"refused by 127.0.0.1:{port}" in str(err)


@pytest.mark.usefixtures("aiohttp_before_3_10_10")
async def test_a_failed_lookup_reads_as_dns_without_the_dns_error_class() -> None:
    """Old aiohttp raises ClientConnectorError from the resolver's gaierror: still DNS."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_NoSuchHost()))
    async with session:
        err = await _failure("https://no-such-host.test/api/v1/cloud", http_client=session)
    assert "Could not resolve the host 'no-such-host.test' (DNS)" in str(err)
