"""SHELL: custom tools from Python functions: the agent's definition and the handler in one.

::

    @tool
    async def get_weather(city: str, unit: Literal["c", "f"] = "c") -> str:
        '''The current weather in a city.

        Args:
            city: The city, e.g. "Paris".
            unit: Celsius or Fahrenheit.
        '''
        return f"sunny, 21 {unit} in {city}"

    await client.agents.create(name="helper", model="auto", tools=[get_weather])
    turn = await session.send("Weather in Paris?", tools=[get_weather])

The definition (``get_weather.definition``) is what an agent declares:
``{"type": "custom", "name", "description", "input_schema"}``, the schema a JSON
Schema object built from the signature:

==================================  ===============================================
annotation                          JSON Schema
==================================  ===============================================
``str``, ``int``, ``float``,        ``string``, ``integer``, ``number``, ``boolean``
``bool``
``None``                            ``null``
``list[T]``, ``tuple[T, ...]``,     ``array`` of ``T``
``Sequence[T]``, ``set[T]``
``dict[str, T]``, ``Mapping``       ``object`` with ``additionalProperties`` ``T``
``Literal["a", 1]``                 ``enum``
an ``enum.Enum`` subclass           ``enum`` of its values
``X | Y``, ``Optional[X]``          ``anyOf``
a ``TypedDict``                     ``object`` with its keys (``required`` as declared)
``Annotated[T, "text"]``            ``T`` with ``description`` ``text``
no annotation, ``Any``              any value (``{}``)
==================================  ===============================================

A parameter without a default is required; a default becomes ``default``. The
description is the docstring's first paragraph; parameter descriptions come
from a Google-style ``Args:`` section (or ``Annotated``). The handler receives
the agent's input as keyword arguments: plain functions run in a thread.

What a handler returns is posted as the ``content`` (a list of blocks) of its
``user.custom_tool_result``, by one conversion (:func:`tool_result`) for the
turn API (``send(tools=...)``, ``submit_tool_results``) and the fleet alike:

=========================================  ================================================
the handler returns                        the result posted
=========================================  ================================================
a ``str``                                  one text block holding it
a content block (``TextBlock``,            that block, as it is
``ImageBlock``, ``DocumentBlock``...)
a list or tuple of content blocks and      its items in order, each ``str`` as a text
``str``, with at least one block           block
``None`` (an action tool)                  an empty success: no blocks
a ``UserCustomToolResult``                 as it is (answering in the call's thread)
any other JSON value: a ``dict`` with      one text block: its JSON text (``json.dumps``,
``str`` keys, a list or tuple (of only     non-ASCII kept); a list of ``str`` is data
``str`` too), an ``int``, ``float``,       (``'["a", "b"]'``), not text blocks; no size
``bool``, nested                           limit here: the API's own body limit applies
a NaN or infinite float, a ``dict`` key    an error result naming the value (``ValueError``
that is not a ``str``, text with a lone    or ``TypeError: ...``); JSON has no NaN, and
surrogate (not valid Unicode)              ``{1: ...}`` and ``{"1": ...}`` would collide
anything else (``bytes``, a ``set``, an    an error result naming the type (``TypeError:
object, a list mixing blocks with data)    ...``)
the handler raises                         an error result ``"<Type>: <message>"``
=========================================  ================================================

An output that cannot be converted counts as the handler raising: the error
result is posted and logged at WARNING with its traceback (the turn API's
``on_tool_error="raise"`` raises it to the turn's reader instead). It never
stops the tool runner: every call is answered. ``submit_tool_results`` raises
it before posting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar, overload

from qoder_async._core.errors import ConfigurationError
from qoder_async._core.models import (
    ContentBlock,
    DocumentBlock,
    ImageBlock,
    TextBlock,
    UnknownBlock,
    UserCustomToolResult,
)
from qoder_async._core.turns import ToolCall

__all__ = [
    "Tool",
    "ToolHandler",
    "ToolOutput",
    "Tools",
    "call_handler",
    "call_slots",
    "error_result",
    "results_key",
    "tool",
    "tool_content",
    "tool_handlers",
    "tool_result",
]

_R = TypeVar("_R")

ToolOutput: TypeAlias = (
    str
    | ContentBlock
    | list[Any]
    | tuple[Any, ...]
    | dict[str, Any]
    | int
    | float
    | UserCustomToolResult
    | None
)
"""What a tool handler returns: text, content blocks, ``None``, a JSON value, or a
ready-made result event (see the conversion table of ``qoder_async._api.tools``)."""
ToolHandler: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[ToolOutput] | ToolOutput]
"""A custom tool: ``async def`` or plain ``def handler(input) -> ToolOutput``.

