"""CORE (sans-I/O): which events belong to which turn, when a turn ends, its text and result.

A session's stream carries every turn of the session (and, on a fresh
connection, its history). The :class:`TurnRouter` hands each event to the turn
it belongs to; :class:`LiveText` folds a turn's text as it is shown, previews
included; :func:`fold_many` folds a turn's events into a :class:`TurnResult`.
Events reach the router only once and never from before the stream's cursor:
the stream machine (``_core/machine.py``) drops duplicates and replays first.

Routing, in order (the first rule that applies wins; the rows are
:data:`ROUTING_RULES`, which the router runs):

==========================================================  ======================================
event                                                       goes to
==========================================================  ======================================
``session.status_terminated``/``session.deleted``           every live turn (each fails)
its ``id`` is a bound turn's anchor (its own user.message)  that turn, which starts here (and
                                                            adopts its ``turn_id``)
a ``user.message``/``user.define_outcome`` while a turn     that turn: it was answered without
bound without an anchor id waits for one                    created events
a ``turn_id`` of a live turn                                that turn (it starts if needed)
a ``turn_id`` no turn has, while the current turn has none  the current turn, which adopts it (the
                                                            202 carried none)
no ``turn_id``, a turn is positionally current              the current turn
no ``turn_id``, ``processed_at`` later than an unstarted    that turn, which starts (its echo was
turn's anchor's, and no turn is current                     never streamed)
anything else, while a send awaits its answer               the backlog (bounded); claimed when
                                                            the answer binds its turn
otherwise (history, other clients' or finished turns)       nobody
==========================================================  ======================================

A turn becomes *current* when it starts; it stops being current when it ends.
A ``turn_id`` of a turn that ended is never adopted again.
An event kept in the backlog goes by position (or adoption) only to a turn that
had started before it arrived: an event older than a turn's own message is never
that turn's, whichever later answer re-routes the backlog (by its ``turn_id`` only).

Turn state, driven by the events routed to it (every row that applies acts; the rows
are :data:`TURN_STATE_RULES`, which the router runs):

=====================================================  ===================================
event                                                  turn
=====================================================  ===================================
``session.status_idle`` with ``end_turn``,             ends (finished)
``retries_exhausted``, ``budget_reached``, an unknown
reason, or none (older servers)
``session.status_idle`` with ``requires_action``       paused: ``pending`` = its
                                                       ``event_ids``
``session.status_running``                             running (pause cleared)
``session.status_terminated``, ``session.deleted``     ends (failed)
``session.error`` (``retrying``, ``exhausted``,        no change: an idle or a termination
``terminal``)                                          follows
``session.thread_status_idle``                         no change (a sub-thread)
=====================================================  ===================================

Live text (:class:`LiveText`), main thread only; the text is the segments joined
by a blank line, each segment one message:

============================================  ======================================
input                                         segment
============================================  ======================================
``event_start`` / first ``event_delta`` of X  opens segment X (a delta without its
                                              start opens it *broken*: its start was
                                              missed, so its deltas are not shown)
``event_delta`` of an open segment            appended
``agent.content_block_delta`` (message M)     appended to segment M (incremental
                                              dialect: stored events, never broken)
``agent.message`` X                           segment X (or, incremental dialect, the
                                              oldest open one) becomes its final text
a reconnect                                   open ``event_delta`` segments break: they
                                              keep the text shown and wait for their
                                              final message (deltas after a gap are
                                              not trusted)
``span.model_request_end``                    open segments end as shown (the request
                                              died before its message was stored)
``agent.message`` X of a sub-thread           segment X, if a preview opened it, goes
============================================  ======================================

So the text only ever grows by appending (previews being prefixes of their
message, as the API documents), and ``text_stream()`` chunks joined equal the
final ``TurnResult.text`` whatever drops and replays happen.

Sub-agent threads (``TurnResult.threads``): every event whose
``session_thread_id`` names a thread belongs to that thread's
:class:`ThreadResult` (in the order threads first appear); the turn's ``text``
and ``messages`` stay the primary agent's.

==========================================  ======================================
thread event                                the thread's result
==========================================  ======================================
``session.thread_created``                  appears (``agent_name``)
``session.thread_status_running``/``_idle``  ``status`` ``running``/``idle``
/``_rescheduled``/``_terminated``           /``rescheduling``/``terminated``
``session.thread_status_idle``              ``stop_reason``: its own reason
``session.thread_status_running``           ``stop_reason`` cleared
``agent.message``                           ``messages``; ``text`` their texts
                                            joined by a blank line
any other event of the thread               ``events`` (all of them, in order)
==========================================  ======================================

History (:func:`fold_history`, for a webhook bot catching up from a cursor):
events listed after the cursor are cut into turns the way the router would
cut a stream, and each is folded by :func:`fold_many`:

=========================================  =======================================
events after the cursor                    become
=========================================  =======================================
a ``user.message``/``user.define_outcome``  starts a turn (and is its first event)
the events after it until the event that   that turn (``requires_action`` pauses,
ends it (:func:`ends_turn`)                tool results and ``running`` included)
events after a turn ended, before the      nobody's (``session.updated``...)
next message
events before the first message            the rest of the turn the cursor was
                                           inside, when one of them is more than
                                           session housekeeping; else nobody's
a message while a turn has not ended       starts a new turn; the old one is
                                           reported with ``ended=False``
previews (``event_start``/``event_delta``)  dropped (history never holds them)
=========================================  =======================================

The new cursor is the last event before the turn still in progress (so it is
folded whole next time), or the last event listed when every turn ended. A
cursor that is no event of the session never reaches the fold: the shell
raises :class:`UnknownCursorError` instead of handing the same cursor back (an
empty listing alone cannot tell "nothing new" from "not this session").

Consumers other than turns (``listen()``, ``on()``) never hold a turn back:
the router hands an event to its turn before any listener sees it, and a
listener that stops reading is detached after a bounded wait (the session's
slow-consumer policy). A turn is sent under one ``Idempotency-Key`` for every
attempt, busy retries included, so a turn's ``user.message`` is stored once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from attrs import evolve, field, frozen

from qoder_async._core.models import (
    AgentContentBlockDelta,
    AgentCustomToolUse,
    AgentMCPToolResult,
    AgentMCPToolUse,
    AgentMessage,
    AgentThinking,
    AgentToolResult,
    AgentToolUse,
    Cursor,
    Event,
    PreviewDelta,
    PreviewStart,
    SessionDeletedEvent,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusRescheduled,
    SessionStatusRunning,
    SessionStatusTerminated,
    SessionThreadCreated,
    SessionThreadStatusIdle,
    SessionThreadStatusRescheduled,
    SessionThreadStatusRunning,
    SessionThreadStatusTerminated,
    SessionUpdated,
    SessionUsage,
    SpanModelRequestEnd,
    StopReason,
    Usage,
    UserCustomToolResult,
    UserDefineOutcome,
    UserInterrupt,
    UserMessage,
    UserToolConfirmation,
    UserToolResult,
)
from qoder_async._core.rules import render_table
from qoder_async._core.sse import PREVIEW_CLASSES, time_key

__all__ = [
    "DEFAULT_BACKLOG",
    "MESSAGE_SEPARATOR",
    "RECONNECTED",
    "ROUTING_RULES",
    "TURN_STATE_RULES",
    "CatchUp",
    "LiveText",
    "Reconnected",
    "RoutingRule",
    "TextReader",
    "ThreadResult",
    "ToolCall",
    "TurnFold",
    "TurnResult",
    "TurnRouter",
    "TurnState",
    "TurnStateRule",
    "ends_turn",
    "fold",
    "fold_history",
    "fold_many",
    "rule_tables",
    "text_delta",
]

DEFAULT_BACKLOG = 10_000
MESSAGE_SEPARATOR = "\n\n"
# Events that change a turn's state or may be an anchor: never taken by the fast path.
_ROUTING_EVENTS = frozenset(
    {
        SessionStatusIdle,
        SessionStatusRunning,
        SessionStatusTerminated,
        SessionDeletedEvent,
        UserMessage,
        UserDefineOutcome,
    }
)
_TURN_STARTERS = (UserMessage, UserDefineOutcome)

ToolUse = AgentToolUse | AgentCustomToolUse | AgentMCPToolUse
ToolOutcome = (
    AgentToolResult
    | AgentMCPToolResult
    | UserCustomToolResult
    | UserToolResult
    | UserToolConfirmation
)


def ends_turn(ev: Event) -> bool:
    """True when ``ev`` ends the turn it belongs to (finished or failed)."""
    # Exact class checks: this runs for every event of every turn.
    cls = type(ev)
    if cls is SessionStatusIdle:
        return ev.stop_reason.ends_turn  # type: ignore[union-attr]
    return cls is SessionStatusTerminated or cls is SessionDeletedEvent


def fails_turn(ev: Event) -> bool:
    """True when ``ev`` ends the turn without it finishing."""
    cls = type(ev)
    return cls is SessionStatusTerminated or cls is SessionDeletedEvent


class Reconnected:
    """A marker in a turn's items: the session's connection was re-established here."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RECONNECTED"


