"""qoder_async.webhooks against the reference implementation (the standardwebhooks package).

The oracle signs, we verify; we sign, the oracle verifies. Each refusal is
checked with its exact exception class. Clocks are injected (``now=``), never
waited on.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as OracleError

from qoder_async import ConfigurationError, QoderError
from qoder_async import webhooks as wh
from qoder_async.webhooks import (
    ScheduleRunWebhookData,
    SessionWebhookData,
    UnknownWebhookData,
    UnknownWebhookEvent,
    WebhookEvent,
    WebhookHeaderError,
    WebhookPayloadError,
    WebhookSecretError,
    WebhookSignatureError,
    WebhookTimestampError,
    WebhookVerificationError,
)

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
RAW_SECRET = "my-raw-webhook-secret"
MSG_ID = "whe_01k1jbxexample"
NOW = 1_788_253_679  # the docs' example Webhook-Timestamp
WHEN = datetime.fromtimestamp(NOW, tz=UTC)

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def envelope(data: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "id": MSG_ID,
        "created_at": "2026-09-01T09:07:59Z",
        "data": dict(data),
        **fields,
    }


SESSION_CREATED = envelope({"type": "session.created", "id": "sess_01abc", "schema_version": 1})
# The receive page's example delivery, verbatim in shape.
SCHEDULE_RUN = envelope(
    {
        "type": "forward.schedule_run.succeeded",
        "source": "tool",
        "source_session_id": "sess_origin",
        "id": "srun_01k1jbrexample",
        "schema_version": 1,
        "run_id": "srun_01k1jbrexample",
        "schedule_id": "sched_01k1jbqexample",
        "identity_id": "idn_01k1jbnexample",
        "template_id": "tmpl_01k1jbmexample",
        "status": "completed",
        "trigger_type": "schedule",
        "attempt": 1,
        "push_status": "succeeded",
        "duration_ms": 15432,
    }
)


def body_of(obj: object) -> bytes:
    return json.dumps(obj).encode()


def oracle_headers(
    body: bytes,
    *,
    oracle: Webhook | None = None,
    msg_id: str = MSG_ID,
    when: datetime = WHEN,
) -> dict[str, str]:
    """Headers as a Standard Webhooks sender would set them, signed by the reference code."""
    signature = (oracle or Webhook(SECRET)).sign(msg_id, when, body.decode())
    return {
        "Webhook-ID": msg_id,
        "Webhook-Timestamp": str(int(when.timestamp())),
        "Webhook-Signature": signature,
        "Webhook-Event-Type": "ignored.by.design",
    }


def hand_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """A v1 signature computed from the scheme's definition, independently of both libraries."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def unwrap(body: bytes, headers: Mapping[str, str], secret: str | bytes = SECRET, **kw: Any) -> Any:
    kw.setdefault("now", NOW)
    return wh.unwrap(body, headers, secret, **kw)


# --------------------------------------------------------------------------- valid deliveries


def test_a_delivery_signed_by_the_oracle_is_returned_typed() -> None:
    body = body_of(SESSION_CREATED)
    event = unwrap(body, oracle_headers(body))
    assert type(event) is WebhookEvent
    assert event.id == MSG_ID
    assert event.type == "session.created"
    assert event.created_at == "2026-09-01T09:07:59Z"
    assert event.data == SessionWebhookData(
        type="session.created", id="sess_01abc", schema_version=1
    )
    assert event.data.session_id == "sess_01abc"
    assert event.raw == SESSION_CREATED
    assert event.data.raw == SESSION_CREATED["data"]


@pytest.mark.parametrize(
    "kind", ["session.created", "session.updated", "session.archived", "session.deleted"]
)
def test_every_session_event_type_carries_the_session_id(kind: str) -> None:
    body = body_of(envelope({"type": kind, "id": "sess_9", "schema_version": 1}))
    event = unwrap(body, oracle_headers(body))
    assert isinstance(event.data, SessionWebhookData)
    assert (event.type, event.data.type, event.data.session_id) == (kind, kind, "sess_9")