Plain functions run in a thread. What it returns is posted as the module table
says (a ``dict`` as its JSON text, ``None`` as an empty success). Raising, or
returning what has no conversion, reports an error result to the agent
(``on_tool_error="report"``) or raises it to the turn's reader (``"raise"``).
"""
_BLOCKS = (TextBlock, ImageBlock, DocumentBlock, UnknownBlock)
_ARG_LINE = re.compile(r"^\s{0,8}(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARG_SECTIONS = frozenset({"Args:", "Arguments:", "Parameters:"})


class Tool:
    """A custom tool: ``definition`` for the agent, and the handler for ``send(tools=...)``.

    Build one with :func:`tool`. Calling it with the agent's input mapping runs
    the function with that input as keyword arguments; what it returns is posted
    as :func:`tool` says.
    """

    __slots__ = ("description", "function", "input_schema", "name")

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        if not callable(function):
            raise TypeError(f"a tool needs a function, got {function!r}")
        self.function = function
        self.name = name or function.__name__
        summary, params = _parse_docstring(inspect.getdoc(function) or "")
        self.description = description if description is not None else summary
        self.input_schema = _input_schema(function, params)

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"

    @property
    def definition(self) -> dict[str, Any]:
        """The agent's custom tool definition (``type``, ``name``, ``description``, schema)."""
        return {
            "type": "custom",
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }

    async def __call__(self, args: Mapping[str, Any]) -> Any:
        """Run the function with the agent's input (a plain function runs in a thread)."""
        return await _run(self.function, **args)


