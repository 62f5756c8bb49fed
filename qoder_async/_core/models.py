"""Typed models: content blocks, every event type, stop reasons, and the resources.

All models are attrs classes, frozen and slotted. Every event has ``.type``,
``.id``, ``.turn_id``, ``.processed_at`` (the RFC 3339 string as sent),
``.session_thread_id`` and ``.raw`` (the JSON object exactly as received; do
not mutate it). Type-specific fields are positional, so the outbound events
read naturally: ``UserMessage("hi")``, ``UserCustomToolResult(tool_use_id, "42")``.

Events whose type this version does not know arrive as :class:`UnknownEvent`
with the raw object, never dropped and never an error. The wire format has
several generations (see ``qoder-api.md`` §11); :mod:`qoder_async._core.convert`
maps all of them onto these shapes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias, TypeVar

from attrs import field, fields, frozen


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


json_loads: Callable[[bytes | str], Any]
"""Parse JSON (orjson when installed)."""
json_dumps: Callable[[Any], bytes]
"""Serialise to compact JSON bytes (orjson when installed)."""
try:  # orjson when installed (the ``fast`` extra: ~3x faster here), else the stdlib
    import orjson  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - exercised when the extra is not installed
    json_loads, json_dumps = json.loads, _stdlib_dumps
else:
    json_loads, json_dumps = orjson.loads, orjson.dumps


__all__ = [
    "Accepted",
    "Actor",
    "Agent",
    "AgentArtifactDelivered",
    "AgentContentBlockDelta",
    "AgentContentBlockStart",
    "AgentContentBlockStop",
    "AgentCustomToolUse",
    "AgentMCPToolResult",
    "AgentMCPToolUse",
    "AgentMessage",
    "AgentMessageDelta",
    "AgentMessageStart",
    "AgentMessageStop",
    "AgentReference",
    "AgentThinking",
    "AgentThreadContextCompacted",
    "AgentThreadMessageReceived",
    "AgentThreadMessageSent",
    "AgentToolResult",
    "AgentToolUse",
    "BaseEvent",
    "BudgetReached",
    "Content",
    "ContentBlock",
    "CredentialAuth",
    "CredentialRefreshCheck",
    "CredentialValidation",
    "Cursor",
    "Deleted",
    "Deployment",
    "DeploymentRun",
    "DocumentBlock",
    "Dream",
    "DreamInput",
    "DreamModel",
    "DreamOutput",
    "EndTurn",
    "Environment",
    "ErrorInfo",
    "Event",
    "FileMetadata",
    "ImageBlock",
    "MCPProbe",
    "Memory",
    "MemoryPrefix",
    "MemoryStore",
    "MemoryVersion",
    "ModelConfig",
    "ModelInfo",
    "OutboundEvent",
    "Page",
    "PausedReason",
    "PreviewDelta",
    "PreviewStart",
    "ProbeHTTPResponse",
    "RequiresAction",
    "RetriesExhausted",
    "RunError",
    "Schedule",
    "Session",
    "SessionCancel",
    "SessionDeletedEvent",
    "SessionErrorEvent",
    "SessionResource",
    "SessionStatusIdle",
    "SessionStatusRescheduled",
    "SessionStatusRunning",
    "SessionStatusTerminated",
    "SessionThread",
    "SessionThreadCreated",
    "SessionThreadStatusIdle",
    "SessionThreadStatusRescheduled",
    "SessionThreadStatusRunning",
    "SessionThreadStatusTerminated",
    "SessionUpdated",
    "SessionUsage",
    "Skill",
    "SkillVersion",
    "SpanModelRequestEnd",
    "SpanModelRequestStart",
    "SpanOutcomeEvaluationEnd",
    "SpanOutcomeEvaluationOngoing",
    "SpanOutcomeEvaluationStart",
    "StopReason",
    "SystemMessage",
    "TextBlock",
    "ThreadStats",
    "TriggerContext",
    "UnknownBlock",
    "UnknownEvent",
    "UnknownStopReason",
    "Usage",
    "UserCustomToolResult",
    "UserDefineOutcome",
    "UserInterrupt",
    "UserMessage",
    "UserToolConfirmation",
    "UserToolResult",
    "Vault",
    "VaultCredential",
    "Work",
    "WorkData",
    "WorkHeartbeat",
    "WorkQueueStats",
    "as_events",
    "blocks_text",
    "is_copy_of",
    "new_idempotency_key",
    "to_blocks",
]

_EMPTY: Mapping[str, Any] = {}


# --------------------------------------------------------------------------- content blocks


@frozen
class TextBlock:
    """A text content block."""

    type: ClassVar[Literal["text"]] = "text"
    text: str


@frozen
class ImageBlock:
    """An image content block; ``source`` is the API's source object (base64, url or file)."""

    type: ClassVar[Literal["image"]] = "image"
    source: Mapping[str, Any]

    @classmethod
    def from_url(cls, url: str) -> ImageBlock:
        """An image the server fetches from ``url``."""
        return cls({"type": "url", "url": url})

    @classmethod
    def from_base64(cls, data: str, media_type: str) -> ImageBlock:
        """An inline image: base64 ``data`` of ``media_type`` (e.g. ``image/png``)."""
        return cls({"type": "base64", "media_type": media_type, "data": data})

    @classmethod
    def from_file(cls, file_id: str) -> ImageBlock:
        """An image uploaded with ``client.files.upload`` (``source.type`` ``file``)."""
        return cls({"type": "file", "file_id": file_id})


@frozen
class DocumentBlock:
    """A document content block (PDF, plain text...); ``source`` as the API defines it."""

    type: ClassVar[Literal["document"]] = "document"
    source: Mapping[str, Any]
    title: str | None = None
    context: str | None = None

    @classmethod
    def from_file(
        cls, file_id: str, *, title: str | None = None, context: str | None = None
    ) -> DocumentBlock:
        """A document uploaded with ``client.files.upload`` (``source.type`` ``file``)."""
        return cls({"type": "file", "file_id": file_id}, title=title, context=context)


@frozen
class UnknownBlock:
    """A content block of a type this version does not model; ``raw`` keeps it whole."""

    type: str
    raw: Mapping[str, Any] = field(factory=dict, eq=False)


ContentBlock: TypeAlias = TextBlock | ImageBlock | DocumentBlock | UnknownBlock