def test_the_documented_schedule_run_delivery_is_typed_field_by_field() -> None:
    body = body_of(SCHEDULE_RUN)
    event = unwrap(body, oracle_headers(body))
    assert event.type == "forward.schedule_run.succeeded"
    assert event.data == ScheduleRunWebhookData(
        type="forward.schedule_run.succeeded",
        id="srun_01k1jbrexample",
        schema_version=1,
        run_id="srun_01k1jbrexample",
        schedule_id="sched_01k1jbqexample",
        identity_id="idn_01k1jbnexample",
        template_id="tmpl_01k1jbmexample",
        source="tool",
        source_session_id="sess_origin",
        status="completed",
        trigger_type="schedule",
        attempt=1,
        push_status="succeeded",
        duration_ms=15432,
    )


def test_unknown_fields_are_ignored_and_kept_in_raw() -> None:
    data = {"type": "session.updated", "id": "sess_1", "schema_version": 1, "title": "new"}
    obj = envelope(data, extra={"nested": [1, 2]})
    body = body_of(obj)
    event = unwrap(body, oracle_headers(body))
    assert isinstance(event.data, SessionWebhookData)
    assert event.raw["extra"] == {"nested": [1, 2]}
    assert event.data.raw["title"] == "new"


def test_an_unknown_event_type_is_returned_not_refused() -> None:
    obj = envelope({"type": "agent.created", "id": "agent_1", "schema_version": 1, "x": [1]})
    body = body_of(obj)
    event = unwrap(body, oracle_headers(body))
    assert isinstance(event, UnknownWebhookEvent)
    assert isinstance(event, WebhookEvent)
    assert event.type == "agent.created"
    assert event.data == UnknownWebhookData(type="agent.created", id="agent_1", schema_version=1)
    assert event.raw == obj
    assert event.data.raw == obj["data"]


def test_a_known_type_with_a_newer_schema_version_is_unknown_not_mistyped() -> None:
    obj = envelope({"type": "session.created", "session": {"id": "sess_1"}, "schema_version": 2})
    body = body_of(obj)
    event = unwrap(body, oracle_headers(body))
    assert isinstance(event, UnknownWebhookEvent)
    assert event.data.schema_version == 2
    assert event.data.id is None
    assert event.raw == obj


def test_a_missing_schema_version_is_read_as_the_first() -> None:
    body = body_of(envelope({"type": "session.deleted", "id": "sess_1"}))
    event = unwrap(body, oracle_headers(body))
    assert isinstance(event.data, SessionWebhookData)
    assert event.data.schema_version is None


def test_the_event_type_header_is_not_signed_so_the_body_decides() -> None:
    body = body_of(SESSION_CREATED)
    headers = {**oracle_headers(body), "Webhook-Event-Type": "session.deleted"}
    assert unwrap(body, headers).type == "session.created"


def test_the_envelope_id_falls_back_to_the_webhook_id_header() -> None:
    obj = dict(SESSION_CREATED)
    del obj["id"]
    body = body_of(obj)
    assert unwrap(body, oracle_headers(body, msg_id="whe_header")).id == "whe_header"


# --------------------------------------------------------------------------- secrets


def test_a_raw_secret_is_its_utf8_bytes() -> None:
    body = body_of(SESSION_CREATED)
    headers = oracle_headers(body, oracle=Webhook(RAW_SECRET.encode()))
    assert unwrap(body, headers, RAW_SECRET).type == "session.created"
    assert unwrap(body, headers, RAW_SECRET.encode()).type == "session.created"
    with pytest.raises(WebhookSignatureError):
        unwrap(body, headers, SECRET)


