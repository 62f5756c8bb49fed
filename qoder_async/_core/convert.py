"""The one converter between the wire's JSON and the typed models.

Every documented generation of the API (qoder-api.md §11) maps onto the same
typed shape here, and nowhere else:

========================================  =========================================
wire variant                              typed shape
========================================  =========================================
``content: "text"`` (user/agent message)  ``(TextBlock("text"),)``
``agent.thinking`` ``thinking``/``content``  ``AgentThinking.thinking`` (None if absent)
``agent.tool_use`` ``tool_name``/``tool_input``  ``AgentToolUse.name``/``.input``
``agent.tool_result`` ``output: "..."``   ``content=(TextBlock("..."),)``
``session.status_idle`` without stop_reason  ``stop_reason=EndTurn()``
``terminated`` ``{"reason": ...}``        ``SessionStatusTerminated(reason=...)``
``session.error`` ``{"error": "...", "code"}``  ``ErrorInfo(type=code, message=...)``
``span.model_request_end`` ``usage``/``span_id``  ``model_usage``/``model_request_start_id``
``user.define_outcome`` ``content``/``outcome``  ``description``
``user.tool_confirmation`` ``decision: approve``  ``result="allow"``
``user.custom_tool_result`` ``tool_use_id``  ``custom_tool_use_id``
SSE ``id:``/``event:`` only                ``id``/``type`` filled into the object
unknown ``type``                          ``UnknownEvent`` (raw kept)
session ``environment_variables: "K=V"``  ``{"K": "V"}``
session ``agent`` id or snapshot object   ``agent_id`` (and ``agent``: an ``Agent``)
agent ``model`` id, or object with id    ``model`` the id; ``model_config`` both
usage ``total_credits``                   ``Usage.credits``
thread ``agent`` reference or snapshot    ``agent`` as sent; ``agent_snapshot``
file ``content_type``                     ``FileMetadata.mime_type``
skill ``source: {"type": ...}``           ``Skill.source`` (the type string)
credential ``auth`` secrets (``token``...)  left out (only ``raw``, not in the repr)
memory list item ``memory_prefix``        ``MemoryPrefix`` (it has no id)
thread ``agent.name``                     ``SessionThread.agent_name``
========================================  =========================================

Everything goes through the single cattrs :data:`converter`:

* inbound events: one hook per wire ``type`` (:data:`EVENT_HOOKS`), the table
  the stream decoder dispatches on. Each reads and checks its fields inline,
  then builds the frozen instance with a *fast constructor* generated from
  ``attrs.fields()`` (:func:`fast_constructor`: the slots set directly, no
  ``__init__``; a test holds every one equal to the plain constructor). Most
  hooks only read each field: they are generated from one row of
  ``_HOOK_SPECS`` each; the variants above are written out. The converter
  structures an event class through the same table (``converter.structure(d,
  AgentMessage)``), checking the object is of that class;
* resources (sessions, agents, environments...): cattrs-generated hooks with
  strict scalars, after a small normalisation of their variants;
* outbound events: unstructure hooks producing the canonical wire names.

A value of the wrong JSON type raises :class:`ShapeError` naming the field;
callers turn it into the typed error of their context (a stream or an HTTP
answer). Unknown fields are ignored (``raw`` keeps them).
"""

from __future__ import annotations

import collections.abc
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import cattrs
from attrs import evolve as attrs_evolve
from attrs import fields as attrs_fields
from cattrs.gen import make_dict_structure_fn, override

from qoder_async._core.models import (
    Actor,
    Agent,
    AgentArtifactDelivered,
    AgentContentBlockDelta,
    AgentContentBlockStart,
    AgentContentBlockStop,
    AgentCustomToolUse,
    AgentMCPToolResult,
    AgentMCPToolUse,
    AgentMessage,
    AgentMessageDelta,
    AgentMessageStart,
    AgentMessageStop,
    AgentReference,
    AgentThinking,
    AgentThreadContextCompacted,
    AgentThreadMessageReceived,
    AgentThreadMessageSent,
    AgentToolResult,
    AgentToolUse,
    BaseEvent,
    BudgetReached,
    ContentBlock,
    CredentialAuth,
    CredentialRefreshCheck,
    CredentialValidation,
    Deleted,
    Deployment,
    DeploymentRun,
    DocumentBlock,
    Dream,
    DreamInput,
    DreamModel,
    DreamOutput,
    EndTurn,
    Environment,
    ErrorInfo,
    Event,
    FileMetadata,
    ImageBlock,
    MCPProbe,
    Memory,
    MemoryPrefix,
    MemoryStore,
    MemoryVersion,
    ModelConfig,
    ModelInfo,
    OutboundEvent,
    PausedReason,
    PreviewDelta,
    PreviewStart,
    ProbeHTTPResponse,
    RequiresAction,
    RetriesExhausted,
    RunError,
    Schedule,
    Session,
    SessionCancel,
    SessionDeletedEvent,
    SessionErrorEvent,
    SessionResource,
    SessionStatusIdle,
    SessionStatusRescheduled,
    SessionStatusRunning,
    SessionStatusTerminated,
    SessionThread,
    SessionThreadCreated,
    SessionThreadStatusIdle,
    SessionThreadStatusRescheduled,
    SessionThreadStatusRunning,
    SessionThreadStatusTerminated,
    SessionUpdated,
    SessionUsage,
    Skill,
    SkillVersion,
    SpanModelRequestEnd,
    SpanModelRequestStart,
    SpanOutcomeEvaluationEnd,
    SpanOutcomeEvaluationOngoing,
    SpanOutcomeEvaluationStart,
    StopReason,
    SystemMessage,
    TextBlock,
    ThreadStats,
    TriggerContext,
    UnknownBlock,
    UnknownEvent,
    UnknownStopReason,
    Usage,
    UserCustomToolResult,
    UserDefineOutcome,
    UserInterrupt,
    UserMessage,
    UserToolConfirmation,
    UserToolResult,
    Vault,
    VaultCredential,
    Work,
    WorkData,
    WorkHeartbeat,
    WorkQueueStats,
)

