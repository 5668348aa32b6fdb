"""`serve_over_ray`: ``hibachi serve --replicas``, from joining the cluster to exiting.

Join (or start) the cluster, deploy one app per replica, serve the `Front`
on ``host:port`` until SIGINT or SIGTERM, drain, then remove what was
deployed: the application, and Serve itself when this process started it.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import ray
import uvicorn
from ray import serve

from ...integrations.ray import connect
from .._server import guarded_options
from .._settings import ServeSettings
from ._deployment import http_deployment
from ._fleet import Fleet
from ._front import BACKSTOP_S, Front

__all__ = ["APP", "serve_over_ray"]

logger = logging.getLogger("hibachi.serve")

APP = "hibachi"  # the Serve application, and its one deployment
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve_over_ray(
    build_app: Callable[[], Any],
    *,
    max_batch_size: int,
    host: str,
    port: int,
    address: str | None,
    shutdown_grace: float = 10.0,
    settings: ServeSettings | None = None,
    **options: Any,
) -> None:
    """Serve ``build_app()``'s app from replicas on Ray until SIGINT or SIGTERM.

    ``address``: the cluster to join (`connect`), or None for a local one.
    ``settings``: the server's, whose connection limits the front holds its
    connections to (the replicas' apps check the rest: hosts, keys, bodies).
    ``options``: ``serve.deployment`` options (``num_replicas``, ...).
    Returns once drained and cleaned up.
    """
    connect(address, **({"include_dashboard": False} if address is None else {}))
    owns_serve = False
    try:
        owns_serve = _start_serve()
        app = http_deployment(build_app, max_batch_size=max_batch_size, name=APP, **options)
        handle = serve.run(app, name=APP, route_prefix=None)
        front = Front(handle, Fleet(handle, APP, APP), grace=shutdown_grace)
        _run_front(front, host=host, port=port, settings=settings or ServeSettings())
    finally:
        _clean_up(owns_serve)


class FrontServer(uvicorn.Server):
    """A uvicorn server that, on SIGINT / SIGTERM, first tells the front to drain."""

    def __init__(self, config: uvicorn.Config, front: Front) -> None:
        super().__init__(config)
        self.front = front

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.front.begin_shutdown()
        super().handle_exit(sig, frame)


def _run_front(front: Front, *, host: str, port: int, settings: ServeSettings) -> None:
    options = guarded_options(settings)  # the same connection limits as one process
    options["timeout_graceful_shutdown"] = math.ceil(front.grace + BACKSTOP_S) + 5
    config = uvicorn.Config(front, host=host, port=port, lifespan="on", **options)
    # uvicorn re-raises the signal it caught once it has shut down: let it land here.
    previous = {sig: signal.signal(sig, _ignore) for sig in _SIGNALS}
    try:
        FrontServer(config, front).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_serve() -> bool:
    """Start Serve without HTTP proxies (the front is the proxy); True when this
    process started it (no other application runs there)."""
    serve.start(proxy_location="Disabled")
    return not any(name != APP for name in serve.status().applications)


def _clean_up(owns_serve: bool) -> None:
    if ray.is_initialized():
        try:
            if owns_serve:
                serve.shutdown()
            else:
                serve.delete(APP)
        except Exception:  # Serve never started, or the cluster is gone
            logger.exception("removing the Serve application failed")
    ray.shutdown()


def _ignore(sig: int, frame: FrameType | None) -> None:
    """After uvicorn's own shutdown, its re-raised signal has nothing left to do."""
