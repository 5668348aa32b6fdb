"""`run`: serve an app with uvicorn, shutting down gracefully on SIGINT / SIGTERM."""

from __future__ import annotations

import math
import signal
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from ._state import ServerState

__all__ = ["GracefulServer", "run"]

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
    """An unstarted `GracefulServer` for ``app`` (from `create_app`)."""
    state: ServerState = app.state.hibachi
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(state.settings.shutdown_grace) + 5,
        **uvicorn_options,
    )
    return GracefulServer(config, state)


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