__all__ = [
    "CREDENTIAL_SECRETS",
    "EVENT_CLASSES",
    "EVENT_HOOKS",
    "ShapeError",
    "converter",
    "fast_constructor",
    "structure_agent",
    "structure_credential",
    "structure_credential_validation",
    "structure_deleted",
    "structure_deployment",
    "structure_deployment_run",
    "structure_dream",
    "structure_environment",
    "structure_event",
    "structure_file",
    "structure_memory",
    "structure_memory_item",
    "structure_memory_store",
    "structure_memory_version",
    "structure_model",
    "structure_session",
    "structure_session_cancel",
    "structure_session_resource",
    "structure_skill",
    "structure_skill_version",
    "structure_thread",
    "structure_vault",
    "structure_work",
    "structure_work_heartbeat",
    "structure_work_queue_stats",
    "unstructure_event",
]

_T = TypeVar("_T")
JSON = Mapping[str, Any]


class ShapeError(ValueError):
    """A JSON value had the wrong type for a field the client interprets.

    ``where`` names the field, ``expected`` what it must be.
    """

    def __init__(
        self,
        where: str,
        expected: str,
        value: object,
        *,
        got: str | None = None,
        local: str | None = None,
    ) -> None:
        self.where = where
        self.expected = expected
        self.got = got or type(value).__name__
        # Where, inside the object being read, when ``where`` names that object's kind.
        self.local = local
        super().__init__(f"field {where!r} must be {expected}, got {self.got}")

    def at(self, where: str) -> ShapeError:
        """The same error, named at ``where``."""
        return ShapeError(where, self.expected, None, got=self.got)


# --------------------------------------------------------------------------- field readers


def _str(d: JSON, key: str) -> str | None:
    v = d.get(key)
    if v is None or v.__class__ is str:
        return v
    if isinstance(v, str):
        return str(v)
    raise ShapeError(key, "a string", v)


def _int(d: JSON, key: str) -> int | None:
    v = d.get(key)
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise ShapeError(key, "an integer", v)


def _num(d: JSON, key: str) -> float | None:
    v = d.get(key)
    if v is None or (isinstance(v, int | float) and not isinstance(v, bool)):
        return v
    raise ShapeError(key, "a number", v)


def _bool(d: JSON, key: str) -> bool:
    v = d.get(key)
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    raise ShapeError(key, "a boolean", v)


def _obj(d: JSON, key: str) -> JSON | None:
    v = d.get(key)
    if v is None or isinstance(v, Mapping):
        return v
    raise ShapeError(key, "an object", v)


# --------------------------------------------------------------------------- blocks


def structure_block(b: Any) -> ContentBlock:
    """One content block; unknown block types are kept as :class:`UnknownBlock`."""
    if b.__class__ is dict and b.get("type") == "text":
        # The usual block, as JSON decodes it: no ABC isinstance, no attrs __init__.
        text = b.get("text")
        if text.__class__ is str:
            return _new_text_block(text)
    if not isinstance(b, Mapping):
        if isinstance(b, str):  # a bare string inside a content array
            return TextBlock(b)
        raise ShapeError("content[]", "an object", b)
    t = b.get("type")
    if t == "text":
        text = b.get("text")
        if text.__class__ is not str:
            if text is None:
                text = ""
            elif not isinstance(text, str):
                raise ShapeError("content[].text", "a string", text)
        return TextBlock(text)
    if t == "image":
        return ImageBlock(_obj(b, "source") or {})
    if t == "document":
        return DocumentBlock(
            _obj(b, "source") or {}, title=_str(b, "title"), context=_str(b, "context")
        )
    if t is None or isinstance(t, str):
        return UnknownBlock(t or "", b)
    raise ShapeError("content[].type", "a string", t)


def _blocks(d: JSON, key: str = "content") -> tuple[ContentBlock, ...]:
    v = d.get(key)
    if v is None:
        return ()
    if v.__class__ is list:
        if len(v) == 1:  # the common case, without a generator
            return (structure_block(v[0]),)
        return tuple(structure_block(b) for b in v)
    if isinstance(v, str):
        return (TextBlock(v),) if v else ()
    if isinstance(v, list | tuple):
        return tuple(structure_block(b) for b in v)
    if isinstance(v, Mapping):
        return (structure_block(v),)
    raise ShapeError(key, "a list of content blocks or a string", v)


def _unstructure_block(b: ContentBlock) -> dict[str, Any]:
    if isinstance(b, TextBlock):
        return {"type": "text", "text": b.text}
    if isinstance(b, ImageBlock):
        return {"type": "image", "source": dict(b.source)}
    if isinstance(b, DocumentBlock):
        out: dict[str, Any] = {"type": "document", "source": dict(b.source)}
        if b.title is not None:
            out["title"] = b.title
        if b.context is not None:
            out["context"] = b.context
        return out
    return dict(b.raw) if b.raw else {"type": b.type}


# --------------------------------------------------------------------------- small value types


def structure_usage(u: Any, where: str = "usage") -> Usage | None:
    """A usage object (``model_usage``/``usage``); ``None`` stays ``None``."""
    if u is None:
        return None
    if not isinstance(u, Mapping):
        raise ShapeError(where, "an object", u)
    credits = _num(u, "credits")
    if credits is None:
        credits = _num(u, "total_credits")
    return Usage(
        input_tokens=_int(u, "input_tokens"),
        output_tokens=_int(u, "output_tokens"),
        cache_read_input_tokens=_int(u, "cache_read_input_tokens"),
        cache_creation_input_tokens=_int(u, "cache_creation_input_tokens"),
        credits=credits,
        raw=u,
    )


_END_TURN = EndTurn()
_RETRIES_EXHAUSTED = RetriesExhausted()
_BUDGET_REACHED = BudgetReached()


