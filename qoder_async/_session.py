"""SHELL: the turn API. One handle and one SSE connection per session; turns on top.

``client.session(id)`` gives a :class:`SessionHandle`. ``await handle.send(...)``
posts the event and returns a :class:`Turn` bound to the 202 answer (its
``turn_id`` and the created event's id). A single pump task per session reads
the session's stream and hands every event to the :class:`~qoder_async._turns.TurnRouter`,
which routes it to the turn it belongs to, and to the session's listeners
(``handle.events()``). The pump runs only while someone consumes: a live turn, a
listener, or a send awaiting its answer; after the last one leaves, the
connection closes, and the next send opens a new one right after its own
``user.message`` (so no history is replayed and nothing between the POST and the
subscription is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload
from urllib.parse import quote

from ._errors import (
    APIResponseValidationError,
    ClientClosedError,
    QoderError,
    SessionBusyError,
    StreamError,
    TurnFailed,
)
from ._models import (
    Accepted,
    AgentCustomToolUse,
    BaseEvent,
    ContentBlock,
    DocumentBlock,
    Event,
    EventDelta,
    EventStart,
    ImageBlock,
    OutboundEvent,
    SessionDeleted,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    TextBlock,
    UnknownBlock,
    UserCustomToolResult,
    UserDefineOutcome,
    UserInterrupt,
    UserMessage,
)
from ._stream import PREVIEW_TYPES, LiveText, text_delta
from ._turns import ToolCall, TurnResult, TurnRouter, ends_turn, fails_turn, fold_many

if TYPE_CHECKING:
    from ._client import EventStream, QoderClient

__all__ = ["EventHandler", "SessionHandle", "ToolHandler", "Turn"]

logger = logging.getLogger("qoder_async")

ToolOutput: TypeAlias = str | ContentBlock | Sequence[str | ContentBlock] | UserCustomToolResult
ToolHandler: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[ToolOutput]]
"""``async def handler(input) -> str | blocks``: runs a custom tool; raising reports an error."""

EventHandler: TypeAlias = Callable[[Event], Awaitable[None] | None]
"""A callback for :meth:`SessionHandle.on`: plain or async, called with each event."""

Content: TypeAlias = str | ContentBlock | Sequence[str | ContentBlock]
OnBusy: TypeAlias = Literal["raise", "wait", "interrupt"]

_BUSY_STATUSES = frozenset({"running", "processing", "rescheduling", "canceling"})
_TURN_ENDERS = frozenset({SessionStatusIdle, SessionStatusTerminated, SessionDeleted})
_LIFECYCLE = frozenset(
    {SessionStatusIdle, SessionStatusRunning, SessionStatusTerminated, SessionDeleted}
)
_BLOCKS = TextBlock | ImageBlock | DocumentBlock | UnknownBlock


class _Listener:
    """A ``handle.events()`` consumer: a bounded buffer, so a slow reader slows the pump.

    Closing it (with or without an error) never drops what is already buffered:
    the reader gets every buffered event first, then the end (or the error).
    """

    __slots__ = ("_end", "_getter", "_items", "_putters", "_size", "closed", "previews")

    def __init__(self, size: int, previews: bool) -> None:
        self._items: deque[Event] = deque()
        self._size = max(1, size)
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._end: BaseException | None = None
        self.closed = False
        self.previews = previews

    async def put(self, ev: Event) -> None:
        while len(self._items) >= self._size and not self.closed:
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            finally:
                if fut in self._putters:
                    self._putters.remove(fut)
        if self.closed:
            return
        self._items.append(ev)
        self._wake_getter()

    def close(self, error: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self._end = error
        self._wake_getter()
        while self._putters:
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)

    async def get(self) -> Event | None:
        while not self._items:
            if self.closed:
                if self._end is not None:
                    raise self._end
                return None
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        ev = self._items.popleft()
        if self._putters:
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)
        return ev

    def _wake_getter(self) -> None:
        fut = self._getter
        if fut is not None and not fut.done():
            fut.set_result(None)


class Turn:
    """One turn: the answer to a send, and the events that follow it until the turn ends.

    ``async for ev in turn`` yields this turn's events only (first, possibly, the
    echo of your own ``user.message``), ending with the event that closes the
    turn (a ``session.status_idle``). A turn that ends because the session was
    terminated or deleted raises :class:`TurnFailed` after yielding that event.
    Several consumers may read one turn at once (each sees every event).

    A ``requires_action`` pause does not end the turn: with ``tools=`` the
    handlers run (each tool use at most once) and their results are posted;
    otherwise answer :attr:`pending_tool_calls` with :meth:`submit_tool_results`.
    """

    def __init__(
        self,
        session: SessionHandle,
        accepted: Accepted,
        tools: Mapping[str, ToolHandler] | None,
    ) -> None:
        self.session = session
        self.accepted = accepted
        self._tools = dict(tools or {})
        self._items: list[Event] = []
        self._reconnects: list[int] = []  # positions in _items where a reconnect happened
        self._waiters: list[asyncio.Future[None]] = []
        self._done = False
        self._error: BaseException | None = None
        self._ran: set[str] = set()
        self._unposted: tuple[list[UserCustomToolResult], str] | None = None
        self._tool_lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "done" if self._done else "running"
        return f"<Turn {self.turn_id or self.accepted.last_event_id} of {self.session.id} {state}>"

    @property
    def turn_id(self) -> str | None:
        """The turn id the server gave (``None`` for servers without turn ids)."""
        return self.accepted.turn_id

    @property
    def done(self) -> bool:
        """True once the turn ended (or failed)."""
        return self._done

    @property
    def events(self) -> tuple[Event, ...]:
        """The turn's events received so far (no previews)."""
        return tuple(ev for ev in self._items if ev.type not in PREVIEW_TYPES)

    @property
    def text(self) -> str:
        """The reply so far, previews included (final once the turn is done)."""
        live = LiveText()
        self._fold_live(live, 0, len(self._items))
        return live.text

    @property
    def pending_tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls a ``requires_action`` pause waits for (empty otherwise)."""
        return self.snapshot().pending_tool_calls

    def snapshot(self) -> TurnResult:
        """The result folded from the events received so far."""
        return fold_many(None, self._items)

    # -- delivery (called by the pump)

    def _deliver(self, ev: Event) -> None:
        if self._done:
            return
        self._items.append(ev)
        if type(ev) in _TURN_ENDERS and ends_turn(ev):
            self._done = True
            self.session._turn_done(self)
            if fails_turn(ev):
                self._error = TurnFailed(
                    f"turn {self.turn_id} ended: {ev.type}",
                    turn_id=self.turn_id,
                    reason=ev.type,
                    event=ev,
                    result=None,
                )
        if self._waiters:
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done = True
        self._error = exc
        self.session._turn_done(self)
        self._wake()

    def _reconnected(self) -> None:
        self._reconnects.append(len(self._items))

    def _fold_live(self, live: LiveText, start: int, stop: int) -> None:
        """Fold items ``[start, stop)`` into ``live``, dropping previews cut by reconnects."""
        marks = self._reconnects
        for i in range(start, stop):
            if marks and i in marks:
                live.drop_previews()
            live.feed(self._items[i])

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait(self, max_wait: float | None = None) -> None:
        """Until something is delivered (or ``max_wait`` seconds pass)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if max_wait is None:
                await fut
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max_wait):
                        await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    # -- consumption

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate(previews=False)

    async def _iterate(self, *, previews: bool) -> AsyncIterator[Event]:
        i = 0
        while True:
            items = self._items
            while i < len(items):
                ev = items[i]
                i += 1
                cls = type(ev)
                if previews or (cls is not EventDelta and cls is not EventStart):
                    yield ev
                if cls is SessionStatusIdle and _is_pause(ev):
                    await self._run_tools()
            if self._done:
                self._raise_error()
                return
            await self._wait()

    def _raise_error(self) -> None:
        if self._error is not None:
            if isinstance(self._error, TurnFailed):
                self._error.result = self.snapshot()
            raise self._error

    async def result(self) -> TurnResult:
        """Wait for the turn to end and return what it produced.

        Raises :class:`TurnFailed` (with ``result``) if the session was
        terminated or deleted, or the stream's error if following it failed.
        """
        async for _ in self:
            pass
        return self.snapshot()

    async def text_stream(self, *, coalesce: float | None = None) -> AsyncIterator[str]:
        """The reply's text as it arrives.

        Without ``coalesce``: chunks to append (from live previews when the
        session's connection asks for ``agent.message`` deltas, else one chunk
        per message). With ``coalesce=seconds``: the full text so far, at most
        once per interval (a pending update is delivered when the interval is
        up, even if nothing else happens), and always the final text last: for
        chat platforms that edit a message in place.
        """
        loop = asyncio.get_running_loop()
        live = LiveText()
        emitted = ""
        next_at = 0.0
        i = 0
        while True:
            start = i
            while i < len(self._items):
                ev = self._items[i]
                i += 1
                if _is_pause(ev):
                    self._fold_live(live, start, i)
                    start = i
                    await self._run_tools()
            self._fold_live(live, start, i)
            done = self._done and i >= len(self._items)
            current = self.snapshot().text if done and self._error is None else live.text
            now = loop.time()
            if coalesce is None:
                chunk = text_delta(emitted, current)
                emitted = current
                if chunk:
                    yield chunk
            elif current != emitted and (now >= next_at or done):
                emitted = current
                next_at = now + coalesce
                yield current
            elif done and not emitted:
                yield current  # the final text is always delivered, even when empty
            if done:
                self._raise_error()
                return
            pending = coalesce is not None and current != emitted
            await self._wait(max(0.0, next_at - now) if pending else None)

    async def interrupt(self) -> Accepted:
        """Ask the agent to stop this turn (``user.interrupt``); the turn then ends."""
        return await self.session.interrupt()

    async def submit_tool_results(
        self, results: Mapping[str, ToolOutput], *, is_error: bool = False
    ) -> Accepted:
        """Answer pending custom tool uses: ``{tool_use_event_id: output}``.

        Outputs are strings, content blocks or ready-made
        :class:`UserCustomToolResult` events. Each answer's idempotency key is
        derived from the tool use ids, so a retried submit is stored once.
        """
        events = [_tool_result(use_id, out, is_error) for use_id, out in results.items()]
        self._ran.update(results)
        key = "tool-results-" + "-".join(sorted(results))
        return await self.session.send_events(events, idempotency_key=key[:255])

    async def _run_tools(self) -> None:
        if not self._tools:
            return
        async with self._tool_lock:
            if self._unposted is None:
                calls = [
                    c
                    for c in self.pending_tool_calls
                    if isinstance(c.use, AgentCustomToolUse)
                    and c.use.id
                    and c.use.id not in self._ran
                ]
                if not calls:
                    return
                # At most once: a tool is marked as run before it runs, and its
                # results are kept until they are posted (a failed post is retried
                # with the same key when the turn is read again, never re-run).
                self._ran.update(c.use.id or "" for c in calls)
                outputs = await asyncio.gather(*(self._run_tool(c) for c in calls))
                events = [
                    _tool_result(c.use.id or "", out, err)
                    for c, (out, err) in zip(calls, outputs, strict=True)
                ]
                key = "tool-results-" + "-".join(sorted(c.use.id or "" for c in calls))
                self._unposted = (events, key[:255])
            events, key = self._unposted
            await self.session.send_events(events, idempotency_key=key)
            self._unposted = None

    async def _run_tool(self, call: ToolCall) -> tuple[ToolOutput, bool]:
        handler = self._tools.get(call.name)
        if handler is None:
            return f"no handler for tool {call.name!r} in this client", True
        try:
            return await handler(call.input), False
        except Exception as exc:  # a failing tool is reported to the agent, not raised
            logger.debug("tool %s (%s) failed: %r", call.name, call.use.id, exc)
            return f"{type(exc).__name__}: {exc}", True

    async def aclose(self) -> None:
        """Stop following this turn (the session's connection closes if nobody else reads)."""
        if not self._done:
            self._fail(ClientClosedError("this turn was closed"))
        self.session._release_turn(self)

    async def __aenter__(self) -> Turn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _is_pause(ev: Event) -> bool:
    return isinstance(ev, SessionStatusIdle) and not ev.stop_reason.ends_turn


