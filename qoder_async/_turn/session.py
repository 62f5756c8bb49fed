"""SHELL: the turn API. One handle and one SSE connection per session; turns on top.

``client.session(id)`` gives a :class:`SessionHandle`. ``await handle.send(...)``
posts the event and returns a :class:`Turn` bound to the 202 answer (its
``turn_id`` and the created event). A single pump task per session reads the
session's stream and hands every event to the
:class:`~qoder_async._core.turns.TurnRouter`, which routes it to the turn it belongs
to, and to the session's listeners (``handle.listen()``, ``handle.on()``).

=============================================  ======================================
situation                                      what the handle does
=============================================  ======================================
a send while no connection is open             the connection opens right after the
                                               send's own ``user.message`` (no history
                                               replay, nothing between the POST and
                                               the subscription missed)
a send while the connection is open            the turn starts when its message is
                                               streamed (events racing the 202 answer
                                               are kept in a bounded backlog)
every send (and every retry of it)             one ``Idempotency-Key``: the caller's
                                               (argument, or an ``Idempotency-Key``
                                               header in any case) or one generated
                                               for this send; never a derived one
a 202 that names no created event              the turn claims the next ``user.message``
                                               on the stream; with no connection open,
                                               it is looked up among the newest 100
                                               events (one request, newest first,
                                               stopping at the handle's cursor)
the last turn, listener and callback left      the connection closes
``send(..., keep_events=False)``               the turn keeps none of its events (each is
                                               folded once, as it arrives): ``result()``
                                               has the text, messages, tool calls and
                                               errors, ``events`` empty; iterating the
                                               turn raises :class:`ConfigurationError`
a requires_action pause with ``tools=``        the handlers run in a task of the turn
                                               (each tool use at most once, whatever
                                               the reader does), results posted with a
                                               key derived from the tool use ids; with
                                               ``max_concurrent_calls=N`` at most N of
                                               the turn's handlers run at once
the turn's reader is cancelled                 tools keep running and post their
                                               results; the turn still finishes
the turn is closed while a tool runs           the tool is cancelled and an error result
                                               is posted for it, so the session is not
                                               left waiting
``async with turn:`` left by an exception or   after the above, one ``user.interrupt``
a cancellation, before the turn ended          (shielded, bounded by 5 s, failures
                                               logged at DEBUG) so the server stops
                                               working for nobody; not when the turn
                                               ended (its idle, termination or deletion
                                               was received), on a normal exit, with
                                               ``send(..., interrupt_on_exit=False)``,
                                               or once the client is closed
a 409 busy with ``on_busy="wait"``             wait for the running turn (local, or the
                                               server's status), backing off up to 5 s
                                               between attempts, until ``busy_timeout``;
                                               each attempt under the same key (a busy
                                               409 stored nothing): a later resend with
                                               that key is the same message
``submit_tool_results()`` fails (4xx, retries  the calls stay pending (``wait_for_action``
exhausted)                                     returns them again); answered only once
                                               the post succeeded
a ``listen()`` reader's queue stays full       the slow-consumer policy: it is detached
``listener_timeout`` seconds (30)              (WARNING, ``listener_overflows`` += 1);
                                               it reads what was queued, then
                                               :class:`ListenerOverflowError` with the
                                               cursor of the last of those (resume from
                                               it: no gap); turns and other listeners
                                               go on
the stream ends under the ``on()`` callbacks   their dispatcher ends; a failure is logged
(failed, terminated, deleted)                  once at ERROR and raised by
                                               ``wait_handlers()``; the next ``on()``
                                               starts a fresh dispatcher
``follow()``: the turn of a message this       the session's first ``user.message``
client did not send (a deployment run's)       (or outcome) among its oldest 100
                                               events (one request); the connection
                                               opens right after it; none stored yet:
                                               it opens at the session's beginning
                                               and the turn claims the first one; a
                                               connection already open:
                                               :class:`ConfigurationError`
``catch_up(last_event_id=c)``, ``c`` no event of this  :class:`UnknownCursorError` (a 400 naming
session                                        ``after_id``, or an empty page while ``c``
                                               is not among the newest 100 events);
                                               nothing after ``c``: an empty result
=============================================  ======================================

Callbacks (``on()``) are fed through an unbounded queue, so a callback that
sends and awaits a turn of its own session cannot block the connection that
turn needs; ``listen()`` queues are bounded (``queue_size``), and a reader
that stops reading is detached after a bounded wait instead of holding the
whole session back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict, Unpack, overload

from qoder_async._api.resources import FIND_SENT_LIMIT, find_sent, send_retrying_busy
from qoder_async._api.tools import (
    ToolHandler,
    ToolOutput,
    Tools,
    call_handler,
    call_slots,
    error_result,
    results_key,
    tool_content,
    tool_handlers,
    tool_result,
)
from qoder_async._core.errors import (
    ActionRequiredError,
    APIResponseValidationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ListenerOverflowError,
    QoderError,
    StreamError,
    TurnFailedError,
    UnknownCursorError,
)
from qoder_async._core.machine import DEFAULT_DEDUPE_WINDOW, Dedupe
from qoder_async._core.models import (
    Accepted,
    AgentCustomToolUse,
    BaseEvent,
    Content,
    Cursor,
    DocumentBlock,
    Event,
    ImageBlock,
    OutboundEvent,
    PreviewDelta,
    PreviewStart,
    SessionDeletedEvent,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    TextBlock,
    UnknownBlock,
    UserCustomToolResult,
    UserDefineOutcome,
    UserInterrupt,
    UserMessage,
    as_events,
    new_idempotency_key,
)
from qoder_async._core.sse import PREVIEW_CLASSES
from qoder_async._core.turns import (
    RECONNECTED,
    CatchUp,
    ThreadResult,
    ToolCall,
    TurnFold,
    TurnResult,
    TurnRouter,
    ends_turn,
    fails_turn,
    fold_history,
)
from qoder_async._shell.eventstream import DEFAULT_READ_TIMEOUT, EventStream, as_cursor
from qoder_async._shell.http import HTTP, segment
from qoder_async._shell.tasks import cancel_and_wait
from qoder_async._turn.tracing import Tracing, TurnSpan

if TYPE_CHECKING:
    from qoder_async._api.resources import Sessions
    from qoder_async._core.backoff import ReconnectPolicy

__all__ = [
    "EventHandler",
    "OnBusy",
    "SessionHandle",
    "ToolHandler",
    "Turn",
]

logger = logging.getLogger("qoder_async")


EventHandler: TypeAlias = Callable[[Event], Awaitable[None] | None]
"""A callback for :meth:`SessionHandle.on`: plain or async, called with each event."""

OnBusy: TypeAlias = Literal["raise", "wait", "interrupt"]
OnToolError: TypeAlias = Literal["report", "raise"]


class SendOptions(TypedDict, total=False):
    """The keyword options of :meth:`SessionHandle.send`, which every sending method takes."""

    tools: Tools | None
    on_tool_error: OnToolError
    on_busy: OnBusy
    busy_timeout: float | None
    idempotency_key: str | None
    interrupt_on_exit: bool
    max_concurrent_calls: int | None
    keep_events: bool


OnAction: TypeAlias = Literal["wait", "raise"]


def _tool_options(
    tools: Tools | None, on_tool_error: OnToolError, max_concurrent_calls: int | None
) -> tuple[dict[str, ToolHandler], contextlib.AbstractAsyncContextManager[Any]]:
    """``send()``'s and ``follow()``'s tool options, checked before anything is posted."""
    if on_tool_error not in ("report", "raise"):
        raise ConfigurationError("on_tool_error must be 'report' or 'raise'")
    return tool_handlers(tools), call_slots(max_concurrent_calls)


_BUSY_STATUSES = frozenset({"running", "processing", "rescheduling", "canceling"})
_TURN_ENDERS = frozenset({SessionStatusIdle, SessionStatusTerminated, SessionDeletedEvent})
_LIFECYCLE = frozenset(
    {SessionStatusIdle, SessionStatusRunning, SessionStatusTerminated, SessionDeletedEvent}
)
_BLOCKS = TextBlock | ImageBlock | DocumentBlock | UnknownBlock
_CANCEL_POST_TIMEOUT = 10.0
_EXIT_INTERRUPT_TIMEOUT = 5.0  # leaving ``async with turn:`` early: the interrupt's bound
_exit_interrupts: set[asyncio.Task[None]] = set()  # shielded posts outliving a second cancel


_END: Any = object()  # the end of a listener's queue
_IDS_LIMIT = 2 * DEFAULT_DEDUPE_WINDOW  # a turn without kept events trims its ids past this


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it to end, whatever it ends with (a cancel of the
    caller while it waits is raised)."""
    if task is not None:
        with contextlib.suppress(Exception):
            await cancel_and_wait(task)


