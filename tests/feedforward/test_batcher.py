"""FeedforwardBatcher through real asyncio and real threads (issue #3)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import numpy as np
import pytest

import hibachi
from support.feedforward import TIMEOUT, Gate, run_async

ENGINE_THREAD = "hibachi-ff"


@pytest.fixture(autouse=True)
def no_leaked_engines() -> Any:
    """Fail a test that leaves a feedforward engine thread running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.name == ENGINE_THREAD]
    for thread in leaked:
        thread.join(timeout=5)
    assert not [t for t in leaked if t.is_alive()], "a batcher was left open"


def double(batch: Any) -> Any:
    return batch * 2


def item(i: int, n: int = 3) -> np.ndarray[Any, Any]:
    return np.arange(i, i + n, dtype=np.float32)


# -- using it --------------------------------------------------------------------------


def test_the_issue_example_from_asyncio() -> None:
    async def main() -> None:
        async with hibachi.FeedforwardBatcher(double, max_batch_size=32, max_wait=0.002) as b:
            ys = await asyncio.gather(*(b.run(item(i)) for i in range(100)))
        for i, y in enumerate(ys):
            np.testing.assert_array_equal(y, item(i) * 2)

    run_async(main())


def test_the_issue_example_from_threads() -> None:
    with hibachi.FeedforwardBatcher(double) as b:
        handle = b.run(item(1))
        assert isinstance(handle, hibachi.ResultHandle)
        np.testing.assert_array_equal(handle.result(timeout=TIMEOUT), item(1) * 2)


def test_many_threads_and_several_event_loops_at_once() -> None:
    def model(batch: dict[str, Any]) -> Any:
        return {"twice": batch["x"] * 2, "tag": batch["tag"]}

    with hibachi.FeedforwardBatcher(model, max_batch_size=16) as b:

        def check(result: Any, tag: int) -> None:
            assert int(result["tag"]) == tag
            np.testing.assert_array_equal(result["twice"], item(tag) * 2)

        def plain_thread(start: int) -> None:
            for tag in range(start, start + 40):
                check(b.run({"x": item(tag), "tag": np.int64(tag)}).result(TIMEOUT), tag)

        def loop_thread(start: int) -> None:
            async def caller(tag: int) -> None:
                check(await b.run({"x": item(tag), "tag": np.int64(tag)}), tag)

            async def main() -> None:
                await asyncio.gather(*(caller(tag) for tag in range(start, start + 40)))

            run_async(main())

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(plain_thread, 1000 * i) for i in range(4)]
            jobs += [pool.submit(loop_thread, 1000 * i) for i in range(4, 8)]
            for job in jobs:
                job.result(timeout=2 * TIMEOUT)
        assert b.stats().requests_completed == 8 * 40


def test_callers_that_arrive_while_the_model_runs_share_the_next_batch() -> None:
    gate = Gate(double)

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(gate, max_batch_size=8) as b:
            first = b.run(item(0))
            await gate.arrival()
            rest = [b.run(item(i)) for i in range(1, 11)]
            gate.open()
            await first
            await asyncio.gather(*rest)
        assert [len(batch) for batch in gate.seen] == [1, 8, 2]
        assert b.stats().released_full == 1

    run_async(main())


def test_max_wait_gathers_callers_that_arrive_within_the_window() -> None:
    calls: list[int] = []

    def model(batch: Any) -> Any:
        calls.append(len(batch))
        return batch

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(model, max_batch_size=8, max_wait=0.5) as b:
            start = time.monotonic()
            await asyncio.gather(b.run(item(0)), b.run(item(1)), b.run(item(2)))
            assert time.monotonic() - start >= 0.49
            full = [b.run(item(i)) for i in range(8)]
            start = time.monotonic()
            await asyncio.gather(*full)
            assert time.monotonic() - start < 0.4  # a full batch does not wait
        stats = b.stats()
        assert calls == [3, 8]
        assert (stats.released_waited, stats.released_full) == (1, 1)

    run_async(main())


def test_an_idle_batcher_uses_no_cpu() -> None:
    with hibachi.FeedforwardBatcher(double, max_wait=0.5) as b:
        b.run(item(0)).result(TIMEOUT)  # warm up
        pending = b.run(item(1))  # and one item waiting out its window
        start = time.process_time()
        time.sleep(0.3)  # the period measured, not a synchronisation
        assert time.process_time() - start < 0.05
        np.testing.assert_array_equal(pending.result(TIMEOUT), item(1) * 2)


def test_an_async_model_and_a_model_on_torch_tensors() -> None:
    import torch

    async def model(batch: Any) -> Any:
        await asyncio.sleep(0)
        return batch + 1

    with hibachi.FeedforwardBatcher(model) as b:
        result = b.run(torch.arange(3)).result(TIMEOUT)
    assert isinstance(result, torch.Tensor) and result.tolist() == [1, 2, 3]


# -- cancellation, deadlines, back-pressure ---------------------------------------------


