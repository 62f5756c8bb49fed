"""``qoder-async``: the command line of qoder_async (also ``python -m qoder_async``).

::

    qoder-async demo                               # one turn against the bundled fake server
    qoder-async chat sess_... "Help me analyze this code." [--on-busy wait|interrupt]
    qoder-async record -o hello.jsonl sess_... "Hello"   # chat, recorded to a cassette
    qoder-async tail sess_... --deltas             # follow a session's events
    qoder-async events --type agent.message --type agent.tool_use sess_...
    qoder-async sessions list|create|get|cancel|archive|delete
    qoder-async agents list|create|get|archive
    qoder-async environments list|create|get|archive
    qoder-async deployments list | deployments run dep_... [--follow]
    qoder-async files upload ./report.pdf | files download file_... [-o PATH]
    qoder-async fake-server --port 8765 [--script default|demo|tools]

Global options, accepted before or after the command: ``--base-url`` (else
``QODER_BASE_URL``, else the library default), ``--token`` (else ``QODER_PAT``,
else ``QODER_ACCESS_TOKEN``), ``--allow-insecure-http`` (else
``QODER_ALLOW_INSECURE_HTTP=1``: plain ``http://`` to a host that is not
loopback), ``--retry-timeout S`` (retries stop once the next one would start
more than S seconds, default 10, after the first attempt; each retry is a line
on stderr), ``--json`` and ``-v`` (debug logs on stderr).

A note on stderr (a retry, the Ctrl-C note) starts on its own line when stdout
and stderr go to the same place (a terminal, ``2>&1``), even in the middle of
a streamed reply. File uploads and downloads show their progress (bytes, rate,
ETA) on stderr when it is a terminal, never with ``--json``.

``--json``: stdout is JSON Lines (one JSON object per line, for ``jq``);
events are printed as received; ``chat`` and ``demo`` end with
``{"result": {"turn_id", "text", "stop_reason", "usage", "interrupted"}}``;
an error is one ``{"error": {"type", "message", "status_code", "error_type",
"request_id"[, "hint"]}}`` line on stderr, after a ``{"log": {"level",
"message"}}`` line per retry.

Exit codes: 0 ok; 1 API or stream error, connection errors included (one line
on stderr, with the request id when there is one); 2 usage or configuration
error (no token, a file that cannot be read...); 130 interrupted by Ctrl-C; 141
stdout closed early (``| head``: quietly, the code a shell gives a tool killed
by SIGPIPE, so ``set -o pipefail`` scripts see it as they see ``cat``'s); 143
stopped by SIGTERM. ``chat`` handles the first Ctrl-C itself: it interrupts the
turn, keeps streaming until the turn ends, prints the summary and exits 130; a
second Ctrl-C exits 130 at once. ``fake-server`` exits 0 on Ctrl-C/SIGTERM.

This module uses only the public API (``qoder_async`` and ``qoder_async.testing``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
import textwrap
import time
import traceback
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, TextIO, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

from qoder_async import (
    APIError,
    APIStatusError,
    ConfigurationError,
    QoderClient,
    QoderError,
    ResumeExhaustedError,
    RetryPolicy,
    SessionBusyError,
    Turn,
    TurnResult,
    UserMessage,
    __version__,
)
from qoder_async.testing import FakeQoderServer, TurnContext, default_script, record, tool_script
from qoder_async.types import (
    Agent,
    AgentCustomToolUse,
    AgentMCPToolResult,
    AgentMCPToolUse,
    AgentMessage,
    AgentThinking,
    AgentToolResult,
    AgentToolUse,
    Deleted,
    Deployment,
    DeploymentRun,
    Environment,
    Event,
    FileMetadata,
    PreviewDelta,
    PreviewStart,
    RequiresAction,
    Session,
    SessionCancel,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusTerminated,
    SessionUsage,
    SpanModelRequestEnd,
    SpanModelRequestStart,
    UnknownEvent,
    Usage,
    UserCustomToolResult,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "build_parser",
    "main",
    "progress_line",
]

PROG = "qoder-async"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE = 128 + 13  # SIGPIPE

#: Seconds the CLI retries a request for (``--retry-timeout``): a refused port fails fast.
DEFAULT_RETRY_TIMEOUT = 10.0

#: Environment variable that does what ``--allow-insecure-http`` does (``1``, ``true``, ``yes``).
_INSECURE_ENV = "QODER_ALLOW_INSECURE_HTTP"

_LINE_LIMIT = 160
_MESSAGE_LIMIT = 400
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

_T = TypeVar("_T")

Command: TypeAlias = Callable[[argparse.Namespace, "_Context"], Awaitable[int]]


# --------------------------------------------------------------------------- formatting


def _one_line(text: str, limit: int = _LINE_LIMIT) -> str:
    """``text`` with its whitespace collapsed, cut at ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _first_line(text: str, limit: int = _LINE_LIMIT) -> str:
    """The first non-blank line of ``text``, cut at ``limit`` characters."""
    for line in text.splitlines():
        if line.strip():
            return _one_line(line, limit)
    return ""


def _value(value: object) -> str:
    if isinstance(value, str):
        return _one_line(value, 60)
    return _one_line(json.dumps(value, ensure_ascii=False, default=str), 60)


def tool_call(name: str, tool_input: Mapping[str, Any]) -> str:
    """``Read(file_path=README.md)``: a tool call as one short line."""
    args = ", ".join(f"{key}={_value(value)}" for key, value in tool_input.items())
    return _one_line(f"{name}({args})")


def short_type(event_type: str) -> str:
    """A readable label for an event type: ``session.status_idle`` -> ``idle``."""
    for prefix, replacement in (
        ("session.status_", ""),
        ("session.thread_status_", "thread_"),
        ("session.", ""),
        ("agent.", ""),
        ("span.", ""),
    ):
        if event_type.startswith(prefix):
            return replacement + event_type[len(prefix) :]
    return event_type


def usage_text(usage: Usage | None) -> str:
    """``111 input / 62 output tokens`` (plus cache reads and credits when known)."""
    if usage is None or (usage.input_tokens is None and usage.output_tokens is None):
        return "n/a"
    parts = [f"{usage.input_tokens or 0} input / {usage.output_tokens or 0} output tokens"]
    if usage.cache_read_input_tokens:
        parts.append(f"{usage.cache_read_input_tokens} cached")
    if usage.credits is not None:
        parts.append(f"{usage.credits:g} credits")
    return ", ".join(parts)


def usage_record(usage: Usage | None) -> dict[str, int | float | None]:
    """``usage`` as a JSON object with every field (``null`` when unknown)."""
    return {
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "cache_read_input_tokens": usage.cache_read_input_tokens if usage else None,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens if usage else None,
        "credits": usage.credits if usage else None,
    }


def _stop_text(event: SessionStatusIdle) -> str:
    stop = event.stop_reason
    if isinstance(stop, RequiresAction):
        return f"requires_action ({', '.join(stop.event_ids) or 'no ids'})"
    return stop.type


