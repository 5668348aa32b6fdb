"""Numbers of seconds out of range: infinity means no limit, nothing raises a bare
`OverflowError`, and a number that is no time at all is refused with a HibachiError."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import numpy as np
import pytest

import hibachi
from hibachi._core.time_limits import check_timeout, check_wait
from support.feedforward import TIMEOUT, run_async

NO_LIMIT = [
    pytest.param(math.inf, id="inf"),
    pytest.param(1e300, id="1e300"),
    pytest.param(10**400, id="10**400"),
    pytest.param(threading.TIMEOUT_MAX, id="TIMEOUT_MAX"),
]


class _HostileRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


NOT_A_TIMEOUT = [
    math.nan,
    -1.0,
    0,
    -math.inf,
    "1",
    True,
    1j,
    pytest.param(-(10**5000), id="-10**5000"),
    pytest.param(_HostileRepr(), id="repr-raises"),
    pytest.param("x" * 8**6, id="long-str"),
]


@pytest.mark.parametrize("seconds", NO_LIMIT)
def test_huge_timeouts_mean_no_limit(seconds: Any) -> None:
    assert check_timeout(seconds) is None
    assert check_wait(seconds) is None


@pytest.mark.parametrize("seconds", NOT_A_TIMEOUT)
def test_a_timeout_that_is_no_time_is_refused_at_run(seconds: Any) -> None:
    with pytest.raises(hibachi.InvalidRequest) as refused:
        check_timeout(seconds)
    assert len(str(refused.value)) < 200  # the value is described, never printed in full


def test_waiting_for_no_time_only_looks() -> None:
    assert check_wait(0) == 0.0
    assert check_wait(-5) == 0.0
    assert check_wait(-math.inf) == 0.0
    for bad in [math.nan, "1", True]:
        with pytest.raises(hibachi.InvalidRequest):
            check_wait(bad)


@pytest.mark.parametrize("seconds", NO_LIMIT)
def test_feedforward_run_and_result_with_huge_numbers_from_a_thread(seconds: Any) -> None:
    with hibachi.FeedforwardBatcher(lambda x: x + 1) as batcher:
        handle = batcher.run(np.zeros(2), timeout=seconds)
        np.testing.assert_array_equal(handle.result(timeout=seconds), np.ones(2))


@pytest.mark.parametrize("seconds", NO_LIMIT)
def test_feedforward_run_and_result_with_huge_numbers_in_a_loop(seconds: Any) -> None:
    async def main() -> None:
        async with hibachi.FeedforwardBatcher(lambda x: x + 1) as batcher:
            handle = batcher.run(np.zeros(2), timeout=seconds)
            result = await asyncio.to_thread(handle.result, seconds)
            np.testing.assert_array_equal(result, np.ones(2))
            np.testing.assert_array_equal(await handle, np.ones(2))

    run_async(main())


@pytest.mark.parametrize("seconds", [0, -1.0, -math.inf])
def test_result_with_no_time_to_wait_raises_timeout_at_once(seconds: float) -> None:
    gate = threading.Event()
    with hibachi.FeedforwardBatcher(lambda x: (gate.wait(TIMEOUT), x)[1]) as batcher:
        handle = batcher.run(np.zeros(2))
        with pytest.raises(hibachi.Timeout):
            handle.result(timeout=seconds)
        gate.set()
        np.testing.assert_array_equal(handle.result(TIMEOUT), np.zeros(2))
        with pytest.raises(hibachi.InvalidRequest):
            handle.result(timeout=math.nan)


@pytest.mark.parametrize("max_wait", [1e10, math.inf, pytest.param(10**400, id="10**400")])
def test_a_huge_max_wait_releases_full_batches_and_everything_at_close(max_wait: Any) -> None:
    batcher = hibachi.FeedforwardBatcher(lambda x: x * 2, max_batch_size=2, max_wait=max_wait)
    with batcher:
        full = [batcher.run(np.ones(1)) for _ in range(2)]
        for handle in full:
            np.testing.assert_array_equal(handle.result(TIMEOUT), np.full(1, 2.0))
        alone = batcher.run(np.ones(1))
        assert batcher.health().ok()
    np.testing.assert_array_equal(alone.result(TIMEOUT), np.full(1, 2.0))
    assert batcher.health().failure is None


@pytest.mark.parametrize("max_wait", [math.nan, -1.0, -math.inf, "1"])
def test_a_max_wait_that_is_no_time_is_a_configuration_error(max_wait: Any) -> None:
    with pytest.raises(hibachi.ConfigurationError):
        hibachi.FeedforwardBatcher(lambda x: x, max_wait=max_wait)


@pytest.mark.parametrize("seconds", NO_LIMIT)
def test_autoregressive_run_with_huge_timeouts(seconds: Any) -> None:
    batcher = hibachi.AutoregressiveBatcher(
        lambda tokens, mask: tokens[:, -1] + 1,
        stop_token=np.int64(-1),
        pad_value=np.int64(0),
    )
    with batcher:
        stream = batcher.run(np.array([1]), max_new_tokens=2, timeout=seconds)
        assert [int(t) for t in stream] == [2, 3]