def _tool_result(use_id: str, out: ToolOutput, is_error: bool) -> UserCustomToolResult:
    if isinstance(out, UserCustomToolResult):
        return out
    return UserCustomToolResult(use_id, out, is_error)


def _as_events(
    content: Content | OutboundEvent | Sequence[OutboundEvent],
) -> list[OutboundEvent]:
    if isinstance(content, str | _BLOCKS):
        return [UserMessage(content)]
    if isinstance(content, Sequence) and content and not isinstance(content[0], str | _BLOCKS):
        return list(content)  # type: ignore[arg-type]
    if isinstance(content, Sequence):
        return [UserMessage(content)]  # type: ignore[arg-type]
    return [content]


class SessionHandle:
    """A session for the turn API. Get one with ``client.session(session_id)``.

    ``await send(...)`` starts a turn; ``events()`` listens to everything the
    session does. One SSE connection serves all of them and closes when the
    last one is done.
    """

    def __init__(
        self,
        client: QoderClient,
        session_id: str,
        *,
        event_deltas: tuple[str, ...],
        stall_timeout: float | None,
        max_stalls: int,
        queue_size: int,
    ) -> None:
        self._client = client
        self.id = session_id
        self._event_deltas = event_deltas
        self._stall_timeout = stall_timeout
        self._max_stalls = max_stalls
        self._queue_size = queue_size
        self._router: TurnRouter[Turn] = TurnRouter()
        self._listeners: list[_Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._stream: EventStream | None = None
        self._turns: list[Turn] = []
        self._lock = asyncio.Lock()
        self._handlers: list[tuple[str | type[BaseEvent], EventHandler]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self.connections = 0

    def __repr__(self) -> str:
        live, listeners = len(self._router.live), len(self._listeners)
        return f"<SessionHandle {self.id} turns={live} listeners={listeners}>"

    # -- sending

    async def send_events(
        self, events: Sequence[OutboundEvent], *, idempotency_key: str | None = None
    ) -> Accepted:
        """Post events that do not start a turn (tool results, confirmations...)."""
        return await self._client.sessions.events.send(
            self.id, list(events), idempotency_key=idempotency_key
        )

    async def send(
        self,
        content: Content | OutboundEvent | Sequence[OutboundEvent],
        *,
        tools: Mapping[str, ToolHandler] | None = None,
        on_busy: OnBusy = "raise",
        busy_timeout: float | None = 600.0,
        idempotency_key: str | None = None,
    ) -> Turn:
        """Post a message (text, blocks, or events) and return its :class:`Turn`.

        ``tools`` maps custom tool names to async handlers run when the agent
        asks for them. ``on_busy``: ``"raise"`` (:class:`SessionBusyError`, the
        default), ``"wait"`` (wait up to ``busy_timeout`` s for the running turn
        to end, then send) or ``"interrupt"`` (interrupt it, wait, send). One
        ``Idempotency-Key`` (yours or generated) covers every retry of the send.
        """
        events = _as_events(content)
        key = idempotency_key or uuid.uuid4().hex
        deadline = None if busy_timeout is None else time.monotonic() + busy_timeout
        interrupted = False
        attempt = 0
        while True:
            try:
                # A busy 409 stored nothing, and a server may replay a cached 409 for the
                # same key: each new attempt after one gets its own, derived key.
                return await self._post_turn(events, f"{key}.{attempt}" if attempt else key, tools)
            except SessionBusyError:
                attempt += 1
                if on_busy == "raise":
                    raise
                if on_busy == "interrupt" and not interrupted:
                    await self.interrupt()
                    interrupted = True
                await self._wait_not_busy(deadline)

    async def define_outcome(
        self,
        description: str,
        *,
        rubric: Any = None,
        max_iterations: int | None = None,
        on_busy: OnBusy = "raise",
    ) -> Turn:
        """Define an outcome for the agent to work towards (``user.define_outcome``)."""
        return await self.send(
            [UserDefineOutcome(description, rubric, max_iterations)], on_busy=on_busy
        )

    async def interrupt(self) -> Accepted:
        """Interrupt whatever the session is running (``user.interrupt``)."""
        return await self.send_events([UserInterrupt()])

    async def _post_turn(
        self, events: list[OutboundEvent], key: str, tools: Mapping[str, ToolHandler] | None
    ) -> Turn:
        client = self._client
        client._check_open()
        # The lock orders "is a pump running?" decisions: a listener starting a pump
        # while this POST is in flight could otherwise begin after our anchor.
        async with self._lock:
            self._router.expect()
            try:
                accepted = await client.sessions.events.send(self.id, events, idempotency_key=key)
            except BaseException:
                self._router.cancel_expect()
                self._maybe_stop()
                raise
            anchor = accepted.last_event_id
            if anchor is None:
                self._router.cancel_expect()
                self._maybe_stop()
                raise APIResponseValidationError(
                    "the send answer named no created event: its turn cannot be followed",
                    method="POST",
                    url=f"/sessions/{self.id}/events",
                )
            turn = Turn(self, accepted, tools)
            start_here = self._task is None
            deliveries = self._router.bind(
                turn, turn_id=accepted.turn_id, anchor_id=anchor, started=start_here
            )
            self._turns.append(turn)
            overflowed, self._router.overflowed = self._router.overflowed, False
            for target, ev in deliveries:
                target._deliver(ev)
            if start_here:
                self._start_pump(anchor)
            elif overflowed:
                turn._fail(
                    StreamError("events of this turn were dropped while its send was pending")
                )
            self._set_activity()
            return turn

    async def _wait_not_busy(self, deadline: float | None) -> None:
        """Until the session looks idle (a local turn ends, or the server says so)."""
        delay = 0.1
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise SessionBusyError(
                    "the session stayed busy past busy_timeout",
                    status_code=409,
                    error_type="conflict_error",
                )
            local = [t for t in self._turns if not t.done]
            if local:
                waits = [asyncio.ensure_future(t._wait()) for t in local]
                _, pending = await asyncio.wait(waits, timeout=delay)
                for w in pending:
                    w.cancel()
                continue
            session = await self._client.sessions.retrieve(self.id)
            if (session.status or "idle") not in _BUSY_STATUSES:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- listening

    async def events(self, *, previews: bool = False) -> AsyncIterator[Event]:
        """Every event of the session from now on (plus previews if asked).

        Shares the session's connection with its turns. The queue is bounded:
        a slow reader slows the connection instead of losing events. Breaking
        out of the loop (or cancelling the reader) detaches the listener.
        """
        client = self._client
        client._check_open()
        listener = _Listener(self._queue_size, previews)
        self._listeners.append(listener)
        try:
            async with self._lock:
                if self._task is None:
                    cursor = await self._latest_event_id()
                    self._start_pump(cursor)
            while (item := await listener.get()) is not None:
                yield item
        finally:
            listener.close()
            if listener in self._listeners:
                self._listeners.remove(listener)
            self._maybe_stop()

    # -- callbacks

    @overload
    def on(
        self, event: str | type[BaseEvent] = "*", handler: None = None
    ) -> Callable[[EventHandler], EventHandler]: ...

    @overload
    def on(self, event: str | type[BaseEvent], handler: EventHandler) -> EventHandler: ...

    def on(
        self, event: str | type[BaseEvent] = "*", handler: EventHandler | None = None
    ) -> EventHandler | Callable[[EventHandler], EventHandler]:
        """Call ``handler(event)`` for every event of this session matching ``event``.

        ``event`` is a type string (``"agent.message"``), a model class
        (``AgentMessage``) or ``"*"``. Handlers may be plain or async functions;
        one that raises is logged and the others keep running. Usable as a
        decorator (``@session.on("agent.message")``). Runs on the session's
        shared connection until :meth:`off` removes the last handler or the
        client closes.
        """
        if handler is None:

            def decorate(fn: EventHandler) -> EventHandler:
                self.on(event, fn)
                return fn

            return decorate
        self._client._check_open()
        self._handlers.append((event, handler))
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(), name=f"qoder_async handlers {self.id}"
            )
        return handler

    def off(self, event: str | type[BaseEvent] = "*", handler: EventHandler | None = None) -> None:
        """Remove handlers registered with :meth:`on` (all for ``event`` if ``handler`` is None)."""
        self._handlers = [
            (e, h) for e, h in self._handlers if not (e == event and handler in (None, h))
        ]
        if not self._handlers and self._dispatcher is not None:
            self._dispatcher.cancel()
            self._dispatcher = None

    async def _dispatch(self) -> None:
        async for ev in self.events(previews=True):
            for event, handler in list(self._handlers):
                if (
                    event == "*"
                    or event == ev.type
                    or (isinstance(event, type) and isinstance(ev, event))
                ):
                    try:
                        outcome = handler(ev)
                        if asyncio.iscoroutine(outcome):
                            await outcome
                    except Exception:
                        logger.exception("handler %r failed on %s %s", handler, ev.type, ev.id)

    async def _latest_event_id(self) -> str | None:
        """The newest stored event's id, to listen from now on without a replay."""
        body = await self._client._request(
            "GET",
            f"/sessions/{quote(self.id, safe='')}/events",
            params=[("order", "desc"), ("limit", "1")],
        )
        data = body.get("data") if isinstance(body, Mapping) else None
        if data and isinstance(data[0], Mapping) and isinstance(data[0].get("id"), str):
            return str(data[0]["id"])
        return None

    # -- the pump

    def _start_pump(self, cursor: str | None) -> None:
        from ._client import EventStream

        # Turns keep their events (for result()), so their events keep raw lazily.
        stream = EventStream(
            self._client,
            self.id,
            last_event_id=cursor,
            event_deltas=self._event_deltas,
            stall_timeout=self._stall_timeout,
            max_stalls=self._max_stalls,
            on_reconnect=self._on_reconnect,
            lazy_raw=True,
        )
        self._stream = stream
        self.connections += 1
        self._task = asyncio.get_running_loop().create_task(
            self._pump(stream), name=f"qoder_async pump {self.id}"
        )
        self._set_activity()

    def _on_reconnect(self) -> None:
        for state in self._router.live:
            state.key._reconnected()

    def _set_activity(self) -> None:
        if self._stream is not None:
            self._stream.expect_activity = bool(self._router.live or self._router.waiting)

    async def _pump(self, stream: EventStream) -> None:
        error: BaseException | None = None
        router = self._router
        try:
            route, listeners = router.route, self._listeners  # mutated in place, never rebound
            async for ev in stream:
                cls = type(ev)
                preview = cls is EventDelta or cls is EventStart
                if preview:
                    current = router.current
                    if current is not None:
                        current._deliver(ev)
                else:
                    for target in route(ev):
                        target._deliver(ev)
                if listeners:
                    for listener in listeners:
                        if listener.previews or not preview:
                            await listener.put(ev)
                if cls in _LIFECYCLE:
                    # Consumers can only have changed now: a turn ended or the session did.
                    if cls is SessionDeleted or cls is SessionStatusTerminated:
                        break
                    if not self._wanted():
                        break
                    stream.expect_activity = bool(router.live or router.waiting)
        except asyncio.CancelledError:
            error = ClientClosedError("the session's connection was closed")
            raise
        except QoderError as exc:
            error = exc
        except Exception as exc:  # never leave a consumer hanging on an unexpected bug
            error = exc
        finally:
            if self._task is asyncio.current_task():
                self._task = None
                self._stream = None
            await stream.aclose()
            self._end_consumers(error)

    def _end_consumers(self, error: BaseException | None) -> None:
        if self._task is not None:
            return  # a new pump took over; the consumers belong to it
        for state in self._router.live:
            state.key._fail(error or StreamError("the session's event stream ended"))
            self._router.release(state.key)
        for listener in list(self._listeners):
            listener.close(error)

    def _wanted(self) -> bool:
        return bool(self._router.live or self._router.waiting or self._listeners)

    def _maybe_stop(self) -> None:
        if self._task is not None and not self._wanted():
            task, self._task = self._task, None
            self._stream = None
            task.cancel()

    def _turn_done(self, turn: Turn) -> None:
        if turn in self._turns:
            self._turns.remove(turn)

    def _release_turn(self, turn: Turn) -> None:
        self._router.release(turn)
        if turn in self._turns:
            self._turns.remove(turn)
        self._maybe_stop()

    async def aclose(self) -> None:
        """Stop the pump and close the connection; live turns and listeners end."""
        dispatcher, self._dispatcher = self._dispatcher, None
        self._handlers.clear()
        if dispatcher is not None:
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await dispatcher
        task, self._task = self._task, None
        self._stream = None
        for turn in list(self._turns):
            turn._fail(ClientClosedError("the client was closed"))
        self._turns.clear()
        for state in self._router.live:
            self._router.release(state.key)
        for listener in list(self._listeners):
            listener.close(ClientClosedError("the client was closed"))
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