class _Listener:
    """A ``listen()``/``on()`` consumer's queue (``asyncio.Queue``); ``size`` None is unbounded.

    The pump ``offer()``s each event; a bounded queue that is full makes it
    wait (``put()``), at most the session's ``listener_timeout``: then the
    listener is detached (the slow-consumer policy). Ending it (``close``,
    with or without an error) never drops what is already queued: the reader
    gets every queued event first, then the end (or the error). ``cursor`` is
    the last event queued (where a detached reader resumes without a gap).
    """

    __slots__ = ("_end", "_last", "_queue", "closed", "previews")

    def __init__(self, size: int | None, previews: bool) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(0 if size is None else max(1, size))
        self._end: BaseException | None = None
        self.closed = False
        self.previews = previews
        self._last: Event | None = None  # the cursor, built only when asked for

    @property
    def cursor(self) -> Cursor | None:
        """The last event with an id queued here (previews never count)."""
        ev = self._last
        return None if ev is None or ev.id is None else Cursor(ev.id, ev.processed_at)

    def __len__(self) -> int:
        return self._queue.qsize()

    def offer(self, ev: Event) -> bool:
        """Queue ``ev`` if there is room (or the reader left); False when full."""
        if not self.closed:
            try:
                self._queue.put_nowait(ev)
            except asyncio.QueueFull:
                return False
            self._queued(ev)
        return True

    async def put(self, ev: Event) -> None:
        """Wait for room, then queue ``ev`` (the caller bounds the wait)."""
        if not self.offer(ev):
            await self._queue.put(ev)
            self._queued(ev)

    def _queued(self, ev: Event) -> None:
        if type(ev) not in PREVIEW_CLASSES and ev.id is not None:
            self._last = ev

    def close(self, error: BaseException | None = None) -> None:
        """End the queue: the reader gets what is queued, then the end (or ``error``)."""
        if self.closed:
            return
        self.closed = True
        self._end = error
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_END)  # full: the reader sees the end once it drained

    def leave(self) -> None:
        """The reader left: drop what is queued, so a waiting ``put`` returns at once."""
        self.close()
        while not self._queue.empty():
            self._queue.get_nowait()

    async def get(self) -> Event | None:
        """The next event; None at the end; the closing error after the last event."""
        queue = self._queue
        if queue.empty() and self.closed:
            item = _END
        else:
            item = await queue.get()
        if item is _END:
            if self._end is not None:
                raise self._end
            return None
        ev: Event = item
        return ev


