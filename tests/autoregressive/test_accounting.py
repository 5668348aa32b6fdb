"""Every request ``run`` accepted is counted exactly once (see `AutoregressiveStats`)."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import numpy as np
import pytest

import hibachi

pytestmark = pytest.mark.usefixtures("no_leaked_engines")


def next_int(tokens: Any, mask: Any) -> Any:
    out = tokens[:, -1] + 1
    out[out % 97 == 0] = -1  # now and then a stop token
    return out


def balanced(stats: hibachi.AutoregressiveStats) -> bool:
    ended = (
        stats.requests_completed
        + stats.requests_cancelled
        + stats.requests_failed
        + stats.requests_timed_out
    )
    return stats.requests_submitted == ended + stats.requests_in_flight + stats.queue_depth


class Counts:
    """Requests accepted and refused, counted from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = self.refused = 0

    def add(self, *, accepted: bool) -> None:
        with self._lock:
            if accepted:
                self.accepted += 1
            else:
                self.refused += 1


def start(b: hibachi.AutoregressiveBatcher, rng: random.Random, counts: Counts) -> Any:
    """A request with a random prompt, budget and deadline; None if the queue was full."""
    try:
        stream = b.run(
            np.array([rng.randrange(1, 500)]),
            max_new_tokens=rng.randrange(1, 30),
            timeout=rng.choice([None, None, 0.001, 5.0]),
        )
    except hibachi.QueueFull:
        counts.add(accepted=False)
        return None
    counts.add(accepted=True)
    return stream


def consume_in_thread(b: hibachi.AutoregressiveBatcher, rng: random.Random, counts: Counts) -> None:
    for _ in range(60):
        stream = start(b, rng, counts)
        if stream is None:
            continue
        way = rng.randrange(4)
        try:
            for i, _ in enumerate(stream):
                if way == 0 and i == 2:
                    stream.cancel()
                if way == 1 and i == 1:
                    break
        except hibachi.HibachiError:
            pass
        if way == 2:
            del stream  # dropped, perhaps unread


async def consume_in_loop(
    b: hibachi.AutoregressiveBatcher, rng: random.Random, counts: Counts
) -> None:
    async def one() -> None:
        stream = start(b, rng, counts)
        if stream is None:
            return
        try:
            async for token in stream:
                if int(token) % 3 == 0 and rng.random() < 0.3:
                    stream.cancel()
        except hibachi.HibachiError:
            pass

    tasks = [asyncio.create_task(one()) for _ in range(150)]
    await asyncio.sleep(0)
    for task in rng.sample(tasks, 50):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("cancel_at_close", [False, True])
def test_submitted_equals_the_sum_of_every_outcome_after_a_cancellation_storm(
    cancel_at_close: bool,
) -> None:
    counts = Counts()
    b = hibachi.AutoregressiveBatcher(
        next_int,
        stop_token=np.int64(-1),
        pad_value=np.int64(0),
        max_batch_size=8,
        max_queue_size=40,
    )
    b.start()
    threads = [
        threading.Thread(target=consume_in_thread, args=(b, random.Random(i), counts))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    asyncio.run(consume_in_loop(b, random.Random(99), counts))
    for thread in threads:
        thread.join()
    leftovers = [b.run(np.array([1]), max_new_tokens=10**6) for _ in range(5)]
    if cancel_at_close:
        b.close(cancel=True)
    for stream in leftovers:
        stream.cancel()
    b.close()
    stats = b.stats()
    assert stats.requests_submitted == counts.accepted + len(leftovers)
    assert stats.requests_in_flight == stats.queue_depth == 0
    assert balanced(stats), stats
