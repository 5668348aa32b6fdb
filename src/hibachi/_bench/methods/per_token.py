"""What continuous batching costs per delivered token, next to the floor asyncio sets.

`floor_per_token`: asyncio alone waking ``rows`` waiting tasks once per step.
`autoregressive_per_token`: an `AutoregressiveBatcher` over a model that
reads only the last column, ``rows`` streams of ``steps`` tokens each.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from ..settings import OverheadSize

__all__ = ["autoregressive_per_token", "floor_per_token"]


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