def describe(event: Event) -> str:
    """What an event says, in one line (without its type)."""
    if isinstance(event, UserMessage | AgentMessage):
        return _one_line(event.text, _MESSAGE_LIMIT)
    if isinstance(event, AgentThinking):
        return _one_line(event.text)
    if isinstance(event, AgentMCPToolUse):
        server = f"{event.mcp_server_name}:" if event.mcp_server_name else ""
        return "→ " + tool_call(server + event.name, event.input)
    if isinstance(event, AgentToolUse | AgentCustomToolUse):
        return "→ " + tool_call(event.name, event.input)
    if isinstance(event, AgentToolResult | AgentMCPToolResult | UserCustomToolResult):
        return ("✗ " if event.is_error else "← ") + _first_line(event.text)
    if isinstance(event, SessionStatusIdle):
        return _stop_text(event)
    if isinstance(event, SessionStatusTerminated):
        return event.reason or ""
    if isinstance(event, SessionErrorEvent):
        return _one_line(f"{event.error.type}: {event.error.message}")
    if isinstance(event, SpanModelRequestStart):
        return event.model or ""
    if isinstance(event, SpanModelRequestEnd):
        return ("error; " if event.is_error else "") + usage_text(event.model_usage)
    if isinstance(event, SessionUsage):
        return usage_text(event.usage)
    if isinstance(event, PreviewStart):
        return f"{event.event_type or '?'} {event.event_id or ''}".rstrip()
    if isinstance(event, PreviewDelta):
        return json.dumps(event.text, ensure_ascii=False)
    if isinstance(event, UnknownEvent):
        rest = {k: v for k, v in event.raw.items() if k not in _ENVELOPE}
        return _one_line(json.dumps(rest, ensure_ascii=False, default=str)) if rest else ""
    return ""


_ENVELOPE = frozenset(
    {"id", "type", "session_id", "turn_id", "schema_version", "created_at", "processed_at"}
)


def event_line(event: Event) -> str:
    """One line per event for ``tail`` and ``events``: id, time, short type, summary."""
    clock = ""
    if event.processed_at and "T" in event.processed_at:
        clock = event.processed_at.split("T", 1)[1][:8]
    head = f"{event.id or '-'}  {clock:<8}  {short_type(event.type):<20}"
    summary = describe(event)
    return f"{head}  {summary}".rstrip() if summary else head.rstrip()


def _raw(
    obj: Event
    | Session
    | SessionCancel
    | Agent
    | Environment
    | Deleted
    | Deployment
    | DeploymentRun,
) -> dict[str, Any]:
    if obj.raw:
        return dict(obj.raw)
    return {"id": obj.id, "type": getattr(obj, "type", None)}


# --------------------------------------------------------------------------- output


class _Output:
    """Everything the CLI prints: lines, live text, JSON records, notes and a TTY spinner.

    Human lines go to stdout; a line always starts on a fresh line even if reply
    text was being streamed, and so does a note on stderr when both streams go
    to the same place. The spinner exists only when stdout is a terminal and is
    wiped before anything else is written; progress bars only when stderr is a
    terminal (and not in ``--json`` mode).
    """

    def __init__(self, *, json_mode: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.json_mode = json_mode
        self.stdout = stdout
        self.stderr = stderr
        self.tty = _isatty(stdout)
        self.shared = _same_place(stdout, stderr)
        self.progress = _isatty(stderr) and not json_mode
        self.color = self.tty and "NO_COLOR" not in os.environ
        self.secret: str | None = None
        self._at_line_start = True
        self._status_shown = False
        self.last_write = time.monotonic()

    def dim(self, text: str) -> str:
        """``text`` in a faint style on colour terminals."""
        return f"\x1b[2m{text}\x1b[0m" if self.color else text

    def _write(self, text: str) -> None:
        self._clear_status()
        self.stdout.write(text)
        self.stdout.flush()
        self.last_write = time.monotonic()

    def line(self, text: str) -> None:
        """A whole line (ignored in ``--json`` mode)."""
        if self.json_mode:
            return
        self._write(("" if self._at_line_start else "\n") + text + "\n")
        self._at_line_start = True

    def text(self, chunk: str) -> None:
        """Reply text as it streams, without a newline."""
        if self.json_mode or not chunk:
            return
        self._write(chunk)
        self._at_line_start = chunk.endswith("\n")

    def end_line(self) -> None:
        """Finish a line of streamed text, if one is open."""
        if not self._at_line_start:
            self._write("\n")
            self._at_line_start = True

    def record(self, obj: Mapping[str, Any]) -> None:
        """One JSON object on its own line (``--json`` mode only)."""
        if self.json_mode:
            self._write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")

    def show(self, record: Mapping[str, Any], *lines: str) -> None:
        """``record`` in ``--json`` mode, else ``lines``."""
        self.record(record)
        for text in lines:
            self.line(text)

    def event(self, event: Event) -> None:
        """An event: its raw JSON in ``--json`` mode, else one readable line."""
        self.show(_raw(event), event_line(event))

    def _redact(self, text: str) -> str:
        # A few characters are no secret worth hiding, and hiding them garbles every word.
        if self.secret and len(self.secret) >= 8:
            return text.replace(self.secret, "***")
        return text

    def note(self, text: str) -> None:
        """A message for the human, on stderr, on a line of its own."""
        if self.shared:
            self.end_line()  # the reply's line, open on the same terminal or file
            self._clear_status()
            self.stdout.flush()
        self.stderr.write(f"{PROG}: {self._redact(text)}\n")
        self.stderr.flush()

    def log(self, level: str, text: str) -> None:
        """A log record of the library (a retry...): a note, or a ``{"log": ...}`` line."""
        if not self.json_mode:
            self.note(f"{level}: {text}")
        else:
            self._stderr_record("log", {"level": level, "message": text})

    def error(
        self,
        kind: str,
        message: str,
        *,
        hints: Sequence[str] = (),
        fields: Mapping[str, object] | None = None,
    ) -> None:
        """An error, as one line on stderr: plain text, or a JSON object in ``--json`` mode.

        ``{"error": {"type", "message", "status_code", "error_type", "request_id"}}``,
        plus ``"hint"`` and any other ``fields`` given.
        """
        hint = " ".join(hints)
        if not self.json_mode:
            self.note(f"error: {message}" + (f" (hint: {hint})" if hint else ""))
            return
        record: dict[str, object] = {
            "type": kind,
            "message": message,
            "status_code": None,
            "error_type": None,
            "request_id": None,
        }
        record.update(fields or {})
        if hint:
            record["hint"] = hint
        self._stderr_record("error", record)

    def _stderr_record(self, key: str, record: Mapping[str, object]) -> None:
        redacted = {k: self._redact(v) if isinstance(v, str) else v for k, v in record.items()}
        self.stderr.write(json.dumps({key: redacted}, ensure_ascii=False, default=str) + "\n")
        self.stderr.flush()

    def exception(self, exc: BaseException, *, prefix: str = "") -> None:
        """``exc`` through :meth:`error`; its ``__notes__`` (added by the CLI) are hints."""
        fields: dict[str, object] = {}
        text = _error_text(exc)
        if isinstance(exc, APIStatusError):
            fields = {
                "status_code": exc.status_code,
                "error_type": exc.error_type,
                "request_id": exc.request_id,
            }
        if self.json_mode:
            if isinstance(exc, APIError):
                text = " ".join(exc.message.split())  # the rest is in the fields
            cursor = getattr(exc, "last_event_id", None)
            if cursor is not None:
                fields["last_event_id"] = cursor
        notes = [str(note) for note in getattr(exc, "__notes__", ())]
        self.error(type(exc).__name__, prefix + text, hints=notes, fields=fields)

    def status(self, text: str) -> None:
        """Show a transient status (spinner) line; only on a terminal, between lines."""
        if not self.tty or self.json_mode or not self._at_line_start:
            return
        self.stdout.write("\r\x1b[K" + text)
        self.stdout.flush()
        self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown:
            self.stdout.write("\r\x1b[K")
            self._status_shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _same_place(a: TextIO, b: TextIO) -> bool:
    """Whether two streams write to the same file, pipe or terminal (``2>&1``)."""
    try:
        one, two = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)


