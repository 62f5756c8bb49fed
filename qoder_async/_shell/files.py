"""SHELL: file uploads as a streamed multipart body, downloads as bytes that arrive.

Uploads (``client.files.upload``):

=====================================  ==============================================
``file`` is                            sent as
=====================================  ==============================================
a path (``str`` or ``os.PathLike``)    read in chunks in a worker thread; its size is
                                       the ``Content-Length``; a retry reads it again
``bytes``, ``bytearray``, memoryview    as is (already in memory)
a binary file object (``.read(n)``)    read in chunks in a worker thread; seekable:
                                       sized, and a retry seeks back to where it
                                       started; not seekable: sent chunked, never
                                       retried (it cannot be read twice)
an async iterable of ``bytes``         sent chunked as it comes, never retried
``(filename, file[, mime_type])``      the official SDK's form: any of the above
=====================================  ==============================================

A source that raises (a read error, a stream that goes away) fails the upload
with that very exception, never taken for a connection failure and never
retried, whatever the source.

The body is ``multipart/form-data``: the text fields first, then the ``file``
part (a skill's files: one ``files`` part each, in the order given). Nothing
is read whole into memory. The filename defaults to the path's or the file
object's name; the MIME type to a guess from the filename, else
``application/octet-stream``.

Downloads (``client.files.download``), what ``GET /files/{id}/content`` may answer:

=====================================  ==============================================
answer                                 what happens
=====================================  ==============================================
the bytes (any type, or JSON sent as   streamed to the caller as they arrive
an attachment)
a small JSON object with a ``url``     that link is fetched with no credentials (no
(a download link, what the SDKs        token, no default headers, no cookies): only
expect)                                ``http(s)`` without user info is followed
the link answers a redirect (301,      followed, under the same rules, with no
302, 303, 307, 308)                    credentials either, at most ``MAX_REDIRECTS``
                                       (5) times, else
                                       :class:`APIResponseValidationError`
an error status                        the typed error (as for any request)
no byte for ``read_timeout`` seconds   :class:`APITimeoutError`
the connection breaks off              :class:`APIConnectionError`
=====================================  ==============================================

Written to a path (``to=path``, ``write_to_file``), the bytes go to a temporary
file beside it that replaces it only once complete: a download that fails or
is cancelled leaves the path as it was, and no temporary file.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import mimetypes
import os
import stat
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from email.message import Message
from pathlib import Path
from typing import IO, Any, TypeAlias
from urllib.parse import urljoin, urlsplit

from qoder_async._core.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
)
from qoder_async._core.models import json_dumps, json_loads
from qoder_async._shell.http import HTTP, RequestBody
from qoder_async._shell.transport import SourceError, StreamResponse

__all__ = [
    "DEFAULT_DOWNLOAD_READ_TIMEOUT",
    "FileDownload",
    "FileInput",
    "Upload",
    "download_link",
    "fetch_link",
    "prepare_files",
    "prepare_upload",
]

CHUNK_SIZE = 256 * 1024
DEFAULT_DOWNLOAD_READ_TIMEOUT = 60.0
# A JSON answer larger than this is the file itself, not a download link.
LINK_LIMIT = 64 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

FileContent: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | AsyncIterable[bytes]
)
FileInput: TypeAlias = FileContent | tuple[str, FileContent] | tuple[str, FileContent, str]
"""What ``client.files.upload`` takes: a path, bytes, a binary file object, an async
iterable of bytes, or the official SDK's ``(filename, content[, mime_type])``."""


# --------------------------------------------------------------------------- uploads


