"""The OpenAI-compatible app of `hibachi.serve` behind Ray Serve's HTTP ingress.

Each replica calls ``build_app()`` (which loads its models and returns
``hibachi.serve.create_app(...)``); Serve runs the app's lifespan, which opens
and closes the replica's batchers, and its proxy sends each HTTP request to
one replica.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from ..integrations.ray import ReplicaUnhealthy
from ..integrations.ray._deployment import serve_options

__all__ = ["http_deployment", "serve_over_ray"]


class _AppReplica:
    """A Serve ingress replica whose ASGI app ``build_app()`` makes, in the replica."""

    def __init__(self, build_app: Callable[[], Any]) -> None:
        self._build_app = build_app
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        self._app = self._build_app()
        return self._app

    async def check_health(self) -> None:
        """Serve's health probe: each of the app's batchers must be ``ok`` (as the
        app's own ``/health`` judges it); an app of another kind always passes."""
        state = getattr(getattr(self._app, "state", None), "hibachi", None)
        if state is None:
            return
        for engine in (state.language, state.embedder):
            if engine is None:
                continue
            health = engine.batcher.health()
            if not health.ok(stuck_after=state.settings.stuck_after):
                raise ReplicaUnhealthy(f"{engine.name}: {health}")


def http_deployment(build_app: Callable[[], Any], *, max_batch_size: int, **options: Any) -> Any:
    """The Serve application of ``build_app()``'s ASGI app, one per replica.

    ``options``: any ``serve.deployment`` option, over `serve_options`' defaults.
    """
    ingress = serve.ingress()(_AppReplica)
    settings = serve_options(max_batch_size, **options)
    return serve.deployment(ingress, **settings).bind(build_app)


def scaling_options(replicas: int | None, autoscale: tuple[int, int] | None) -> dict[str, Any]:
    """Serve options for ``--replicas N`` or ``--autoscale MIN,MAX``."""
    if autoscale is not None:
        low, high = autoscale
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high}}
    return {"num_replicas": replicas or 1}


def serve_over_ray(
    build_app: Callable[[], Any],
    *,
    max_batch_size: int,
    host: str,
    port: int,
    address: str | None,
    **options: Any,
) -> None:
    """Join (``address``) or start a Ray cluster, serve the app on ``host:port``
    through Serve's HTTP proxy until SIGINT or SIGTERM, then shut Serve down."""
    ray.init(address=address, include_dashboard=False if address is None else None)
    try:
        serve.start(http_options={"host": host, "port": port})
        app = http_deployment(build_app, max_batch_size=max_batch_size, **options)
        serve.run(app, name="hibachi", route_prefix="/")
        _wait_for_signal()
    finally:
        serve.shutdown()
        ray.shutdown()


def _wait_for_signal() -> None:
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
