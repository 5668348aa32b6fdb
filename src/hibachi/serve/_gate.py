"""`Gate`: the app's front door, an ASGI middleware in front of every route.

For each HTTP request, before any route runs, in this order:

1. the ``Host`` header must name an allowed host (400 otherwise): a browser
   page whose own name resolves to 127.0.0.1 (DNS rebinding) cannot reach a
   server bound to loopback;
2. with API keys, ``Authorization: Bearer <key>`` on every ``/v1/*`` route
   (every route with ``protect_all``), compared in constant time (401);
3. a body must be JSON (``Content-Type: application/json``, or none): the
   types a browser may send to another site without asking first
   (``text/plain``, forms) are refused with 415;
4. the body is read here, counted as it comes: more than
   ``max_request_bytes`` is 413 (at once when ``Content-Length`` says so, the
   body unread), slower than ``body_timeout`` is 408, and both close the
   connection. The route takes the bytes (`take_body`), never a stream. The
   bodies of all requests in flight together may hold ``max_buffered_bytes``;
   one more is 503 (``Retry-After: 1``), so many slow uploads at the size
   limit cannot fill the memory.

An exception no route handled becomes a 500 in OpenAI's shape (logged), so
every answer, refusals included, is ``{"error": {...}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import APIError, ClientGone, status_of
from ._settings import ServeSettings

__all__ = ["Gate", "host_allowed", "send_error", "take_body"]

logger = logging.getLogger("hibachi.serve")

BODY = "hibachi.body"  # the scope key the request's body bytes are kept under
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CROSS_SITE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def take_body(scope: Scope) -> bytes:
    """The body `Gate` read for this request (empty when it had none), which the scope
    then no longer holds."""
    body: bytes = scope.pop(BODY, b"")
    return body


class Gate:
    """Host names, keys, body type and size, and the last word on errors (see the module)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings, hosts: list[Any]) -> None:
        """``hosts``: a one-item list holding the allowed host names (None: any), which
        `hibachi.serve.server_for` may narrow once it knows the address it binds."""
        self.app = app
        self.settings = settings
        self._hosts = hosts
        self._keys = [key.encode() for key in settings.access.api_keys]
        self._buffered = 0  # bytes of bodies held by the requests in flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _Watch(send)
        held = [0]  # bytes of this request's body counted in _buffered
        try:
            refusal = self._check_head(scope)
            if refusal is None and scope["method"] in _BODY_METHODS:
                refusal = await self._read_body(scope, receive, held)
            if refusal is not None:
                await send_error(sent, refusal)
                return
            await self.app(scope, receive, sent)
        except ClientGone:
            return
        except Exception as exc:
            if sent.started:
                logger.error("a response failed after it started", exc_info=exc)
                raise
            await send_error(sent, exc)
        finally:
            self._buffered -= held[0]

    def _check_head(self, scope: Scope) -> APIError | None:
        headers = _headers(scope)
        if not host_allowed(headers.get(b"host", b""), self._hosts[0]):
            return APIError(
                400,
                "the Host header names a host this server does not serve",
                param="Host",
                code="invalid_host",
            )
        if self._keys and self._guarded(scope["path"]) and not self._authorized(headers):
            return APIError(
                401,
                "a valid API key is needed: send Authorization: Bearer <key>",
                code="invalid_api_key",
            )
        return None

    def _guarded(self, path: str) -> bool:
        return self.settings.access.protect_all or path.startswith("/v1/") or path == "/v1"

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        # every key is compared, so the time taken says nothing of which matched
        matches = [hmac.compare_digest(token, key) for key in self._keys]
        return any(matches)

    async def _read_body(self, scope: Scope, receive: Receive, held: list[int]) -> APIError | None:
        headers = _headers(scope)
        kind = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if kind in _CROSS_SITE_TYPES:
            return APIError(
                415,
                f"the body must be JSON (Content-Type: application/json), not {kind}",
                param="Content-Type",
                code="unsupported_media_type",
            )
        limit = self.settings.limits.max_request_bytes
        declared = _content_length(headers)
        if declared is not None and declared > limit:
            return _too_large(declared, limit)
        if declared is not None and not self._hold(declared, held):
            return _busy()
        try:
            async with asyncio.timeout(self.settings.connections.body_timeout):
                body = await self._receive_body(receive, limit, held)
        except TimeoutError:
            return APIError(
                408,
                f"the body did not arrive within {self.settings.connections.body_timeout:g} s",
                code="request_timeout",
            )
        if isinstance(body, APIError):
            return body
        scope[BODY] = body
        return None

    def _hold(self, size: int, held: list[int]) -> bool:
        """Count ``size`` more bytes of this request's body; False if that is too many."""
        more = max(0, size - held[0])
        if self._buffered + more > self.settings.connections.max_buffered_bytes:
            return False
        self._buffered += more
        held[0] += more
        return True

    async def _receive_body(self, receive: Receive, limit: int, held: list[int]) -> Any:
        """The body, read to its end (bytes), or the refusal (`APIError`) that ends it
        early; `ClientGone` if the client leaves."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _too_large(size, limit, more=True)
            if not self._hold(size, held):
                return _busy()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _Watch:
    """A ``send`` that notes whether the response has started."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _too_large(size: int, limit: int, *, more: bool = False) -> APIError:
    what = f"more than {limit:,}" if more else f"{size:,}"
    return APIError(
        413,
        f"the request body has {what} bytes; this server takes at most {limit:,} "
        "(max_request_bytes)",
        code="request_too_large",
    )


def _busy() -> APIError:
    return APIError(
        503,
        "the server holds as many request bodies as it may: retry in a moment",
        kind="server_error",
        code="busy",
        retry_after=1,
    )


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name: value for name, value in scope.get("headers", ())}


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def host_allowed(header: bytes, allowed: tuple[str, ...] | None) -> bool:
    """Whether ``Host`` header ``header`` names one of ``allowed`` (None or ``"*"``: any;
    ``"*.example.com"`` any subdomain)."""
    if allowed is None or "*" in allowed:
        return True
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    for name in allowed:
        name = name.lower()
        if host == name or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


async def send_error(send: Send, error: BaseException) -> None:
    """Answer ``error`` in OpenAI's shape; a 408, 413 or 415 closes the connection
    (the rest of the body is not read)."""
    answer = status_of(error)
    body = answer.body.model_dump_json().encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in answer.headers.items()),
    ]
    if answer.status in (408, 413, 415) or (answer.status == 503 and answer.retry_after):
        headers.append((b"connection", b"close"))
    if answer.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
