"""Verify and parse Qoder's webhooks (beta): one call from raw request to typed event.

Qoder signs each delivery the Standard Webhooks way. :func:`unwrap` checks it
and returns a :class:`WebhookEvent`; anything it refuses raises a
:class:`WebhookVerificationError` subclass that names the failed check::

    event = webhooks.unwrap(await request.read(), request.headers, secret)

The checks, in the order they run (the first failure raises):

===  ===============================================================  =========================
#    rule                                                             refused with
===  ===============================================================  =========================
1    secret ``whsec_<base64>`` (padding optional): the key is the     ``WebhookSecretError``
     decoded bytes; any other ``str``: its UTF-8 bytes; ``bytes``:
     as is. Empty, or ``whsec_`` and bad base64, is refused
2    ``Webhook-ID``, ``Webhook-Timestamp`` and ``Webhook-Signature``  ``WebhookHeaderError``
     are present and non-empty, in any case, in any mapping; a
     header repeated with a different value is refused; so is a
     value with a lone surrogate (how servers pass a non-UTF-8 byte)
3    a ``str`` body is encodable as UTF-8 (no lone surrogate: it      ``WebhookPayloadError``
     cannot be the bytes Qoder sent)
4    some ``v1,<base64>`` entry of ``Webhook-Signature`` (entries     ``WebhookSignatureError``
     are space-separated) equals HMAC-SHA256(key,
     ``{id}.{timestamp}.{raw body}``), compared in constant time;
     other versions and malformed entries are skipped
5    ``Webhook-Timestamp`` is Unix seconds, within ``tolerance``      ``WebhookTimestampError``
     (300 s) of ``now`` in either direction
6    the body is a JSON object ``{"type": "event", "id",              ``WebhookPayloadError``
     "created_at", "data": {"type", ...}}`` and the fields this
     module types have their documented JSON types
===  ===============================================================  =========================

And what holds once an event is returned:

* Nothing is parsed before the signature and timestamp pass (JSON is read at step 6).
* The signature is checked before the timestamp, so a ``WebhookTimestampError`` always
  concerns a message Qoder really sent: a replay, or a clock out of sync.
* A negative or NaN ``tolerance``, or a ``now`` that is not finite, raises
  ``ConfigurationError``: a bug in the caller, not a bad request.
* No exception message, ``str`` or ``repr`` contains the secret or the expected signature.
* ``Webhook-Event-Type`` is not covered by the signature, so it is never read: the
  event's ``type`` comes from the signed body (``data.type``).
* A ``data.type`` this version does not know, or a ``schema_version`` other than 1,
  gives an :class:`UnknownWebhookEvent` with ``raw`` kept, never an error.
* Unknown fields are ignored; ``raw`` keeps the JSON object exactly as received.
* ``event.id`` is the same across Qoder's retries (delivery is at-least-once): it is
  the key to deduplicate on.

Unlike the ``standardwebhooks`` package, a secret without the ``whsec_`` prefix is
taken as the raw key text, not base64-decoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from attrs import field, frozen

from qoder_async._core.errors import (
    ConfigurationError,
    WebhookHeaderError,
    WebhookPayloadError,
    WebhookSecretError,
    WebhookSignatureError,
    WebhookTimestampError,
    WebhookVerificationError,
    snippet,
)
from qoder_async._core.models import json_loads

__all__ = [
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
]

DEFAULT_TOLERANCE = 300.0
"""Seconds a ``Webhook-Timestamp`` may lie from now, either way (Standard Webhooks: 5 min)."""

SECRET_PREFIX = "whsec_"
"""Marks a secret given as base64 key bytes, as Qoder's console shows it."""

_ID = "webhook-id"
_TIMESTAMP = "webhook-timestamp"
_SIGNATURE = "webhook-signature"
_SPELLING = {_ID: "Webhook-ID", _TIMESTAMP: "Webhook-Timestamp", _SIGNATURE: "Webhook-Signature"}
# Unix seconds, optionally with a fraction; bounded so a hostile header stays cheap.
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
_EMPTY: Mapping[str, Any] = {}

