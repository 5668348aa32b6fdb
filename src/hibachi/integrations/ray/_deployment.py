"""`deployment` and `serve_options`: a batcher as a Ray Serve application."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from ..._core.values import describe_value
from ..._exceptions import ConfigurationError
from ._replica import Batcher, BatcherReplica
from ._router import FewestInFlightRouter

__all__ = ["deployment", "serve_options"]

DEFAULT_STUCK_AFTER = 60.0


def deployment(
    make_batcher: Callable[[], Batcher],
    *,
    max_batch_size: int | None = None,
    stuck_after: float = DEFAULT_STUCK_AFTER,
    **options: Any,
) -> Any:
    """The Serve application of a deployment whose replicas each own one batcher.

    Args:
        make_batcher: called with no arguments once in each replica, returns
            an unopened `AutoregressiveBatcher` or `FeedforwardBatcher`. It
            is pickled to the replicas (cloudpickle).
        max_batch_size: the batcher's, to size Serve's defaults. When None,
            ``make_batcher()`` is called once here to read it (the batcher is
            never opened); pass it to avoid building a model in the driver.
        stuck_after: a replica whose model call has run this many seconds
            fails its health check, and Serve replaces it.
        **options: any option of ``serve.deployment`` (``num_replicas``,
            ``ray_actor_options``, ``autoscaling_config``,
            ``graceful_shutdown_timeout_s`` …); they override the defaults of
            `serve_options`.

    Returns the bound application, for ``serve.run``.
    """
    if max_batch_size is None:
        max_batch_size = make_batcher().max_batch_size
    settings = serve_options(max_batch_size, **options)
    replica = serve.deployment(BatcherReplica, **settings)
    return replica.bind(make_batcher, stuck_after)


def serve_options(max_batch_size: int, **options: Any) -> dict[str, Any]:
    """Serve's deployment options for a batcher of ``max_batch_size``, ``options`` on top.

    - ``name``: ``"hibachi"``.
    - ``max_ongoing_requests``: ``2 * max_batch_size``: a full batch in the
      model and as many waiting to take the rows they free. Serve holds the
      rest at the caller, which then goes to the least busy replica.
    - ``request_router_config``: `FewestInFlightRouter`: each request goes to
      the replica with the fewest requests in flight, wherever it runs, so a
      burst of ``replicas * max_batch_size`` requests fills every batch.
    - ``autoscaling_config`` (a dict, or ``num_replicas="auto"``): its
      ``target_ongoing_requests`` defaults to ``max_batch_size``: a replica
      is at target when its batch is full.
    """
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
        raise ConfigurationError(
            f"max_batch_size must be an int, got {describe_value(max_batch_size)}"
        )
    if max_batch_size < 1:
        raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
    settings: dict[str, Any] = {
        "name": "hibachi",
        "max_ongoing_requests": 2 * max_batch_size,
        "request_router_config": RequestRouterConfig(request_router_class=FewestInFlightRouter),
    }
    settings.update(options)
    scaling = settings.get("autoscaling_config")
    if scaling is None and settings.get("num_replicas") == "auto":
        scaling = {}
    if isinstance(scaling, dict):
        settings["autoscaling_config"] = {"target_ongoing_requests": max_batch_size, **scaling}
    return settings
