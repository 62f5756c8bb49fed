"""client.files against the fake: streamed uploads of every kind of source, downloads of both
answers the API may give (the bytes, or a link fetched without credentials), and files in
messages. Every test that uses ``client`` runs on both transports.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from qoder_async import (
    APIResponseValidationError,
    BadRequestError,
    Deleted,
    DocumentBlock,
    FileDownload,
    FileMetadata,
    ImageBlock,
    NotFoundError,
    PermissionDeniedError,
    QoderClient,
    RateLimitError,
    TextBlock,
)
from qoder_async._files import CHUNK_SIZE
from qoder_async.testing import CannedResponse, FakeQoderServer

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
    meta = await client.files.retrieve(first["id"])
    assert meta.filename == "one.txt"
    assert meta.created_at is not None
    assert (await client.files.retrieve_metadata(first["id"])) == meta
    listed = [f.id async for f in client.files.list(limit=1)]
    assert listed == [second["id"], first["id"]]  # newest first
    only = [f.id async for f in client.files.list(ids=[first["id"]])]
    assert only == [first["id"]]
    deleted = await client.files.delete(first["id"])
    assert deleted == Deleted(id=first["id"], type="file_deleted")
    with pytest.raises(NotFoundError):
        await client.files.retrieve(first["id"])


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
