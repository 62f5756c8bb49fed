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

from ._backoff import (
    Backoff,
    ReconnectPolicy,
    RetryPolicy,
)
from ._client import (
    QoderClient,
)
from ._errors import (
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
from ._eventstream import (
    CursorStore,
    EventStream,
    MemoryCursorStore,
)
from ._files import (
    FileDownload,
    FileInput,
)
from ._models import (
    Cursor,
    UserMessage,
)
from ._pagination import (
    AsyncPaginator,
)
from ._resources import (
    CallOptions,
    RawResponse,
)
from ._session import (
    EventHandler,
    SessionHandle,
    ToolHandler,
    Turn,
)
from ._tools import (
    Tool,
    tool,
)
from ._transport import (
    Timeout,
)
from ._turns import (
    CatchUp,
    ThreadResult,
    ToolCall,
    TurnResult,
)
from ._version import (
    __version__,
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
