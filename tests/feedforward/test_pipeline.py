"""`hibachi.Pipeline` as a feedforward model: batch k+1 in stage 1 while batch k is in stage 2."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import hibachi
from support.models import TIMEOUT, run_async

POISON = 13


def scale(batch: Any) -> Any:
    if (batch == POISON).any():
        raise ValueError("poisoned item")
    return batch * 3


def shift(batch: Any) -> Any:
    return batch + 1


async def async_shift(batch: Any) -> Any:
    await asyncio.sleep(0)
    return batch + 1


def composed(x: int) -> int:
    return x * 3 + 1


async def serve(pipe: hibachi.Pipeline, values: list[int], cancel: list[bool], size: int) -> Any:
    async with hibachi.FeedforwardBatcher(pipe, max_batch_size=size) as batcher:
        handles = [batcher.run(np.array([v])) for v in values]
        for handle, drop in zip(handles, cancel, strict=True):
            if drop:
                handle.cancel()
        outcomes = await asyncio.gather(*handles, return_exceptions=True)
    return outcomes, batcher.stats()


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(0, 20), min_size=1, max_size=40),
    data=st.data(),
    is_async=st.booleans(),
    groups=st.none() | st.integers(1, 4),
    size=st.integers(1, 8),
)
def test_a_pipeline_equals_the_composed_model(
    values: list[int], data: st.DataObject, is_async: bool, groups: int | None, size: int
) -> None:
    cancel = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    pipe = hibachi.Pipeline(scale, async_shift if is_async else shift, groups=groups)
    outcomes, stats = run_async(serve(pipe, values, cancel, size))
    for value, dropped, outcome in zip(values, cancel, outcomes, strict=True):
        if dropped and isinstance(outcome, asyncio.CancelledError):
            continue
        if value == POISON:
            assert isinstance(outcome, hibachi.ModelError)
        else:
            assert not isinstance(outcome, BaseException), outcome
            assert outcome.tolist() == [composed(value)]
    ended = stats.requests_completed + stats.requests_failed + stats.requests_cancelled
    assert stats.requests_submitted == ended + stats.requests_timed_out
    assert stats.requests_in_flight == 0 and stats.queue_depth == 0
    assert len(stats.stage_busy) == 2


def test_batches_go_through_the_stages_in_order_and_overlap() -> None:
    """Stage 2 holds the first batch until stage 1 has started the second."""
    order: dict[str, list[int]] = {"first": [], "second": []}
    second_batch = threading.Event()

    def first(batch: Any) -> Any:
        order["first"].append(int(batch[0, 0]))
        if len(order["first"]) == 2:
            second_batch.set()
        return batch

    def second(batch: Any) -> Any:
        order["second"].append(int(batch[0, 0]))
        assert second_batch.wait(TIMEOUT), "stage 1 did not run while stage 2 held a batch"
        return batch

    with hibachi.FeedforwardBatcher(hibachi.Pipeline(first, second), max_batch_size=2) as b:
        handles = [b.run(np.array([i])) for i in range(10)]
        assert [int(h.result(TIMEOUT)[0]) for h in handles] == list(range(10))
    assert order["first"] == order["second"]
    assert len(order["first"]) >= 2


def test_at_most_groups_batches_are_in_flight() -> None:
    inside = 0
    most = 0
    lock = threading.Lock()

    def enter(batch: Any) -> Any:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        return batch

    def leave(batch: Any) -> Any:
        nonlocal inside
        with lock:
            inside -= 1
        return batch

    slow = hibachi.Pipeline(enter, lambda b: b, leave, groups=2)
    with hibachi.FeedforwardBatcher(slow, max_batch_size=1) as batcher:
        handles = [batcher.run(np.array([i])) for i in range(50)]
        assert [int(h.result(TIMEOUT)[0]) for h in handles] == list(range(50))
    assert 1 <= most <= 2