def to_blocks(
    content: str | ContentBlock | Iterable[str | ContentBlock],
) -> tuple[ContentBlock, ...]:
    """Normalise outbound content: a string becomes one text block."""
    if isinstance(content, tuple) and all(not isinstance(b, str) for b in content):
        return content
    if isinstance(content, str):
        return (TextBlock(content),)
    if isinstance(content, TextBlock | ImageBlock | DocumentBlock | UnknownBlock):
        return (content,)
    return tuple(TextBlock(b) if isinstance(b, str) else b for b in content)


class _ContentText:
    """Gives an event with ``content`` blocks its ``text``."""

    __slots__ = ()
    content: tuple[ContentBlock, ...]

    @property
    def text(self) -> str:
        """The concatenated text of the ``content`` blocks."""
        return blocks_text(self.content)


def _as_blocks(content: tuple[ContentBlock, ...] | str) -> tuple[ContentBlock, ...]:
    return (TextBlock(content),) if isinstance(content, str) else content


def blocks_text(blocks: Iterable[ContentBlock]) -> str:
    """The concatenated text of the text blocks."""
    return "".join(b.text for b in blocks if isinstance(b, TextBlock))


# ----------------------------------------------------------- usage, errors, stop reasons


@frozen(kw_only=True)
class Usage:
    """Token and credit counts (a span's ``model_usage`` or a session's cumulative ``usage``).

    ``credits`` reads ``credits`` or ``total_credits``. Fields the server did not
    send are ``None``. ``a + b`` adds field by field.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    credits: float | None = None
    raw: Mapping[str, Any] = field(factory=dict, eq=False, repr=False)

    def __add__(self, other: Usage) -> Usage:
        def add(a: Any, b: Any) -> Any:
            return b if a is None else a if b is None else a + b

        counts = [f.name for f in fields(Usage) if f.name != "raw"]
        return Usage(**{n: add(getattr(self, n), getattr(other, n)) for n in counts})


@frozen(kw_only=True)
class ErrorInfo:
    """The error inside a ``session.error`` event.

    ``retry_status`` is ``"retrying"`` (the session retries by itself; the turn
    goes on), ``"exhausted"`` or ``"terminal"``, or ``None`` when not sent.
    """

    type: str = "unknown_error"
    message: str = ""
    retry_status: str | None = None
    code: str | None = None
    raw: Mapping[str, Any] = field(factory=dict, eq=False, repr=False)


@frozen
class StopReason:
    """Why a session went idle. ``ends_turn`` is False only for ``requires_action``."""

    if TYPE_CHECKING:

        @property
        def type(self) -> str: ...

    ends_turn: ClassVar[bool] = True

    def __str__(self) -> str:
        return self.type


@frozen
class EndTurn(StopReason):
    """The turn finished normally."""

    type: ClassVar[Literal["end_turn"]] = "end_turn"


@frozen
class RequiresAction(StopReason):
    """The turn is paused until each event in ``event_ids`` is answered (tool results)."""

    type: ClassVar[Literal["requires_action"]] = "requires_action"
    ends_turn: ClassVar[bool] = False
    event_ids: tuple[str, ...] = ()


@frozen
class RetriesExhausted(StopReason):
    """The turn ended because errors used up the retry budget."""

    type: ClassVar[Literal["retries_exhausted"]] = "retries_exhausted"


@frozen
class BudgetReached(StopReason):
    """The turn ended because the session's budget cap was hit."""

    type: ClassVar[Literal["budget_reached"]] = "budget_reached"


@frozen
class UnknownStopReason(StopReason):
    """A stop reason this version does not know; treated as the end of the turn."""

    type: str
    raw: Mapping[str, Any] = field(factory=dict, eq=False, repr=False)


# --------------------------------------------------------------------------- cursors


@frozen
class Cursor:
    """A position in a session's event stream: an event id and its ``processed_at``.

    Resuming from a cursor asks the server for the events after ``event_id``
    (``Last-Event-ID``); ``processed_at``, when known, also lets the client drop
    events a server replays from before it. ``str(cursor)`` is the event id.
    """

    event_id: str
    processed_at: str | None = None

    def __str__(self) -> str:
        return self.event_id


# --------------------------------------------------------------------------- pages

_T = TypeVar("_T")


class Page(list[_T]):
    """One page of a list answer: its items (it is a list) and the page's cursors.

    ``first_id``/``last_id`` are the ids of its first and last items (on
    ``GET /agents/{id}/versions`` the version numbers, as strings);
    ``next_page`` the opaque cursor of the next page; ``has_more`` whether one
    follows. A cursor the answer does not send is ``None`` (``GET /models``
    sends none).
    """

    __slots__ = ("first_id", "has_more", "last_id", "next_page")

    def __init__(
        self,
        items: Iterable[_T] = (),
        *,
        first_id: str | None = None,
        last_id: str | None = None,
        has_more: bool = False,
        next_page: str | None = None,
    ) -> None:
        super().__init__(items)
        self.first_id = first_id
        self.last_id = last_id
        self.has_more = has_more
        self.next_page = next_page

    def __repr__(self) -> str:
        return (
            f"Page({list.__repr__(self)}, first_id={self.first_id!r}, "
            f"last_id={self.last_id!r}, has_more={self.has_more!r}, "
            f"next_page={self.next_page!r})"
        )


# --------------------------------------------------------------------------- events


@frozen(kw_only=True)
class BaseEvent:
    """Fields every event has. ``type`` is a class constant (an instance field on unknowns)."""

    if TYPE_CHECKING:

        @property
        def type(self) -> str: ...

    id: str | None = None
    turn_id: str | None = None
    processed_at: str | None = None
    session_thread_id: str | None = None
    # The JSON object as received, or (for events decoded from a stream) the
    # frame's JSON bytes, parsed again on first access: a retained event then
    # holds one bytes object instead of a tree of dicts and lists, which keeps
    # long turns small and cheap for the garbage collector.
    _raw: Mapping[str, Any] | bytes = field(default=_EMPTY, eq=False, repr=False, alias="raw")

    @property
    def raw(self) -> Mapping[str, Any]:
        """The event's JSON object as received (do not mutate it)."""
        raw = self._raw
        if raw.__class__ is bytes:
            raw = json_loads(raw)
            object.__setattr__(self, "_raw", raw)
        return raw  # type: ignore[return-value]