def structure_stop_reason(v: Any) -> StopReason:
    """A stop reason; absent means ``end_turn`` (older servers send only ``status: idle``)."""
    if v is None:
        return _END_TURN
    if isinstance(v, str):  # tolerate a bare string
        v = {"type": v}
    if not isinstance(v, Mapping):
        raise ShapeError("stop_reason", "an object", v)
    t = v.get("type")
    if t == "end_turn":
        return _END_TURN
    if t == "requires_action":
        ids = v.get("event_ids") or ()
        if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
            raise ShapeError("stop_reason.event_ids", "a list of strings", ids)
        return RequiresAction(tuple(ids))
    if t == "retries_exhausted":
        return _RETRIES_EXHAUSTED
    if t == "budget_reached":
        return _BUDGET_REACHED
    if t is None or isinstance(t, str):
        return UnknownStopReason(t or "", v)
    raise ShapeError("stop_reason.type", "a string", t)


def structure_error_info(d: JSON) -> ErrorInfo:
    """The ``error`` of a ``session.error``: an object, or the older string + ``code``."""
    err = d.get("error")
    if isinstance(err, Mapping):
        retry = err.get("retry_status")
        retry_type: str | None
        if isinstance(retry, Mapping):
            retry_type = _str(retry, "type")
        elif retry is None or isinstance(retry, str):
            retry_type = retry
        else:
            raise ShapeError("error.retry_status", "an object", retry)
        return ErrorInfo(
            type=_str(err, "type") or "unknown_error",
            message=_str(err, "message") or "",
            retry_status=retry_type,
            code=_str(err, "code"),
            raw=err,
        )
    if err is None or isinstance(err, str):
        code = _str(d, "code")
        return ErrorInfo(type=code or "unknown_error", message=err or "", code=code, raw=d)
    raise ShapeError("error", "an object or a string", err)


# --------------------------------------------------------------------------- fast constructors

_T_event = TypeVar("_T_event", bound=BaseEvent)


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    owner = next(c for c in cls.__mro__ if name in vars(c))
    setter: Callable[[Any, Any], None] = vars(owner)[name].__set__
    return setter


def fast_constructor(cls: type[_T_event]) -> Callable[..., _T_event]:
    """A constructor of ``cls`` taking every field positionally, in ``attrs.fields`` order.

    It sets the slots directly, skipping ``__init__`` (and so converters and
    defaults): only for values already checked and normalised, as the hooks
    below do. About twice as fast as the attrs constructor on the hot path.
    """
    names = [f.name for f in attrs_fields(cls)]
    args = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f"    s{i}(o, v{i})\n" for i in range(len(names)))
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    namespace.update({f"s{i}": _slot_setter(cls, n) for i, n in enumerate(names)})
    exec(f"def build({args}):\n    o = new(cls)\n{body}    return o\n", namespace)
    build: Callable[..., _T_event] = namespace["build"]
    build.__name__ = f"new_{cls.__name__}"
    build.__doc__ = f"{cls.__name__}({', '.join(names)}), fields positional, unchecked."
    return build


# Typed for events, but any attrs class with slots builds the same way.
_new_text_block = fast_constructor(TextBlock)  # type: ignore[type-var]


# --------------------------------------------------------------------------- events


def _head(d: JSON) -> tuple[str | None, str | None, str | None, str | None, JSON]:
    """The fields every event has, checked: id, turn_id, processed_at, thread, raw."""
    get = d.get
    ident, turn, at, thread = (
        get("id"),
        get("turn_id"),
        get("processed_at"),
        get("session_thread_id"),
    )
    if (
        (ident is None or ident.__class__ is str)
        and (turn is None or turn.__class__ is str)
        and (at is None or at.__class__ is str)
        and (thread is None or thread.__class__ is str)
    ):
        return ident, turn, at, thread, d
    return (
        _str(d, "id"),
        _str(d, "turn_id"),
        _str(d, "processed_at"),
        _str(d, "session_thread_id"),
        d,
    )


_new_agent_message = fast_constructor(AgentMessage)


def _agent_message(d: JSON, _: object = None) -> AgentMessage:
    # The hot path: one text block is kept as its string (``content`` builds the
    # block on access), a retained message is then one object for the GC. The
    # checks of ``_head`` are inlined here: this runs for most events of a stream.
    get = d.get
    content = get("content")
    if content.__class__ is list and len(content) == 1:
        block = content[0]
        if block.__class__ is dict and block.get("type") == "text":
            text = block.get("text")
            ident, turn, at, thread = (
                get("id"),
                get("turn_id"),
                get("processed_at"),
                get("session_thread_id"),
            )
            if (
                text.__class__ is str
                and (ident.__class__ is str or ident is None)
                and (turn.__class__ is str or turn is None)
                and (at.__class__ is str or at is None)
                and (thread is None or thread.__class__ is str)
            ):
                return _new_agent_message(ident, turn, at, thread, d, text)
            if text.__class__ is str:
                return _new_agent_message(*_head(d), text)
    return _new_agent_message(*_head(d), _blocks(d))


_new_thinking = fast_constructor(AgentThinking)


def _agent_thinking(d: JSON, _: object = None) -> AgentThinking:
    key = "thinking"
    text = d.get(key)
    if text is None:
        key = "content"
        text = d.get(key)
    if isinstance(text, list):
        parts: list[str] = []
        for block in _blocks(d, key):
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, UnknownBlock):
                part = block.raw.get("thinking")
                if part is not None and not isinstance(part, str):
                    raise ShapeError(f"{key}[].thinking", "a string", part)
                parts.append(part or "")
        text = "".join(parts)
    if text is not None and not isinstance(text, str):
        raise ShapeError(key, "a string", text)
    return _new_thinking(*_head(d), text)


def _tool_input(d: JSON, *keys: str) -> Mapping[str, Any]:
    for key in keys:
        v = d.get(key)
        if v is None:
            continue
        if isinstance(v, Mapping):
            return v
        raise ShapeError(key, "an object", v)
    return {}


def _tool_name(d: JSON, key: str = "name") -> str:
    name = _str(d, key)
    if name is None:
        name = _str(d, "tool_name")
    return name or ""


def _str_or_empty(d: JSON, key: str) -> str:
    return _str(d, key) or ""


def _int_or_zero(d: JSON, key: str) -> int:
    return _int(d, key) or 0