class _LogToOutput(logging.Handler):
    """The ``qoder_async`` logger's records, through :meth:`_Output.log` (stderr)."""

    def __init__(self, out: _Output, level: int) -> None:
        super().__init__(level)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.out.log(record.levelname.lower(), record.getMessage())
        except BrokenPipeError:
            pass  # stderr went away: nowhere to say it
        except Exception:  # logging must never break the command
            self.handleError(record)


# --------------------------------------------------------------------------- signals


class _Signals:
    """SIGINT and SIGTERM through the event loop (``loop.add_signal_handler``).

    A signal first goes to ``handler`` (set by a command); if there is none or
    it declines (returns False), the command's task is cancelled and the CLI
    exits with ``128 + signal number`` (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, task: asyncio.Task[int]) -> None:
        self.task = task
        self.handler: Callable[[int], bool] | None = None
        self.received: int | None = None
        self._installed: list[int] = []

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._fire, int(signum))
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # no loop signal support (Windows): KeyboardInterrupt still works
            self._installed.append(signum)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()

    def _fire(self, signum: int) -> None:
        if self.handler is not None and self.handler(signum):
            return
        if self.received is None:
            self.received = signum
        self.task.cancel()


@dataclasses.dataclass(frozen=True)
class _Context:
    """What a command gets besides its arguments: the output and the signal switch."""

    out: _Output
    signals: _Signals


# --------------------------------------------------------------------------- a turn, live


class _TurnView:
    """Prints one turn as it streams, and turns the first Ctrl-C into an interrupt.

    The turn interrupted by a Ctrl-C still ends with its summary; the exit code
    is then 130 (a turn interrupted by someone else exits 0).

    Two readers share the turn: the events (tool calls, thinking, errors) and
    ``turn.text_stream()`` (the reply, live). Then a summary line: done or
    interrupted, stop reason, usage, time; in ``--json`` mode a ``{"result": ...}``
    line instead.

    A turn counts as interrupted when a ``user.interrupt`` came during it (the
    library's ``TurnResult.interrupted``): ours (the first Ctrl-C) or anyone's
    (another ``chat --on-busy interrupt``). Its text is what was shown.
    """

    def __init__(self, ctx: _Context) -> None:
        self.out = ctx.out
        self.turn: Turn | None = None
        self.interrupt_requested = False
        self._interrupt_task: asyncio.Task[None] | None = None
        self._activity = "waiting for the agent"
        self._started = time.monotonic()
        self._shown: set[str] = set()
        ctx.signals.handler = self._on_signal

    def _on_signal(self, signum: int) -> bool:
        if signum != signal.SIGINT or self.interrupt_requested:
            return False
        self.interrupt_requested = True
        self.out.note("interrupting the turn... (press Ctrl-C again to quit)")
        if self.turn is not None:
            self._start_interrupt(self.turn)
        return True

    def _start_interrupt(self, turn: Turn) -> None:
        if self._interrupt_task is None:
            self._interrupt_task = asyncio.create_task(self._interrupt(turn))

    async def _interrupt(self, turn: Turn) -> None:
        try:
            await turn.interrupt()  # a no-op once the turn has ended
        except QoderError as exc:
            self.out.note(f"could not interrupt the turn: {_error_text(exc)}")

    async def follow(self, turn: Turn) -> int:
        """Stream ``turn`` to the output; the exit code once it ended (130 after a Ctrl-C)."""
        self.turn = turn
        self._started = time.monotonic()
        if self.interrupt_requested:
            self._start_interrupt(turn)
        for event in turn.accepted.events:  # the message sent, as stored
            self._show(event)
        helpers = [asyncio.create_task(self._text(turn))]
        if self.out.tty and not self.out.json_mode:
            helpers.append(asyncio.create_task(self._spin()))
        try:
            async for event in turn:
                self._show(event)
            await helpers[0]
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self.out.end_line()
            if self._interrupt_task is not None:
                await asyncio.gather(self._interrupt_task, return_exceptions=True)
        self._summary(await turn.result())
        return EXIT_INTERRUPTED if self.interrupt_requested else EXIT_OK

    async def _text(self, turn: Turn) -> None:
        # The event loop in follow() reports a failed turn; this reader just stops.
        with contextlib.suppress(QoderError):
            async for chunk in turn.text_stream():
                self.out.text(chunk)
                self._activity = "writing"

    async def _spin(self) -> None:
        frames = 0
        while True:
            await asyncio.sleep(0.1)
            if time.monotonic() - self.out.last_write > 0.3:
                frame = _SPINNER[frames % len(_SPINNER)]
                frames += 1
                elapsed = time.monotonic() - self._started
                self.out.status(self.out.dim(f"{frame} {self._activity}... {elapsed:.1f}s"))

    def _show(self, event: Event) -> None:
        out = self.out
        if out.json_mode:
            if event.id is None or event.id not in self._shown:
                out.event(event)
            if event.id is not None:
                self._shown.add(event.id)
            return
        if isinstance(event, AgentThinking):
            self._activity = "thinking"
            if event.text:
                out.line(out.dim("· " + _one_line(event.text)))
        elif isinstance(event, AgentToolUse | AgentCustomToolUse | AgentMCPToolUse):
            self._activity = f"running {event.name}"
            out.line(out.dim(describe(event)))
        elif isinstance(event, AgentToolResult | AgentMCPToolResult | UserCustomToolResult):
            self._activity = "thinking"
            out.line(out.dim(describe(event)))
        elif isinstance(event, SessionErrorEvent):
            out.line(f"! {describe(event)}")
        elif isinstance(event, SessionStatusIdle) and isinstance(event.stop_reason, RequiresAction):
            ids = ", ".join(event.stop_reason.event_ids)
            out.line(
                f"⏸ the agent waits for an answer to {ids} "
                "(the CLI runs no custom tools; Ctrl-C interrupts the turn)"
            )
        elif isinstance(event, UnknownEvent):
            out.line(out.dim(f"· {event.type}"))

    def _summary(self, result: TurnResult) -> None:
        interrupted = result.interrupted
        stop = str(result.stop_reason) if result.stop_reason is not None else None
        if self.out.json_mode:
            summary = {
                "turn_id": result.turn_id or (self.turn.turn_id if self.turn else None),
                "text": result.text,
                "stop_reason": stop,
                "usage": usage_record(result.usage),
                "interrupted": interrupted,
            }
            self.out.record({"result": summary})
            return
        elapsed = time.monotonic() - self._started
        tools = len(result.tool_calls)
        parts = [
            "interrupted" if interrupted else "done",
            f"stop: {stop or 'none'}",
            f"usage: {usage_text(result.usage)}",
            f"{tools} tool call{'' if tools == 1 else 's'}",
            f"{elapsed:.1f}s",
        ]
        self.out.line(self.out.dim("■ " + " · ".join(parts)))


# --------------------------------------------------------------------------- commands


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("QODER_PAT") or os.environ.get("QODER_ACCESS_TOKEN")


def _client(args: argparse.Namespace) -> QoderClient:
    if not _token(args):
        raise ConfigurationError(
            "no access token: pass --token, or set QODER_PAT (or QODER_ACCESS_TOKEN)"
        )
    insecure_env = os.environ.get(_INSECURE_ENV, "").strip().lower()
    allow = bool(args.allow_insecure_http) or insecure_env in ("1", "true", "yes", "on")
    retry = RetryPolicy(timeout=args.retry_timeout)
    try:
        return QoderClient(
            token=args.token, base_url=args.base_url, allow_insecure_http=allow, retry=retry
        )
    except ConfigurationError as exc:
        base_url = args.base_url or os.environ.get("QODER_BASE_URL") or ""
        parts = urlsplit(base_url.strip())
        if not allow and parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            exc.add_note(f"from the shell: --allow-insecure-http, or {_INSECURE_ENV}=1")
        raise


def _is_loopback(host: str) -> bool:
    """Whether the client sends plain http:// to ``host`` without ``allow_insecure_http``."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _connect_host(host: str) -> str:
    """The host a client on this machine should dial to reach a server bound to ``host``.

    A wildcard address is where a server listens, not where a client connects;
    the client also refuses plain http:// to it as not loopback. asyncio binds
    ``::`` IPv6-only, hence ``::1`` for it.
    """
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host.strip("[]") == "::":
        return "::1"
    return host


async def _cmd_chat(args: argparse.Namespace, ctx: _Context) -> int:
    text = " ".join(args.message)
    if text == "-":
        text = sys.stdin.read().strip()
    if not text.strip():
        raise ConfigurationError("the message is empty")
    view = _TurnView(ctx)
    async with _client(args) as client, _recorded(client, getattr(args, "output", None)):
        try:
            turn = await client.session(args.session_id).send(text, on_busy=args.on_busy)
        except SessionBusyError as exc:
            if args.on_busy == "raise":
                exc.add_note(
                    "a turn is running in this session; --on-busy wait waits for it to end, "
                    "--on-busy interrupt interrupts it first"
                )
            raise
        return await view.follow(turn)


def _recorded(
    client: QoderClient, output: str | None
) -> contextlib.AbstractAsyncContextManager[None]:
    """``record`` to ``output`` (the ``record`` command), or nothing (``chat``)."""
    if output is None:
        return contextlib.nullcontext()
    try:
        with open(output, "a", encoding="utf-8"):
            pass  # a path that cannot be written is a usage error, before anything is sent
    except OSError as exc:
        raise ConfigurationError(f"cannot write the cassette {output!r}: {exc}") from None
    return record(client, output)


async def _cmd_tail(args: argparse.Namespace, ctx: _Context) -> int:
    deltas = ("agent.message", "agent.thinking") if args.deltas else ()
    async with _client(args) as client:
        stream = client.sessions.events.stream(
            args.session_id, last_event_id=args.from_id, event_deltas=deltas
        )
        try:
            async with stream:
                async for event in stream:
                    ctx.out.event(event)
        except asyncio.CancelledError:
            cursor = stream.last_event_id
            if cursor:
                ctx.out.note(f"stopped; resume with: {PROG} tail {args.session_id} --from {cursor}")
            raise
    return EXIT_OK


def _page_size(limit: int | None) -> int | None:
    return None if limit is None else min(limit, 100)


async def _print_items(
    items: AsyncIterable[_T], limit: int | None, show: Callable[[_T], None]
) -> None:
    count = 0
    if limit == 0:
        return
    async for item in items:
        show(item)
        count += 1
        if limit is not None and count >= limit:
            break


def _session_line(s: Session) -> str:
    return "  ".join(
        [s.id, f"{s.status or '-':<11}", s.title or "-", f"agent={s.agent_id or '-'}"]
        + ([f"archived={s.archived_at}"] if s.archived_at else [])
        + [s.created_at or ""]
    ).rstrip()


def _agent_line(a: Agent) -> str:
    return "  ".join([a.id, a.name or "-", f"model={a.model or '-'}", f"v{a.version or '?'}"])


def _environment_line(e: Environment) -> str:
    return "  ".join([e.id, e.name or "-", e.status or "-", e.created_at or ""]).rstrip()


def _deployment_line(d: Deployment) -> str:
    schedule = d.schedule.expression if d.schedule and d.schedule.expression else "-"
    return "  ".join(
        [d.id, d.name or "-", f"{d.status or '-':<7}", f"schedule={schedule}"]
        + ([f"archived={d.archived_at}"] if d.archived_at else [])
        + [d.created_at or ""]
    ).rstrip()


def _fields(obj: Session | SessionCancel | Agent | Environment | DeploymentRun) -> list[str]:
    """What ``get`` and the other verbs show of a resource: ``key:  value`` lines."""
    if isinstance(obj, SessionCancel):
        fields: dict[str, object] = {"id": obj.id, "status": obj.status}
    elif isinstance(obj, Session):
        fields = {
            "id": obj.id,
            "status": obj.status,
            "title": obj.title,
            "agent": obj.agent_id,
            "environment": obj.environment_id,
            "usage": usage_text(obj.usage) if obj.usage else None,
            "archived_at": obj.archived_at,
            "created_at": obj.created_at,
        }
    elif isinstance(obj, DeploymentRun):
        fields = {
            "id": obj.id,
            "deployment": obj.deployment_id,
            "session": obj.session_id,
            "trigger": obj.trigger_context.type if obj.trigger_context else None,
            "error": f"{obj.error.type}: {obj.error.message}" if obj.error else None,
            "created_at": obj.created_at,
        }
    elif isinstance(obj, Agent):
        fields = {
            "id": obj.id,
            "name": obj.name,
            "model": obj.model,
            "version": obj.version,
            "system": _one_line(obj.system) if obj.system else None,
            "archived_at": obj.archived_at,
            "created_at": obj.created_at,
        }
    else:
        fields = {
            "id": obj.id,
            "name": obj.name,
            "status": obj.status,
            "config": json.dumps(dict(obj.config)) if obj.config else None,
            "archived_at": obj.archived_at,
            "created_at": obj.created_at,
        }
    return _field_lines(fields)


def _field_lines(fields: Mapping[str, object]) -> list[str]:
    return [f"{key + ':':<13}{value}" for key, value in fields.items() if value is not None]


async def _follow_run(
    client: QoderClient, args: argparse.Namespace, run: DeploymentRun, ctx: _Context
) -> int:
    """``deployments run --follow``: stream the run's turn as ``chat`` does."""
    if run.session_id is None:  # the run failed to start a session (its error was shown)
        return EXIT_ERROR
    if not args.follow:
        return EXIT_OK
    view = _TurnView(ctx)  # before the lookup: a Ctrl-C from here on interrupts the turn
    return await view.follow(await client.session(run.session_id).follow())


async def _cmd_resource(args: argparse.Namespace, ctx: _Context) -> int:
    command: _Command = args.verb
    assert command.call is not None  # the parser runs this only for a command with a call
    out = ctx.out
    async with _client(args) as client:
        answer = command.call(client, args)
        if command.line is not None:
            line = command.line
            await _print_items(answer, args.limit, lambda item: out.show(_raw(item), line(item)))
            return EXIT_OK
        obj = await answer
        if isinstance(obj, Deleted):
            out.show(_raw(obj), f"deleted {obj.id}")
        else:
            out.show(_raw(obj), *_fields(obj))
        if command.then is not None:
            return await command.then(client, args, obj, ctx)
    return EXIT_OK


# --------------------------------------------------------------------------- files


def _size(count: float) -> str:
    """``512 B``, ``1.5 KiB``, ``12.0 MiB``: a byte count for people."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(done: int, total: int | None, elapsed: float) -> str:
    """``1.5 MiB / 4.0 MiB (37%) · 2.1 MiB/s · ETA 1s``: a transfer's progress.

    Without a known ``total``: the bytes so far and the rate; the ETA only once
    there is a rate to go by.
    """
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        parts = [f"{_size(done)} / {_size(total)} ({min(100, done * 100 // total)}%)"]
    else:
        parts = [_size(done)]
    parts.append(f"{_size(rate)}/s")
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    return " · ".join(parts)


class _Progress:
    """A transfer's progress line on stderr, redrawn in place a few times a second.

    Drawn only when stderr is a terminal and not in ``--json`` mode
    (:attr:`_Output.progress`); ``done`` may be set from a worker thread.
    """

    def __init__(self, out: _Output, label: str, total: int | None) -> None:
        self.out = out
        self.label = label
        self.total = total
        self.done = 0
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Progress:
        self._started = time.monotonic()
        if self.out.progress:
            self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._draw(end="\n" if exc_type is None else "")
            if exc_type is not None:
                self.out.stderr.write("\r\x1b[K")  # the error line takes its place
                self.out.stderr.flush()

    async def _tick(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(0.2)

    def _draw(self, end: str = "") -> None:
        line = progress_line(self.done, self.total, time.monotonic() - self._started)
        self.out.stderr.write(f"\r\x1b[K{self.label} {line}{end}")
        self.out.stderr.flush()


class _CountedFile:
    """A binary file whose reads move a :class:`_Progress` (a retry reads from the start again).

    What ``client.files.upload`` takes as a seekable file object: sized, and
    retried by seeking back.
    """

    def __init__(self, f: IO[bytes], progress: _Progress) -> None:
        self._f = f
        self.name = f.name
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._progress.done = self._f.tell()
        return data

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)


def _show_file(ctx: _Context, meta: FileMetadata) -> None:
    fields = {
        "id": meta.id,
        "filename": meta.filename,
        "mime_type": meta.mime_type,
        "size": _size(meta.size_bytes) if meta.size_bytes is not None else None,
        "created_at": meta.created_at,
    }
    ctx.out.show(dict(meta.raw) or {"id": meta.id}, *_field_lines(fields))


async def _cmd_files_upload(args: argparse.Namespace, ctx: _Context) -> int:
    try:
        f = open(args.path, "rb")  # noqa: SIM115, ASYNC230 - closed below; a local file
    except OSError as exc:
        ctx.out.error(type(exc).__name__, f"cannot read {args.path}: {exc.strerror or exc}")
        return EXIT_USAGE
    with f:
        total = os.fstat(f.fileno()).st_size
        async with _client(args) as client:
            progress = _Progress(ctx.out, f"uploading {os.path.basename(args.path)}", total)
            async with progress:
                meta = await client.files.upload(
                    cast(IO[bytes], _CountedFile(f, progress)),  # what upload reads of one
                    purpose=args.purpose,
                    name=args.name,
                )
    _show_file(ctx, meta)
    return EXIT_OK


def _download_target(output: str | None, filename: str | None, file_id: str) -> str:
    """Where a download goes: ``-o``, else the file's name if harmless, else its id."""
    if output:
        return output
    harmless = (
        filename
        and not filename.startswith(".")
        and os.sep not in filename
        and (os.altsep is None or os.altsep not in filename)
    )
    name = filename if harmless and filename else file_id
    if os.path.lexists(name):  # a name the server chose never replaces a file
        raise ConfigurationError(f"{name} exists: name another path with -o PATH")
    return name


def _temp_beside(target: str) -> tuple[str, IO[bytes]]:
    """A new temporary file in ``target``'s directory (replaced into it once complete).

    Created with the mode any new file gets here (the umask's), not private.
    """
    directory, name = os.path.split(os.path.abspath(target))
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temp, flags, 0o666)
    return temp, os.fdopen(fd, "wb")