RECONNECTED = Reconnected()
Item = Event | Reconnected


# --------------------------------------------------------------------------- live text

_OPEN, _BROKEN, _FINAL, _ENDED = 0, 1, 2, 3


class _Segment:
    __slots__ = ("incremental", "key", "n", "state", "text")

    def __init__(self, n: int, key: str | None, text: str, state: int, incremental: bool) -> None:
        self.n = n  # position in the track (segments are never reordered)
        self.key = key
        self.text = text
        self.state = state
        self.incremental = incremental


class _Track:
    """Segments of one kind of text (reply or thinking); every update is O(1).

    ``parts`` joined is the text. A change that appends at the end of the text
    adds a part; any other change (a final text that does not extend what was
    shown, a retraction, a segment before the last one growing) rebuilds the
    text into a *new* list, so a :class:`TextReader` holding the old one knows
    the text was rewritten. Nothing scans the segments except such a rebuild.
    """

    __slots__ = (
        "_cache",
        "_cache_n",
        "_cache_parts",
        "_dirty",
        "_last",
        "_open_incremental",
        "_unsettled",
        "by_key",
        "parts",
        "segments",
        "version",
    )

    def __init__(self) -> None:
        self.segments: list[_Segment] = []
        self.by_key: dict[str, _Segment] = {}
        self.version = 0
        self.parts: list[str] = []
        self._dirty = False
        self._last: _Segment | None = None  # the last segment with text (unless dirty)
        self._open_incremental: deque[_Segment] = deque()  # oldest first, closed ones lazily
        self._unsettled: list[_Segment] = []  # open or broken (and some settled since)
        self._cache = ""
        self._cache_parts = self.parts
        self._cache_n = 0

    def copy(self) -> _Track:
        other = _Track()
        for seg in self.segments:
            other._add(_Segment(seg.n, seg.key, seg.text, seg.state, seg.incremental))
        other.by_key = {k: other.segments[seg.n] for k, seg in self.by_key.items()}
        other.version = self.version
        other._dirty = True
        return other

    def _add(self, seg: _Segment) -> None:
        self.segments.append(seg)
        if seg.state in (_OPEN, _BROKEN):
            self._unsettled.append(seg)
            if seg.incremental and seg.state == _OPEN:
                self._open_incremental.append(seg)

    def _appended(self, seg: _Segment, had_text: bool, piece: str) -> None:
        """``piece`` was appended to ``seg``'s text."""
        self.version += 1
        if self._dirty:
            return
        last = self._last
        if seg is last:
            self.parts.append(piece)
        elif not had_text and (last is None or seg.n > last.n):
            self.parts.append(piece if last is None else MESSAGE_SEPARATOR + piece)
            self._last = seg
        else:
            self._dirty = True  # an earlier segment grew: the text is rewritten

    def _sync(self) -> None:
        if self._dirty:
            text = MESSAGE_SEPARATOR.join(s.text for s in self.segments if s.text)
            self.parts = [text] if text else []
            self._last = next((s for s in reversed(self.segments) if s.text), None)
            self._dirty = False

    @property
    def text(self) -> str:
        self._sync()
        parts = self.parts
        if self._cache_parts is not parts:
            self._cache, self._cache_parts, self._cache_n = "".join(parts), parts, len(parts)
        elif self._cache_n != len(parts):
            self._cache += "".join(parts[self._cache_n :])
            self._cache_n = len(parts)
        return self._cache

    def _new(self, key: str | None, text: str, state: int, incremental: bool) -> _Segment:
        seg = _Segment(len(self.segments), key, text, state, incremental)
        self._add(seg)
        if key is not None:
            self.by_key[key] = seg
        if text:
            self._appended(seg, False, text)
        return seg

    def start(self, key: str | None) -> None:
        if key is None or key not in self.by_key:
            self._new(key, "", _OPEN, False)

    def delta(self, key: str | None, text: str, incremental: bool) -> bool:
        seg = self.by_key.get(key) if key is not None else None
        if seg is None:
            # A per-connection delta without its start: the beginning was missed.
            state = _OPEN if incremental else _BROKEN
            seg = self._new(key, "", state, incremental)
        if seg.state != _OPEN or not text:
            return False
        had_text = bool(seg.text)
        seg.text += text
        self._appended(seg, had_text, text)
        return True

    def final(self, key: str | None, text: str) -> bool:
        seg = self.by_key.get(key) if key is not None else None
        if seg is None and not self._open_incremental:
            # The common case (a stored message nobody previewed): a new last segment,
            # what _new and _appended do, inlined: this runs for every message.
            segments = self.segments
            seg = _Segment(len(segments), key, text, _FINAL, False)
            segments.append(seg)
            if key is not None:
                self.by_key[key] = seg
            if not text:
                return False
            self.version += 1
            if not self._dirty:
                self.parts.append(text if self._last is None else MESSAGE_SEPARATOR + text)
                self._last = seg
            return True
        if seg is None:
            # The incremental dialect keys previews by message_id, not the event id:
            # the final message completes the oldest incremental preview still open.
            waiting = self._open_incremental
            while waiting and waiting[0].state != _OPEN:
                waiting.popleft()
            seg = waiting.popleft() if waiting else None
            if seg is not None and seg.key is not None and self.by_key.get(seg.key) is seg:
                del self.by_key[seg.key]
        if seg is None:
            self._new(key, text, _FINAL, False)
            return bool(text)
        old = seg.text
        seg.text, seg.state, seg.key = text, _FINAL, key
        if key is not None:
            self.by_key[key] = seg
        if old == text:
            return False
        if text.startswith(old):
            self._appended(seg, bool(old), text[len(old) :])
        else:
            self.version += 1
            self._dirty = True
        return True

    def retract(self, key: str | None) -> bool:
        seg = self.by_key.pop(key, None) if key is not None else None
        if seg is None or seg.state == _FINAL:
            return False
        old = seg.text
        # Kept in place (positions stay valid), empty and closed: joins skip it.
        seg.text, seg.state, seg.key = "", _ENDED, None
        if not old:
            return False
        self.version += 1
        self._dirty = True
        return True

    def settle(self, state_from: tuple[int, ...], to: int, *, incremental: bool | None) -> None:
        still: list[_Segment] = []
        for seg in self._unsettled:
            if seg.state in state_from and (incremental is None or seg.incremental == incremental):
                seg.state = to
            if seg.state in (_OPEN, _BROKEN):
                still.append(seg)
        self._unsettled = still


