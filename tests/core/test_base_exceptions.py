"""A `BaseException` from the model, or inside the engine, never leaves a caller waiting.

`KeyboardInterrupt` and `SystemExit` from the model stop the engine: every
caller, those of the batch inside the model included, ends with an error that
names them. Any other `BaseException` fails only the batch it came from.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import hibachi
from support.feedforward import TIMEOUT, Gate


class Custom(BaseException):
    """A `BaseException` subclass of the user's own."""


FATAL = [KeyboardInterrupt, SystemExit]
NOT_FATAL = [GeneratorExit, Custom, asyncio.CancelledError]


def raising(kind: type[BaseException]) -> Any:
    def model(batch: Any) -> Any:
        raise kind("from the model")

    return model


@pytest.mark.parametrize("kind", FATAL)
def test_a_fatal_exception_ends_every_caller_and_stops_the_engine(
    kind: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate(raising(kind))
    with hibachi.FeedforwardBatcher(gate, max_batch_size=2) as batcher:
        inside = batcher.run(np.ones(3))
        gate.next_batch()  # `inside` is in the model now; the others queue behind it
        queued = [batcher.run(np.ones(3)) for _ in range(5)]
        gate.open()
        for handle in [inside, *queued]:
            with pytest.raises(hibachi.HibachiError, match=kind.__name__) as info:
                handle.result(timeout=TIMEOUT)
            assert isinstance(info.value.__cause__, kind)
        assert batcher._engine.join(timeout=TIMEOUT)
        health = batcher.health()
        assert not health.engine_alive
        assert health.failure is not None and kind.__name__ in health.failure
        with pytest.raises(hibachi.BatcherClosed):
            batcher.run(np.ones(3))
    assert "hibachi-ff failed" in caplog.text


@pytest.mark.parametrize("kind", NOT_FATAL)
def test_another_base_exception_fails_only_the_items_that_cause_it(
    kind: type[BaseException],
) -> None:
    def model(batch: Any) -> Any:
        if (batch < 0).any():
            raise kind("a negative input")
        return batch * 2

    with hibachi.FeedforwardBatcher(model, max_batch_size=8, max_wait=0.05) as batcher:
        handles = [batcher.run(np.full(2, float(i if i != 3 else -1))) for i in range(8)]
        for i, handle in enumerate(handles):
            if i == 3:
                with pytest.raises(hibachi.ModelError, match=kind.__name__) as info:
                    handle.result(timeout=TIMEOUT)
                assert isinstance(info.value.__cause__, kind)
            else:
                np.testing.assert_array_equal(handle.result(timeout=TIMEOUT), np.full(2, 2.0 * i))
        assert batcher.health().ok()
        np.testing.assert_array_equal(batcher.run(np.ones(2)).result(TIMEOUT), np.full(2, 2.0))


def test_an_async_model_that_is_cancelled_fails_its_batch_only() -> None:
    calls = 0

    async def model(batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= 2:  # an item fails after failing twice alone
            raise asyncio.CancelledError()
        return batch + 1

    with hibachi.FeedforwardBatcher(model, max_batch_size=1) as batcher:
        with pytest.raises(hibachi.ModelError, match="CancelledError"):
            batcher.run(np.zeros(1)).result(timeout=TIMEOUT)
        np.testing.assert_array_equal(batcher.run(np.zeros(1)).result(TIMEOUT), np.ones(1))
        assert batcher.health().ok()


@pytest.mark.parametrize("kind", [*FATAL, *NOT_FATAL])
def test_an_output_that_raises_a_base_exception_while_split(kind: type[BaseException]) -> None:
    class Output(np.ndarray):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            raise kind("from the output")

    def model(batch: Any) -> Any:
        return (batch * 2).view(Output)

    with hibachi.FeedforwardBatcher(model, max_batch_size=1) as batcher:
        with pytest.raises(hibachi.HibachiError, match=kind.__name__):
            batcher.run(np.ones(2)).result(timeout=TIMEOUT)
        assert batcher.health().ok() is (kind not in FATAL)


@pytest.mark.parametrize("kind", [KeyboardInterrupt, Custom])
def test_the_autoregressive_engine_crash_path_ends_every_stream(
    kind: type[BaseException],
) -> None:
    batcher = hibachi.AutoregressiveBatcher(
        lambda tokens, mask: tokens[:, -1] + 1,
        stop_token=np.int64(-1),
        pad_value=np.int64(0),
        max_batch_size=2,
    )

    def broken(output: Any) -> None:
        raise kind("inside hibachi")

    batcher._scheduler.apply = broken  # type: ignore[method-assign]
    with batcher:
        streams = [batcher.run(np.array([1, 2]), max_new_tokens=5) for _ in range(4)]
        for stream in streams:
            with pytest.raises(hibachi.HibachiError, match=kind.__name__):
                list(stream)
        assert batcher._engine.join(timeout=TIMEOUT)
        assert batcher.health().failure is not None


def test_a_crash_that_cannot_end_its_requests_still_lets_close_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batcher = hibachi.FeedforwardBatcher(lambda x: x, max_batch_size=2)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise Custom("a bug inside hibachi")

    batcher._engine._crash = broken  # type: ignore[method-assign]
    with batcher:
        batcher._engine.core.next_batch = broken  # type: ignore[method-assign]
        batcher.run(np.ones(3))
        assert batcher._engine.join(timeout=TIMEOUT)
    assert "could not end its requests" in caplog.text