# user.* --------------------------------------------------------------------


@frozen
class UserMessage(BaseEvent, _ContentText):
    """``user.message``: what the user said. A string becomes one text block."""

    type: ClassVar[Literal["user.message"]] = "user.message"
    content: tuple[ContentBlock, ...] = field(converter=to_blocks)


@frozen
class UserInterrupt(BaseEvent):
    """``user.interrupt``: stop the running turn."""

    type: ClassVar[Literal["user.interrupt"]] = "user.interrupt"
    reason: str | None = None


@frozen
class UserDefineOutcome(BaseEvent):
    """``user.define_outcome``: a goal the agent works towards and is graded against.

    ``description`` also reads the older ``content``/``outcome`` spellings.
    """

    type: ClassVar[Literal["user.define_outcome"]] = "user.define_outcome"
    description: str
    rubric: Any = None
    max_iterations: int | None = None


@frozen
class UserToolConfirmation(BaseEvent):
    """``user.tool_confirmation``: allow or deny a tool use that asked for permission.

    ``result`` is ``"allow"`` or ``"deny"`` (the older ``decision: approve`` reads as allow).
    """

    type: ClassVar[Literal["user.tool_confirmation"]] = "user.tool_confirmation"
    tool_use_id: str
    result: str = "allow"
    deny_message: str | None = None


@frozen
class UserCustomToolResult(BaseEvent, _ContentText):
    """``user.custom_tool_result``: the answer to an ``agent.custom_tool_use`` (by its event id)."""

    type: ClassVar[Literal["user.custom_tool_result"]] = "user.custom_tool_result"
    custom_tool_use_id: str
    content: tuple[ContentBlock, ...] = field(default=(), converter=to_blocks)
    is_error: bool = False


@frozen
class UserToolResult(BaseEvent, _ContentText):
    """``user.tool_result``: a result for a built-in tool use executed by the client."""

    type: ClassVar[Literal["user.tool_result"]] = "user.tool_result"
    tool_use_id: str
    content: tuple[ContentBlock, ...] = field(default=(), converter=to_blocks)
    is_error: bool = False


@frozen
class SystemMessage(BaseEvent):
    """``system.message``: system content injected into the session."""

    type: ClassVar[Literal["system.message"]] = "system.message"
    content: tuple[ContentBlock, ...] = field(converter=to_blocks)


# agent.* -------------------------------------------------------------------


@frozen
class AgentMessage(BaseEvent):
    """``agent.message``: the agent's reply (complete and authoritative)."""

    type: ClassVar[Literal["agent.message"]] = "agent.message"
    # The common one-text-block reply is kept as its string when decoded from a
    # stream (``content`` builds the block on access): a retained message is then
    # one object for the garbage collector to track instead of three.
    _content: tuple[ContentBlock, ...] | str = field(default=(), alias="content", eq=_as_blocks)

    @property
    def content(self) -> tuple[ContentBlock, ...]:
        """The reply's content blocks."""
        content = self._content
        if isinstance(content, str):  # kept as text until asked for (see _convert)
            content = _as_blocks(content)
            object.__setattr__(self, "_content", content)
        return content

    @property
    def text(self) -> str:
        """The reply's text."""
        content = self._content
        return content if isinstance(content, str) else blocks_text(content)

    def __repr__(self) -> str:
        return (
            f"AgentMessage(id={self.id!r}, turn_id={self.turn_id!r}, "
            f"processed_at={self.processed_at!r}, session_thread_id={self.session_thread_id!r}, "
            f"content={self.content!r})"
        )


AgentMessage.__match_args__ = ("content",)  # type: ignore[misc]


@frozen
class AgentThinking(BaseEvent):
    """``agent.thinking``: reasoning text (``thinking`` or older ``content``), or None."""

    type: ClassVar[Literal["agent.thinking"]] = "agent.thinking"
    thinking: str | None = None

    @property
    def text(self) -> str:
        """The thinking text ('' when the server sent only a progress signal)."""
        return self.thinking or ""


@frozen
class AgentToolUse(BaseEvent):
    """``agent.tool_use``: a built-in tool call (also read from ``tool_name``/``tool_input``).

    ``tool_use_id`` is what results refer to: the event id unless the server
    sent an explicit ``tool_use_id``.
    """

    type: ClassVar[Literal["agent.tool_use"]] = "agent.tool_use"
    name: str = ""
    input: Mapping[str, Any] = field(factory=dict)
    evaluated_permission: str | None = None
    tool_use_id: str | None = None

    @property
    def needs_confirmation(self) -> bool:
        """True when the tool waits for a ``user.tool_confirmation``."""
        return self.evaluated_permission == "ask"


@frozen
class AgentToolResult(BaseEvent, _ContentText):
    """``agent.tool_result``: a built-in tool's output (``output`` strings read as text)."""

    type: ClassVar[Literal["agent.tool_result"]] = "agent.tool_result"
    tool_use_id: str | None = None
    content: tuple[ContentBlock, ...] = ()
    is_error: bool = False


@frozen
class AgentCustomToolUse(BaseEvent):
    """``agent.custom_tool_use``: the agent asks the client to run a tool; answer by ``id``."""

    type: ClassVar[Literal["agent.custom_tool_use"]] = "agent.custom_tool_use"
    name: str = ""
    input: Mapping[str, Any] = field(factory=dict)


@frozen
class AgentMCPToolUse(BaseEvent):
    """``agent.mcp_tool_use``: a call to a tool of an MCP server."""

    type: ClassVar[Literal["agent.mcp_tool_use"]] = "agent.mcp_tool_use"
    name: str = ""
    input: Mapping[str, Any] = field(factory=dict)
    mcp_server_name: str | None = None
    evaluated_permission: str | None = None


@frozen
class AgentMCPToolResult(BaseEvent, _ContentText):
    """``agent.mcp_tool_result``: an MCP tool's output."""

    type: ClassVar[Literal["agent.mcp_tool_result"]] = "agent.mcp_tool_result"
    mcp_tool_use_id: str | None = None
    content: tuple[ContentBlock, ...] = ()
    is_error: bool = False


@frozen
class AgentThreadMessageSent(BaseEvent):
    """``agent.thread_message_sent``: a message to another agent thread."""

    type: ClassVar[Literal["agent.thread_message_sent"]] = "agent.thread_message_sent"
    content: tuple[ContentBlock, ...] = ()
    to_session_thread_id: str | None = None
    to_agent_name: str | None = None


