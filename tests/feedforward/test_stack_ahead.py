"""Stacking batch k+1 while the model runs batch k (``stack_ahead``): the core decides
when it is worth it (fake clock), and the engine does it on a helper thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

import hibachi
from hibachi._feedforward import core as core_module
from hibachi._feedforward.batch import assemble
from support.feedforward import TIMEOUT, Driver, FakeClock, run_async

AHEAD_MIN = 0.001  # the least stacking time worth stacking ahead, in these tests
COSTLY = 2 * AHEAD_MIN
CHEAP = AHEAD_MIN / 4


def stacking_costs(monkeypatch: pytest.MonkeyPatch, clock: FakeClock, seconds: float) -> None:
    """Stacking a batch moves ``clock`` by ``seconds``."""

    def slow(batch: Any) -> Any:
        clock.advance(seconds)
        return assemble(batch)

    monkeypatch.setattr(core_module, "assemble", slow)


def driver_after_one_batch(monkeypatch: pytest.MonkeyPatch, stacking: float) -> Driver:
    driver = Driver(lambda batch: batch * 2, max_batch_size=4)
    driver.core.stack_ahead_min = AHEAD_MIN
    stacking_costs(monkeypatch, driver.clock, stacking)
    driver.submit(np.ones(3))
    driver.drain()
    return driver


def test_the_core_learns_what_stacking_a_batch_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = driver_after_one_batch(monkeypatch, COSTLY)
    (seconds,) = driver.core.stacking.values()
    assert seconds == pytest.approx(COSTLY)


@pytest.mark.parametrize(
    ("stacking", "waiting", "ahead"),
    [
        pytest.param(COSTLY, 4, True, id="costly stacking, a full batch waits"),
        pytest.param(COSTLY, 3, False, id="costly stacking, the batch could still grow"),
        pytest.param(CHEAP, 8, False, id="cheap stacking: not worth two hand-offs"),
        pytest.param(None, 8, False, id="off (the default)"),
    ],
)
def test_a_batch_is_taken_ahead_only_when_worth_it(
    monkeypatch: pytest.MonkeyPatch, stacking: float | None, waiting: int, ahead: bool
) -> None:
    driver = driver_after_one_batch(monkeypatch, COSTLY if stacking is None else stacking)
    if stacking is None:
        driver.core.stack_ahead_min = None
    items = [driver.submit(np.full(3, i, np.float64)) for i in range(waiting)]
    batch = driver.core.next_batch_ahead()
    assert (batch is not None) == ahead
    if batch is not None:
        assert batch.items == items[:4]  # the batch next_batch would have taken


def test_a_batch_stacked_ahead_is_adopted_and_timed_without_its_stacking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = Driver(lambda batch: batch, max_batch_size=2, pad_value=0, trim_output=True)
    core = driver.core
    items = [driver.submit(np.arange(1, n + 1)) for n in (3, 5)]
    batch = core.next_batch()
    assert batch is not None
    inputs = core.adopt(batch, assemble(batch), 0.5)
    driver.clock.advance(0.25)  # the model
    core.complete(batch, inputs)
    assert [item.result.tolist() for item in items] == [[1, 2, 3], [1, 2, 3, 4, 5]]
    assert core.stacking[batch.layout] == 0.5
    cells, _, seconds = core.cost_of(batch.layout)._points[-1]  # 2 items padded to 5: 10 cells
    assert (cells, seconds) == (10.0, 0.25)
    assert (core.counters.cells, core.counters.padding_cells) == (10, 2)


def test_the_engine_stacks_the_next_batch_while_the_model_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model holds its second call until the third batch is stacked: without
    stacking ahead, that happens only after the call returns (the test then fails)."""
    stacked = threading.Event()
    threads: list[str] = []

    def noting(batch: Any) -> Any:
        threads.append(threading.current_thread().name)
        if len(threads) == 3:
            stacked.set()
        return assemble(batch)

    monkeypatch.setattr(core_module, "assemble", noting)
    monkeypatch.setattr(hibachi._feedforward.engine, "assemble", noting)
    overlapped: list[bool] = []
    started = threading.Event()
    go = threading.Event()

    def model(batch: Any) -> Any:
        if not started.is_set():  # the first call: hold until every item is queued
            started.set()
            go.wait(TIMEOUT)
        elif not overlapped:
            overlapped.append(stacked.wait(TIMEOUT))
        return batch * 2

    async def main() -> list[Any]:
        async with hibachi.FeedforwardBatcher(model, max_batch_size=2) as batcher:
            batcher._core.stack_ahead_min = 0.0
            first = batcher.run(np.zeros(2))
            assert await asyncio.to_thread(started.wait, TIMEOUT)
            handles = [batcher.run(np.full(2, i, np.float64)) for i in range(1, 7)]
            go.set()
            return [await h for h in [first, *handles]]

    results = run_async(main())
    assert [r.tolist() for r in results] == [[2.0 * i] * 2 for i in range(7)]
    assert overlapped == [True]
    assert any("-stack" in name for name in threads)


def test_stack_ahead_is_the_public_switch_for_stacking_ahead() -> None:
    off = hibachi.FeedforwardBatcher(lambda batch: batch)
    on = hibachi.FeedforwardBatcher(lambda batch: batch, stack_ahead=True)
    assert off._core.stack_ahead_min is None
    assert on._core.stack_ahead_min == core_module.STACK_AHEAD_MIN


@pytest.mark.parametrize("value", [1, "yes", None])
def test_stack_ahead_must_be_a_bool(value: Any) -> None:
    with pytest.raises(hibachi.ConfigurationError, match="stack_ahead"):
        hibachi.FeedforwardBatcher(lambda batch: batch, stack_ahead=value)


def test_stack_ahead_is_refused_for_a_pipeline_whose_stages_already_overlap() -> None:
    pipeline = hibachi.Pipeline(lambda batch: batch, lambda batch: batch)
    with pytest.raises(hibachi.ConfigurationError, match="Pipeline"):
        hibachi.FeedforwardBatcher(pipeline, stack_ahead=True)
