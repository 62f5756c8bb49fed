"""`record`: write what a client says and hears to a cassette (the format: ``_cassette``).

Rules this module keeps:

* It imports nothing of the client: ``record`` uses the client's documented
  hook (``client._tap_transport(wrap)``, duck-typed) to see every exchange at
  the transport, bytes included, as the transport moves them.
* Each record is one ``write`` of one whole line, flushed: a cancelled task or a
  killed process leaves a file that is valid JSON Lines up to its last
  complete line.
* Secrets never reach the file: the token (learnt from each request's
  ``Authorization``, as sent and percent-encoded), ``Authorization``,
  ``Cookie`` and ``Set-Cookie`` values, and every string (header, query,
  URL, body, error body, SSE data) containing a token are redacted before
  the line is written; another origin's query (a signed link) is dropped.
* Bodies that are not JSON or text (uploads, downloads) are a size and a
  SHA-256, unless ``bodies=True``.
* A stream is recorded frame by frame as the SSE parser completes each frame,
  with its arrival time since the connection was opened; a frame cut off by
  the end of the connection is not a frame (``partial`` on its ``end``).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple
from urllib.parse import urlsplit

from ._cassette import FORMAT, REDACTED, VERSION

__all__ = ["record"]

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
#: Response headers worth keeping (the rest are a server's own business).
_KEPT_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-disposition",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "idempotent-replayed",
        "x-request-id",
        "request-id",
        "location",
        "set-cookie",
    }
)
_TEXT_LIMIT = 1024 * 1024  # a JSON or text answer kept whole up to this size
_EOL = re.compile(r"\r\n|\r|\n")


class _Answer(NamedTuple):
    """What a recording transport hands on: the inner answer with its chunks tapped."""

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]


class _Writer:
    """The open cassette: one counter, the secrets learnt so far, whole-line writes."""

    def __init__(self, path: str | os.PathLike[str], *, bodies: bool, base_url: str) -> None:
        self.bodies = bodies
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.shown_url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        self.secrets: set[str] = set()
        self.patterns: list[re.Pattern[str]] = []
        self.seq = 0
        self.streams = 0
        self._file: IO[str] | None = open(path, "w", encoding="utf-8")  # noqa: SIM115
        self.write(
            {
                "version": VERSION,
                "format": FORMAT,
                "created_at": datetime.now(UTC).isoformat(),
                "base_url": self.shown_url,
                "bodies": bodies,
            }
        )

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def learn(self, headers: Mapping[str, str]) -> None:
        """Remember the token a request carries (and its encoded forms) for redaction."""
        for name, value in headers.items():
            if name.lower() not in _SECRET_HEADERS or not value:
                continue
            token = value.split(" ", 1)[1].strip() if " " in value else value.strip()
            for secret in (value.strip(), token):
                if len(secret) >= 4 and secret not in self.secrets:
                    self.secrets.add(secret)
                    self.patterns.append(_pattern(secret))

    def redact(self, value: Any) -> Any:
        if isinstance(value, str):
            for pattern in self.patterns:
                value = pattern.sub(REDACTED, value)
            return value
        if isinstance(value, dict):
            return {self.redact(k): self.redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact(v) for v in value]
        return value

    def redact_json_text(self, text: str) -> str:
        """``text``; when it is JSON hiding a secret behind escapes (``\\u0074ok``),
        that JSON with the secret redacted (re-encoded)."""
        if not self.secrets or "\\" not in text:
            return text
        try:
            value = json.loads(text)
        except ValueError:
            return text
        redacted = self.redact(value)
        return text if redacted == value else json.dumps(redacted, ensure_ascii=False)

    def redact_bytes(self, data: bytes) -> bytes:
        for secret in self.secrets:
            data = data.replace(secret.encode(), REDACTED.encode())
        return data

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line (nothing once the recording ended)."""
        if self._file is None:
            return
        line = json.dumps(self.redact(record), ensure_ascii=False, separators=(",", ":"))
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    # -- pieces of records

    def where(self, url: str, params: Sequence[tuple[str, str]] | None) -> dict[str, Any]:
        """``path`` (after the base URL) and ``query``; ``url`` for another origin."""
        query = [[str(k), str(v)] for k, v in (params or ())]
        if url.startswith(self.base_url + "/") or url == self.base_url:
            path = url[len(self.base_url) :]
            if "?" in path:
                path, _, inline = path.partition("?")
                query = [[k, v] for k, _, v in (p.partition("=") for p in inline.split("&"))]
            return {"path": path or "/", "query": query}
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]  # never a user:password@
        return {"url": f"{parts.scheme}://{host}{parts.path}", "query": []}

    def request_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {
            k: (REDACTED if k.lower() in _SECRET_HEADERS else str(v)) for k, v in headers.items()
        }

    def response_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        kept: dict[str, str] = {}
        for k, v in headers.items():
            key = k.lower()
            if key in _KEPT_RESPONSE_HEADERS:
                kept[key] = REDACTED if key in _SECRET_HEADERS else str(v)
        return kept

    def body(self, data: bytes, content_type: str | None, size: int | None = None) -> Any:
        """A body as a record part: ``json``, ``text``, or ``body`` (size and hash)."""
        ctype = (content_type or "").split(";")[0].strip().lower()
        textual = "json" in ctype or ctype.startswith("text/") or not ctype
        if textual and len(data) <= _TEXT_LIMIT and (size is None or size == len(data)):
            text = data.decode("utf-8", errors="replace")
            if "json" in ctype or not ctype:
                try:
                    return {"json": json.loads(text)} if text else {}
                except ValueError:
                    pass
            return {"text": text}
        return {"body": self.digest(data, size)}

    def digest(self, data: bytes, size: int | None = None, sha256: str | None = None) -> Any:
        out: dict[str, Any] = {
            "size": len(data) if size is None else size,
            "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        }
        if self.bodies and size is None:
            out["base64"] = base64.b64encode(self.redact_bytes(data)).decode()
        return out


def _pattern(secret: str) -> re.Pattern[str]:
    """``secret`` as sent or percent-encoded, escapes in any case (``%2F``, ``%2f``, ``+``)."""
    parts: list[str] = []
    for char in secret:
        if char.isascii() and (char.isalnum() or char in "-._~"):
            parts.append(re.escape(char))
            continue
        encoded = "".join(
            f"%[{b[0].upper()}{b[0].lower()}][{b[1].upper()}{b[1].lower()}]"
            for b in (f"{byte:02x}" for byte in char.encode())
        )
        forms = [re.escape(char), encoded] + (["\\+"] if char == " " else [])
        parts.append(f"(?:{'|'.join(forms)})")
    return re.compile("".join(parts))


class _Body:
    """A streamed body (an upload, a download), hashed as each pass moves it.

    Its bytes are kept while fewer than ``keep`` are (``-1``: none, ``math.inf``: all).
    """

    def __init__(self, inner: AsyncIterable[bytes], keep: float) -> None:
        self._inner = inner
        self._keep = keep
        self.size = 0
        self.hash = hashlib.sha256()
        self.kept = bytearray()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        self.size, self.hash, self.kept = 0, hashlib.sha256(), bytearray()
        async for chunk in self._inner:
            self.size += len(chunk)
            self.hash.update(chunk)
            if len(self.kept) <= self._keep:
                self.kept += chunk
            yield chunk


class _Exchange:
    """One request being recorded."""

    def __init__(
        self,
        writer: _Writer,
        kind: str,
        method: str,
        url: str,
        params: Sequence[tuple[str, str]] | None,
        headers: Mapping[str, str],
    ) -> None:
        writer.learn(headers)
        self.writer = writer
        self.started = time.monotonic()
        self.record: dict[str, Any] = {
            "type": kind,
            "seq": writer.next_seq(),
            "method": method,
            **writer.where(url, params),
            "request": {"headers": writer.request_headers(headers)},
        }
        self.content_type = next(
            (str(v) for k, v in headers.items() if k.lower() == "content-type"), None
        )
        self.body: _Body | None = None

    def send(self, content: bytes | AsyncIterable[bytes] | None) -> Any:
        """The request body to send on (a streamed one tapped); its bytes noted."""
        if content is None:
            return None
        if isinstance(content, bytes | bytearray):
            self.record["request"].update(self.writer.body(bytes(content), self.content_type))
            return content
        self.body = _Body(content, math.inf if self.writer.bodies else -1)
        return self.body

    def _sent(self) -> None:
        body = self.body
        if body is not None:
            if self.writer.bodies:
                part = self.writer.digest(bytes(body.kept))
            else:
                part = self.writer.digest(b"", body.size, body.hash.hexdigest())
            self.record["request"]["body"] = part

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def answered(self, status: int, headers: Mapping[str, str], part: Any) -> None:
        self._sent()
        self.record["status"] = status
        self.record["response"] = {"headers": self.writer.response_headers(headers), **part}
        self.record["elapsed"] = self.elapsed()
        self.writer.write(self.record)

    def failed(self, exc: BaseException) -> None:
        self._sent()
        self.record["error"] = f"{type(exc).__name__}: {exc}"
        self.record["elapsed"] = self.elapsed()
        self.writer.write(self.record)


class _Frames:
    """An incremental SSE parser: bytes in, the frames they complete out (as records)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._fields: dict[str, Any] = {}
        self._data: list[str] = []
        self._comments: list[str] = []

    @property
    def partial(self) -> bool:
        """Whether a frame was begun and not finished."""
        return bool(self._text or self._fields or self._data or self._comments)

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        text = self._text + self._decoder.decode(chunk)
        frames: list[dict[str, Any]] = []
        pos = 0
        for m in _EOL.finditer(text):
            if m.group() == "\r" and m.end() == len(text):
                break  # maybe the first half of a CRLF: wait for the next chunk
            line = text[pos : m.start()]
            pos = m.end()
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)
        self._text = text[pos:]
        return frames

    def _line(self, line: str) -> dict[str, Any] | None:
        if not line:
            if not (self._fields or self._data or self._comments):
                return None
            frame = dict(self._fields)
            if self._data:
                frame["data"] = "\n".join(self._data)
            if self._comments:
                frame["comment"] = "\n".join(self._comments)
            self._fields, self._data, self._comments = {}, [], []
            return frame
        if line.startswith(":"):
            self._comments.append(line[1:])
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name in ("id", "event", "retry"):
            self._fields[name] = value
        return None


class _StreamTap:
    """A stream's chunks, passed on untouched; each completed frame recorded."""

    def __init__(self, exchange: _Exchange, inner: AsyncIterator[bytes], sse: bool) -> None:
        self.exchange = exchange
        self.number = exchange.record.get("stream")
        self._inner = inner
        self._sse = sse
        self.frames = _Frames()
        self.body = bytearray()
        self.ended = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._inner.__anext__()
        except StopAsyncIteration:
            self.ended = True
            raise
        writer = self.exchange.writer
        if not self._sse:
            if len(self.body) < _TEXT_LIMIT:
                self.body += chunk
            return chunk
        t = self.exchange.elapsed()
        for frame in self.frames.feed(chunk):
            if "data" in frame:
                frame["data"] = writer.redact_json_text(frame["data"])
            writer.write(
                {"type": "frame", "stream": self.number, "seq": writer.next_seq(), "t": t, **frame}
            )
        return chunk


class _RecordingTransport:
    """A transport that hands everything to ``inner`` and writes what passes by."""

    def __init__(self, inner: Any, writer: _Writer) -> None:
        self._inner = inner
        self._writer = writer
        self.errors: tuple[type[BaseException], ...] = inner.errors

    def connection_error(self, exc: BaseException, method: str, url: str) -> Any:
        return self._inner.connection_error(exc, method, url)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | None,
        headers: Mapping[str, str],
        content: Any,
        timeouts: Any,
    ) -> Any:
        ex = _Exchange(self._writer, "http", method, url, params, headers)
        content = ex.send(content)
        try:
            resp = await self._inner.request(
                method, url, params=params, headers=headers, content=content, timeouts=timeouts
            )
        except BaseException as exc:
            ex.failed(exc)
            raise
        ctype = resp.headers.get("content-type")
        ex.answered(resp.status, resp.headers, self._writer.body(resp.body, ctype))
        return resp

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | None,
        headers: Mapping[str, str],
        content: Any,
        timeouts: Any,
        bare: bool = False,
    ) -> AsyncIterator[Any]:
        ex = _Exchange(self._writer, "http", method, url, params, headers)
        content = ex.send(content)
        status: int | None = None
        resp_headers: Mapping[str, str] = {}
        tap: _Body | None = None
        try:
            async with self._inner.open(
                method,
                url,
                params=params,
                headers=headers,
                content=content,
                timeouts=timeouts,
                bare=bare,
            ) as resp:
                status, resp_headers = resp.status, resp.headers
                tap = _Body(resp.chunks, _TEXT_LIMIT)
                yield _Answer(resp.status, resp.headers, aiter(tap))
        except BaseException as exc:
            if status is None:
                ex.failed(exc)
                raise
            ex.record["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if status is not None and tap is not None:
                ctype = resp_headers.get("content-type")
                if tap.size == len(tap.kept):
                    part = self._writer.body(bytes(tap.kept), ctype)
                else:
                    part = {"body": self._writer.digest(b"", tap.size, tap.hash.hexdigest())}
                ex.answered(status, resp_headers, part)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | None,
        headers: Mapping[str, str],
        timeouts: Any,
    ) -> AsyncIterator[Any]:
        writer = self._writer
        ex = _Exchange(writer, "stream", method, url, params, headers)
        writer.streams += 1
        ex.record["stream"] = number = writer.streams
        tap: _StreamTap | None = None
        how = "closed"
        error: str | None = None
        try:
            async with self._inner.stream(
                method, url, params=params, headers=headers, timeouts=timeouts
            ) as resp:
                ctype = str(resp.headers.get("content-type", ""))
                sse = resp.status < 300 and "text/event-stream" in ctype.lower()
                ex.record["status"] = resp.status
                ex.record["response"] = {"headers": writer.response_headers(resp.headers)}
                writer.write(ex.record)
                tap = _StreamTap(ex, resp.chunks, sse)
                yield _Answer(resp.status, resp.headers, tap)
        except BaseException as exc:
            if tap is None:
                ex.failed(exc)
                raise
            if isinstance(exc, asyncio.CancelledError):
                how = "cancelled"
            elif not isinstance(exc, GeneratorExit):  # the consumer let go: "closed"
                how, error = "error", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if tap is not None:
                end: dict[str, Any] = {"type": "end", "stream": number, "t": ex.elapsed()}
                end["how"] = "eof" if tap.ended and how == "closed" else how
                if error is not None:
                    end["error"] = error
                if tap.frames.partial:
                    end["partial"] = True
                if not tap._sse:
                    ctype = ex.record["response"]["headers"].get("content-type")
                    end["response"] = writer.body(bytes(tap.body), ctype)
                writer.write(end)


