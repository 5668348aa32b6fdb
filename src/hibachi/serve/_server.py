"""`run`: serve an app with uvicorn, shutting down gracefully on SIGINT / SIGTERM.

The server holds its connections to the app's `ConnectionLimits` (a deadline
on each request head, a cap on open connections: see `_protocol`). Bound to a
loopback address it answers only the loopback host names unless
``allowed_hosts`` says otherwise; bound beyond loopback with no API key, it
warns that anyone who reaches the port may use the models.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import signal
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from ._protocol import guarded_protocol
from ._settings import LOOPBACK_HOSTS, ServeSettings
from ._state import ServerState

logger = logging.getLogger("hibachi.serve")

__all__ = ["GracefulServer", "allowed_hosts", "guarded_options", "run"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulServer(uvicorn.Server):
    """A uvicorn server that, on SIGINT / SIGTERM, first tells the app to drain.

    The app stops admitting at once and ends its generations after its
    ``shutdown_grace``; uvicorn meanwhile stops listening and waits for the
    connections to close.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.state.begin_shutdown()
        super().handle_exit(sig, frame)


def server_for(app: FastAPI, *, host: str, port: int, **uvicorn_options: Any) -> GracefulServer:
    """An unstarted `GracefulServer` for ``app`` (from `create_app`), listening on
    ``host:port``; ``uvicorn_options`` go to ``uvicorn.Config``."""
    state: ServerState = app.state.hibachi
    settings = state.settings
    state.allowed_hosts[0] = allowed_hosts(settings, host)
    options = {**guarded_options(settings), **uvicorn_options}
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", **options)
    return GracefulServer(config, state)


def allowed_hosts(settings: ServeSettings, host: str) -> tuple[str, ...] | None:
    """The host names a server listening on ``host`` answers (None: any); warns when it
    listens beyond loopback with no API key."""
    if not is_loopback(host) and not settings.access.api_keys:
        logger.warning(
            "hibachi serve listens on %s with no API key: anyone who can reach this port "
            "can use its models (--api-key KEY, or HIBACHI_API_KEY)",
            host,
        )
    if settings.access.allowed_hosts is not None:
        return settings.access.allowed_hosts
    return LOOPBACK_HOSTS if is_loopback(host) else None


def guarded_options(settings: ServeSettings) -> dict[str, Any]:
    """``uvicorn.Config``'s options for a server held to ``settings.connections``."""
    limits = settings.connections
    return {
        "http": guarded_protocol(limits),
        "ws": "none",  # no WebSocket is served: an upgrade is a plain request, checked as one
        "timeout_keep_alive": limits.keep_alive_timeout,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace) + 5,
        "server_header": False,
    }


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, **uvicorn_options: Any) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully; returns normally."""
    server = server_for(app, host=host, port=port, **uvicorn_options)
    # uvicorn re-raises the signal it caught once it has shut down: let it land here.
    previous = {sig: signal.signal(sig, _ignore) for sig in _SIGNALS}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(sig: int, frame: FrameType | None) -> None:
    """After uvicorn's own shutdown, its re-raised signal has nothing left to do."""