def test_a_cancelled_caller_never_reaches_the_model() -> None:
    gate = Gate(double)

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(gate, max_batch_size=8) as b:
            first = b.run(item(0))
            await gate.arrival()
            cancelled = b.run(item(1))
            task = asyncio.ensure_future(wrap(b.run(item(2))))
            kept = b.run(item(3))
            await asyncio.sleep(0)
            assert cancelled.cancel() and not cancelled.cancel()
            task.cancel()
            gate.open()
            await first
            np.testing.assert_array_equal(await kept, item(3) * 2)
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            with pytest.raises(asyncio.CancelledError):
                await task
        assert [batch[:, 0].tolist() for batch in gate.seen] == [[0], [3]]
        assert b.stats().requests_cancelled == 2

    run_async(main())


async def wrap(handle: hibachi.ResultHandle) -> Any:
    return await handle


def test_a_result_for_a_caller_who_left_is_discarded() -> None:
    gate = Gate(double)
    with hibachi.FeedforwardBatcher(gate) as b:
        left = b.run(item(0))
        gate.next_batch()
        assert left.cancel()
        gate.open()
        np.testing.assert_array_equal(b.run(item(1)).result(TIMEOUT), item(1) * 2)
        with pytest.raises(concurrent.futures.CancelledError):
            left.result()


def test_run_with_a_timeout_fails_with_timeout_and_the_item_is_dropped() -> None:
    gate = Gate(double)

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(gate) as b:
            first = b.run(item(0))
            await gate.arrival()
            late = b.run(item(1), timeout=0.05)
            start = time.monotonic()
            with pytest.raises(hibachi.Timeout):
                await late
            assert time.monotonic() - start < 1.0
            gate.open()
            await first
        assert len(gate.seen) == 1
        assert b.stats().requests_timed_out == 1

    run_async(main())


def test_timeouts_from_a_thread() -> None:
    gate = Gate(double)
    with hibachi.FeedforwardBatcher(gate) as b:
        first = b.run(item(0))
        gate.next_batch()
        late = b.run(item(1), timeout=0.05)
        with pytest.raises(hibachi.Timeout):
            late.result()
        with pytest.raises(hibachi.Timeout):  # waiting less than the result takes
            first.result(timeout=0.01)
        gate.open()
        np.testing.assert_array_equal(first.result(TIMEOUT), item(0) * 2)
    assert len(gate.seen) == 1 and b.stats().requests_timed_out == 1


def test_max_queue_size_bounds_the_waiting_items() -> None:
    gate = Gate(double)
    with hibachi.FeedforwardBatcher(gate, max_queue_size=2, max_batch_size=8) as b:
        first = b.run(item(0))
        gate.next_batch()
        waiting = [b.run(item(1)), b.run(item(2))]
        with pytest.raises(hibachi.QueueFull):
            b.run(item(3))
        gate.open()
        for handle in [first, *waiting]:
            handle.result(TIMEOUT)
        b.run(item(4)).result(TIMEOUT)


# -- errors ------------------------------------------------------------------------------


def test_only_the_items_that_fail_alone_get_the_model_error() -> None:
    def model(batch: Any) -> Any:
        if (batch[:, 0] == 13).any():
            raise ArithmeticError("unlucky")
        return batch * 2

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(model, max_batch_size=32) as b:
            handles = [b.run(item(i)) for i in range(20)]
            results = await asyncio.gather(*handles, return_exceptions=True)
            for i, result in enumerate(results):
                if i == 13:
                    assert isinstance(result, hibachi.ModelError)
                    assert isinstance(result.__cause__, ArithmeticError)
                else:
                    np.testing.assert_array_equal(result, item(i) * 2)
            np.testing.assert_array_equal(await b.run(item(1)), item(1) * 2)

    run_async(main())


@pytest.mark.parametrize(
    "x",
    [
        pytest.param("text", id="str"),
        pytest.param(3.0, id="float"),
        pytest.param([1, 2], id="list-of-numbers"),
        pytest.param({}, id="empty-dict"),
        pytest.param(({}, []), id="empty-nesting"),
        pytest.param({"a": np.zeros(2), "b": "x"}, id="leaf-not-an-array"),
    ],
)
def test_bad_input_is_refused_at_run(x: Any) -> None:
    with hibachi.FeedforwardBatcher(double) as b:
        with pytest.raises(hibachi.InvalidRequest):
            b.run(x)
        np.testing.assert_array_equal(b.run(item(0)).result(TIMEOUT), item(0) * 2)