def _stop(d: JSON, key: str) -> StopReason:
    return structure_stop_reason(d.get(key))


def _usage(d: JSON, key: str) -> Usage | None:
    return structure_usage(d.get(key), key)


def _usage_or_empty(d: JSON, key: str) -> Usage:
    return structure_usage(d.get(key), key) or Usage()


def _error(d: JSON, _key: str) -> ErrorInfo:
    return structure_error_info(d)


def _str_in(d: JSON, obj_key: str, key: str) -> str | None:
    """A string field of the nested object ``obj_key`` (absent object: ``None``)."""
    return _str(_obj(d, obj_key) or {}, key)


def _any_str(d: JSON, *keys: str) -> str:
    """The first of ``keys`` that is a non-empty string, else ``""``."""
    for key in keys:
        v = _str(d, key)
        if v:
            return v
    return ""


Hook = Callable[..., Event]
Reader = tuple[Any, ...]
"""A field of a spec row: ``(read, *args)``, called as ``read(d, *args)``."""

# The readers of the spec rows: string, string or "", int, int or 0, bool, content blocks.
S, S_, N, N0, B, C = _str, _str_or_empty, _int, _int_or_zero, _bool, _blocks


def _hook(cls: type[BaseEvent], *readers: Reader) -> Hook:
    """The hook of ``cls``: ``new(*_head(d), read(d, *args), ...)``, one reader per field.

    Generated as source, so it runs as fast as one written out by hand; the
    readers must cover the class's fields after the head, in order.
    """
    names = [f.name for f in attrs_fields(cls)][5:]
    if len(names) != len(readers):
        raise TypeError(f"{cls.__name__}: readers for {names}, got {len(readers)}")
    namespace: dict[str, Any] = {"new": fast_constructor(cls), "head": _head}
    calls = []
    for i, (read, *args) in enumerate(readers):
        namespace[f"r{i}"] = read
        calls.append(f"r{i}(d, {', '.join(map(repr, args))})")
    source = f"def hook(d, _=None):\n    return new(*head(d), {', '.join(calls)})\n"
    exec(source, namespace)
    hook: Hook = namespace["hook"]
    hook.__name__ = f"structure_{cls.__name__}"
    return hook


_HOOK_SPECS: tuple[tuple[type[BaseEvent], tuple[Reader, ...]], ...] = (
    (UserMessage, ((C, "content"),)),
    (SystemMessage, ((C, "content"),)),
    (UserInterrupt, ((S, "reason"),)),
    (UserToolResult, ((S_, "tool_use_id"), (C, "content"), (B, "is_error"))),
    (
        UserCustomToolResult,
        ((_any_str, "custom_tool_use_id", "tool_use_id"), (C, "content"), (B, "is_error")),
    ),
    (AgentCustomToolUse, ((_tool_name, "name"), (_tool_input, "input", "tool_input"))),
    (
        AgentMCPToolUse,
        ((S_, "name"), (_tool_input, "input"), (S, "mcp_server_name"), (S, "evaluated_permission")),
    ),
    (AgentMCPToolResult, ((S, "mcp_tool_use_id"), (C, "content"), (B, "is_error"))),
    (AgentThreadMessageSent, ((C, "content"), (S, "to_session_thread_id"), (S, "to_agent_name"))),
    (
        AgentThreadMessageReceived,
        ((C, "content"), (S, "from_session_thread_id"), (S, "from_agent_name")),
    ),
    (AgentThreadContextCompacted, ()),
    (
        AgentArtifactDelivered,
        ((S, "file_id"), (S, "original_filename"), (N, "size"), (S, "content_type")),
    ),
    (SessionStatusRunning, ()),
    (SessionStatusIdle, ((_stop, "stop_reason"),)),
    (SessionStatusRescheduled, ()),
    (SessionErrorEvent, ((_error, "error"),)),
    (SessionUpdated, ()),
    (SessionDeletedEvent, ()),
    (SessionUsage, ((_usage_or_empty, "usage"), (_obj, "budget"))),
    (SessionThreadCreated, ((S, "agent_name"),)),
    (SessionThreadStatusRunning, ((S, "agent_name"),)),
    (SessionThreadStatusIdle, ((S, "agent_name"), (_stop, "stop_reason"))),
    (SessionThreadStatusRescheduled, ((S, "agent_name"),)),
    (SessionThreadStatusTerminated, ((S, "agent_name"),)),
    (SpanModelRequestStart, ((S, "model"), (S, "span_id"))),
    (SpanOutcomeEvaluationStart, ((S, "outcome_id"), (N, "iteration"))),
    (SpanOutcomeEvaluationOngoing, ((S, "outcome_id"), (N, "iteration"))),
    (
        SpanOutcomeEvaluationEnd,
        (
            (S, "outcome_id"),
            (N, "iteration"),
            (S, "result"),
            (S, "explanation"),
            (S, "outcome_evaluation_start_id"),
        ),
    ),
    (
        AgentContentBlockStart,
        ((S, "message_id"), (N0, "index"), (_str_in, "content_block", "type")),
    ),
    (AgentContentBlockStop, ((S, "message_id"), (N0, "index"))),
    (AgentMessageDelta, ((S, "message_id"), (_usage, "usage"))),
    (AgentMessageStop, ((S, "message_id"),)),
)
"""The events whose hook only reads each field: one row each, ``(class, readers)``."""


# --------------------------------------------------------------------------- hooks with code

_new_tool_use = fast_constructor(AgentToolUse)


def _agent_tool_use(d: JSON, _: object = None) -> AgentToolUse:
    head = _head(d)
    return _new_tool_use(
        *head,
        _tool_name(d),
        _tool_input(d, "input", "tool_input"),
        _str(d, "evaluated_permission")
        or ("ask" if d.get("requires_confirmation") is True else None),
        _str(d, "tool_use_id") or head[0],
    )


_new_tool_result = fast_constructor(AgentToolResult)


def _agent_tool_result(d: JSON, _: object = None) -> AgentToolResult:
    content = _blocks(d)
    if not content and "output" in d:
        content = _blocks(d, "output")
    return _new_tool_result(*_head(d), _str(d, "tool_use_id"), content, _bool(d, "is_error"))


