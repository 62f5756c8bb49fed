"""A fake Qoder Cloud Agents service for tests, demos and bot development.

`FakeQoderServer` runs a real HTTP + SSE server on 127.0.0.1 that speaks the
Qoder "Managed" Cloud Agents API (``/api/v1/cloud``): environments, agents
(and their versions), models, files, sessions (with resources), sending
events, listing them and streaming them with ``Last-Event-ID`` resume and
``event_deltas[]`` previews, and the sub-agent threads of multi-agent
sessions; optionally it sends signed webhooks. A scripted agent
(`default_script`, `multiagent_script`, or your own `Script`) answers every
turn. `Faults` makes it misbehave on purpose (dropped, silent or stalled
streams, throttling, duplicated or reordered replays, ignored resume cursors,
malformed frames...) and `Dialect` sets the documented status codes, whether
events carry ``turn_id`` and how a file download answers.

`record` writes what a ``QoderClient`` says and hears (requests, answers,
every SSE frame with its timing) to a cassette, secrets redacted;
``FakeQoderServer(cassette=path)`` answers from it, ``faults`` on top.

This package is standalone: it imports nothing from the rest of
``qoder_async``, so any HTTP client can be tested against it::

    import httpx
    from qoder_async.testing import FakeQoderServer, TurnContext


    async def echo(ctx: TurnContext) -> None:
        await ctx.message(f"echo: {ctx.text}")


    async def main() -> None:
        async with FakeQoderServer(script=echo) as server:
            session = server.add_session()
            async with httpx.AsyncClient(
                base_url=server.base_url + "/",
                headers={"Authorization": f"Bearer {server.token}"},
            ) as http:
                sent = await http.post(
                    f"sessions/{session['id']}/events",
                    json={"events": [{"type": "user.message", "content": "hi"}]},
                )
                assert sent.status_code == 202
                await server.wait_idle(session["id"])
            types = [e["type"] for e in server.stored_events(session["id"])]
            # ['user.message', 'session.status_running', 'agent.message',
            #  'session.status_idle']
"""

from ._agent import (
    Script,
    StopReasonJSON,
    TurnContext,
    default_script,
    multiagent_script,
    subagent_tool_script,
    tool_script,
)
from ._faults import CannedResponse, Dialect, Faults
from ._record import record
from ._server import FakeQoderServer, RecordedRequest
from ._webhooks import WebhookDelivery

__all__ = [
    "CannedResponse",
    "Dialect",
    "FakeQoderServer",
    "Faults",
    "RecordedRequest",
    "Script",
    "StopReasonJSON",
    "TurnContext",
    "WebhookDelivery",
    "default_script",
    "multiagent_script",
    "record",
    "subagent_tool_script",
    "tool_script",
]
