"""Every captured answer of the managed API decodes, and no field is left to ``.raw``.

The answers (``tests/fixtures/captured/managed_answers.json``) are real
documentation-test runs the official TypeScript SDK keeps as fixtures (its
``source`` names the file and commit), plus the two documented shapes it does
not capture (the cancel answer and the error envelope). Each is decoded the
way the client decodes that endpoint's answer; then every field the server sent
must be reachable through a typed attribute, recursively, except inside the
free-form objects of :data:`FREE_FORM` (the README's "Deliberately untyped" list says why).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from qoder_async import APIResponseValidationError, APIStatusError, NotFoundError, QoderClient
from qoder_async._core.convert import (
    structure_agent,
    structure_deleted,
    structure_environment,
    structure_event,
    structure_file,
    structure_model,
    structure_session,
    structure_session_cancel,
    structure_session_resource,
    structure_thread,
)
from qoder_async._core.errors import error_from_response
from qoder_async._shell.pagination import AsyncPaginator
from qoder_async.types import (
    Agent,
    Deleted,
    ModelConfig,
    ModelInfo,
    Page,
    Session,
    SessionCancel,
    SessionThread,
    Usage,
)

FIXTURE = Path(__file__).parent / "fixtures" / "captured" / "managed_answers.json"
ANSWERS: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["answers"]

#: Fields typed as the JSON object (or list of objects) sent, their insides not
#: modelled: open-ended or server-versioned shapes (the README's "Deliberately
#: untyped" list says why). Keys are ``(class name, attribute)``; any other
#: field reached as a plain mapping fails the test.
FREE_FORM: frozenset[tuple[str, str]] = frozenset(
    {
        ("Agent", "tools"),
        ("Agent", "mcp_servers"),
        ("Agent", "skills"),
        ("Agent", "metadata"),
        ("Agent", "multiagent"),
        ("Session", "metadata"),
        ("Session", "environment_variables"),
        ("Session", "outcome_evaluations"),
        ("SessionThread", "agent"),
        ("SessionResource", "checkout"),
        ("Environment", "config"),
        ("Environment", "metadata"),
        ("FileMetadata", "metadata"),
        ("FileMetadata", "scope"),
    }
)

#: A wire field read into an attribute of another name: ``(class, wire field) -> attribute``.
ALIASES: dict[tuple[type, str], str] = {
    (Usage, "total_credits"): "credits",
    (Agent, "model"): "model_config",
    (SessionThread, "agent"): "agent_snapshot",
}


def decoder(answer_id: str) -> Callable[[Any], Any]:
    """What the client decodes this endpoint's answer (or list item) with."""
    if answer_id.endswith(".delete"):
        return structure_deleted("")
    if answer_id == "sessions.cancel":
        return structure_session_cancel
    for prefix, structure in (
        ("sessions.threads.events.", structure_event),
        ("sessions.events.", structure_event),
        ("sessions.resources.", structure_session_resource),
        ("sessions.threads.", structure_thread),
        ("sessions.", structure_session),
        ("agents.", structure_agent),
        ("environments.", structure_environment),
        ("files.", structure_file),
        ("models.", structure_model),
    ):
        if answer_id.startswith(prefix):
            return structure
    raise AssertionError(f"no decoder for {answer_id}")


def unreachable(obj: Any, wire: Any, where: str) -> list[str]:
    """The paths of ``wire``'s fields that ``obj`` does not carry in a typed attribute."""
    if isinstance(wire, Mapping) and attrs.has(type(obj)):
        cls = type(obj)
        missing = []
        for key, value in wire.items():
            attr = ALIASES.get((cls, key), key)
            if not hasattr(obj, attr):
                missing.append(f"{where}.{key}")
                continue
            typed = getattr(obj, attr)
            items = typed if isinstance(typed, tuple) else (typed,)
            if any(isinstance(i, Mapping) for i in items) and (
                (cls.__name__, attr) not in FREE_FORM
            ):
                missing.append(f"{where}.{key} (a plain object, not listed as free-form)")
                continue
            missing += unreachable(typed, value, f"{where}.{key}")
        return missing
    if isinstance(wire, list) and isinstance(obj, tuple | list):
        if len(obj) != len(wire):
            return [f"{where} (length {len(obj)}, sent {len(wire)})"]
        return [
            m
            for i, (o, w) in enumerate(zip(obj, wire, strict=True))
            for m in unreachable(o, w, f"{where}[{i}]")
        ]
    if isinstance(obj, Mapping):  # a free-form object, typed as the object sent
        return [] if obj == wire else [f"{where} (differs from what was sent)"]
    if isinstance(wire, str) and isinstance(obj, ModelConfig):  # the plain-id form
        return [] if obj.id == wire else [f"{where} (model id differs)"]
    if obj != wire or isinstance(obj, bool) != isinstance(wire, bool):
        return [f"{where} (typed {obj!r}, sent {wire!r})"]
    return []