_new_define_outcome = fast_constructor(UserDefineOutcome)


def _user_define_outcome(d: JSON, _: object = None) -> UserDefineOutcome:
    desc = d.get("description")
    for alt in ("content", "outcome"):
        if desc is None:
            desc = d.get(alt)
    if isinstance(desc, list):
        desc = "".join(b.text for b in _blocks({"content": desc}) if isinstance(b, TextBlock))
    if desc is not None and not isinstance(desc, str):
        raise ShapeError("description", "a string", desc)
    return _new_define_outcome(*_head(d), desc or "", d.get("rubric"), _int(d, "max_iterations"))


_DECISIONS = {"approve": "allow", "approved": "allow", "allow": "allow", "deny": "deny"}
_new_tool_confirmation = fast_constructor(UserToolConfirmation)


def _user_tool_confirmation(d: JSON, _: object = None) -> UserToolConfirmation:
    result = _str(d, "result")
    if result is None:
        decision = _str(d, "decision")
        result = _DECISIONS.get(decision or "", decision or "allow")
    return _new_tool_confirmation(
        *_head(d), _str(d, "tool_use_id") or "", result, _str(d, "deny_message")
    )


_new_terminated = fast_constructor(SessionStatusTerminated)


def _status_terminated(d: JSON, _: object = None) -> SessionStatusTerminated:
    reason = d.get("reason")
    if isinstance(reason, Mapping):  # tolerate a structured reason
        reason = reason.get("message") or reason.get("type")
    if reason is not None and not isinstance(reason, str):
        raise ShapeError("reason", "a string", reason)
    return _new_terminated(*_head(d), reason)


_new_span_end = fast_constructor(SpanModelRequestEnd)


def _span_end(d: JSON, _: object = None) -> SpanModelRequestEnd:
    key = "model_usage" if d.get("model_usage") is not None else "usage"
    return _new_span_end(
        *_head(d),
        _str(d, "model_request_start_id") or _str(d, "span_id"),
        _bool(d, "is_error"),
        structure_usage(d.get(key), key),
    )


_new_event_start = fast_constructor(PreviewStart)


def _event_start(d: JSON, _: object = None) -> PreviewStart:
    preview = _obj(d, "event") or {}
    ident, turn, at, thread, raw = _head(d)
    event_id = _str(preview, "id") or ident
    return _new_event_start(
        ident if ident is not None else event_id, turn, at, thread, raw, event_id,
        _str(preview, "type"),
    )  # fmt: skip


_new_event_delta = fast_constructor(PreviewDelta)


def _event_delta(d: JSON, _: object = None) -> PreviewDelta:
    delta = _obj(d, "delta") or {}
    ident, turn, at, thread, raw = _head(d)
    event_id = _str(d, "event_id") or ident
    content = delta.get("content")
    return _new_event_delta(
        ident if ident is not None else event_id,
        turn,
        at,
        thread,
        raw,
        event_id,
        _int(delta, "index") or 0,
        None if content is None else structure_block(content),
        _str(delta, "type"),
    )


_new_message_start = fast_constructor(AgentMessageStart)


def _message_start(d: JSON, _: object = None) -> AgentMessageStart:
    message_id = _str(d, "message_id")
    if message_id is None:
        message_id = _str(_obj(d, "message") or {}, "id")
    return _new_message_start(*_head(d), message_id)


_new_block_delta = fast_constructor(AgentContentBlockDelta)


def _block_delta(d: JSON, _: object = None) -> AgentContentBlockDelta:
    delta = _obj(d, "delta") or {}
    text = _str(delta, "text")
    if text is None:
        text = _str(delta, "thinking")
    return _new_block_delta(
        *_head(d),
        _str(d, "message_id"),
        _int(d, "index") or 0,
        _str(delta, "type"),
        text or "",
        _str(delta, "partial_json"),
    )


_new_unknown = fast_constructor(UnknownEvent)

EVENT_CLASSES: dict[type[BaseEvent], Hook] = {
    AgentMessage: _agent_message,
    AgentThinking: _agent_thinking,
    AgentToolUse: _agent_tool_use,
    AgentToolResult: _agent_tool_result,
    UserDefineOutcome: _user_define_outcome,
    UserToolConfirmation: _user_tool_confirmation,
    SessionStatusTerminated: _status_terminated,
    SpanModelRequestEnd: _span_end,
    PreviewStart: _event_start,
    PreviewDelta: _event_delta,
    AgentMessageStart: _message_start,
    AgentContentBlockDelta: _block_delta,
    **{cls: _hook(cls, *readers) for cls, readers in _HOOK_SPECS},
}
"""Every event class -> its hook (hand-written where a wire variant needs code)."""

EVENT_HOOKS: dict[str, Hook] = {
    **{cls.type: hook for cls, hook in EVENT_CLASSES.items()},  # type: ignore[misc]
    "terminated": _status_terminated,  # the older catalog's name
}
"""The wire ``type`` -> hook table: the one the stream decoder and :func:`structure_event` run."""


# SSE `event:` names that do not name an event type.
_GENERIC_SSE_EVENTS = frozenset({None, "", "message"})


def structure_event(data: Any, sse_id: str | None = None, sse_event: str | None = None) -> Event:
    """Turn one event's JSON object into its typed model.

    ``sse_id``/``sse_event`` (the frame's ``id:``/``event:`` lines) fill in an
    object that lacks ``id``/``type`` (older servers); the object is completed
    in place, so ``raw`` then carries them too. Unknown types give
    :class:`UnknownEvent`. Raises :class:`ShapeError` for values of the wrong type.
    """
    if data.__class__ is not dict and not isinstance(data, dict):
        raise ShapeError("event", "a JSON object", data)
    t = data.get("type")
    if t is None:
        # Older servers name the type only in the SSE `event:` line; a frame with
        # neither is kept as an unknown event of the SSE default type.
        t = data["type"] = sse_event if sse_event not in _GENERIC_SSE_EVENTS else "message"
    if sse_id and "id" not in data:
        data["id"] = sse_id
    if t.__class__ is not str and not isinstance(t, str):
        raise ShapeError("type", "a string", t)
    hook = EVENT_HOOKS.get(t)
    if hook is None:
        return _new_unknown(*_head(data), t)
    return hook(data)