@contextlib.asynccontextmanager
async def record(
    client: Any, path: str | os.PathLike[str], *, bodies: bool = False
) -> AsyncIterator[None]:
    """Record every exchange of ``client`` inside the block to the cassette ``path``.

    ::

        async with QoderClient() as client:
            async with record(client, "tests/cassettes/hello.jsonl"):
                turn = await client.session("sess_...").send("Hello")
                await turn.result()

    ``path`` is written from scratch as JSON Lines (the format is described in
    ``qoder_async.testing._cassette`` and the README): a header line with
    ``version``, then each request with its answer and each SSE frame a
    stream receives, with its arrival time since the stream was opened. The
    token, ``Authorization``, cookies and any header, query, URL or body
    string containing the token are redacted before a line is written.
    Uploads and downloads are stored as a size and a SHA-256 unless
    ``bodies=True``. Replay it with ``FakeQoderServer(cassette=path)``.

    One recording per client at a time; its ``with_options`` copies are
    recorded too. Streams still open after the block go on unrecorded.
    """
    tap: Callable[[Callable[[Any], Any]], Callable[[], None]] | None = getattr(
        client, "_tap_transport", None
    )
    if tap is None:
        raise TypeError(f"record() records a qoder_async.QoderClient, not {type(client).__name__}")
    writer = _Writer(path, bodies=bodies, base_url=str(client.base_url))
    try:
        undo = tap(lambda inner: _RecordingTransport(inner, writer))
    except BaseException:
        writer.close()
        raise
    try:
        yield
    finally:
        undo()
        writer.close()