class TextReader:
    """What was added to a :class:`LiveText`'s reply since the last :meth:`take`.

    O(size of the chunk) per call while the text only grows; when it was
    rewritten (see :func:`text_delta`) the chunk is what follows the common
    prefix of what was taken and the text now.
    """

    __slots__ = ("_n", "_parts", "_track")

    def __init__(self, track: _Track) -> None:
        track._sync()
        self._track = track
        self._parts = track.parts
        self._n = 0

    def take(self) -> str:
        """The text added since the last call ("" if none); the first call returns it all."""
        track = self._track
        track._sync()
        parts, n = track.parts, self._n
        if parts is self._parts:
            if n == len(parts):
                return ""
            self._n = len(parts)
            return parts[n] if len(parts) == n + 1 else "".join(parts[n:])
        taken = "".join(self._parts[:n])
        self._parts, self._n = parts, len(parts)
        return text_delta(taken, track.text)


class LiveText:
    """The text of a turn as it is shown: final messages, and previews where none came.

    ``text`` is the main thread's reply (see the module table), ``thinking``
    likewise for thinking. Every update is O(1) (a rewrite of the text, which
    previews that are prefixes of their message never cause, is O(segments)
    once, when the text is next read); ``version`` increases whenever ``text``
    changes; :meth:`reader` hands out only what was appended.
    """

    __slots__ = ("_reply", "_thinking")

    def __init__(self) -> None:
        self._reply = _Track()
        self._thinking = _Track()

    def copy(self) -> LiveText:
        """An independent copy (folds stay pure)."""
        other = LiveText()
        other._reply = self._reply.copy()
        other._thinking = self._thinking.copy()
        return other

    @property
    def version(self) -> int:
        """Increases whenever ``text`` changes."""
        return self._reply.version

    @property
    def text(self) -> str:
        """The reply so far."""
        return self._reply.text

    @property
    def thinking(self) -> str:
        """The thinking so far."""
        return self._thinking.text

    def reader(self) -> TextReader:
        """A :class:`TextReader` of the reply, starting from the empty text."""
        return TextReader(self._reply)

    def reconnected(self) -> None:
        """The connection was re-established: open per-connection previews break."""
        self._reply.settle((_OPEN,), _BROKEN, incremental=False)
        self._thinking.settle((_OPEN,), _BROKEN, incremental=False)

    def feed(self, ev: Item) -> bool:
        """Fold one event (or a reconnect marker); returns True when ``text`` changed."""
        cls = type(ev)
        if cls is PreviewDelta:
            key = ev.event_id  # type: ignore[union-attr]
            if key is not None and key in self._thinking.by_key:
                return False
            return self._reply.delta(key, ev.text, False)  # type: ignore[union-attr]
        if cls is AgentMessage:
            if ev.session_thread_id is not None:  # type: ignore[union-attr]
                return self._reply.retract(ev.id)  # type: ignore[union-attr]
            return self._reply.final(ev.id, ev.text)  # type: ignore[union-attr]
        if cls is PreviewStart:
            kind = ev.event_type  # type: ignore[union-attr]
            if kind == "agent.thinking":
                self._thinking.start(ev.event_id)  # type: ignore[union-attr]
            elif kind in (None, "agent.message"):
                self._reply.start(ev.event_id)  # type: ignore[union-attr]
            return False
        if cls is AgentContentBlockDelta:
            if ev.session_thread_id is not None:  # type: ignore[union-attr]
                return False
            delta_type, key = ev.delta_type, ev.message_id  # type: ignore[union-attr]
            if delta_type == "thinking_delta":
                self._thinking.delta(key, ev.text, True)  # type: ignore[union-attr]
                return False
            if delta_type not in (None, "text_delta"):
                return False
            return self._reply.delta(key, ev.text, True)  # type: ignore[union-attr]
        if cls is AgentThinking:
            if ev.session_thread_id is None:  # type: ignore[union-attr]
                self._thinking.final(ev.id, ev.text)  # type: ignore[union-attr]
            return False
        if cls is SpanModelRequestEnd:
            self._thinking.settle((_OPEN, _BROKEN), _ENDED, incremental=None)
            self._reply.settle((_OPEN, _BROKEN), _ENDED, incremental=None)
            return False
        if cls is Reconnected:
            self.reconnected()
        return False