# --------------------------------------------------------------------------- outbound

OUTBOUND_TYPES: tuple[type[OutboundEvent], ...] = typing.get_args(OutboundEvent)


_OUTBOUND_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in attrs_fields(cls)[5:]) for cls in OUTBOUND_TYPES
}
"""Each outbound class -> its fields after the head, as posted (their wire names)."""


def unstructure_event(ev: OutboundEvent) -> dict[str, Any]:
    """The JSON object to post for an outbound event (canonical, newest field names).

    Its fields in order, content as blocks, leaving out those that are ``None``.
    """
    names = next((_OUTBOUND_FIELDS[c] for c in type(ev).__mro__ if c in _OUTBOUND_FIELDS), None)
    if names is None:
        raise TypeError(f"{type(ev).__name__} cannot be sent to the API")
    out: dict[str, Any] = {"type": ev.type}
    for name in names:
        value = getattr(ev, name)
        if name == "content":
            out[name] = [_unstructure_block(b) for b in value]
        elif value is not None:
            out[name] = value
    if ev.session_thread_id is not None:
        out["session_thread_id"] = ev.session_thread_id
    return out


# --------------------------------------------------------------------------- resources
#
# Resources go through hooks cattrs generates from the attrs classes, with strict
# scalars (a number where a string belongs is an error, not "5"), after the
# documented variants are normalised (an agent object or id, instructions or
# system...). ``raw`` is the object as received.


def _require_id(d: Any, kind: str) -> str:
    if not isinstance(d, Mapping):
        raise ShapeError(kind, "a JSON object", d, local="")
    ident = d.get("id")
    if not ident or not isinstance(ident, str):
        raise ShapeError(f"{kind}.id", "a non-empty string", ident, local="id")
    return ident


def _strict(expected: str, ok: Callable[[Any], bool]) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if ok(value):
            return value
        raise ShapeError("", expected, value)  # the attribute is named by cattrs' note

    return hook