Body: TypeAlias = bytes | bytearray | memoryview | str
"""A raw request body; a ``str`` is encoded as UTF-8 (pass the bytes when you can)."""


# --------------------------------------------------------------------------- models


@frozen(kw_only=True)
class SessionWebhookData:
    """``data`` of the session events: ``session.created``, ``.updated``, ``.archived``,
    ``.deleted``, ``.status_run_started`` and ``.status_idled``.

    ``data.id`` is the session's id (as Qoder spells it; ``session_id`` is an
    alias). The payload carries ids only: ``client.sessions.retrieve(data.id)``
    for the session's current state, ``client.session(data.id).catch_up(...)``
    for what it did.
    """

    type: str
    id: str
    schema_version: int | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)

    @property
    def session_id(self) -> str:
        """The id of the session the event is about (``data.id``)."""
        return self.id


@frozen(kw_only=True)
class ScheduleRunWebhookData:
    """``data`` of ``forward.schedule_run.succeeded``: a scheduled run finished.

    ``id`` and ``run_id`` are the run (``srun_...``); ``schedule_id``,
    ``identity_id`` and ``template_id`` what it ran; ``source`` is ``"api"`` or
    ``"tool"`` (then ``source_session_id`` is the session that created the
    schedule); ``status``, ``trigger_type``, ``attempt``, ``push_status`` and
    ``duration_ms`` as the server sent them. Absent fields are ``None``.
    """

    type: str
    id: str
    schema_version: int | None = None
    run_id: str | None = None
    schedule_id: str | None = None
    identity_id: str | None = None
    template_id: str | None = None
    source: str | None = None
    source_session_id: str | None = None
    status: str | None = None
    trigger_type: str | None = None
    attempt: int | None = None
    push_status: str | None = None
    duration_ms: int | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class UnknownWebhookData:
    """``data`` of an event type (or ``schema_version``) this version does not model.

    ``type``, ``id`` and ``schema_version`` are read when present; ``raw`` keeps it whole.
    """

    type: str
    id: str | None = None
    schema_version: int | None = None
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


WebhookData: TypeAlias = SessionWebhookData | ScheduleRunWebhookData | UnknownWebhookData
"""What ``WebhookEvent.data`` may be; dispatch on ``event.type`` or on this class."""


@frozen(kw_only=True)
class WebhookEvent:
    """A verified webhook delivery.

    ``id`` is the delivery's ``whe_...`` id, the same across retries: deduplicate
    on it. ``type`` is the event type (``data.type``, e.g. ``"session.created"``;
    the envelope's own ``"type": "event"`` is checked, not kept). ``created_at``
    is the RFC 3339 string as sent (``None`` if absent). ``data`` is typed for the
    known event types, :class:`UnknownWebhookData` otherwise. ``raw`` is the whole
    JSON object as received (do not mutate it).
    """

    id: str
    type: str
    created_at: str | None
    data: WebhookData
    raw: Mapping[str, Any] = field(default=_EMPTY, eq=False, repr=False)


@frozen(kw_only=True)
class UnknownWebhookEvent(WebhookEvent):
    """A verified delivery of a type this version does not model: ``data`` is
    :class:`UnknownWebhookData` and ``raw`` keeps everything. Never an error."""


# --------------------------------------------------------------------------- verification


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes | bytearray):
        key = bytes(secret)
    elif isinstance(secret, str):
        text = secret.strip()
        if text.startswith(SECRET_PREFIX):
            encoded = text[len(SECRET_PREFIX) :]
            try:
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except (binascii.Error, ValueError):
                # `from None`: the decoder's message must not drag the secret along.
                raise WebhookSecretError(
                    f"the secret starts with {SECRET_PREFIX!r} but the rest is not base64"
                ) from None
        else:
            try:
                key = secret.encode("utf-8")
            except UnicodeEncodeError:
                raise WebhookSecretError("the secret is not encodable as UTF-8") from None
    else:
        raise WebhookSecretError(f"the secret must be str or bytes, not {type(secret).__name__}")
    if not key:
        raise WebhookSecretError("the secret is empty")
    return key


