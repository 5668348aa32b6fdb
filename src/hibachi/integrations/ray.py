"""Scale a hibachi batcher out on Ray Serve: one batcher per replica, many replicas.

Importing this module imports Ray (the ``hibachi-batch[ray]`` extra);
``import hibachi`` never does::

    from ray import serve
    from hibachi.integrations.ray import deployment

    app = deployment(make_batcher, num_replicas=2)   # make_batcher() -> an unopened batcher
    handle = serve.run(app)
    async for token in handle.options(stream=True).run.remote(prompt, max_new_tokens=32):
        ...                                           # autoregressive
    vector = await handle.run.remote(x)               # feedforward

Each replica calls ``make_batcher()`` once, in its constructor, on its own
event loop, and opens the batcher there. ``run`` takes the arguments of the
batcher's ``run``. Errors keep their hibachi types across the process
boundary: Ray raises an exception that is both a ``ray.exceptions.RayTaskError``
and the replica's `InvalidRequest`, `QueueFull`, `Timeout`, `ModelError` …,
so ``except hibachi.InvalidRequest`` works in the caller (the model's own
exception, chained in the replica, reaches the caller only as text in the
message).

A request is cancelled in the replica, its row freed at the batcher's next
step, only by the response's ``cancel()``: leaving an ``async for`` over a
raw Serve response early, or cancelling the task that awaits it, does not
cancel it (Ray 2.60). `stream` and `call` send a request the same way and
also cancel it then::

    async for token in stream(handle, prompt, max_new_tokens=32): ...
    vector = await call(handle, x)

``handle.stats.remote()`` returns one replica's `ReplicaStats`. See docs/scaling.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve

from .._core.values import describe_value
from .._exceptions import ConfigurationError
from ._ray_client import RemoteStream, call, stream
from ._ray_replica import Batcher, BatcherReplica, ReplicaStats, ReplicaUnhealthy

__all__ = [
    "RemoteStream",
    "ReplicaStats",
    "ReplicaUnhealthy",
    "call",
    "deployment",
    "serve_options",
    "stream",
]

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
    settings: dict[str, Any] = {"name": "hibachi", "max_ongoing_requests": 2 * max_batch_size}
    settings.update(options)
    scaling = settings.get("autoscaling_config")
    if scaling is None and settings.get("num_replicas") == "auto":
        scaling = {}
    if isinstance(scaling, dict):
        settings["autoscaling_config"] = {"target_ongoing_requests": max_batch_size, **scaling}
    return settings