async def _cmd_files_download(args: argparse.Namespace, ctx: _Context) -> int:
    async with _client(args) as client:
        download = await client.files.download(args.file_id)
        async with download:
            target = _download_target(args.output, download.filename, args.file_id)
            to_stdout = target == "-"
            label = f"downloading {'to stdout' if to_stdout else os.path.basename(target)}"
            progress = _Progress(ctx.out, label, download.content_length)
            if to_stdout:
                sink: IO[bytes] = sys.stdout.buffer
            else:
                temp, sink = await asyncio.to_thread(_temp_beside, target)
            try:
                async with progress:
                    async for chunk in download:
                        await asyncio.to_thread(sink.write, chunk)
                        progress.done += len(chunk)
                if not to_stdout:
                    sink.close()
                    os.replace(temp, target)  # complete: only now does the path change
            except BaseException:
                if not to_stdout:
                    sink.close()
                    with contextlib.suppress(OSError):
                        os.unlink(temp)
                raise
    if to_stdout:
        sys.stdout.buffer.flush()
    else:
        saved = {"id": args.file_id, "path": target, "bytes": progress.done}
        ctx.out.show(saved, f"saved {target} ({_size(progress.done)})")
    return EXIT_OK


# --------------------------------------------------------------------------- the fake server

_DEMO_README = (
    "# demo-project\n\nA small demo repository served by qoder_async's fake server.\n"
    "It has one module, `app.py`, whose `main()` is the entry point.\n"
)