async def _run(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Await a coroutine function; run any other in a thread, awaiting what it returns."""
    if inspect.iscoroutinefunction(function):
        return await function(*args, **kwargs)
    out = await asyncio.to_thread(function, *args, **kwargs)
    if inspect.isawaitable(out):
        out = await out
    return out


@overload
def tool(function: Callable[..., _R], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., _R]], Tool]: ...


def tool(
    function: Callable[..., _R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., _R]], Tool]:
    """Turn a function into a :class:`Tool` (bare ``@tool`` or ``@tool(name=...)``).

    The function may return a ``str`` (posted as text), content blocks (as they
    are), ``None`` (an empty success) or any other JSON value (a ``dict``, list,
    number or ``bool``: posted as its JSON text). Anything else, a NaN, or a
    ``dict`` key that is not a ``str`` is reported to the agent as an error
    naming it, and logged (see the table of ``qoder_async._api.tools``).
    """
    wrap = functools.partial(Tool, name=name, description=description)
    return wrap if function is None else wrap(function)


Tools: TypeAlias = Mapping[str, ToolHandler] | Sequence["Tool"]
"""What ``tools=`` takes: :func:`tool` functions, or names mapped to handlers."""


def tool_handlers(tools: Tools | None) -> dict[str, ToolHandler]:
    """``send(tools=...)``'s argument as a name -> handler mapping (a list of tools too)."""
    if tools is None:
        return {}
    if isinstance(tools, Mapping):
        return dict(tools)
    out: dict[str, ToolHandler] = {}
    for item in tools:
        if not isinstance(item, Tool):
            raise TypeError(f"tools= takes a mapping of handlers or Tool objects, got {item!r}")
        out[item.name] = item
    return out


def call_slots(max_concurrent_calls: int | None) -> contextlib.AbstractAsyncContextManager[Any]:
    """What a tool handler runs inside: at most ``max_concurrent_calls`` at once (``None``:
    no cap). Anything but ``None`` or a positive ``int`` is a :class:`ConfigurationError`."""
    if max_concurrent_calls is None:
        return contextlib.nullcontext()
    if (
        not isinstance(max_concurrent_calls, int)
        or isinstance(max_concurrent_calls, bool)
        or max_concurrent_calls < 1
    ):
        raise ConfigurationError(
            f"max_concurrent_calls must be a positive int or None, got {max_concurrent_calls!r}"
        )
    return asyncio.Semaphore(max_concurrent_calls)


async def call_handler(handler: ToolHandler, args: Mapping[str, Any]) -> ToolOutput:
    """Run a tool handler: coroutines (and :class:`Tool`) awaited, plain functions in a thread."""
    out: ToolOutput = await (handler(args) if isinstance(handler, Tool) else _run(handler, args))
    return out


def tool_result(call: ToolCall, out: object, is_error: bool) -> UserCustomToolResult:
    """The ``user.custom_tool_result`` answering ``call`` with a handler's output
    (converted as the module table says; in its sub-agent's thread, if any).

    Raises ``TypeError`` or ``ValueError`` naming what has no conversion.
    """
    thread = call.session_thread_id
    if isinstance(out, UserCustomToolResult):
        for block in out.content:
            _block(block)
        if out.session_thread_id is None and thread is not None:
            return UserCustomToolResult(
                out.custom_tool_use_id, out.content, out.is_error, session_thread_id=thread
            )
        return out
    return UserCustomToolResult(call.id, tool_content(out), is_error, session_thread_id=thread)


def error_result(call: ToolCall, exc: BaseException) -> UserCustomToolResult:
    """The error result reporting ``exc`` to the agent: ``"<Type>: <message>"``. Never raises."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # a broken __str__ still gets its error reported
        text = type(exc).__name__
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    return tool_result(call, text, True)


def tool_content(out: object) -> tuple[ContentBlock, ...]:
    """The content blocks a tool's output is posted as (the module table).

    Raises ``TypeError`` or ``ValueError`` naming what has no conversion.
    """
    if out is None:
        return ()
    if isinstance(out, str):
        return (TextBlock(_text(out, "")),)
    if isinstance(out, _BLOCKS):
        return (_block(out),)
    if isinstance(out, list | tuple) and any(isinstance(item, _BLOCKS) for item in out):
        return tuple(_content_item(item, i) for i, item in enumerate(out))
    _check_json(out)
    return (TextBlock(_text(json.dumps(out, ensure_ascii=False, allow_nan=False), "")),)


def _content_item(item: object, index: int) -> ContentBlock:
    if isinstance(item, str):
        return TextBlock(_text(item, f"[{index}]"))
    if isinstance(item, _BLOCKS):
        return _block(item)
    raise TypeError(
        f"a tool output that mixes content blocks with a {type(item).__name__} (at [{index}]) "
        "cannot be posted: return content blocks and str only, or the data alone (as JSON)"
    )


def _block(block: ContentBlock) -> ContentBlock:
    """``block`` if it can be posted (its fields JSON values, its text valid Unicode)."""
    if isinstance(block, TextBlock):
        if not isinstance(block.text, str):
            raise TypeError(f"a TextBlock's text must be a str, not {type(block.text).__name__}")
        _text(block.text, "")
    elif isinstance(block, ImageBlock | DocumentBlock):
        if not isinstance(block.source, Mapping):
            raise TypeError(f"a {type(block).__name__}'s source must be a mapping")
        _check_json(dict(block.source))
        if isinstance(block, DocumentBlock):
            _check_json([block.title, block.context])
    else:
        _check_json(dict(block.raw))
    return block


def _text(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"a tool output's text{_at(where)} is not valid Unicode "
            f"(a lone surrogate at index {exc.start})"
        ) from None
    return text


def _at(where: str) -> str:
    return f" (at {where})" if where else ""


_MAX_DEPTH = 500
_Node: TypeAlias = tuple[object, str, Any, int]  # a value, its key, its parent node, its depth


def _check_json(value: object) -> None:
    """Raise ``TypeError``/``ValueError`` naming the first part of ``value`` with no JSON text.

    JSON values: ``None``, ``bool``, ``int``, finite ``float``, ``str`` (valid
    Unicode), lists and tuples of them, ``dict`` with ``str`` keys. Iterative, so
    a deep or cyclic value is refused instead of overflowing the stack.
    """
    stack: list[_Node] = [(value, "", None, 0)]

    def where(node: _Node | None) -> str:
        keys = []
        while node is not None and node[1]:
            keys.append(node[1])
            node = node[2]
        return "".join(reversed(keys))

    while stack:
        node = stack.pop()
        v, _, _, depth = node
        if v is None or isinstance(v, bool | int):
            continue
        if isinstance(v, str):
            _text(v, where(node))
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(
                    f"a tool output holds {v!r}{_at(where(node))}, which JSON cannot represent"
                )
        elif depth >= _MAX_DEPTH:
            raise ValueError(f"a tool output nested deeper than {_MAX_DEPTH} levels (or cyclic)")
        elif isinstance(v, list | tuple):
            stack.extend((item, f"[{i}]", node, depth + 1) for i, item in enumerate(v))
        elif isinstance(v, dict):
            for key, item in v.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"a tool output's dict key {key!r}{_at(where(node))} is of type "
                        f"{type(key).__name__}, not str (JSON keys are strings: convert them)"
                    )
                stack.append((item, f"[{key!r}]", node, depth + 1))
        else:
            hint = (
                " (decode it to str, or post it in an ImageBlock/DocumentBlock as base64)"
                if isinstance(v, bytes | bytearray | memoryview)
                else ""
            )
            raise TypeError(
                f"a tool output of type {type(v).__name__}{_at(where(node))} cannot be posted"
                f"{hint}; return a str, content blocks, None or JSON data (dict, list, number, "
                "bool)"
            )


def results_key(ids: Sequence[str]) -> str:
    """The ``Idempotency-Key`` of the results for these tool uses (the same on every retry)."""
    return ("tool-results-" + "-".join(sorted(ids)))[:255]


def definitions(tools: Sequence[Any]) -> list[Any]:
    """An agent's ``tools`` list with every :class:`Tool` replaced by its definition."""
    return [t.definition if isinstance(t, Tool) else t for t in tools]


# --------------------------------------------------------------------------- schemas


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the first paragraph, ``{param: description}`` from an ``Args:`` section)."""
    paragraphs = doc.strip().split("\n\n")
    summary = " ".join(paragraphs[0].split()) if paragraphs[0] else ""
    params: dict[str, str] = {}
    lines = doc.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() in _ARG_SECTIONS]
    if not starts:
        return summary, params
    param_indent: int | None = None
    current: str | None = None
    for line in lines[starts[0] + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break  # the next section
        found = _ARG_LINE.match(line)
        if found and (param_indent is None or indent == param_indent):
            param_indent = indent
            current = found.group(1).lstrip("*")
            params[current] = found.group(2).strip()
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return summary, params


def _input_schema(function: Callable[..., Any], described: Mapping[str, str]) -> dict[str, Any]:
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except (NameError, TypeError):
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(
                f"tool {function.__name__}: parameter {param.name!r} is positional-only; "
                "the agent's input arrives as keyword arguments"
            )
        schema = _schema(hints.get(param.name, Any))
        if param.name in described and "description" not in schema:
            schema = {**schema, "description": described[param.name]}
        if param.default is param.empty:
            required.append(param.name)
        elif (default := _json_value(param.default)) is not _NOT_JSON:
            schema = {**schema, "default": default}
        properties[param.name] = schema
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


_NOT_JSON = object()


def _json_value(value: Any) -> Any:
    """A parameter default as JSON data (enum members by value), or ``_NOT_JSON``."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, float) and not math.isfinite(value):
        return _NOT_JSON  # NaN and infinities are no JSON
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        items = [_json_value(v) for v in value]
        return _NOT_JSON if any(v is _NOT_JSON for v in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        fields = {k: _json_value(v) for k, v in value.items()}
        return _NOT_JSON if any(v is _NOT_JSON for v in fields.values()) else fields
    return _NOT_JSON


def _schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation (see the module table)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        schema = _schema(args[0])
        text = next((a for a in args[1:] if isinstance(a, str)), None)
        return {**schema, "description": text} if text else schema
    if annotation is Any or annotation is inspect.Parameter.empty:
        return {}
    if annotation is None or annotation is type(None):
        return {"type": "null"}
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [m.value for m in annotation]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema(a) for a in args]}
    if _is_typeddict(annotation):
        hints = typing.get_type_hints(annotation, include_extras=True)
        required = sorted(getattr(annotation, "__required_keys__", hints))
        props = {key: _schema(value) for key, value in hints.items()}
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            out["required"] = required
        return out
    container = origin or annotation
    if container in (list, tuple, set, frozenset) or _subclass(container, Sequence):
        if container is tuple and args and args[-1] is not Ellipsis:
            return {
                "type": "array",
                "prefixItems": [_schema(a) for a in args],
                "minItems": len(args),
                "maxItems": len(args),
            }
        return {"type": "array", "items": _schema(args[0]) if args else {}}
    if container is dict or _subclass(container, Mapping):
        return {
            "type": "object",
            "additionalProperties": _schema(args[1]) if len(args) == 2 else {},
        }
    raise TypeError(f"no JSON Schema for the annotation {annotation!r}")


def _subclass(cls: Any, parent: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, parent) and cls is not str


def _is_typeddict(annotation: Any) -> bool:
    return isinstance(annotation, type) and typing.is_typeddict(annotation)
