"""The public surface is a decision: every public module's ``__all__`` is pinned here.

Adding, removing or renaming a public name means editing this file (and the
CHANGELOG). The top level holds what a program types (the client, handles,
results, errors, a few helpers: at most 80 names); events, content blocks,
resources and params live in ``qoder_async.types``.

Every public exception (exported, or defined in ``qoder_async._core.errors``) is
defined in ``_errors``, appears in the tree drawn in its docstring under its
real base class, and ends in ``Error``; private control-flow exceptions
(``_convert.ShapeError``, ``_http.StreamRetry``...) never reach a caller.
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from qoder_async._core import errors as _errors

PINNED: dict[str, list[str]] = {
    "qoder_async": [
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
    ],
    "qoder_async.types": [
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
        "AgentParams",
        "AgentReference",
        "AgentThinking",
        "AgentThreadContextCompacted",
        "AgentThreadMessageReceived",
        "AgentThreadMessageSent",
        "AgentToolResult",
        "AgentToolUse",
        "AgentToolsetParams",
        "AgentWithOverridesParams",
        "BaseEvent",
        "BranchCheckoutParam",
        "BudgetLimitParam",
        "BudgetReached",
        "CommitCheckoutParam",
        "ContentBlock",
        "CredentialAuth",
        "CredentialRefreshCheck",
        "CredentialValidation",
        "CustomSkillParams",
        "CustomToolParams",
        "Deleted",
        "Deployment",
        "DeploymentRun",
        "DocumentBlock",
        "Dream",
        "DreamInput",
        "DreamInputParams",
        "DreamMemoryStoreInputParams",
        "DreamModel",
        "DreamModelParams",
        "DreamOutput",
        "DreamSessionsInputParams",
        "EndTurn",
        "Environment",
        "ErrorInfo",
        "Event",
        "FileMetadata",
        "FileResourceParams",
        "GitHubRepositoryResourceParams",
        "ImageBlock",
        "MCPProbe",
        "MCPToolsetParams",
        "Memory",
        "MemoryPrefix",
        "MemoryStore",
        "MemoryStoreResourceParams",
        "MemoryVersion",
        "ModelConfig",
        "ModelInfo",
        "OutboundEvent",
        "OutputBehaviorParams",
        "Page",
        "PausedReason",
        "PreviewDelta",
        "PreviewStart",
        "ProbeHTTPResponse",
        "QoderSkillParams",
        "RequiresAction",
        "RetriesExhausted",
        "RunError",
        "Schedule",
        "ScheduleParams",
        "Session",
        "SessionAgentUpdateParams",
        "SessionCancel",
        "SessionDeletedEvent",
        "SessionErrorEvent",
        "SessionResource",
        "SessionResourceParams",
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
        "SkillParams",
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
        "ToolParams",
        "TriggerContext",
        "URLMCPServerParams",
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
    ],
    "qoder_async.fleet": [
        "DEFAULT_LEDGER_TTL",
        "WORK_WINDOW",
        "Claim",
        "Coordinator",
        "CoordinatorUnavailableError",
        "Delivery",
        "Fleet",
        "FleetCursor",
        "Handler",
        "InFlight",
        "LeaseLostError",
        "MemoryCoordinator",
        "RedisCoordinator",
        "SessionInfo",
        "ToolRecord",
        "ToolState",
        "WorkerLoad",
    ],
    "qoder_async.webhooks": [
        "DEFAULT_TOLERANCE",
        "ScheduleRunWebhookData",
        "SessionWebhookData",
        "UnknownWebhookData",
        "UnknownWebhookEvent",
        "WebhookData",
        "WebhookEvent",
        "WebhookHeaderError",
        "WebhookPayloadError",
        "WebhookSecretError",
        "WebhookSignatureError",
        "WebhookTimestampError",
        "WebhookVerificationError",
        "parse",
        "sign",
        "unwrap",
        "verify",
    ],
    "qoder_async.testing": [
        "CannedResponse",
        "Dialect",
        "FakeQoderServer",
        "Faults",
        "RecordedRequest",
        "Script",
        "StopReasonJSON",
        "TurnContext",
        "WebhookDelivery",
        "default_script",
        "multiagent_script",
        "record",
        "subagent_tool_script",
        "tool_script",
    ],
}
# Only the message a program sends is in both places (the catalog of events is complete).
IN_BOTH = {"UserMessage"}


@pytest.mark.parametrize("module", sorted(PINNED))
def test_all_is_pinned_and_documented(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__ == PINNED[module], "an export is a decision: update PINNED and CHANGELOG"
    assert len(set(mod.__all__)) == len(mod.__all__)
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{module}.{name} has no docstring"


def test_the_top_level_holds_at_most_80_names_and_types_the_rest() -> None:
    top, types = set(PINNED["qoder_async"]), set(PINNED["qoder_async.types"])
    assert len(top) <= 80
    assert top & types == IN_BOTH


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module, names in PINNED.items():
        mod = importlib.import_module(module)
        for name in names:
            obj = getattr(mod, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                found[name] = obj
    for name, obj in vars(_errors).items():
        if (
            inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == _errors.__name__
        ):
            found[name] = obj
    return found


def _drawn_tree() -> dict[str, str | None]:
    """name -> parent, read from the tree in ``_errors``'s docstring."""
    doc = _errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = re.match(r"^    ((?:[│ ]   )*)(?:[├└]── )?([A-Z]\w*(?:Error|Exception))\b", line)
        if not m:
            continue
        depth = len(m.group(1)) // 4 + (1 if "──" in line else 0)
        name = m.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def test_every_exception_is_in_errors_in_the_drawn_tree_and_ends_in_error() -> None:
    tree = _drawn_tree()
    assert tree["QoderError"] is None
    for name, cls in _exception_classes().items():
        assert cls.__module__ == _errors.__name__, f"{name} is defined outside _errors"
        assert name.endswith("Error"), name
        assert name in tree, f"{name} is not in the tree drawn in _errors"
        if name != "QoderError":
            parent = tree[name]
            assert parent is not None
            assert getattr(_errors, parent) in cls.__bases__, f"{name} is drawn under {parent}"
    assert set(tree) <= set(_exception_classes()), "the tree draws a class that does not exist"


def test_the_drawn_tree_is_read_as_drawn() -> None:
    tree = _drawn_tree()
    assert tree["APIError"] == "QoderError"
    assert tree["SessionBusyError"] == "ConflictError"
    assert tree["OverloadedError"] == "InternalServerError"
    assert tree["WebhookPayloadError"] == "WebhookVerificationError"
    assert len(tree) == len(set(tree)) >= 40


def test_define_outcome_takes_every_option_of_send() -> None:
    """One way to send: a wrapper takes what it wraps (``SendOptions`` is send's keywords)."""
    from qoder_async._turn.session import SendOptions, SessionHandle

    keywords = {
        name
        for name, p in inspect.signature(SessionHandle.send).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert set(SendOptions.__annotations__) == keywords
    outcome = inspect.signature(SessionHandle.define_outcome).parameters
    assert outcome["options"].kind is inspect.Parameter.VAR_KEYWORD


def test_a_method_has_one_name() -> None:
    """Files follow the official SDK: ``retrieve_metadata``, without a second name."""
    from qoder_async._api.resources import Files

    assert hasattr(Files, "retrieve_metadata")
    assert not hasattr(Files, "retrieve")