def test_a_leaf_of_another_backend_is_refused() -> None:
    import torch

    with hibachi.FeedforwardBatcher(double) as b:
        with pytest.raises(hibachi.InvalidRequest, match="torch"):
            b.run({"a": np.zeros(2), "b": torch.zeros(2)})
        with pytest.raises(hibachi.InvalidRequest, match="timeout"):
            b.run(item(0), timeout=-1)
    numpy_backend = hibachi._backends.backend_of(np.zeros(1))
    pinned = hibachi.FeedforwardBatcher(double, backend=numpy_backend)
    with pinned, pytest.raises(hibachi.InvalidRequest, match="numpy"):
        pinned.run(torch.zeros(2))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_batch_size": 0}, id="batch-0"),
        pytest.param({"max_batch_size": 2.5}, id="batch-float"),
        pytest.param({"max_batch_size": True}, id="batch-bool"),
        pytest.param({"max_wait": -1}, id="wait-negative"),
        pytest.param({"max_wait": float("nan")}, id="wait-nan"),
        pytest.param({"max_queue_size": 0}, id="queue-0"),
        pytest.param({"pad_value": "zero"}, id="pad-str"),
        pytest.param({"pad_value": {"ids": object()}}, id="pad-object"),
        pytest.param({"trim_output": True}, id="trim-without-pad"),
    ],
)
def test_settings_that_cannot_work_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(hibachi.ConfigurationError):
        hibachi.FeedforwardBatcher(double, **options)


def test_a_model_that_is_not_callable_is_refused() -> None:
    with pytest.raises(hibachi.ConfigurationError):
        hibachi.FeedforwardBatcher("model")


# -- lifecycle -------------------------------------------------------------------------


def test_run_outside_the_open_state_raises_batcher_closed() -> None:
    b = hibachi.FeedforwardBatcher(double)
    with pytest.raises(hibachi.BatcherClosed, match="with"):
        b.run(item(0))
    with b:
        pass
    with pytest.raises(hibachi.BatcherClosed):
        b.run(item(0))


def test_closing_drains_waiting_items_and_cancel_ends_them() -> None:
    with hibachi.FeedforwardBatcher(double, max_wait=60.0) as b:
        drained = [b.run(item(i)) for i in range(3)]
    for i, handle in enumerate(drained):
        np.testing.assert_array_equal(handle.result(0), item(i) * 2)

    b = hibachi.FeedforwardBatcher(double, max_wait=60.0)
    with pytest.raises(KeyError), b:
        cut = [b.run(item(i)) for i in range(3)]
        raise KeyError("the block failed")
    for handle in cut:
        with pytest.raises(hibachi.BatcherClosed):
            handle.result(0)


def test_handles_refuse_the_wrong_way_of_waiting() -> None:
    gate = Gate(double)
    with hibachi.FeedforwardBatcher(gate) as b:
        threaded = b.run(item(0))
        with pytest.raises(TypeError, match="result"):
            run_async(wrap(threaded))

        async def main() -> None:
            handle = b.run(item(1))  # waits behind the gated first call
            with pytest.raises(RuntimeError, match="await"):
                handle.result()
            handle.cancel()

        run_async(main())
        gate.open()
        threaded.result(TIMEOUT)


def test_a_loop_handle_can_be_waited_for_from_another_thread() -> None:
    async def main() -> None:
        async with hibachi.FeedforwardBatcher(double, max_wait=0.05) as b:
            handle = b.run(item(5))
            result = await asyncio.to_thread(handle.result, TIMEOUT)
            np.testing.assert_array_equal(result, item(5) * 2)

    run_async(main())


def test_stats() -> None:
    async def main() -> hibachi.FeedforwardStats:
        async with hibachi.FeedforwardBatcher(
            double, max_batch_size=4, pad_value=0, trim_output=True
        ) as b:
            await asyncio.gather(*(b.run(np.ones(n, np.int64)) for n in (1, 2, 3, 2)))
            return b.stats()

    stats = run_async(main())
    assert isinstance(stats, hibachi.FeedforwardStats)
    assert stats.requests_submitted == stats.requests_completed == 4
    assert stats.batches >= 1 and stats.mean_batch_size == 4 / stats.batches
    assert stats.released_full + stats.released_eager + stats.released_waited == stats.batches
    assert 0 <= stats.padding_fraction < 1 and stats.mean_queue_wait >= 0
    assert stats.queue_depth == 0 and stats.requests_failed == 0
    with pytest.raises(AttributeError):
        stats.batches = 0  # type: ignore[misc]


def test_results_for_an_event_loop_that_closed_are_dropped() -> None:
    gate = Gate(double)
    with hibachi.FeedforwardBatcher(gate) as b:
        first = b.run(item(0))
        gate.next_batch()

        async def leave_early() -> hibachi.ResultHandle:
            return b.run(item(1))  # never awaited: the loop closes first

        orphan = run_async(leave_early())
        gate.open()
        np.testing.assert_array_equal(first.result(TIMEOUT), item(0) * 2)
        np.testing.assert_array_equal(b.run(item(2)).result(TIMEOUT), item(2) * 2)

        async def later() -> Any:
            return await b.run(item(3))

        np.testing.assert_array_equal(run_async(later()), item(3) * 2)
    assert not orphan.done()  # nobody could hand it over: its loop is gone