#: The custom tool the ``tools`` script of ``fake-server`` calls (as examples/custom_tools.py).
_DEMO_TOOL = "get_weather"
_DEMO_TOOL_INPUT: Mapping[str, Any] = {"city": "Paris"}


def _fake_tool(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The custom tool ``fake-server --script tools`` calls, and its input."""
    if args.script != "tools" and (args.tool_name is not None or args.tool_input is not None):
        raise ConfigurationError("--tool-name and --tool-input need --script tools")
    name = _DEMO_TOOL if args.tool_name is None else args.tool_name
    return name, dict(_DEMO_TOOL_INPUT if args.tool_input is None else args.tool_input)


def _json_object(text: str) -> dict[str, Any]:
    """``--tool-input``: a JSON object, as a tool's input always is."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'must be a JSON object such as \'{{"city": "Paris"}}\', got {text!r}'
        )
    return value


def _tool_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the tool name is empty")
    return text


def _demo_script() -> Any:
    """The scripted agent of ``demo`` and ``fake-server``: a turn with visible pacing."""

    async def script(ctx: TurnContext) -> None:
        start = ctx.emit("span.model_request_start", model="ultimate")
        await ctx.sleep(0.15)
        await ctx.thinking("The user wants to know about the project; the README says most.")
        await ctx.sleep(0.15)
        await ctx.tool("Read", {"file_path": "README.md"}, _DEMO_README)
        await ctx.sleep(0.15)
        reply = (
            f'You said: "{ctx.text}". This is a small demo project: one module, app.py, '
            "whose main() function is the entry point. Every word of this answer was "
            "streamed to you as it was written."
        )
        await ctx.message(reply, chunks=20, delay=0.04)
        input_tokens, output_tokens = 120 + len(ctx.text), 20 + len(reply) // 4
        ctx.emit(
            "span.model_request_end",
            model_request_start_id=start["id"],
            is_error=False,
            model_usage={"input_tokens": input_tokens, "output_tokens": output_tokens},
        )
        ctx.add_usage(input_tokens=input_tokens, output_tokens=output_tokens)

    return script


