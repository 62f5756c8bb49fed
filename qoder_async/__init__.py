"""qoder_async: the asyncio client for Qoder Cloud Agents.

Send a message to an agent session and stream back exactly that turn's events,
reliably, with thousands of sessions in one process::

    from qoder_async import QoderClient

    async with QoderClient() as client:          # token from QODER_PAT
        turn = await client.session("sess_...").send("Help me analyze this code.")
        async for chunk in turn.text_stream():
            print(chunk, end="", flush=True)
        result = await turn.result()

What a program types is here: the client, session handles and turns, results,
errors and a few helpers. Events, content blocks, resources and the request
params TypedDicts are in :mod:`qoder_async.types`; the fleet is in
:mod:`qoder_async.fleet`, webhooks in :mod:`qoder_async.webhooks`, the fake
server in :mod:`qoder_async.testing`. The ``_``-prefixed modules are private.
"""

from qoder_async._api.resources import (
    CallOptions,
    RawResponse,
)
from qoder_async._api.tools import (
    Tool,
    tool,
)
from qoder_async._core.backoff import (
    Backoff,
    ReconnectPolicy,
    RetryPolicy,
)
from qoder_async._core.errors import (
    ActionRequiredError,
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    CursorStoreError,
    FrameTooLargeError,
    IdempotencyConflictError,
    InternalServerError,
    ListenerOverflowError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    QoderError,
    RateLimitError,
    RequestInProgressError,
    RequestTooLargeError,
    ResumeExhaustedError,
    SessionBusyError,
    StreamContentTypeError,
    StreamDecodeError,
    StreamError,
    StreamStalledError,
    ToolResultsNotAwaitedError,
    TurnFailedError,
    UnknownCursorError,
    UnprocessableEntityError,
    WrongEventLoopError,
)
from qoder_async._core.models import (
    Cursor,
    UserMessage,
)
from qoder_async._core.turns import (
    CatchUp,
    ThreadResult,
    ToolCall,
    TurnResult,
)
from qoder_async._core.version import (
    __version__,
)
from qoder_async._shell.eventstream import (
    CursorStore,
    EventStream,
    MemoryCursorStore,
)
from qoder_async._shell.files import (
    FileDownload,
    FileInput,
)
from qoder_async._shell.pagination import (
    AsyncPaginator,
)
from qoder_async._shell.transport import (
    Timeout,
)
from qoder_async._turn.session import (
    EventHandler,
    SessionHandle,
    ToolHandler,
    Turn,
)

from ._client import (
    QoderClient,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "ActionRequiredError",
    "AsyncPaginator",
    "AuthenticationError",
    "Backoff",
    "BadRequestError",
    "CallOptions",
    "CatchUp",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "Cursor",
    "CursorStore",
    "CursorStoreError",
    "EventHandler",
    "EventStream",
    "FileDownload",
    "FileInput",
    "FrameTooLargeError",
    "IdempotencyConflictError",
    "InternalServerError",
    "ListenerOverflowError",
    "MemoryCursorStore",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "QoderClient",
    "QoderError",
    "RateLimitError",
    "RawResponse",
    "ReconnectPolicy",
    "RequestInProgressError",
    "RequestTooLargeError",
    "ResumeExhaustedError",
    "RetryPolicy",
    "SessionBusyError",
    "SessionHandle",
    "StreamContentTypeError",
    "StreamDecodeError",
    "StreamError",
    "StreamStalledError",
    "ThreadResult",
    "Timeout",
    "Tool",
    "ToolCall",
    "ToolHandler",
    "ToolResultsNotAwaitedError",
    "Turn",
    "TurnFailedError",
    "TurnResult",
    "UnknownCursorError",
    "UnprocessableEntityError",
    "UserMessage",
    "WrongEventLoopError",
    "__version__",
    "tool",
]
