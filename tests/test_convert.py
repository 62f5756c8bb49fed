"""The converter: every documented wire variant gives the same typed shape.

Each fixture in ``tests/fixtures/events/`` is one documented variant
(``{"doc", "sse_id", "sse_event", "data"}``); the tests below write the
expected typed result out in full. Sources are named in each fixture's
``doc`` (sections of qoder-api.md).
"""

from __future__ import annotations

import copy
import json
import operator
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoder_async import QoderClient
from qoder_async._core.convert import (
    EVENT_CLASSES,
    EVENT_HOOKS,
    ShapeError,
    _hook,
    converter,
    fast_constructor,
    structure_agent,
    structure_block,
    structure_deleted,
    structure_environment,
    structure_event,
    structure_session,
    unstructure_event,
)
from qoder_async._core.convert import S as str_reader
from qoder_async._core.models import (
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
    AgentThinking,
    AgentThreadContextCompacted,
    AgentThreadMessageReceived,
    AgentThreadMessageSent,
    AgentToolResult,
    AgentToolUse,
    BudgetReached,
    ContentBlock,
    Deleted,
    DocumentBlock,
    EndTurn,
    Environment,
    ErrorInfo,
    Event,
    ImageBlock,
    OutboundEvent,
    PreviewDelta,
    PreviewStart,
    RequiresAction,
    RetriesExhausted,
    Session,
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
    SpanModelRequestStart,
    SpanOutcomeEvaluationEnd,
    SpanOutcomeEvaluationOngoing,
    SpanOutcomeEvaluationStart,
    StopReason,
    SystemMessage,
    TextBlock,
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
)
from qoder_async._core.sse import EventDecoder
from qoder_async.testing import FakeQoderServer

FIXTURES = Path(__file__).parent / "fixtures" / "events"

# Ids shared by several fixtures (one session, two turns, one sub-agent thread).
TURN = "turn_019e392c0a0f7e6d5c4b3a2918273645"
TURN2 = "turn_019e3931c2d47a6b8e9f0a1b2c3d4e5f"
THREAD = "sthr_019e392d1f0a7b3c9d8e7f6a5b4c3d2e"
TOOL_USE_EVT = "evt_019e392c0c4e7d1a9b8c7d6e5f4a3b2c"
CUSTOM_USE_EVT = "evt_019e392c0f5a7b6c5d4e3f2a1b0c9d8e"
MCP_USE_EVT = "evt_019e392c1a2b7c3d4e5f6a7b8c9d0e1f"
SPAN_START_EVT = "evt_019e392c0b2a7f8e9d0c1b2a3f4e5d6c"
PREVIEW_EVT = "evt_019e392c0d787cfaa21bda98e06cd913"
OUTCOME_START_EVT = "evt_019e393a0b1c7d2e3f4a5b6c7d8e9f0a"
OUTCOME_ID = "outc_01jz8q1w3e5r7t9y1u3i5o7p9a"
SPAN = "span_01jz8p4q6r8s0t2v4w6x8y0z2a"
MSG = "msg_01XFDUDYJgAACzvnptvVoYEL"
SESS = "sess_01jz8k3m5n7p9q2r4s6t8v0w2y"
AGENT = "agent_01jz8k2a4b6c8d0e2f4g6h8j0k"
ENV = "env_01jz8k1z3y5x7w9v1u3t5s7r9q"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5Er"
    "kJggg=="
)


# --------------------------------------------------------------------------- helpers


def load(name: str) -> dict[str, Any]:
    """A fixture file: ``{"doc", "sse_id", "sse_event", "data"}`` (a fresh copy each time)."""
    with (FIXTURES / f"{name}.json").open(encoding="utf-8") as f:
        fixture: dict[str, Any] = json.load(f)
    return fixture


def structure(name: str) -> tuple[Any, dict[str, Any]]:
    """Structure fixture ``name``; returns the event and the data object it was given."""
    fixture = load(name)
    data = fixture["data"]
    return structure_event(data, fixture["sse_id"], fixture["sse_event"]), data


def assert_common(
    ev: Any,
    data: dict[str, Any],
    cls: type,
    event_type: str,
    *,
    event_id: str | None,
    turn_id: str | None,
    processed_at: str | None,
    session_thread_id: str | None = None,
) -> None:
    """The fields every event has, and ``raw`` is the very object that was structured."""
    assert type(ev) is cls
    assert ev.type == event_type
    assert ev.id == event_id
    assert ev.turn_id == turn_id
    assert ev.processed_at == processed_at
    assert ev.session_thread_id == session_thread_id
    assert ev.raw is data


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


# --------------------------------------------------------------------------- fixture files


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_file_is_well_formed(name: str) -> None:
    fixture = load(name)
    assert set(fixture) == {"doc", "sse_id", "sse_event", "data"}
    assert isinstance(fixture["doc"], str)
    assert fixture["doc"]
    assert fixture["sse_id"] is None or fixture["sse_id"].startswith("evt_")
    assert fixture["sse_event"] is None or isinstance(fixture["sse_event"], str)
    assert isinstance(fixture["data"], dict)


def test_fixtures_cover_every_event_class() -> None:
    seen = {type(structure(name)[0]) for name in fixture_names()}
    assert seen == set(typing.get_args(Event))


# --------------------------------------------------------------------------- user.*


# --------------------------------------------------------------------------- fixture -> event


@attrs.frozen
class Is:
    """An expected value checked with ``is`` (``None``, ``True``, ``False``), not ``==``."""

    value: Any


def case(
    name: str,
    cls: type,
    event_type: str,
    event_id: str | None,
    turn_id: str | None,
    processed_at: str | None,
    *,
    thread: str | None = None,
    expect: dict[str, Any] | None = None,
    id: str,
) -> Any:
    """A row: fixture ``name`` decodes to ``cls`` with these common fields.

    ``expect`` maps an attribute path (``"stop_reason.event_ids"``) to its value
    (``Is(v)``: compared with ``is``), ``"type:<path>"`` to the attribute's
    exact class and ``"raw:<key>"`` to a field of the object as given.
    """
    common = {
        "event_id": event_id,
        "turn_id": turn_id,
        "processed_at": processed_at,
        "session_thread_id": thread,
    }
    return pytest.param(name, cls, event_type, common, expect or {}, id=id)


