"""`Front`: the HTTP side of ``hibachi serve --replicas``, in the driver process.

    client ── HTTP ──> Front ── Serve handle (fewest in flight) ──> replica 1 … N

Every request but ``GET /health`` and ``GET /metrics`` is relayed to one
replica (`Relay`), whose app answers it. ``/health`` and ``/metrics`` speak
for the whole deployment (`Fleet`): the replicas' own, each labelled, and
the front's counts of how its requests ended.

Shutdown, as when the app serves alone: `begin_shutdown` (SIGINT / SIGTERM)
makes the front refuse new requests (503 ``shutdown``) and tells every
replica to drain, which lets generations run ``grace`` seconds and then ends
them with the ``shutdown`` error event. A relay still open ``BACKSTOP_S``
after that (a replica that missed the order) is ended by the front itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .._errors import APIError, status_of
from ._fleet import Fleet, ServeView
from ._relay import Outcome, Relay, shutting_down

__all__ = ["BACKSTOP_S", "Front"]

BACKSTOP_S = 5.0
MAX_BODY = 64 * 1024 * 1024
_OUTCOMES: tuple[Outcome, ...] = ("answered", "client_gone", "replica_lost", "shutdown", "failed")


class Front:
    """The front's ASGI app over ``handle`` (a Serve handle to `AppReplica`)."""

    def __init__(self, handle: Any, fleet: Fleet, *, grace: float) -> None:
        self.fleet = fleet
        self.grace = grace
        self.draining = False
        self.metrics = FrontMetrics()
        self._handle = handle
        self._relays: set[Relay] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._backstop: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    def begin_shutdown(self) -> None:
        """Refuse new requests; drain the replicas. Safe from a signal handler; idempotent."""
        if self.draining:
            return
        self.draining = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        assert self._loop is not None
        self._draining = self._loop.create_task(self.fleet.drain(self.grace))
        self._backstop = self._loop.call_later(self.grace + BACKSTOP_S, self._interrupt_all)

    def _interrupt_all(self) -> None:
        for relay in list(self._relays):
            relay.interrupt()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _close(self) -> None:
        if self._backstop is not None:
            self._backstop.cancel()
        if self._draining is not None:
            await asyncio.gather(self._draining, return_exceptions=True)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (scope["method"], scope["path"])
        if route == ("GET", "/health"):
            response = await self._health()
        elif route == ("GET", "/metrics"):
            response = await self._scrape()
        elif self.draining:
            response = _error(shutting_down())
        else:
            body = await _body(receive)
            if body is None:
                response = _error(APIError(413, f"the request body exceeds {MAX_BODY} bytes"))
            else:
                await self._relay(scope, receive, send, body)
                return
        await response(scope, receive, send)

    async def _relay(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        relay = Relay(self._handle, scope, receive, send)
        self._relays.add(relay)
        try:
            outcome = await relay.run(body)
        finally:
            self._relays.discard(relay)
        self.metrics.ended.labels(outcome).inc()

    async def _health(self) -> Response:
        if self.draining:
            body = {"status": "unavailable", "draining": True}
            return JSONResponse(body, status_code=503)
        health = await self.fleet.health()
        status = 503 if health.status == "unavailable" else 200
        return JSONResponse(health.body(), status_code=status)

    async def _scrape(self) -> Response:
        replicas, view = await asyncio.gather(
            self.fleet.metrics(), asyncio.to_thread(self.fleet.serve_view)
        )
        text = replicas + self.metrics.render(view, running=len(self._relays))
        return Response(text, media_type=CONTENT_TYPE_LATEST)


class FrontMetrics:
    """The front's own series: how its requests ended, and Serve's replica states."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ended = Counter(
            "hibachi_front_requests_ended",
            "Requests the front relayed, by how they ended: answered, client_gone, "
            "replica_lost (the replica died), shutdown, failed.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in _OUTCOMES:
            self.ended.labels(outcome)
        self.running = Gauge(
            "hibachi_front_requests_running", "Requests being relayed.", registry=self.registry
        )
        self.replicas = Gauge(
            "hibachi_replicas",
            "The deployment's replicas by Serve's state (RUNNING, STARTING, ...).",
            ["state"],
            registry=self.registry,
        )

    def render(self, view: ServeView, *, running: int) -> bytes:
        self.running.set(running)
        self.replicas.clear()
        for state, count in view.replicas.items():
            self.replicas.labels(state).set(count)
        return generate_latest(self.registry)


def _error(error: APIError) -> Response:
    answer = status_of(error)
    return JSONResponse(answer.body.model_dump(), status_code=answer.status, headers=answer.headers)


async def _body(receive: Receive) -> bytes | None:
    """The request's body; None past ``MAX_BODY``."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