def test_a_whsec_secret_is_base64_with_or_without_padding_and_whitespace() -> None:
    key = b"\x01" * 31  # 31 bytes: the base64 text ends in padding
    padded = "whsec_" + base64.b64encode(key).decode()
    assert padded.endswith("=")
    body = body_of(SESSION_CREATED)
    headers = oracle_headers(body, oracle=Webhook(padded))
    for secret in (padded, padded.rstrip("="), f"  {padded}\n", key):
        assert unwrap(body, headers, secret).id == MSG_ID


@pytest.mark.parametrize(
    "secret",
    ["", b"", "whsec_", "whsec_not*base64!", "whsec_QUJD\nREVG", "whsec_A", "\ud800"],
)
def test_a_malformed_secret_is_refused_before_anything_else(secret: str | bytes) -> None:
    with pytest.raises(WebhookSecretError) as info:
        wh.unwrap(b"not even json", {}, secret)
    if isinstance(secret, str) and len(secret) > len("whsec_"):
        assert secret[len("whsec_") :] not in str(info.value)


def test_a_secret_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(WebhookSecretError, match="str or bytes"):
        wh.unwrap(b"{}", {}, 42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- signatures


def test_a_tampered_body_is_refused() -> None:
    body = body_of(SESSION_CREATED)
    headers = oracle_headers(body)
    tampered = body.replace(b"sess_01abc", b"sess_01abd")
    with pytest.raises(WebhookSignatureError, match="no signature matches") as info:
        unwrap(tampered, headers)
    assert info.value.webhook_id == MSG_ID


def test_a_wrong_secret_is_refused() -> None:
    body = body_of(SESSION_CREATED)
    headers = oracle_headers(body, oracle=Webhook(b"someone else's key"))
    with pytest.raises(WebhookSignatureError):
        unwrap(body, headers)


@pytest.mark.parametrize("field", ["Webhook-ID", "Webhook-Timestamp"])
def test_a_changed_signed_header_is_refused(field: str) -> None:
    body = body_of(SESSION_CREATED)
    headers = oracle_headers(body)
    headers[field] = "whe_other" if field == "Webhook-ID" else str(NOW + 1)
    with pytest.raises(WebhookSignatureError):
        unwrap(body, headers)


def test_any_one_valid_signature_among_several_passes() -> None:
    body = body_of(SESSION_CREATED)
    good = oracle_headers(body)["Webhook-Signature"]
    others = [
        oracle_headers(body, oracle=Webhook(b"rotated-out key"))["Webhook-Signature"],
        "v2,c29tZXRoaW5nIGVsc2U=",  # another version: skipped
        "v1a," + good[3:],  # not "v1": skipped even though the bytes match
        "v1,***not-base64***",
        "garbage-without-a-comma",
    ]
    for position in range(len(others) + 1):
        listed = [*others[:position], good, *others[position:]]
        headers = {**oracle_headers(body), "Webhook-Signature": "  ".join(listed)}
        assert unwrap(body, headers).id == MSG_ID


def test_signatures_of_other_versions_only_are_refused_and_said_so() -> None:
    body = body_of(SESSION_CREATED)
    headers = {**oracle_headers(body), "Webhook-Signature": "v2,abc v1a,def"}
    with pytest.raises(WebhookSignatureError, match="no v1 signature"):
        unwrap(body, headers)


def test_verification_happens_before_the_body_is_parsed() -> None:
    body = b"this is not json"
    headers = oracle_headers(body, oracle=Webhook(b"another key"))
    with pytest.raises(WebhookSignatureError):
        unwrap(body, headers)


def test_no_message_reveals_the_secret_or_the_expected_signature() -> None:
    body = body_of(SESSION_CREATED)
    expected = oracle_headers(body)["Webhook-Signature"][3:]
    tampered = body + b" "
    errors = []
    for call in (
        lambda: unwrap(tampered, oracle_headers(body)),
        lambda: unwrap(body, oracle_headers(body), now=NOW + 3600),
        lambda: unwrap(body, {}),
        lambda: unwrap(b"[]", oracle_headers(b"[]")),
        lambda: wh.unwrap(body, oracle_headers(body), SECRET[:-2] + "*="),
    ):
        with pytest.raises(WebhookVerificationError) as info:
            call()
        errors.append(info.value)
    for err in errors:
        for text in (str(err), repr(err), *map(str, err.args)):
            assert SECRET[len("whsec_") :] not in text
            assert base64.b64encode(KEY).decode()[:16] not in text
            assert expected not in text


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("now", "reason"),
    [(NOW + 301, r"301 s old"), (NOW - 301, r"301 s in the future")],
    ids=["stale", "future"],
)
def test_a_timestamp_outside_the_tolerance_is_refused(now: int, reason: str) -> None:
    body = body_of(SESSION_CREATED)
    with pytest.raises(WebhookTimestampError, match=reason) as info:
        unwrap(body, oracle_headers(body), now=now)
    assert info.value.webhook_id == MSG_ID


