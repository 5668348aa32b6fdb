"""A failure inside hibachi's own engine ends every caller with an error: no one hangs."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import hibachi


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


def test_autoregressive_engine_failure_ends_every_stream(caplog: pytest.LogCaptureFixture) -> None:
    batcher = hibachi.AutoregressiveBatcher(
        next_int, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=2
    )

    def broken(output: Any) -> None:
        raise KeyError("a bug inside hibachi")

    batcher._scheduler.apply = broken  # type: ignore[method-assign]
    with batcher:
        streams = [batcher.run(np.array([1, 2]), max_new_tokens=5) for _ in range(4)]
        for stream in streams:
            with pytest.raises(hibachi.HibachiError, match="engine failed") as info:
                list(stream)
            assert isinstance(info.value.__cause__, KeyError)
        assert batcher._engine.join(timeout=10)
        assert "hibachi-ar failed" in caplog.text
        with pytest.raises(hibachi.BatcherClosed):
            batcher.run(np.array([1]))


def test_feedforward_engine_failure_ends_every_caller() -> None:
    batcher = hibachi.FeedforwardBatcher(lambda x: x * 2, max_batch_size=2)
    queued = threading.Event()  # the engine fails only once all four are queued

    def broken(*args: Any, **kwargs: Any) -> None:
        queued.wait(10)
        raise KeyError("a bug inside hibachi")

    with batcher:
        batcher._engine.core.next_batch = broken  # type: ignore[attr-defined]
        handles = [batcher.run(np.ones(3)) for _ in range(4)]
        queued.set()
        for handle in handles:
            with pytest.raises(hibachi.HibachiError, match="engine failed"):
                handle.result(timeout=10)
        assert batcher._engine.join(timeout=10)


class Unprintable(KeyError):
    def __str__(self) -> str:
        raise RuntimeError("cannot print this exception")


def test_an_engine_failure_that_cannot_be_printed_still_ends_every_stream() -> None:
    """The message is written without the exception's own ``__str__``'s help."""
    batcher = hibachi.AutoregressiveBatcher(
        next_int, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=2
    )

    def broken(output: Any) -> None:
        raise Unprintable()

    batcher._scheduler.apply = broken  # type: ignore[method-assign]
    with batcher:
        streams = [batcher.run(np.array([1, 2]), max_new_tokens=5) for _ in range(3)]
        for stream in streams:
            with pytest.raises(hibachi.HibachiError, match="engine failed: Unprintable"):
                list(stream)
        assert batcher._engine.join(timeout=10)
