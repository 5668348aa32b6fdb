"""`AppReplica`: one Serve replica serving one ``build_app()`` app.

Serve builds the app in the replica and runs its lifespan (which opens and
closes the app's batchers). The replica is reached two ways: through Serve's
HTTP proxy, as an ingress deployment (`http_deployment`), or through a
handle, whose ``forward`` runs one HTTP request through the app
(``hibachi serve --replicas``, whose front in the driver relays every request
this way). ``get`` and ``drain`` are meant for ``handle.broadcast``: the
front reads every replica's ``/health`` and ``/metrics``, and drains them all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ...integrations.ray import ReplicaUnhealthy
from .._state import ServerState
from ._bridge import Message, exchange

__all__ = ["AppReplica", "Reply"]


@dataclass(frozen=True)
class Reply:
    """One replica's answer to a GET: its id, the status and the body."""

    replica: str
    status: int
    body: bytes


class AppReplica:
    """A Serve ingress replica whose ASGI app ``build_app()`` makes, in the replica."""

    def __init__(self, build_app: Callable[[], Any]) -> None:
        self._build_app = build_app
        self._app: Any = None
        self._replica = _replica_id()

    def __serve_build_asgi_app__(self) -> Any:
        self._app = self._build_app()
        return self._app

    async def forward(self, scope: Message, body: bytes) -> AsyncIterator[list[Message]]:
        """Run one HTTP request through the app; stream its response messages."""
        async for batch in exchange(self._app, scope, body):
            yield batch

    async def get(self, path: str) -> Reply:
        """``GET path`` of the app, whole."""
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode()}
        headers = [(b"host", self._own_host())]  # the app's front door checks it
        scope |= {"query_string": b"", "headers": headers, "http_version": "1.1", "scheme": "http"}
        status, parts = 500, []
        async for batch in exchange(self._app, scope, b""):
            for message in batch:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                elif message["type"] == "http.response.body":
                    parts.append(message.get("body", b""))
        return Reply(self._replica, status, b"".join(parts))

    async def drain(self, grace: float) -> None:
        """Stop admitting; end the generations still running after ``grace``
        seconds, as the app does on SIGTERM when it serves alone."""
        state = self._state()
        if state is not None:
            state.begin_shutdown(grace)

    async def check_health(self) -> None:
        """Serve's health probe: each of the app's batchers must be ``ok`` (as the
        app's own ``/health`` judges it); an app of another kind always passes."""
        state = self._state()
        if state is None:
            return
        for engine in (state.language, state.embedder):
            if engine is None:
                continue
            health = engine.batcher.health()
            if not health.ok(stuck_after=state.settings.stuck_after):
                raise ReplicaUnhealthy(f"{engine.name}: {health}")

    def _own_host(self) -> bytes:
        """A host name the app answers (its first allowed one; any when it allows any)."""
        state = self._state()
        hosts = None if state is None else state.allowed_hosts[0]
        name = hosts[0] if hosts else "localhost"
        return (name.replace("*", "replica", 1) if name.startswith("*.") else name).encode()

    def _state(self) -> ServerState | None:
        """The app's `ServerState`, if it is a hibachi app."""
        state: ServerState | None = getattr(getattr(self._app, "state", None), "hibachi", None)
        return state


def _replica_id() -> str:
    """Serve's id of this replica, unique in the cluster (``local`` outside Serve)."""
    from ray import serve

    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (a unit test building one directly)
        return "local"