FIXTURE_CASES = [
    case(
        "user_message_string_content",
        UserMessage,
        "user.message",
        "evt_019e392c0a1b7c2d8e3f4a5b6c7d8e9f",
        TURN,
        "2026-05-18T03:40:41.120394857Z",
        expect={
            "content": (TextBlock("List the files in the repository root."),),
            "text": "List the files in the repository root.",
            "raw:content": "List the files in the repository root.",
        },
        id="user_message_string_content",
    ),
    case(
        "user_message_block_content",
        UserMessage,
        "user.message",
        "evt_019e392c0a1b7c2d8e3f4a5b6c7d8e9f",
        TURN,
        "2026-05-18T03:40:41.120394857Z",
        expect={
            "content": (TextBlock("List the files in the repository root."),),
            "text": "List the files in the repository root.",
        },
        id="user_message_block_content",
    ),
    case(
        "user_interrupt",
        UserInterrupt,
        "user.interrupt",
        "evt_019e3934c3d47e5f6a7b8c9d0e1f2a3b",
        TURN2,
        "2026-05-18T03:57:00.118273645Z",
        expect={"reason": Is(None)},
        id="user_interrupt",
    ),
    case(
        "user_define_outcome_description",
        UserDefineOutcome,
        "user.define_outcome",
        "evt_019e39390a1b7c2d3e4f5a6b7c8d9e0f",
        TURN2,
        "2026-05-18T04:09:58.330192847Z",
        expect={
            "description": "All unit tests pass and the README documents the CLI.",
            "rubric": {
                "type": "text",
                "content": "- every test passes\n- README has a CLI section",
            },
            "max_iterations": 3,
        },
        id="user_define_outcome_description",
    ),
    case(
        "user_tool_confirmation_result",
        UserToolConfirmation,
        "user.tool_confirmation",
        "evt_019e392c0c4f7e1a2b3c4d5e6f7a8b9c",
        TURN,
        "2026-05-18T03:40:45.210394857Z",
        expect={"tool_use_id": TOOL_USE_EVT, "result": "allow", "deny_message": Is(None)},
        id="user_tool_confirmation_result",
    ),
    case(
        "user_tool_confirmation_decision",
        UserToolConfirmation,
        "user.tool_confirmation",
        "evt_019e392c0c4f7e1a2b3c4d5e6f7a8b9c",
        TURN,
        "2026-05-18T03:40:45.210394857Z",
        expect={
            "tool_use_id": TOOL_USE_EVT,
            "result": "allow",
            "deny_message": Is(None),
            "raw:decision": "approve",
        },
        id="user_tool_confirmation_decision_approve_reads_as_allow",
    ),
    case(
        "user_tool_confirmation_result_deny",
        UserToolConfirmation,
        "user.tool_confirmation",
        "evt_019e3932a1b27c3d4e5f6a7b8c9d0e1f",
        TURN2,
        "2026-05-18T03:55:01.902837465Z",
        expect={
            "tool_use_id": TOOL_USE_EVT,
            "result": "deny",
            "deny_message": "Do not delete files in this repository.",
        },
        id="user_tool_confirmation_result_deny",
    ),
    case(
        "user_tool_confirmation_decision_deny",
        UserToolConfirmation,
        "user.tool_confirmation",
        "evt_019e3932a1b27c3d4e5f6a7b8c9d0e1f",
        TURN2,
        "2026-05-18T03:55:01.902837465Z",
        expect={"tool_use_id": TOOL_USE_EVT, "result": "deny", "deny_message": Is(None)},
        id="user_tool_confirmation_decision_deny",
    ),
    case(
        "user_tool_result",
        UserToolResult,
        "user.tool_result",
        "evt_019e3933b2c37d4e5f6a7b8c9d0e1f2a",
        TURN2,
        "2026-05-18T03:56:12.500192837Z",
        expect={
            "tool_use_id": "toolu_01D7FLrfh4GYq7yT1ULFeyMV",
            "content": (TextBlock("permission denied"),),
            "text": "permission denied",
            "is_error": Is(True),
        },
        id="user_tool_result",
    ),
    case(
        "system_message",
        SystemMessage,
        "system.message",
        "evt_019e3935d4e57f6a7b8c9d0e1f2a3b4c",
        None,
        "2026-05-18T03:39:59.000100200Z",
        expect={"content": (TextBlock("The repository is read-only for this session."),)},
        id="system_message",
    ),
    case(
        "agent_message_text",
        AgentMessage,
        "agent.message",
        PREVIEW_EVT,
        None,
        "2026-05-18T03:40:48.888851795Z",
        expect={"content": (TextBlock("Hello"),), "text": "Hello"},
        id="agent_message_text",
    ),
    case(
        "agent_message_in_thread",
        AgentMessage,
        "agent.message",
        "evt_019e392d2a3b7c4d5e6f7a8b9c0d1e2f",
        TURN,
        "2026-05-18T03:41:33.208374651Z",
        thread=THREAD,
        expect={
            "content": (
                TextBlock("The flaky test is "),
                TextBlock("tests/test_api.py::test_retry."),
            ),
            "text": "The flaky test is tests/test_api.py::test_retry.",
        },
        id="agent_message_in_thread_with_several_blocks",
    ),
    case(
        "agent_thinking_no_payload",
        AgentThinking,
        "agent.thinking",
        "evt_019e392c0b4e7f3a2b1c0d9e8f7a6b5c",
        None,
        "2026-05-18T03:40:43.902817365Z",
        expect={"thinking": Is(None), "text": ""},
        id="agent_thinking_no_payload",
    ),
    case(
        "agent_tool_use_name_input",
        AgentToolUse,
        "agent.tool_use",
        TOOL_USE_EVT,
        TURN,
        "2026-05-18T03:40:44.310928475Z",
        expect={
            "name": "Bash",
            "input": {"command": "ls -la"},
            "evaluated_permission": "ask",
            "needs_confirmation": Is(True),
            "tool_use_id": TOOL_USE_EVT,
        },
        id="agent_tool_use_name_input",
    ),
    case(
        "agent_tool_use_tool_name_tool_input",
        AgentToolUse,
        "agent.tool_use",
        TOOL_USE_EVT,
        TURN,
        "2026-05-18T03:40:44.310928475Z",
        expect={
            "name": "Bash",
            "input": {"command": "ls -la"},
            "evaluated_permission": "ask",
            "needs_confirmation": Is(True),
            "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
        },
        id="agent_tool_use_tool_name_tool_input",
    ),
    case(
        "agent_custom_tool_use",
        AgentCustomToolUse,
        "agent.custom_tool_use",
        CUSTOM_USE_EVT,
        TURN,
        "2026-05-18T03:40:47.120398475Z",
        thread=THREAD,
        expect={"name": "lookup_order", "input": {"order_id": "A-1042"}},
        id="agent_custom_tool_use",
    ),
    case(
        "agent_mcp_tool_use",
        AgentMCPToolUse,
        "agent.mcp_tool_use",
        MCP_USE_EVT,
        TURN,
        "2026-05-18T03:41:02.583920174Z",
        expect={
            "name": "create_issue",
            "input": {"repo": "acme/api", "title": "Flaky test in CI"},
            "mcp_server_name": "github",
            "evaluated_permission": "allow",
        },
        id="agent_mcp_tool_use",
    ),
    case(
        "agent_mcp_tool_result",
        AgentMCPToolResult,
        "agent.mcp_tool_result",
        "evt_019e392c1b2c7d3e4f5a6b7c8d9e0f1a",
        TURN,
        "2026-05-18T03:41:03.904857261Z",
        expect={
            "mcp_tool_use_id": MCP_USE_EVT,
            "content": (TextBlock("Created issue #418"),),
            "text": "Created issue #418",
            "is_error": Is(False),
        },
        id="agent_mcp_tool_result",
    ),
    case(
        "agent_thread_message_sent",
        AgentThreadMessageSent,
        "agent.thread_message_sent",
        "evt_019e392d1a2b7c3d4e5f6a7b8c9d0e1f",
        TURN,
        "2026-05-18T03:41:10.118273645Z",
        expect={
            "content": (TextBlock("Find the failing test."),),
            "to_session_thread_id": THREAD,
            "to_agent_name": "researcher",
        },
        id="agent_thread_message_sent",
    ),
    case(
        "agent_thread_message_received",
        AgentThreadMessageReceived,
        "agent.thread_message_received",
        "evt_019e392d2b3c7d4e5f6a7b8c9d0e1f2a",
        TURN,
        "2026-05-18T03:41:34.770019283Z",
        expect={
            "content": (TextBlock("tests/test_api.py::test_retry is flaky."),),
            "from_session_thread_id": THREAD,
            "from_agent_name": "researcher",
        },
        id="agent_thread_message_received",
    ),
    case(
        "agent_thread_context_compacted",
        AgentThreadContextCompacted,
        "agent.thread_context_compacted",
        "evt_019e392d3c4d7e5f6a7b8c9d0e1f2a3b",
        TURN,
        "2026-05-18T03:41:20.660192837Z",
        thread=THREAD,
        id="agent_thread_context_compacted",
    ),
    case(
        "agent_artifact_delivered",
        AgentArtifactDelivered,
        "agent.artifact_delivered",
        "evt_019e392d4d5e7f6a7b8c9d0e1f2a3b4c",
        TURN,
        "2026-05-18T03:41:40.302918273Z",
        expect={
            "file_id": "file_01jz8n2c4e6g8j0k2m4p6r8t0v",
            "original_filename": "report.pdf",
            "size": 48213,
            "content_type": "application/pdf",
        },
        id="agent_artifact_delivered",
    ),
    case(
        "session_status_idle_requires_action",
        SessionStatusIdle,
        "session.status_idle",
        "evt_019e392c1e6f7a8b9c0d1e2f3a4b5c6d",
        TURN,
        "2026-05-18T03:40:47.530192837Z",
        expect={
            "type:stop_reason": RequiresAction,
            "stop_reason.type": "requires_action",
            "stop_reason.event_ids": (CUSTOM_USE_EVT, TOOL_USE_EVT),
            "stop_reason.ends_turn": Is(False),
        },
        id="session_status_idle_requires_action",
    ),
    case(
        "session_status_idle_retries_exhausted",
        SessionStatusIdle,
        "session.status_idle",
        "evt_019e392c1f7a7b8c9d0e1f2a3b4c5d6e",
        TURN,
        "2026-05-18T03:42:10.887162534Z",
        expect={
            "type:stop_reason": RetriesExhausted,
            "stop_reason.type": "retries_exhausted",
            "stop_reason.ends_turn": Is(True),
        },
        id="session_status_idle_retries_exhausted",
    ),
    case(
        "session_status_idle_budget_reached",
        SessionStatusIdle,
        "session.status_idle",
        "evt_019e392c2a8b7c9d0e1f2a3b4c5d6e7f",
        TURN,
        "2026-05-18T03:43:00.019283746Z",
        expect={
            "type:stop_reason": BudgetReached,
            "stop_reason.type": "budget_reached",
            "stop_reason.ends_turn": Is(True),
        },
        id="session_status_idle_budget_reached",
    ),
    case(
        "session_status_idle_unknown_reason",
        SessionStatusIdle,
        "session.status_idle",
        "evt_019e392c2b9c7d0e1f2a3b4c5d6e7f8a",
        TURN,
        "2026-05-18T03:43:30.561728394Z",
        expect={
            "type:stop_reason": UnknownStopReason,
            "stop_reason.type": "refusal",
            "stop_reason.raw": {"type": "refusal", "stop_details": {"category": "policy"}},
            "stop_reason.ends_turn": Is(True),
        },
        id="session_status_idle_unknown_reason",
    ),
    case(
        "session_status_rescheduled",
        SessionStatusRescheduled,
        "session.status_rescheduled",
        "evt_019e392e0a1b7c2d3e4f5a6b7c8d9e0f",
        None,
        "2026-05-18T04:02:11.304958271Z",
        id="session_status_rescheduled",
    ),
    case(
        "session_status_terminated",
        SessionStatusTerminated,
        "session.status_terminated",
        "evt_019e39400a1b7c2d3e4f5a6b7c8d9e0f",
        None,
        "2026-05-18T05:10:00.000192837Z",
        expect={"reason": Is(None)},
        id="session_status_terminated",
    ),
    case(
        "terminated_legacy",
        SessionStatusTerminated,
        "session.status_terminated",
        "evt_019e39400a1b7c2d3e4f5a6b7c8d9e0f",
        None,
        "2026-05-18T05:10:00.000192837Z",
        expect={
            "reason": "Session terminated after an unrecoverable runtime error.",
            "raw:type": "terminated",
        },
        id="terminated_legacy_reads_as_session_status_terminated",
    ),
    case(
        "session_error_string",
        SessionErrorEvent,
        "session.error",
        "evt_019e392c2c0d7e1f2a3b4c5d6e7f8a9b",
        TURN,
        "2026-05-18T03:41:58.220193847Z",
        expect={
            "type:error": ErrorInfo,
            "error.type": "model_overloaded_error",
            "error.message": "The model is temporarily overloaded.",
            "error.retry_status": Is(None),
            "error.code": "model_overloaded_error",
            "retrying": Is(False),
        },
        id="session_error_string",
    ),
    case(
        "session_thread_created",
        SessionThreadCreated,
        "session.thread_created",
        "evt_019e392d0a1b7c2d3e4f5a6b7c8d9e0f",
        TURN,
        "2026-05-18T03:41:09.990182736Z",
        thread=THREAD,
        expect={"agent_name": "researcher"},
        id="session_thread_created",
    ),
    case(
        "session_thread_status_idle",
        SessionThreadStatusIdle,
        "session.thread_status_idle",
        "evt_019e392d0c3d7e4f5a6b7c8d9e0f1a2b",
        TURN,
        "2026-05-18T03:41:12.440192837Z",
        thread=THREAD,
        expect={
            "agent_name": "researcher",
            "stop_reason": RequiresAction((CUSTOM_USE_EVT,)),
            "type:stop_reason": RequiresAction,
        },
        id="session_thread_status_idle_has_its_own_stop_reason",
    ),
    case(
        "span_model_request_start",
        SpanModelRequestStart,
        "span.model_request_start",
        SPAN_START_EVT,
        TURN,
        "2026-05-18T03:40:41.702938465Z",
        expect={"model": "ultimate", "span_id": SPAN},
        id="span_model_request_start",
    ),
    case(
        "span_model_request_start_empty",
        SpanModelRequestStart,
        "span.model_request_start",
        SPAN_START_EVT,
        None,
        "2026-05-18T03:40:41.702938465Z",
        expect={"model": Is(None), "span_id": Is(None)},
        id="span_model_request_start_empty",
    ),
    case(
        "span_model_request_end_credits",
        SpanModelRequestEnd,
        "span.model_request_end",
        "evt_019e3931d4e57b8c9d0e1f2a3b4c5d6e",
        None,
        "2026-05-18T03:53:02.118273640Z",
        expect={
            "model_request_start_id": Is(None),
            "is_error": Is(False),
            "model_usage": Usage(credits=4.05),
            "model_usage.input_tokens": Is(None),
            "model_usage.output_tokens": Is(None),
            "model_usage.credits": 4.05,
        },
        id="span_model_request_end_credits",
    ),
    case(
        "span_outcome_evaluation_end",
        SpanOutcomeEvaluationEnd,
        "span.outcome_evaluation_end",
        "evt_019e393a2d3e7f4a5b6c7d8e9f0a1b2c",
        TURN2,
        "2026-05-18T04:10:09.004857162Z",
        expect={
            "outcome_id": OUTCOME_ID,
            "iteration": 1,
            "result": "satisfied",
            "explanation": "All 42 tests pass and the README has a CLI section.",
            "outcome_evaluation_start_id": OUTCOME_START_EVT,
        },
        id="span_outcome_evaluation_end",
    ),
    case(
        "event_start",
        PreviewStart,
        "event_start",
        PREVIEW_EVT,
        None,
        None,
        expect={"event_id": PREVIEW_EVT, "event_type": "agent.message"},
        id="event_start",
    ),
    case(
        "event_start_thinking",
        PreviewStart,
        "event_start",
        "evt_019e392c0b3d7e2f1a0b9c8d7e6f5a4b",
        None,
        None,
        expect={"event_id": "evt_019e392c0b3d7e2f1a0b9c8d7e6f5a4b", "event_type": "agent.thinking"},
        id="event_start_thinking",
    ),
    case(
        "event_delta",
        PreviewDelta,
        "event_delta",
        PREVIEW_EVT,
        None,
        None,
        expect={
            "event_id": PREVIEW_EVT,
            "index": 0,
            "content": TextBlock("Hel"),
            "delta_type": "content_delta",
            "text": "Hel",
        },
        id="event_delta",
    ),
    case(
        "agent_message_start",
        AgentMessageStart,
        "agent.message_start",
        "evt_019e392c3a1b7c2d3e4f5a6b7c8d9e0f",
        TURN,
        "2026-05-18T03:40:48.100293847Z",
        expect={"message_id": MSG},
        id="agent_message_start",
    ),
    case(
        "agent_content_block_start",
        AgentContentBlockStart,
        "agent.content_block_start",
        "evt_019e392c3b2c7d3e4f5a6b7c8d9e0f1a",
        TURN,
        "2026-05-18T03:40:48.100998877Z",
        expect={"message_id": MSG, "index": 0, "block_type": "text"},
        id="agent_content_block_start_text",
    ),
    case(
        "agent_content_block_start_tool_use",
        AgentContentBlockStart,
        "agent.content_block_start",
        "evt_019e392c3b2c7d3e4f5a6b7c8d9e0f2b",
        TURN,
        "2026-05-18T03:40:48.300192837Z",
        expect={"message_id": MSG, "index": 1, "block_type": "tool_use"},
        id="agent_content_block_start_tool_use",
    ),
    case(
        "agent_content_block_delta_text",
        AgentContentBlockDelta,
        "agent.content_block_delta",
        "evt_019e392c3c3d7e4f5a6b7c8d9e0f1a2b",
        TURN,
        "2026-05-18T03:40:48.150192837Z",
        expect={
            "message_id": MSG,
            "index": 0,
            "delta_type": "text_delta",
            "text": "Hel",
            "partial_json": Is(None),
        },
        id="agent_content_block_delta_text",
    ),
    case(
        "agent_content_block_delta_thinking",
        AgentContentBlockDelta,
        "agent.content_block_delta",
        "evt_019e392c3c3d7e4f5a6b7c8d9e0f1a3c",
        TURN,
        "2026-05-18T03:40:48.120394857Z",
        expect={
            "message_id": MSG,
            "index": 0,
            "delta_type": "thinking_delta",
            "text": "The user wants a listing",
            "partial_json": Is(None),
        },
        id="agent_content_block_delta_thinking",
    ),
    case(
        "agent_content_block_delta_input_json",
        AgentContentBlockDelta,
        "agent.content_block_delta",
        "evt_019e392c3c3d7e4f5a6b7c8d9e0f1a4d",
        TURN,
        "2026-05-18T03:40:48.310293847Z",
        expect={
            "message_id": MSG,
            "index": 1,
            "delta_type": "input_json_delta",
            "text": "",
            "partial_json": '{"command": "ls -',
        },
        id="agent_content_block_delta_input_json",
    ),
    case(
        "agent_content_block_delta_signature",
        AgentContentBlockDelta,
        "agent.content_block_delta",
        "evt_019e392c3c3d7e4f5a6b7c8d9e0f1a5e",
        TURN,
        "2026-05-18T03:40:48.129384756Z",
        expect={
            "message_id": MSG,
            "index": 0,
            "delta_type": "signature_delta",
            "text": "",
            "partial_json": Is(None),
        },
        id="agent_content_block_delta_signature",
    ),
    case(
        "agent_content_block_stop",
        AgentContentBlockStop,
        "agent.content_block_stop",
        "evt_019e392c3d4e7f5a6b7c8d9e0f1a2b3c",
        TURN,
        "2026-05-18T03:40:48.880192837Z",
        expect={"message_id": MSG, "index": 0},
        id="agent_content_block_stop",
    ),
    case(
        "agent_message_delta",
        AgentMessageDelta,
        "agent.message_delta",
        "evt_019e392c3e5f7a6b7c8d9e0f1a2b3c4d",
        TURN,
        "2026-05-18T03:40:48.884019283Z",
        expect={"message_id": MSG, "usage": Usage(output_tokens=42)},
        id="agent_message_delta",
    ),
    case(
        "agent_message_stop",
        AgentMessageStop,
        "agent.message_stop",
        "evt_019e392c3f6a7b7c8d9e0f1a2b3c4d5e",
        TURN,
        "2026-05-18T03:40:48.886102938Z",
        expect={"message_id": MSG},
        id="agent_message_stop",
    ),
]