def _float(value: Any, _: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ShapeError("", "a number", value)


def _shape_error(exc: BaseException, kind: str) -> ShapeError:
    """The :class:`ShapeError` for a cattrs validation error, naming the (first) field."""
    where, leaf = kind, exc
    while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
        leaf = leaf.exceptions[0]
        for note in getattr(leaf, "__notes__", ()):
            name, index = getattr(note, "name", None), getattr(note, "index", None)
            if isinstance(name, str):
                where = name if where == kind else f"{where}.{name}"
            elif isinstance(index, int):
                where = f"{where}[{index}]"
    if isinstance(leaf, ShapeError):
        inner = leaf.where if leaf.local is None else leaf.local
        if not inner:
            return leaf.at(where)
        if where == kind or inner == where or inner.startswith(where + "."):
            return leaf
        return leaf.at(f"{where}.{inner}")  # a field of a nested object
    return ShapeError(where, "a valid value", None)


def _list(d: JSON, key: str) -> list[Any] | tuple[Any, ...]:
    v = d.get(key)
    if v is None:
        return ()
    if not isinstance(v, list | tuple):
        raise ShapeError(key, "a list", v)
    return v


def _field_of(read: Callable[[JSON, str], _T], obj: JSON, where: str, key: str) -> _T:
    """A field of the nested object ``where``, read by ``read`` (``_str``, ``_int``)."""
    try:
        return read(obj, key)
    except ShapeError as exc:
        raise exc.at(f"{where}.{key}") from None


def _env_vars(d: JSON) -> Any:
    """``environment_variables``: an object, or the ``"K=V"`` lines form."""
    v = d.get("environment_variables")
    if v is None:
        return {}
    if isinstance(v, str):
        pairs = (line.partition("=") for line in v.splitlines() if line.strip())
        return {k.strip(): value for k, _, value in pairs}
    return v


def _normalised_session(d: JSON) -> dict[str, Any]:
    agent = d.get("agent")
    agent_id = _str(d, "agent_id")
    if agent_id is None:
        if isinstance(agent, str):
            agent_id = agent
        elif isinstance(agent, Mapping):
            agent_id = _field_of(_str, agent, "agent", "id")
    snapshot: Any = None
    if isinstance(agent, Mapping):
        if agent.get("id") is not None:
            snapshot = agent
        elif agent_id is not None:  # a snapshot without its id is the session's agent
            snapshot = {**agent, "id": agent_id}
    elif agent is not None and not isinstance(agent, str):
        raise ShapeError("agent", "an agent id or an agent object", agent)
    return {
        **d,
        "agent_id": agent_id,
        "agent": snapshot,
        "resources": _list(d, "resources"),
        "vault_ids": _list(d, "vault_ids"),
        "memory_store_ids": _list(d, "memory_store_ids"),
        "environment_variables": _env_vars(d),
        "outcome_evaluations": _list(d, "outcome_evaluations"),
    }


def _model_config(model: Any) -> ModelConfig | None:
    """An agent's ``model``: an id string or an ``{id, effective_context_window}`` object."""
    if model is None:
        return None
    if isinstance(model, str):
        return ModelConfig(id=model, raw={"id": model})
    if not isinstance(model, Mapping):
        raise ShapeError("model", "a string or an object", model)
    return ModelConfig(
        id=_field_of(_str, model, "model", "id"),
        effective_context_window=_field_of(_int, model, "model", "effective_context_window"),
        raw=model,
    )


def _normalised_agent(d: JSON) -> dict[str, Any]:
    config = _model_config(d.get("model"))
    tools = d.get("tools") or ()
    if not isinstance(tools, list | tuple):
        raise ShapeError("tools", "a list", tools)
    return {
        **d,
        "model": None if config is None else config.id,
        "model_config": config,
        "system": _str(d, "system") or _str(d, "instructions"),
        "tools": tools,
        "mcp_servers": _list(d, "mcp_servers"),
        "skills": _list(d, "skills"),
    }


def _normalised_thread(d: JSON) -> dict[str, Any]:
    agent = _obj(d, "agent") or {}
    name = _str(d, "agent_name")
    if name is None:
        name = _field_of(_str, agent, "agent", "name")
    snapshot = agent if agent.get("id") is not None else None
    return {**d, "agent": agent, "agent_name": name, "agent_snapshot": snapshot}


def _normalised_model(d: JSON) -> dict[str, Any]:
    return {
        **d,
        "efforts": _list(d, "efforts"),
        "available_context_windows": _list(d, "available_context_windows"),
    }


def _normalised_file(d: JSON) -> dict[str, Any]:
    return {**d, "mime_type": _str(d, "mime_type") or _str(d, "content_type")}


def _as_is(d: JSON) -> JSON:
    return d


def _normalised_deployment(d: JSON) -> dict[str, Any]:
    env = d.get("environment_variables")
    if env is not None and not isinstance(env, str):
        raise ShapeError("environment_variables", 'a "K=V" lines string', env)
    return {
        **d,
        "environment_variables": env or "",
        "initial_events": _list(d, "initial_events"),
        "resources": _list(d, "resources"),
        "vault_ids": _list(d, "vault_ids"),
    }


def _normalised_dream(d: JSON) -> dict[str, Any]:
    return {**d, "inputs": _list(d, "inputs"), "outputs": _list(d, "outputs")}


#: Secret fields of a credential's ``auth`` (and its ``refresh``) that requests carry.
CREDENTIAL_SECRETS = frozenset(
    {"token", "access_token", "refresh_token", "secret_value", "client_secret", "password"}
)


def _without_secrets(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_secrets(v) for k, v in value.items() if k not in CREDENTIAL_SECRETS}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def _normalised_credential(d: JSON) -> dict[str, Any]:
    # Write-only secrets are dropped before ``auth`` is typed (``raw`` keeps the
    # answer as received, out of the repr).
    auth = d.get("auth")
    return {**d, "auth": _without_secrets(auth) if isinstance(auth, Mapping) else auth}


def _normalised_vault(d: JSON) -> dict[str, Any]:
    return {**d, "credentials": _list(d, "credentials")}


def _normalised_skill(d: JSON) -> dict[str, Any]:
    source = d.get("source")
    if isinstance(source, Mapping):  # the SDK's types allow ``{"type": "custom"}``
        source = _field_of(_str, source, "source", "type")
    return {**d, "source": source}


Normalise = Callable[[JSON], JSON]

_RESOURCES: dict[type, tuple[str, Normalise]] = {
    Session: ("session", _normalised_session),
    Agent: ("agent", _normalised_agent),
    Environment: ("environment", _as_is),
    Deleted: ("deleted object", _as_is),
    SessionResource: ("session resource", _as_is),
    SessionThread: ("thread", _normalised_thread),
    FileMetadata: ("file", _normalised_file),
    ModelInfo: ("model", _normalised_model),
    SessionCancel: ("cancelled session", _as_is),
}
"""Resource class -> (its kind in errors, its normalisation). Their string lists
check each item (an error names its index): they are registered before ``_strings``."""

_MANAGED: dict[type, tuple[str, Normalise]] = {
    Deployment: ("deployment", _normalised_deployment),
    DeploymentRun: ("deployment run", _as_is),
    Dream: ("dream", _normalised_dream),
    Work: ("work", _as_is),
    VaultCredential: ("vault credential", _normalised_credential),
    Vault: ("vault", _normalised_vault),
    Skill: ("skill", _normalised_skill),
    SkillVersion: ("skill version", _as_is),
    MemoryStore: ("memory store", _as_is),
    Memory: ("memory", _as_is),
    MemoryVersion: ("memory version", _as_is),
}
"""The same for the managed resources (deployments... memory stores), registered
after ``_strings`` and after the ``_NESTED`` records they hold."""

_ANSWERS: dict[type, str] = {
    WorkHeartbeat: "work heartbeat",
    WorkQueueStats: "work queue stats",
    CredentialValidation: "credential validation",
}
"""Answers without an id: an object, ``raw`` kept."""

_NESTED: dict[type, str] = {
    ThreadStats: "stats",
    AgentReference: "agent",
    Schedule: "schedule",
    RunError: "error",
    PausedReason: "paused_reason",
    TriggerContext: "trigger_context",
    DreamInput: "input",
    DreamOutput: "output",
    DreamModel: "model",
    WorkData: "data",
    # Inner types first: a generated hook looks up its fields' hooks when made.
    CredentialAuth: "",
    ProbeHTTPResponse: "",
    CredentialRefreshCheck: "",
    MCPProbe: "",
    Actor: "",
}
"""Small nested records (no id, no raw) -> the field an error names."""


def _resource_hook(
    conv: cattrs.Converter, cls: type[_T], kind: str, normalise: Normalise, *, with_id: bool = True
) -> Callable[[Any, Any], _T]:
    generated = make_dict_structure_fn(cls, conv, raw=override(struct_hook=lambda v, _: v))

    def structure(d: Any, _: Any = None) -> _T:
        if with_id:
            _require_id(d, kind)
        elif not isinstance(d, Mapping):
            raise ShapeError(kind, "a JSON object", d, local="")
        value = dict(normalise(d))
        value["raw"] = d
        try:
            return generated(value, cls)
        except Exception as exc:
            raise _shape_error(exc, kind) from None

    structure.__name__ = f"structure_{cls.__name__.lower()}"
    return structure


def _nested_hook(conv: cattrs.Converter, cls: type[_T], kind: str) -> Callable[[Any, Any], _T]:
    generated = make_dict_structure_fn(cls, conv)

    def structure(d: Any, _: Any = None) -> _T:
        if not isinstance(d, Mapping):
            raise ShapeError(kind, "an object", d)
        try:
            return generated(d, None)
        except Exception as exc:
            raise _shape_error(exc, kind) from None

    return structure


def _strings(value: Any, _: Any) -> tuple[str, ...]:
    """A list of strings (not a string, whose characters cattrs would take as items)."""
    if not isinstance(value, list | tuple):
        raise ShapeError("", "a list", value)
    for item in value:
        if item.__class__ is not str:
            raise ShapeError("", "a list of strings", value)
    return tuple(value)


def _structure_as(d: Any, cls: type[BaseEvent]) -> BaseEvent:
    """An event of class ``cls`` (``converter.structure(d, AgentMessage)``), else ShapeError."""
    ev = structure_event(d)
    if not isinstance(ev, cls):
        raise ShapeError("type", f"the type of {cls.__name__}", d.get("type"))
    return ev


def _is_mapping_type(t: Any) -> bool:
    return t in (Mapping, collections.abc.Mapping) or (
        typing.get_origin(t) is collections.abc.Mapping
    )


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict("a string", lambda v: v.__class__ is str))
    conv.register_structure_hook(
        int, _strict("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
    )
    conv.register_structure_hook(bool, _strict("a boolean", lambda v: isinstance(v, bool)))
    conv.register_structure_hook_func(
        _is_mapping_type, _strict("an object", lambda v: isinstance(v, Mapping))
    )
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(Event, lambda d, _: structure_event(d))
    conv.register_structure_hook_func(lambda t: t in EVENT_CLASSES, _structure_as)
    conv.register_structure_hook(
        ModelConfig, lambda d, _: d if isinstance(d, ModelConfig) else _model_config(d)
    )
    conv.register_structure_hook(Usage, lambda d, _: structure_usage(d))
    conv.register_structure_hook(StopReason, lambda d, _: structure_stop_reason(d))
    conv.register_structure_hook(ContentBlock, lambda d, _: structure_block(d))
    for cls, (kind, normalise) in _RESOURCES.items():
        conv.register_structure_hook(cls, _resource_hook(conv, cls, kind, normalise))
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _strings)
    for cls, kind in _NESTED.items():
        conv.register_structure_hook(cls, _nested_hook(conv, cls, kind))
    for cls, (kind, normalise) in _MANAGED.items():
        conv.register_structure_hook(cls, _resource_hook(conv, cls, kind, normalise))
    for cls, kind in _ANSWERS.items():
        conv.register_structure_hook(cls, _resource_hook(conv, cls, kind, _as_is, with_id=False))
    for out_cls in OUTBOUND_TYPES:
        conv.register_unstructure_hook(out_cls, unstructure_event)
    for block_cls in (TextBlock, ImageBlock, DocumentBlock, UnknownBlock):
        conv.register_unstructure_hook(block_cls, _unstructure_block)
    return conv