@frozen
class AgentThreadMessageReceived(BaseEvent):
    """``agent.thread_message_received``: a message from another agent thread."""

    type: ClassVar[Literal["agent.thread_message_received"]] = "agent.thread_message_received"
    content: tuple[ContentBlock, ...] = ()
    from_session_thread_id: str | None = None
    from_agent_name: str | None = None


@frozen
class AgentThreadContextCompacted(BaseEvent):
    """``agent.thread_context_compacted``: the agent's context was compacted."""

    type: ClassVar[Literal["agent.thread_context_compacted"]] = "agent.thread_context_compacted"


@frozen
class AgentArtifactDelivered(BaseEvent):
    """``agent.artifact_delivered``: a file produced by the agent."""

    type: ClassVar[Literal["agent.artifact_delivered"]] = "agent.artifact_delivered"
    file_id: str | None = None
    original_filename: str | None = None
    size: int | None = None
    content_type: str | None = None


# session.* -----------------------------------------------------------------


@frozen
class SessionStatusRunning(BaseEvent):
    """``session.status_running``: a turn started (or resumed after ``requires_action``)."""

    type: ClassVar[Literal["session.status_running"]] = "session.status_running"


@frozen
class SessionStatusIdle(BaseEvent):
    """``session.status_idle``: the agent stopped; ``stop_reason`` says why.

    Older payloads without a stop reason read as :class:`EndTurn`.
    """

    type: ClassVar[Literal["session.status_idle"]] = "session.status_idle"
    stop_reason: StopReason = field(factory=EndTurn)


@frozen
class SessionStatusRescheduled(BaseEvent):
    """``session.status_rescheduled``: the runtime is moving; the session comes back idle."""

    type: ClassVar[Literal["session.status_rescheduled"]] = "session.status_rescheduled"


@frozen
class SessionStatusTerminated(BaseEvent):
    """``session.status_terminated`` (or the older ``terminated``): the session is over."""

    type: ClassVar[Literal["session.status_terminated"]] = "session.status_terminated"
    reason: str | None = None


@frozen
class SessionErrorEvent(BaseEvent):
    """``session.error``: an error inside the session (not by itself the end of a turn)."""

    type: ClassVar[Literal["session.error"]] = "session.error"
    error: ErrorInfo = field(factory=ErrorInfo)

    @property
    def retrying(self) -> bool:
        """True when the session retries by itself (``retry_status`` ``retrying``)."""
        return self.error.retry_status == "retrying"


@frozen
class SessionUpdated(BaseEvent):
    """``session.updated``: the session's configuration changed."""

    type: ClassVar[Literal["session.updated"]] = "session.updated"


@frozen
class SessionDeletedEvent(BaseEvent):
    """``session.deleted``: the session was deleted; its streams end."""

    type: ClassVar[Literal["session.deleted"]] = "session.deleted"


@frozen
class SessionUsage(BaseEvent):
    """``session.usage``: a cumulative usage snapshot (not an increment)."""

    type: ClassVar[Literal["session.usage"]] = "session.usage"
    usage: Usage = field(factory=Usage)
    budget: Mapping[str, Any] | None = None


@frozen
class SessionThreadCreated(BaseEvent):
    """``session.thread_created``: a sub-agent thread started."""

    type: ClassVar[Literal["session.thread_created"]] = "session.thread_created"
    agent_name: str | None = None


@frozen
class SessionThreadStatusRunning(BaseEvent):
    """``session.thread_status_running``."""

    type: ClassVar[Literal["session.thread_status_running"]] = "session.thread_status_running"
    agent_name: str | None = None


@frozen
class SessionThreadStatusIdle(BaseEvent):
    """``session.thread_status_idle``: a thread paused (its own stop reason; not the turn's end)."""

    type: ClassVar[Literal["session.thread_status_idle"]] = "session.thread_status_idle"
    agent_name: str | None = None
    stop_reason: StopReason = field(factory=EndTurn)


@frozen
class SessionThreadStatusRescheduled(BaseEvent):
    """``session.thread_status_rescheduled``."""

    type: ClassVar[Literal["session.thread_status_rescheduled"]] = (
        "session.thread_status_rescheduled"
    )
    agent_name: str | None = None


@frozen
class SessionThreadStatusTerminated(BaseEvent):
    """``session.thread_status_terminated``."""

    type: ClassVar[Literal["session.thread_status_terminated"]] = "session.thread_status_terminated"
    agent_name: str | None = None


# span.* --------------------------------------------------------------------


@frozen
class SpanModelRequestStart(BaseEvent):
    """``span.model_request_start``: a model call began."""

    type: ClassVar[Literal["span.model_request_start"]] = "span.model_request_start"
    model: str | None = None
    span_id: str | None = None


@frozen
class SpanModelRequestEnd(BaseEvent):
    """``span.model_request_end``: a model call ended; ``model_usage`` also reads ``usage``.

    ``model_request_start_id`` also reads the older ``span_id``.
    """

    type: ClassVar[Literal["span.model_request_end"]] = "span.model_request_end"
    model_request_start_id: str | None = None
    is_error: bool = False
    model_usage: Usage | None = None


@frozen
class SpanOutcomeEvaluationStart(BaseEvent):
    """``span.outcome_evaluation_start``: grading against a defined outcome began."""

    type: ClassVar[Literal["span.outcome_evaluation_start"]] = "span.outcome_evaluation_start"
    outcome_id: str | None = None
    iteration: int | None = None


@frozen
class SpanOutcomeEvaluationOngoing(BaseEvent):
    """``span.outcome_evaluation_ongoing``."""

    type: ClassVar[Literal["span.outcome_evaluation_ongoing"]] = "span.outcome_evaluation_ongoing"
    outcome_id: str | None = None
    iteration: int | None = None


@frozen
class SpanOutcomeEvaluationEnd(BaseEvent):
    """``span.outcome_evaluation_end``: ``result`` and ``explanation`` of the grading."""

    type: ClassVar[Literal["span.outcome_evaluation_end"]] = "span.outcome_evaluation_end"
    outcome_id: str | None = None
    iteration: int | None = None
    result: str | None = None
    explanation: str | None = None
    outcome_evaluation_start_id: str | None = None