@pytest.mark.parametrize(("name", "cls", "event_type", "common", "expect"), FIXTURE_CASES)
def test_fixture_decodes(
    name: str, cls: type, event_type: str, common: dict[str, Any], expect: dict[str, Any]
) -> None:
    ev, data = structure(name)
    assert_common(ev, data, cls, event_type, **common)
    for path, want in expect.items():
        if path.startswith("raw:"):  # a field of the object as given
            assert data[path[4:]] == want, path
            continue
        if path.startswith("type:"):  # the exact class of an attribute
            assert type(operator.attrgetter(path[5:])(ev)) is want, path
            continue
        got = operator.attrgetter(path)(ev)
        if isinstance(want, Is):
            assert got is want.value, path
        else:
            assert got == want, path


def test_user_message_image_blocks() -> None:
    ev, data = structure("user_message_image_block")
    assert_common(
        ev,
        data,
        UserMessage,
        "user.message",
        event_id="evt_019e39301a2b7c3d4e5f6a7b8c9d0e1f",
        turn_id=TURN2,
        processed_at="2026-05-18T03:52:10.004518273Z",
    )
    text, inline, remote = ev.content
    assert text == TextBlock("What does this screenshot show?")
    assert type(inline) is ImageBlock
    assert inline.type == "image"
    assert inline.source == {"type": "base64", "media_type": "image/png", "data": PNG}
    assert inline == ImageBlock.from_base64(PNG, "image/png")
    assert type(remote) is ImageBlock
    assert remote.source == {"type": "url", "url": "https://example.com/diagram.png"}
    assert remote == ImageBlock.from_url("https://example.com/diagram.png")
    assert ev.text == "What does this screenshot show?"


def test_user_message_document_block() -> None:
    ev, data = structure("user_message_document_block")
    assert_common(
        ev,
        data,
        UserMessage,
        "user.message",
        event_id="evt_019e39302b3c7d4e5f6a7b8c9d0e1f2a",
        turn_id=TURN2,
        processed_at="2026-05-18T03:52:11.730015629Z",
    )
    document, text = ev.content
    assert type(document) is DocumentBlock
    assert document.type == "document"
    assert document.source == {"type": "file", "file_id": "file_01jz8m0a1b2c3d4e5f6g7h8j9k"}
    assert document.title == "Design spec v2"
    assert document.context == "The spec the implementation must follow."
    assert text == TextBlock("Summarise the attached spec.")
    assert ev.text == "Summarise the attached spec."


