"""Scale a hibachi batcher out on Ray Serve: one batcher per replica, many replicas.

Importing this module imports Ray (the ``hibachi-batch[ray]`` extra);
``import hibachi`` never does::

    from ray import serve
    from hibachi.integrations.ray import connect, deployment

    connect("HEAD:6379")                           # or connect() for a local cluster
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

`connect` joins a cluster with Ray's token authentication, as ``ray start``
does. Each request goes to the replica with the fewest in flight
(`FewestInFlightRouter`). A stream whose replica dies (its process, or its
node) raises `ReplicaLost`. ``handle.stats.remote()`` returns one replica's
`ReplicaStats`. See docs/scaling.md.
"""

from __future__ import annotations

from ._client import RemoteStream as RemoteStream
from ._client import call as call
from ._client import stream as stream
from ._connect import connect as connect
from ._deployment import deployment as deployment
from ._deployment import serve_options as serve_options
from ._errors import ClusterUnreachable as ClusterUnreachable
from ._errors import ReplicaLost as ReplicaLost
from ._errors import ReplicaUnhealthy as ReplicaUnhealthy
from ._replica import ReplicaStats as ReplicaStats
from ._router import FewestInFlightRouter as FewestInFlightRouter

__all__ = [
    "ClusterUnreachable",
    "FewestInFlightRouter",
    "RemoteStream",
    "ReplicaLost",
    "ReplicaStats",
    "ReplicaUnhealthy",
    "call",
    "connect",
    "deployment",
    "serve_options",
    "stream",
]