def _headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """(id, timestamp, signatures) from any mapping, whatever the case of its keys."""
    found: dict[str, list[str]] = {_ID: [], _TIMESTAMP: [], _SIGNATURE: []}
    # items() rather than get(): a plain dict is case-sensitive, and multi-dicts
    # (aiohttp, starlette) yield every repeated header here.
    for name, value in headers.items():
        values = found.get(name.lower()) if isinstance(name, str) else None
        if values is not None and isinstance(value, str) and value.strip():
            if not _encodable(value):
                raise WebhookHeaderError(
                    f"header {_SPELLING[name.lower()]} is not UTF-8 text (a lone surrogate, "
                    "or a non-UTF-8 byte passed on as one)"
                )
            values.append(value.strip())
    webhook_id = found[_ID][0] if len(set(found[_ID])) == 1 else None
    missing = [_SPELLING[k] for k, v in found.items() if not v]
    if missing:
        raise WebhookHeaderError(
            f"missing required header{'s' if len(missing) > 1 else ''}: {', '.join(missing)}",
            webhook_id=webhook_id,
        )
    for name in (_ID, _TIMESTAMP):
        if len(set(found[name])) > 1:
            raise WebhookHeaderError(
                f"header {_SPELLING[name]} was sent {len(found[name])} times with different values",
                webhook_id=webhook_id,
            )
    # Repeated Webhook-Signature headers are one list of candidates.
    return found[_ID][0], found[_TIMESTAMP][0], " ".join(found[_SIGNATURE])


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _body_bytes(body: Body) -> bytes:
    if isinstance(body, str):
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError:
            raise WebhookPayloadError(
                "the body is a str holding a lone surrogate, so not the bytes that were sent: "
                "pass the raw request body (bytes)"
            ) from None
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise TypeError(f"body must be the raw request bytes, not {type(body).__name__}")


def _signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    signed = b"%s.%s.%s" % (webhook_id.encode("utf-8"), timestamp.encode("utf-8"), body)
    return hmac.new(key, signed, hashlib.sha256).digest()


def _check_clock(tolerance: float, now: float | None) -> float:
    if not tolerance >= 0:  # also refuses NaN
        raise ConfigurationError(f"tolerance must be >= 0 seconds, got {tolerance!r}")
    if now is None:
        return time.time()
    if not math.isfinite(now):  # a NaN clock would pass every comparison
        raise ConfigurationError(f"now must be a finite Unix time, got {now!r}")
    return now