class _Reader:
    """Reads one file source in chunks; ``fresh()`` starts over (where that is possible)."""

    def __init__(self, source: FileContent, length: int | None, start: int | None) -> None:
        self.source = source
        self.length = length
        self._start = start  # the file object's position to seek back to, when seekable
        self._used = False

    @property
    def replayable(self) -> bool:
        return not isinstance(self.source, AsyncIterable) and (
            self._start is not None or not hasattr(self.source, "read")
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        source = self.source
        if isinstance(source, bytes | bytearray | memoryview):
            if len(source):
                yield bytes(source) if not isinstance(source, bytes) else source
            return
        if self._used and not self.replayable:
            raise RuntimeError("this upload's content was already sent and cannot be read again")
        self._used = True
        if isinstance(source, AsyncIterable):
            async for chunk in source:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise TypeError(f"an upload's chunks must be bytes, got {type(chunk).__name__}")
                if chunk:
                    yield bytes(chunk)
            return
        if isinstance(source, str | os.PathLike):
            f: IO[bytes] = await asyncio.to_thread(open, source, "rb")
            try:
                async for chunk in _read_all(f):
                    yield chunk
            finally:
                await asyncio.to_thread(f.close)
            return
        if self._start is not None:
            await asyncio.to_thread(source.seek, self._start)
        async for chunk in _read_all(source):
            yield chunk


async def _read_all(f: IO[bytes]) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(f.read, CHUNK_SIZE)
        if not chunk:
            return
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError("upload a file opened in binary mode ('rb'), not text mode")
        yield bytes(chunk)


def _quote_param(value: str) -> str:
    """A quoted-string parameter value (RFC 9110): backslash-escaped, no line breaks."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return escaped.replace("\r", "%0D").replace("\n", "%0A")


class Upload:
    """A ``multipart/form-data`` body streamed from its files (an async iterable of bytes).

    The text fields come first, then one part per file, in order. Each ``async
    for`` produces the whole body again (a retry), reading the files afresh
    where that is possible (:attr:`replayable`).
    """

    def __init__(
        self,
        files: Sequence[tuple[str, str, str, _Reader]],
        *,
        fields: Sequence[tuple[str, str]],
    ) -> None:
        self.boundary = f"qoder-async-{uuid.uuid4().hex}"
        head = b"".join(
            (
                f"--{self.boundary}\r\n"
                f'Content-Disposition: form-data; name="{_quote_param(name)}"\r\n\r\n'
            ).encode()
            + value.encode()
            + b"\r\n"
            for name, value in fields
        )
        self._parts: list[tuple[bytes, _Reader]] = []
        for i, (field, filename, mime_type, reader) in enumerate(files):
            sep = "" if i == 0 else "\r\n"  # the line break that ends the file before
            # A non-ASCII filename goes as UTF-8, as browsers send it (RFC 7578 4.2).
            part_head = (
                f"{sep}--{self.boundary}\r\n"
                f'Content-Disposition: form-data; name="{_quote_param(field)}"; '
                f'filename="{_quote_param(filename)}"\r\n'
                f"Content-Type: {mime_type}\r\n\r\n"
            ).encode()
            self._parts.append(((head if i == 0 else b"") + part_head, reader))
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        """``multipart/form-data; boundary=...``."""
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int | None:
        """The body's size in bytes, when every file's size is known."""
        total = len(self._tail)
        for head, reader in self._parts:
            if reader.length is None:
                return None
            total += len(head) + reader.length
        return total

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again (a retry)."""
        return all(reader.replayable for _, reader in self._parts)

    def body(self) -> RequestBody:
        """The request body for the request layer."""
        return RequestBody(self, self.content_type, self.length)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for head, reader in self._parts:
            yield head
            try:
                async for chunk in reader.chunks():
                    yield chunk
            except Exception as exc:  # the source's failure, not the connection's
                raise SourceError(exc) from exc
        yield self._tail


def _name_of(source: object) -> str | None:
    if isinstance(source, str | os.PathLike):
        return Path(source).name
    name = getattr(source, "name", None)
    return Path(name).name if isinstance(name, str) and name else None


async def _measure(source: Any) -> tuple[int | None, int | None]:
    """(size from here to the end, position to seek back to) of a file source."""
    if isinstance(source, bytes | bytearray | memoryview):
        return memoryview(source).nbytes, None
    if isinstance(source, AsyncIterable):
        return None, None
    if isinstance(source, str | os.PathLike):
        return (await asyncio.to_thread(os.stat, source)).st_size, None
    if isinstance(source, io.TextIOBase):
        raise TypeError("upload a file opened in binary mode ('rb'), not text mode")
    if not callable(getattr(source, "read", None)):
        raise TypeError(
            "file must be a path, bytes, a binary file object or an async iterable of bytes, "
            f"got {type(source).__name__}"
        )

    def measure() -> tuple[int | None, int | None]:
        try:
            if not source.seekable():
                return None, None
            start = source.tell()
            end = source.seek(0, os.SEEK_END)
            source.seek(start)
        except (AttributeError, OSError, ValueError):
            return None, None
        return end - start, start

    return await asyncio.to_thread(measure)


async def _file_part(
    field: str, file: FileInput, filename: str | None, mime_type: str | None
) -> tuple[str, str, str, _Reader]:
    source: Any = file
    if isinstance(file, tuple):
        if not 2 <= len(file) <= 3 or not isinstance(file[0], str):
            raise TypeError("a file tuple is (filename, content) or (filename, content, mime_type)")
        filename = filename or file[0]
        source = file[1]
        if len(file) == 3:
            mime_type = mime_type or file[2]
    size, start = await _measure(source)
    name = filename or _name_of(source) or "upload"
    mime = mime_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return field, name, mime, _Reader(source, size, start)


def _form(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    form: list[tuple[str, str]] = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, Mapping | list):
            text = json_dumps(value).decode()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        form.append((key, text))
    return form


async def prepare_upload(
    file: FileInput,
    *,
    filename: str | None,
    mime_type: str | None,
    fields: Mapping[str, Any],
) -> Upload:
    """The multipart body of an upload (see the module table); ``None`` fields are left out."""
    part = await _file_part("file", file, filename, mime_type)
    return Upload([part], fields=_form(fields))


async def prepare_files(
    field: str, files: Sequence[FileInput], *, fields: Mapping[str, Any]
) -> Upload:
    """A multipart body with one ``field`` part per file (a skill's ``files``), each
    taken as :func:`prepare_upload` takes one."""
    if isinstance(files, str | bytes | bytearray | memoryview | tuple) or not files:
        raise TypeError(f"{field} must be a non-empty list of files")
    parts = [await _file_part(field, f, None, None) for f in files]
    return Upload(parts, fields=_form(fields))


# --------------------------------------------------------------------------- downloads


def _is_attachment(headers: Mapping[str, str]) -> bool:
    return headers.get("content-disposition", "").strip().lower().startswith("attachment")


def _is_json(headers: Mapping[str, str]) -> bool:
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class FileDownload:
    """A file's bytes as they arrive, on an open connection.

    ``async for chunk in download`` (closes the connection at the end),
    ``await download.read()`` or ``await download.write_to_file(path)``; use
    ``async with`` to release the connection if you stop early. ``status_code``,
    ``headers``, ``content_type``, ``content_length`` and ``filename`` (from
    ``Content-Disposition``) describe the answer that carried the bytes (the
    storage's, when the API answered with a link).
    """

    def __init__(
        self,
        stack: contextlib.AsyncExitStack,
        response: StreamResponse,
        *,
        prefix: bytes,
        chunks: AsyncIterator[bytes],
        errors: tuple[type[BaseException], ...],
        url: str,
        read_timeout: float | None,
    ) -> None:
        self._stack = stack
        self._prefix = prefix
        self._chunks = chunks
        self._errors = errors
        self._url = url
        self._read_timeout = read_timeout
        self._started = False
        self.closed = False
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers
        self.request_id = response.headers.get("x-request-id") or response.headers.get("request-id")

    def __repr__(self) -> str:
        return f"<FileDownload {self.filename or self._url} {self.content_type}>"

    @property
    def content_type(self) -> str | None:
        """The ``Content-Type`` of the bytes."""
        return self.headers.get("content-type")

    @property
    def content_length(self) -> int | None:
        """The announced size in bytes (``Content-Length``), if any."""
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def filename(self) -> str | None:
        """The file name the answer's ``Content-Disposition`` gives, if any."""
        value = self.headers.get("content-disposition")
        if not value:
            return None
        message = Message()
        message["content-disposition"] = value
        name = message.get_filename()
        return Path(name).name if name else None

    async def __aenter__(self) -> FileDownload:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the connection. Idempotent."""
        self.closed = True
        await self._stack.aclose()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iter_bytes()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The bytes as they arrive; the connection is closed at the end."""
        if self._started:
            raise RuntimeError("a download can be read only once")
        self._started = True
        try:
            if self._prefix:
                yield self._prefix
            while True:
                chunk = await _next_chunk(self._chunks, self._errors, self._url, self._read_timeout)
                if chunk is None:
                    return
                yield chunk
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        """The whole file (held in memory: prefer ``async for`` or ``write_to_file``)."""
        return b"".join([chunk async for chunk in self.iter_bytes()])

    async def write_to_file(self, path: str | os.PathLike[str]) -> int:
        """Write the file to ``path`` as it arrives (in a worker thread); returns its size.

        The bytes go to a temporary file beside ``path`` that replaces it once
        complete: a download that fails or is cancelled leaves ``path`` as it
        was, and no temporary file.
        """
        opening = asyncio.ensure_future(asyncio.to_thread(_open_beside, path))
        try:
            temp, target, f = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_discard)  # the file is still being created
            raise
        size = 0
        try:
            async for chunk in self.iter_bytes():
                await asyncio.to_thread(f.write, chunk)
                size += len(chunk)
            await asyncio.to_thread(_commit, f, temp, target)
        except BaseException:
            _drop(temp, f)  # synchronous: a cancelled task may not get to await the clean-up
            raise
        return size


