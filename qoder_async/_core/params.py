"""Typed request parameters: the JSON objects a call takes, as ``TypedDict``s.

Plain dicts at run time (pass a dict literal; a type checker checks its keys),
named as the official SDK names them so code moves over unchanged. Every
parameter that takes one of these also takes any ``Mapping``: fields this
version does not list go through as they are.

==================================  ===========================================
parameter                           shapes
==================================  ===========================================
``sessions.create(agent=...)``      an agent id, :class:`AgentParams` (a pinned
                                    version) or :class:`AgentWithOverridesParams`
``sessions.create(resources=...)``  :class:`GitHubRepositoryResourceParams`,
``sessions.resources.add(...)``     :class:`FileResourceParams`,
                                    :class:`MemoryStoreResourceParams`
``budget=``                         :class:`BudgetLimitParam`
``sessions.update(agent=...)``      :class:`SessionAgentUpdateParams`
``tools=``                          :class:`AgentToolsetParams`,
                                    :class:`CustomToolParams`,
                                    :class:`MCPToolsetParams`
``mcp_servers=``                    :class:`URLMCPServerParams`
``skills=``                         :class:`CustomSkillParams`,
                                    :class:`QoderSkillParams`
``deployments.create(schedule=)``   :class:`ScheduleParams`
``dreams.create(inputs=...)``       :class:`DreamMemoryStoreInputParams`,
                                    :class:`DreamSessionsInputParams`
``dreams.create(model=...)``        a model id or :class:`DreamModelParams`
``output_behavior=`` (dreams)        :class:`OutputBehaviorParams`
==================================  ===========================================
"""

from __future__ import annotations

from typing import Any, Literal, Required, TypeAlias, TypedDict

__all__ = [
    "AgentParams",
    "AgentToolsetParams",
    "AgentWithOverridesParams",
    "BranchCheckoutParam",
    "BudgetLimitParam",
    "CommitCheckoutParam",
    "CustomSkillParams",
    "CustomToolParams",
    "DreamInputParams",
    "DreamMemoryStoreInputParams",
    "DreamModelParams",
    "DreamSessionsInputParams",
    "FileResourceParams",
    "GitHubRepositoryResourceParams",
    "MCPToolsetParams",
    "MemoryStoreResourceParams",
    "OutputBehaviorParams",
    "QoderSkillParams",
    "ScheduleParams",
    "SessionAgentUpdateParams",
    "SessionResourceParams",
    "SkillParams",
    "ToolParams",
    "URLMCPServerParams",
]


class BranchCheckoutParam(TypedDict):
    """Check a repository out at a branch: ``{"type": "branch", "name": "main"}``."""

    type: Literal["branch"]
    name: str


class CommitCheckoutParam(TypedDict):
    """Check a repository out at a commit: ``{"type": "commit", "sha": "..."}``."""

    type: Literal["commit"]
    sha: str


class GitHubRepositoryResourceParams(TypedDict, total=False):
    """A GitHub repository cloned into the sandbox.

    ``authorization_token`` is write-only: the API never returns it (rotate it
    with ``sessions.resources.update``).
    """

    type: Required[Literal["github_repository"]]
    url: Required[str]
    checkout: BranchCheckoutParam | CommitCheckoutParam
    mount_path: str | None
    authorization_token: str


class FileResourceParams(TypedDict, total=False):
    """An uploaded file (``client.files.upload``) mounted into the sandbox."""

    type: Required[Literal["file"]]
    file_id: Required[str]
    mount_path: str | None


class MemoryStoreResourceParams(TypedDict, total=False):
    """A memory store the agent reads (and, with ``read_write``, writes)."""

    type: Required[Literal["memory_store"]]
    memory_store_id: Required[str]
    access: Literal["read_write", "read_only"]
    instructions: str | None
    name: str | None
    description: str | None
    mount_path: str | None


SessionResourceParams: TypeAlias = (
    GitHubRepositoryResourceParams | FileResourceParams | MemoryStoreResourceParams
)
"""Any resource a session can mount."""