@pytest.mark.parametrize("now", [NOW - 300, NOW, NOW + 300, NOW + 299.5])
def test_the_tolerance_is_inclusive(now: float) -> None:
    body = body_of(SESSION_CREATED)
    assert unwrap(body, oracle_headers(body), now=now).id == MSG_ID


def test_the_tolerance_is_configurable() -> None:
    body = body_of(SESSION_CREATED)
    headers = oracle_headers(body)
    with pytest.raises(WebhookTimestampError):
        unwrap(body, headers, now=NOW + 11, tolerance=10)
    assert unwrap(body, headers, now=NOW + 3600, tolerance=3600).id == MSG_ID
    assert unwrap(body, headers, now=NOW + 10**9, tolerance=math.inf).id == MSG_ID


def test_the_clock_is_used_when_now_is_not_given() -> None:
    body = body_of(SESSION_CREATED)
    stale = oracle_headers(body)  # signed at the docs' example time, long ago
    with pytest.raises(WebhookTimestampError, match="s old"):
        wh.unwrap(body, stale, SECRET)
    fresh = wh.sign(body, SECRET)
    assert wh.unwrap(body, fresh, SECRET).id == MSG_ID


@pytest.mark.parametrize("stamp", ["abc", "", "1e9", "-1788253679", "0x6a9", "nan", "12 34"])
def test_a_signed_but_non_numeric_timestamp_is_refused(stamp: str) -> None:
    body = body_of(SESSION_CREATED)
    headers = {
        "Webhook-ID": MSG_ID,
        "Webhook-Timestamp": stamp,
        "Webhook-Signature": hand_signature(KEY, MSG_ID, stamp, body),
    }
    error = WebhookHeaderError if not stamp else WebhookTimestampError
    with pytest.raises(error):
        unwrap(body, headers)


def test_a_fractional_timestamp_is_unix_seconds_too() -> None:
    body = body_of(SESSION_CREATED)
    stamp = f"{NOW}.5"
    headers = {
        "Webhook-ID": MSG_ID,
        "Webhook-Timestamp": stamp,
        "Webhook-Signature": hand_signature(KEY, MSG_ID, stamp, body),
    }
    assert unwrap(body, headers).id == MSG_ID


@pytest.mark.parametrize(
    "kwargs", [{"tolerance": -1}, {"tolerance": math.nan}, {"now": math.nan}, {"now": math.inf}]
)
def test_impossible_clock_settings_are_a_configuration_error(kwargs: dict[str, float]) -> None:
    body = body_of(SESSION_CREATED)
    kwargs = {"now": NOW, **kwargs}
    with pytest.raises(ConfigurationError):
        wh.unwrap(body, oracle_headers(body), SECRET, **kwargs)


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("missing", ["Webhook-ID", "Webhook-Timestamp", "Webhook-Signature"])
def test_each_required_header_is_required(missing: str) -> None:
    body = body_of(SESSION_CREATED)
    headers = oracle_headers(body)
    del headers[missing]
    with pytest.raises(WebhookHeaderError) as info:
        unwrap(body, headers)
    assert info.value.message == f"missing required header: {missing}"
    headers[missing] = "   "
    with pytest.raises(WebhookHeaderError, match=missing):
        unwrap(body, headers)


