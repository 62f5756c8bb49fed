"""SHELL: the asyncio task helper the turn API and the fleet share."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end (an error it ended with is raised).

    A cancel of the caller while it waits is raised: it reaches the awaited task
    only, so it is told apart by the caller's own count of cancel requests.
    """
    caller = asyncio.current_task()
    asked = caller.cancelling() if caller is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if caller is not None and caller.cancelling() > asked:
            raise
