"""Webhook deliveries of the fake server: Standard-Webhooks-signed POSTs, retried.

Rules this module keeps:

* One POST per event, ``Content-Type: application/json; charset=utf-8``,
  ``User-Agent: QoderCloudAgents-Webhook/1.0``, headers ``Webhook-ID``
  (``whe_...``, the same on every attempt: an idempotency key),
  ``Webhook-Timestamp`` (Unix seconds of the attempt), ``Webhook-Event-Type``
  and ``Webhook-Signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.
* The key is the base64 after ``whsec_`` in the secret (a secret without
  that prefix is used as raw UTF-8 bytes). The body is the same on every
  attempt; the timestamp and the signature are renewed.
* Body: ``{"type": "event", "id": <Webhook-ID>, "created_at": ..., "data":
  {"type": <event type>, "id": <session id>, "schema_version": 1, ...}}``.
* At least once: a non-2xx answer or a connection error is retried after
  each of ``retry_delays`` seconds in turn; then the delivery is given up.
  Deliveries go out one at a time, in the order the events happened.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import attrs

from ._wire import Ids, dumps

__all__ = ["WebhookDelivery", "WebhookSender", "sign"]

USER_AGENT = "QoderCloudAgents-Webhook/1.0"


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("webhook_secret: whsec_ must be followed by base64") from None
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``Webhook-Signature`` value (``v1,<base64>``) of one delivery attempt."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@attrs.define
class WebhookDelivery:
    """One webhook event and what became of it (``server.webhook_deliveries``).

    ``statuses`` holds the HTTP status of every attempt (``None`` for a
    connection error); ``delivered`` turns true on the first 2xx.
    """

    id: str
    event_type: str
    body: bytes
    statuses: list[int | None] = attrs.Factory(list)
    delivered: bool = False

    def json(self) -> Any:
        """The delivered body, decoded."""
        return json.loads(self.body)


class WebhookSender:
    """Posts webhook events to one URL from a background task, in order."""

    def __init__(self, url: str, secret: str, ids: Ids, retry_delays: Sequence[float]) -> None:
        _key(secret)  # fail early on a malformed secret
        self.url = url
        self.secret = secret
        self.retry_delays = tuple(retry_delays)
        self.deliveries: list[WebhookDelivery] = []
        self._ids = ids
        self._queue: asyncio.Queue[WebhookDelivery] = asyncio.Queue()
        self._http: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the delivery task (inside the running loop)."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._worker = asyncio.get_running_loop().create_task(
            self._run(), name="qoder-fake-webhooks"
        )

    async def close(self) -> None:
        """Stop delivering (pending events are dropped) and close the HTTP session."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def send(self, event_type: str, resource_id: str, **fields: Any) -> WebhookDelivery:
        """Queue one event; ``fields`` join ``type``, ``id`` and ``schema_version`` in ``data``."""
        webhook_id = self._ids.resource("whe")
        data = {"type": event_type, "id": resource_id, "schema_version": 1, **fields}
        envelope = {"type": "event", "id": webhook_id, "created_at": self._ids.now(), "data": data}
        delivery = WebhookDelivery(webhook_id, event_type, dumps(envelope).encode())
        self.deliveries.append(delivery)
        self._queue.put_nowait(delivery)
        return delivery

    async def drained(self) -> None:
        """Return once every queued event was delivered or given up."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self._deliver(delivery)
            finally:
                self._queue.task_done()

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        assert self._http is not None
        for delay in (*self.retry_delays, None):
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": USER_AGENT,
                "Webhook-ID": delivery.id,
                "Webhook-Timestamp": str(timestamp),
                "Webhook-Event-Type": delivery.event_type,
                "Webhook-Signature": sign(self.secret, delivery.id, timestamp, delivery.body),
            }
            status: int | None = None
            try:
                async with self._http.post(self.url, data=delivery.body, headers=headers) as reply:
                    status = reply.status
                    await reply.read()
            except (aiohttp.ClientError, TimeoutError):
                status = None
            delivery.statuses.append(status)
            if status is not None and 200 <= status < 300:
                delivery.delivered = True
                return
            if delay is None:
                return
            await asyncio.sleep(delay)