def text_delta(emitted: str, current: str) -> str:
    """What to append to ``emitted`` to reach ``current``.

    When ``current`` does not extend ``emitted`` (a server whose previews are not
    prefixes of their message) the part of ``current`` after their common
    prefix is returned.
    """
    if current.startswith(emitted):
        return current[len(emitted) :]
    n = 0
    for a, b in zip(emitted, current, strict=False):
        if a != b:
            break
        n += 1
    return current[n:]


# --------------------------------------------------------------------------- the fold


@frozen
class ToolCall:
    """A tool use of the turn and, once it arrived, its result."""

    use: ToolUse
    result: ToolOutcome | None = None

    @property
    def id(self) -> str:
        """The id results refer to (the tool use event's id, or its ``tool_use_id``)."""
        if isinstance(self.use, AgentToolUse) and self.use.tool_use_id:
            return self.use.tool_use_id
        return self.use.id or ""

    @property
    def name(self) -> str:
        """The tool's name."""
        return self.use.name

    @property
    def input(self) -> Mapping[str, object]:
        """The tool's input."""
        return self.use.input

    @property
    def session_thread_id(self) -> str | None:
        """The sub-agent thread that asked, or None for the primary agent."""
        return self.use.session_thread_id

    @property
    def output(self) -> str | None:
        """The result's text, or None while there is no result."""
        r = self.result
        if r is None or isinstance(r, UserToolConfirmation):
            return None
        return r.text

    @property
    def is_error(self) -> bool:
        """True when the result is an error (or a denied confirmation)."""
        r = self.result
        if isinstance(r, UserToolConfirmation):
            return r.result != "allow"
        return bool(r is not None and r.is_error)


_THREAD_STATUS: dict[type, str] = {
    SessionThreadStatusRunning: "running",
    SessionThreadStatusIdle: "idle",
    SessionThreadStatusRescheduled: "rescheduling",
    SessionThreadStatusTerminated: "terminated",
}
_THREAD_NAMED = (SessionThreadCreated, *_THREAD_STATUS)


@frozen(kw_only=True)
class ThreadResult:
    """What one sub-agent thread did in a turn (see the module table).

    ``id`` is the thread (``sthr_...``); ``agent_name`` its agent; ``text`` its
    own ``agent.message`` texts joined by a blank line (``messages``);
    ``stop_reason`` the reason of its last ``session.thread_status_idle``
    (``None`` while it runs); ``status`` its last status (``running``,
    ``idle``, ``rescheduling``, ``terminated``; ``None`` when only created);
    ``events`` every event of the thread in the turn.
    """

    id: str
    agent_name: str | None = None
    status: str | None = None
    stop_reason: StopReason | None = None
    text: str = ""
    messages: tuple[AgentMessage, ...] = ()
    events: tuple[Event, ...] = ()


class _ThreadFold:
    __slots__ = ("agent_name", "changed", "events", "id", "keep", "messages", "status", "stop")

    def __init__(self, base: ThreadResult, keep_events: bool = True) -> None:
        self.id = base.id
        self.agent_name = base.agent_name
        self.status = base.status
        self.stop = base.stop_reason
        self.messages = list(base.messages)
        self.keep = keep_events
        self.events = list(base.events) if keep_events else []
        self.changed = False

    def feed(self, ev: Event) -> None:
        self.changed = True
        if self.keep:
            self.events.append(ev)
        cls = type(ev)
        if cls is AgentMessage:
            self.messages.append(ev)  # type: ignore[arg-type]
            return
        if cls in _THREAD_NAMED:
            name = ev.agent_name  # type: ignore[union-attr]
            if name is not None:
                self.agent_name = name
        status = _THREAD_STATUS.get(cls)
        if status is not None:
            self.status = status
            if cls is SessionThreadStatusIdle:
                self.stop = ev.stop_reason  # type: ignore[union-attr]
            elif cls is SessionThreadStatusRunning:
                self.stop = None

    def result(self, base: ThreadResult) -> ThreadResult:
        if not self.changed:
            return base
        messages = tuple(self.messages)
        return ThreadResult(
            id=self.id,
            agent_name=self.agent_name,
            status=self.status,
            stop_reason=self.stop,
            text=MESSAGE_SEPARATOR.join(m.text for m in messages if m.text),
            messages=messages,
            events=tuple(self.events),
        )


