"""The Serve deployment of the OpenAI-compatible app: one app per replica.

Each replica calls ``build_app()`` (which loads its models and returns
``hibachi.serve.create_app(...)``); Serve runs the app's lifespan, which opens
and closes the replica's batchers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve

from ...integrations.ray import serve_options
from ._replica import AppReplica

__all__ = ["http_deployment", "scaling_options"]


def http_deployment(build_app: Callable[[], Any], *, max_batch_size: int, **options: Any) -> Any:
    """The Serve application of ``build_app()``'s ASGI app, one per replica.

    It is an ingress deployment (Serve's HTTP proxy can serve it) whose
    replicas also take requests through a handle (``forward``, ``get``,
    ``drain``: see `AppReplica`). ``options``: any ``serve.deployment``
    option, over `serve_options`' defaults.
    """
    ingress = serve.ingress()(AppReplica)
    settings = serve_options(max_batch_size, **options)
    return serve.deployment(ingress, **settings).bind(build_app)


def scaling_options(replicas: int | None, autoscale: tuple[int, int] | None) -> dict[str, Any]:
    """Serve options for ``--replicas N`` or ``--autoscale MIN,MAX``."""
    if autoscale is not None:
        low, high = autoscale
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high}}
    return {"num_replicas": replicas or 1}
