"""One HTTP request carried over a Serve handle: the front sends its scope and
body, the replica runs it through its ASGI app and streams the app's messages back.

`exchange` is the replica's side. The app reads the body, then waits on
``receive`` for the client to leave: that happens when the front cancels the
call (its client left) or the call is closed, and the app then cancels what
it started, as it would for a client of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

__all__ = ["Message", "exchange", "portable_scope"]

logger = logging.getLogger("hibachi.serve")

Message = dict[str, Any]

# The parts of an HTTP scope a replica's app needs; the rest (the front's
# server state, extensions) stays with the front.
_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "headers",
    "client",
    "server",
)
_BUFFERED = 64  # messages the app may send ahead of the front
_SETTLE_S = 5.0  # how long the app gets to finish after its client left


def portable_scope(scope: Mapping[str, Any]) -> Message:
    """The picklable part of an HTTP ``scope``."""
    return {key: scope[key] for key in _SCOPE_KEYS if key in scope}


async def exchange(app: Any, scope: Message, body: bytes) -> AsyncIterator[list[Message]]:
    """Run one request through ``app``; yield its response messages, in batches
    of those ready at once. An error the app raises is logged here (the app has
    answered 500 already, or the front answers 502 for a response never begun)."""
    outbox: asyncio.Queue[Message | None] = asyncio.Queue(_BUFFERED)
    left = asyncio.Event()
    parts = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        if parts:
            return parts.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message | None) -> None:
        if not left.is_set():
            await outbox.put(message)

    task = asyncio.create_task(_run(app, scope, receive, send))
    try:
        done = False
        while not done:
            batch, done = await _batch(outbox)
            if batch:
                yield batch
    finally:
        await _settle(task, left, outbox)


async def _run(app: Any, scope: Message, receive: Any, send: Any) -> None:
    try:
        await app(scope, receive, send)
    except Exception:
        logger.exception("the app raised serving %s %s", scope.get("method"), scope.get("path"))
    finally:
        await send(None)


async def _batch(outbox: asyncio.Queue[Message | None]) -> tuple[list[Message], bool]:
    """The messages ready now (waiting for the first); True once the app is done."""
    batch: list[Message] = []
    message = await outbox.get()
    while message is not None:
        batch.append(message)
        if outbox.empty():
            return batch, False
        message = outbox.get_nowait()
    return batch, True


async def _settle(
    task: asyncio.Task[None], left: asyncio.Event, outbox: asyncio.Queue[Any]
) -> None:
    """Tell the app its client left, give it a moment to end, then cancel it."""
    left.set()
    while not outbox.empty():  # wakes a send blocked on a full outbox
        outbox.get_nowait()
    if not task.done():
        await asyncio.wait({task}, timeout=_SETTLE_S)
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
