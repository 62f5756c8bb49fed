"""client.files against the fake: streamed uploads of every kind of source, downloads of both
answers the API may give (the bytes, or a link fetched without credentials), and files in
messages. Every test here runs on both transports.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import pytest
from aiohttp import web
from conftest import eventually

from qoder_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    FileDownload,
    NotFoundError,
    PermissionDeniedError,
    QoderClient,
    RateLimitError,
)
from qoder_async._shell import files as files_module
from qoder_async._shell.files import CHUNK_SIZE
from qoder_async.testing import CannedResponse, FakeQoderServer
from qoder_async.types import Deleted, DocumentBlock, FileMetadata, ImageBlock, TextBlock

pytestmark = pytest.mark.both_transports  # bodies streamed both ways

BIG = bytes(range(256)) * 4096  # 1 MiB: several chunks


def upload_requests(server: FakeQoderServer) -> list[dict[str, str]]:
    return [r.headers for r in server.requests if r.method == "POST" and r.path.endswith("/files")]


# --------------------------------------------------------------------------- uploads


async def test_upload_from_a_path(
    client: QoderClient, server: FakeQoderServer, tmp_path: Path
) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(BIG)
    meta = await client.files.upload(path, purpose="agent", metadata={"chat": "42"})
    assert isinstance(meta, FileMetadata)
    assert meta.id.startswith("file_")
    assert meta.filename == "report.pdf"
    assert meta.mime_type == "application/pdf"
    assert meta.size_bytes == len(BIG)
    assert meta.purpose == "agent"
    assert meta.metadata == {"chat": "42"}
    assert meta.downloadable is True
    assert server.file_content(meta.id) == BIG
    [headers] = upload_requests(server)
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert int(headers["content-length"]) > len(BIG)  # sized: not sent chunked
    # A str path works too.
    again = await client.files.upload(str(path), filename="renamed.pdf")
    assert again.filename == "renamed.pdf"


async def test_upload_bytes_file_objects_and_the_sdk_tuple(
    client: QoderClient, server: FakeQoderServer
) -> None:
    raw = await client.files.upload(b"hello file", filename="notes.txt")
    assert (raw.filename, raw.mime_type) == ("notes.txt", "text/plain")
    assert server.file_content(raw.id) == b"hello file"

    buffer = io.BytesIO(b"skip-me|the rest")
    buffer.seek(len(b"skip-me|"))  # uploads from where the object is
    obj = await client.files.upload(buffer, filename="rest.bin")
    assert server.file_content(obj.id) == b"the rest"
    assert obj.mime_type == "application/octet-stream"

    sdk = await client.files.upload(("data.csv", b"a,b\n1,2\n", "text/csv"), name="table.csv")
    assert sdk.mime_type == "text/csv"
    assert sdk.filename == "table.csv"  # the form's name field renames it, as in the SDK
    assert server.file_content(sdk.id) == b"a,b\n1,2\n"

    unicode = await client.files.upload(b"x", filename='résumé "final".txt')
    assert unicode.filename == 'résumé "final".txt'


class CountingReader(io.RawIOBase):
    """A binary file object that records every read size."""

    def __init__(self, data: bytes, seekable: bool = True) -> None:
        self._data = io.BytesIO(data)
        self._seekable = seekable
        self.reads: list[int] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        return self._data.read(size)

    def tell(self) -> int:
        return self._data.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._seekable:
            raise OSError("not seekable")
        return self._data.seek(offset, whence)


async def test_uploads_stream_in_chunks(client: QoderClient, server: FakeQoderServer) -> None:
    reader = CountingReader(BIG)
    meta = await client.files.upload(reader, filename="big.bin")
    assert server.file_content(meta.id) == BIG
    # Read piece by piece, never whole.
    assert len(reader.reads) > 2
    assert all(0 < size <= CHUNK_SIZE for size in reader.reads)


async def test_upload_from_a_pipe_is_sent_chunked(
    client: QoderClient, server: FakeQoderServer
) -> None:
    read_fd, write_fd = os.pipe()

    def produce() -> None:
        with os.fdopen(write_fd, "wb") as w:
            for _ in range(4):
                w.write(BIG[:100_000])

    writer = threading.Thread(target=produce)
    writer.start()
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            meta = await client.files.upload(pipe, filename="stream.log")
    finally:
        writer.join()
    assert server.file_content(meta.id) == BIG[:100_000] * 4
    [headers] = upload_requests(server)
    assert "content-length" not in headers
    assert headers["transfer-encoding"] == "chunked"


async def test_upload_from_an_async_iterable(client: QoderClient, server: FakeQoderServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0)
            yield f"part {i}\n".encode()

    meta = await client.files.upload(chunks(), filename="parts.txt")
    assert server.file_content(meta.id) == b"".join(f"part {i}\n".encode() for i in range(5))


async def test_a_throttled_upload_is_resent_whole_when_it_can_be(
    client: QoderClient, server: FakeQoderServer
) -> None:
    server.faults.retry_after = 0.0
    server.faults.throttle_first = 1
    buffer = io.BytesIO(BIG)
    meta = await client.files.upload(buffer, filename="again.bin")
    assert server.file_content(meta.id) == BIG
    assert len(upload_requests(server)) == 2

    async def once() -> AsyncIterator[bytes]:
        yield b"cannot be read twice"

    server.faults.throttle_first = 1
    with pytest.raises(RateLimitError):
        await client.files.upload(once(), filename="once.txt")
    assert len(upload_requests(server)) == 3  # never retried


class SourceGone(Exception):
    """What a chat platform's stream raises when it goes away."""