@pytest.mark.parametrize("name", ["user_define_outcome_content", "user_define_outcome_outcome"])
def test_user_define_outcome_older_spellings(name: str) -> None:
    ev, data = structure(name)
    assert_common(
        ev,
        data,
        UserDefineOutcome,
        "user.define_outcome",
        event_id="evt_019e39390a1b7c2d3e4f5a6b7c8d9e0f",
        turn_id=TURN2,
        processed_at="2026-05-18T04:09:58.330192847Z",
    )
    assert ev.description == "All unit tests pass and the README documents the CLI."
    assert ev.rubric is None
    assert ev.max_iterations is None


def test_user_define_outcome_content_as_blocks() -> None:
    data = {
        "id": "evt_019e39390a1b7c2d3e4f5a6b7c8d9e0f",
        "type": "user.define_outcome",
        "content": [{"type": "text", "text": "All unit tests pass."}],
    }
    ev = structure_event(data)
    assert type(ev) is UserDefineOutcome
    assert ev.description == "All unit tests pass."
    assert ev.raw is data


@pytest.mark.parametrize(
    "name",
    ["user_custom_tool_result_custom_tool_use_id", "user_custom_tool_result_tool_use_id"],
)
def test_user_custom_tool_result(name: str) -> None:
    ev, data = structure(name)
    assert_common(
        ev,
        data,
        UserCustomToolResult,
        "user.custom_tool_result",
        event_id="evt_019e392c1f6a7b7c8d9e0f1a2b3c4d5e",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:49.660192837Z",
        session_thread_id=THREAD,
    )
    assert ev.custom_tool_use_id == CUSTOM_USE_EVT
    assert ev.content == (TextBlock('{"status": "shipped", "eta": "2026-05-20"}'),)
    assert ev.text == '{"status": "shipped", "eta": "2026-05-20"}'
    assert ev.is_error is False


# --------------------------------------------------------------------------- agent.*


def test_agent_message_unknown_block_is_kept() -> None:
    ev, data = structure("agent_message_unknown_block")
    assert_common(
        ev,
        data,
        AgentMessage,
        "agent.message",
        event_id="evt_019e392c1b3c7d4e5f6a7b8c9d0e1f2a",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:52.417730981Z",
    )
    unknown, text = ev.content
    assert type(unknown) is UnknownBlock
    assert unknown.type == "redacted_thinking"
    assert unknown.raw == {
        "type": "redacted_thinking",
        "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw",
    }
    assert text == TextBlock("The tests pass.")
    assert ev.text == "The tests pass."


def test_agent_message_from_sse_id_and_event_lines_only() -> None:
    fixture = load("agent_message_sse_id_and_event_only")
    data = fixture["data"]
    assert "id" not in data
    assert "type" not in data
    ev = structure_event(data, fixture["sse_id"], fixture["sse_event"])
    assert_common(
        ev,
        data,
        AgentMessage,
        "agent.message",
        event_id="evt_019e392c1c4d7e5f6a7b8c9d0e1f2a3b",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:53.001928374Z",
    )
    assert ev.content == (TextBlock("Done. The repository has 3 top-level entries."),)
    # The object is completed in place, so `raw` carries the filled-in fields.
    assert data["id"] == "evt_019e392c1c4d7e5f6a7b8c9d0e1f2a3b"
    assert data["type"] == "agent.message"


@pytest.mark.parametrize("name", ["agent_thinking_thinking_field", "agent_thinking_content_field"])
def test_agent_thinking_text(name: str) -> None:
    ev, data = structure(name)
    assert_common(
        ev,
        data,
        AgentThinking,
        "agent.thinking",
        event_id="evt_019e392c0b3d7e2f1a0b9c8d7e6f5a4b",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:43.551029384Z",
    )
    assert ev.thinking == "The user wants a listing of the repository root; run ls -la."
    assert ev.text == "The user wants a listing of the repository root; run ls -la."


def test_agent_thinking_content_as_thinking_blocks() -> None:
    data = {
        "id": "evt_019e392c0b3d7e2f1a0b9c8d7e6f5a4b",
        "type": "agent.thinking",
        "content": [
            {"type": "thinking", "thinking": "List the root, "},
            {"type": "thinking", "thinking": "then answer."},
        ],
    }
    ev = structure_event(data)
    assert type(ev) is AgentThinking
    assert ev.thinking == "List the root, then answer."


def test_agent_tool_use_requires_confirmation_false_sets_no_permission() -> None:
    data = {
        "id": TOOL_USE_EVT,
        "type": "agent.tool_use",
        "tool_name": "Read",
        "tool_input": {"file_path": "README.md"},
        "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
        "requires_confirmation": False,
    }
    ev = structure_event(data)
    assert type(ev) is AgentToolUse
    assert ev.name == "Read"
    assert ev.input == {"file_path": "README.md"}
    assert ev.evaluated_permission is None
    assert ev.needs_confirmation is False


@pytest.mark.parametrize(
    "name", ["agent_tool_result_content_blocks", "agent_tool_result_output_string"]
)
def test_agent_tool_result(name: str) -> None:
    ev, data = structure(name)
    assert_common(
        ev,
        data,
        AgentToolResult,
        "agent.tool_result",
        event_id="evt_019e392c0c5f7e2a3b4c5d6e7f8a9b0c",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:46.019283746Z",
    )
    assert ev.tool_use_id == TOOL_USE_EVT
    assert ev.content == (TextBlock("README.md\nqoder_async\ntests\n"),)
    assert ev.text == "README.md\nqoder_async\ntests\n"
    assert ev.is_error is False


# --------------------------------------------------------------------------- session.*


@pytest.mark.parametrize("name", ["session_status_running", "session_status_running_legacy"])
def test_session_status_running(name: str) -> None:
    ev, data = structure(name)
    assert_common(
        ev,
        data,
        SessionStatusRunning,
        "session.status_running",
        event_id="evt_019e392c0a3c7d4e5f6a7b8c9d0e1f2a",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:41.398475610Z",
    )


@pytest.mark.parametrize(
    "name", ["session_status_idle_end_turn", "session_status_idle_legacy_no_stop_reason"]
)
def test_session_status_idle_end_turn(name: str) -> None:
    ev, data = structure(name)
    assert_common(
        ev,
        data,
        SessionStatusIdle,
        "session.status_idle",
        event_id="evt_019e392c1d5e7f6a7b8c9d0e1f2a3b4c",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:53.120938475Z",
    )
    assert type(ev.stop_reason) is EndTurn
    assert ev.stop_reason.type == "end_turn"
    assert ev.stop_reason.ends_turn is True


def test_session_error_structured() -> None:
    ev, data = structure("session_error_structured")
    assert_common(
        ev,
        data,
        SessionErrorEvent,
        "session.error",
        event_id="evt_019e392c2c0d7e1f2a3b4c5d6e7f8a9b",
        turn_id=TURN,
        processed_at="2026-05-18T03:41:58.220193847Z",
    )
    assert type(ev.error) is ErrorInfo
    assert ev.error.type == "model_overloaded_error"
    assert ev.error.message == "The model is temporarily overloaded."
    assert ev.error.retry_status == "retrying"
    assert ev.error.code is None
    assert ev.error.raw == data["error"]
    assert ev.retrying is True


def test_session_error_without_error_falls_back_to_unknown_error() -> None:
    ev = structure_event({"id": "evt_019e39437a1b2c3d", "type": "session.error"})
    assert type(ev) is SessionErrorEvent
    assert ev.error == ErrorInfo(type="unknown_error", message="", retry_status=None, code=None)


@pytest.mark.parametrize(
    ("name", "cls", "event_type", "event_id", "processed_at"),
    [
        (
            "session_updated",
            SessionUpdated,
            "session.updated",
            "evt_019e39410a1b7c2d3e4f5a6b7c8d9e0f",
            "2026-05-18T04:30:00.120394857Z",
        ),
        (
            "session_deleted",
            SessionDeletedEvent,
            "session.deleted",
            "evt_019e39420a1b7c2d3e4f5a6b7c8d9e0f",
            "2026-05-18T06:00:00.000000001Z",
        ),
    ],
)
def test_session_lifecycle_without_fields(
    name: str, cls: type, event_type: str, event_id: str, processed_at: str
) -> None:
    ev, data = structure(name)
    assert_common(
        ev, data, cls, event_type, event_id=event_id, turn_id=None, processed_at=processed_at
    )


def test_session_usage() -> None:
    ev, data = structure("session_usage")
    assert_common(
        ev,
        data,
        SessionUsage,
        "session.usage",
        event_id="evt_019e392c2d1e7f2a3b4c5d6e7f8a9b0c",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:53.330019283Z",
    )
    assert ev.usage == Usage(
        input_tokens=8192,
        output_tokens=1024,
        cache_read_input_tokens=4096,
        cache_creation_input_tokens=512,
        credits=4.63,
    )
    assert ev.usage.raw == data["usage"]
    assert ev.budget == {"max_credits": 50, "used_credits": 4.63}


@pytest.mark.parametrize(
    ("name", "cls", "event_type", "event_id", "turn_id", "processed_at"),
    [
        (
            "session_thread_status_running",
            SessionThreadStatusRunning,
            "session.thread_status_running",
            "evt_019e392d0b2c7d3e4f5a6b7c8d9e0f1a",
            TURN,
            "2026-05-18T03:41:10.202938475Z",
        ),
        (
            "session_thread_status_rescheduled",
            SessionThreadStatusRescheduled,
            "session.thread_status_rescheduled",
            "evt_019e392d0d4e7f5a6b7c8d9e0f1a2b3c",
            None,
            "2026-05-18T03:41:15.003948576Z",
        ),
        (
            "session_thread_status_terminated",
            SessionThreadStatusTerminated,
            "session.thread_status_terminated",
            "evt_019e392d0e5f7a6b7c8d9e0f1a2b3c4d",
            TURN,
            "2026-05-18T03:41:35.118293746Z",
        ),
    ],
)
def test_session_thread_status(
    name: str,
    cls: type,
    event_type: str,
    event_id: str,
    turn_id: str | None,
    processed_at: str,
) -> None:
    ev, data = structure(name)
    assert_common(
        ev,
        data,
        cls,
        event_type,
        event_id=event_id,
        turn_id=turn_id,
        processed_at=processed_at,
        session_thread_id=THREAD,
    )
    assert ev.agent_name == "researcher"


