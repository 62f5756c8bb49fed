"""The scripted agent: turn context, the script protocol and the bundled scripts.

Rules a script can rely on:

* Every helper stores its events in the running turn; after the turn ended
  they raise ``RuntimeError`` (and the script task is cancelled).
* A context made by `TurnContext.create_thread` speaks for that sub-agent
  thread: every event it stores carries the thread's ``session_thread_id``
  (so it shows on the thread's own stream and list, and on the primary
  stream too), except the session's own ``session.status_*`` events, which
  stay session-wide (``require_action`` pauses the whole session).
* Nothing here reads the wire dialect: events are stored canonically.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

from ._faults import ServerView
from ._params import file_refs
from ._state import SessionState, StopReasonJSON, ThreadState, Turn
from ._wire import dumps, sse_frame, text_of

__all__ = [
    "Script",
    "StopReasonJSON",
    "TurnContext",
    "default_script",
    "multiagent_script",
    "subagent_tool_script",
    "tool_script",
]


def _split(text: str, chunks: int) -> list[str]:
    """``text`` cut into at most ``chunks`` non-empty pieces of similar size."""
    count = max(1, min(chunks, len(text)))
    if not text:
        return []
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _trigger_text(trigger: dict[str, Any]) -> str:
    if trigger.get("type") == "user.define_outcome":
        for key in ("description", "outcome", "content"):
            text = text_of(trigger.get(key))
            if text:
                return text
        return ""
    return text_of(trigger.get("content"))


class TurnContext:
    """What a script sees and uses while it runs one turn.

    Every helper stores events in this turn (``turn_id`` and timestamps are
    added) and publishes them to the session's open streams. Once the turn has
    ended (interrupt, cancel, delete, server close) the helpers raise
    ``RuntimeError`` and the script task is cancelled.

    A script gets the context of the primary thread (``thread_id`` None);
    `create_thread` returns a context for a sub-agent thread with the same
    helpers.

    Attributes:
        session_id: the session the turn runs in.
        turn_id: this turn's id (``turn_...``).
        trigger: the stored event that started the turn (``user.message`` or
            ``user.define_outcome``), a copy.
        text: the trigger's text: joined text blocks of ``content`` (for an
            outcome: ``description``), ``""`` if none.
        attachments: metadata (as ``GET /files/{id}`` returns it) of every
            file the trigger's content blocks attach by ``file_id``, in order.
        thread_id: the sub-agent thread this context speaks for (``sthr_...``),
            ``None`` for the primary thread.
        agent_name: the name of the agent speaking (the session's agent, or
            the thread's).
        server: the `FakeQoderServer` running the turn (typed as the
            `ServerView` of it that scripts use: ``faults``, ``dialect``...).
    """

    def __init__(
        self,
        server: ServerView,
        session: SessionState,
        turn: Turn,
        thread: ThreadState | None = None,
    ) -> None:
        self.server = server
        self.session_id = session.id
        self.turn_id = turn.id
        self.trigger: dict[str, Any] = copy.deepcopy(turn.trigger)
        self.text = _trigger_text(turn.trigger)
        self.attachments: list[dict[str, Any]] = []
        for _, file_id in file_refs(turn.trigger.get("content")):
            meta = server._file_snapshot(file_id)
            if meta is not None:
                self.attachments.append(meta)
        self.thread_id = thread.id if thread is not None else None
        agent = thread.resource if thread is not None else session.resource["agent"]
        self.agent_name = str(agent.get("agent_name") or agent.get("name") or "agent")
        self._session = session
        self._turn = turn
        self._thread = thread

    def __repr__(self) -> str:
        thread = f", thread_id={self.thread_id!r}" if self.thread_id else ""
        return f"TurnContext(session_id={self.session_id!r}, turn_id={self.turn_id!r}{thread})"

    @property
    def ended(self) -> bool:
        """Whether the turn is over (the closing ``session.status_idle`` is stored)."""
        return self._turn.ended

    def _check(self) -> None:
        if self._turn.ended:
            raise RuntimeError(f"turn {self.turn_id} has ended")

    def _store(self, event_type: str, fields: dict[str, Any], event_id: str | None = None) -> Any:
        self._check()
        if self.thread_id is not None and not event_type.startswith("session.status_"):
            fields = {"session_thread_id": self.thread_id, **fields}
        event = self._session.store(
            event_type, copy.deepcopy(fields), turn_id=self.turn_id, event_id=event_id
        )
        if event_type == "span.model_request_start":
            self._turn.open_spans.append(event["id"])
        elif event_type == "span.model_request_end":
            start_id = fields.get("model_request_start_id")
            if start_id in self._turn.open_spans:
                self._turn.open_spans.remove(start_id)
        return copy.deepcopy(event)

    def new_id(self, prefix: str) -> str:
        """A fresh ULID-shaped id such as ``outc_...`` or ``msg_...``."""
        return self._session.ids.resource(prefix)

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        """Store and publish an event of ``type`` in this turn; returns a copy of it.

        ``id``, ``type``, ``session_id``, ``turn_id``, ``schema_version``,
        ``created_at`` and ``processed_at`` are added. An open
        ``span.model_request_start`` is closed with an error
        ``span.model_request_end`` if the turn is aborted.
        """
        result: dict[str, Any] = self._store(type, fields)
        return result

    async def sleep(self, seconds: float) -> None:
        """Wait (the turn can be interrupted meanwhile)."""
        await asyncio.sleep(seconds)

    def add_usage(
        self, *, input_tokens: int = 0, output_tokens: int = 0, emit_event: bool = False
    ) -> dict[str, Any]:
        """Add to the session's (and the thread's) ``usage``; maybe store ``session.usage``."""
        self._check()
        usages = [self._session.resource["usage"]]
        if self._thread is not None:
            usages.append(self._thread.resource["usage"])
        for usage in usages:
            usage["input_tokens"] = int(usage.get("input_tokens", 0)) + input_tokens
            usage["output_tokens"] = int(usage.get("output_tokens", 0)) + output_tokens
        usage = usages[0]
        if emit_event:
            self.emit("session.usage", usage=dict(usage))
        return dict(usage)

    def _preview(self, event_id: str, kind: str, delta: dict[str, Any] | None = None) -> None:
        """Publish the ``event_start`` (no ``delta``) or an ``event_delta`` of ``event_id``."""
        if delta is None:
            frame = {"type": "event_start", "event": {"id": event_id, "type": kind}}
        else:
            frame = {"type": "event_delta", "event_id": event_id, "delta": delta}
        data = sse_frame(event_id, str(frame["type"]), dumps(frame))
        self._session.publish_preview(event_id, kind, data, self.thread_id)

    async def message(self, text: str, *, chunks: int = 4, delay: float = 0.0) -> dict[str, Any]:
        """Store an ``agent.message`` with ``text``, streamed first.

        Normally ``event_start`` and up to ``chunks`` ``event_delta`` previews
        go to connections that asked for ``event_deltas[]=agent.message``,
        sharing the final event's id. On a session created with
        ``incremental_streaming_enabled`` the incremental events
        (``agent.message_start``, ``agent.content_block_start``/``_delta``/
        ``_stop``, ``agent.message_delta``, ``agent.message_stop``) are stored
        instead. ``delay`` seconds pass before each fragment.

        With previews the final event's id is taken when the preview starts,
        so an event the client posts meanwhile is stored earlier but gets a
        larger id (ids are opaque; resume never compares them).
        """
        self._check()
        pieces = _split(text, chunks)
        content = [{"type": "text", "text": text}]
        if self._session.resource.get("incremental_streaming_enabled"):
            return await self._incremental_message(content, pieces, delay)
        event_id = self._session.ids.event()
        self._preview(event_id, "agent.message")
        for piece in pieces:
            await asyncio.sleep(delay)
            self._check()
            block = {"type": "text", "text": piece}
            delta = {"type": "content_delta", "index": 0, "content": block}
            self._preview(event_id, "agent.message", delta)
        result: dict[str, Any] = self._store("agent.message", {"content": content}, event_id)
        return result

    async def _incremental_message(
        self, content: list[dict[str, Any]], pieces: list[str], delay: float
    ) -> dict[str, Any]:
        message_id = self.new_id("msg")
        meta = {"message_id": message_id, "parent_tool_use_id": None}
        self.emit(
            "agent.message_start",
            **meta,
            message={"id": message_id, "type": "message", "role": "assistant", "content": []},
        )
        self.emit(
            "agent.content_block_start",
            **meta,
            index=0,
            content_block={"type": "text", "text": ""},
        )
        for piece in pieces:
            await asyncio.sleep(delay)
            self.emit(
                "agent.content_block_delta",
                **meta,
                index=0,
                delta={"type": "text_delta", "text": piece},
            )
        self.emit("agent.content_block_stop", **meta, index=0)
        self.emit(
            "agent.message_delta",
            **meta,
            delta={"stop_reason": "end_turn"},
            usage={"output_tokens": len(pieces)},
        )
        self.emit("agent.message_stop", **meta)
        return self.emit("agent.message", content=content, message_id=message_id)

    async def thinking(self, text: str) -> dict[str, Any]:
        """Store an ``agent.thinking`` (an ``event_start`` preview goes first), its text
        under ``thinking``."""
        self._check()
        event_id = self._session.ids.event()
        if not self._session.resource.get("incremental_streaming_enabled"):
            self._preview(event_id, "agent.thinking")
            await asyncio.sleep(0)
        result: dict[str, Any] = self._store("agent.thinking", {"thinking": text}, event_id)
        return result

    async def tool(
        self, name: str, input: dict[str, Any], output: str, *, is_error: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Store a built-in tool call: ``agent.tool_use`` then its ``agent.tool_result``."""
        use = self.emit("agent.tool_use", name=name, input=input, evaluated_permission="allow")
        await asyncio.sleep(0)
        result = self.emit(
            "agent.tool_result",
            tool_use_id=use["id"],
            content=[{"type": "text", "text": output}],
            is_error=is_error,
        )
        return use, result

    async def custom_tool(self, name: str, input: dict[str, Any]) -> dict[str, Any]:
        """Store an ``agent.custom_tool_use`` (answer it with `require_action`).

        From a thread's context the tool use carries ``session_thread_id``, and
        the server then refuses (400) an answer that does not echo it.
        """
        return self.emit("agent.custom_tool_use", name=name, input=input)

    def create_thread(self, agent_name: str, **agent: Any) -> TurnContext:
        """Start a sub-agent thread; returns the context that speaks for it.

        Registers the thread (``GET /sessions/{id}/threads`` lists it, status
        ``idle``; its ``parent_thread_id`` is this context's thread) and
        stores ``session.thread_created``. ``agent`` fields (``model``,
        ``system``...) go into the thread's ``agent`` object. Then use
        `running`, the usual helpers, `send_thread_message` and `idle`.
        """
        self._check()
        thread = self._session.add_thread(
            agent_name, self.thread_id, {"type": "agent", "name": agent_name, **agent}
        )
        child = TurnContext(self.server, self._session, self._turn, thread)
        child.emit("session.thread_created", agent_name=agent_name)
        return child

    def _require_thread(self) -> None:
        if self.thread_id is None:
            raise RuntimeError("only a sub-agent thread's context has a thread status")

    def running(self) -> dict[str, Any]:
        """Store ``session.thread_status_running`` for this thread (status ``running``)."""
        self._require_thread()
        return self.emit("session.thread_status_running", agent_name=self.agent_name)

    def idle(self, stop_reason: StopReasonJSON | None = None) -> dict[str, Any]:
        """Store ``session.thread_status_idle`` with the thread's own ``stop_reason``.

        ``None`` means ``{"type": "end_turn"}``. The session's turn goes on.
        """
        self._require_thread()
        return self.emit(
            "session.thread_status_idle",
            agent_name=self.agent_name,
            stop_reason=stop_reason or {"type": "end_turn"},
        )

    def send_thread_message(
        self, to: TurnContext, text: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send ``text`` from this thread to the thread ``to`` speaks for.

        Stores ``agent.thread_message_sent`` here (``to_session_thread_id``,
        ``to_agent_name``) and ``agent.thread_message_received`` in ``to``'s
        thread (``from_session_thread_id``, ``from_agent_name``); the primary
        thread's id is ``None``. Returns both events.
        """
        content = [{"type": "text", "text": text}]
        sent = self.emit(
            "agent.thread_message_sent",
            to_session_thread_id=to.thread_id,
            to_agent_name=to.agent_name,
            content=content,
        )
        received = to.emit(
            "agent.thread_message_received",
            from_session_thread_id=self.thread_id,
            from_agent_name=self.agent_name,
            content=content,
        )
        return sent, received

    async def require_action(self, event_ids: list[str]) -> list[dict[str, Any]]:
        """Pause the turn until the client answers every id in ``event_ids``.

        Stores ``session.status_idle`` with ``stop_reason`` ``requires_action``;
        each ``user.custom_tool_result``/``user.tool_confirmation``/
        ``user.tool_result`` naming a pending id answers it. A partial answer
        re-stores the idle with the remaining ids. Then stores
        ``session.status_running`` and returns the answering events in order.
        """
        self._check()
        if not event_ids:
            return []
        turn = self._turn
        turn.pending = list(dict.fromkeys(event_ids))
        turn.answers = []
        while turn.pending:
            turn.paused = True
            turn.answered.clear()
            self.emit(
                "session.status_idle",
                stop_reason={"type": "requires_action", "event_ids": list(turn.pending)},
            )
            await turn.answered.wait()
            self._check()
        turn.paused = False
        answers = [copy.deepcopy(a) for a in turn.answers]
        turn.answers = []
        self.emit("session.status_running")
        return answers


Script = Callable[[TurnContext], Awaitable[StopReasonJSON | None]]
"""A scripted agent: runs one turn, returns its stop reason (``None`` = ``end_turn``)."""


async def run_turn(ctx: TurnContext, session: SessionState, turn: Turn, script: Script) -> None:
    """Run ``script`` as ``turn``: running status, the script, then the closing idle."""
    try:
        ctx.emit("session.status_running")
        stop_reason = await script(ctx)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if turn.ended:
            return
        session.store(
            "session.error",
            {
                "error": {
                    "type": "unknown_error",
                    "message": str(exc) or type(exc).__name__,
                    "retry_status": {"type": "terminal"},
                }
            },
            turn_id=turn.id,
        )
        session.finish_turn(turn, {"type": "retries_exhausted"}, abnormal=True)
    else:
        session.finish_turn(turn, stop_reason or {"type": "end_turn"}, abnormal=False)


_README = (
    "# demo-project\n\nA small demo repository served by qoder_async's fake server.\n"
    "It has one module, `app.py`, with a `main()` function.\n"
)


async def _outcome_script(ctx: TurnContext) -> StopReasonJSON | None:
    outcome_id = ctx.new_id("outc")
    start = ctx.emit("span.outcome_evaluation_start", outcome_id=outcome_id, iteration=0)
    ctx.emit(
        "span.outcome_evaluation_ongoing",
        outcome_id=outcome_id,
        iteration=0,
        outcome_evaluation_start_id=start["id"],
    )
    await ctx.sleep(0)
    ctx.emit(
        "span.outcome_evaluation_end",
        outcome_id=outcome_id,
        iteration=0,
        outcome_evaluation_start_id=start["id"],
        result="satisfied",
        explanation="The fake agent always meets the outcome on the first iteration.",
    )
    await ctx.message(f"Outcome evaluated as satisfied: {ctx.text}")
    return None


async def default_script(ctx: TurnContext) -> StopReasonJSON | None:
    """The bundled agent: a realistic one-request turn that echoes the user.

    For a ``user.message``: ``span.model_request_start``, ``agent.thinking``,
    ``agent.tool_use``/``agent.tool_result`` (``Read``), an ``agent.message``
    quoting the user's text (long enough for several deltas) and naming every
    attached file (``"You attached 1 file: notes.txt (file_...)."``), and
    ``span.model_request_end`` with ``model_usage``; the session's ``usage``
    grows. For a ``user.define_outcome``: the outcome evaluation spans and a
    message.
    """
    if ctx.trigger.get("type") == "user.define_outcome":
        return await _outcome_script(ctx)
    start = ctx.emit("span.model_request_start", model="ultimate")
    await ctx.thinking("Let me look at that.")
    await ctx.tool("Read", {"file_path": "/workspace/README.md"}, _README)
    reply = (
        f'You said: "{ctx.text}". I read README.md: this is a small demo project '
        "with one module, app.py, whose main() function is the entry point. "
        "Ask me anything else about it."
    )
    if ctx.attachments:
        count = len(ctx.attachments)
        names = ", ".join(f"{f['filename']} ({f['id']})" for f in ctx.attachments)
        reply += f" You attached {count} file{'s' if count > 1 else ''}: {names}."
    await ctx.message(reply)
    input_tokens = 100 + len(ctx.text)
    output_tokens = 20 + len(reply) // 4
    ctx.emit(
        "span.model_request_end",
        model_request_start_id=start["id"],
        is_error=False,
        model_usage={
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    )
    ctx.add_usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return None


def tool_script(tool_name: str, tool_input: dict[str, Any], *, calls: int = 1) -> Script:
    """A script that calls one client-side (custom) tool, then reports its result.

    The turn stores ``agent.custom_tool_use`` (``name=tool_name``,
    ``input=tool_input``), pauses with ``requires_action`` for it, and once
    the client posts ``user.custom_tool_result`` replies with an
    ``agent.message`` ``"<tool_name> returned: <result text>"`` (``"<tool_name>
    failed: ..."`` when ``is_error``; ``"<tool_name> was denied"`` for a denied
    ``user.tool_confirmation``). ``calls=N`` stores N such tool uses and
    pauses once for all of them (parallel tool calls), then replies one line
    per answer, in the order of the uses.
    """

    async def script(ctx: TurnContext) -> StopReasonJSON | None:
        uses = [await ctx.custom_tool(tool_name, tool_input) for _ in range(calls)]
        answers = await ctx.require_action([use["id"] for use in uses])
        by_use = {a.get("custom_tool_use_id") or a.get("tool_use_id"): a for a in answers}
        lines = []
        for use in uses:
            answer = by_use.get(use["id"], {})
            if answer.get("result") == "deny" or answer.get("decision") == "deny":
                lines.append(f"{tool_name} was denied")
            elif answer.get("is_error"):
                lines.append(f"{tool_name} failed: {text_of(answer.get('content'))}")
            else:
                lines.append(f"{tool_name} returned: {text_of(answer.get('content'))}")
        await ctx.message("\n".join(lines))
        return None

    script.__name__ = script.__qualname__ = f"tool_script({tool_name!r})"
    return script


async def multiagent_script(ctx: TurnContext) -> StopReasonJSON | None:
    """A coordinator that delegates to one sub-agent thread, then answers.

    Stores, in order: ``session.thread_created`` (agent ``researcher``),
    ``agent.thread_message_sent`` (primary), ``session.thread_status_running``,
    ``agent.thread_message_received``, ``agent.message`` (``"Research notes
    on: <text>"``), ``agent.thread_message_sent`` back and
    ``session.thread_status_idle`` (``end_turn``) in the thread, then
    ``agent.thread_message_received`` and the final ``agent.message``
    (``"The researcher reports: Research notes on: <text>"``) in the primary.
    """
    researcher = ctx.create_thread("researcher", model="ultimate")
    researcher.running()
    ctx.send_thread_message(researcher, f"Please research: {ctx.text}")
    notes = f"Research notes on: {ctx.text}"
    await researcher.message(notes)
    researcher.send_thread_message(ctx, notes)
    researcher.idle()
    await ctx.message(f"The researcher reports: {notes}")
    return None


def subagent_tool_script(
    tool_name: str, tool_input: dict[str, Any], *, agent_name: str = "worker"
) -> Script:
    """A script whose sub-agent thread calls one client-side (custom) tool.

    The thread ``agent_name`` stores ``agent.custom_tool_use`` with its
    ``session_thread_id`` and goes idle (``requires_action``); the session
    pauses for the tool use. The client's ``user.custom_tool_result`` must
    echo ``session_thread_id`` (else 400). Then the thread runs again, says
    ``"<tool_name> returned: <result text>"`` and goes idle, and the primary
    replies ``"<agent_name> reports: <tool_name> returned: <result text>"``.
    """

    async def script(ctx: TurnContext) -> StopReasonJSON | None:
        worker = ctx.create_thread(agent_name)
        worker.running()
        use = await worker.custom_tool(tool_name, tool_input)
        worker.idle({"type": "requires_action", "event_ids": [use["id"]]})
        answers = await ctx.require_action([use["id"]])
        worker.running()
        report = f"{tool_name} returned: {text_of(answers[0].get('content'))}"
        await worker.message(report)
        worker.idle()
        await ctx.message(f"{agent_name} reports: {report}")
        return None

    script.__name__ = script.__qualname__ = f"subagent_tool_script({tool_name!r})"
    return script