class FailingReader(CountingReader):
    """A seekable file object whose second read fails (a disk error half-way)."""

    calls = 0

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise OSError(5, "Input/output error (the disk, not the network)")
        return super().read(size)


async def test_an_upload_source_that_fails_raises_its_own_error_and_is_never_retried(
    client: QoderClient, server: FakeQoderServer
) -> None:
    gone = SourceGone("the chat platform closed the attachment stream")
    pulls = 0

    async def attachment() -> AsyncIterator[bytes]:
        nonlocal pulls
        pulls += 1
        yield BIG[:CHUNK_SIZE]
        raise gone

    with pytest.raises(SourceGone) as info:
        await client.files.upload(attachment(), filename="a.bin", idempotency_key="up-1")
    assert info.value is gone
    assert pulls == 1
    # A source that could be read again is not retried either once it failed half-way:
    # the failure is the source's, not the connection's.
    reader = FailingReader(BIG)
    with pytest.raises(OSError, match="the disk, not the network") as failed:
        await client.files.upload(reader, filename="b.bin", idempotency_key="up-2")
    assert not isinstance(failed.value, APIConnectionError)
    assert reader.calls == 2  # one attempt: the first read, then the failing one
    assert [f async for f in client.files.list()] == []  # nothing half-sent was stored


async def test_upload_refuses_what_is_not_a_file(client: QoderClient) -> None:
    with pytest.raises(TypeError, match="binary file object"):
        await client.files.upload(12345, filename="n")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="binary mode"):
        await client.files.upload(io.StringIO("text"), filename="t.txt")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        await client.files.upload("/no/such/file.txt")


# --------------------------------------------------------------------------- metadata


async def test_retrieve_list_and_delete(client: QoderClient, server: FakeQoderServer) -> None:
    first = server.add_file(b"1", "one.txt")
    second = server.add_file(b"2", "two.txt")
    meta = await client.files.retrieve_metadata(first["id"])
    assert meta.filename == "one.txt"
    assert meta.created_at is not None
    listed = [f.id async for f in client.files.list(limit=1)]
    assert listed == [second["id"], first["id"]]  # newest first
    only = [f.id async for f in client.files.list(ids=[first["id"]])]
    assert only == [first["id"]]
    deleted = await client.files.delete(first["id"])
    assert deleted == Deleted(id=first["id"], type="file_deleted")
    with pytest.raises(NotFoundError):
        await client.files.retrieve_metadata(first["id"])


# --------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("answer", ["link", "bytes", "negotiate"])
async def test_download_either_answer(
    client: QoderClient, server: FakeQoderServer, answer: str
) -> None:
    server.dialect.file_content = answer  # type: ignore[assignment]
    meta = server.add_file(BIG, "big.bin", mime_type="application/octet-stream")
    download = await client.files.download(meta["id"])
    assert isinstance(download, FileDownload)
    assert download.status_code == 200
    assert download.content_type == "application/octet-stream"
    assert download.filename == "big.bin"
    chunks = [chunk async for chunk in download]
    assert b"".join(chunks) == BIG
    assert download.closed
    storage = [r for r in server.requests if r.path.startswith("/_fake_storage/")]
    assert len(storage) == (0 if answer == "bytes" else 1)