# --------------------------------------------------------------------------- span.*


def test_span_model_request_end_sdk() -> None:
    ev, data = structure("span_model_request_end_sdk")
    assert_common(
        ev,
        data,
        SpanModelRequestEnd,
        "span.model_request_end",
        event_id="evt_019e392c1c4d7e5f6a7b8c9d0e1f2a4c",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:52.990817263Z",
    )
    assert ev.model_request_start_id == SPAN_START_EVT
    assert ev.is_error is False
    assert ev.model_usage == Usage(
        input_tokens=2048,
        output_tokens=312,
        cache_read_input_tokens=1536,
        cache_creation_input_tokens=0,
        credits=None,
    )
    assert ev.model_usage.raw == data["model_usage"]


def test_span_model_request_end_g1() -> None:
    ev, data = structure("span_model_request_end_g1")
    assert_common(
        ev,
        data,
        SpanModelRequestEnd,
        "span.model_request_end",
        event_id="evt_019e392c1c4d7e5f6a7b8c9d0e1f2a4c",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:52.990817263Z",
    )
    assert ev.model_request_start_id == SPAN
    assert ev.is_error is False
    assert ev.model_usage == Usage(
        input_tokens=2048,
        output_tokens=312,
        cache_read_input_tokens=1536,
        cache_creation_input_tokens=0,
        credits=None,
    )
    assert ev.model_usage.raw == data["usage"]


@pytest.mark.parametrize(
    ("name", "cls", "event_type", "event_id", "processed_at"),
    [
        (
            "span_outcome_evaluation_start",
            SpanOutcomeEvaluationStart,
            "span.outcome_evaluation_start",
            OUTCOME_START_EVT,
            "2026-05-18T04:10:00.501928374Z",
        ),
        (
            "span_outcome_evaluation_ongoing",
            SpanOutcomeEvaluationOngoing,
            "span.outcome_evaluation_ongoing",
            "evt_019e393a1c2d7e3f4a5b6c7d8e9f0a1b",
            "2026-05-18T04:10:05.730192846Z",
        ),
    ],
)
def test_span_outcome_evaluation_progress(
    name: str, cls: type, event_type: str, event_id: str, processed_at: str
) -> None:
    ev, data = structure(name)
    assert_common(
        ev, data, cls, event_type, event_id=event_id, turn_id=TURN2, processed_at=processed_at
    )
    assert ev.outcome_id == OUTCOME_ID
    assert ev.iteration == 1


# --------------------------------------------------------------------------- previews (6.1)


def test_event_start_without_sse_id_takes_the_previewed_id() -> None:
    data = {"type": "event_start", "event": {"id": PREVIEW_EVT, "type": "agent.message"}}
    ev = structure_event(data)
    assert type(ev) is PreviewStart
    assert ev.id == PREVIEW_EVT
    assert ev.event_id == PREVIEW_EVT
    assert ev.event_type == "agent.message"


def test_event_delta_without_sse_id_takes_the_event_id() -> None:
    data = {
        "type": "event_delta",
        "event_id": PREVIEW_EVT,
        "delta": {"type": "content_delta", "index": 2, "content": {"type": "text", "text": "lo"}},
    }
    ev = structure_event(data)
    assert type(ev) is PreviewDelta
    assert ev.id == PREVIEW_EVT
    assert ev.event_id == PREVIEW_EVT
    assert ev.index == 2
    assert ev.content == TextBlock("lo")
    assert ev.text == "lo"


# --------------------------------------------------------------------------- incremental (6.2)


def test_agent_message_start_reads_the_message_object_id() -> None:
    data = {"id": "evt_019e392c3a1b", "type": "agent.message_start", "message": {"id": MSG}}
    ev = structure_event(data)
    assert type(ev) is AgentMessageStart
    assert ev.message_id == MSG


# --------------------------------------------------------------------------- unknown


def test_unknown_event_type_is_kept() -> None:
    ev, data = structure("unknown_event_type")
    assert_common(
        ev,
        data,
        UnknownEvent,
        "agent.plan_updated",
        event_id="evt_019e3936e5f67a7b8c9d0e1f2a3b4c5d",
        turn_id=TURN,
        processed_at="2026-05-18T03:40:42.019283746Z",
    )
    assert ev.raw["plan"] == {"steps": ["read", "edit", "test"]}


# --------------------------------------------------------------------------- variants, same shape


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("user_message_string_content", "user_message_block_content"),
        ("agent_thinking_thinking_field", "agent_thinking_content_field"),
        ("agent_tool_result_content_blocks", "agent_tool_result_output_string"),
        ("session_status_idle_end_turn", "session_status_idle_legacy_no_stop_reason"),
        ("session_status_running", "session_status_running_legacy"),
        ("user_define_outcome_content", "user_define_outcome_outcome"),
        ("user_tool_confirmation_result", "user_tool_confirmation_decision"),
        (
            "user_custom_tool_result_custom_tool_use_id",
            "user_custom_tool_result_tool_use_id",
        ),
    ],
)
def test_equivalent_variants_give_equal_events(left: str, right: str) -> None:
    a, a_data = structure(left)
    b, b_data = structure(right)
    assert a_data != b_data
    assert type(a) is type(b)
    assert a == b
    assert a.raw is a_data
    assert b.raw is b_data


def test_tool_use_variants_differ_only_in_the_explicit_tool_use_id() -> None:
    sdk, _ = structure("agent_tool_use_name_input")
    g2, _ = structure("agent_tool_use_tool_name_tool_input")
    assert sdk.tool_use_id == TOOL_USE_EVT
    assert g2.tool_use_id == "toolu_01A09q90qw90lq917835lq9"
    assert attrs.evolve(g2, tool_use_id=TOOL_USE_EVT) == sdk


def test_terminated_variants_are_one_type() -> None:
    new, _ = structure("session_status_terminated")
    old, _ = structure("terminated_legacy")
    assert type(new) is type(old) is SessionStatusTerminated
    assert new.type == old.type == "session.status_terminated"
    assert attrs.evolve(old, reason=None) == new


def test_session_error_variants_give_the_same_error() -> None:
    structured, _ = structure("session_error_structured")
    string, _ = structure("session_error_string")
    assert type(structured) is type(string) is SessionErrorEvent
    assert structured.error.type == string.error.type == "model_overloaded_error"
    assert structured.error.message == string.error.message
    # The string form carries no retry status; it keeps its code.
    normalised_structured = attrs.evolve(
        structured, error=attrs.evolve(structured.error, retry_status=None)
    )
    normalised_string = attrs.evolve(string, error=attrs.evolve(string.error, code=None))
    assert normalised_structured == normalised_string


def test_span_end_variants_give_the_same_usage() -> None:
    sdk, _ = structure("span_model_request_end_sdk")
    g1, _ = structure("span_model_request_end_g1")
    assert sdk.model_usage == g1.model_usage
    assert attrs.evolve(g1, model_request_start_id=SPAN_START_EVT) == sdk


def test_define_outcome_description_matches_older_spellings() -> None:
    new, _ = structure("user_define_outcome_description")
    old, _ = structure("user_define_outcome_content")
    assert new.description == old.description
    assert attrs.evolve(new, rubric=None, max_iterations=None) == old


def test_tool_confirmation_deny_variants() -> None:
    result, _ = structure("user_tool_confirmation_result_deny")
    decision, _ = structure("user_tool_confirmation_decision_deny")
    assert result.result == decision.result == "deny"
    assert attrs.evolve(result, deny_message=None) == decision


@pytest.mark.parametrize(("decision", "result"), [("approve", "allow"), ("deny", "deny")])
def test_tool_confirmation_decision_values(decision: str, result: str) -> None:
    data = {"type": "user.tool_confirmation", "tool_use_id": TOOL_USE_EVT, "decision": decision}
    ev = structure_event(data)
    assert type(ev) is UserToolConfirmation
    assert ev.result == result


# --------------------------------------------------------------------------- SSE id:/event: lines


def test_data_wins_over_the_sse_lines() -> None:
    data = {
        "id": "evt_019e39440a1b7c2d3e4f5a6b7c8d9e0f",
        "type": "agent.thinking",
        "thinking": "check the tests",
    }
    before = copy.deepcopy(data)
    ev = structure_event(data, "evt_019e3944ffffffffffffffffffffffff", "agent.message")
    assert type(ev) is AgentThinking
    assert ev.id == "evt_019e39440a1b7c2d3e4f5a6b7c8d9e0f"
    assert ev.thinking == "check the tests"
    assert data == before
    assert ev.raw is data


def test_sse_id_fills_only_a_missing_id() -> None:
    data = {"type": "session.status_running", "processed_at": "2026-05-18T03:40:41.398475610Z"}
    ev = structure_event(data, "evt_019e392c0a3c7d4e5f6a7b8c9d0e1f2a", "session.status_idle")
    assert type(ev) is SessionStatusRunning
    assert ev.id == "evt_019e392c0a3c7d4e5f6a7b8c9d0e1f2a"
    assert data == {
        "id": "evt_019e392c0a3c7d4e5f6a7b8c9d0e1f2a",
        "type": "session.status_running",
        "processed_at": "2026-05-18T03:40:41.398475610Z",
    }
    assert ev.raw is data


