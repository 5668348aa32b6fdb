"""Workload 3, overhead: no-op models, so that only the batching machinery costs.

Autoregressive: the cost per delivered token with ``rows`` streams, against
asyncio alone waking ``rows`` consumer tasks once per step (the floor); the
best of up to ``repeat`` runs. Feedforward: the cost per item with an
identity model and ``callers`` concurrent callers in batches of
``batch_size``, against a bare hand-written asyncio batcher (the floor) and
the peer libraries ``batched`` and ``async-batcher``, measured by
`feedforward_overhead` (``repeat`` interleaved rounds, each method's best).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from . import feedforward_overhead
from .progress import Progress
from .results import Column, Section
from .settings import BenchSettings, OverheadSize
from .timing import best_of, run_async

__all__ = ["autoregressive_per_token", "floor_per_token", "measure"]

COLUMNS = [
    Column("per", "per", "{}"),
    Column("us", "µs", "{:,.2f}"),
    Column("x_floor", "x floor", "{:.2f}x"),
    Column("above_floor_us", "+µs", "{:,.2f}"),
]
PEERS_HINT = "pip install 'hibachi-batch[peers]'"
TOKEN_FLOOR = "asyncio floor (wake tasks)"
ITEM_FLOOR = "asyncio floor (bare batcher)"


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.overhead
    progress.begin("overhead", 3)
    section = Section("overhead", "Overhead: no-op models", COLUMNS, settings=vars(size).copy())
    _per_token(section, progress, settings)
    progress.doing("per item: floor, hibachi, batched, async-batcher")
    try:
        _per_item(section, size)
    except Exception as exc:
        section.fail("hibachi FeedforwardBatcher", exc)
    section.notes += [
        f"per token: {size.rows} streams of {size.steps} tokens; the floor is asyncio waking "
        f"{size.rows} waiting tasks once per step.",
        f"per item: {size.callers:,} concurrent callers, batches of {size.batch_size}; the floor "
        "is a bare asyncio batcher (queue, stack, call, slice); every method runs in fresh "
        "processes; each peer keeps the better of its wait settings "
        f"({', '.join(f'{w * 1e3:g} ms' for w in feedforward_overhead.PEER_WAITS)}); "
        "hibachi always runs the model off the event loop, as async-batcher does with its "
        "model in its executor.",
        "+µs: what the method adds above its floor.",
    ]
    return section


def _add(section: Section, name: str, per: str, seconds: float, floor: float) -> None:
    section.add(
        name,
        per=per,
        us=seconds * 1e6,
        x_floor=seconds / floor,
        above_floor_us=(seconds - floor) * 1e6,
    )


def _per_token(section: Section, progress: Progress, settings: BenchSettings) -> None:
    size = settings.overhead

    def best(run: Callable[[OverheadSize], Coroutine[Any, Any, float]]) -> float:
        return best_of(lambda: run_async(run(size)), _faster, size.repeat, settings.repeat_within)

    progress.doing("per token: asyncio floor")
    floor = best(floor_per_token)
    _add(section, TOKEN_FLOOR, "token", floor, floor)
    progress.doing("per token: hibachi")
    name = "hibachi AutoregressiveBatcher"
    try:
        _add(section, name, "token", best(autoregressive_per_token), floor)
    except Exception as exc:
        section.fail(name, exc)


def _per_item(section: Section, size: OverheadSize) -> None:
    result = feedforward_overhead.measure(size.callers, size.batch_size, size.repeat)
    _add(section, ITEM_FLOOR, "item", result.floor, result.floor)
    _add(section, "hibachi FeedforwardBatcher", "item", result.hibachi, result.floor)
    peers = [
        ("batched", "batched", result.batched),
        ("async-batcher", "async-batcher", result.async_batcher),
        ("async-batcher, model in executor", "async-batcher", result.async_batcher_off_loop),
    ]
    for name, library, seconds in peers:
        if seconds is None:
            section.skip(name, f"{library} is not installed: {PEERS_HINT}")
        else:
            _add(section, name, "item", seconds, result.floor)


def _faster(seconds: float) -> float:
    return -seconds


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


async def autoregressive_per_token(size: OverheadSize, prompt_len: int = 16) -> float:
    """Seconds per delivered token with ``rows`` streams of ``steps`` tokens each."""
    import hibachi

    batcher = hibachi.AutoregressiveBatcher(
        _last_column,
        stop_token=np.int64(-1),
        pad_value=np.int64(0),
        max_batch_size=size.rows,
    )
    prompt = np.arange(prompt_len, dtype=np.int64) % 1000 + 1
    async with batcher:

        async def consume() -> None:
            async for _ in batcher.run(prompt, max_new_tokens=size.steps):
                pass

        start = time.perf_counter()
        await asyncio.gather(*(consume() for _ in range(size.rows)))
        seconds = time.perf_counter() - start
    return seconds / (size.steps * size.rows)