async def test_a_download_link_gets_no_credentials(server: FakeQoderServer) -> None:
    server.dialect.file_content = "link"
    meta = server.add_file(b"secret report", "r.txt")
    async with QoderClient(
        token=server.token,
        base_url=server.base_url,
        default_headers={"X-Workspace": "ws_private"},
    ) as client:
        assert await (await client.files.download(meta["id"])).read() == b"secret report"
    [api, storage] = [r for r in server.requests if "content" in r.path or "storage" in r.path]
    assert api.headers["authorization"] == f"Bearer {server.token}"
    assert api.headers["x-workspace"] == "ws_private"
    assert "authorization" not in storage.headers
    assert "x-workspace" not in storage.headers
    assert server.token not in json.dumps(storage.headers)


async def test_a_borrowed_httpx_clients_defaults_stay_home(server: FakeQoderServer) -> None:
    server.dialect.file_content = "link"
    meta = server.add_file(b"data", "d.txt")
    async with (
        httpx.AsyncClient(headers={"X-Proxy-Auth": "p4ss"}, cookies={"sid": "c00kie"}) as http,
        QoderClient(token=server.token, base_url=server.base_url, http_client=http) as client,
    ):
        assert await (await client.files.download(meta["id"])).read() == b"data"
    storage = next(r for r in server.requests if r.path.startswith("/_fake_storage/"))
    assert "x-proxy-auth" not in storage.headers
    assert "cookie" not in storage.headers
    assert "authorization" not in storage.headers


async def test_a_borrowed_aiohttp_sessions_defaults_stay_home(server: FakeQoderServer) -> None:
    server.dialect.file_content = "link"
    meta = server.add_file(b"data", "d.txt")
    async with (
        aiohttp.ClientSession(headers={"X-Proxy-Auth": "p4ss"}) as http,
        QoderClient(token=server.token, base_url=server.base_url, http_client=http) as client,
    ):
        assert await (await client.files.download(meta["id"])).read() == b"data"
    storage = next(r for r in server.requests if r.path.startswith("/_fake_storage/"))
    assert "x-proxy-auth" not in storage.headers
    assert "authorization" not in storage.headers


async def test_download_to_a_path_and_write_to_file(
    client: QoderClient, server: FakeQoderServer, tmp_path: Path
) -> None:
    meta = server.add_file(BIG, "big.bin")
    target = tmp_path / "out.bin"
    written = await client.files.download(meta["id"], to=target)
    assert written == target
    assert target.read_bytes() == BIG
    async with await client.files.download(meta["id"]) as download:
        assert await download.write_to_file(tmp_path / "again.bin") == len(BIG)
    assert (tmp_path / "again.bin").read_bytes() == BIG


async def test_stopping_early_releases_the_connection(
    client: QoderClient, server: FakeQoderServer
) -> None:
    server.dialect.file_content = "bytes"
    meta = server.add_file(BIG * 4, "huge.bin")
    async with await client.files.download(meta["id"]) as download:
        async for chunk in download:
            assert chunk
            break
    assert download.closed
    with pytest.raises(RuntimeError, match="only once"):
        await download.read()


async def test_a_json_file_is_not_taken_for_a_link(
    client: QoderClient, server: FakeQoderServer
) -> None:
    server.dialect.file_content = "bytes"
    body = json.dumps({"url": "http://example.invalid/elsewhere"}).encode()
    meta = server.add_file(body, "link.json", mime_type="application/json")
    assert await (await client.files.download(meta["id"])).read() == body
    assert not [r for r in server.requests if "example.invalid" in r.path]


async def test_a_throttled_download_is_retried_before_its_body(
    client: QoderClient, server: FakeQoderServer
) -> None:
    server.faults.retry_after = 0.0
    server.faults.throttle_status = 503
    server.faults.throttle_first = 1
    meta = server.add_file(b"after a 503", "x.txt")
    assert await (await client.files.download(meta["id"])).read() == b"after a 503"
    content = [r for r in server.requests if r.path.endswith("/content")]
    assert len(content) == 2