def test_every_missing_header_is_named_at_once() -> None:
    with pytest.raises(WebhookHeaderError) as info:
        unwrap(b"{}", {"Content-Type": "application/json"})
    assert str(info.value) == (
        "missing required headers: Webhook-ID, Webhook-Timestamp, Webhook-Signature"
    )


class LowerCaseHeaders(Mapping[str, str]):
    """Like starlette's Headers: a read-only mapping over lower-cased raw pairs."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = [(k.lower(), v) for k, v in pairs]

    def __getitem__(self, key: str) -> str:
        for k, v in self._pairs:
            if k == key.lower():
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, _ in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)


@pytest.mark.parametrize("style", ["lower", "upper", "mixed", "cimultidict", "starlette-like"])
def test_headers_are_found_whatever_their_case_and_mapping(style: str) -> None:
    body = body_of(SESSION_CREATED)
    pairs = list(oracle_headers(body).items())
    headers: Mapping[str, str]
    if style == "lower":
        headers = {k.lower(): v for k, v in pairs}
    elif style == "upper":
        headers = {k.upper(): v for k, v in pairs}
    elif style == "mixed":
        headers = {"wEbHoOk-Id": pairs[0][1], "WEBHOOK-timestamp": pairs[1][1]}
        headers["webhook-SIGNATURE"] = pairs[2][1]
    elif style == "cimultidict":
        headers = CIMultiDict(pairs)
    else:
        headers = LowerCaseHeaders(pairs)
    assert unwrap(body, headers).id == MSG_ID


def test_repeated_signature_headers_are_all_candidates() -> None:
    body = body_of(SESSION_CREATED)
    headers = CIMultiDict(oracle_headers(body))
    good = headers.pop("Webhook-Signature")
    headers.add("Webhook-Signature", "v1,AAAA")
    headers.add("webhook-signature", good)
    assert unwrap(body, headers).id == MSG_ID


def test_a_signed_header_repeated_with_a_different_value_is_refused() -> None:
    body = body_of(SESSION_CREATED)
    headers = CIMultiDict(oracle_headers(body))
    headers.add("webhook-timestamp", str(NOW))  # the same value again: harmless
    assert unwrap(body, headers).id == MSG_ID
    headers.add("Webhook-Timestamp", str(NOW - 5))
    with pytest.raises(WebhookHeaderError, match="Webhook-Timestamp was sent 3 times"):
        unwrap(body, headers)


def test_a_huge_claimed_webhook_id_is_quoted_short() -> None:
    with pytest.raises(WebhookHeaderError) as info:
        unwrap(b"{}", {"Webhook-ID": "whe_" + "x" * 10_000})
    assert info.value.webhook_id == "whe_" + "x" * 10_000  # kept whole on the attribute
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------- payloads


def signed(body: bytes) -> dict[str, str]:
    return {
        "Webhook-ID": MSG_ID,
        "Webhook-Timestamp": str(NOW),
        "Webhook-Signature": hand_signature(KEY, MSG_ID, str(NOW), body),
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json at all", "not valid JSON"),
        (b'{"type": "event", ', "not valid JSON"),
        (b"\xff{}", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "JSON list, not the webhook envelope"),
        (b'"event"', "JSON str, not the webhook envelope"),
        (body_of({**SESSION_CREATED, "type": "message"}), "'type' must be 'event'"),
        (body_of({k: v for k, v in SESSION_CREATED.items() if k != "type"}), "must be 'event'"),
        (body_of({k: v for k, v in SESSION_CREATED.items() if k != "data"}), "'data' is missing"),
        (body_of({**SESSION_CREATED, "data": [1]}), "'data' is a list, not an object"),
        (body_of(envelope({"id": "sess_1"})), "'data.type' is missing"),
        (body_of(envelope({"type": 7})), "'data.type' must be a string, got int"),
        (body_of(envelope({"type": "x", "schema_version": "1"})), "schema_version' must be an"),
        (body_of(envelope({"type": "x", "schema_version": True})), "schema_version' must be an"),
        (body_of({**SESSION_CREATED, "created_at": 1788253679}), "'created_at' must be a string"),
        (body_of({**SESSION_CREATED, "id": 5}), "'id' must be a string"),
        (body_of(envelope({"type": "session.created"})), "'data.id' is missing"),
        (body_of(envelope({**SCHEDULE_RUN["data"], "attempt": "1"})), "'data.attempt' must be an"),
    ],
)
def test_an_authentic_body_that_is_not_the_envelope_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(WebhookPayloadError, match=re.escape(reason)) as info:
        unwrap(body, signed(body))
    assert info.value.webhook_id == MSG_ID


def test_a_non_json_body_is_quoted_short_in_the_error() -> None:
    body = b"<html>" + b"x" * 5000 + b"</html>"
    with pytest.raises(WebhookPayloadError) as info:
        unwrap(body, signed(body))
    assert "<html>" in str(info.value)
    assert len(str(info.value)) < 600


def test_parse_types_a_body_or_its_raw_object_without_verifying() -> None:
    body = body_of(SCHEDULE_RUN)
    event = unwrap(body, oracle_headers(body))
    assert wh.parse(body) == event
    assert wh.parse(body.decode()) == event
    assert wh.parse(event.raw) == event
    with pytest.raises(WebhookPayloadError, match="'id' is missing"):
        wh.parse({k: v for k, v in SCHEDULE_RUN.items() if k != "id"})


def test_verify_checks_without_parsing() -> None:
    body = b"not json, but signed"
    assert wh.verify(body, signed(body), SECRET, now=NOW) is None
    with pytest.raises(WebhookSignatureError):
        wh.verify(body + b"!", signed(body), SECRET, now=NOW)


@pytest.mark.parametrize("kind", [bytearray, memoryview, lambda b: b.decode()])
def test_a_body_may_be_any_bytes_like_or_text(kind: Any) -> None:
    body = body_of(SESSION_CREATED)
    assert unwrap(kind(body), oracle_headers(body)).id == MSG_ID


# --------------------------------------------------------------------------- sign()


def test_sign_matches_the_oracle_and_a_hand_computed_signature() -> None:
    body = body_of(SESSION_CREATED)
    headers = wh.sign(body, SECRET, msg_id=MSG_ID, timestamp=NOW)
    assert headers == {
        "Webhook-ID": MSG_ID,
        "Webhook-Timestamp": str(NOW),
        "Webhook-Signature": Webhook(SECRET).sign(MSG_ID, WHEN, body.decode()),
    }
    assert headers["Webhook-Signature"] == hand_signature(KEY, MSG_ID, str(NOW), body)


def test_the_oracle_accepts_what_sign_produces() -> None:
    body = body_of(SESSION_CREATED)
    # The oracle reads the real clock, so sign at the real time.
    Webhook(SECRET).verify(body, wh.sign(body, SECRET))
    Webhook(RAW_SECRET.encode()).verify(body, wh.sign(body, RAW_SECRET))
    with pytest.raises(OracleError):
        Webhook(SECRET).verify(body, wh.sign(body, RAW_SECRET))


def test_sign_defaults_to_a_fresh_id_and_adds_the_event_type_on_request() -> None:
    body = body_of(SESSION_CREATED)
    first, second = wh.sign(body, SECRET), wh.sign(body, SECRET, event_type="session.created")
    assert re.fullmatch(r"whe_[0-9a-f]{26}", first["Webhook-ID"])
    assert first["Webhook-ID"] != second["Webhook-ID"]
    assert "Webhook-Event-Type" not in first
    assert second["Webhook-Event-Type"] == "session.created"


def test_sign_refuses_a_malformed_secret() -> None:
    with pytest.raises(WebhookSecretError):
        wh.sign(b"{}", "whsec_%%%")


# --------------------------------------------------------------------------- properties

keys = st.binary(min_size=1, max_size=64)
msg_ids = st.from_regex(r"whe_[0-9a-z]{1,26}", fullmatch=True)
stamps = st.integers(min_value=0, max_value=4_102_444_800)  # up to 2100


@PROPERTY_SETTINGS
@given(body=st.text(max_size=300), key=keys, msg_id=msg_ids, stamp=stamps)
def test_any_body_the_oracle_signs_verifies(body: str, key: bytes, msg_id: str, stamp: int) -> None:
    when = datetime.fromtimestamp(stamp, tz=UTC)
    raw = body.encode()
    headers = oracle_headers(raw, oracle=Webhook(key), msg_id=msg_id, when=when)
    secret = "whsec_" + base64.b64encode(key).decode()
    for form in (secret, key):
        wh.verify(raw, headers, form, now=stamp)
    assert (
        wh.sign(raw, secret, msg_id=msg_id, timestamp=stamp)["Webhook-Signature"]
        == (headers["Webhook-Signature"])
    )


@PROPERTY_SETTINGS
@given(body=st.text(min_size=1, max_size=300), key=keys, data=st.data())
def test_any_single_byte_change_fails(body: str, key: bytes, data: st.DataObject) -> None:
    raw = body.encode()
    headers = oracle_headers(raw, oracle=Webhook(key))
    index = data.draw(st.integers(0, len(raw) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = raw[:index] + bytes([raw[index] ^ flip]) + raw[index + 1 :]
    with pytest.raises(WebhookSignatureError):
        wh.verify(changed, headers, key, now=NOW)


header_names = st.sampled_from(
    ["Webhook-ID", "webhook-timestamp", "WEBHOOK-SIGNATURE", "Webhook-Event-Type", "X-Other"]
)


@PROPERTY_SETTINGS
@given(
    headers=st.dictionaries(header_names | st.text(max_size=20), st.text(max_size=60)),
    body=st.binary(max_size=200),
    now=st.floats(min_value=0, max_value=1e10),
)
def test_arbitrary_requests_only_ever_raise_verification_errors(
    headers: dict[str, str], body: bytes, now: float
) -> None:
    with contextlib.suppress(WebhookVerificationError):
        wh.unwrap(body, headers, SECRET, now=now)


# Any code point, lone surrogates included: aiohttp hands a header's non-UTF-8 byte on as
# one (surrogateescape), and a str body can hold one. (st.text() never draws surrogates.)
any_char = st.integers(0, 0x10FFFF).map(chr) | st.sampled_from(["\udcff", "\ud83d", "7", "."])


def any_text(max_size: int) -> st.SearchStrategy[str]:
    return st.lists(any_char, max_size=max_size).map("".join)


header_values = any_text(40) | st.binary(max_size=40)


@PROPERTY_SETTINGS
@given(
    headers=st.fixed_dictionaries(
        {"Webhook-ID": header_values, "Webhook-Timestamp": header_values},
        optional={
            "Webhook-Signature": header_values,
            "webhook-id": header_values,
            "X-Other": header_values,
        },
    ),
    body=st.binary(max_size=200) | any_text(200),
    now=st.floats(min_value=0, max_value=1e10),
)
def test_any_header_bytes_or_text_and_any_body_only_raise_verification_errors(
    headers: dict[str, Any], body: bytes | str, now: float
) -> None:
    headers.setdefault("Webhook-Signature", hand_signature(KEY, "x", "1", b""))
    with contextlib.suppress(WebhookVerificationError):
        wh.unwrap(body, headers, SECRET, now=now)
    with contextlib.suppress(WebhookPayloadError):
        wh.parse(body)


@pytest.mark.parametrize("field", ["Webhook-ID", "Webhook-Timestamp", "Webhook-Signature"])
def test_a_header_byte_that_is_not_utf8_is_a_header_error(field: str) -> None:
    body = body_of(SESSION_CREATED)
    headers = oracle_headers(body)
    headers[field] += b"\xff".decode("utf-8", "surrogateescape")  # as aiohttp passes it on
    with pytest.raises(WebhookHeaderError, match=field) as info:
        unwrap(body, headers)
    assert info.value.webhook_id is None or info.value.webhook_id.isascii()


def test_a_str_body_with_a_lone_surrogate_is_a_payload_error() -> None:
    body = '{"type": "event", "note": "\udcff"}'
    headers = oracle_headers(b"{}")
    for call in (lambda: unwrap(body, headers), lambda: wh.parse(body)):  # type: ignore[arg-type]
        with pytest.raises(WebhookPayloadError, match="surrogate"):
            call()


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
KNOWN_TYPES = [
    "session.created",
    "session.updated",
    "session.archived",
    "session.deleted",
    "forward.schedule_run.succeeded",
]
data_types = st.sampled_from([*KNOWN_TYPES, "agent.updated"]) | json_values


@PROPERTY_SETTINGS
@given(
    data=st.dictionaries(st.sampled_from(list(SCHEDULE_RUN["data"])), json_values),
    data_type=data_types,
    top=st.dictionaries(st.sampled_from(["id", "created_at", "extra"]), json_values),
)
def test_authentic_bodies_give_an_event_or_a_payload_error(
    data: dict[str, Any], data_type: Any, top: dict[str, Any]
) -> None:
    obj = {"type": "event", **top, "data": {**data, "type": data_type}}
    body = body_of(obj)
    try:
        event = unwrap(body, signed(body))
    except WebhookPayloadError:
        return
    assert event.raw == obj
    assert event.type == data_type
    assert isinstance(event, UnknownWebhookEvent) == isinstance(event.data, UnknownWebhookData)


# --------------------------------------------------------------------------- module rules


def test_errors_are_qoder_errors_and_exported_from_the_module() -> None:
    for name in wh.__all__:
        obj = getattr(wh, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
    subclasses = [
        WebhookSecretError,
        WebhookHeaderError,
        WebhookSignatureError,
        WebhookTimestampError,
        WebhookPayloadError,
    ]
    for cls in subclasses:
        assert issubclass(cls, WebhookVerificationError)
    assert issubclass(WebhookVerificationError, QoderError)
    assert wh.__all__ == sorted(wh.__all__)


def test_the_module_does_no_io() -> None:
    tree = ast.parse((ROOT / "qoder_async" / "webhooks.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
    }
    assert not imported & {"aiohttp", "httpx", "httpx_sse", "asyncio", "socket", "redis"}


# --------------------------------------------------------------------------- the README's handler


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Webhooks\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_readme_handler_queues_answers_fast_and_dedupes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from aiohttp import test_utils

    monkeypatch.setenv("QODER_WEBHOOK_SECRET", SECRET)
    namespace: dict[str, Any] = {"__name__": "readme_webhooks"}
    exec(compile(readme_snippet(), "README.md#webhooks", "exec"), namespace)
    app = namespace["make_app"]()
    body = body_of(SESSION_CREATED)
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        for _ in range(2):  # a retry of the same delivery
            response = await client.post(
                "/webhooks/qoder", data=body, headers=wh.sign(body, SECRET)
            )
            assert response.status == 204
        headers = wh.sign(body, SECRET)
        response = await client.post("/webhooks/qoder", data=body + b" ", headers=headers)
        assert response.status == 400
        queue = app[namespace["QUEUE"]]
        # the worker prints as soon as it takes an event
        await eventually(queue.empty, "the worker took every event")
    out = capsys.readouterr().out.splitlines()
    assert out.count("session.created: sess_01abc") == 1  # the retry was deduplicated
    assert [line for line in out if line.startswith("refused: ")] == [
        f"refused: no signature matches (altered body, wrong secret, or not from Qoder) "
        f"(Webhook-ID {headers['Webhook-ID']!r})"
    ]