@frozen(kw_only=True)
class TurnResult:
    """What a turn produced, folded from its events.

    ``text`` is the main thread's reply as it was shown: the ``agent.message``
    texts joined by a blank line, plus the text of previews whose message was
    never stored (an interrupted turn, a model request that died); ``messages``
    the stored main-thread messages; ``tool_calls`` each tool use with its
    result; ``stop_reason`` the last idle's reason (``None`` while running);
    ``usage`` the sum of the model requests' usage; ``errors`` the
    ``session.error`` events; ``interrupted`` whether a ``user.interrupt`` came
    before the end; ``events`` every event in order (no previews);
    ``threads`` what each sub-agent thread did (:class:`ThreadResult`, in the
    order they appeared; empty in a single-agent session).
    """

    turn_id: str | None = None
    events: tuple[Event, ...] = ()
    messages: tuple[AgentMessage, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    stop_reason: StopReason | None = None
    usage: Usage = field(factory=Usage)
    errors: tuple[SessionErrorEvent, ...] = ()
    text: str = ""
    interrupted: bool = False
    ended: bool = False
    failed: bool = False
    threads: tuple[ThreadResult, ...] = ()
    _live: LiveText | None = field(default=None, eq=False, repr=False, alias="_live")

    @property
    def pending_tool_calls(self) -> tuple[ToolCall, ...]:
        """Tool calls a ``requires_action`` pause is waiting for (empty unless paused)."""
        stop = self.stop_reason
        if stop is None or stop.ends_turn:
            return ()
        wanted = set(getattr(stop, "event_ids", ()))
        return tuple(
            c
            for c in self.tool_calls
            if c.result is None and (c.use.id in wanted or c.id in wanted)
        )


def _result_key(ev: ToolOutcome) -> str | None:
    if isinstance(ev, UserCustomToolResult):
        return ev.custom_tool_use_id
    if isinstance(ev, AgentMCPToolResult):
        return ev.mcp_tool_use_id
    return ev.tool_use_id


# The fold's step per event class (exact classes, resolved once per class by isinstance).
_PLAIN, _MESSAGE, _USE, _OUTCOME, _SPAN, _ERROR, _INTERRUPT, _IDLE, _RUNNING, _FAIL = range(10)
_KIND_OF: tuple[tuple[type | tuple[type, ...], int], ...] = (
    (AgentMessage, _MESSAGE),
    ((AgentToolUse, AgentCustomToolUse, AgentMCPToolUse), _USE),
    (
        (AgentToolResult, AgentMCPToolResult, UserCustomToolResult, UserToolResult),
        _OUTCOME,
    ),
    (UserToolConfirmation, _OUTCOME),
    (SpanModelRequestEnd, _SPAN),
    (SessionErrorEvent, _ERROR),
    (UserInterrupt, _INTERRUPT),
    (SessionStatusIdle, _IDLE),
    (SessionStatusRunning, _RUNNING),
    ((SessionStatusTerminated, SessionDeletedEvent), _FAIL),
)
_KINDS: dict[type, int] = {}
# What changes the live text (LiveText.feed dispatches on these exact classes).
_LIVE_CLASSES = frozenset(
    {
        PreviewDelta,
        PreviewStart,
        AgentMessage,
        AgentContentBlockDelta,
        AgentThinking,
        SpanModelRequestEnd,
        Reconnected,
    }
)
_SKIPPED = frozenset({*PREVIEW_CLASSES, Reconnected})  # folded into the text only


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        kind = next((k for types, k in _KIND_OF if issubclass(cls, types)), _PLAIN)
        _KINDS[cls] = kind
    return kind


class TurnFold:
    """A turn's fold, fed one item at a time: O(1) per event, nothing folded twice.

    :meth:`feed` takes each event (previews and reconnect markers included);
    :meth:`result` builds the :class:`TurnResult` so far from what was kept (a
    copy of the lists, no second pass over the events). ``keep_events=False``
    keeps no events: ``result().events`` and each thread's ``events`` stay
    empty, everything else (text, messages, tool calls, errors, usage, state)
    is the same. ``events`` is the list of kept events, in order (no previews).
    """

    __slots__ = (
        "_base",
        "_calls",
        "_ended",
        "_errors",
        "_failed",
        "_index",
        "_interrupted",
        "_messages",
        "_stop",
        "_threads",
        "_turn_id",
        "_usage",
        "events",
        "keep_events",
        "live",
    )

    def __init__(self, prev: TurnResult | None = None, *, keep_events: bool = True) -> None:
        base = prev if prev is not None else TurnResult()
        self._base = base
        self.keep_events = keep_events
        self.live = base._live.copy() if base._live is not None else LiveText()
        self.events: list[Event] = list(base.events) if keep_events else []
        self._messages = list(base.messages)
        self._calls = list(base.tool_calls)
        self._errors = list(base.errors)
        index = {c.id: i for i, c in enumerate(self._calls) if c.id}
        index.update({c.use.id: i for i, c in enumerate(self._calls) if c.use.id is not None})
        self._index = index
        self._stop, self._usage = base.stop_reason, base.usage
        self._turn_id, self._ended, self._failed = base.turn_id, base.ended, base.failed
        self._interrupted = base.interrupted
        self._threads: dict[str, _ThreadFold] = {}

    def feed(self, ev: Item) -> bool:
        """Fold one item; returns True when the text changed."""
        cls = type(ev)
        changed = self.live.feed(ev) if cls in _LIVE_CLASSES else False
        if cls in _SKIPPED:
            return changed
        if self.keep_events:
            self.events.append(ev)  # type: ignore[arg-type]
        if self._turn_id is None and ev.turn_id is not None:  # type: ignore[union-attr]
            self._turn_id = ev.turn_id  # type: ignore[union-attr]
        thread_id = ev.session_thread_id  # type: ignore[union-attr]
        if thread_id is not None:
            acc = self._threads.get(thread_id)
            if acc is None:
                prior = next((t for t in self._base.threads if t.id == thread_id), None)
                acc = _ThreadFold(prior or ThreadResult(id=thread_id), self.keep_events)
                self._threads[thread_id] = acc
            acc.feed(ev)  # type: ignore[arg-type]
        kind = _KINDS.get(cls)
        if kind is None:
            kind = _kind(cls)
        if kind == _PLAIN:
            return changed
        if kind == _MESSAGE:
            if thread_id is None:
                self._messages.append(ev)  # type: ignore[arg-type]
        elif kind == _USE:
            calls, index = self._calls, self._index
            call = ToolCall(ev)  # type: ignore[arg-type]
            calls.append(call)
            for key in {call.id, ev.id}:  # type: ignore[union-attr]
                if key:
                    index[key] = len(calls) - 1
        elif kind == _OUTCOME:
            key = _result_key(ev)  # type: ignore[arg-type]
            i = self._index.get(key) if key is not None else None
            calls = self._calls
            if i is not None and (
                calls[i].result is None or not isinstance(ev, UserToolConfirmation)
            ):
                calls[i] = evolve(calls[i], result=ev)  # type: ignore[arg-type]
        elif kind == _SPAN:
            if ev.model_usage is not None:  # type: ignore[union-attr]
                self._usage = self._usage + ev.model_usage  # type: ignore[union-attr]
        elif kind == _ERROR:
            self._errors.append(ev)  # type: ignore[arg-type]
        elif kind == _INTERRUPT:
            if not self._ended:
                self._interrupted = True
        elif kind == _IDLE:
            self._stop = ev.stop_reason  # type: ignore[union-attr]
            self._ended = self._stop.ends_turn
        elif kind == _RUNNING:
            if self._stop is not None and not self._stop.ends_turn:
                self._stop = None
        else:
            self._ended = self._failed = True
        return changed

    def result(self, *, last: bool = False) -> TurnResult:
        """The :class:`TurnResult` of what was fed so far.

        ``last``: nothing will be fed after this (the result may then share the
        fold's live text instead of a copy, which folding on from it needs).
        """
        return TurnResult(
            turn_id=self._turn_id,
            events=tuple(self.events),
            messages=tuple(self._messages),
            tool_calls=tuple(self._calls),
            stop_reason=self._stop,
            usage=self._usage,
            errors=tuple(self._errors),
            text=self.live.text,
            interrupted=self._interrupted,
            ended=self._ended,
            failed=self._failed,
            threads=_threads(self._base.threads, self._threads),
            _live=self.live if last else self.live.copy(),
        )


def fold_many(prev: TurnResult | None, events: Iterable[Item]) -> TurnResult:
    """Fold ``events`` (previews and reconnect markers included) into ``prev``.

    Never mutates its input; ``fold_many(None, evs)`` equals folding the events
    one by one with :func:`fold`, in one pass (a :class:`TurnFold`).
    """
    acc = TurnFold(prev)
    for ev in events:
        acc.feed(ev)
    return acc.result(last=True)


def _threads(
    base: tuple[ThreadResult, ...], folds: dict[str, _ThreadFold]
) -> tuple[ThreadResult, ...]:
    if not folds:
        return base
    known = {t.id: t for t in base}
    out = [folds[t.id].result(t) if t.id in folds else t for t in base]
    out.extend(acc.result(ThreadResult(id=tid)) for tid, acc in folds.items() if tid not in known)
    return tuple(out)


def fold(prev: TurnResult | None, ev: Item) -> TurnResult:
    """``(TurnResult | None, event) -> TurnResult``: one step of the fold, pure."""
    return fold_many(prev, (ev,))


# --------------------------------------------------------------------------- history

# Session housekeeping between turns: not, by itself, the rest of a turn.
_BETWEEN_TURNS = (
    SessionUpdated,
    SessionUsage,
    SessionStatusRescheduled,
    SessionStatusTerminated,
    SessionDeletedEvent,
)


@frozen(kw_only=True)
class CatchUp:
    """What a session did since a cursor, folded into turns (``session.catch_up()``).

    ``turns`` are the turns that ended since the cursor, oldest first, each the
    :class:`TurnResult` its stream would give (starting with its own
    ``user.message``); ``pending`` is the turn still running or paused for
    tool results (``pending.pending_tool_calls``), or ``None``; ``cursor`` is
    where to catch up from next time: store it (it stops before ``pending``,
    which is then folded whole again).
    """

    turns: tuple[TurnResult, ...] = ()
    pending: TurnResult | None = None
    cursor: Cursor | None = None


def _cursor_at(events: list[Event], end: int, default: Cursor | None) -> Cursor | None:
    """A cursor on the last event with an id in ``events[:end]`` (else ``default``)."""
    for ev in reversed(events[:end]):
        if ev.id:
            return Cursor(ev.id, ev.processed_at)
    return default


def fold_history(events: Iterable[Event], after: Cursor | None = None) -> CatchUp:
    """Cut the events listed after the cursor ``after`` into turns (see the module table).

    Pure: ``events`` in stored order (``events.list(order="asc", after_id=...)``).
    """
    seen: list[Event] = []
    segments: list[tuple[int, list[Event]]] = [(0, [])]  # the turn the cursor was in, first
    open_turn = True
    for ev in events:
        if type(ev) in PREVIEW_CLASSES:
            continue
        if isinstance(ev, _TURN_STARTERS):
            segments.append((len(seen), [ev]))
            open_turn = True
        elif open_turn:
            segments[-1][1].append(ev)
        seen.append(ev)
        if open_turn and ends_turn(ev):
            open_turn = False
    first = segments[0][1]
    if not any(not isinstance(ev, _BETWEEN_TURNS) for ev in first):
        segments.pop(0)
        if len(segments) == 0:
            open_turn = False
    results = [(start, fold_many(None, evs)) for start, evs in segments]
    pending: TurnResult | None = None
    cursor = _cursor_at(seen, len(seen), after)
    if results and open_turn:
        start, pending = results.pop()
        cursor = _cursor_at(seen, start, after)
    return CatchUp(turns=tuple(r for _, r in results), pending=pending, cursor=cursor)


# --------------------------------------------------------------------------- the router

K = TypeVar("K")


class TurnState(Generic[K]):
    """A turn as the router sees it; ``key`` is the caller's handle for it.

    ``anchor_id`` is the id of the turn's own ``user.message`` (``None`` when the
    send's answer named no created event: the turn then claims the next one);
    ``anchor_at`` its ``processed_at`` ordering key, when known.
    """

    __slots__ = (
        "anchor_at",
        "anchor_id",
        "ended",
        "key",
        "keys",
        "pending",
        "since",
        "started",
        "turn_id",
    )

    def __init__(
        self,
        key: K,
        turn_id: str | None,
        anchor_id: str | None,
        anchor_at: tuple[int, int] | None,
    ) -> None:
        self.key = key
        self.keys = (key,)  # what the router returns for an event of this turn alone
        self.turn_id = turn_id
        self.anchor_id = anchor_id
        self.anchor_at = anchor_at
        self.started = False
        self.since = -1  # the stream position of the event it started at
        self.ended = False
        self.pending: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"TurnState(turn_id={self.turn_id!r}, anchor_id={self.anchor_id!r}, "
            f"started={self.started}, ended={self.ended}, pending={self.pending})"
        )