async def test_download_errors(client: QoderClient, server: FakeQoderServer) -> None:
    locked = server.add_file(b"x", "locked.txt", downloadable=False)
    with pytest.raises(PermissionDeniedError):
        await client.files.download(locked["id"])
    with pytest.raises(NotFoundError):
        await client.files.download("file_missing")
    meta = server.add_file(b"x", "x.txt")
    for link in ("ftp://storage.example/x", "https://user:pw@storage.example/x", "/relative"):
        body = json.dumps({"url": link}).encode()
        server.faults.respond_next = [
            CannedResponse("GET", r"/content$", 200, {"Content-Type": "application/json"}, body)
        ]
        with pytest.raises(APIResponseValidationError, match="download link"):
            await client.files.download(meta["id"])


class Storage:
    """A storage server of our own for download links: redirects, a body that breaks off
    half-way, one that stalls. Records each request's headers."""

    def __init__(self) -> None:
        self.base = ""
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.sent_part = asyncio.Event()
        self.release = asyncio.Event()

    def link_answer(self, path: str) -> CannedResponse:
        """What the API answers on ``/content`` to point at ``path`` here (or a full URL)."""
        url = path if "://" in path else self.base + path
        body = json.dumps({"url": url}).encode()
        return CannedResponse("GET", r"/content$", 200, {"Content-Type": "application/json"}, body)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path_qs, dict(request.headers)))
        parts = request.path.strip("/").split("/")
        if parts[0] == "blob":
            return web.Response(body=BIG, content_type="application/octet-stream")
        if parts[0] == "hop":  # /hop/<status>/<hops left>: relative Locations
            status, left = int(parts[1]), int(parts[2])
            target = f"/hop/{status}/{left - 1}" if left else "/blob"
            return web.Response(status=status, headers={"Location": target}, text=f"{status}")
        if parts[0] == "to":  # /to/<status>?loc=<Location> (none: no Location header)
            loc = request.query.get("loc")
            headers = {"Location": loc} if loc is not None else {}
            return web.Response(status=int(parts[1]), headers=headers, text=f"{parts[1]}: Found")
        resp = web.StreamResponse(headers={"Content-Length": str(len(BIG))})
        await resp.prepare(request)
        await resp.write(BIG[: len(BIG) // 3])
        self.sent_part.set()
        if parts[0] == "broken":
            assert request.transport is not None
            request.transport.close()
        else:  # "stall"
            await self.release.wait()
        return resp


@pytest.fixture
async def storage() -> AsyncIterator[Storage]:
    store = Storage()
    app = web.Application()
    app.router.add_get("/{tail:.*}", store.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    store.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield store
    store.release.set()
    await runner.cleanup()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_a_download_that_breaks_off_leaves_the_old_file_alone(
    client: QoderClient, server: FakeQoderServer, storage: Storage, tmp_path: Path
) -> None:
    meta = server.add_file(b"x", "x.bin")
    target = tmp_path / "report.bin"
    target.write_bytes(b"the previous version")
    server.faults.respond_next = [storage.link_answer("/broken")]
    with pytest.raises(APIConnectionError):
        await client.files.download(meta["id"], to=target)
    assert target.read_bytes() == b"the previous version"
    assert leftovers(tmp_path) == ["report.bin"]  # no temporary file left behind either
    # and a complete one replaces it
    server.faults.respond_next = [storage.link_answer("/blob")]
    assert await client.files.download(meta["id"], to=target) == target
    assert target.read_bytes() == BIG
    assert leftovers(tmp_path) == ["report.bin"]


async def test_a_cancelled_download_leaves_the_old_file_alone(
    client: QoderClient, server: FakeQoderServer, storage: Storage, tmp_path: Path
) -> None:
    meta = server.add_file(b"x", "x.bin")
    target = tmp_path / "report.bin"
    target.write_bytes(b"the previous version")
    server.faults.respond_next = [storage.link_answer("/stall")]
    task = asyncio.create_task(client.files.download(meta["id"], to=target))
    await asyncio.wait_for(storage.sent_part.wait(), 10)
    await asyncio.sleep(0.05)  # let some bytes reach the file (no assertion depends on it)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert target.read_bytes() == b"the previous version"
    assert leftovers(tmp_path) == ["report.bin"]


async def test_a_download_cancelled_while_its_file_is_created_leaves_nothing(
    client: QoderClient,
    server: FakeQoderServer,
    storage: Storage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered, go_on = threading.Event(), threading.Event()
    real = files_module._open_beside

    def slow_open(path: str | os.PathLike[str]) -> Any:
        entered.set()
        go_on.wait(10)
        return real(path)

    monkeypatch.setattr(files_module, "_open_beside", slow_open)
    meta = server.add_file(b"x", "x.bin")
    server.faults.respond_next = [storage.link_answer("/blob")]
    task = asyncio.create_task(client.files.download(meta["id"], to=tmp_path / "out.bin"))
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    # the file the thread went on to create is removed
    await eventually(lambda: not leftovers(tmp_path), "no file left behind", timeout=10)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_download_link_that_redirects_is_followed_without_credentials(
    client: QoderClient, server: FakeQoderServer, storage: Storage, status: int
) -> None:
    meta = server.add_file(b"x", "x.bin")
    server.faults.respond_next = [storage.link_answer(f"/hop/{status}/2")]
    assert await (await client.files.download(meta["id"])).read() == BIG
    assert [path for path, _ in storage.seen] == [
        f"/hop/{status}/2",
        f"/hop/{status}/1",
        f"/hop/{status}/0",
        "/blob",
    ]
    for _, headers in storage.seen:
        assert "Authorization" not in headers
        assert server.token not in json.dumps(headers)


async def test_a_redirect_never_brings_the_token_back(
    client: QoderClient, server: FakeQoderServer, storage: Storage
) -> None:
    # Storage that redirects to the API itself: the fetch goes there bare, and gets a 401.
    meta = server.add_file(b"x", "x.bin")
    api = f"{server.base_url}/files/{meta['id']}/content"
    server.faults.respond_next = [storage.link_answer(f"/to/307?loc={quote(api, safe='')}")]
    with pytest.raises(AuthenticationError):
        await client.files.download(meta["id"])
    last = [r for r in server.requests if r.path.endswith("/content")][-1]
    assert "authorization" not in last.headers


async def test_redirects_follow_the_rules_of_links(
    client: QoderClient, server: FakeQoderServer, storage: Storage
) -> None:
    meta = server.add_file(b"x", "x.bin")
    port = storage.base.rsplit(":", 1)[1]
    for loc in ("ftp://127.0.0.1/blob", f"http://user:pw@127.0.0.1:{port}/blob", "file:///etc/x"):
        server.faults.respond_next = [storage.link_answer(f"/to/302?loc={quote(loc, safe='')}")]
        with pytest.raises(APIResponseValidationError, match="download link"):
            await client.files.download(meta["id"])
    server.faults.respond_next = [storage.link_answer("/hop/302/100")]
    with pytest.raises(APIResponseValidationError, match="redirect"):
        await client.files.download(meta["id"])
    assert len(storage.seen) < 30  # bounded hops
    # A redirect with no Location is the error it is, its status said once.
    server.faults.respond_next = [storage.link_answer("/to/302")]
    with pytest.raises(APIStatusError) as info:
        await client.files.download(meta["id"])
    assert info.value.status_code == 302
    assert str(info.value).startswith("302: Found")
    assert "302: 302" not in str(info.value)


async def test_raw_response_of_a_download_says_to_use_the_download(
    client: QoderClient, server: FakeQoderServer
) -> None:
    meta = server.add_file(b"x", "x.txt")
    with pytest.raises(TypeError, match="no raw response"):
        await client.files.with_raw_response.download(meta["id"])


# --------------------------------------------------------------------------- files in messages


async def test_a_message_carries_uploaded_files(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    doc = await client.files.upload(b"%PDF-1.4 ...", filename="spec.pdf")
    image = await client.files.upload(b"\x89PNG...", filename="diagram.png")
    assert DocumentBlock.from_file(doc.id, title="Spec").source == {
        "type": "file",
        "file_id": doc.id,
    }
    turn = await client.session(session_id).send(
        [
            TextBlock("What do these say?"),
            DocumentBlock.from_file(doc.id, title="Spec"),
            ImageBlock.from_file(image.id),
        ]
    )
    result = await turn.result()
    assert f"spec.pdf ({doc.id})" in result.text
    assert f"diagram.png ({image.id})" in result.text
    [stored] = server.user_messages(session_id)
    assert stored["content"][1] == {
        "type": "document",
        "source": {"type": "file", "file_id": doc.id},
        "title": "Spec",
    }
    assert stored["content"][2] == {
        "type": "image",
        "source": {"type": "file", "file_id": image.id},
    }
    with pytest.raises(BadRequestError, match="file not found"):
        await client.session(session_id).send([DocumentBlock.from_file("file_missing")])
