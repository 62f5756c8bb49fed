"""The SSE side of the fake server: one `StreamConnection` per open stream.

Rules this module keeps:

* A connection is a position in its session's feed. It first replays what
  was stored before it connected, then follows the feed live. Of the
  previews published before it connected, only those still open (in flight)
  then are replayed, from their first frame, in their feed position: a late
  joiner or a connection resuming from before a preview gets it whole. A
  connection resuming from an open preview's own id skips that preview's
  frames sent before it connected. A closed preview is never replayed (its
  stored event stands for it).
* A thread's stream is the same walk, skipping everything whose
  ``session_thread_id`` is not that thread; its resume cursor must be one of
  the thread's events.
* The resume cursor of a ``Last-Event-ID`` is resolved to a feed position
  by the caller (`resume_position`), never by comparing ids.
* Frames are batched into one write while catching up, so a long replay is a
  few large writes, not one syscall per event. Per-frame faults are decided
  before a frame joins the batch.
* Heartbeats are written only after ``heartbeat_interval`` seconds without
  anything to send.
* Resume re-sends (``duplicate_on_resume``) come first, before anything
  after the cursor; ``reorder_on_replay`` shuffles only them.
* ``silent_stream`` writes nothing at all on its connection: no ``retry:``,
  no heartbeat, no event. A stalled or silent connection is aborted after
  ``stuck_for`` seconds when that is set.
* Ending: a clean end (the chunked body is terminated) on session delete,
  server close, ``close_after_idle`` and ``close_after_inject``; an abort of
  the transport (no terminator, usually mid-frame) for the drop faults and
  ``stuck_for``. Otherwise a silent stream ends only at server close (or when
  the client leaves).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn

from aiohttp import web

from ._faults import ServerView
from ._state import Preview, SessionState, StoredEvent
from ._wire import bad_request

_BATCH_BYTES = 64 * 1024


class _Dropped(Exception):
    """The connection was aborted on purpose (a drop fault)."""


class _Finished(Exception):
    """The connection ends cleanly here."""


def resume_position(
    session: SessionState, cursor: str | None, thread_id: str | None = None
) -> tuple[int, int]:
    """Feed position to start at and the number of stored events before it.

    ``cursor`` is a stored event id (start right after it) or the id of a
    preview (start where that preview started, i.e. after the last stored
    event before it). On a thread's stream a stored event must be the
    thread's. Anything else is a 400.
    """
    if cursor is None:
        return 0, 0
    stored = session.by_id.get(cursor)
    if stored is not None:
        if thread_id is not None and stored.event.get("session_thread_id") != thread_id:
            raise bad_request(f"Last-Event-ID {cursor!r} is not an event of thread {thread_id}")
        return stored.feed_pos + 1, stored.log_index + 1
    preview = session.preview_start.get(cursor)
    if preview is not None:
        return preview
    raise bad_request(f"Last-Event-ID {cursor!r} is not an event of this session")


class StreamConnection:
    """One session (or thread) stream response being written.

    With ``thread_id`` only that thread's events (and previews) are sent.
    """

    def __init__(
        self,
        server: ServerView,
        session: SessionState,
        request: web.Request,
        response: web.StreamResponse,
        deltas: frozenset[str],
        thread_id: str | None = None,
        cursor: str | None = None,
    ) -> None:
        self.server = server
        self.session = session
        self.request = request
        self.response = response
        self.deltas = deltas
        self.thread_id = thread_id
        self.written = 0
        self.event_frames = 0
        self.stalled = False
        # Previews published before this point are sent only if still open now,
        # and not the one this connection resumes from (its deltas were sent).
        self.live_from = len(session.feed)
        self.replayed_previews = frozenset(p for p in session.open_previews if p != cursor)
        self.waker = asyncio.Event()

    async def run(self, cursor: str | None, start: int, stored_before: int) -> None:
        """Write the stream until it ends (returns) or is dropped/cancelled.

        Create the connection before preparing the response, so that a preview
        published while the headers go out is not skipped.
        """
        session = self.session
        session.wakers.add(self.waker)
        try:
            if self.server.faults.silent_stream:
                self.server._count_fault("silent_stream")
                await self._stuck(self._nothing)
            await self._run(cursor, start, stored_before)
        except (_Dropped, _Finished, ConnectionError):
            pass
        finally:
            session.wakers.discard(self.waker)

    async def _run(self, cursor: str | None, start: int, stored_before: int) -> None:
        server, session = self.server, self.session
        if server.dialect.retry_ms is not None:
            await self._write(f"retry: {int(server.dialect.retry_ms)}\n\n".encode())
        duplicates = server.faults.duplicate_on_resume
        if cursor is not None and duplicates > 0:
            if self.thread_id is None:
                again = session.log[max(0, stored_before - duplicates) : stored_before]
            else:
                again = [s for s in session.log[:stored_before] if self._visible(s)]
                again = again[-duplicates:]
            if again:
                server._count_fault("duplicate_on_resume", len(again))
                if server.faults.reorder_on_replay and len(again) > 1:
                    shuffled = list(again)
                    server._rng.shuffle(shuffled)
                    if shuffled == again:
                        shuffled.reverse()
                    again = shuffled
                    server._count_fault("reorder_on_replay")
                await self._write(b"".join(s.frame(server.dialect) for s in again))
        pos = await self._send(start, self.live_from)
        if server.faults.inject_frames:
            frames, server.faults.inject_frames = server.faults.inject_frames, []
            server._count_fault("inject_frames", len(frames))
            await self._write(b"".join(frames))
            if server.faults.close_after_inject:
                server._count_fault("close_after_inject")
                raise _Finished
        while not server._closing:
            if self.stalled:
                await self._stuck(self._heartbeats_only)
            if pos < len(session.feed):
                pos = await self._send(pos, len(session.feed))
                continue
            if session.deleted:
                return
            await self._wait_and_heartbeat(ignore_events=False)

    def _visible(self, item: StoredEvent | Preview) -> bool:
        """Whether this connection sends ``item`` at all (thread streams filter)."""
        if self.thread_id is None:
            return True
        if isinstance(item, Preview):
            return item.thread_id == self.thread_id
        return item.event.get("session_thread_id") == self.thread_id

    async def _nothing(self) -> None:
        """Send nothing until the server closes (the client leaving cancels us)."""
        while not self.server._closing:
            self.waker.clear()
            await self.waker.wait()

    async def _heartbeats_only(self) -> None:
        """Heartbeats, never an event, until the server closes."""
        while True:  # _Finished at server close
            await self._wait_and_heartbeat(ignore_events=True)

    async def _stuck(self, behaviour: Callable[[], Awaitable[None]]) -> NoReturn:
        """Run a stuck connection's ``behaviour``; abort it after ``stuck_for`` seconds."""
        try:
            async with asyncio.timeout(self.server.faults.stuck_for):
                await behaviour()
        except TimeoutError:
            await self._abort(b"", "stuck_for")
        raise _Finished  # the server is closing

    async def _wait_and_heartbeat(self, *, ignore_events: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server.heartbeat_interval
        while True:
            if self.server._closing or self.session.deleted:
                if ignore_events:
                    raise _Finished
                # The caller still flushes what is pending (``session.deleted``).
                return
            self.waker.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                await self._write(self.server.dialect.heartbeat_frame())
                return
            try:
                async with asyncio.timeout(remaining):
                    await self.waker.wait()
            except TimeoutError:
                continue
            if not ignore_events:
                return

    async def _send(self, start: int, end: int) -> int:
        """Send feed items ``[start, end)``; returns the next position."""
        server, session = self.server, self.session
        faults, dialect = server.faults, server.dialect
        batch = bytearray()
        pos = start
        while pos < end:
            item = session.feed[pos]
            pos += 1
            if not self._visible(item):
                continue
            if isinstance(item, Preview):
                if item.kind not in self.deltas or (
                    pos - 1 < self.live_from and item.event_id not in self.replayed_previews
                ):
                    continue
                frame = item.frame
            else:
                frame = item.frame(dialect)
            if faults.stall_probability > 0 and server._rng.random() < faults.stall_probability:
                server._count_fault("stall_probability")
                self.stalled = True
                await self._write(bytes(batch))
                return end
            limit = faults.drop_after_events
            if limit is not None and self.event_frames >= limit:
                await self._write(bytes(batch))
                await self._abort(frame[: len(frame) // 2], "drop_after_events")
            if faults.drop_probability > 0 and server._rng.random() < faults.drop_probability:
                await self._write(bytes(batch))
                await self._abort(frame[: len(frame) // 2], "drop_probability")
            batch += frame
            self.event_frames += 1
            if (
                faults.close_after_idle
                and isinstance(item, StoredEvent)
                and item.event["type"] == "session.status_idle"
                and pos == len(session.feed)
            ):
                await self._write(bytes(batch))
                server._count_fault("close_after_idle")
                raise _Finished
            if len(batch) >= _BATCH_BYTES:
                await self._write(bytes(batch))
                batch.clear()
        await self._write(bytes(batch))
        return pos

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        limit = self.server.faults.drop_after_bytes
        if limit is not None and self.written + len(data) > limit:
            await self._abort(data[: max(limit - self.written, 0)], "drop_after_bytes")
        self.written += len(data)
        await self.response.write(data)

    async def _abort(self, partial: bytes, fault: str) -> NoReturn:
        self.server._count_fault(fault)
        if partial:
            self.written += len(partial)
            await self.response.write(partial)
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        raise _Dropped
