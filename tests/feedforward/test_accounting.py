"""The feedforward counters add up, whatever callers do: every request `run()`
accepted ends in exactly one counter, under a storm of cancellations and timeouts."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from concurrent.futures import CancelledError
from typing import Any

import numpy as np

import hibachi
from support.feedforward import TIMEOUT, run_async

CALLERS = 300  # per event loop task group, and again across threads


def model(batch: Any) -> Any:
    return (batch @ np.ones((batch.shape[1], 64))).sum(axis=1)  # some work per batch


def outcome(handle: hibachi.ResultHandle, timeout: float) -> str:
    try:
        handle.result(timeout=timeout)
    except (CancelledError, asyncio.CancelledError):
        return "cancelled"
    except hibachi.Timeout:
        return "timeout"
    except hibachi.HibachiError:
        return "error"
    return "value"


async def storm(batcher: hibachi.FeedforwardBatcher, rng: random.Random) -> Counter[str]:
    seen: Counter[str] = Counter()

    async def caller(i: int) -> None:
        timeout = rng.choice([None, None, 1e-4, 0.01, 1e300])
        handle = batcher.run(np.full(32, float(i)), timeout=timeout)
        seen["accepted"] += 1  # a task cancelled before it started never calls run()
        try:
            await handle
            seen["value"] += 1
        except hibachi.Timeout:
            seen["timeout"] += 1

    tasks = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
    for _ in range(CALLERS // 2):
        await asyncio.sleep(0) if rng.random() < 0.5 else None
        rng.choice(tasks).cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, asyncio.CancelledError):
            seen["cancelled"] += 1
    seen["callers"] += CALLERS
    return seen


def thread_storm(batcher: hibachi.FeedforwardBatcher, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    handles = [batcher.run(np.full(32, float(i))) for i in range(CALLERS // 4)]
    for handle in handles:
        if rng.random() < 0.5:
            handle.cancel()
    seen = Counter(outcome(handle, TIMEOUT) for handle in handles)
    seen["accepted"] = seen["callers"] = len(handles)
    return seen


def assert_identity(stats: hibachi.FeedforwardStats) -> None:
    ended = (
        stats.requests_completed
        + stats.requests_failed
        + stats.requests_cancelled
        + stats.requests_timed_out
    )
    assert stats.requests_submitted == ended + stats.requests_in_flight + stats.queue_depth


def test_every_request_is_counted_once_under_a_cancellation_storm() -> None:
    rng = random.Random(0)
    batcher = hibachi.FeedforwardBatcher(model, max_batch_size=16)
    seen: Counter[str] = Counter()

    async def main() -> None:
        async with batcher:
            threads = [asyncio.to_thread(thread_storm, batcher, seed) for seed in range(4)]
            seen.update(await storm(batcher, rng))
            assert_identity(batcher.stats())  # a snapshot while it works: still adds up
            for counts in await asyncio.gather(*threads):
                seen.update(counts)

    run_async(main())
    stats = batcher.stats()
    answers = seen["value"] + seen["cancelled"] + seen["timeout"] + seen["error"]
    assert answers == seen["callers"] == CALLERS + 4 * (CALLERS // 4), seen
    assert stats.requests_submitted == seen["accepted"], (stats, seen)
    assert stats.requests_in_flight == 0 and stats.queue_depth == 0
    assert_identity(stats)
    assert stats.requests_failed == 0 and seen["error"] == 0
    assert seen["value"] <= stats.requests_completed
    assert stats.requests_cancelled > 0 and stats.requests_completed > 0


def test_in_flight_counts_the_batch_inside_the_model() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(batch: Any) -> Any:
        entered.set()
        release.wait(TIMEOUT)
        return batch

    with hibachi.FeedforwardBatcher(slow, max_batch_size=4) as batcher:
        first = batcher.run(np.ones(2))
        entered.wait(TIMEOUT)
        queued = [batcher.run(np.ones(2)) for _ in range(3)]
        stats = batcher.stats()
        assert (stats.requests_in_flight, stats.queue_depth) == (1, 3)
        assert_identity(stats)
        release.set()
        for handle in [first, *queued]:
            handle.result(timeout=TIMEOUT)
    stats = batcher.stats()
    assert (stats.requests_submitted, stats.requests_completed) == (4, 4)
    assert_identity(stats)
