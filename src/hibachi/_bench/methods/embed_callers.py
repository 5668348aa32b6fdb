"""Embeddings by concurrent callers, each sending its texts one after the other.

The scaling workload's embedding methods: ``callers`` callers share the
texts, and each awaits one text's embedding before sending its next, through
hibachi (`embedding_curve`) or, as an async server without a batcher must,
one model call per text on one worker thread (`alone_on_worker_curve`, the
event loop must not run a forward itself). Each returns texts per second.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from ..models.minilm import PAD_VALUE, MiniLM
from .embed import feedforward_batcher

__all__ = ["alone_on_worker_curve", "embedding_curve"]


async def embedding_curve(minilm: MiniLM, texts: list[str], callers: int, batch_size: int) -> float:
    """Texts/s when ``callers`` callers share ``texts`` and embed theirs one at a time."""
    batcher_type = feedforward_batcher()
    shares = [texts[i::callers] for i in range(callers)]
    async with batcher_type(minilm, max_batch_size=batch_size, pad_value=PAD_VALUE) as batcher:

        async def caller(mine: list[str]) -> None:
            for text in mine:
                await batcher.run(minilm.tokenize(text))

        await caller(texts[:1])  # the engine thread's first model call pays one-off set-up
        start = time.perf_counter()
        await asyncio.gather(*(caller(mine) for mine in shares))
        seconds = time.perf_counter() - start
    return len(texts) / seconds


async def alone_on_worker_curve(minilm: MiniLM, texts: list[str], callers: int) -> float:
    """Texts/s when ``callers`` callers share ``texts`` and each embeds its own, one call
    per text, on one worker thread (an async server without a batcher: its event loop
    must not run a forward itself)."""
    loop = asyncio.get_running_loop()
    shares = [texts[i::callers] for i in range(callers)]
    with ThreadPoolExecutor(1, thread_name_prefix="one-call-per-text") as worker:

        async def caller(mine: list[str]) -> None:
            for text in mine:
                await loop.run_in_executor(worker, minilm.alone, text)

        await caller(texts[:1])  # the worker thread's first model call, as for hibachi
        start = time.perf_counter()
        await asyncio.gather(*(caller(mine) for mine in shares))
        seconds = time.perf_counter() - start
    return len(texts) / seconds
