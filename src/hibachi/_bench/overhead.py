"""Workload 3, overhead: no-op models, so that only the batching machinery costs.

Autoregressive: the cost per delivered token with ``rows`` streams, against
asyncio alone waking ``rows`` consumer tasks once per step (the floor).
Feedforward: the cost per item with an identity model and ``callers``
concurrent callers in batches of ``batch_size``, against a bare hand-written
asyncio batcher (the floor) and the peer libraries ``batched`` and
``async-batcher``. Each figure is the best of up to ``repeat`` runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np

from .progress import Progress
from .results import Column, Section
from .settings import BenchSettings, OverheadSize
from .timing import best_of

__all__ = [
    "async_batcher_per_item",
    "autoregressive_per_token",
    "batched_per_item",
    "feedforward_per_item",
    "floor_per_item",
    "floor_per_token",
    "measure",
]

COLUMNS = [
    Column("per", "per", "{}"),
    Column("us", "µs", "{:,.2f}"),
    Column("x_floor", "x floor", "{:.2f}x"),
    Column("above_floor_us", "+µs", "{:,.2f}"),
]
PEERS_HINT = "pip install 'hibachi-batch[peers]'"
ITEM = np.arange(4, dtype=np.float32)


class Unavailable(RuntimeError):
    """A method that cannot run with what is installed; the message says what to install."""


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.overhead
    progress.begin("overhead", 6)
    title = "Overhead: no-op models"
    section = Section("overhead", title, COLUMNS, settings=size.__dict__.copy())
    for per, methods in (("token", _token_methods(size)), ("item", _item_methods(size))):
        _group(section, progress, per, methods, settings)
    section.notes += [
        f"per token: {size.rows} streams of {size.steps} tokens; the floor is asyncio waking "
        f"{size.rows} waiting tasks once per step.",
        f"per item: {size.callers:,} concurrent callers, batches of {size.batch_size}; the floor "
        "is a bare asyncio batcher (queue, stack, call, slice); batched and async-batcher wait "
        "at most 1 ms.",
        "+µs: what the method adds above its floor.",
    ]
    return section


Method = tuple[str, Callable[[], Coroutine[Any, Any, float]]]


def _token_methods(size: OverheadSize) -> list[Method]:
    return [
        ("asyncio floor (wake tasks)", lambda: floor_per_token(size)),
        ("hibachi AutoregressiveBatcher", lambda: autoregressive_per_token(size)),
    ]


def _item_methods(size: OverheadSize) -> list[Method]:
    return [
        ("asyncio floor (bare batcher)", lambda: floor_per_item(size)),
        ("hibachi FeedforwardBatcher", lambda: feedforward_per_item(size)),
        ("batched", lambda: batched_per_item(size)),
        ("async-batcher", lambda: async_batcher_per_item(size)),
    ]


def _group(
    section: Section, progress: Progress, per: str, methods: list[Method], settings: BenchSettings
) -> None:
    """Measure ``methods``; the first is the floor the others are compared with."""
    floor: float | None = None
    for name, run in methods:
        progress.doing(name)
        try:
            seconds = _best_seconds(run, settings)
        except Unavailable as exc:
            section.skip(name, str(exc))
            continue
        except Exception as exc:
            section.fail(name, exc)
            continue
        floor = seconds if floor is None else floor
        section.add(
            name,
            per=per,
            us=seconds * 1e6,
            x_floor=seconds / floor,
            above_floor_us=(seconds - floor) * 1e6,
        )


def _best_seconds(run: Callable[[], Coroutine[Any, Any, float]], settings: BenchSettings) -> float:
    def once() -> float:
        return asyncio.run(run())

    return best_of(once, _faster, settings.overhead.repeat, settings.repeat_within)


def _faster(seconds: float) -> float:
    return -seconds


# -- per token ------------------------------------------------------------------------


async def floor_per_token(size: OverheadSize) -> float:
    """Seconds per token when a producer wakes ``rows`` waiting tasks once per step."""
    loop = asyncio.get_running_loop()
    waiters = [loop.create_future() for _ in range(size.rows)]

    async def consumer(i: int) -> None:
        for _ in range(size.steps):
            await waiters[i]
            waiters[i] = loop.create_future()

    tasks = [asyncio.create_task(consumer(i)) for i in range(size.rows)]
    await asyncio.sleep(0)
    start = time.perf_counter()
    for step in range(size.steps):
        for waiter in waiters:
            waiter.set_result(step)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return (time.perf_counter() - start) / (size.steps * size.rows)


def _last_column(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


async def autoregressive_per_token(size: OverheadSize) -> float:
    """Seconds per delivered token with ``rows`` streams of ``steps`` tokens each."""
    import hibachi

    batcher = hibachi.AutoregressiveBatcher(
        _last_column,
        stop_token=np.int64(-1),
        padding_token=np.int64(0),
        max_batch_size=size.rows,
    )
    prompt = np.arange(1, 17, dtype=np.int64)
    async with batcher:

        async def consume() -> None:
            async for _ in batcher.run(prompt, max_new_tokens=size.steps):
                pass

        start = time.perf_counter()
        await asyncio.gather(*(consume() for _ in range(size.rows)))
        seconds = time.perf_counter() - start
    return seconds / (size.steps * size.rows)


# -- per item -------------------------------------------------------------------------


def _identity(batch: Any) -> Any:
    return batch


def _identity_list(items: list[Any]) -> list[Any]:
    return list(np.stack(items))


async def _per_item(call: Callable[[Any], Awaitable[Any]], callers: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(call(ITEM) for _ in range(callers)))
    return (time.perf_counter() - start) / callers


async def floor_per_item(size: OverheadSize) -> float:
    """Seconds per item through the least an asyncio batcher can do: queue, stack, call, slice."""
    loop = asyncio.get_running_loop()
    queue: deque[tuple[Any, asyncio.Future[Any]]] = deque()
    wake = asyncio.Event()

    async def worker() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while queue:
                batch = [queue.popleft() for _ in range(min(size.batch_size, len(queue)))]
                out = _identity(np.stack([x for x, _ in batch]))
                for (_, future), y in zip(batch, out, strict=True):
                    future.set_result(y)
                await asyncio.sleep(0)

    async def call(x: Any) -> Any:
        future = loop.create_future()
        queue.append((x, future))
        wake.set()
        return await future

    task = asyncio.create_task(worker())
    try:
        return await _per_item(call, size.callers)
    finally:
        task.cancel()


async def feedforward_per_item(size: OverheadSize) -> float:
    """Seconds per item through `hibachi.FeedforwardBatcher`."""
    import hibachi

    batcher_type = getattr(hibachi, "FeedforwardBatcher", None)
    if batcher_type is None:
        raise Unavailable("hibachi.FeedforwardBatcher is not in this version of hibachi")
    batcher = batcher_type(_identity, max_batch_size=size.batch_size, max_queue_size=size.callers)
    async with batcher:
        return await _per_item(batcher.run, size.callers)


async def batched_per_item(size: OverheadSize) -> float:
    """Seconds per item through mixedbread-ai's ``batched.aio.dynamically``."""
    try:
        from batched import aio  # type: ignore[import-untyped]
    except ImportError as exc:
        raise Unavailable(f"batched is not installed: {PEERS_HINT}") from exc
    call = aio.dynamically(_identity_list, batch_size=size.batch_size, timeout_ms=1.0)
    return await _per_item(call, size.callers)


async def async_batcher_per_item(size: OverheadSize) -> float:
    """Seconds per item through ``async_batcher.AsyncBatcher``."""
    try:
        from async_batcher.batcher import AsyncBatcher  # type: ignore[import-untyped]
    except ImportError as exc:
        raise Unavailable(f"async-batcher is not installed: {PEERS_HINT}") from exc

    class Identity(AsyncBatcher):  # type: ignore[misc]
        def process_batch(self, batch: list[Any]) -> list[Any]:
            return _identity_list(batch)

    batcher = Identity(max_batch_size=size.batch_size, max_queue_time=0.001)
    try:
        return await _per_item(batcher.process, size.callers)
    finally:
        await batcher.stop(force=True)
