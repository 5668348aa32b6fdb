"""`close()` called from the engine's own thread begins the close and returns:
the engine never waits for itself, and a later `close()` from elsewhere returns."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import hibachi
from support.feedforward import TIMEOUT, run_async


def close_in_thread(batcher: Any) -> bool:
    """``batcher.close()`` from another thread; whether it returned in time."""
    thread = threading.Thread(target=batcher.close, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    return not thread.is_alive()


@pytest.mark.parametrize("cancel", [False, True])
def test_a_feedforward_model_that_closes_its_batcher(cancel: bool) -> None:
    batcher: hibachi.FeedforwardBatcher

    def model(batch: Any) -> Any:
        batcher.close(cancel=cancel)
        return batch * 2

    batcher = hibachi.FeedforwardBatcher(model, max_batch_size=4)
    batcher.start()
    handle = batcher.run(np.ones(2))
    np.testing.assert_array_equal(handle.result(timeout=TIMEOUT), np.full(2, 2.0))
    assert close_in_thread(batcher)
    assert batcher.health().state == "closed"
    assert not batcher.health().engine_alive


def test_an_async_feedforward_model_that_acloses_its_batcher() -> None:
    batcher: hibachi.FeedforwardBatcher

    async def model(batch: Any) -> Any:
        await batcher.aclose()
        return batch + 1

    async def main() -> None:
        async with batcher:
            result = await batcher.run(np.zeros(2))
            np.testing.assert_array_equal(result, np.ones(2))

    batcher = hibachi.FeedforwardBatcher(model)
    run_async(main())
    assert batcher.health().state == "closed"


def test_an_autoregressive_model_that_closes_its_batcher() -> None:
    batcher: hibachi.AutoregressiveBatcher

    def model(tokens: Any, mask: Any) -> Any:
        batcher.close()
        return tokens[:, -1] + 1

    batcher = hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=2
    )
    batcher.start()
    stream = batcher.run(np.array([1, 2]), max_new_tokens=3)
    assert [int(t) for t in stream] == [3, 4, 5]
    assert close_in_thread(batcher)
    assert batcher.health().state == "closed"
