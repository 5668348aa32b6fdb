"""A model stuck in a call: deadlines still fire, close(cancel=True, wait=False) still returns,
and `health()` says the engine is inside the model.

The model blocks on an `Event` the test sets at the end; nothing here sleeps to
synchronise.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import hibachi
from support.models import TIMEOUT, run_async

STOP = np.int64(-1)
PAD = np.int64(0)


class Stuck:
    """A model whose calls block, once ``stuck`` is set, until ``release`` is set."""

    def __init__(self, output: Callable[..., Any]) -> None:
        self.output = output
        self.stuck = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any) -> Any:
        if self.stuck.is_set():
            self.entered.set()
            assert self.release.wait(TIMEOUT)
        return self.output(*args)


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


def autoregressive(model: Any, **options: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        model, stop_token=STOP, pad_value=PAD, max_batch_size=2, **options
    )


# -- deadlines --------------------------------------------------------------------------


def test_an_async_caller_times_out_while_the_model_is_stuck() -> None:
    model = Stuck(next_int)
    batcher = autoregressive(model)

    async def main() -> None:
        async with batcher:
            steady = batcher.run(np.array([1]), max_new_tokens=3)
            assert [int(t) for t in await steady.collect()] == [2, 3, 4]
            model.stuck.set()
            stream = batcher.run(np.array([5]), max_new_tokens=50, timeout=0.05)
            with pytest.raises(hibachi.Timeout):
                await stream.collect()
            assert model.entered.is_set() and not model.release.is_set()
            model.stuck.clear()
            model.release.set()
            after = batcher.run(np.array([10]), max_new_tokens=2)
            assert [int(t) for t in await after.collect()] == [11, 12]

    run_async(main())
    stats = batcher.stats()
    assert stats.requests_timed_out == 1 and stats.requests_in_flight == 0


def test_a_thread_caller_times_out_while_the_model_is_stuck() -> None:
    model = Stuck(next_int)
    model.stuck.set()
    with autoregressive(model) as batcher:
        stream = batcher.run(np.array([5]), max_new_tokens=50, timeout=0.05)
        with pytest.raises(hibachi.Timeout):
            list(stream)
        assert model.entered.is_set() and not model.release.is_set()
        model.stuck.clear()
        model.release.set()
        assert [int(t) for t in batcher.run(np.array([1]), max_new_tokens=2)] == [2, 3]
    assert batcher.stats().requests_timed_out == 1


def test_tokens_that_arrived_before_the_deadline_are_still_read() -> None:
    with autoregressive(next_int) as batcher:
        stream = batcher.run(np.array([5]), max_new_tokens=3, timeout=TIMEOUT)
        assert [int(t) for t in stream] == [6, 7, 8]


# -- close(cancel=True) ------------------------------------------------------------------


def test_close_with_cancel_returns_while_the_model_is_stuck(caplog: Any) -> None:
    model = Stuck(next_int)
    model.stuck.set()
    batcher = autoregressive(model)
    batcher.start()
    try:
        active = [batcher.run(np.array([i]), max_new_tokens=5) for i in (1, 2)]
        queued = batcher.run(np.array([3]), max_new_tokens=5)
        assert model.entered.wait(TIMEOUT)
        with caplog.at_level(logging.WARNING, logger="hibachi"):
            batcher.close(cancel=True, wait=False)
        for stream in [*active, queued]:
            with pytest.raises(hibachi.BatcherClosed):
                list(stream)
        assert "still inside the model" in caplog.text
        health = batcher.health()
        assert health.state == "closed" and health.engine_alive
        assert health.in_model_for is not None and not health.ok()
    finally:
        model.release.set()
    assert batcher._engine.join(TIMEOUT)
    assert not batcher.health().engine_alive


def test_async_callers_get_batcher_closed_from_a_stuck_close() -> None:
    model = Stuck(next_int)
    model.stuck.set()
    batcher = autoregressive(model)

    async def main() -> None:
        batcher.start()
        streams = [batcher.run(np.array([i]), max_new_tokens=5) for i in (1, 2, 3)]
        await asyncio.to_thread(model.entered.wait, TIMEOUT)
        await batcher.aclose(cancel=True, wait=False)
        for stream in streams:
            with pytest.raises(hibachi.BatcherClosed):
                await stream.collect()

    try:
        run_async(main())
    finally:
        model.release.set()
    assert batcher._engine.join(TIMEOUT)


def test_an_incremental_model_stuck_at_close_releases_its_slots_when_it_returns() -> None:
    from support.incremental_models import HistoryModel

    class StuckHistory(HistoryModel):
        def step(self, *args: Any) -> Any:
            return gate(*args)

    history = StuckHistory(2)
    gate = Stuck(lambda *args: HistoryModel.step(history, *args))
    gate.stuck.set()
    batcher = hibachi.AutoregressiveBatcher(
        history, stop_token=np.int64(2), pad_value=np.int64(0), max_batch_size=2
    )
    batcher.start()
    stream = batcher.run(np.array([4, 5]), max_new_tokens=5, options="a")
    assert gate.entered.wait(TIMEOUT)
    batcher.close(cancel=True, wait=False)
    with pytest.raises(hibachi.BatcherClosed):
        list(stream)
    gate.release.set()
    assert batcher._engine.join(TIMEOUT)
    assert history.released == ["a"] and not history.violations


# -- the feedforward batcher ----------------------------------------------------------------


def test_feedforward_timeouts_fire_while_the_model_is_stuck() -> None:
    model = Stuck(lambda x: x * 2)
    model.stuck.set()
    batcher = hibachi.FeedforwardBatcher(model, max_batch_size=2)

    async def main() -> None:
        async with batcher:
            first = batcher.run(np.ones(2), timeout=0.05)
            with pytest.raises(hibachi.Timeout):
                await first
            second = await asyncio.to_thread(thread_caller, batcher)
            assert isinstance(second, hibachi.Timeout)
            model.stuck.clear()
            model.release.set()
            assert (await batcher.run(np.ones(2))).tolist() == [2.0, 2.0]

    try:
        run_async(main())
    finally:
        model.release.set()


def thread_caller(batcher: hibachi.FeedforwardBatcher) -> BaseException | None:
    try:
        batcher.run(np.ones(2), timeout=0.05).result()
    except hibachi.HibachiError as error:
        return error
    return None


def test_feedforward_close_with_cancel_returns_while_the_model_is_stuck() -> None:
    model = Stuck(lambda x: x * 2)
    model.stuck.set()
    batcher = hibachi.FeedforwardBatcher(model, max_batch_size=1)
    batcher.start()
    try:
        handles = [batcher.run(np.ones(2)) for _ in range(3)]
        assert model.entered.wait(TIMEOUT)
        batcher.close(cancel=True, wait=False)
        for handle in handles:
            with pytest.raises(hibachi.BatcherClosed):
                handle.result(timeout=TIMEOUT)
        assert batcher.health().engine_alive
    finally:
        model.release.set()
    assert batcher._engine.join(TIMEOUT)


# -- health ---------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", ["autoregressive", "feedforward"])
def test_in_model_for_grows_while_stuck_and_ok_turns_false(kind: str, monkeypatch: Any) -> None:
    if kind == "autoregressive":
        model = Stuck(next_int)
        batcher: Any = autoregressive(model)
        ask: Callable[[], Any] = lambda: batcher.run(np.array([1]), max_new_tokens=1)  # noqa: E731
    else:
        model = Stuck(lambda x: x)
        batcher = hibachi.FeedforwardBatcher(model)
        ask = lambda: batcher.run(np.ones(1))  # noqa: E731
    model.stuck.set()
    clock = FakeTime()
    with batcher:
        kept = ask()  # a dropped stream would be cancelled
        assert model.entered.wait(TIMEOUT)
        since = batcher._engine.runner.busy_since
        assert since is not None
        monkeypatch.setattr("hibachi._core.engine_thread.time", clock)
        clock.now = since + 5.0
        five = batcher.health()
        clock.now = since + 30.0
        thirty = batcher.health()
        monkeypatch.undo()
        model.release.set()
        del kept
    assert five.in_model_for == 5.0 and thirty.in_model_for == 30.0
    assert five.ok(stuck_after=10.0) and not thirty.ok(stuck_after=10.0)
    assert not five.ok(stuck_after=4.0)