class BudgetLimitParam(TypedDict):
    """A spend cap: ``{"type": "limit", "max_credit_cost": "5.00"}`` (a decimal string)."""

    type: Literal["limit"]
    max_credit_cost: str


class AgentToolsetParams(TypedDict, total=False):
    """The built-in tools: ``{"type": "agent_toolset_20260401", "enabled_tools": [...]}``."""

    type: Required[Literal["agent_toolset_20260401"]]
    enabled_tools: list[str]
    disallowed_tools: list[str]
    configs: list[dict[str, Any]]
    default_config: dict[str, Any]


class CustomToolParams(TypedDict):
    """A client-side tool: the agent asks, your handler answers (``send(tools=...)``)."""

    type: Literal["custom"]
    name: str
    description: str
    input_schema: dict[str, Any]


class MCPToolsetParams(TypedDict, total=False):
    """The tools of one of the agent's MCP servers (``mcp_servers``)."""

    type: Required[Literal["mcp_toolset"]]
    mcp_server_name: Required[str]
    configs: list[dict[str, Any]]
    default_config: dict[str, Any]


ToolParams: TypeAlias = AgentToolsetParams | CustomToolParams | MCPToolsetParams
"""Any entry of an agent's ``tools``."""


class URLMCPServerParams(TypedDict):
    """An MCP server reached over HTTP: ``{"type": "url", "name": ..., "url": ...}``."""

    type: Literal["url"]
    name: str
    url: str


class CustomSkillParams(TypedDict, total=False):
    """A skill you uploaded (``skill_...``), at its latest or a given version."""

    type: Required[Literal["custom"]]
    skill_id: Required[str]
    version: str | None


class QoderSkillParams(TypedDict, total=False):
    """A skill Qoder provides."""

    type: Required[Literal["qoder"]]
    skill_id: Required[str]
    version: str | None


SkillParams: TypeAlias = CustomSkillParams | QoderSkillParams
"""Any entry of an agent's ``skills``."""


class AgentParams(TypedDict, total=False):
    """An agent pinned to a version: ``{"type": "agent", "id": ..., "version": 2}``."""

    type: Required[Literal["agent"]]
    id: Required[str]
    version: int | None


class SessionAgentUpdateParams(TypedDict, total=False):
    """What ``sessions.update(agent=...)`` may change of a session's agent."""

    system: str | None
    model: str | dict[str, Any]
    tools: list[ToolParams]
    mcp_servers: list[URLMCPServerParams]
    skills: list[SkillParams]


class AgentWithOverridesParams(SessionAgentUpdateParams, total=False):
    """An agent with some of its settings replaced for one session."""

    type: Required[Literal["agent_with_overrides"]]
    id: Required[str]
    version: int | None


# --- deployments, dreams


class ScheduleParams(TypedDict):
    """A deployment's schedule: ``{"type": "cron", "expression": "0 9 * * *", "timezone": ...}``."""

    type: Literal["cron"]
    expression: str
    timezone: str


class DreamMemoryStoreInputParams(TypedDict):
    """A dream reads a memory store: ``{"type": "memory_store", "memory_store_id": ...}``."""

    type: Literal["memory_store"]
    memory_store_id: str


class DreamSessionsInputParams(TypedDict):
    """A dream reads sessions: ``{"type": "sessions", "session_ids": [...]}``."""

    type: Literal["sessions"]
    session_ids: list[str]


DreamInputParams: TypeAlias = DreamMemoryStoreInputParams | DreamSessionsInputParams
"""Any entry of a dream's ``inputs``."""


class DreamModelParams(TypedDict, total=False):
    """A dream's model: ``{"id": "auto", "speed": "fast"}``."""

    id: Required[str]
    speed: Literal["standard", "fast"]


class OutputBehaviorParams(TypedDict, total=False):
    """Where a dream writes: ``{"type": "create_new"}`` or ``{"type": "update_existing",
    "memory_store_id": ...}``."""

    type: Required[Literal["create_new", "update_existing"]]
    memory_store_id: str