async def _cmd_demo(args: argparse.Namespace, ctx: _Context) -> int:
    out = ctx.out
    view = _TurnView(ctx)
    async with (
        FakeQoderServer(script=_demo_script(), heartbeat_interval=1.0) as server,
        QoderClient(token=server.token, base_url=server.base_url) as client,
    ):
        out.line(out.dim(f"fake Qoder API at {server.base_url} (in this process)"))
        environment = await client.environments.create(name="demo")
        agent = await client.agents.create(name="demo-agent", model="ultimate")
        session = await client.sessions.create(
            agent=agent.id, environment_id=environment.id, title="qoder-async demo"
        )
        out.line(out.dim(f"session {session.id} (agent {agent.id}, env {environment.id})"))
        out.line(f"you: {args.message}")
        turn = await client.session(session.id).send(args.message)
        return await view.follow(turn)


async def _cmd_fake_server(args: argparse.Namespace, ctx: _Context) -> int:
    stop = asyncio.Event()

    def on_signal(signum: int) -> bool:
        if stop.is_set():
            return False  # a second signal while closing: give up at once
        stop.set()
        return True

    ctx.signals.handler = on_signal
    tool_name, tool_input = _fake_tool(args)
    scripts = {
        "default": default_script,
        "demo": _demo_script(),
        "tools": tool_script(tool_name, tool_input),
    }
    server = FakeQoderServer(
        token=args.token or FakeQoderServer.DEFAULT_TOKEN,
        script=scripts[args.script],
        host=args.host,
        port=args.port,
        heartbeat_interval=args.heartbeat,
    )
    try:
        await server.start()
    except OSError as exc:
        ctx.out.error(
            type(exc).__name__, f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        )
        return EXIT_ERROR
    try:
        session = server.add_session(title="fake-server session")
        host = _connect_host(args.host)
        path = urlsplit(server.base_url).path
        base_url = f"http://{f'[{host}]' if ':' in host else host}:{server.port}{path}"
        insecure = not _is_loopback(host)
        info: dict[str, object] = {
            "base_url": base_url,
            "token": server.token,
            "session_id": session["id"],
            "allow_insecure_http": insecure,
        }
        if ctx.out.json_mode:
            ctx.out.record(info)
        else:
            for key in ("base_url", "token", "session_id"):
                ctx.out.line(f"{key}={info[key]}")
            if insecure:  # without it the client refuses plain http:// to this host
                ctx.out.line(f"export {_INSECURE_ENV}=1")
            # Printed last: a reader can stop at it.
            ctx.out.line(f"export QODER_BASE_URL={base_url} QODER_PAT={server.token}")
            bind = f"[{args.host}]" if ":" in args.host else args.host
            where = f"{bind}:{server.port}"
            ctx.out.note(f"serving the fake Qoder API on {where}; Ctrl-C stops it")
            if args.script == "tools":
                call = tool_call(tool_name, tool_input)
                ctx.out.note(
                    f"each message makes the agent call the custom tool {call} and wait for "
                    f'the result: send(..., tools={{"{tool_name}": handler}}) answers it'
                )
        await stop.wait()
    finally:
        await server.close()
    return EXIT_OK


# --------------------------------------------------------------------------- the parser

_Arg: TypeAlias = tuple[tuple[str, ...], dict[str, Any]]


def _arg(*flags: str, **options: Any) -> _Arg:
    return flags, options


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _type_list(text: str) -> list[str]:
    """``--type`` takes one value (so it cannot swallow the positional id); commas split it."""
    types = [part.strip() for part in text.split(",") if part.strip()]
    if not types:
        raise argparse.ArgumentTypeError("expected an event type such as agent.message")
    return types


