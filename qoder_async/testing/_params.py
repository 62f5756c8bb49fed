"""Request parsing of the fake server: bodies, fields, input events, pagination,
and the handlers every kind of resource has alike (show, list, archive).

Every check raises a 400 ``invalid_request_error`` whose ``param`` names the
offending field; values are copied, never kept by reference.
"""

from __future__ import annotations

import base64
import binascii
import copy
import email.parser
import email.policy
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from aiohttp import web
from multidict import MultiMapping

from ._wire import INPUT_EVENT_TYPES, Ids, bad_request, dumps, json_response

_T = TypeVar("_T")
Handler = Callable[[web.Request], Awaitable[web.Response]]
#: The resource a request's path names (raising its 404).
Finder = Callable[[web.Request], dict[str, Any]]

_SERVER_FIELDS = ("id", "session_id", "turn_id", "schema_version", "created_at", "processed_at")
_DELTA_KINDS = frozenset({"agent.message", "agent.thinking"})


def _page_token(direction: str, anchor: str) -> str:
    raw = dumps({"d": direction, "id": anchor}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_page_token(token: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
        direction, anchor = value["d"], value["id"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise bad_request("Invalid page cursor", "page") from None
    if direction not in ("a", "b") or not isinstance(anchor, str):
        raise bad_request("Invalid page cursor", "page")
    return direction, anchor


def bool_param(query: MultiMapping[str], name: str) -> bool:
    """A ``true``/``false`` query parameter (absent = false); anything else is a 400."""
    value = query.get(name)
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise bad_request(f"{name} must be true or false", name)


def int_param(query: Mapping[str, str], name: str, *, non_negative: bool = False) -> int | None:
    """An integer query parameter (``None`` when absent); not one (or negative): 400."""
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer", name) from None
    if non_negative and value < 0:
        raise bad_request(f"{name} must not be negative", name)
    return value


async def read_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The JSON object of a request body (``{}`` when empty and not ``required``)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise bad_request("Request body is required")
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise bad_request("Malformed JSON body") from None
    if not isinstance(value, dict):
        raise bad_request("Request body must be a JSON object")
    return value


def _item_id(item: dict[str, Any]) -> str | None:
    value = item.get("id")
    return value if isinstance(value, str) else None


def paginate(
    items: list[dict[str, Any]],
    query: MultiMapping[str],
    *,
    default_order: str,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    key: Callable[[dict[str, Any]], str | None] = _item_id,
    aliases: bool = False,
    archivable: bool = False,
) -> dict[str, Any]:
    """One page of ``items`` (oldest first) per the list query parameters.

    ``key`` names an item for the cursors (``after_id``, ``before_id``,
    ``first_id``, ``last_id`` and the ``page`` token): its ``id`` unless the
    items share ids (agent versions). ``aliases`` also accepts ``after`` and
    ``before`` (files). ``archivable`` leaves out archived items unless
    ``include_archived`` is true.
    """
    live_only = archivable and not bool_param(query, "include_archived")
    raw_limit = query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise bad_request("limit must be an integer between 1 and 100", "limit") from None
    if not 1 <= limit <= 100:
        raise bad_request("limit must be an integer between 1 and 100", "limit")
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc", "order")
    after, before, page = query.get("after_id"), query.get("before_id"), query.get("page")
    if aliases:
        after, before = after or query.get("after"), before or query.get("before")
    if after and before:
        raise bad_request("after_id and before_id are mutually exclusive", "before_id")
    if page:
        if after or before:
            raise bad_request("page cannot be combined with after_id or before_id", "page")
        direction, anchor = _read_page_token(page)
        after, before = (anchor, None) if direction == "a" else (None, anchor)
    seq = items if order == "asc" else items[::-1]

    def wanted(item: dict[str, Any]) -> bool:
        if live_only and item["archived_at"] is not None:
            return False
        return keep is None or keep(item)

    def position(anchor: str, param: str) -> int:
        for i, item in enumerate(seq):
            if key(item) == anchor:
                return i
        raise bad_request(f"Unknown {param}: {anchor}", param)

    if before:
        candidates = [it for it in seq[: position(before, "before_id")] if wanted(it)]
        data = candidates[-limit:]
        has_more = len(candidates) > limit
        direction = "b"
    else:
        start = position(after, "after_id") + 1 if after else 0
        data, has_more = [], False
        for item in seq[start:]:
            if not wanted(item):
                continue
            if len(data) == limit:
                has_more = True
                break
            data.append(item)
        direction = "a"
    first_id = key(data[0]) if data else None
    last_id = key(data[-1]) if data else None
    next_page = None
    if has_more and data:
        next_page = _page_token(direction, str(last_id if direction == "a" else first_id))
    return {
        "data": data,
        "first_id": first_id,
        "last_id": last_id,
        "has_more": has_more,
        "next_page": next_page,
    }


def path_id(lookup: Callable[[str], _T]) -> Callable[[web.Request], _T]:
    """The finder calling ``lookup`` with the path's ``{id}``."""
    return lambda request: lookup(request.match_info["id"])


def show(find: Finder) -> Handler:
    """The handler answering the resource ``find`` finds (``GET /things/{id}``)."""

    async def handler(request: web.Request) -> web.Response:
        return json_response(200, find(request))

    return handler


def lister(
    items: Callable[[web.Request], list[dict[str, Any]]],
    *,
    order: str,
    archivable: bool = False,
    key: Callable[[dict[str, Any]], str | None] = _item_id,
) -> Handler:
    """The handler answering a page of ``items`` (see `paginate`)."""

    async def handler(request: web.Request) -> web.Response:
        page = paginate(
            items(request), request.query, default_order=order, archivable=archivable, key=key
        )
        return json_response(200, page)

    return handler


def archiver(find: Finder, ids: Ids, **changes: str) -> Handler:
    """The handler archiving what ``find`` finds, once (with ``changes``), and answering it."""

    async def handler(request: web.Request) -> web.Response:
        item = find(request)
        if item["archived_at"] is None:
            item["archived_at"] = item["updated_at"] = ids.now()
            item.update(changes)
        return json_response(200, item)

    return handler


def agent_ref(value: Any, kinds: tuple[str, ...] = ("agent",)) -> tuple[str, int | None]:
    """The id and version (``None``: the latest) of an agent id or reference object.

    A reference is ``{"type", "id", "version"}``, its ``type`` one of ``kinds``.
    """
    version = None
    if isinstance(value, dict):
        if value.get("type", "agent") not in kinds:
            names = " or ".join(repr(kind) for kind in kinds)
            raise bad_request(f"agent.type must be {names}", "agent")
        version = value.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise bad_request("agent.version must be an integer", "agent")
        value = value.get("id")
    if value is None:
        raise bad_request("Missing required field: agent", "agent")
    if not isinstance(value, str) or not value:
        raise bad_request("agent must be an agent id or an agent reference object", "agent")
    return value, version


def check_str(
    obj: Mapping[str, Any], name: str, *, required: bool = False, within: str | None = None
) -> str | None:
    """A string field (``None`` when absent or null); a required one must be non-empty.

    ``within`` prefixes the field in errors (``resources[0]`` -> ``resources[0].url``).
    """
    value = obj.get(name)
    param = f"{within}.{name}" if within else name
    if value is None:
        if required:
            raise bad_request(f"Missing required field: {param}", param)
        return None
    if not isinstance(value, str):
        raise bad_request(f"{param} must be a string", param)
    if required and not value:
        raise bad_request(f"{param} must not be empty", param)
    return value


def check_metadata(obj: Mapping[str, Any], name: str = "metadata") -> dict[str, str] | None:
    """A string-to-string map of at most 16 keys (``None`` when absent)."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise bad_request(f"{name} must be an object of string values", name)
    if len(value) > 16:
        raise bad_request(f"{name} has more than 16 keys", name)
    return dict(value)


def _typed(obj: Mapping[str, Any], name: str, kind: type[_T], what: str) -> _T | None:
    """A field of JSON type ``kind`` (``what`` in the error), copied (``None`` when absent)."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise bad_request(f"{name} must be {what}", name)
    return copy.deepcopy(value)


def check_list(obj: Mapping[str, Any], name: str) -> list[Any] | None:
    """An array field, copied (``None`` when absent)."""
    return _typed(obj, name, list, "an array")


def check_content(value: Any, param: str, *, required: bool) -> list[Any] | None:
    """Content blocks; a plain string is normalised to one text block."""
    if value is None:
        if required:
            raise bad_request(f"Missing required field: {param}", param)
        return None
    if isinstance(value, str):
        if required and not value:
            raise bad_request(f"{param} must not be empty", param)
        return [{"type": "text", "text": value}]
    if not isinstance(value, list) or (required and not value):
        raise bad_request(f"{param} must be a non-empty array of content blocks", param)
    for i, block in enumerate(value):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(f"{param}[{i}] must be a content block with a type", param)
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise bad_request(f"{param}[{i}].text must be a string", param)
    return copy.deepcopy(value)


def answer_ref(event: Mapping[str, Any]) -> str | None:
    """The tool-use event id an answering event refers to (both spellings)."""
    ref = event.get("custom_tool_use_id") or event.get("tool_use_id")
    return ref if isinstance(ref, str) else None


def validate_input_event(index: int, event: Any) -> dict[str, Any]:
    """A client event checked and normalised (``type`` first, server fields dropped)."""
    param = f"events[{index}]"
    if not isinstance(event, dict):
        raise bad_request(f"{param} must be an object", param)
    kind = event.get("type")
    if not isinstance(kind, str):
        raise bad_request(f"Missing required field: {param}.type", f"{param}.type")
    if kind not in INPUT_EVENT_TYPES:
        raise bad_request(f"{param}.type {kind!r} cannot be sent by a client", f"{param}.type")
    out: dict[str, Any] = {"type": kind}
    out.update({k: v for k, v in event.items() if k not in _SERVER_FIELDS and k != "type"})
    if kind in ("user.message", "system.message"):
        out["content"] = check_content(event.get("content"), f"{param}.content", required=True)
    elif kind in ("user.custom_tool_result", "user.tool_result"):
        if answer_ref(event) is None:
            field = "custom_tool_use_id" if kind == "user.custom_tool_result" else "tool_use_id"
            raise bad_request(f"Missing required field: {param}.{field}", f"{param}.{field}")
        content = check_content(event.get("content"), f"{param}.content", required=False)
        if content is not None:
            out["content"] = content
        if "is_error" in event and not isinstance(event["is_error"], bool):
            raise bad_request(f"{param}.is_error must be a boolean", f"{param}.is_error")
    elif kind == "user.tool_confirmation":
        if not isinstance(event.get("tool_use_id"), str):
            raise bad_request(f"Missing required field: {param}.tool_use_id", param)
        if event.get("result") not in ("allow", "deny") and event.get("decision") not in (
            "approve",
            "deny",
        ):
            raise bad_request(f"{param}.result must be allow or deny", f"{param}.result")
    return out


def delta_kinds(values: Iterable[str]) -> list[str]:
    """The ``event_deltas[]`` values (repeated or comma-separated), checked."""
    kinds = []
    for value in values:
        for kind in value.split(","):
            if kind not in _DELTA_KINDS:
                raise bad_request(
                    f"event_deltas[] accepts agent.message and agent.thinking, not {kind!r}",
                    "event_deltas[]",
                )
            kinds.append(kind)
    return kinds


def check_str_list(obj: Mapping[str, Any], name: str) -> list[str] | None:
    """An array of non-empty strings, copied (``None`` when absent)."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise bad_request(f"{name} must be an array of strings", name)
    return list(value)


def check_object(obj: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """A JSON object field, copied (``None`` when absent)."""
    return _typed(obj, name, dict, "an object")


def check_model(value: Any, param: str) -> str | dict[str, Any]:
    """A model: a name such as ``"ultimate"`` or an object with an ``id``."""
    if isinstance(value, dict):
        if not isinstance(value.get("id"), str) or not value["id"]:
            raise bad_request(f"{param}.id must be a string", param)
        return copy.deepcopy(value)
    if not isinstance(value, str) or not value:
        raise bad_request(f"{param} must be a string or an object with an id", param)
    return value


def check_env_vars(
    obj: Mapping[str, Any], name: str = "environment_variables"
) -> dict[str, str] | None:
    """Environment variables as an object of strings or ``"K=V"`` lines (``None`` when absent)."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        pairs: dict[str, str] = {}
        for line in value.splitlines():
            if not line.strip():
                continue
            key, sep, val = line.partition("=")
            if not sep:
                raise bad_request(f"{name}: {line!r} is not a KEY=VALUE line", name)
            pairs[key.strip()] = val
        value = pairs
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise bad_request(f"{name} must be an object of strings or KEY=VALUE lines", name)
    if not all(k and "=" not in k for k in value):
        raise bad_request(f"{name} has an empty or invalid variable name", name)
    return dict(value)


#: Session resource types and the fields each keeps (beyond ``type``), the required one first.
RESOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "file": ("file_id", "mount_path"),
    "github_repository": ("url", "checkout", "mount_path"),
    "git_repository": ("url", "checkout", "mount_path"),
    "memory_store": (
        "memory_store_id",
        "access",
        "instructions",
        "name",
        "description",
        "mount_path",
    ),
}
#: The write-only secret of each repository resource type (never echoed).
RESOURCE_SECRETS = {"github_repository": "authorization_token", "git_repository": "password"}


def check_resource(value: Any, param: str) -> tuple[dict[str, Any], str | None]:
    """A session resource: its public fields and its secret (token/password), if any.

    Whether a ``file`` resource's ``file_id`` exists is the caller's check.
    """
    if not isinstance(value, dict):
        raise bad_request(f"{param} must be an object", param)
    kind = value.get("type")
    if kind not in RESOURCE_FIELDS:
        kinds = ", ".join(RESOURCE_FIELDS)
        raise bad_request(f"{param}.type must be one of {kinds}", f"{param}.type")
    check_str(value, RESOURCE_FIELDS[kind][0], required=True, within=param)
    out: dict[str, Any] = {"type": kind}
    for name in RESOURCE_FIELDS[kind]:
        if name == "checkout":
            continue
        field = check_str(value, name, within=param)
        if field is not None or name == "mount_path":
            out[name] = field
    if kind == "memory_store" and out.get("access") not in (None, "read_write", "read_only"):
        raise bad_request(f"{param}.access must be read_write or read_only", f"{param}.access")
    checkout = value.get("checkout")
    if checkout is not None:
        branch = isinstance(checkout, dict) and checkout.get("type") == "branch"
        commit = isinstance(checkout, dict) and checkout.get("type") == "commit"
        field = "name" if branch else "sha"
        if "checkout" not in RESOURCE_FIELDS[kind] or not (branch or commit):
            raise bad_request(
                f"{param}.checkout must be {{type: branch, name}} or {{type: commit, sha}}",
                f"{param}.checkout",
            )
        check_str(checkout, field, required=True, within=f"{param}.checkout")
        out["checkout"] = {"type": checkout["type"], field: checkout[field]}
    secret_name = RESOURCE_SECRETS.get(kind)
    secret = check_str(value, secret_name, within=param) if secret_name else None
    return out, secret


def file_refs(content: Any) -> list[tuple[int, Any]]:
    """``(block index, file_id)`` of every content block whose source is a file."""
    refs = []
    for j, block in enumerate(content if isinstance(content, list) else []):
        source = block.get("source") if isinstance(block, dict) else None
        if isinstance(source, dict) and source.get("type") == "file":
            refs.append((j, source.get("file_id")))
    return refs


class FormPart(NamedTuple):
    """One part of a ``multipart/form-data`` body."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def form_fields(parts: list[FormPart]) -> dict[str, str]:
    """The text fields of a form (its parts without a filename), decoded."""
    return {p.name: p.data.decode("utf-8", errors="replace") for p in parts if p.filename is None}


def form_json(fields: Mapping[str, str], name: str, default: Any = None) -> Any:
    """The JSON value of a form field: ``default`` when absent or empty, ``None`` when not JSON."""
    if not fields.get(name):
        return default
    try:
        return json.loads(fields[name])
    except ValueError:
        return None


def parse_multipart(content_type: str, body: bytes) -> list[FormPart]:
    """The parts of a ``multipart/form-data`` body (400 if it is not one)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise bad_request("Content-Type must be multipart/form-data")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise bad_request("Malformed multipart/form-data body")
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            raise bad_request("Malformed multipart/form-data part")
        header = part.get("content-type")
        media = str(header).split(";", 1)[0].strip().lower() if header else None
        parts.append(FormPart(name, part.get_filename(), media or None, payload))
    return parts
