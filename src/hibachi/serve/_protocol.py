"""`guarded_protocol`: uvicorn's HTTP protocol (httptools) with the limits it lacks.

uvicorn times out only idle keep-alive connections: a client that opens a
connection and sends nothing, or sends its headers a byte at a time, holds
it for ever, and httptools puts no bound on a request head's size. This
protocol adds, per connection:

- a deadline on each request head (``header_timeout`` from the connection's
  opening or its last response): past it, 408 and closed;
- a bound on a request head's size (``max_header_bytes``): past it, 431 and
  closed;
- a cap on open connections (``max_connections``): the request of one more
  connection is answered 503, in OpenAI's shape, and the connection closed;
- a deadline on a client that stops reading (``write_timeout``): when its
  socket has taken nothing for that long while an answer waits, the
  connection is dropped (its request is cancelled as if the client had left);
- a malformed request head is answered 400 in OpenAI's shape (uvicorn's own
  answer is plain text).

The body's own deadline and size are the app's (`_gate`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._settings import ConnectionLimits

__all__ = ["guarded_protocol"]


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn's ``Config(http=...)`` takes, bound to ``limits``."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


class GuardedProtocol(HttpToolsProtocol):
    limits: ConnectionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = _too_many  # this connection's request is answered 503, then closed
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        self.resume_writing()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client's socket is full: it has this long to take some of it."""
        super().pause_writing()
        if self._write_timer is None:
            seconds = self.limits.write_timeout
            self._write_timer = self.loop.call_later(seconds, self.transport.abort)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self.flow is not None:
            super().resume_writing()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"the request is not valid HTTP: {msg}", "invalid_http")

    def data_received(self, data: bytes) -> None:
        if not self.transport.is_closing():  # once refused, the rest is not read
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._begin_head()

    def on_url(self, url: bytes) -> None:
        if self._count_head(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count_head(len(name) + len(value)):
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._end_head()
        if not self.transport.is_closing():
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._begin_head()  # the next request's head is due within header_timeout

    def _begin_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_late)

    def _end_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _count_head(self, size: int) -> bool:
        """Count ``size`` more bytes of the head; False once it is refused (too large)."""
        if self.transport.is_closing():
            return False
        self._head_bytes += size
        if self._head_bytes > self.limits.max_header_bytes:
            limit = self.limits.max_header_bytes
            message = f"the request head is larger than {limit:,} bytes"
            self._refuse(431, message, "request_header_too_large")
            return False
        return True

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._begin_head()  # a response is still being sent: the head can wait for it
            return
        seconds = self.limits.header_timeout
        self._refuse(
            408, f"the request head did not arrive within {seconds:g} s", "request_timeout"
        )

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` in OpenAI's shape and close (no request is being answered)."""
        self._end_head()
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        body = json.dumps({"error": error}).encode()
        reason = {400: b"Bad Request", 408: b"Request Timeout",
                  431: b"Request Header Fields Too Large"}[status]  # fmt: skip
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, reason, len(body))
        )
        self.transport.write(head + body)
        self.transport.close()


async def _too_many(scope: Any, receive: Any, send: Any) -> None:
    """The app a connection over ``max_connections`` gets: 503, and the connection closed."""
    body = json.dumps(
        {
            "error": {
                "message": "the server has too many open connections: retry later",
                "type": "server_error",
                "param": None,
                "code": "too_many_connections",
            }
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
