"""Request parsing of the fake server: bodies, fields, input events, pagination."""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from multidict import MultiMapping

from ._wire import INPUT_EVENT_TYPES, bad_request, dumps

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


def paginate(
    items: list[dict[str, Any]],
    query: MultiMapping[str],
    *,
    default_order: str,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """One page of ``items`` (oldest first) per the list query parameters."""
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
    if after and before:
        raise bad_request("after_id and before_id are mutually exclusive", "before_id")
    if page:
        if after or before:
            raise bad_request("page cannot be combined with after_id or before_id", "page")
        direction, anchor = _read_page_token(page)
        after, before = (anchor, None) if direction == "a" else (None, anchor)
    seq = items if order == "asc" else items[::-1]
    wanted = keep or (lambda _item: True)

    def position(anchor: str, param: str) -> int:
        for i, item in enumerate(seq):
            if item.get("id") == anchor:
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
    first_id = data[0].get("id") if data else None
    last_id = data[-1].get("id") if data else None
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


def check_str(obj: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    """A string field (``None`` when absent or null); a required one must be non-empty."""
    value = obj.get(name)
    if value is None:
        if required:
            raise bad_request(f"Missing required field: {name}", name)
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string", name)
    if required and not value:
        raise bad_request(f"{name} must not be empty", name)
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


def check_list(obj: Mapping[str, Any], name: str) -> list[Any] | None:
    """An array field, copied (``None`` when absent)."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request(f"{name} must be an array", name)
    return copy.deepcopy(value)


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