converter: cattrs.Converter = _make_converter()
"""The single converter: ``converter.structure(obj, Event)``, ``converter.unstructure(ev)``."""


def _structurer(cls: type[_T], doc: str) -> Callable[[Any], _T]:
    def structure(d: Any) -> _T:
        return converter.structure(d, cls)

    structure.__name__ = f"structure_{cls.__name__.lower()}"
    structure.__doc__ = doc
    return structure


structure_session = _structurer(
    Session, "A session; ``agent_id`` from ``agent_id``, an agent object or an agent string."
)
structure_agent = _structurer(
    Agent, 'An agent; ``model`` string or ``{"id": ...}``; ``system`` or ``instructions``.'
)
structure_environment = _structurer(Environment, "An environment.")
structure_thread = _structurer(
    SessionThread, "A sub-agent thread; ``agent_name`` from ``agent_name`` or ``agent.name``."
)
structure_session_resource = _structurer(
    SessionResource, "A session resource (file, repository, memory store)."
)
structure_file = _structurer(
    FileMetadata, "A file's metadata; ``mime_type`` from ``mime_type`` or ``content_type``."
)
structure_model = _structurer(ModelInfo, "A model of ``GET /models``.")
structure_session_cancel = _structurer(
    SessionCancel, "The answer of ``POST /sessions/{id}/cancel`` (``id``, ``status``)."
)
structure_deployment = _structurer(
    Deployment, 'A deployment; ``environment_variables`` stays the ``"K=V"`` lines string.'
)
structure_deployment_run = _structurer(DeploymentRun, "A deployment run.")
structure_dream = _structurer(Dream, "A dream.")
structure_work = _structurer(Work, "A work item of a self-hosted environment.")
structure_work_heartbeat = _structurer(WorkHeartbeat, "The answer to a work item's heartbeat.")
structure_work_queue_stats = _structurer(WorkQueueStats, "A work queue's statistics.")
structure_vault = _structurer(Vault, "A vault (``GET /vaults/{vault_id}``).")
structure_credential = _structurer(
    VaultCredential, "A vault credential; secrets in its ``auth`` are dropped."
)
structure_credential_validation = _structurer(
    CredentialValidation, "The answer of a credential's ``mcp_oauth_validate``."
)
structure_skill = _structurer(Skill, 'A skill; ``source`` a string or ``{"type": ...}``.')
structure_skill_version = _structurer(SkillVersion, "A skill version.")
structure_memory_store = _structurer(MemoryStore, "A memory store.")
structure_memory = _structurer(Memory, "A memory (``content`` is None in the basic view).")
structure_memory_version = _structurer(MemoryVersion, "A memory version.")


def structure_deleted(default_type: str) -> Callable[[Any], Deleted]:
    """The structure function of a delete's answer; ``type`` is ``default_type`` if absent."""

    def structure(d: Any) -> Deleted:
        deleted = converter.structure(d, Deleted)
        return deleted if deleted.type else attrs_evolve(deleted, type=default_type)

    return structure


def structure_memory_item(d: Any) -> Memory | MemoryPrefix:
    """An item of ``GET /memory_stores/{id}/memories``: a memory, or a ``memory_prefix``."""
    if isinstance(d, Mapping) and d.get("type") == "memory_prefix":
        path = d.get("path")
        if not isinstance(path, str):
            raise ShapeError("memory_prefix.path", "a string", path)
        return MemoryPrefix(path=path, raw=d)
    return structure_memory(d)