def test_sse_event_fills_only_a_missing_type() -> None:
    data = {"id": "evt_019e392c1d5e7f6a7b8c9d0e1f2a3b4c", "status": "idle"}
    ev = structure_event(data, "evt_019e3944ffffffffffffffffffffffff", "session.status_idle")
    assert type(ev) is SessionStatusIdle
    assert ev.id == "evt_019e392c1d5e7f6a7b8c9d0e1f2a3b4c"
    assert ev.stop_reason == EndTurn()
    assert data == {
        "id": "evt_019e392c1d5e7f6a7b8c9d0e1f2a3b4c",
        "type": "session.status_idle",
        "status": "idle",
    }


def test_without_sse_lines_a_complete_object_is_left_alone() -> None:
    data = {"id": "evt_019e39440a1b", "type": "agent.message", "content": "Hi"}
    ev = structure_event(data)
    assert type(ev) is AgentMessage
    assert ev.id == "evt_019e39440a1b"
    assert data == {"id": "evt_019e39440a1b", "type": "agent.message", "content": "Hi"}


@pytest.mark.parametrize("sse_event", ["", "message"])
def test_generic_sse_event_without_type_gives_unknown_message(sse_event: str) -> None:
    data = {"content": [{"type": "text", "text": "?"}]}
    ev = structure_event(data, "evt_019e39450a1b7c2d3e4f5a6b7c8d9e0f", sse_event)
    assert type(ev) is UnknownEvent
    assert ev.type == "message"
    assert ev.id == "evt_019e39450a1b7c2d3e4f5a6b7c8d9e0f"
    assert ev.raw is data


def test_no_type_and_no_sse_event_gives_unknown_message() -> None:
    # The converter's own rule: "a frame with neither is kept as an unknown event
    # of the SSE default type" ("message"); no `event:` line means sse_event=None.
    data = {"content": [{"type": "text", "text": "?"}]}
    ev = structure_event(data)
    assert type(ev) is UnknownEvent
    assert ev.type == "message"
    assert ev.raw is data


# --------------------------------------------------------------------------- outbound

OUTBOUND_CASES = [
    pytest.param(
        UserMessage("hi"),
        {"type": "user.message", "content": [{"type": "text", "text": "hi"}]},
        id="user_message_string",
    ),
    pytest.param(
        UserMessage(
            (
                TextBlock("Compare these:"),
                ImageBlock.from_url("https://example.com/a.png"),
                ImageBlock.from_base64(PNG, "image/png"),
                DocumentBlock(
                    {"type": "file", "file_id": "file_01jz8m0a1b2c3d4e5f6g7h8j9k"},
                    title="Design spec v2",
                    context="The spec to follow.",
                ),
                DocumentBlock({"type": "text", "media_type": "text/plain", "data": "abc"}),
                UnknownBlock(
                    "container_upload",
                    {"type": "container_upload", "file_id": "file_01jz8n2c4e6g8j0k2m4p6r8t0v"},
                ),
            ),
            session_thread_id=THREAD,
        ),
        {
            "type": "user.message",
            "content": [
                {"type": "text", "text": "Compare these:"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {
                    "type": "document",
                    "source": {"type": "file", "file_id": "file_01jz8m0a1b2c3d4e5f6g7h8j9k"},
                    "title": "Design spec v2",
                    "context": "The spec to follow.",
                },
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "abc"},
                },
                {"type": "container_upload", "file_id": "file_01jz8n2c4e6g8j0k2m4p6r8t0v"},
            ],
            "session_thread_id": THREAD,
        },
        id="user_message_blocks",
    ),
    pytest.param(
        UserMessage(["first", TextBlock("second")]),
        {
            "type": "user.message",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        },
        id="user_message_list",
    ),
    pytest.param(UserInterrupt(), {"type": "user.interrupt"}, id="user_interrupt"),
    pytest.param(
        UserInterrupt("user pressed stop", session_thread_id=THREAD),
        {"type": "user.interrupt", "reason": "user pressed stop", "session_thread_id": THREAD},
        id="user_interrupt_reason_thread",
    ),
    pytest.param(
        UserDefineOutcome("All unit tests pass."),
        {"type": "user.define_outcome", "description": "All unit tests pass."},
        id="user_define_outcome",
    ),
    pytest.param(
        UserDefineOutcome(
            "All unit tests pass.",
            rubric={"type": "text", "content": "- every test passes"},
            max_iterations=3,
        ),
        {
            "type": "user.define_outcome",
            "description": "All unit tests pass.",
            "rubric": {"type": "text", "content": "- every test passes"},
            "max_iterations": 3,
        },
        id="user_define_outcome_rubric",
    ),
    pytest.param(
        UserToolConfirmation(TOOL_USE_EVT),
        {"type": "user.tool_confirmation", "tool_use_id": TOOL_USE_EVT, "result": "allow"},
        id="user_tool_confirmation_allow",
    ),
    pytest.param(
        UserToolConfirmation(TOOL_USE_EVT, "deny", "Not on main.", session_thread_id=THREAD),
        {
            "type": "user.tool_confirmation",
            "tool_use_id": TOOL_USE_EVT,
            "result": "deny",
            "deny_message": "Not on main.",
            "session_thread_id": THREAD,
        },
        id="user_tool_confirmation_deny",
    ),
    pytest.param(
        UserCustomToolResult(CUSTOM_USE_EVT, "42"),
        {
            "type": "user.custom_tool_result",
            "custom_tool_use_id": CUSTOM_USE_EVT,
            "content": [{"type": "text", "text": "42"}],
            "is_error": False,
        },
        id="user_custom_tool_result",
    ),
    pytest.param(
        UserCustomToolResult(
            CUSTOM_USE_EVT, "order not found", is_error=True, session_thread_id=THREAD
        ),
        {
            "type": "user.custom_tool_result",
            "custom_tool_use_id": CUSTOM_USE_EVT,
            "content": [{"type": "text", "text": "order not found"}],
            "is_error": True,
            "session_thread_id": THREAD,
        },
        id="user_custom_tool_result_error_thread",
    ),
    pytest.param(
        UserToolResult("toolu_01D7FLrfh4GYq7yT1ULFeyMV", "permission denied", is_error=True),
        {
            "type": "user.tool_result",
            "tool_use_id": "toolu_01D7FLrfh4GYq7yT1ULFeyMV",
            "content": [{"type": "text", "text": "permission denied"}],
            "is_error": True,
        },
        id="user_tool_result",
    ),
    pytest.param(
        SystemMessage("The repository is read-only."),
        {
            "type": "system.message",
            "content": [{"type": "text", "text": "The repository is read-only."}],
        },
        id="system_message",
    ),
]


@pytest.mark.parametrize(("event", "wire"), OUTBOUND_CASES)
def test_unstructure_event_is_canonical(event: OutboundEvent, wire: dict[str, Any]) -> None:
    out = unstructure_event(event)
    assert out == wire
    assert json.loads(json.dumps(out)) == wire
    assert converter.unstructure(event) == wire


@pytest.mark.parametrize(("event", "wire"), OUTBOUND_CASES)
def test_outbound_events_round_trip(event: OutboundEvent, wire: dict[str, Any]) -> None:
    out = unstructure_event(event)
    back = structure_event(out)
    assert type(back) is type(event)
    assert back == event
    assert back.raw is out
    assert back.raw == wire