# previews: per-connection `event_deltas[]` dialect --------------------------


@frozen
class PreviewStart(BaseEvent):
    """``event_start``: a preview of event ``event_id`` (of type ``event_type``) begins.

    Previews are best-effort and never stored; the buffered event with the same
    id replaces them.
    """

    type: ClassVar[Literal["event_start"]] = "event_start"
    event_id: str | None = None
    event_type: str | None = None


@frozen
class PreviewDelta(BaseEvent):
    """``event_delta``: a fragment of content block ``index`` of previewed event ``event_id``."""

    type: ClassVar[Literal["event_delta"]] = "event_delta"
    event_id: str | None = None
    index: int = 0
    content: ContentBlock | None = None
    delta_type: str | None = None

    @property
    def text(self) -> str:
        """The fragment's text ('' for non-text fragments)."""
        return self.content.text if isinstance(self.content, TextBlock) else ""


# previews: session-level incremental streaming dialect ----------------------


@frozen
class AgentMessageStart(BaseEvent):
    """``agent.message_start``: an incrementally streamed message begins."""

    type: ClassVar[Literal["agent.message_start"]] = "agent.message_start"
    message_id: str | None = None


@frozen
class AgentContentBlockStart(BaseEvent):
    """``agent.content_block_start``: block ``index`` (``block_type`` text/thinking/tool_use)."""

    type: ClassVar[Literal["agent.content_block_start"]] = "agent.content_block_start"
    message_id: str | None = None
    index: int = 0
    block_type: str | None = None


@frozen
class AgentContentBlockDelta(BaseEvent):
    """``agent.content_block_delta``: ``text`` carries text or thinking fragments.

    ``delta_type`` is ``text_delta``, ``thinking_delta``, ``input_json_delta``
    (then ``partial_json`` is set) or ``signature_delta``.
    """

    type: ClassVar[Literal["agent.content_block_delta"]] = "agent.content_block_delta"
    message_id: str | None = None
    index: int = 0
    delta_type: str | None = None
    text: str = ""
    partial_json: str | None = None


@frozen
class AgentContentBlockStop(BaseEvent):
    """``agent.content_block_stop``: block ``index`` is complete."""

    type: ClassVar[Literal["agent.content_block_stop"]] = "agent.content_block_stop"
    message_id: str | None = None
    index: int = 0


@frozen
class AgentMessageDelta(BaseEvent):
    """``agent.message_delta``: message-level changes (stop reason, usage)."""

    type: ClassVar[Literal["agent.message_delta"]] = "agent.message_delta"
    message_id: str | None = None
    usage: Usage | None = None


@frozen
class AgentMessageStop(BaseEvent):
    """``agent.message_stop``: the incrementally streamed message is complete."""

    type: ClassVar[Literal["agent.message_stop"]] = "agent.message_stop"
    message_id: str | None = None


@frozen
class UnknownEvent(BaseEvent):
    """An event of a type this version does not model. Kept whole in ``raw``."""

    type: str


Event: TypeAlias = (
    UserMessage
    | UserInterrupt
    | UserDefineOutcome
    | UserToolConfirmation
    | UserCustomToolResult
    | UserToolResult
    | SystemMessage
    | AgentMessage
    | AgentThinking
    | AgentToolUse
    | AgentToolResult
    | AgentCustomToolUse
    | AgentMCPToolUse
    | AgentMCPToolResult
    | AgentThreadMessageSent
    | AgentThreadMessageReceived
    | AgentThreadContextCompacted
    | AgentArtifactDelivered
    | SessionStatusRunning
    | SessionStatusIdle
    | SessionStatusRescheduled
    | SessionStatusTerminated
    | SessionErrorEvent
    | SessionUpdated
    | SessionDeletedEvent
    | SessionUsage
    | SessionThreadCreated
    | SessionThreadStatusRunning
    | SessionThreadStatusIdle
    | SessionThreadStatusRescheduled
    | SessionThreadStatusTerminated
    | SpanModelRequestStart
    | SpanModelRequestEnd
    | SpanOutcomeEvaluationStart
    | SpanOutcomeEvaluationOngoing
    | SpanOutcomeEvaluationEnd
    | PreviewStart
    | PreviewDelta
    | AgentMessageStart
    | AgentContentBlockStart
    | AgentContentBlockDelta
    | AgentContentBlockStop
    | AgentMessageDelta
    | AgentMessageStop
    | UnknownEvent
)
"""Any event the API can send; narrow with ``isinstance`` or ``match``."""

OutboundEvent: TypeAlias = (
    UserMessage
    | UserInterrupt
    | UserDefineOutcome
    | UserToolConfirmation
    | UserCustomToolResult
    | UserToolResult
    | SystemMessage
)
"""The events a client may post to ``POST /sessions/{id}/events``."""


Content: TypeAlias = str | ContentBlock | Sequence[str | ContentBlock]
"""What ``send()`` takes as a message: text, a content block, or a list of them."""


def new_idempotency_key() -> str:
    """A fresh ``Idempotency-Key``: 128 random bits as 32 hex digits.

    As unpredictable as ``uuid4().hex`` (which keeps 122 of its bits random) and
    a fifth of its cost; safe across ``fork()`` (the OS supplies the bits).
    """
    return os.urandom(16).hex()


def as_events(content: Content | OutboundEvent | Sequence[OutboundEvent]) -> list[OutboundEvent]:
    """The events a ``send()`` posts: one ``user.message`` for content, or the events given."""
    if isinstance(content, str | TextBlock | ImageBlock | DocumentBlock | UnknownBlock):
        return [UserMessage(content)]
    if isinstance(content, Sequence) and content and isinstance(content[0], BaseEvent):
        return list(content)  # type: ignore[arg-type]
    if isinstance(content, Sequence):
        return [UserMessage(content)]  # type: ignore[arg-type]
    return [content]


def is_copy_of(stored: Event, sent: OutboundEvent) -> bool:
    """True when ``stored`` is the server's copy of the message ``sent`` (same content)."""
    if isinstance(sent, UserMessage):
        return isinstance(stored, UserMessage) and stored.content == sent.content
    if isinstance(sent, UserDefineOutcome):
        return isinstance(stored, UserDefineOutcome) and stored.description == sent.description
    return False


# --------------------------------------------------------------------------- resources


