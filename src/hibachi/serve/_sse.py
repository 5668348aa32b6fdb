"""Server-Sent Events, and noticing a client that went away.

`EventStream` is an ASGI response: each JSON string from its source becomes
``data: {json}``, then ``data: [DONE]``. An error after the stream started is
sent as one last ``data: {"error": …}`` event, never a silent cut. When the
client closes its connection, the source is cancelled at once (its batcher
row is freed at the next step), not at the next write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ._errors import ClientGone, error_body

__all__ = ["EventStream", "until_gone", "wait_disconnect"]

T = TypeVar("T")

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has closed its connection."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _race(work: Awaitable[T], receive: Receive) -> T:
    """``work``'s result, or `ClientGone` (``work`` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


async def until_gone(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` while watching ``request``'s connection (see `_race`)."""
    return await _race(work, request.receive)


class EventStream(Response):
    """An ASGI response streaming ``source``'s JSON strings as Server-Sent Events."""

    def __init__(self, source: AsyncIterator[str]) -> None:
        super().__init__(media_type="text/event-stream")
        self._source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        with contextlib.suppress(ClientGone):
            await _race(self._pump(send), receive)
        await _end(send)

    async def _pump(self, send: Send) -> None:
        source = self._source
        try:
            async with contextlib.aclosing(source):  # type: ignore[type-var]
                async for data in source:
                    await _event(send, data)
            await _event(send, "[DONE]")
        except Exception as exc:
            await _event(send, error_body(exc).model_dump_json())


async def _event(send: Send, data: str) -> None:
    body = f"data: {data}\n\n".encode()
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _end(send: Send) -> None:
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": b"", "more_body": False})