_GLOBAL_OPTIONS: tuple[_Arg, ...] = (
    _arg(
        "--base-url",
        metavar="URL",
        default=None,
        help="API base URL (default: $QODER_BASE_URL, else https://api.qoder.com/api/v1/cloud)",
    ),
    _arg(
        "--token",
        metavar="TOKEN",
        default=None,
        help="access token (default: $QODER_PAT, else $QODER_ACCESS_TOKEN)",
    ),
    _arg(
        "--allow-insecure-http",
        action="store_true",
        default=False,
        help="allow a plain http:// base URL to a host that is not loopback; the token then "
        f"travels unencrypted (default: ${_INSECURE_ENV}=1)",
    ),
    _arg(
        "--retry-timeout",
        type=_seconds,
        metavar="S",
        default=DEFAULT_RETRY_TIMEOUT,
        help="stop retrying a failed request (refused connection, 5xx, 429) once the next "
        f"retry would start more than S seconds after the first attempt (default: "
        f"{DEFAULT_RETRY_TIMEOUT:g}); each retry is printed on stderr",
    ),
    _arg(
        "--json",
        action="store_true",
        default=False,
        help="machine-readable mode: output is JSON Lines (one JSON object per line) on "
        "stdout, and an error is one JSON object on stderr",
    ),
    _arg(
        "-v",
        "--verbose",
        action="store_true",
        default=False,
        help="debug logs of the qoder_async logger on stderr",
    ),
)


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The global options. Sub-parsers use SUPPRESS so they never reset a value given earlier."""
    group = parser.add_argument_group("global options")
    for flags, options in _GLOBAL_OPTIONS:
        default = argparse.SUPPRESS if suppress else options["default"]
        group.add_argument(*flags, **{**options, "default": default})


@dataclasses.dataclass(frozen=True)
class _Command:
    """One command (or group of commands: no ``run``, no ``call``) of the parser.

    ``path`` is its words after ``qoder-async``, ``example`` the words after
    those, ``details`` a paragraph of its ``--help``. A resource command has a
    ``call(client, args)`` that :func:`_cmd_resource` runs: it returns the async
    iterator of items to print one ``line(item)`` each (when ``line`` is given),
    else the resource to show; ``then(client, args, answer, ctx)``, when given,
    runs after it is shown and gives the exit code.
    """

    path: str
    summary: str
    example: str
    run: Command | None = None
    args: tuple[_Arg, ...] = ()
    details: str = ""
    call: Callable[[QoderClient, argparse.Namespace], Any] | None = None
    line: Callable[[Any], str] | None = None
    then: Callable[[QoderClient, argparse.Namespace, Any, _Context], Awaitable[int]] | None = None


def _limit(noun: str) -> _Arg:
    return _arg("--limit", type=_positive, metavar="N", help=f"print at most N {noun}")


_SESSION_ID = _arg("session_id", metavar="SESSION_ID")
_AGENT_ID = _arg("agent_id", metavar="AGENT_ID")
_ENVIRONMENT_ID = _arg("environment_id", metavar="ENVIRONMENT_ID")
_DEPLOYMENT_ID = _arg("deployment_id", metavar="DEPLOYMENT_ID")
_TURN_ARGS = (
    _SESSION_ID,
    _arg("message", metavar="MESSAGE", nargs="+"),
    _arg(
        "--on-busy",
        choices=("raise", "wait", "interrupt"),
        default="raise",
        help="if a turn is already running: fail (default), wait for it, or interrupt it",
    ),
)

_COMMANDS: tuple[_Command, ...] = (
    _Command(
        "demo",
        "run one turn against a fake API started in this process (no token, no network)",
        "--message 'What is in this repository?'",
        _cmd_demo,
        (
            _arg("--message", default="Give me a tour of this project.",
                 help="what to say to the agent"),
        ),
        "Creates an environment, an agent and a session on the fake server, sends a message "
        "and prints the turn as it streams. --base-url and --token are ignored.",
    ),
    _Command(
        "chat",
        "send a message to a session and stream the turn live",
        'sess_01abc "Help me analyze this code."',
        _cmd_chat,
        _TURN_ARGS,
        "Prints the reply as it arrives, one line per tool call and result, then a summary: "
        "done or interrupted, the stop reason and usage. With --json: each event of the turn, "
        'then {"result": {"turn_id", "text", "stop_reason", "usage", "interrupted"}}. The '
        "first Ctrl-C interrupts the turn (streaming goes on until it ends, then exit 130); a "
        "second Ctrl-C quits at once (exit 130). A 409 means a turn is already running: see "
        "--on-busy. MESSAGE '-' reads stdin.",
    ),
    _Command(
        "record",
        "chat, recording the turn to a cassette (replay it with FakeQoderServer(cassette=))",
        '-o tests/cassettes/hello.jsonl sess_01abc "Hello"',
        _cmd_chat,
        (
            _arg("-o", "--output", metavar="FILE", required=True, help="the cassette to write"),
            *_TURN_ARGS,
        ),
        "Runs one turn exactly as chat does and writes every request, answer and SSE frame "
        "to FILE as JSON Lines (the token and cookies redacted; file bodies as size and "
        "hash). Works against the real API or any --base-url.",
    ),
    _Command(
        "tail",
        "follow a session's events live (resuming across dropped connections)",
        "sess_01abc --from evt_0042 --deltas",
        _cmd_tail,
        (
            _SESSION_ID,
            _arg("--from", dest="from_id", metavar="EVENT_ID", help="start after this event"),
            _arg("--deltas", action="store_true",
                 help="also print live previews (event_start/event_delta)"),
        ),
        "Without --from the whole history is replayed first. Runs until Ctrl-C (exit 130) "
        "or until the session ends.",
    ),
    _Command(
        "events", "list a session's stored events (history)",
        "--type agent.message --type agent.tool_use sess_01abc --limit 20",
        args=(
            _SESSION_ID,
            _limit("events"),
            _arg("--order", choices=("asc", "desc"), help="oldest first (asc) or newest first"),
            _arg("--type", dest="types", action="extend", type=_type_list, metavar="TYPE",
                 help="only events of this type; repeat it (--type a --type b) or list types "
                 "separated by commas (--type a,b)"),
        ),
        call=lambda c, a: c.sessions.events.list(
            a.session_id, order=a.order, limit=_page_size(a.limit), types=a.types or None
        ),
        line=event_line,
    ),
    _Command("sessions", "list, create, get, cancel, archive or delete sessions", "list"),
    _Command(
        "sessions list", "list sessions", "--limit 10",
        args=(
            _limit("sessions"),
            _arg("--agent", metavar="ID", help="only sessions of this agent"),
            _arg("--archived", action="store_true", help="include archived sessions"),
        ),
        call=lambda c, a: c.sessions.list(
            limit=_page_size(a.limit),
            agent_id=a.agent,
            include_archived=True if a.archived else None,
        ),
        line=_session_line,
    ),
    _Command(
        "sessions create", "create a session",
        "--agent agent_01abc --environment env_01abc --title triage",
        args=(
            _arg("--agent", required=True, metavar="ID", help="the agent id"),
            _arg("--environment", required=True, metavar="ID", help="the environment id"),
            _arg("--title", metavar="T", help="a title"),
        ),
        call=lambda c, a: c.sessions.create(
            agent=a.agent, environment_id=a.environment, title=a.title
        ),
    ),
    _Command(
        "sessions get", "show a session", "sess_01abc", args=(_SESSION_ID,),
        call=lambda c, a: c.sessions.retrieve(a.session_id),
    ),
    _Command(
        "sessions cancel", "cancel a session's running turn", "sess_01abc", args=(_SESSION_ID,),
        call=lambda c, a: c.sessions.cancel(a.session_id),
    ),
    _Command(
        "sessions archive", "archive a session", "sess_01abc", args=(_SESSION_ID,),
        call=lambda c, a: c.sessions.archive(a.session_id),
    ),
    _Command(
        "sessions delete", "delete a session and its events (cannot be undone)", "sess_01abc",
        args=(_SESSION_ID,), call=lambda c, a: c.sessions.delete(a.session_id),
    ),
    _Command("agents", "list, create, get or archive agents", "list"),
    _Command(
        "agents list", "list agents", "", args=(_limit("agents"),),
        call=lambda c, a: c.agents.list(limit=_page_size(a.limit)), line=_agent_line,
    ),
    _Command(
        "agents create", "create an agent", '--name reviewer --model auto --system "Review code."',
        args=(
            _arg("--name", required=True, help="the agent's name"),
            _arg("--model", required=True, metavar="M", help="model id, e.g. auto or ultimate"),
            _arg("--system", metavar="S", help="system prompt"),
        ),
        call=lambda c, a: c.agents.create(name=a.name, model=a.model, system=a.system),
    ),
    _Command(
        "agents get", "show an agent", "agent_01abc --version 2",
        args=(
            _AGENT_ID,
            _arg("--version", type=_positive, metavar="N",
                 help="this version (default: the latest)"),
        ),
        call=lambda c, a: c.agents.retrieve(a.agent_id, version=a.version),
    ),
    _Command(
        "agents archive", "archive an agent", "agent_01abc", args=(_AGENT_ID,),
        call=lambda c, a: c.agents.archive(a.agent_id),
    ),
    _Command("environments", "list, create, get or archive environments", "list"),
    _Command(
        "environments list", "list environments", "", args=(_limit("environments"),),
        call=lambda c, a: c.environments.list(limit=_page_size(a.limit)),
        line=_environment_line,
    ),
    _Command(
        "environments create", "create an environment", "--name sandbox",
        args=(_arg("--name", required=True, help="the environment's name"),),
        call=lambda c, a: c.environments.create(name=a.name),
    ),
    _Command(
        "environments get", "show an environment", "env_01abc", args=(_ENVIRONMENT_ID,),
        call=lambda c, a: c.environments.retrieve(a.environment_id),
    ),
    _Command(
        "environments archive", "archive an environment", "env_01abc", args=(_ENVIRONMENT_ID,),
        call=lambda c, a: c.environments.archive(a.environment_id),
    ),
    _Command("deployments", "list or run deployments", "list"),
    _Command(
        "deployments list", "list deployments", "--status paused",
        args=(
            _limit("deployments"),
            _arg("--status", choices=("active", "paused"), help="only deployments in this status"),
        ),
        call=lambda c, a: c.deployments.list(limit=_page_size(a.limit), status=a.status),
        line=_deployment_line,
    ),
    _Command(
        "deployments run",
        "run a deployment now: prints the run and its session (exit 1 if it started none)",
        "dep_01abc --follow",
        args=(
            _DEPLOYMENT_ID,
            _arg("--follow", action="store_true",
                 help="then stream the run's turn, as chat does"),
        ),
        call=lambda c, a: c.deployments.run(a.deployment_id),
        then=_follow_run,
    ),
    _Command("files", "upload or download files (progress on a terminal)", "upload ./report.pdf"),
    _Command(
        "files upload",
        "upload a file (POST /files); prints its metadata",
        "./report.pdf --purpose user_data",
        _cmd_files_upload,
        (
            _arg("path", metavar="PATH", help="the file to upload"),
            _arg("--purpose", help="the file's purpose (sent as a form field)"),
            _arg("--name", help="store the file under this name"),
        ),
        "The file is streamed from disk; progress (bytes, rate, ETA) is shown on stderr when "
        "it is a terminal and not with --json. With --json: the file's metadata as one JSON "
        "object.",
    ),
    _Command(
        "files download",
        "download a file's content (GET /files/{id}/content)",
        "file_01abc -o report.pdf",
        _cmd_files_download,
        (
            _arg("file_id", metavar="FILE_ID"),
            _arg("-o", "--output", metavar="PATH", help="where to write it (- for stdout)"),
        ),
        "Writes to -o PATH (- for stdout), else to the file's own name in the current "
        "directory (never over an existing file), else to its id. The path changes only once "
        "the download is complete. Progress as for upload.",
    ),
    _Command(
        "fake-server",
        "serve the fake Qoder API (qoder_async.testing) until Ctrl-C",
        "--port 8765 --script tools",
        _cmd_fake_server,
        (
            _arg("--port", type=int, default=0, help="port to listen on (default: a free one)"),
            _arg("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)"),
            _arg("--heartbeat", type=float, default=15.0, metavar="S",
                 help="heartbeat interval (seconds)"),
            _arg(
                "--script",
                choices=("default", "demo", "tools"),
                default="default",
                help="the scripted agent: 'default' answers at once (a Read tool call, then a "
                "reply quoting you); 'demo' does the same paced for watching; 'tools' calls the "
                f"custom tool {tool_call(_DEMO_TOOL, _DEMO_TOOL_INPUT)} (or --tool-name/"
                "--tool-input) and waits for your client to post its result (chat runs no "
                "custom tools). Default: default",
            ),
            _arg("--tool-name", type=_tool_name, default=None, metavar="NAME",
                 help="with --script tools: the custom tool the agent calls "
                 f"(default: {_DEMO_TOOL})"),
            _arg("--tool-input", type=_json_object, default=None, metavar="JSON",
                 help="with --script tools: its input, a JSON object "
                 f"(default: '{json.dumps(dict(_DEMO_TOOL_INPUT))}')"),
        ),
        "Prints base_url=, token= and session_id= lines (a session is created for you) and "
        "export lines to paste into another shell. --token sets the token it accepts. With "
        "--host 0.0.0.0 (or ::) the printed URL names this machine's loopback address; with "
        f"another host that is not loopback an 'export {_INSECURE_ENV}=1' line is added, "
        "since the client refuses plain http:// to it otherwise.",
    ),
)  # fmt: skip
"""Every command, in help order: :func:`build_parser` and :func:`_cmd_resource` read it."""


def build_parser() -> argparse.ArgumentParser:
    """The ``qoder-async`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Talk to Qoder Cloud Agents from the shell: chat with a session, follow "
        "its events, manage sessions, agents and environments, or run a fake API locally.",
        epilog=f"Example:\n  {PROG} demo\n\n"
        "Exit codes: 0 ok, 1 API or stream error, 2 usage or configuration error, "
        "130 interrupted (Ctrl-C), 141 stdout closed early (| head), 143 SIGTERM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)
    groups = {"": parser.add_subparsers(dest="command", metavar="COMMAND", required=True)}
    for command in _COMMANDS:
        group, _, name = command.path.rpartition(" ")
        details = "\n\n" + textwrap.fill(command.details, 79) if command.details else ""
        p = groups[group].add_parser(
            name,
            help=command.summary,
            description=command.summary + details,
            epilog=f"Example:\n  {PROG} {command.path} {command.example}".rstrip(),
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command.run is None and command.call is None:
            groups[command.path] = p.add_subparsers(dest="action", metavar="ACTION", required=True)
        run = _cmd_resource if command.call is not None else command.run
        p.set_defaults(func=run, verb=command)
        for flags, options in command.args:
            p.add_argument(*flags, **options)
    return parser


# --------------------------------------------------------------------------- running


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ResumeExhaustedError) and exc.__cause__ is not None:
        text = f"{text}: {exc.__cause__}"
    return " ".join(text.split())


async def _run(args: argparse.Namespace, out: _Output) -> int:
    task = asyncio.current_task()
    assert task is not None
    signals = _Signals(task)
    signals.install()
    command: Command = args.func
    try:
        return await command(args, _Context(out, signals))
    except asyncio.CancelledError:
        if signals.received is None:
            raise
        return 128 + signals.received  # 130 for Ctrl-C, 143 for SIGTERM
    finally:
        signals.uninstall()


@contextlib.contextmanager
def _logs_to(out: _Output, verbose: bool) -> Iterator[None]:
    """The library's WARNINGs (retries...) on stderr; with ``-v`` its DEBUG lines too."""
    logger = logging.getLogger("qoder_async")
    level = logging.DEBUG if verbose else logging.WARNING
    handler = _LogToOutput(out, level)
    before = logger.level
    if verbose:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in words[: words.index("--") if "--" in words else len(words)]
    usage = io.StringIO()
    try:
        # In --json mode argparse's usage message is caught and sent on as a JSON error.
        with contextlib.redirect_stderr(usage) if json_mode else contextlib.nullcontext():
            args = parser.parse_args(words)
    except SystemExit as exc:  # --help, --version, usage errors (2)
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if json_mode and code != EXIT_OK:
            lines = usage.getvalue().strip().splitlines() or [f"{PROG}: error: invalid usage"]
            message = lines[-1].partition(": error: ")[2] or lines[-1]
            out = _Output(json_mode=True, stdout=sys.stdout, stderr=sys.stderr)
            out.error("UsageError", message, hints=[f"{PROG} --help shows the usage"])
        return code
    out = _Output(json_mode=args.json, stdout=sys.stdout, stderr=sys.stderr)
    out.secret = _token(args)
    with _logs_to(out, args.verbose):
        return _main(args, out)


def _main(args: argparse.Namespace, out: _Output) -> int:
    try:
        return asyncio.run(_run(args, out))
    except KeyboardInterrupt:  # a Ctrl-C the event loop did not see (startup, Windows)
        return EXIT_INTERRUPTED
    except ConfigurationError as exc:
        out.exception(exc)
        return EXIT_USAGE
    except QoderError as exc:
        out.exception(exc)
        return EXIT_ERROR
    except BrokenPipeError:  # `qoder-async events ... | head`: quietly, as `cat` would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the flush at exit has nowhere to fail
        return EXIT_PIPE
    except Exception as exc:  # a bug: still one line, the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        exc.add_note("-v shows the traceback")
        out.exception(exc, prefix=f"internal error: {type(exc).__name__}: ")
        return EXIT_ERROR
