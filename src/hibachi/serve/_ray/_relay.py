"""`Relay`: one HTTP request sent from the front to a replica, its answer sent back.

The replica's response start is held until its first body message, so that a
plain (non-streamed) answer reaches the client whole or not at all. How a
relay can end, besides the replica's complete answer:

- the client leaves: the call to the replica is cancelled (its row freed);
- the replica is lost (its process or its node died): before the answer
  began, a 503 ``replica_lost`` error; in a stream, a last
  ``data: {"error": … "code": "replica_lost"}`` event, then the stream's end;
- `interrupt` (the front's shutdown grace ran out): the same with ``shutdown``,
  as the server sends when it serves alone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import ray
from starlette.types import Receive, Scope, Send

from .._errors import APIError, status_of
from .._sse import wait_disconnect
from ._bridge import Message, portable_scope

__all__ = ["Outcome", "Relay", "shutting_down"]

logger = logging.getLogger("hibachi.serve")

SETTLE_S = 5.0  # after the client left, how long what the replica still sends may take

Outcome = Literal["answered", "client_gone", "replica_lost", "shutdown", "failed"]


class Relay:
    """One request relayed to a replica through ``handle`` (a Serve handle to `AppReplica`)."""

    def __init__(self, handle: Any, scope: Scope, receive: Receive, send: Send) -> None:
        self._handle = handle
        self._scope = scope
        self._receive = receive
        self._send = send
        self._held: Message | None = None  # the response start, until its first body
        self._begun = False
        self._ended = False
        self._streamed = False
        self._interrupted = asyncio.Event()

    def interrupt(self) -> None:
        """End the request now with the ``shutdown`` error (the front is stopping)."""
        self._interrupted.set()

    async def run(self, body: bytes) -> Outcome:
        """Relay the request until it is answered, or ends otherwise; how it ended."""
        response = self._handle.options(stream=True).forward.remote(
            portable_scope(self._scope), body
        )
        pump = asyncio.ensure_future(self._pump(response))
        gone = asyncio.ensure_future(wait_disconnect(self._receive))
        stop = asyncio.ensure_future(self._interrupted.wait())
        try:
            await asyncio.wait((pump, gone, stop), return_when=asyncio.FIRST_COMPLETED)
            if not pump.done():
                # The replica stops; what it sent before it did still goes out.
                response.cancel()
                await asyncio.wait((pump,), timeout=SETTLE_S)
        finally:
            for waiter in (gone, stop, pump):
                waiter.cancel()
            await asyncio.gather(pump, gone, stop, return_exceptions=True)
        left = gone.done() and not gone.cancelled()
        return await self._settle(pump, stopped=stop.done() and not stop.cancelled(), left=left)

    async def _pump(self, response: Any) -> None:
        async for batch in response:
            for message in batch:
                await self._forward(message)

    async def _forward(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._held = message
            self._streamed = _is_event_stream(message)
            return
        await self._begin()
        if not message.get("more_body", False):
            self._ended = True
        await self._send(message)

    async def _begin(self) -> None:
        if self._held is not None and not self._begun:
            self._begun = True
            await self._send(self._held)

    async def _settle(self, pump: asyncio.Future[None], *, stopped: bool, left: bool) -> Outcome:
        if self._ended:  # the replica's whole answer went out
            return "answered"
        if stopped:
            await self._fail(shutting_down())
            return "shutdown"
        if left:
            return "client_gone"
        error = None if pump.cancelled() else pump.exception()
        if error is None:
            await self._fail(APIError(502, "the replica sent no answer", kind="server_error"))
            return "failed"
        if isinstance(error, ray.exceptions.RayActorError) and not isinstance(
            error, ray.exceptions.RayTaskError
        ):
            await self._fail(_lost(error))
            return "replica_lost"
        logger.error("relaying a request to a replica failed", exc_info=error)
        await self._fail(APIError(502, "the replica failed to answer", kind="server_error"))
        return "failed"

    async def _fail(self, error: APIError) -> None:
        """End the response with ``error``: as the whole answer if none began, as a
        last event of a stream, or by ending a plain answer that began."""
        if self._ended:
            return
        self._ended = True
        answer = status_of(error)
        body = answer.body.model_dump_json().encode()
        if not self._begun:
            headers = [(b"content-type", b"application/json")]
            headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
            start = {"type": "http.response.start", "status": answer.status, "headers": headers}
            await self._send(start)
            await self._send({"type": "http.response.body", "body": body})
            return
        event = b"data: " + body + b"\n\n" if self._streamed else b""
        await self._send({"type": "http.response.body", "body": event, "more_body": False})


def _is_event_stream(start: Message) -> bool:
    for name, value in start.get("headers", ()):
        if bytes(name).lower() == b"content-type":
            return bytes(value).startswith(b"text/event-stream")
    return False


def shutting_down() -> APIError:
    """The refusal, and the last event, of a server that is shutting down."""
    return APIError(503, "the server is shutting down", kind="server_error", code="shutdown")


def _lost(error: BaseException) -> APIError:
    return APIError(
        503,
        f"the replica serving this request was lost ({type(error).__name__}); "
        "what was sent before is valid, the rest will not come",
        kind="server_error",
        code="replica_lost",
        retry_after=1,
    )