@frozen(kw_only=True)
class ModelConfig:
    """An agent's model: its ``id``, and the context window the session runs it with.

    Top-level agents (``GET /agents/{id}``) send the model as a plain id; the
    agent snapshot inside a session or thread answer sends an object
    ``{"id", "effective_context_window"}``. Both forms read as this class.
    """

    id: str | None = None
    effective_context_window: int | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Agent:
    """An agent. ``model`` is the model id; ``system`` also reads ``instructions``.

    ``model_config`` types both wire forms of the model (a string on
    ``/agents``, an object with ``effective_context_window`` in session and
    thread snapshots); ``model`` stays its id. ``tools``, ``mcp_servers``,
    ``skills`` and ``multiagent`` are the API's objects as sent.
    """

    type: ClassVar[Literal["agent"]] = "agent"
    id: str
    name: str | None = None
    model: str | None = None
    model_config: ModelConfig | None = None
    system: str | None = None
    description: str | None = None
    version: int | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    mcp_servers: tuple[Mapping[str, Any], ...] = ()
    skills: tuple[Mapping[str, Any], ...] = ()
    multiagent: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    archived_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class SessionResource:
    """Something mounted into a session's sandbox: a ``file``, a ``github_repository``
    or a ``memory_store`` (``type``); the fields of the other types are ``None``.

    A repository's ``checkout`` is ``{"type": "branch", "name": ...}`` or
    ``{"type": "commit", "sha": ...}``; its token is write-only (never returned).
    """

    id: str
    type: str | None = None
    mount_path: str | None = None
    file_id: str | None = None
    url: str | None = None
    checkout: Mapping[str, Any] | None = None
    memory_store_id: str | None = None
    access: str | None = None
    name: str | None = None
    description: str | None = None
    instructions: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Session:
    """A session. ``status`` is the server's string (idle, running, rescheduling, terminated,
    or an older spelling); ``agent_id`` is read from ``agent_id`` or the agent snapshot.

    ``agent`` is the agent snapshot the session runs (overrides applied), when
    the server sends one; ``environment_variables`` also reads the ``"K=V"``
    lines form (its values may be secrets: not in the repr). ``stats`` is its
    timing, ``usage.credits`` its cost so far (``usage.total_credits``),
    ``deployment_id`` the deployment that started it (else ``None``),
    ``outcome_evaluations`` the gradings of its defined outcomes (objects as
    sent).
    """

    type: ClassVar[Literal["session"]] = "session"
    id: str
    status: str | None = None
    title: str | None = None
    agent_id: str | None = None
    agent: Agent | None = None
    environment_id: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    resources: tuple[SessionResource, ...] = ()
    vault_ids: tuple[str, ...] = ()
    memory_store_ids: tuple[str, ...] = ()
    environment_variables: Mapping[str, str] = field(factory=dict, repr=False)
    budget: Mapping[str, Any] | None = None
    incremental_streaming_enabled: bool | None = None
    deployment_id: str | None = None
    outcome_evaluations: tuple[Mapping[str, Any], ...] = ()
    stats: ThreadStats | None = None
    archived_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    usage: Usage | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class SessionCancel:
    """The answer to ``POST /sessions/{id}/cancel``: only ``id`` and ``status``.

    ``status`` is ``"canceling"`` while the running turn winds down (the
    session's events say when it stopped); not a full :class:`Session`.
    """

    type: ClassVar[Literal["session"]] = "session"
    id: str
    status: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Deleted:
    """The answer to a delete: of a session, a file, an environment, a session resource.

    ``type`` is the wire's type string (``"session_deleted"``, ``"file_deleted"``,
    ``"environment_deleted"``, ``"session_resource_deleted"``, ...); when the
    server omits it, the type the endpoint documents.
    """

    id: str
    type: str = ""
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class ThreadStats:
    """Timing of a session or a sub-agent thread, in seconds (``startup_seconds``: threads)."""

    active_seconds: float | None = None
    duration_seconds: float | None = None
    startup_seconds: float | None = None


@frozen(kw_only=True)
class SessionThread:
    """A sub-agent thread of a multi-agent session (``sthr_...``).

    ``agent_name`` is read from ``agent_name`` or the thread's ``agent`` object
    (kept whole in ``agent``, typed in ``agent_snapshot``: a reference
    ``{id, type, version}`` or a full snapshot); ``parent_thread_id`` is
    ``None`` for a thread the primary agent started.
    """

    type: ClassVar[Literal["session_thread"]] = "session_thread"
    id: str
    session_id: str | None = None
    agent_name: str | None = None
    agent: Mapping[str, Any] = field(factory=dict)
    agent_snapshot: Agent | None = None
    parent_thread_id: str | None = None
    status: str | None = None
    stats: ThreadStats | None = None
    usage: Usage | None = None
    archived_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class FileMetadata:
    """An uploaded file (``file_...``); ``mime_type`` also reads ``content_type``.

    Its bytes come from ``client.files.download(file.id)``; a message refers to
    it with ``DocumentBlock.from_file(file.id)`` or ``ImageBlock.from_file(...)``.
    """

    type: ClassVar[Literal["file"]] = "file"
    id: str
    filename: str | None = None
    mime_type: str | None = None
    size_bytes: int | None = None
    purpose: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    status: str | None = None
    downloadable: bool | None = None
    scope: Mapping[str, Any] | None = None
    expires_at: str | None = None
    created_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class ModelInfo:
    """A model an agent can use (``GET /models``).

    ``source`` is ``"system"`` for the service's own models; ``price_factor``
    multiplies its credit cost; ``efforts`` are the reasoning efforts it takes
    (``default_effort`` when none is asked); ``available_context_windows``
    the context windows it offers, in tokens (``default_context_window``
    unless the agent picks one).
    """

    type: ClassVar[Literal["model"]] = "model"
    id: str
    display_name: str | None = None
    source: str | None = None
    is_enabled: bool | None = None
    is_new: bool | None = None
    price_factor: float | None = None
    efforts: tuple[str, ...] = ()
    default_effort: str | None = None
    max_input_tokens: int | None = None
    max_tokens: int | None = None
    default_context_window: int | None = None
    available_context_windows: tuple[int, ...] = ()
    created_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Environment:
    """An environment (where the agent's sandbox runs)."""

    type: ClassVar[Literal["environment"]] = "environment"
    id: str
    name: str | None = None
    description: str | None = None
    config: Mapping[str, Any] = field(factory=dict)
    status: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    archived_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Accepted:
    """The answer to a send (202): the stored events, as a handle on what follows.

    ``turn_id`` is the turn the events belong to (``None`` when the server does
    not send turn ids); ``last_event_id`` is the id to stream from.
    """

    events: tuple[Event, ...]
    request_id: str | None = None
    idempotency_key: str | None = None

    @property
    def turn_id(self) -> str | None:
        """The turn id of the created events (the first one that has one)."""
        for ev in self.events:
            if ev.turn_id:
                return ev.turn_id
        return None

    @property
    def last_event_id(self) -> str | None:
        """The id of the last created event: stream from here to miss nothing after it."""
        for ev in reversed(self.events):
            if ev.id:
                return ev.id
        return None

    @property
    def anchor(self) -> Event | None:
        """The created event a turn starts at: its ``user.message`` (or outcome), else the last."""
        for ev in self.events:
            if isinstance(ev, UserMessage | UserDefineOutcome) and ev.id:
                return ev
        for ev in reversed(self.events):
            if ev.id:
                return ev
        return None