class TurnRouter(Generic[K]):
    """Routes a session's events to its turns (see the module table).

    Usage: :meth:`expect` before posting a send (so events racing the answer are
    kept), :meth:`bind` with the answer's ``turn_id`` and anchor event (it
    returns the ``(key, event)`` pairs claimed from the backlog), then
    :meth:`route` every event of the stream; it returns the keys to deliver to.
    :attr:`overflowed` becomes True when the backlog had to drop an event while
    a send was unanswered (that turn may then be incomplete).
    """

    __slots__ = (
        "_backlog",
        "_by_turn",
        "_current",
        "_finished",
        "_last_keys",
        "_last_turn",
        "_live",
        "_seq",
        "_unstarted",
        "_waiting",
        "overflowed",
    )

    def __init__(self, backlog: int = DEFAULT_BACKLOG) -> None:
        # Events kept for a send awaiting its answer, with their stream positions.
        self._backlog: deque[tuple[int, Event]] = deque(maxlen=backlog)
        self._seq = 0  # the stream position of the last event routed
        self._by_turn: dict[str, TurnState[K]] = {}
        self._live: list[TurnState[K]] = []
        self._current: TurnState[K] | None = None
        self._finished: deque[str] = deque(maxlen=1024)
        self._waiting = 0
        self._unstarted = 0  # bound turns that have not started
        self._last_turn: str | None = None
        self._last_keys: tuple[K, ...] = ()
        self.overflowed = False

    @property
    def live(self) -> tuple[TurnState[K], ...]:
        """Turns bound and not yet ended."""
        return tuple(self._live)

    @property
    def current(self) -> K | None:
        """The turn positionally in progress (previews belong to it), if any."""
        cur = self._current
        return cur.key if cur is not None and not cur.ended else None

    @property
    def waiting(self) -> int:
        """Sends posted whose answer has not bound a turn yet."""
        return self._waiting

    def expect(self) -> None:
        """A send is about to be posted: keep unclaimed events until it is answered."""
        self._waiting += 1

    def cancel_expect(self) -> None:
        """The expected send failed: it will never bind."""
        self._waiting = max(0, self._waiting - 1)
        if not self._waiting:
            self._backlog.clear()

    def bind(
        self,
        key: K,
        *,
        turn_id: str | None,
        anchor_id: str | None,
        anchor_at: str | None = None,
        started: bool = False,
        expected: bool = True,
    ) -> list[tuple[K, Event]]:
        """Register a turn from a send's answer; returns backlog events that are its.

        ``started`` says the stream begins right after the anchor (it will not be
        seen), so the turn is current at once. ``anchor_id`` ``None`` makes the
        turn claim the next turn-starting user event.
        """
        if expected:
            self._waiting = max(0, self._waiting - 1)
        if turn_id is not None and turn_id in self._finished:
            turn_id = None  # never reuse a finished turn's id (a confused answer)
        state: TurnState[K] = TurnState(key, turn_id, anchor_id, time_key(anchor_at))
        self._live.append(state)
        if turn_id is not None:
            self._by_turn[turn_id] = state
        self._unstarted += 1
        if started:
            self._start(state, -1, current=True)  # the stream starts after its anchor
        out: list[tuple[K, Event]] = []
        backlog = list(self._backlog)
        self._backlog.clear()
        for seq, ev in backlog:
            out.extend((k, ev) for k in self._route(ev, seq))
        return out

    def release(self, key: K) -> None:
        """Forget a turn (its consumer left); later events of it go nowhere."""
        for state in self._live:
            if state.key == key:
                self._end(state)
                break

    def route(self, ev: Event) -> tuple[K, ...]:
        """The keys of the turns ``ev`` belongs to (usually one, or none)."""
        self._seq += 1
        # Fast paths for what no state rule acts on (the rules' outcome, without the walk):
        tid = ev.turn_id
        if type(ev) not in _ROUTING_EVENTS:
            if tid is None:
                cur = self._current  # "no turn_id, a turn is positionally current"
                if cur is not None and not cur.ended and not self._unstarted:
                    return cur.keys
            elif tid == self._last_turn:  # the next event of the previous one's turn
                return self._last_keys
        return self._route(ev, self._seq)

    def _route(self, ev: Event, seq: int) -> tuple[K, ...]:
        """Route ``ev``, at stream position ``seq`` (older than the last for the backlog).

        The first row of :data:`ROUTING_RULES` that applies picks the turns; the
        rows of :data:`TURN_STATE_RULES` for the event then act on each of them.
        """
        targets: tuple[TurnState[K], ...] = ()
        for rule in ROUTING_RULES:
            found = rule.route(self, ev, seq)
            if found is not None:
                targets = found
                break
        if not targets:
            return ()
        for row in _STATE_RULES.get(type(ev), ()):
            effect = row.effect
            if effect is not None and row.when(ev):
                for state in targets:
                    effect(self, state, ev)
        if len(targets) > 1:
            return tuple(s.key for s in targets)
        target = targets[0]
        if target.started and not target.ended and ev.turn_id == target.turn_id is not None:
            self._last_turn, self._last_keys = target.turn_id, target.keys
        return target.keys

    # -- the routing rules (ROUTING_RULES): None when the rule does not apply

    def _to_every_live_turn(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        cls = type(ev)
        if (cls is SessionStatusTerminated or cls is SessionDeletedEvent) and self._live:
            return tuple(self._live)
        return None

    def _to_anchored(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        ident = ev.id
        if self._unstarted and ident is not None:
            for state in self._live:
                if not state.started and state.anchor_id == ident:
                    return self._starts_at(state, ev, seq)
        return None

    def _to_unanchored(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        if self._unstarted and isinstance(ev, _TURN_STARTERS):
            for state in self._live:
                if not state.started and state.anchor_id is None:
                    state.anchor_id = ev.id
                    return self._starts_at(state, ev, seq)
        return None

    def _starts_at(self, state: TurnState[K], ev: Event, seq: int) -> tuple[TurnState[K], ...]:
        """``ev`` is ``state``'s own message: the turn starts here, as the current one."""
        self._start(state, seq, current=True)
        if ev.turn_id is not None and state.turn_id is None:
            self._adopt(state, ev.turn_id)
        return (state,)

    def _to_turn_id(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        tid = ev.turn_id
        owner = self._by_turn.get(tid) if tid is not None else None
        if owner is None:
            return None
        if not owner.started:
            self._start(owner, seq)
        return (owner,)

    def _positional(self, seq: int) -> TurnState[K] | None:
        """The current turn, unless ``seq`` (a kept event) is older than its start."""
        cur = self._current
        if cur is None or cur.ended or cur.since > seq:
            return None
        return cur

    def _to_adopter(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        tid = ev.turn_id
        if tid is None or tid in self._finished:
            return None
        cur = self._positional(seq)
        if cur is None or cur.turn_id is not None:
            return None
        self._adopt(cur, tid)
        return (cur,)

    def _to_current(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        cur = self._positional(seq) if ev.turn_id is None else None
        return None if cur is None else (cur,)

    def _to_started_by_time(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        # The echo of a turn's own message never came, but this event is later than
        # it: the turn has begun.
        if ev.turn_id is not None or not self._unstarted or self._positional(seq) is not None:
            return None
        at = time_key(ev.processed_at)
        if at is None:
            return None
        for state in self._live:
            if not state.started and state.anchor_at is not None and at > state.anchor_at:
                self._start(state, seq)
                return (state,)
        return None

    def _to_backlog(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        # Only a send still awaiting its answer can claim an event later; anything
        # else unrouted is history replay, another client's turn or a finished one.
        if not self._waiting or (ev.turn_id is not None and ev.turn_id in self._finished):
            return None
        if len(self._backlog) == self._backlog.maxlen:
            self.overflowed = True
        self._backlog.append((seq, ev))
        return ()

    def _to_nobody(self, ev: Event, seq: int) -> tuple[TurnState[K], ...] | None:
        return ()

    # -- the turn state rules (TURN_STATE_RULES)

    def _pause(self, state: TurnState[K], ev: Event) -> None:
        state.pending = tuple(getattr(ev.stop_reason, "event_ids", ()))  # type: ignore[union-attr]

    def _resume(self, state: TurnState[K], ev: Event) -> None:
        state.pending = ()

    def _ends(self, state: TurnState[K], ev: Event) -> None:
        self._end(state)

    def _adopt(self, state: TurnState[K], turn_id: str) -> None:
        if turn_id in self._finished or turn_id in self._by_turn:
            return
        state.turn_id = turn_id
        self._by_turn[turn_id] = state

    def _start(self, state: TurnState[K], seq: int, *, current: bool = False) -> None:
        """``state`` starts at stream position ``seq``; it becomes current if asked (its
        anchor) or if none is."""
        state.started = True
        state.since = seq
        self._unstarted -= 1
        if current or self._current is None or self._current.ended:
            self._current = state

    def _end(self, state: TurnState[K]) -> None:
        if state.ended:
            return
        state.ended = True
        state.pending = ()
        if self._last_turn is not None and self._last_turn == state.turn_id:
            self._last_turn, self._last_keys = None, ()
        if not state.started:
            self._unstarted -= 1
        if state in self._live:
            self._live.remove(state)
        if state.turn_id is not None:
            self._by_turn.pop(state.turn_id, None)
            self._finished.append(state.turn_id)
        if self._current is state:
            self._current = None


# --------------------------------------------------------------------------- the rule tables

_RouteFn = Callable[[TurnRouter[Any], Event, int], "tuple[TurnState[Any], ...] | None"]
_EffectFn = Callable[[TurnRouter[Any], TurnState[Any], Event], None]


class RoutingRule(NamedTuple):
    """A row of the routing table: ``route`` gives the turns (None: the row does not apply)."""

    event: str
    goes_to: str
    route: _RouteFn


ROUTING_RULES: tuple[RoutingRule, ...] = (
    RoutingRule(
        "``session.status_terminated``/``session.deleted``",
        "every live turn (each fails)",
        TurnRouter._to_every_live_turn,
    ),
    RoutingRule(
        "its ``id`` is a bound turn's anchor (its own user.message)",
        "that turn, which starts here (and adopts its ``turn_id``)",
        TurnRouter._to_anchored,
    ),
    RoutingRule(
        "a ``user.message``/``user.define_outcome`` while a turn bound without an anchor id "
        "waits for one",
        "that turn: it was answered without created events",
        TurnRouter._to_unanchored,
    ),
    RoutingRule(
        "a ``turn_id`` of a live turn", "that turn (it starts if needed)", TurnRouter._to_turn_id
    ),
    RoutingRule(
        "a ``turn_id`` no turn has, while the current turn has none",
        "the current turn, which adopts it (the 202 carried none)",
        TurnRouter._to_adopter,
    ),
    RoutingRule(
        "no ``turn_id``, a turn is positionally current", "the current turn", TurnRouter._to_current
    ),
    RoutingRule(
        "no ``turn_id``, ``processed_at`` later than an unstarted turn's anchor's, and no turn "
        "is current",
        "that turn, which starts (its echo was never streamed)",
        TurnRouter._to_started_by_time,
    ),
    RoutingRule(
        "anything else, while a send awaits its answer",
        "the backlog (bounded); claimed when the answer binds its turn",
        TurnRouter._to_backlog,
    ),
    RoutingRule(
        "otherwise (history, other clients' or finished turns)", "nobody", TurnRouter._to_nobody
    ),
)
"""The routing table (see the module docstring): the first row that applies wins."""


def _always(ev: Event) -> bool:
    return True


def _idle_ends(ev: Event) -> bool:
    return bool(ev.stop_reason.ends_turn)  # type: ignore[union-attr]


def _idle_pauses(ev: Event) -> bool:
    return not ev.stop_reason.ends_turn  # type: ignore[union-attr]


class TurnStateRule(NamedTuple):
    """A row of the turn state table: ``effect`` (None: no change) on each turn routed to."""

    event: str
    turn: str
    classes: tuple[type, ...]
    when: Callable[[Event], bool]
    effect: _EffectFn | None


TURN_STATE_RULES: tuple[TurnStateRule, ...] = (
    TurnStateRule(
        "``session.status_idle`` with ``end_turn``, ``retries_exhausted``, ``budget_reached``, "
        "an unknown reason, or none (older servers)",
        "ends (finished)",
        (SessionStatusIdle,),
        _idle_ends,
        TurnRouter._ends,
    ),
    TurnStateRule(
        "``session.status_idle`` with ``requires_action``",
        "paused: ``pending`` = its ``event_ids``",
        (SessionStatusIdle,),
        _idle_pauses,
        TurnRouter._pause,
    ),
    TurnStateRule(
        "``session.status_running``",
        "running (pause cleared)",
        (SessionStatusRunning,),
        _always,
        TurnRouter._resume,
    ),
    TurnStateRule(
        "``session.status_terminated``, ``session.deleted``",
        "ends (failed)",
        (SessionStatusTerminated, SessionDeletedEvent),
        _always,
        TurnRouter._ends,
    ),
    TurnStateRule(
        "``session.error`` (``retrying``, ``exhausted``, ``terminal``)",
        "no change: an idle or a termination follows",
        (SessionErrorEvent,),
        _always,
        None,
    ),
    TurnStateRule(
        "``session.thread_status_idle``",
        "no change (a sub-thread)",
        (SessionThreadStatusIdle,),
        _always,
        None,
    ),
)
"""The turn state table (see the module docstring): every row that applies acts."""


def _state_index(rules: Iterable[TurnStateRule]) -> dict[type, tuple[TurnStateRule, ...]]:
    """The rows that act, by exact class (the router's fast paths skip these classes)."""
    index: dict[type, list[TurnStateRule]] = {}
    for rule in rules:
        if rule.effect is not None:
            for cls in rule.classes:
                index.setdefault(cls, []).append(rule)
    return {cls: tuple(rows) for cls, rows in index.items()}


_STATE_RULES = _state_index(TURN_STATE_RULES)


_WRAP = (58, 38)


def rule_tables() -> tuple[str, str]:
    """The routing and turn state tables of the module docstring, rendered from the rules."""
    routing = [(r.event, r.goes_to) for r in ROUTING_RULES]
    state = [(r.event, r.turn) for r in TURN_STATE_RULES]
    return (
        render_table(("event", "goes to"), routing, _WRAP),
        render_table(("event", "turn"), state, _WRAP),
    )