def _paginator(item: Callable[[Any], Any]) -> AsyncPaginator[Any]:
    return AsyncPaginator(None, "/captured", [], item)  # type: ignore[arg-type]


RESOURCE_ANSWERS = [a for a in ANSWERS if a["id"] != "errors"]


@pytest.mark.parametrize("answer", RESOURCE_ANSWERS, ids=[a["id"] for a in RESOURCE_ANSWERS])
def test_every_captured_field_is_typed(answer: dict[str, Any]) -> None:
    structure = decoder(answer["id"])
    body = answer["response"]
    if "data" in body and answer["id"] != "sessions.events.send":
        page = _paginator(structure).parse_page(body)
        assert isinstance(page, Page)
        missing = [
            f"page.{key}"
            for key in ("first_id", "last_id", "has_more", "next_page")
            if key in body and getattr(page, key) != body[key]
        ]
        missing += unreachable(list(page), body["data"], "data")
        assert set(body) <= {"data", "first_id", "last_id", "has_more", "next_page"}
    elif "data" in body:  # the send answer: the created events
        missing = unreachable([structure(e) for e in body["data"]], body["data"], "data")
    else:
        missing = unreachable(structure(body), body, answer["id"])
    assert missing == []


def test_the_typed_forms_of_the_captures() -> None:
    """The issue's fields, by name: what a user reads instead of ``.raw``."""
    by_id = {a["id"]: a["response"] for a in ANSWERS}
    session = structure_session(by_id["sessions.retrieve"])
    assert isinstance(session, Session)
    assert session.stats is not None
    assert session.stats.active_seconds == 0
    assert session.stats.duration_seconds == 0
    assert session.usage is not None
    assert session.usage.credits == 1.25
    assert (session.deployment_id, session.outcome_evaluations) == (None, ())
    assert session.agent is not None
    assert session.agent.model == "ultimate"
    assert session.agent.model_config == ModelConfig(id="ultimate", effective_context_window=200000)
    created = structure_session(by_id["sessions.create"])
    assert created.environment_variables == {"FEATURE_FLAG": "on", "LOG_LEVEL": "debug"}
    agent = structure_agent(by_id["agents.retrieve"])
    assert (agent.model, agent.model_config) == ("ultimate", ModelConfig(id="ultimate"))
    thread = structure_thread(by_id["sessions.threads.archive"])
    assert thread.agent_snapshot is not None
    assert thread.agent_snapshot.model_config == ModelConfig(
        id="ultimate", effective_context_window=200000
    )
    assert thread.agent["version"] == 2  # the object as sent stays
    model = structure_model(by_id["models.list"]["data"][0])
    assert isinstance(model, ModelInfo)
    assert (model.source, model.is_new, model.price_factor) == ("system", False, 1.6)
    assert model.efforts == ("low", "medium", "high", "xhigh", "max")
    assert (model.default_effort, model.default_context_window) == ("high", 200000)
    assert model.available_context_windows == (200000, 400000, 1000000)
    cancel = structure_session_cancel(by_id["sessions.cancel"])
    assert isinstance(cancel, SessionCancel)
    assert (cancel.id, cancel.type, cancel.status) == (
        "sess_019ef30a4f0275678965d496ab542ef0",
        "session",
        "canceling",
    )
    for answer_id, kind in (
        ("sessions.delete", "session_deleted"),
        ("files.delete", "file_deleted"),
        ("environments.delete", "environment_deleted"),
        ("sessions.resources.delete", "session_resource_deleted"),
    ):
        deleted = structure_deleted("")(by_id[answer_id])
        assert isinstance(deleted, Deleted)
        assert deleted.type == kind