# --- deployments, runs, dreams, environment work
# Shapes: the official SDK's captured answers (qoder-api.md §15) and its types where a
# capture is empty. Nested objects are small records without ``raw``; the top-level
# answers keep theirs.


@frozen(kw_only=True)
class AgentReference:
    """An agent pinned by id and version (``{"id", "type": "agent", "version"}``)."""

    id: str | None = None
    type: str | None = None
    version: int | None = None


@frozen(kw_only=True)
class Schedule:
    """A deployment's schedule: ``type`` ``"cron"``, its ``expression`` and ``timezone``.

    ``upcoming_runs_at`` are the next run times the server computed (empty once
    archived); ``last_run_at`` is absent before the first run.
    """

    type: str | None = None
    expression: str | None = None
    timezone: str | None = None
    upcoming_runs_at: tuple[str, ...] = ()
    last_run_at: str | None = None


@frozen(kw_only=True)
class RunError:
    """Why a deployment run or a dream failed: ``type`` and ``message``."""

    type: str | None = None
    message: str | None = None


@frozen(kw_only=True)
class PausedReason:
    """Why a deployment is paused: ``type`` ``"manual"``, or ``"error"`` with ``error.type``."""

    type: str | None = None
    error: RunError | None = None


@frozen(kw_only=True)
class Deployment:
    """A deployment (``dep_...``): an agent, an environment and initial events, run on a
    schedule or on demand (``POST /deployments/{id}/run``).

    ``status`` is ``"active"`` or ``"paused"`` (then ``paused_reason`` says why).
    ``environment_variables`` is the API's ``"K=V"`` lines string, as sent (a
    session's is an object); its values may be secrets: not in the repr.
    ``initial_events`` are the events each run's session starts with (typed,
    without ids); ``resources`` the session resource configs, as sent.
    """

    id: str
    type: str | None = None
    name: str | None = None
    description: str | None = None
    agent: AgentReference | None = None
    environment_id: str | None = None
    environment_variables: str = field(default="", repr=False)
    initial_events: tuple[Event, ...] = ()
    resources: tuple[Mapping[str, Any], ...] = ()
    vault_ids: tuple[str, ...] = ()
    schedule: Schedule | None = None
    status: str | None = None
    paused_reason: PausedReason | None = None
    budget: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    archived_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class TriggerContext:
    """What started a deployment run: ``type`` ``"manual"`` or ``"schedule"`` (with
    ``scheduled_at``)."""

    type: str | None = None
    scheduled_at: str | None = None


@frozen(kw_only=True)
class DeploymentRun:
    """One run of a deployment (``drun_...``): the session it started, or its ``error``.

    Follow the run's turn with ``await client.session(run.session_id).follow()``.
    """

    id: str
    type: str | None = None
    deployment_id: str | None = None
    session_id: str | None = None
    agent: AgentReference | None = None
    trigger_context: TriggerContext | None = None
    error: RunError | None = None
    created_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class DreamInput:
    """What a dream reads: a ``memory_store`` (``memory_store_id``) or ``sessions``
    (``session_ids``)."""

    type: str | None = None
    memory_store_id: str | None = None
    session_ids: tuple[str, ...] = ()


@frozen(kw_only=True)
class DreamOutput:
    """What a dream wrote: a memory store and the files it touched there."""

    type: str | None = None
    memory_store_id: str | None = None
    files_touched: tuple[str, ...] = ()


@frozen(kw_only=True)
class DreamModel:
    """The model a dream runs on (``id``; ``speed`` ``"standard"`` or ``"fast"``)."""

    id: str | None = None
    speed: str | None = None


@frozen(kw_only=True)
class Dream:
    """A dream (``drm_...``): an agent run that distils sessions or a memory store into a
    memory store. ``status``: pending, running, completed, failed or canceled.

    ``output_behavior`` is ``{"type": "create_new"}`` or ``{"type":
    "update_existing", "memory_store_id": ...}`` when the server sends it.
    """

    id: str
    type: str | None = None
    status: str | None = None
    inputs: tuple[DreamInput, ...] = ()
    outputs: tuple[DreamOutput, ...] = ()
    model: DreamModel | None = None
    instructions: str | None = None
    output_behavior: Mapping[str, Any] | None = None
    session_id: str | None = None
    usage: Usage | None = None
    error: RunError | None = None
    created_at: str | None = None
    ended_at: str | None = None
    archived_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class WorkData:
    """What a work item is about: ``type`` ``"session"`` and its ``id``."""

    type: str | None = None
    id: str | None = None


@frozen(kw_only=True)
class Work:
    """A work item of a self-hosted environment's queue (``work_...``).

    ``state``: queued, starting (acknowledged), active (heartbeating), stopping,
    stopped. ``secret`` (what a worker uses to run the session) is not in the repr.
    """

    id: str
    type: str | None = None
    environment_id: str | None = None
    data: WorkData | None = None
    state: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    secret: str | None = field(default=None, repr=False)
    created_at: str | None = None
    acknowledged_at: str | None = None
    started_at: str | None = None
    latest_heartbeat_at: str | None = None
    stop_requested_at: str | None = None
    stopped_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class WorkHeartbeat:
    """The answer to a work item's heartbeat: whether the lease was extended, for how long."""

    type: str | None = None
    state: str | None = None
    last_heartbeat: str | None = None
    lease_extended: bool | None = None
    ttl_seconds: int | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class WorkQueueStats:
    """A self-hosted environment's queue: ``depth`` (queued), ``pending`` (handed out, not
    acknowledged), ``oldest_queued_at``, ``workers_polling``."""

    type: str | None = None
    depth: int | None = None
    pending: int | None = None
    oldest_queued_at: str | None = None
    workers_polling: int | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