class Turn:
    """One turn: the answer to a send, and the events that follow it until the turn ends.

    ``async for ev in turn`` yields this turn's events only (first, possibly, the
    echo of your own ``user.message``), each once, ending with the event that
    closes the turn (a ``session.status_idle``). A turn that ends because the
    session was terminated or deleted raises :class:`TurnFailedError` after yielding
    that event. Several consumers may read one turn at once (each sees every
    event).

    A ``requires_action`` pause does not end the turn: with ``tools=`` the
    handlers of the named tools run (each tool use at most once) and their
    results are posted; tools without a handler here are left to you:
    :meth:`wait_for_action` returns them, :meth:`submit_tool_results` answers.

    ``async with turn:`` closes the turn on the way out (see :meth:`aclose`).
    Left by an exception or a cancellation (a web caller hung up) before the
    turn ended, it also interrupts the turn on the server: one
    ``user.interrupt``, shielded from a second cancellation and bounded (5 s),
    so the agent does not go on working for nobody. ``interrupt_on_exit``
    (``send(..., interrupt_on_exit=False)``) turns that off.
    """

    interrupt_on_exit: bool = True
    """Whether leaving ``async with`` early interrupts the turn on the server."""

    def __init__(
        self,
        session: SessionHandle,
        accepted: Accepted,
        tools: Mapping[str, ToolHandler],
        on_tool_error: OnToolError,
        span: TurnSpan,
        slots: contextlib.AbstractAsyncContextManager[Any],
        *,
        keep_events: bool = True,
    ) -> None:
        self.session = session
        self.accepted = accepted
        self._tools = tools
        self._slots = slots
        self._on_tool_error = on_tool_error
        # Each event is folded once, as it is delivered; the fold's kept events are
        # what readers iterate (with keep_events=False there are none to iterate).
        self._fold = TurnFold(keep_events=keep_events)
        self._items = self._fold.events
        self._live = self._fold.live
        # The ids delivered (a dict: the cyclic GC does not traverse it); without kept
        # events, only the newest DEFAULT_DEDUPE_WINDOW (as the session's own dedupe).
        self._ids: dict[str, None] = {}
        self._result: TurnResult | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._done = False
        self._error: BaseException | None = None
        self._ran: set[str] = set()
        self._unposted: tuple[list[UserCustomToolResult], str] | None = None
        self._tool_error: BaseException | None = None
        self._tool_task: asyncio.Task[None] | None = None
        self._running_calls: list[ToolCall] = []
        self._paused = False
        self._resuming = False
        self._warned_pause = False
        self._turn_id = accepted.turn_id
        self._span = span

    def __repr__(self) -> str:
        state = "done" if self._done else "running"
        return f"<Turn {self.turn_id or self.accepted.last_event_id} of {self.session.id} {state}>"

    @property
    def turn_id(self) -> str | None:
        """The turn id (from the 202 answer, else the first one streamed; None without ids)."""
        return self._turn_id

    @property
    def done(self) -> bool:
        """True once the turn ended (or failed)."""
        return self._done

    @property
    def keep_events(self) -> bool:
        """Whether the turn keeps its events (``send(..., keep_events=False)`` keeps none)."""
        return self._fold.keep_events

    @property
    def events(self) -> tuple[Event, ...]:
        """The turn's events received so far (no previews; none with ``keep_events=False``)."""
        return tuple(self._items)

    @property
    def text(self) -> str:
        """The reply so far, as shown (previews included; final once the turn is done)."""
        return self._live.text

    @property
    def pending_tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls a ``requires_action`` pause waits for (empty otherwise)."""
        return self.snapshot().pending_tool_calls if self._paused else ()

    @property
    def threads(self) -> tuple[ThreadResult, ...]:
        """What each sub-agent thread did in this turn so far (``text`` stays the primary's)."""
        return self.snapshot().threads

    @property
    def expects_events(self) -> bool:
        """True while the server is expected to send more of this turn without our help."""
        return not self._done and (not self._paused or self._resuming)

    def snapshot(self) -> TurnResult:
        """The result folded from the events received so far (each event was folded once)."""
        if self._done:
            if self._result is None:  # nothing is folded after the end: build it once
                self._result = self._fold.result(last=True)
            return self._result
        return self._fold.result()

    # -- delivery (called by the pump)

    def _deliver(self, ev: Event) -> None:
        if self._done:
            return
        cls = type(ev)
        if cls is not PreviewDelta and cls is not PreviewStart:
            ident = ev.id
            if ident is not None:
                ids = self._ids
                if ident in ids:
                    return  # never twice, whatever the server replays
                ids[ident] = None
                if len(ids) > _IDS_LIMIT and not self._fold.keep_events:
                    self._ids = dict.fromkeys(list(ids)[-DEFAULT_DEDUPE_WINDOW:])
            if self._turn_id is None and ev.turn_id is not None:
                self._turn_id = ev.turn_id
        if self._fold.feed(ev) and self._span.chunks is not None:
            self._span.chunks.append(time.monotonic())  # a text chunk, for the metrics
        if cls in _TURN_ENDERS:
            if ends_turn(ev):
                self._finish(ev)
            else:
                self._paused, self._resuming = True, False
                self._start_tools()
        elif cls is SessionStatusRunning:
            self._paused = self._resuming = False
        if self._waiters:
            self._wake()

    def _finish(self, ev: Event) -> None:
        self._done = True
        self._paused = False
        if fails_turn(ev):
            self._error = TurnFailedError(
                f"turn {self.turn_id} ended: {ev.type}",
                turn_id=self.turn_id,
                reason=ev.type,
                event=ev,
                result=None,
            )
        # Folding every event again is not free: only for a span that keeps the result.
        result = self.snapshot() if self._span.recording else None
        self._span.ended(
            turn_id=self.turn_id,
            stop_reason=str(result.stop_reason) if result and result.stop_reason else None,
            input_tokens=result.usage.input_tokens if result else None,
            output_tokens=result.usage.output_tokens if result else None,
            error=self._error,
        )

    def _fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done = True
        self._error = exc
        self._span.ended(turn_id=self.turn_id, error=exc)
        self._wake()

    def _reconnected(self, cursor: str | None) -> None:
        if not self._done:
            self._fold.feed(RECONNECTED)
            self._span.reconnected(cursor)

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
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        if not self._fold.keep_events:
            raise ConfigurationError(
                "this turn was sent with keep_events=False: it keeps no events to iterate; "
                "read text_stream() and result(), or the session's listen()/on()"
            )
        await self._post_unposted()
        i = 0
        items = self._items
        while True:
            while i < len(items):
                i += 1
                yield items[i - 1]
            if not await self._settle("wait"):
                return

    async def _settle(self, on_action: OnAction) -> bool:
        """Raise what ended the turn, or wait for more; False once it ended cleanly."""
        if self._ended():
            return False
        if pending := self._unanswered():
            self._pause_waiting(pending, on_action)
        await self._wait()
        return True

    def _ended(self) -> bool:
        """Raise a tool's error, or what ended the turn; True once it ended cleanly."""
        self._raise_tool_error()
        if self._done:
            self._raise_error()
        return self._done

    def _raise_error(self) -> None:
        if self._error is not None:
            if isinstance(self._error, TurnFailedError):
                self._error.result = self.snapshot()
            raise self._error

    def _raise_tool_error(self) -> None:
        error, self._tool_error = self._tool_error, None
        if error is not None:
            raise error

    def _unanswered(self) -> tuple[ToolCall, ...]:
        """Pending calls no handler of this turn answers (yours to answer)."""
        if not self._paused or self._tool_task_running():
            return ()
        return tuple(
            c
            for c in self.pending_tool_calls
            if c.id not in self._ran
            and not (isinstance(c.use, AgentCustomToolUse) and c.name in self._tools)
        )

    def _pause_waiting(self, pending: tuple[ToolCall, ...], on_action: OnAction) -> None:
        names = ", ".join(sorted({c.name for c in pending}))
        what = (
            f"turn {self.turn_id} of session {self.session.id} is paused: the agent waits for "
            f"{len(pending)} tool result(s) ({names}) that no handler here answers"
        )
        if on_action == "raise":
            raise ActionRequiredError(what, turn_id=self.turn_id, pending=pending)
        if not self._warned_pause:
            self._warned_pause = True
            logger.warning(
                "%s; answer them with turn.submit_tool_results(), or pass tools= to send(); "
                "still waiting",
                what,
            )

    async def result(self, *, on_action: OnAction = "wait") -> TurnResult:
        """Wait for the turn to end and return what it produced.

        A pause for tool uses nobody here answers is logged once at WARNING and
        waited out (answer it with :meth:`submit_tool_results` from elsewhere),
        or raises :class:`ActionRequiredError` with ``on_action="raise"``. Raises
        :class:`TurnFailedError` (with ``result``) if the session was terminated or
        deleted, or the stream's error if following it failed.
        """
        await self._post_unposted()
        while await self._settle(on_action):
            pass
        return self.snapshot()

    async def wait_for_action(self) -> tuple[ToolCall, ...]:
        """Wait until the turn pauses for tool uses nobody here answers, or ends.

        Returns those tool calls (empty when the turn ended instead): answer
        them with :meth:`submit_tool_results`.
        """
        while not self._ended():
            if pending := self._unanswered():
                return pending
            await self._wait()
        return ()

    async def text_stream(self, *, coalesce: float | None = None) -> AsyncIterator[str]:
        """The reply's text as it arrives; the chunks joined equal ``result().text``.

        Without ``coalesce``: chunks to append (from live previews when the
        session's connection asks for ``agent.message`` deltas, else one chunk
        per message). With ``coalesce=seconds``: the full text so far, at most
        once per interval (a pending update is delivered when the interval is
        up, even if nothing else happens), and always the final text last: for
        chat platforms that edit a message in place.
        """
        await self._post_unposted()
        loop = asyncio.get_running_loop()
        live = self._live
        reader = live.reader()
        emitted, shown, delivered = "", -1, False  # with coalesce: what was last yielded
        next_at = 0.0
        while True:
            self._raise_tool_error()
            done = self._done
            now = loop.time()
            # After each yield, look again: while the consumer held the chunk (awaiting
            # an interrupt, say), the turn may have moved on, or ended, with nobody waiting.
            if coalesce is None:
                chunk = reader.take()
                if chunk:
                    yield chunk
                    continue
            else:
                if live.version != shown and (now >= next_at or done):
                    shown, current = live.version, live.text
                    if current != emitted:
                        emitted, next_at, delivered = current, now + coalesce, True
                        yield current
                        continue
                if done and not delivered:
                    yield emitted  # the final text is always delivered, even when empty
            if done:
                self._raise_error()
                return
            pending = coalesce is not None and live.version != shown
            await self._wait(max(0.0, next_at - now) if pending else None)

    async def interrupt(self) -> Accepted | None:
        """Ask the agent to stop this turn (``user.interrupt``); the turn then ends.

        A no-op returning None once the turn has ended (it would interrupt the
        session's next turn instead).
        """
        if self._done:
            return None
        return await self.session.interrupt()

    async def submit_tool_results(
        self, results: Mapping[str, ToolOutput], *, is_error: bool = False
    ) -> Accepted:
        """Answer pending custom tool uses: ``{tool_use_id: output}``.

        Outputs are converted as a tool's return value is (a ``str`` as text,
        blocks as they are, ``None`` empty, a ``dict`` or other JSON value as its
        JSON text, a :class:`UserCustomToolResult` as it is); one with no
        conversion raises ``TypeError``/``ValueError`` before anything is
        posted. A sub-agent's tool use is answered in its thread. Each answer's
        idempotency key is derived from the tool use ids, so a retried submit is
        stored once. The calls count as answered once the post succeeded: after
        a failure (raised here) they are still pending for
        :meth:`wait_for_action` and ``result(on_action="raise")``.
        """
        calls = {c.id: c for c in self.snapshot().tool_calls}
        events = []
        for use_id, out in results.items():
            call = calls.get(use_id)
            if call is None:
                events.append(UserCustomToolResult(use_id, tool_content(out), is_error))
            else:
                events.append(tool_result(call, out, is_error))
        accepted = await self.session.send_events(
            events, idempotency_key=results_key(list(results))
        )
        # Answered only once the post succeeded: a failed one leaves them pending.
        self._ran.update(results)
        self._resuming = True
        self.session._refresh_activity()
        return accepted

    # -- the tool runner

    def _tool_task_running(self) -> bool:
        return self._tool_task is not None and not self._tool_task.done()

    async def _stop_tools(self) -> list[ToolCall]:
        """Cancel the tool task if it runs; returns the calls it had not answered."""
        if not self._tool_task_running():
            return []
        await _cancel(self._tool_task)
        calls, self._running_calls = self._running_calls, []
        return calls

    def _start_tools(self) -> None:
        if not self._tools or self._tool_task_running():
            return
        calls = [
            c
            for c in self.snapshot().pending_tool_calls
            if isinstance(c.use, AgentCustomToolUse)
            and c.id
            and c.id not in self._ran
            and c.name in self._tools
        ]
        if not calls:
            return
        # At most once: a tool is marked as run before it runs.
        self._ran.update(c.id for c in calls)
        self._running_calls = calls
        self._tool_task = asyncio.get_running_loop().create_task(
            self._run_tools(calls), name=f"qoder_async tools {self.session.id}"
        )

    async def _run_tools(self, calls: list[ToolCall]) -> None:
        try:
            outputs = await asyncio.gather(*(self._run_tool(c) for c in calls))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # on_tool_error="raise": the reader gets it
            self._tool_error = exc
            self._wake()
            return
        events = list(outputs)
        self._unposted = (events, results_key([c.id for c in calls]))
        self._running_calls = []
        await self._post_unposted(background=True)

    async def _post_unposted(self, *, background: bool = False) -> None:
        """Post results that are kept (never re-run); a failure is raised to the reader."""
        if self._unposted is None or self._done:
            return
        events, key = self._unposted
        try:
            await self.session.send_events(events, idempotency_key=key)
        except Exception as exc:  # any failure, not only ours: the reader must hear of it
            if not background:
                raise
            self._tool_error = exc
            self._wake()
            return
        self._unposted = None
        self._resuming = True
        self.session._refresh_activity()

    async def _run_tool(self, call: ToolCall) -> UserCustomToolResult:
        handler = self._tools[call.name]
        try:  # the conversion too: an output with none is the handler's error
            async with self._slots:
                with self._span.tool(call.name, call.id):
                    return tool_result(call, await call_handler(handler, call.input), False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._on_tool_error == "raise":
                exc.add_note(f"raised by the handler of tool {call.name!r} ({call.id})")
                raise
            logger.warning(
                "tool %r (%s) of session %s failed; reporting the error to the agent",
                call.name,
                call.id,
                self.session.id,
                exc_info=exc,
            )
            return error_result(call, exc)

    async def aclose(self) -> None:
        """Stop following this turn (the session's connection closes if nobody else reads).

        A tool still running is cancelled and an error result posted for it, so
        the session does not wait for it forever.
        """
        calls = await self._stop_tools()
        if calls and not self.session.closed:
            events = [tool_result(c, "the client stopped running this tool", True) for c in calls]
            with contextlib.suppress(QoderError, TimeoutError):
                async with asyncio.timeout(_CANCEL_POST_TIMEOUT):
                    await self.session.send_events(
                        events, idempotency_key=results_key([c.id for c in calls])
                    )
        if not self._done:
            self._fail(ClientClosedError("this turn was closed"))
        self.session._release_turn(self)

    async def __aenter__(self) -> Turn:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # Ended on the server: its idle, termination or deletion was received (a stream
        # failure ends the turn here only: the server may still be running it).
        ended = self._done and (self._error is None or isinstance(self._error, TurnFailedError))
        await self.aclose()
        if exc_type is None or ended or not self.interrupt_on_exit or self.session.closed:
            return
        # Shielded: a web framework may cancel the handler again while this runs; the
        # post then goes on in the background, within the same bound.
        task = asyncio.get_running_loop().create_task(self._interrupt_on_exit())
        _exit_interrupts.add(task)
        task.add_done_callback(_exit_interrupts.discard)
        await asyncio.shield(task)

    async def _interrupt_on_exit(self) -> None:
        try:
            async with asyncio.timeout(_EXIT_INTERRUPT_TIMEOUT):
                await self.session.interrupt()
        except (QoderError, TimeoutError) as exc:
            logger.debug(
                "could not interrupt the turn of session %s on leaving it: %r", self.session.id, exc
            )


class SessionHandle:
    """A session for the turn API. Get one with ``client.session(session_id)``.

    ``await send(...)`` starts a turn; ``listen()`` and ``on()`` follow
    everything the session does. One SSE connection serves all of them and
    closes when the last one is done. ``connections`` counts the connections
    opened; ``listener_overflows`` the ``listen()`` readers detached because
    they fell behind (the one place overflows are counted).
    """

    def __init__(
        self,
        http: HTTP,
        sessions: Sessions,
        session_id: str,
        *,
        reconnect: ReconnectPolicy,
        tracing: Tracing,
        event_deltas: tuple[str, ...],
        stall_timeout: float | None,
        max_stalls: int,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        queue_size: int,
        listener_timeout: float = 30.0,
    ) -> None:
        self._http = http
        self._sessions = sessions
        self.id = session_id
        self._reconnect = reconnect
        self._tracing = tracing
        self.options: dict[str, Any] = {
            "event_deltas": event_deltas,
            "read_timeout": read_timeout,
            "stall_timeout": stall_timeout,
            "max_stalls": max_stalls,
            "queue_size": queue_size,
            "listener_timeout": listener_timeout,
        }
        self._router: TurnRouter[Turn] = TurnRouter()
        self._dedupe = Dedupe()
        self._cursor: Cursor | None = None
        self._listeners: list[_Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._stream: EventStream | None = None
        self._lock = asyncio.Lock()
        self._handlers: list[tuple[str | type[BaseEvent], EventHandler]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self._dispatched: asyncio.Task[None] | None = None  # the last one, for wait_handlers
        self._connected = asyncio.Event()
        self.connections = 0
        self.listener_overflows = 0

    def __repr__(self) -> str:
        live, listeners = len(self._router.live), len(self._listeners)
        return f"<SessionHandle {self.id} turns={live} listeners={listeners}>"

    @property
    def closed(self) -> bool:
        """True once the client was closed."""
        return self._http.closed

    @property
    def listeners(self) -> int:
        """How many ``listen()`` readers (and the ``on()`` dispatcher) are attached now."""
        return len(self._listeners)

    @property
    def handlers(self) -> int:
        """How many ``on()`` callbacks are registered."""
        return len(self._handlers)

    @property
    def connected(self) -> bool:
        """True while the session's connection is established (events flow to consumers)."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Wait until the session's connection is established.

        After ``listen()`` or ``on()`` attach, events from then on reach them: a
        test can await this before making the session do something.
        """
        await self._connected.wait()

    # -- sending

    async def send_events(
        self, events: Sequence[OutboundEvent], *, idempotency_key: str | None = None
    ) -> Accepted:
        """Post events that do not start a turn (tool results, confirmations...)."""
        return await self._sessions.events.send(
            self.id, list(events), idempotency_key=idempotency_key
        )

    async def send(
        self,
        content: Content | OutboundEvent | Sequence[OutboundEvent],
        *,
        tools: Tools | None = None,
        on_tool_error: OnToolError = "report",
        on_busy: OnBusy = "raise",
        busy_timeout: float | None = 600.0,
        idempotency_key: str | None = None,
        interrupt_on_exit: bool = True,
        max_concurrent_calls: int | None = None,
        keep_events: bool = True,
    ) -> Turn:
        """Post a message (text, blocks, or events) and return its :class:`Turn`.

        ``tools`` runs custom tools when the agent asks for them: a list of
        :func:`tool` functions, or a mapping of tool names to handlers (``async
        def`` or plain ``def``, called with the input mapping); tools without a
        handler here are left for you to answer. ``on_tool_error``: ``"report"`` a handler's
        exception to the agent as an error result (and log it at WARNING), or
        ``"raise"`` it to the turn's reader. ``on_busy``: ``"raise"``
        (:class:`SessionBusyError`, the default), ``"wait"`` (wait up to
        ``busy_timeout`` s for the running turn to end, then send) or
        ``"interrupt"`` (interrupt it, wait, send). One ``Idempotency-Key``
        (yours or generated) covers every retry of the send.
        ``interrupt_on_exit``: leaving ``async with turn:`` by an exception or a
        cancellation before the turn ended interrupts it on the server (see
        :class:`Turn`); ``False`` leaves it running.
        ``max_concurrent_calls``: the most tool handlers of this turn running at
        once, across its threads (the others wait their turn; ``None``: no cap).
        ``keep_events``: ``False`` keeps none of the turn's events, for a caller
        that wants the text (``text_stream()``, ``result().text``): memory then
        stays bounded by the messages, tool calls and errors ``result()``
        returns, whatever the turn's length; ``result().events`` and each
        thread's ``events`` are empty and iterating the turn raises
        :class:`ConfigurationError`. By default a turn keeps every event (no
        previews), which ``result().events`` returns.
        """
        if on_busy not in ("raise", "wait", "interrupt"):
            raise ConfigurationError("on_busy must be 'raise', 'wait' or 'interrupt'")
        handlers, slots = _tool_options(tools, on_tool_error, max_concurrent_calls)
        events = as_events(content)
        key = idempotency_key or new_idempotency_key()
        span = self._tracing.turn(self.id)

        def new_turn(accepted: Accepted) -> Turn:
            return Turn(
                self, accepted, handlers, on_tool_error, span, slots, keep_events=keep_events
            )

        try:
            # The same key on every attempt: a busy 409 stored nothing.
            turn = await send_retrying_busy(
                lambda: self._post_turn(events, key, new_turn),
                on_busy=on_busy,
                busy_timeout=busy_timeout,
                clock=time.monotonic,
                pause=self._pause_busy,
                interrupt=self.interrupt,
            )
        except BaseException as exc:
            span.ended(error=exc)
            raise
        turn.interrupt_on_exit = interrupt_on_exit
        return turn

    async def define_outcome(
        self,
        description: str,
        *,
        rubric: Any = None,
        max_iterations: int | None = None,
        **options: Unpack[SendOptions],
    ) -> Turn:
        """Define an outcome for the agent to work towards (``user.define_outcome``).

        A turn like any other: it takes every option of :meth:`send` (tools,
        ``on_busy``, ``idempotency_key``...) and returns its :class:`Turn`.
        """
        return await self.send([UserDefineOutcome(description, rubric, max_iterations)], **options)

    async def interrupt(self) -> Accepted:
        """Interrupt whatever the session is running (``user.interrupt``)."""
        return await self.send_events([UserInterrupt()])

    async def _post_turn(
        self, events: list[OutboundEvent], key: str, new_turn: Callable[[Accepted], Turn]
    ) -> Turn:
        self._http.check_open()
        router = self._router
        # The lock orders "is a pump running?" decisions: a listener starting a pump
        # while this POST is in flight could otherwise begin after our anchor.
        async with self._lock:
            router.expect()
            self._refresh_activity()
            try:
                accepted = await self._sessions.events.send(self.id, events, idempotency_key=key)
                anchor = accepted.anchor
                start_here = self._task is None
                resume: Cursor | None = None
                if anchor is None and start_here:
                    # Stored, but the answer names no created event: find it, or follow
                    # the session from where this handle last was.
                    anchor = await find_sent(
                        self._sessions.events,
                        self.id,
                        events,
                        stop_at=self._cursor.event_id if self._cursor else None,
                    )
                    if anchor is None and self._cursor is not None:
                        resume, start_here = self._cursor, False
                    elif anchor is None:
                        raise APIResponseValidationError(
                            "the send was accepted but its answer names no created event and "
                            "it is not in the recent history: its turn cannot be followed",
                            method="POST",
                            url=f"/sessions/{self.id}/events",
                        )
            except BaseException:
                router.cancel_expect()
                self._maybe_stop()
                raise
            return self._bind(new_turn(accepted), anchor, start_here, resume)

    def _bind(
        self, turn: Turn, anchor: Event | None, started: bool, resume: Cursor | None = None
    ) -> Turn:
        """Bind an expected turn to its anchor (under the lock); start the pump if none runs.

        The pump starts right after the anchor; without one, at ``resume``, and
        with neither at the session's beginning (a followed turn whose message
        is not stored yet).
        """
        router = self._router
        deliveries = router.bind(
            turn,
            turn_id=turn.accepted.turn_id,
            anchor_id=anchor.id if anchor is not None else None,
            anchor_at=anchor.processed_at if anchor is not None else None,
            started=started,
        )
        overflowed, router.overflowed = router.overflowed, False
        for target, ev in deliveries:
            target._deliver(ev)
        if self._task is None:
            start = Cursor(anchor.id or "", anchor.processed_at) if anchor is not None else resume
            self._start_pump(start)
        elif overflowed:
            turn._fail(StreamError("events of this turn were dropped while its send was pending"))
        self._refresh_activity()
        return turn

    async def follow(
        self,
        *,
        tools: Tools | None = None,
        on_tool_error: OnToolError = "report",
        max_concurrent_calls: int | None = None,
        interrupt_on_exit: bool = False,
    ) -> Turn:
        """The :class:`Turn` of a message this client did not send: the session's first
        ``user.message`` (or ``user.define_outcome``), such as a deployment run's
        initial events (``await client.session(run.session_id).follow()``).

        The message is looked up among the session's oldest 100 events (one
        request); when it is not stored yet, the turn claims the first one the
        stream brings, the stream then starting at the session's beginning.
        ``tools`` and the other options are :meth:`send`'s; ``interrupt_on_exit``
        is off by default (the turn is not this caller's). The session's
        connection must not be open yet (before :meth:`listen`, :meth:`on` or a
        :meth:`send`): else :class:`ConfigurationError`, since its message may
        already have gone by.
        """
        self._http.check_open()
        handlers, slots = _tool_options(tools, on_tool_error, max_concurrent_calls)
        async with self._lock:
            if self._task is not None:
                raise ConfigurationError(
                    "follow() needs the session's connection closed: call it before listen(), "
                    "on() or send() on this handle"
                )
            span = self._tracing.turn(self.id)
            self._router.expect()
            try:
                listing = self._sessions.events.list(self.id, order="asc", limit=FIND_SENT_LIMIT)
                oldest = listing.parse_page((await listing.first_page()).body)
            except BaseException as exc:
                self._router.cancel_expect()
                span.ended(error=exc)
                raise
            anchor = next(
                (ev for ev in oldest if isinstance(ev, UserMessage | UserDefineOutcome) and ev.id),
                None,
            )
            accepted = Accepted(events=(anchor,) if anchor is not None else ())
            turn = Turn(self, accepted, handlers, on_tool_error, span, slots)
            turn.interrupt_on_exit = interrupt_on_exit
            return self._bind(turn, anchor, started=anchor is not None)

    async def _pause_busy(self, wait: float, attempt: int) -> bool | None:
        """After a 409 busy: wait for the running turn (local, or the server's status)."""
        local = [s.key for s in self._router.live if s.key.expects_events]
        if local:
            waits = [asyncio.ensure_future(t._wait()) for t in local]
            _, pending = await asyncio.wait(waits, timeout=wait)
            for w in pending:
                w.cancel()
            return None
        session = await self._sessions.retrieve(self.id)
        idle = (session.status or "idle") not in _BUSY_STATUSES
        if idle and attempt == 2:
            logger.warning(
                "session %s reports %r but refuses new messages (409): a turn is probably "
                "paused waiting for tool results; retrying with backoff until busy_timeout "
                "(answer it, or send with on_busy='interrupt')",
                self.id,
                session.status,
            )
        await asyncio.sleep(wait)
        return idle

    # -- catching up (webhook-driven bots)

    async def catch_up(
        self, *, last_event_id: Cursor | str | None = None, limit: int = 100
    ) -> CatchUp:
        """The turns since ``last_event_id`` (a :class:`Cursor` or an event id), from the history.

        For bots that cannot hold a stream open (a webhook says "something
        happened in this session"): lists the stored events after the cursor
        (all of them when ``last_event_id`` is None), ``limit`` per page, and folds them
        into the :class:`TurnResult` each turn's stream would give. Returns a
        :class:`CatchUp`: the ``turns`` that ended, the ``pending`` one (running,
        or paused for tool results) and the ``cursor`` to store and pass next
        time. Opens no connection; safe to call again for the same webhook.

        A cursor that is not an event of this session (another session's, or an
        id that never existed) raises :class:`UnknownCursorError`, whether the
        server refuses it (400 naming ``after_id``) or answers an empty page:
        nothing after a cursor is told from a cursor that is not there by
        finding it among the session's newest 100 events.
        """
        start = as_cursor(last_event_id)
        listed = self._sessions.events.list(
            self.id, order="asc", limit=limit, after_id=start.event_id if start else None
        )
        try:
            events = [ev async for ev in listed]
        except BadRequestError as exc:
            if start is None or "after_id" not in f"{exc.param} {exc.message}":
                raise
            raise self._unknown_cursor(start.event_id) from exc
        if start is not None and not events:
            # Nothing after it: then it is the newest event (or was a moment ago).
            newest = self._sessions.events.list(self.id, order="desc", limit=FIND_SENT_LIMIT)
            page = newest.parse_page((await newest.first_page()).body)
            if not any(ev.id == start.event_id for ev in page):
                raise self._unknown_cursor(start.event_id)
        return fold_history(events, start)

    def _unknown_cursor(self, cursor: str) -> UnknownCursorError:
        return UnknownCursorError(
            f"catch_up(last_event_id={cursor!r}): that event is not in session {self.id} (another "
            "session's cursor, or an id that never existed); catch up with last_event_id=None to "
            "start from the beginning",
            session_id=self.id,
            cursor=cursor,
        )

    # -- listening

    async def listen(self, *, previews: bool = False) -> AsyncIterator[Event]:
        """Every event of the session from now on (plus previews if asked).

        Shares the session's connection with its turns. The queue is bounded
        (``queue_size``): a reader whose queue stays full ``listener_timeout``
        seconds is detached (logged at WARNING, counted in
        ``listener_overflows``): it gets the events queued for it, then
        :class:`ListenerOverflowError` carrying the cursor of the last one, to
        resume from without a gap; the turns and other listeners go on. So do
        not await a turn of this same session inside the loop: use :meth:`on`.
        Breaking out of the loop (or cancelling the reader) detaches it.
        """
        listening = self._listen(self.options["queue_size"], previews)
        async with contextlib.aclosing(listening):  # detached when this one closes
            async for ev in listening:
                yield ev

    async def _listen(self, size: int | None, previews: bool) -> AsyncGenerator[Event, None]:
        self._http.check_open()
        listener = _Listener(size, previews)
        self._listeners.append(listener)
        try:
            async with self._lock:
                if self._task is None:
                    self._start_pump(await self._latest())
            while (item := await listener.get()) is not None:
                yield item
        finally:
            listener.leave()
            if listener in self._listeners:
                self._listeners.remove(listener)
            self._maybe_stop()

    async def _latest(self) -> Cursor | None:
        """The newest stored event, to listen from now on without a replay."""
        answer = await self._http.request(
            "GET",
            f"/sessions/{segment(self.id)}/events",
            params=[("order", "desc"), ("limit", "1")],
        )
        body = answer.body
        data = body.get("data") if isinstance(body, Mapping) else None
        first = data[0] if data and isinstance(data[0], Mapping) else None
        if first is not None and isinstance(first.get("id"), str):
            at = first.get("processed_at")
            return Cursor(str(first["id"]), at if isinstance(at, str) else None)
        return None

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
        one that raises is logged and the others keep running. A handler may
        send and await a turn of this same session. Usable as a decorator
        (``@session.on("agent.message")``). Runs on the session's shared
        connection until :meth:`off` removes the last handler, the client
        closes or the session's stream ends (terminated, deleted, or failed:
        the failure is logged once at ERROR and raised by
        :meth:`wait_handlers`); the next ``on()`` then starts them again.
        """
        if handler is None:

            def decorate(fn: EventHandler) -> EventHandler:
                self.on(event, fn)
                return fn

            return decorate
        self._http.check_open()
        self._handlers.append((event, handler))
        if self._dispatcher is None:
            task = asyncio.get_running_loop().create_task(
                self._dispatch(), name=f"qoder_async handlers {self.id}"
            )
            task.add_done_callback(self._dispatch_done)
            self._dispatcher = self._dispatched = task
        return handler

    def off(self, event: str | type[BaseEvent] = "*", handler: EventHandler | None = None) -> None:
        """Remove handlers registered with :meth:`on` (all for ``event`` if ``handler`` is None)."""
        self._handlers = [
            (e, h) for e, h in self._handlers if not (e == event and handler in (None, h))
        ]
        if not self._handlers and self._dispatcher is not None:
            self._dispatcher.cancel()
            self._dispatcher = None

    async def wait_handlers(self) -> None:
        """Wait until the :meth:`on` callbacks stop; raise the error that stopped them.

        Returns when :meth:`off` removed the last handler, or the session's
        stream ended cleanly (terminated, deleted); raises the stream's error
        when it failed. Returns at once when no callbacks ran.
        """
        task = self._dispatched
        if task is None:
            return
        await asyncio.wait([task])
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error

    def _dispatch_done(self, task: asyncio.Task[None]) -> None:
        if self._dispatcher is task:
            self._dispatcher = None  # the next on() starts a fresh dispatcher
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error(
                "the on() callbacks of session %s stopped: its stream failed (%s); the "
                "next on() starts them again",
                self.id,
                error,
                exc_info=error,
            )

    async def _dispatch(self) -> None:
        # Unbounded: a handler that awaits a turn of this session must not block the
        # connection that turn needs.
        async for ev in self._listen(None, previews=True):
            for event, handler in list(self._handlers):
                if (
                    event == "*"
                    or event == ev.type
                    or (isinstance(event, type) and isinstance(ev, event))
                ):
                    try:
                        outcome = handler(ev)
                        if inspect.isawaitable(outcome):
                            await outcome
                    except Exception:
                        logger.exception("handler %r failed on %s %s", handler, ev.type, ev.id)

    # -- the pump

    def _start_pump(self, cursor: Cursor | None) -> None:
        opts = self.options
        # Turns keep their events (for result()), so their events keep raw lazily.
        stream = EventStream(
            self._http,
            self.id,
            f"/sessions/{segment(self.id)}/events/stream",
            last_event_id=cursor,
            event_deltas=opts["event_deltas"],
            reconnect=self._reconnect,
            read_timeout=opts["read_timeout"],
            stall_timeout=opts["stall_timeout"],
            max_stalls=opts["max_stalls"],
            dedupe=self._dedupe,
            on_reconnect=self._on_reconnect,
            on_connect=self._connected.set,
            lazy_raw=True,
        )
        self._stream = stream
        self.connections += 1
        self._task = asyncio.get_running_loop().create_task(
            self._pump(stream), name=f"qoder_async pump {self.id}"
        )
        self._refresh_activity()

    def _on_reconnect(self) -> None:
        self._connected.clear()
        cursor = self._stream.last_event_id if self._stream is not None else None
        for state in self._router.live:
            state.key._reconnected(cursor)

    def _refresh_activity(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.expect_activity = bool(self._router.waiting) or any(
                s.key.expects_events for s in self._router.live
            )

    async def _pump(self, stream: EventStream) -> None:
        error: BaseException | None = None
        router = self._router
        try:
            route, listeners = router.route, self._listeners  # mutated in place, never rebound
            async for ev in stream:
                cls = type(ev)
                preview = cls is PreviewDelta or cls is PreviewStart
                if preview:
                    current = router.current
                    if current is not None:
                        current._deliver(ev)
                else:
                    for target in route(ev):
                        target._deliver(ev)
                if listeners:
                    slow: list[_Listener] | None = None
                    for listener in listeners:
                        if (listener.previews or not preview) and not listener.offer(ev):
                            slow = [listener] if slow is None else [*slow, listener]
                    if slow is not None:
                        await self._wait_for(slow, ev)
                        if not self._wanted():
                            break
                if cls in _LIFECYCLE:
                    # Consumers can only have changed now: a turn ended or the session did.
                    if cls is SessionDeletedEvent or cls is SessionStatusTerminated:
                        break
                    if not self._wanted():
                        break
                    self._refresh_activity()
        except asyncio.CancelledError:
            error = ClientClosedError("the session's connection was closed")
            raise
        except QoderError as exc:
            error = exc
        except Exception as exc:  # never leave a consumer hanging on an unexpected bug
            error = exc
        finally:
            self._cursor = stream.cursor or self._cursor
            if self._task is asyncio.current_task():
                self._detach()
            await stream.aclose()
            self._end_consumers(error)

    async def _wait_for(self, slow: list[_Listener], ev: Event) -> None:
        """The slow-consumer policy: wait for room at most ``listener_timeout``, then detach."""
        deadline = asyncio.get_running_loop().time() + self.options["listener_timeout"]
        for listener in slow:
            try:
                async with asyncio.timeout_at(deadline):
                    await listener.put(ev)
            except TimeoutError:
                self._overflowed(listener)

    def _overflowed(self, listener: _Listener) -> None:
        """Detach a listener whose queue stayed full; the one place overflows are counted."""
        self.listener_overflows += 1
        self._tracing.metrics.overflowed()
        if listener in self._listeners:
            self._listeners.remove(listener)
        cursor = listener.cursor
        logger.warning(
            "session %s: a listen() reader took no event for %.1fs with %d queued; detached "
            "with ListenerOverflowError (resume from %s without a gap); the session goes on",
            self.id,
            self.options["listener_timeout"],
            len(listener),
            cursor.event_id if cursor else None,
        )
        listener.close(
            ListenerOverflowError(
                f"this listen() reader of session {self.id} fell behind (its queue of "
                f"{len(listener)} events stayed full for {self.options['listener_timeout']}s) "
                "and was detached; resume from the error's cursor",
                last_event_id=cursor.event_id if cursor else None,
                cursor=cursor,
            )
        )

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
            task = self._task
            self._detach()
            task.cancel()

    def _detach(self) -> None:
        """The pump is no longer this handle's; the cursor stays where its stream was."""
        if self._stream is not None:
            self._cursor = self._stream.cursor or self._cursor
        self._task = self._stream = None
        self._connected.clear()

    def _release_turn(self, turn: Turn) -> None:
        self._router.release(turn)
        self._maybe_stop()

    async def aclose(self) -> None:
        """Stop the pump and close the connection; live turns and listeners end."""
        dispatcher, self._dispatcher = self._dispatcher, None
        self._handlers.clear()
        await _cancel(dispatcher)
        task = self._task
        self._detach()
        # Not the done ones: a turn failed at bind (events dropped) is live until released.
        for turn in [s.key for s in self._router.live if not s.key.done]:
            await turn._stop_tools()
            turn._fail(ClientClosedError("the client was closed"))
        for state in self._router.live:
            self._router.release(state.key)
        for listener in list(self._listeners):
            listener.close(ClientClosedError("the client was closed"))
        await _cancel(task)
