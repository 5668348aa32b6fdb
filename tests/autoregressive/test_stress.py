"""Stress: 1,000 concurrent streams checked token by token; memory over 100,000 requests."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
from typing import Any

import numpy as np
import pytest

import hibachi
from support.models import POISON, TIMEOUT, as_lists, run_async, tagged_expected, tagged_prompt
from support.models import tagging_model as model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaked_engines")]

STOP = np.array([-1, -1], dtype=np.int64)
PAD = np.zeros(2, dtype=np.int64)


def tagging_batcher(**options: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(model, stop_token=STOP, pad_value=PAD, **options)


async def one_stream(
    batcher: hibachi.AutoregressiveBatcher, tag: int, rng: random.Random
) -> tuple[list[Any], list[Any]]:
    """Run request ``tag``; returns (tokens received, tokens expected)."""
    length, budget = rng.randint(1, 8), rng.randint(1, 40)
    full = tagged_expected(tag, length, budget)
    how = rng.choice(["whole"] * 6 + ["break", "cancel", "queued", "task"])
    cut = rng.randint(1, budget)
    for _ in range(rng.randint(0, 3)):  # spread the arrivals over a few loop turns
        await asyncio.sleep(0)
    stream = batcher.run(tagged_prompt(tag, length), max_new_tokens=budget)
    got: list[Any] = []
    if how == "queued":
        stream.cancel()
        return got, []
    if how == "task":
        task = asyncio.create_task(stream.collect())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got, []
    async for token in stream:
        got.append(token)
        if how == "break" and len(got) == cut:
            break
        if how == "cancel" and len(got) == cut:
            stream.cancel()
    return as_lists(got), full if how == "whole" else full[:cut]


def test_1000_concurrent_streams_with_random_cancellations() -> None:
    rng = random.Random(20240601)
    batcher = tagging_batcher(max_batch_size=64, max_queue_size=None)

    async def main() -> list[tuple[list[Any], list[Any]]]:
        async with batcher:
            return await asyncio.gather(
                *(one_stream(batcher, tag, random.Random(rng.random())) for tag in range(1, 1001))
            )

    results = run_async(main(), timeout=60)
    for tag, (got, want) in enumerate(results, start=1):
        assert got == want, f"stream {tag} differs"
        assert all(token[1] != POISON for token in got)
    stats = batcher.stats()
    assert stats.requests_completed + stats.requests_cancelled == 1000
    assert stats.requests_failed == 0
    assert stats.mean_batch_fill > 0.5, "the streams were hardly batched"


def test_many_threads_with_random_cancellations() -> None:
    failures: list[str] = []

    def caller(batcher: hibachi.AutoregressiveBatcher, first: int) -> None:
        rng = random.Random(first)
        for tag in range(first, first + 40):
            length, budget = rng.randint(1, 6), rng.randint(1, 25)
            cut = rng.randint(1, budget) if rng.random() < 0.3 else budget
            got: list[Any] = []
            for token in batcher.run(tagged_prompt(tag, length), max_new_tokens=budget):
                got.append(token.tolist())
                if len(got) == cut:
                    break
            if got != tagged_expected(tag, length, budget)[:cut]:
                failures.append(f"tag {tag}: {got}")

    with tagging_batcher(max_batch_size=16) as batcher:
        threads = [threading.Thread(target=caller, args=(batcher, 1 + 100 * i)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(2 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


async def wave(batcher: hibachi.AutoregressiveBatcher, size: int) -> None:
    """``size`` requests: most finish, some time out late, some leave early or never start."""

    async def one(i: int) -> None:
        prompt = np.array([i % 5, 1])
        if i % 10 == 3:
            batcher.run(prompt, max_new_tokens=3).cancel()
        elif i % 10 == 7:
            async for _ in batcher.run(prompt, max_new_tokens=4, timeout=600):
                break
        else:
            await batcher.run(prompt, max_new_tokens=2, timeout=600 if i % 2 else None).collect()

    await asyncio.gather(*(one(i) for i in range(size)))


def test_memory_is_flat_after_100000_requests() -> None:
    batcher = hibachi.AutoregressiveBatcher(
        next_int, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=256
    )

    def measure() -> tuple[int, int]:
        """Live objects the collector tracks, and memory blocks Python has allocated."""
        gc.collect()
        return len(gc.get_objects()), sys.getallocatedblocks()

    async def main() -> tuple[tuple[int, int], tuple[int, int]]:
        async with batcher:
            for _ in range(10):  # warm up: buffers, free lists, caches reach their size
                await wave(batcher, 1000)
            before = measure()
            for _ in range(90):
                await wave(batcher, 1000)
            return before, measure()

    (objects_before, blocks_before), (objects_after, blocks_after) = run_async(main(), 60)
    stats = batcher.stats()
    assert stats.requests_completed + stats.requests_cancelled == 100_000
    assert objects_after - objects_before < 1_000, "objects are kept after their request"
    assert blocks_after - blocks_before < 5_000, "memory is kept after its request"