def test_inbound_only_events_cannot_be_unstructured() -> None:
    with pytest.raises(TypeError):
        unstructure_event(AgentMessage((TextBlock("Hello"),)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("block", "wire"),
    [
        (TextBlock("x"), {"type": "text", "text": "x"}),
        (
            ImageBlock.from_url("https://example.com/a.png"),
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        ),
        (
            DocumentBlock({"type": "file", "file_id": "file_01"}, title="T"),
            {"type": "document", "source": {"type": "file", "file_id": "file_01"}, "title": "T"},
        ),
        (UnknownBlock("chart"), {"type": "chart"}),
    ],
)
def test_converter_round_trips_blocks(block: ContentBlock, wire: dict[str, Any]) -> None:
    assert converter.unstructure(block) == wire
    back = converter.structure(wire, ContentBlock)
    assert type(back) is type(block)
    assert back == block


# --------------------------------------------------------------------------- the cattrs converter


def test_converter_structures_any_event() -> None:
    fixture = load("agent_message_text")
    ev = converter.structure(fixture["data"], Event)
    assert ev == AgentMessage(
        (TextBlock("Hello"),),
        id=PREVIEW_EVT,
        processed_at="2026-05-18T03:40:48.888851795Z",
    )
    assert ev.raw is fixture["data"]


def test_converter_structures_a_named_event_class() -> None:
    fixture = load("agent_message_text")
    ev = converter.structure(fixture["data"], AgentMessage)
    assert type(ev) is AgentMessage
    assert ev.text == "Hello"
    legacy = load("terminated_legacy")["data"]
    terminated = converter.structure(legacy, SessionStatusTerminated)
    assert type(terminated) is SessionStatusTerminated
    assert terminated.reason == "Session terminated after an unrecoverable runtime error."


def test_converter_rejects_an_event_of_another_class() -> None:
    data = load("user_message_block_content")["data"]
    with pytest.raises(ShapeError) as excinfo:
        converter.structure(data, AgentMessage)
    assert excinfo.value.where == "type"


def test_converter_structures_value_types() -> None:
    assert converter.structure(
        {"type": "requires_action", "event_ids": [CUSTOM_USE_EVT]}, StopReason
    ) == RequiresAction((CUSTOM_USE_EVT,))
    assert converter.structure({"type": "end_turn"}, StopReason) == EndTurn()
    usage = converter.structure({"input_tokens": 10, "total_credits": 1.5}, Usage)
    assert usage == Usage(input_tokens=10, credits=1.5)


def test_converter_structures_a_deleted_session() -> None:
    data = {"id": SESS, "type": "session_deleted"}
    deleted = converter.structure(data, Deleted)
    assert deleted == Deleted(id=SESS, type="session_deleted")
    assert deleted.raw is data


def test_a_delete_answer_without_type_gets_the_endpoints_type() -> None:
    data = {"id": "file_1"}
    deleted = structure_deleted("file_deleted")(data)
    assert deleted == Deleted(id="file_1", type="file_deleted")
    assert deleted.raw is data
    sent = structure_deleted("file_deleted")({"id": "vlt_1", "type": "vault_deleted"})
    assert sent.type == "vault_deleted"


# --------------------------------------------------------------------------- resources

SESSION_BASE: dict[str, Any] = {
    "id": SESS,
    "type": "session",
    "environment_id": ENV,
    "status": "idle",
    "title": "Repo cleanup",
    "metadata": {"ticket": "OPS-12"},
    "archived_at": None,
    "created_at": "2026-05-18T03:40:30.120394857Z",
    "updated_at": "2026-05-18T03:40:53.330019283Z",
    "usage": {"total_credits": 4.63},
}


def test_structure_session_with_agent_object() -> None:
    data = {**SESSION_BASE, "agent": {"type": "agent", "id": AGENT, "version": 2, "name": "a"}}
    session = structure_session(data)
    assert type(session) is Session
    assert session.id == SESS
    assert session.status == "idle"
    assert session.title == "Repo cleanup"
    assert session.agent_id == AGENT
    assert session.environment_id == ENV
    assert session.metadata == {"ticket": "OPS-12"}
    assert session.archived_at is None
    assert session.created_at == "2026-05-18T03:40:30.120394857Z"
    assert session.updated_at == "2026-05-18T03:40:53.330019283Z"
    assert session.usage == Usage(credits=4.63)
    assert session.raw is data


@pytest.mark.parametrize(
    ("agent_fields", "snapshot"),
    [
        pytest.param(
            {"agent": {"type": "agent", "id": AGENT, "version": 2}},
            Agent(id=AGENT, version=2),
            id="object",
        ),
        pytest.param({"agent": {"id": AGENT}}, Agent(id=AGENT), id="object_without_type"),
        pytest.param({"agent": AGENT}, None, id="string"),
        pytest.param({"agent_id": AGENT}, None, id="agent_id"),
    ],
)
def test_structure_session_agent_variants(
    agent_fields: dict[str, Any], snapshot: Agent | None
) -> None:
    session = structure_session({**SESSION_BASE, **agent_fields})
    assert session == Session(
        id=SESS,
        status="idle",
        title="Repo cleanup",
        agent_id=AGENT,
        agent=snapshot,
        environment_id=ENV,
        metadata={"ticket": "OPS-12"},
        archived_at=None,
        created_at="2026-05-18T03:40:30.120394857Z",
        updated_at="2026-05-18T03:40:53.330019283Z",
        usage=Usage(credits=4.63),
    )


def test_structure_session_g2_fields() -> None:
    data = {
        "id": SESS,
        "agent_id": AGENT,
        "status": "processing",
        "turn_status": "running",
        "usage": {"input_tokens": 1200, "output_tokens": 340},
    }
    session = structure_session(data)
    assert session.status == "processing"
    assert session.agent_id == AGENT
    assert session.usage == Usage(input_tokens=1200, output_tokens=340)
    assert session.metadata == {}
    assert session.raw["turn_status"] == "running"
    assert converter.structure(data, Session) == session


AGENT_BASE: dict[str, Any] = {
    "id": AGENT,
    "type": "agent",
    "name": "repo-helper",
    "description": "Keeps the repository tidy.",
    "version": 1,
    "tools": [{"type": "agent_toolset_20260401", "enabled_tools": ["Bash", "Read"]}],
    "metadata": {"team": "infra"},
    "archived_at": None,
    "created_at": "2026-05-18T03:30:00.000000001Z",
    "updated_at": "2026-05-18T03:30:00.000000001Z",
}


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({"model": "ultimate", "system": "Be concise."}, id="model_string_system"),
        pytest.param({"model": {"id": "ultimate"}, "system": "Be concise."}, id="model_object"),
        pytest.param({"model": "ultimate", "instructions": "Be concise."}, id="instructions"),
        pytest.param(
            {"model": {"id": "ultimate"}, "system": "Be concise.", "instructions": "Be concise."},
            id="both_aliases",
        ),
    ],
)
def test_structure_agent_variants(variant: dict[str, Any]) -> None:
    data = {**AGENT_BASE, **variant}
    agent = structure_agent(data)
    assert type(agent) is Agent
    assert agent.id == AGENT
    assert agent.name == "repo-helper"
    assert agent.model == "ultimate"
    assert agent.system == "Be concise."
    assert agent.description == "Keeps the repository tidy."
    assert agent.version == 1
    assert agent.tools == ({"type": "agent_toolset_20260401", "enabled_tools": ["Bash", "Read"]},)
    assert agent.metadata == {"team": "infra"}
    assert agent.archived_at is None
    assert agent.created_at == "2026-05-18T03:30:00.000000001Z"
    assert agent.updated_at == "2026-05-18T03:30:00.000000001Z"
    assert agent.raw is data
    assert converter.structure(data, Agent) == agent


def test_structure_environment() -> None:
    data = {
        "id": ENV,
        "type": "environment",
        "name": "demo",
        "description": "Python 3.12 sandbox",
        "config": {
            "type": "cloud",
            "networking": {"type": "limited"},
            "packages": {"apt": [], "pip": ["pytest"], "npm": []},
        },
        "status": "ready",
        "metadata": {},
        "archived_at": None,
        "created_at": "2026-05-18T03:20:00.500000000Z",
        "updated_at": "2026-05-18T03:20:00.500000000Z",
    }
    env = structure_environment(data)
    assert env == Environment(
        id=ENV,
        name="demo",
        description="Python 3.12 sandbox",
        config={
            "type": "cloud",
            "networking": {"type": "limited"},
            "packages": {"apt": [], "pip": ["pytest"], "npm": []},
        },
        status="ready",
        metadata={},
        archived_at=None,
        created_at="2026-05-18T03:20:00.500000000Z",
        updated_at="2026-05-18T03:20:00.500000000Z",
    )
    assert env.raw is data
    assert converter.structure(data, Environment) == env


def test_structure_minimal_environment() -> None:
    env = structure_environment({"id": ENV})
    assert env == Environment(id=ENV)
    assert env.config == {}
    assert env.status is None


# --------------------------------------------------------------------------- shape errors


@pytest.mark.parametrize(
    ("data", "where"),
    [
        pytest.param({"type": "user.message", "content": 5}, "content", id="content_int"),
        pytest.param({"type": "agent.message", "id": 7, "content": []}, "id", id="id_int"),
        pytest.param(
            {"type": "agent.tool_use", "name": "Bash", "input": "x"}, "input", id="input_str"
        ),
        pytest.param(
            {"type": "agent.tool_use", "tool_name": "Bash", "tool_input": ["ls"]},
            "tool_input",
            id="tool_input_list",
        ),
        pytest.param(
            {
                "type": "session.status_idle",
                "stop_reason": {"type": "requires_action", "event_ids": "x"},
            },
            "stop_reason.event_ids",
            id="event_ids_str",
        ),
        pytest.param(
            {
                "type": "session.status_idle",
                "stop_reason": {"type": "requires_action", "event_ids": [TOOL_USE_EVT, 2]},
            },
            "stop_reason.event_ids",
            id="event_ids_int_item",
        ),
        pytest.param(
            {"type": "session.status_idle", "stop_reason": 5}, "stop_reason", id="stop_reason_int"
        ),
        pytest.param(
            {"type": "session.status_idle", "stop_reason": {"type": 5}},
            "stop_reason.type",
            id="stop_reason_type_int",
        ),
        pytest.param(
            {"type": "agent.tool_result", "tool_use_id": TOOL_USE_EVT, "is_error": "yes"},
            "is_error",
            id="is_error_str",
        ),
        pytest.param({"type": "user.message", "content": [5]}, "content[]", id="block_int"),
        pytest.param(
            {"type": "agent.message", "content": [{"type": "text", "text": 5}]},
            "content[].text",
            id="block_text_int",
        ),
        pytest.param(
            {"type": "agent.message", "content": [{"type": 7}]},
            "content[].type",
            id="block_type_int",
        ),
        pytest.param(
            {"type": "agent.message", "processed_at": 1747539648}, "processed_at", id="ts_int"
        ),
        pytest.param({"type": "agent.message", "turn_id": [TURN]}, "turn_id", id="turn_id_list"),
        pytest.param(
            {"type": "agent.custom_tool_use", "session_thread_id": 3},
            "session_thread_id",
            id="thread_int",
        ),
        pytest.param({"type": 5}, "type", id="type_int"),
        pytest.param({"type": "session.error", "error": 5}, "error", id="error_int"),
        pytest.param(
            {"type": "session.error", "error": {"type": "x", "retry_status": 5}},
            "error.retry_status",
            id="retry_status_int",
        ),
        pytest.param(
            {"type": "span.model_request_end", "model_usage": {"input_tokens": "many"}},
            "input_tokens",
            id="usage_tokens_str",
        ),
        pytest.param({"type": "agent.artifact_delivered", "size": "48 kB"}, "size", id="size_str"),
        pytest.param(
            {"type": "user.define_outcome", "description": {"text": "x"}},
            "description",
            id="description_object",
        ),
        pytest.param({"type": "session.status_terminated", "reason": 5}, "reason", id="reason_int"),
        pytest.param({"type": "agent.thinking", "thinking": 5}, "thinking", id="thinking_int"),
        pytest.param(
            {"type": "event_delta", "event_id": PREVIEW_EVT, "delta": "x"}, "delta", id="delta"
        ),
        pytest.param(
            {"type": "event_delta", "delta": {"index": "0"}}, "index", id="delta_index_str"
        ),
        pytest.param({"type": "event_start", "event": ["x"]}, "event", id="preview_list"),
    ],
)
def test_wrong_types_raise_shape_error_naming_the_field(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ShapeError) as excinfo:
        structure_event(data)
    assert excinfo.value.where == where
    assert where in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize(
    "data",
    [None, 5, "agent.message", ["agent.message"], 1.5, True],
)
def test_data_that_is_not_an_object_raises_shape_error(data: Any) -> None:
    with pytest.raises(ShapeError) as excinfo:
        structure_event(data, "evt_019e39460a1b7c2d3e4f5a6b7c8d9e0f", "agent.message")
    assert excinfo.value.where == "event"


