"""`BatcherReplica`: the Ray Serve deployment class, one hibachi batcher per replica.

Serve builds one instance per replica (an actor process), in that replica's
user event loop, and calls its methods there; every method here is ``async``,
so the batcher's streams and handles belong to that one loop. Serve itself waits
for the requests in flight before it calls ``__del__`` on shutdown, and kills
the actor ``graceful_shutdown_timeout_s`` after asking it to stop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..._autoregressive.batcher import AutoregressiveBatcher
from ..._autoregressive.stats import AutoregressiveStats
from ..._autoregressive.stream import TokenStream
from ..._core.health import Health
from ..._exceptions import ConfigurationError
from ..._feedforward.batcher import FeedforwardBatcher
from ..._feedforward.stats import FeedforwardStats
from ._errors import ReplicaUnhealthy

__all__ = ["BatcherReplica", "ReplicaStats"]

Batcher = AutoregressiveBatcher | FeedforwardBatcher


@dataclass(frozen=True)
class ReplicaStats:
    """What one replica reports from ``handle.stats.remote()``.

    ``replica`` names the replica (Serve's replica id, unique in the
    cluster); ``batcher`` is its batcher's own ``stats()`` snapshot and
    ``health`` its ``health()``.
    """

    replica: str
    batcher: AutoregressiveStats | FeedforwardStats
    health: Health


class BatcherReplica:
    """One Serve replica: builds, opens, serves and closes one hibachi batcher."""

    def __init__(self, make_batcher: Callable[[], Batcher], stuck_after: float) -> None:
        batcher = make_batcher()
        if not isinstance(batcher, AutoregressiveBatcher | FeedforwardBatcher):
            raise ConfigurationError(
                "make_batcher() must return a hibachi AutoregressiveBatcher or "
                f"FeedforwardBatcher, got {type(batcher).__name__}"
            )
        batcher.start()
        self._batcher: Batcher = batcher
        self._stuck_after = stuck_after
        self._replica = _replica_id()

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        """``batcher.run(*args, **kwargs)`` in this replica.

        Autoregressive: returns the async generator of the tokens (Serve
        streams it; call with ``handle.options(stream=True)``). Submission
        errors (`InvalidRequest`, `QueueFull`) are raised before the first
        token. Feedforward: the result itself.
        """
        batcher = self._batcher
        if isinstance(batcher, AutoregressiveBatcher):
            return _tokens(batcher.run(*args, **kwargs))
        return await batcher.run(*args, **kwargs)

    async def check_health(self) -> None:
        """Serve's health probe: raise when the batcher is closed, its engine
        died, or a model call has run longer than ``stuck_after`` seconds."""
        health = self._batcher.health()
        if not health.ok(stuck_after=self._stuck_after):
            raise ReplicaUnhealthy(f"replica {self._replica}: {health}")

    async def stats(self) -> ReplicaStats:
        """This replica's id, its batcher's counters and health."""
        return ReplicaStats(self._replica, self._batcher.stats(), self._batcher.health())

    def __del__(self) -> None:
        # Serve calls this once it has drained the replica's requests (it waits
        # for them, up to graceful_shutdown_timeout_s); closing then drains
        # whatever the batcher still holds. Also reached by garbage collection,
        # possibly of a half-built instance.
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.close()


async def _tokens(stream: TokenStream) -> AsyncIterator[Any]:
    """The stream's tokens; a cancelled consumer (Serve cancels this generator's
    task when its caller goes away) cancels the stream, freeing its row."""
    try:
        async for token in stream:
            yield token
    finally:
        stream.cancel()


def _replica_id() -> str:
    from ray import serve

    try:
        return str(serve.get_replica_context().replica_id)
    except Exception:  # outside a replica (a unit test building one directly)
        return "local"