def test_page_cursors_of_a_version_listing_and_of_models() -> None:
    by_id = {a["id"]: a["response"] for a in ANSWERS}
    versions = _paginator(structure_agent).parse_page(by_id["agents.versions.list"])
    assert (versions.first_id, versions.last_id) == ("2", "1")  # version numbers
    assert [a.version for a in versions] == [2, 1]
    models = _paginator(structure_model).parse_page(by_id["models.list"])
    assert (models.first_id, models.last_id, models.next_page, models.has_more) == (
        None,
        None,
        None,
        False,
    )
    agents = _paginator(structure_agent).parse_page(by_id["agents.list"])
    assert agents.next_page == agents.last_id == "agent_019eYYYYYYYYYYYYYYYYYYYYYYYYYYYY"
    assert agents.has_more is True


def test_the_error_envelope_names_its_request() -> None:
    """The envelope's top-level ``request_id`` wins over the header; the header is the fallback."""
    (answer,) = [a for a in ANSWERS if a["id"] == "errors"]
    body = answer["response"]
    content = json.dumps(body).encode()
    err = error_from_response(answer["status"], content, {"x-request-id": "req_from_header"})
    assert isinstance(err, APIStatusError)
    assert err.request_id == body["request_id"]
    assert (err.error_type, err.message, err.param) == (
        body["error"]["type"],
        body["error"]["message"],
        body["error"]["param"],
    )
    without = json.dumps({k: v for k, v in body.items() if k != "request_id"}).encode()
    fallback = error_from_response(answer["status"], without, {"x-request-id": "req_from_header"})
    assert fallback.request_id == "req_from_header"


# --------------------------------------------------------------------------- against the fake


async def test_the_fake_answers_like_the_captures(client: QoderClient) -> None:
    """Cancel answers a SessionCancel; an error envelope names the request like its header."""
    env = await client.environments.create(name="captured")
    agent = await client.agents.create(name="captured", model="auto")
    session = await client.sessions.create(agent=agent.id, environment_id=env.id)
    assert {"deployment_id", "outcome_evaluations"} <= set(session.raw)
    cancelled = await client.sessions.cancel(session.id)
    assert isinstance(cancelled, SessionCancel)
    assert (cancelled.id, cancelled.status) == (session.id, "canceling")
    with pytest.raises(NotFoundError) as caught:
        await client.sessions.retrieve("sess_missing")
    body = caught.value.body
    assert isinstance(body, dict)
    headers = {k.lower(): v for k, v in caught.value.headers.items()}
    assert body["request_id"] == headers["x-request-id"] == caught.value.request_id


def test_the_readme_lists_every_free_form_field() -> None:
    """The README's "Deliberately untyped" paragraph names each field of FREE_FORM."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("Deliberately untyped:")
    paragraph = readme[start : readme.index("\n\n", start)]
    for _, attr in sorted(FREE_FORM):
        assert f"`{attr}`" in paragraph or f".{attr}`" in paragraph, attr


def test_a_version_listing_never_pages_by_its_agent_id() -> None:
    """Version numbers are cursors (also as JSON numbers); an item's id stands in only if unique."""
    paginator = _paginator(structure_agent)
    same_agent = [{"id": "agent_x", "version": 2}, {"id": "agent_x", "version": 1}]
    assert paginator._next_cursor({"data": same_agent, "has_more": True, "last_id": 1}) == (
        "after_id",
        "1",
    )
    with pytest.raises(APIResponseValidationError, match="names no cursor"):
        paginator._next_cursor({"data": same_agent, "has_more": True})
    distinct = [{"id": "agent_a"}, {"id": "agent_b"}]
    assert paginator._next_cursor({"data": distinct, "has_more": True}) == ("after_id", "agent_b")
