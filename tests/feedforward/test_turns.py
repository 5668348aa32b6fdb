"""The items of one turn of an event loop reach the engine together, and the callers a
batch answered share the next one (issue #15: a lone caller and a few callers)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

import hibachi
from hibachi._core.queue import WorkQueue
from hibachi._feedforward import core as core_module
from hibachi._feedforward.core import FeedforwardCore
from hibachi._feedforward.item import InputChecker
from support.feedforward import TIMEOUT, FakeClock, Gate, run_async


def test_a_put_that_does_not_wake_leaves_the_consumer_asleep_until_woken() -> None:
    queue: WorkQueue[int] = WorkQueue(None)
    woke = threading.Event()

    def consumer() -> None:
        queue.wait()
        woke.set()

    thread = threading.Thread(target=consumer)
    thread.start()
    while not queue._sleeping:  # the consumer is inside wait()
        threading.Event().wait(0.001)
    queue.put(1, wake=False)
    assert not woke.wait(0.05)  # a wake-up would have come by now
    queue.wake_sleeper()
    assert woke.wait(TIMEOUT)
    thread.join(TIMEOUT)


def test_wake_sleeper_on_a_consumer_that_is_awake_changes_nothing() -> None:
    queue: WorkQueue[int] = WorkQueue(None)
    queue.wake_sleeper()
    queue.put(1, wake=False)
    queue.wait(0)  # returns at once: an item waits
    assert queue.drain() == [1]


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine waits for the answered callers' turn however long it takes."""
    monkeypatch.setattr(FeedforwardCore, "call_price", lambda self, layout: TIMEOUT)


def test_items_queued_in_one_turn_go_in_one_batch() -> None:
    sizes: list[int] = []
    first = threading.Event()

    def model(batch: Any) -> Any:
        sizes.append(len(batch))
        first.set()
        return batch

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(model, max_batch_size=8) as batcher:
            await batcher.run(np.zeros(2))
            # until the engine sleeps, waiting for work (a state no event announces)
            while not batcher._queue._sleeping:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            first.clear()
            handles = [batcher.run(np.full(2, i)) for i in range(5)]
            assert not first.wait(0.05)  # the turn has not ended: nobody woke the engine
            await asyncio.gather(*handles)

    run_async(main())
    assert sizes == [1, 5]


@pytest.mark.usefixtures("patient")
def test_the_callers_a_batch_answered_share_the_next_batch_with_the_one_left_waiting() -> None:
    gate = Gate()

    async def caller(batcher: hibachi.FeedforwardBatcher, tag: int) -> None:
        for _ in range(2):
            await batcher.run(np.full(3, tag))

    async def main() -> list[list[int]]:
        async with hibachi.FeedforwardBatcher(gate, max_batch_size=2) as batcher:
            callers = asyncio.gather(*(caller(batcher, tag) for tag in range(3)))
            gate.open()
            await callers
        return [[int(row[0]) for row in batch] for batch in gate.seen]

    # 0 and 1 go first; 2 waits. Their answers bring 0 and 1 straight back: 2 goes
    # with 0 (the oldest two), never alone while the others are on their way.
    assert run_async(main()) == [[0, 1], [2, 0], [1, 2]]


def test_the_price_of_a_call_is_what_the_cost_model_learnt_within_bounds() -> None:
    clock = FakeClock()
    core = FeedforwardCore(max_batch_size=8, clock=clock)
    checker = InputChecker(0)
    layout = checker.describe(np.ones(4, np.int64))[1]
    assert core.call_price(layout) == core_module._PRICE_UNKNOWN
    model = core.cost_of(layout)
    for items, length in [(1, 4), (2, 8), (4, 8), (8, 16)]:
        model.observe(items, length, 0.002 + 0.0001 * items * length)
    assert core.call_price(layout) == core_module._PRICE_UNKNOWN  # asking does not refit
    assert model.fitted  # a choice refits
    assert core.call_price(layout) == pytest.approx(0.002)
    for items, length in [(1, 4), (2, 8), (4, 8), (8, 16)] * 16:
        model.observe(items, length, 10.0 + 0.0001 * items * length)
    assert core.call_price(layout) == pytest.approx(0.002)  # as of the last fit
    assert model.fitted
    assert core.call_price(layout) == core_module._PRICE_CAP