def verify(
    body: Body,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check a delivery's signature and timestamp (rules 1-5 of the module table).

    Returns nothing when the request is authentic and fresh, raises a
    :class:`WebhookVerificationError` subclass otherwise. ``body`` is the raw
    request body (a ``str`` is encoded as UTF-8, so pass the bytes when you can);
    ``headers`` any mapping (``dict``, aiohttp's ``CIMultiDict``, starlette's
    ``Headers``...); ``tolerance`` seconds either way (``math.inf`` turns the
    freshness check off); ``now`` the Unix time to check against (default: the clock).
    """
    _verify(body, headers, secret, tolerance, now)


def _verify(
    body: Body, headers: Mapping[str, str], secret: str | bytes, tolerance: float, now: float | None
) -> str:
    """Rules 1-4; returns the Webhook-ID."""
    clock = _check_clock(tolerance, now)
    key = _key(secret)
    webhook_id, timestamp, signatures = _headers(headers)
    expected = _signature(key, webhook_id, timestamp, _body_bytes(body))
    seen_v1 = False
    for entry in signatures.split():
        version, sep, encoded = entry.partition(",")
        if not sep or version != "v1":
            continue
        seen_v1 = True
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            break
    else:
        reason = "no signature matches" if seen_v1 else "no v1 signature in Webhook-Signature"
        raise WebhookSignatureError(
            f"{reason} (altered body, wrong secret, or not from Qoder)", webhook_id=webhook_id
        )

    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise WebhookTimestampError(
            f"Webhook-Timestamp must be Unix seconds, got {snippet(timestamp, 40)!r}",
            webhook_id=webhook_id,
        )
    skew = clock - float(timestamp)
    if abs(skew) > tolerance:
        when, why = ("old", "a replay, or ") if skew > 0 else ("in the future", "")
        raise WebhookTimestampError(
            f"Webhook-Timestamp is {abs(skew):.0f} s {when}, more than the tolerance of "
            f"{tolerance:g} s ({why}a clock out of sync)",
            webhook_id=webhook_id,
        )
    return webhook_id


# --------------------------------------------------------------------------- parsing


def _payload_error(message: str, webhook_id: str | None) -> WebhookPayloadError:
    return WebhookPayloadError(message, webhook_id=webhook_id)


class _Reader:
    """Typed field access on one JSON object; a wrong type names the field."""

    __slots__ = ("obj", "webhook_id", "where")

    def __init__(self, obj: Mapping[str, Any], where: str, webhook_id: str | None) -> None:
        self.obj = obj
        self.where = where
        self.webhook_id = webhook_id

    def _wrong(self, key: str, expected: str, value: object) -> WebhookPayloadError:
        return _payload_error(
            f"field {self.where + key!r} must be {expected}, got {type(value).__name__}",
            self.webhook_id,
        )

    def text(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self._wrong(key, "a string", value)

    def req_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise _payload_error(f"field {self.where + key!r} is missing", self.webhook_id)
        return value

    def integer(self, key: str) -> int | None:
        value = self.obj.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise self._wrong(key, "an integer", value)


def _session_data(r: _Reader, kind: str, version: int | None) -> SessionWebhookData:
    return SessionWebhookData(type=kind, id=r.req_text("id"), schema_version=version, raw=r.obj)


def _schedule_run_data(r: _Reader, kind: str, version: int | None) -> ScheduleRunWebhookData:
    return ScheduleRunWebhookData(
        type=kind,
        id=r.req_text("id"),
        schema_version=version,
        run_id=r.text("run_id"),
        schedule_id=r.text("schedule_id"),
        identity_id=r.text("identity_id"),
        template_id=r.text("template_id"),
        source=r.text("source"),
        source_session_id=r.text("source_session_id"),
        status=r.text("status"),
        trigger_type=r.text("trigger_type"),
        attempt=r.integer("attempt"),
        push_status=r.text("push_status"),
        duration_ms=r.integer("duration_ms"),
        raw=r.obj,
    )


_KNOWN_SCHEMA_VERSIONS = (None, 1)
_DATA_BY_TYPE: dict[str, Callable[[_Reader, str, int | None], WebhookData]] = {
    "session.created": _session_data,
    "session.updated": _session_data,
    "session.archived": _session_data,
    "session.deleted": _session_data,
    "session.status_run_started": _session_data,
    "session.status_idled": _session_data,
    "forward.schedule_run.succeeded": _schedule_run_data,
}


def _structure(obj: object, webhook_id: str | None) -> WebhookEvent:
    if not isinstance(obj, Mapping):
        raise _payload_error(
            f"the body is a JSON {type(obj).__name__}, not the webhook envelope object",
            webhook_id,
        )
    envelope = _Reader(obj, "", webhook_id)
    kind = envelope.text("type")
    if kind != "event":
        raise _payload_error(f"envelope field 'type' must be 'event', got {kind!r}", webhook_id)
    event_id = envelope.text("id") or webhook_id
    if event_id is None:
        raise _payload_error("envelope field 'id' is missing", webhook_id)
    created_at = envelope.text("created_at")
    data = obj.get("data")
    if not isinstance(data, Mapping):
        what = "missing" if data is None else f"a {type(data).__name__}, not an object"
        raise _payload_error(f"envelope field 'data' is {what}", event_id)
    r = _Reader(data, "data.", event_id)
    data_type = r.req_text("type")
    version = r.integer("schema_version")
    build = _DATA_BY_TYPE.get(data_type)
    if build is None or version not in _KNOWN_SCHEMA_VERSIONS:
        unknown = UnknownWebhookData(
            type=data_type, id=r.text("id"), schema_version=version, raw=data
        )
        return UnknownWebhookEvent(
            id=event_id, type=data_type, created_at=created_at, data=unknown, raw=obj
        )
    return WebhookEvent(
        id=event_id,
        type=data_type,
        created_at=created_at,
        data=build(r, data_type, version),
        raw=obj,
    )


def _parse(payload: Body | Mapping[str, Any], webhook_id: str | None) -> WebhookEvent:
    if isinstance(payload, Mapping):
        return _structure(payload, webhook_id)
    raw = _body_bytes(payload)
    try:
        obj = json_loads(raw)
    except (ValueError, RecursionError) as exc:  # orjson's and json's errors are ValueErrors
        quote = snippet(raw)
        raise _payload_error(
            f"the body is not valid JSON ({exc}){f': {quote!r}' if quote else ''}", webhook_id
        ) from exc
    return _structure(obj, webhook_id)


def parse(payload: Body | Mapping[str, Any]) -> WebhookEvent:
    """Type a webhook payload WITHOUT verifying it (rules 3 and 6 of the module table only).

    For a body that was already verified, e.g. stored by your handler and read
    back from a queue later, when its timestamp is long stale. ``payload`` is the
    body (bytes or str) or the parsed JSON object (``event.raw``). Never use this
    on a request that did not pass :func:`verify`. Raises
    :class:`WebhookPayloadError` if it is not the webhook envelope.
    """
    return _parse(payload, None)


def unwrap(
    body: Body,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> WebhookEvent:
    """Verify a webhook request and return its typed event (every rule of the module table).

    ``body`` is the raw request body, exactly as received (``await request.read()``);
    ``headers`` the request headers as any mapping; ``secret`` the endpoint's signing
    secret (``whsec_...``, or a raw secret). ``tolerance`` is how many seconds the
    ``Webhook-Timestamp`` may lie from ``now`` (default: the clock) either way.

    Returns a :class:`WebhookEvent` (an :class:`UnknownWebhookEvent` for types this
    version does not model). Raises a :class:`WebhookVerificationError` subclass
    naming the failed check; the JSON is parsed only after the signature passed.
    """
    webhook_id = _verify(body, headers, secret, tolerance, now)
    return _parse(body, webhook_id)


def sign(
    body: Body,
    secret: str | bytes,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
    event_type: str | None = None,
) -> dict[str, str]:
    """The ``Webhook-*`` headers Qoder would send with ``body``: for testing your handler.

    ``msg_id`` defaults to a fresh ``whe_...`` id, ``timestamp`` to now (Unix
    seconds); ``Webhook-Event-Type`` is added only when ``event_type`` is given.
    The result passes :func:`unwrap` with the same secret::

        body = b'{"type":"event","id":"whe_1","created_at":"...","data":{...}}'
        await client.post("/webhooks/qoder", data=body, headers=webhooks.sign(body, secret))
    """
    key = _key(secret)
    webhook_id = msg_id if msg_id is not None else f"whe_{secrets.token_hex(13)}"
    stamp = str(math.floor(time.time()) if timestamp is None else int(timestamp))
    digest = _signature(key, webhook_id, stamp, _body_bytes(body))
    headers = {
        "Webhook-ID": webhook_id,
        "Webhook-Timestamp": stamp,
        "Webhook-Signature": f"v1,{base64.b64encode(digest).decode('ascii')}",
    }
    if event_type is not None:
        headers["Webhook-Event-Type"] = event_type
    return headers
