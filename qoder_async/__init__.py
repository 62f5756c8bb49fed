"""qoder_async: the asyncio client for Qoder Cloud Agents.

Send a message to an agent session and stream back exactly that turn's events,
reliably, with thousands of sessions in one process::

    from qoder_async import QoderClient

    async with QoderClient() as client:          # token from QODER_PAT
        turn = await client.session("sess_...").send("Help me analyze this code.")
        async for chunk in turn.text_stream():
            print(chunk, end="", flush=True)
        result = await turn.result()

Everything public is re-exported here; the ``_``-prefixed modules are private.
"""

from ._backoff import (
    Backoff as Backoff,
)
from ._backoff import (
    ReconnectPolicy as ReconnectPolicy,
)
from ._backoff import (
    RetryPolicy as RetryPolicy,
)
from ._client import (
    AsyncPaginator as AsyncPaginator,
)
from ._client import (
    CursorStore as CursorStore,
)
from ._client import (
    EventStream as EventStream,
)
from ._client import (
    MemoryCursorStore as MemoryCursorStore,
)
from ._client import (
    QoderClient as QoderClient,
)
from ._errors import (
    APIConnectionError as APIConnectionError,
)
from ._errors import (
    APIError as APIError,
)
from ._errors import (
    APIResponseValidationError as APIResponseValidationError,
)
from ._errors import (
    APIStatusError as APIStatusError,
)
from ._errors import (
    APITimeoutError as APITimeoutError,
)
from ._errors import (
    AuthenticationError as AuthenticationError,
)
from ._errors import (
    BadRequestError as BadRequestError,
)
from ._errors import (
    ClientClosedError as ClientClosedError,
)
from ._errors import (
    ConfigurationError as ConfigurationError,
)
from ._errors import (
    ConflictError as ConflictError,
)
from ._errors import (
    FrameTooLargeError as FrameTooLargeError,
)
from ._errors import (
    IdempotencyConflictError as IdempotencyConflictError,
)
from ._errors import (
    InternalServerError as InternalServerError,
)
from ._errors import (
    NotFoundError as NotFoundError,
)
from ._errors import (
    PermissionDeniedError as PermissionDeniedError,
)
from ._errors import (
    QoderError as QoderError,
)
from ._errors import (
    RateLimitError as RateLimitError,
)
from ._errors import (
    ResumeExhaustedError as ResumeExhaustedError,
)
from ._errors import (
    SessionBusyError as SessionBusyError,
)
from ._errors import (
    StreamContentTypeError as StreamContentTypeError,
)
from ._errors import (
    StreamDecodeError as StreamDecodeError,
)
from ._errors import (
    StreamError as StreamError,
)
from ._errors import (
    StreamStalledError as StreamStalledError,
)
from ._errors import (
    TurnFailed as TurnFailed,
)
from ._errors import (
    UnprocessableEntityError as UnprocessableEntityError,
)
from ._models import (
    Accepted as Accepted,
)
from ._models import (
    Agent as Agent,
)
from ._models import (
    AgentArtifactDelivered as AgentArtifactDelivered,
)
from ._models import (
    AgentContentBlockDelta as AgentContentBlockDelta,
)
from ._models import (
    AgentContentBlockStart as AgentContentBlockStart,
)
from ._models import (
    AgentContentBlockStop as AgentContentBlockStop,
)
from ._models import (
    AgentCustomToolUse as AgentCustomToolUse,
)
from ._models import (
    AgentMCPToolResult as AgentMCPToolResult,
)
from ._models import (
    AgentMCPToolUse as AgentMCPToolUse,
)
from ._models import (
    AgentMessage as AgentMessage,
)
from ._models import (
    AgentMessageDelta as AgentMessageDelta,
)
from ._models import (
    AgentMessageStart as AgentMessageStart,
)
from ._models import (
    AgentMessageStop as AgentMessageStop,
)
from ._models import (
    AgentThinking as AgentThinking,
)
from ._models import (
    AgentThreadContextCompacted as AgentThreadContextCompacted,
)
from ._models import (
    AgentThreadMessageReceived as AgentThreadMessageReceived,
)
from ._models import (
    AgentThreadMessageSent as AgentThreadMessageSent,
)
from ._models import (
    AgentToolResult as AgentToolResult,
)
from ._models import (
    AgentToolUse as AgentToolUse,
)
from ._models import (
    BaseEvent as BaseEvent,
)
from ._models import (
    BudgetReached as BudgetReached,
)
from ._models import (
    ContentBlock as ContentBlock,
)
from ._models import (
    DeletedSession as DeletedSession,
)
from ._models import (
    DocumentBlock as DocumentBlock,
)
from ._models import (
    EndTurn as EndTurn,
)
from ._models import (
    Environment as Environment,
)
from ._models import (
    ErrorInfo as ErrorInfo,
)
from ._models import (
    Event as Event,
)
from ._models import (
    EventDelta as EventDelta,
)
from ._models import (
    EventStart as EventStart,
)
from ._models import (
    ImageBlock as ImageBlock,
)
from ._models import (
    OutboundEvent as OutboundEvent,
)
from ._models import (
    RequiresAction as RequiresAction,
)
from ._models import (
    RetriesExhausted as RetriesExhausted,
)
from ._models import (
    Session as Session,
)
from ._models import (
    SessionDeleted as SessionDeleted,
)
from ._models import (
    SessionError as SessionError,
)
from ._models import (
    SessionStatusIdle as SessionStatusIdle,
)
from ._models import (
    SessionStatusRescheduled as SessionStatusRescheduled,
)
from ._models import (
    SessionStatusRunning as SessionStatusRunning,
)
from ._models import (
    SessionStatusTerminated as SessionStatusTerminated,
)
from ._models import (
    SessionThreadCreated as SessionThreadCreated,
)
from ._models import (
    SessionThreadStatusIdle as SessionThreadStatusIdle,
)
from ._models import (
    SessionThreadStatusRescheduled as SessionThreadStatusRescheduled,
)
from ._models import (
    SessionThreadStatusRunning as SessionThreadStatusRunning,
)
from ._models import (
    SessionThreadStatusTerminated as SessionThreadStatusTerminated,
)
from ._models import (
    SessionUpdated as SessionUpdated,
)
from ._models import (
    SessionUsage as SessionUsage,
)
from ._models import (
    SpanModelRequestEnd as SpanModelRequestEnd,
)
from ._models import (
    SpanModelRequestStart as SpanModelRequestStart,
)
from ._models import (
    SpanOutcomeEvaluationEnd as SpanOutcomeEvaluationEnd,
)
from ._models import (
    SpanOutcomeEvaluationOngoing as SpanOutcomeEvaluationOngoing,
)
from ._models import (
    SpanOutcomeEvaluationStart as SpanOutcomeEvaluationStart,
)
from ._models import (
    StopReason as StopReason,
)
from ._models import (
    SystemMessage as SystemMessage,
)
from ._models import (
    TextBlock as TextBlock,
)
from ._models import (
    UnknownBlock as UnknownBlock,
)
from ._models import (
    UnknownEvent as UnknownEvent,
)
from ._models import (
    UnknownStopReason as UnknownStopReason,
)
from ._models import (
    Usage as Usage,
)
from ._models import (
    UserCustomToolResult as UserCustomToolResult,
)
from ._models import (
    UserDefineOutcome as UserDefineOutcome,
)
from ._models import (
    UserInterrupt as UserInterrupt,
)
from ._models import (
    UserMessage as UserMessage,
)
from ._models import (
    UserToolConfirmation as UserToolConfirmation,
)
from ._models import (
    UserToolResult as UserToolResult,
)
from ._session import (
    EventHandler as EventHandler,
)
from ._session import (
    SessionHandle as SessionHandle,
)
from ._session import (
    ToolHandler as ToolHandler,
)
from ._session import (
    Turn as Turn,
)
from ._turns import (
    ToolCall as ToolCall,
)
from ._turns import (
    TurnResult as TurnResult,
)
from ._version import __version__ as __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "Accepted",
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
    "AgentThinking",
    "AgentThreadContextCompacted",
    "AgentThreadMessageReceived",
    "AgentThreadMessageSent",
    "AgentToolResult",
    "AgentToolUse",
    "AsyncPaginator",
    "AuthenticationError",
    "Backoff",
    "BadRequestError",
    "BaseEvent",
    "BudgetReached",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "ContentBlock",
    "CursorStore",
    "DeletedSession",
    "DocumentBlock",
    "EndTurn",
    "Environment",
    "ErrorInfo",
    "Event",
    "EventDelta",
    "EventHandler",
    "EventStart",
    "EventStream",
    "FrameTooLargeError",
    "IdempotencyConflictError",
    "ImageBlock",
    "InternalServerError",
    "MemoryCursorStore",
    "NotFoundError",
    "OutboundEvent",
    "PermissionDeniedError",
    "QoderClient",
    "QoderError",
    "RateLimitError",
    "ReconnectPolicy",
    "RequiresAction",
    "ResumeExhaustedError",
    "RetriesExhausted",
    "RetryPolicy",
    "Session",
    "SessionBusyError",
    "SessionDeleted",
    "SessionError",
    "SessionHandle",
    "SessionStatusIdle",
    "SessionStatusRescheduled",
    "SessionStatusRunning",
    "SessionStatusTerminated",
    "SessionThreadCreated",
    "SessionThreadStatusIdle",
    "SessionThreadStatusRescheduled",
    "SessionThreadStatusRunning",
    "SessionThreadStatusTerminated",
    "SessionUpdated",
    "SessionUsage",
    "SpanModelRequestEnd",
    "SpanModelRequestStart",
    "SpanOutcomeEvaluationEnd",
    "SpanOutcomeEvaluationOngoing",
    "SpanOutcomeEvaluationStart",
    "StopReason",
    "StreamContentTypeError",
    "StreamDecodeError",
    "StreamError",
    "StreamStalledError",
    "SystemMessage",
    "TextBlock",
    "ToolCall",
    "ToolHandler",
    "Turn",
    "TurnFailed",
    "TurnResult",
    "UnknownBlock",
    "UnknownEvent",
    "UnknownStopReason",
    "UnprocessableEntityError",
    "Usage",
    "UserCustomToolResult",
    "UserDefineOutcome",
    "UserInterrupt",
    "UserMessage",
    "UserToolConfirmation",
    "UserToolResult",
    "__version__",
]
