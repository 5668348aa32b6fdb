"""What dynamic batching costs per item, next to the floor asyncio sets and the peers.

Every method serves the same workload: ``callers`` concurrent caller tasks,
each awaiting one result for a small NumPy array, through an identity model
called on batches of at most ``batch_size``. Each caller is a coroutine that
awaits the method's call, so every method pays for the same tasks:

- the floor: a bare hand-written asyncio batcher (queue, stack, call, slice);
- `hibachi.FeedforwardBatcher`, eager (``max_wait=0``);
- ``batched.aio.dynamically`` (mixedbread-ai) and ``async_batcher.AsyncBatcher``,
  each with the wait setting that suits it best (they are measured with each
  of ``PEER_WAITS`` and keep their best).

`measure` interleaves the methods over ``repeat`` rounds and keeps each one's
best, since other work on the machine only ever adds time.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PEER_WAITS",
    "Overhead",
    "async_batcher_per_item",
    "batched_per_item",
    "floor_per_item",
    "hibachi_per_item",
    "measure",
]

PEER_WAITS = (0.0, 0.001)
"""Wait windows (seconds) the peers are tried with; each keeps its best."""

Call = Callable[[Any], Awaitable[Any]]


def identity(batch: Any) -> Any:
    """The model: costs nothing, so only the batching machinery is measured."""
    return batch


def _identity_list(items: list[Any]) -> list[Any]:
    """The identity model for peers that batch Python lists: stack, call, slice."""
    return list(identity(np.stack(items)))


async def _per_item(call: Call, callers: int) -> float:
    """Seconds per item for ``callers`` concurrent caller tasks of ``call``."""
    items = [np.full(4, i, dtype=np.float32) for i in range(callers)]

    async def caller(x: Any) -> Any:
        return await call(x)

    gc.collect()
    start = time.perf_counter()
    results = await asyncio.gather(*(caller(x) for x in items))
    seconds = time.perf_counter() - start
    if not all(result[0] == x[0] for result, x in zip(results, items, strict=True)):
        raise AssertionError("a caller got another caller's result")
    return seconds / callers


async def floor_per_item(callers: int, batch_size: int) -> float:
    """Seconds per item through the least an asyncio batcher does: queue, stack, call, slice."""
    loop = asyncio.get_running_loop()
    queue: deque[tuple[Any, asyncio.Future[Any]]] = deque()
    wake = asyncio.Event()

    async def worker() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while queue:
                batch = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
                out = identity(np.stack([x for x, _ in batch]))
                for (_, future), y in zip(batch, out, strict=True):
                    if not future.done():
                        future.set_result(y)
                await asyncio.sleep(0)

    async def call(x: Any) -> Any:
        future = loop.create_future()
        queue.append((x, future))
        wake.set()
        return await future

    task = asyncio.create_task(worker())
    try:
        return await _per_item(call, callers)
    finally:
        task.cancel()


async def hibachi_per_item(callers: int, batch_size: int) -> float:
    """Seconds per item through `hibachi.FeedforwardBatcher` (eager; room for every caller)."""
    import hibachi

    batcher = hibachi.FeedforwardBatcher(
        identity, max_batch_size=batch_size, max_queue_size=max(callers, 1)
    )
    async with batcher:
        return await _per_item(batcher.run, callers)


async def batched_per_item(callers: int, batch_size: int, wait: float) -> float:
    """Seconds per item through ``batched.aio.dynamically`` polling every ``wait`` seconds."""
    from batched import aio  # type: ignore[import-untyped]

    call = aio.dynamically(_identity_list, batch_size=batch_size, timeout_ms=wait * 1000)
    return await _per_item(call, callers)


async def async_batcher_per_item(callers: int, batch_size: int, wait: float) -> float:
    """Seconds per item through ``async_batcher.AsyncBatcher`` with ``max_queue_time=wait``."""
    from async_batcher.batcher import AsyncBatcher  # type: ignore[import-untyped]

    class Identity(AsyncBatcher):  # type: ignore[misc]
        async def process_batch(self, batch: list[Any]) -> list[Any]:
            return _identity_list(batch)

    batcher = Identity(max_batch_size=batch_size, max_queue_time=wait)
    try:
        return await _per_item(batcher.process, callers)
    finally:
        await batcher.stop(force=True)


@dataclass(frozen=True)
class Overhead:
    """Best seconds per item of each method (None: not installed), and the targets' verdicts."""

    floor: float
    hibachi: float
    batched: float | None
    async_batcher: float | None

    @property
    def best_peer(self) -> float | None:
        peers = [s for s in (self.batched, self.async_batcher) if s is not None]
        return min(peers) if peers else None

    @property
    def ratio_to_floor(self) -> float:
        return self.hibachi / self.floor

    @property
    def added_vs_best_peer(self) -> float | None:
        """How many times less than the better peer hibachi adds above the floor."""
        peer = self.best_peer
        if peer is None:
            return None
        return (peer - self.floor) / max(self.hibachi - self.floor, 1e-9)


def measure(callers: int = 20_000, batch_size: int = 64, repeat: int = 5) -> Overhead:
    """Run every method ``repeat`` times, interleaved, and keep each one's best."""
    methods: dict[str, list[Callable[[], Awaitable[float]]]] = {
        "floor": [lambda: floor_per_item(callers, batch_size)],
        "hibachi": [lambda: hibachi_per_item(callers, batch_size)],
        "batched": [_bind(batched_per_item, callers, batch_size, w) for w in PEER_WAITS],
        "async_batcher": [
            _bind(async_batcher_per_item, callers, batch_size, w) for w in PEER_WAITS
        ],
    }
    best: dict[str, float | None] = dict.fromkeys(methods)
    for _ in range(repeat):
        for name, runs in methods.items():
            for run in runs:
                seconds = _run_if_installed(run)
                current = best[name]
                if seconds is not None and (current is None or seconds < current):
                    best[name] = seconds
    floor, hibachi = best["floor"], best["hibachi"]
    assert floor is not None and hibachi is not None
    return Overhead(floor, hibachi, best["batched"], best["async_batcher"])


def _bind(
    function: Callable[[int, int, float], Awaitable[float]], callers: int, size: int, wait: float
) -> Callable[[], Awaitable[float]]:
    return lambda: function(callers, size, wait)


def _run_if_installed(run: Callable[[], Awaitable[float]]) -> float | None:
    try:
        return asyncio.run(run())  # type: ignore[arg-type]
    except ImportError:
        return None