# --- vaults, skills, memory stores -----------------------------------------------------
# (``client.vaults``, ``client.skills``, ``client.memory_stores``; decoded through
# ``_core/convert.py``'s ``_MANAGED`` table.) Deletions answer :class:`Deleted`.


@frozen(kw_only=True)
class CredentialAuth:
    """How a vault credential authenticates (its ``auth``), as the API answers it.

    ``type`` is ``static_bearer``, ``mcp_oauth`` or ``environment_variable``.
    The secrets a create or update sends (``token``, ``access_token``,
    ``refresh_token``, ``secret_value``, ``client_secret``) are write-only:
    never kept here, even if a server echoed them (``raw`` is not in the repr).
    ``refresh`` is an OAuth credential's refresh settings (``client_id``,
    ``token_endpoint``, ``token_endpoint_auth``, ``resource``, ``scope``).
    """

    type: str | None = None
    mcp_server_url: str | None = None
    expires_at: str | None = None
    secret_name: str | None = None
    injection_location: Mapping[str, Any] | None = None
    networking: Mapping[str, Any] | None = None
    refresh: Mapping[str, Any] | None = None


@frozen(kw_only=True)
class VaultCredential:
    """A credential in a vault (``vcred_...``; ``/vaults/{vault_id}/credentials``)."""

    id: str
    type: str | None = None
    vault_id: str | None = None
    auth: CredentialAuth | None = None
    display_name: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    archived_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Vault:
    """A vault (``vault_...``; ``/vaults``): credentials a session may use (``vault_ids``).

    ``credentials`` holds the credentials when the answer lists them (the
    create answer does), else it is empty: list them with
    ``client.vaults.credentials.list(vault_id)``.
    """

    id: str
    type: str | None = None
    display_name: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    credentials: tuple[VaultCredential, ...] = ()
    archived_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class ProbeHTTPResponse:
    """An HTTP answer a credential check received (its body may be truncated)."""

    status_code: int | None = None
    content_type: str | None = None
    body: str | None = None
    body_truncated: bool | None = None


@frozen(kw_only=True)
class CredentialRefreshCheck:
    """The token refresh a credential check tried (``status``: e.g. ``no_refresh_token``)."""

    status: str | None = None
    http_response: ProbeHTTPResponse | None = None


@frozen(kw_only=True)
class MCPProbe:
    """The MCP request a credential check sent to the server (``method``: ``initialize``)."""

    method: str | None = None
    http_response: ProbeHTTPResponse | None = None


@frozen(kw_only=True)
class CredentialValidation:
    """The answer of ``POST /vaults/{vault_id}/credentials/{credential_id}/mcp_oauth_validate``.

    ``status`` is the verdict (``valid``, ``invalid``...); ``refresh`` and
    ``mcp_probe`` say what was tried.
    """

    credential_id: str | None = None
    vault_id: str | None = None
    type: str | None = None
    status: str | None = None
    validated_at: str | None = None
    has_refresh_token: bool | None = None
    refresh: CredentialRefreshCheck | None = None
    mcp_probe: MCPProbe | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Skill:
    """A skill (``skill_...``; ``/skills``); ``source`` is ``custom`` or ``qoder``.

    ``latest_version`` is the newest version's number (a string); its files
    are versions (``client.skills.versions``).
    """

    id: str
    type: str | None = None
    display_title: str | None = None
    source: str | None = None
    latest_version: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class SkillVersion:
    """One uploaded version of a skill (``skillver_...``; ``/skills/{skill_id}/versions``).

    ``version`` (a string of digits) names it in the version endpoints;
    ``name``, ``description`` and ``directory`` come from its ``SKILL.md``.
    """

    id: str
    type: str | None = None
    skill_id: str | None = None
    version: str | None = None
    name: str | None = None
    description: str | None = None
    directory: str | None = None
    created_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class MemoryStore:
    """A memory store (``memstore_...``; ``/memory_stores``): files an agent remembers."""

    id: str
    type: str | None = None
    name: str | None = None
    description: str | None = None
    status: str | None = None
    entry_count: int | None = None
    total_size: int | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    archived_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Memory:
    """A memory (``mem_...``): a text file at ``path`` in a memory store.

    ``content`` is ``None`` in the ``basic`` view (lists, creates and updates
    answer it unless ``view="full"``); ``memory_version_id`` is its newest version.
    """

    id: str
    type: str | None = None
    memory_store_id: str | None = None
    memory_version_id: str | None = None
    path: str | None = None
    content: str | None = None
    content_sha256: str | None = None
    content_size_bytes: int | None = None
    metadata: Mapping[str, Any] = field(factory=dict)
    created_at: str | None = None
    updated_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class MemoryPrefix:
    """A folder in a memory listing with ``depth`` (``type: "memory_prefix"``): no id.

    List again with ``path_prefix=prefix.path`` to see inside it.
    """

    path: str
    type: str = "memory_prefix"
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class Actor:
    """Who made or redacted a memory version (``type``: ``session_actor``, ``api_actor``...)."""

    type: str | None = None
    session_id: str | None = None
    api_key_id: str | None = None
    user_id: str | None = None
    service_account_id: str | None = None


@frozen(kw_only=True)
class MemoryVersion:
    """One change to a memory (``memver_...``; ``/memory_stores/{id}/memory_versions``).

    ``operation`` is ``created``, ``modified`` or ``deleted``; a redacted
    version has ``redacted_at`` and no ``content``.
    """

    id: str
    type: str | None = None
    memory_id: str | None = None
    memory_store_id: str | None = None
    operation: str | None = None
    path: str | None = None
    content: str | None = None
    content_sha256: str | None = None
    content_size_bytes: int | None = None
    created_by: Actor | None = None
    redacted_at: str | None = None
    redacted_by: Actor | None = None
    created_at: str | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)