def test_thinking_block_with_a_non_string_thinking_raises_shape_error() -> None:
    data = {
        "id": "evt_019e39470a1b7c2d3e4f5a6b7c8d9e0f",
        "type": "agent.thinking",
        "content": [{"type": "thinking", "thinking": 5}],
    }
    with pytest.raises(ShapeError) as excinfo:
        structure_event(data)
    assert "thinking" in excinfo.value.where


@pytest.mark.parametrize(
    ("fn", "data", "where"),
    [
        pytest.param(structure_session, ["sess_1"], "session", id="session_list"),
        pytest.param(structure_session, {"status": "idle"}, "session.id", id="session_no_id"),
        pytest.param(structure_session, {"id": 5}, "session.id", id="session_id_int"),
        pytest.param(
            structure_session, {"id": SESS, "metadata": "x"}, "metadata", id="session_metadata"
        ),
        pytest.param(structure_agent, {"id": ""}, "agent.id", id="agent_empty_id"),
        pytest.param(structure_agent, {"id": AGENT, "model": 5}, "model", id="agent_model_int"),
        pytest.param(structure_agent, {"id": AGENT, "tools": "Bash"}, "tools", id="agent_tools"),
        pytest.param(
            structure_environment, {"id": ENV, "config": "cloud"}, "config", id="env_config"
        ),
        pytest.param(structure_environment, None, "environment", id="env_none"),
    ],
)
def test_resource_shape_errors(fn: Any, data: Any, where: str) -> None:
    with pytest.raises(ShapeError) as excinfo:
        fn(data)
    assert excinfo.value.where == where


# --------------------------------------------------------------------------- property tests

KNOWN_TYPES = sorted(
    {cls.type for cls in typing.get_args(Event) if isinstance(getattr(cls, "type", None), str)}
    | {"terminated"}
)
FIELD_NAMES = [
    "id",
    "type",
    "content",
    "text",
    "thinking",
    "name",
    "input",
    "tool_name",
    "tool_input",
    "tool_use_id",
    "requires_confirmation",
    "evaluated_permission",
    "output",
    "is_error",
    "stop_reason",
    "event_ids",
    "error",
    "code",
    "retry_status",
    "message",
    "reason",
    "usage",
    "model_usage",
    "credits",
    "total_credits",
    "input_tokens",
    "span_id",
    "model_request_start_id",
    "description",
    "outcome",
    "rubric",
    "max_iterations",
    "result",
    "decision",
    "deny_message",
    "custom_tool_use_id",
    "event",
    "event_id",
    "delta",
    "index",
    "partial_json",
    "content_block",
    "message_id",
    "source",
    "title",
    "budget",
    "processed_at",
    "turn_id",
    "session_thread_id",
    "agent_name",
    "size",
    "iteration",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.sampled_from([*KNOWN_TYPES, "text", "image", "document", "end_turn", "requires_action"])
)
json_keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(json_keys, children, max_size=4)
    ),
    max_leaves=10,
)
event_types = st.none() | st.sampled_from(KNOWN_TYPES) | st.text(max_size=12)
sse_events = st.none() | st.sampled_from(["", "message", *KNOWN_TYPES]) | st.text(max_size=12)
sse_ids = st.none() | st.just("evt_019e39480a1b7c2d3e4f5a6b7c8d9e0f")

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def structure_or_shape_error(data: Any, sse_id: str | None, sse_event: str | None) -> None:
    """The converter's contract: an event with a string type and the input as raw, or ShapeError."""
    try:
        ev = structure_event(data, sse_id, sse_event)
    except ShapeError:
        return
    assert isinstance(ev.type, str)
    assert ev.raw is data


@PROPERTY_SETTINGS
@given(
    base=st.dictionaries(json_keys, json_values, max_size=6),
    event_type=event_types,
    sse_id=sse_ids,
    sse_event=sse_events,
)
def test_arbitrary_json_objects_give_an_event_or_shape_error(
    base: dict[str, Any], event_type: str | None, sse_id: str | None, sse_event: str | None
) -> None:
    data = dict(base)
    if event_type is not None:
        data["type"] = event_type
    structure_or_shape_error(data, sse_id, sse_event)


block_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "document", "thinking", "redacted_thinking"])},
    optional={
        "text": json_scalars,
        "thinking": json_scalars,
        "source": json_values,
        "title": json_scalars,
        "context": json_scalars,
    },
)
content_values = json_scalars | st.lists(block_like | json_scalars, max_size=4) | block_like


CONTENT_FIELDS = ["content", "thinking", "output", "description", "outcome"]
CONTENT_EVENT_TYPES = [
    "user.message",
    "system.message",
    "user.define_outcome",
    "user.custom_tool_result",
    "user.tool_result",
    "agent.message",
    "agent.thinking",
    "agent.tool_result",
    "agent.mcp_tool_result",
    "agent.thread_message_sent",
    "agent.thread_message_received",
]


@PROPERTY_SETTINGS
@given(
    data=st.fixed_dictionaries(
        {
            "id": st.just("evt_019e39490a1b7c2d3e4f5a6b7c8d9e0f"),
            "type": st.sampled_from(CONTENT_EVENT_TYPES),
        },
        optional=dict.fromkeys(CONTENT_FIELDS, content_values),
    )
)
def test_arbitrary_content_values_give_an_event_or_shape_error(data: dict[str, Any]) -> None:
    structure_or_shape_error(data, None, None)


# --------------------------------------------------------------------------- through the converter


def _sample(field: attrs.Attribute[Any]) -> Any:
    """A value of the field's type, different from its default."""
    name = field.name
    samples: dict[str, Any] = {
        "_raw": {"type": "x"},
        "_content": (TextBlock("hi"),),
        "content": (TextBlock("hi"),),
        "input": {"a": 1},
        "stop_reason": RequiresAction(("e1",)),
        "error": ErrorInfo(type="model_overloaded_error", message="m"),
        "usage": Usage(input_tokens=3),
        "model_usage": Usage(output_tokens=4),
        "budget": {"cap": 1},
        "rubric": {"type": "text", "content": "r"},
        "index": 2,
        "size": 10,
        "iteration": 1,
        "max_iterations": 3,
        "is_error": True,
    }
    if name in samples:
        return samples[name]
    return f"{name}-value"


@pytest.mark.parametrize("cls", sorted(EVENT_CLASSES, key=lambda c: c.__name__))
def test_every_fast_constructor_equals_the_plain_constructor(cls: type[Any]) -> None:
    """The hot path builds events without __init__: it must build the same objects."""
    fields = attrs.fields(cls)
    values = [_sample(f) for f in fields]
    fast = fast_constructor(cls)(*values)
    plain = cls(**{f.alias: v for f, v in zip(fields, values, strict=True)})
    assert type(fast) is cls
    assert fast == plain
    for f in fields:
        assert getattr(fast, f.name) == getattr(plain, f.name)
    assert repr(fast) == repr(plain)
    assert fast.raw == plain.raw


def test_decoding_an_event_goes_through_the_hook_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream decoder and ``structure_event`` run the one ``type`` -> hook table."""

    def tagged(d: Any, cls: Any = None) -> AgentMessage:
        return AgentMessage((TextBlock("from the registered hook"),), id=d.get("id"))

    frame = b'id: e1\nevent: agent.message\ndata: {"id":"e1","type":"agent.message"}\n\n'
    with monkeypatch.context() as patch:
        patch.setitem(EVENT_HOOKS, "agent.message", tagged)
        (ev,) = EventDecoder().feed(frame)
        assert ev.text == "from the registered hook"  # type: ignore[union-attr]
        assert structure_event({"id": "e2", "type": "agent.message"}).text == (  # type: ignore[union-attr]
            "from the registered hook"
        )
    (ev,) = EventDecoder().feed(frame)
    assert ev.text == ""  # type: ignore[union-attr]


async def test_parsing_a_resource_goes_through_the_converter() -> None:
    original = converter.get_structure_hook(Session)
    converter.register_structure_hook(Session, lambda d, _: Session(id="replaced", raw=d))
    try:
        async with FakeQoderServer() as server:
            sid = server.add_session()["id"]
            async with QoderClient(token=server.token, base_url=server.base_url) as client:
                got = await client.sessions.retrieve(sid)
        assert got.id == "replaced"
        assert got.raw["id"] == sid
    finally:
        converter.register_structure_hook(Session, original)


def test_outbound_events_go_through_the_converter() -> None:
    assert converter.unstructure(UserMessage("hi")) == {
        "type": "user.message",
        "content": [{"type": "text", "text": "hi"}],
    }


def test_a_hook_spec_must_cover_every_field() -> None:
    with pytest.raises(TypeError, match="SessionUsage"):
        _hook(SessionUsage, (str_reader, "usage"))


def test_text_blocks_decoded_on_the_fast_path_equal_plain_ones() -> None:
    block = structure_block({"type": "text", "text": "hi", "extra": 1})
    assert type(block) is TextBlock
    assert block == TextBlock("hi")
    assert repr(block) == repr(TextBlock("hi"))
    assert hash(block) == hash(TextBlock("hi"))