def _open_beside(path: str | os.PathLike[str]) -> tuple[str, str, IO[bytes]]:
    """(temporary path, final path, the temporary file open): beside ``path`` (a symlink's
    target, as writing to it would), with the mode of the file it replaces."""
    target = os.path.realpath(path)
    directory, name = os.path.split(target)
    temp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.part")
    f = open(temp, "xb")  # noqa: SIM115 - closed by the caller
    with contextlib.suppress(OSError):
        os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
    return temp, target, f


def _discard(opening: asyncio.Future[tuple[str, str, IO[bytes]]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        temp, _, f = opening.result()
        _drop(temp, f)


def _drop(temp: str, f: IO[bytes]) -> None:
    """Close and remove a temporary file that will not replace its target."""
    f.close()
    with contextlib.suppress(OSError):
        os.unlink(temp)


def _commit(f: IO[bytes], temp: str, target: str) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(temp, target)


async def _next_chunk(
    chunks: AsyncIterator[bytes],
    errors: tuple[type[BaseException], ...],
    url: str,
    read_timeout: float | None,
) -> bytes | None:
    """The next chunk, or ``None`` at the end; failures as our connection errors."""
    try:
        async with asyncio.timeout(read_timeout):
            return await chunks.__anext__()
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise APITimeoutError(
            f"the download sent no data for {read_timeout} s", method="GET", url=urlsplit(url).path
        ) from None
    except errors as exc:
        raise APIConnectionError(
            f"the download broke off ({type(exc).__name__})",
            method="GET",
            url=urlsplit(url).path,
        ) from exc


async def download_link(
    response: StreamResponse,
    *,
    errors: tuple[type[BaseException], ...],
    url: str,
    read_timeout: float | None,
) -> tuple[str | None, bytes, AsyncIterator[bytes]]:
    """Whether an answer of ``GET /files/{id}/content`` is a link (see the module table).

    Returns ``(link, bytes already read, the rest of the chunks)``: when it is
    not a link the bytes read are the file's first ones.
    """
    chunks = response.chunks.__aiter__()
    headers = response.headers
    length = headers.get("content-length")
    if (
        not _is_json(headers)
        or _is_attachment(headers)
        or (length is not None and length.isdigit() and int(length) > LINK_LIMIT)
    ):
        return None, b"", chunks
    parts: list[bytes] = []
    size = 0
    while size <= LINK_LIMIT:
        chunk = await _next_chunk(chunks, errors, url, read_timeout)
        if chunk is None:
            break
        parts.append(chunk)
        size += len(chunk)
    else:  # too large for a link: it is the file
        return None, b"".join(parts), chunks
    data = b"".join(parts)
    try:
        value = json_loads(data)
    except ValueError:
        return None, data, chunks
    link = value.get("url") if isinstance(value, dict) else None
    if not isinstance(link, str):
        return None, data, chunks
    return link, b"", chunks


async def fetch_link(
    http: HTTP, stack: contextlib.AsyncExitStack, link: str, *, source: str
) -> tuple[str, StreamResponse]:
    """(the URL that answered, its answer) for a download link, redirects followed.

    Every hop is checked as the link is (``http(s)``, no user info) and fetched
    by :meth:`HTTP.fetch`, with no credentials; the answer is entered on
    ``stack``. ``source`` is the API URL that gave the link (named in errors).
    """
    where = urlsplit(source).path
    what = "the download link"
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(link)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise APIResponseValidationError(
                f"{what} is not an http(s) URL without credentials", method="GET", url=where
            )
        try:
            return link, await stack.enter_async_context(http.fetch(link))
        except APIStatusError as exc:
            location = next((v for k, v in exc.headers.items() if k.lower() == "location"), None)
            if exc.status_code not in _REDIRECTS or not location:
                raise
        link = urljoin(link, location.strip())
        what = "a redirect of the download link"
    raise APIResponseValidationError(
        f"the download link redirected more than {MAX_REDIRECTS} times", method="GET", url=where
    )
