"""Whatever a caller does with a `ResultHandle`, it works or raises at once: no task
or thread is left waiting (docs/feedforward.md: "What a caller may do with a handle")."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
import pytest

import hibachi
from support.feedforward import TIMEOUT, Gate, run_async


def double(batch: Any) -> Any:
    return batch * 2


def test_await_twice_and_from_two_tasks() -> None:
    async def main() -> None:
        async with hibachi.FeedforwardBatcher(double) as batcher:
            handle = batcher.run(np.ones(2))
            first, second = await asyncio.gather(handle, handle)
            again = await handle
            for result in (first, second, again):
                np.testing.assert_array_equal(result, np.full(2, 2.0))
            assert handle.done() and handle.result() is again

    run_async(main())


def test_await_in_another_event_loop_raises_at_once() -> None:
    gate = Gate(double)
    errors: list[BaseException] = []

    async def elsewhere(handle: hibachi.ResultHandle) -> None:
        try:
            await handle
        except RuntimeError as error:
            errors.append(error)

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(gate) as batcher:
            handle = batcher.run(np.ones(2))
            thread = threading.Thread(target=asyncio.run, args=(elsewhere(handle),))
            thread.start()
            await asyncio.to_thread(thread.join, TIMEOUT)
            assert not thread.is_alive()
            gate.open()
            np.testing.assert_array_equal(await handle, np.full(2, 2.0))

    run_async(main())
    assert len(errors) == 1 and "another event loop" in str(errors[0])


def test_result_from_a_thread_while_the_loop_awaits() -> None:
    gate = Gate(double)

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(gate) as batcher:
            handle = batcher.run(np.ones(2))
            from_thread = asyncio.create_task(asyncio.to_thread(handle.result, TIMEOUT))
            awaited = asyncio.create_task(asyncio.wait_for(handle, TIMEOUT))
            await gate.arrival()
            gate.open()
            for result in await asyncio.gather(from_thread, awaited):
                np.testing.assert_array_equal(result, np.full(2, 2.0))

    run_async(main())


def test_cancel_then_await_or_result_raises_cancelled() -> None:
    gate = Gate(double)

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(gate) as batcher:
            busy = batcher.run(np.ones(2))
            await gate.arrival()
            handle = batcher.run(np.ones(2))
            assert handle.cancel() and not handle.cancel()
            with pytest.raises(asyncio.CancelledError):
                await handle
            with pytest.raises(asyncio.CancelledError):
                handle.result()
            gate.open()
            await busy

    run_async(main())


def test_a_thread_handle_cancelled_from_another_thread() -> None:
    gate = Gate(double)
    with hibachi.FeedforwardBatcher(gate) as batcher:
        busy = batcher.run(np.ones(2))
        gate.next_batch()
        handle = batcher.run(np.ones(2))
        threading.Thread(target=handle.cancel).start()
        with pytest.raises(CancelledError):
            handle.result(timeout=TIMEOUT)
        gate.open()
        busy.result(timeout=TIMEOUT)


def test_await_after_the_batcher_closed() -> None:
    gate = Gate(double)

    async def main() -> None:
        batcher = hibachi.FeedforwardBatcher(gate)
        async with batcher:
            drained = batcher.run(np.ones(2))
            await gate.arrival()
            gate.open()
        np.testing.assert_array_equal(await drained, np.full(2, 2.0))
        held = Gate(double)
        cancelled = hibachi.FeedforwardBatcher(held)
        async with cancelled:
            first = cancelled.run(np.ones(2))
            await held.arrival()
            queued = cancelled.run(np.ones(2))
            held.open()
            await cancelled.aclose(cancel=True)
        await first  # it was in the model: it finished
        with pytest.raises(hibachi.BatcherClosed):
            await queued

    run_async(main())


def test_result_inside_its_event_loop_raises_instead_of_deadlocking() -> None:
    gate = Gate(double)

    async def main() -> None:
        async with hibachi.FeedforwardBatcher(gate) as batcher:
            handle = batcher.run(np.ones(2))
            with pytest.raises(RuntimeError, match="await it"):
                handle.result()
            gate.open()
            await handle

    run_async(main())


def test_result_of_a_handle_whose_loop_is_not_running_raises_at_once() -> None:
    gate = Gate(double)
    batcher = hibachi.FeedforwardBatcher(gate)

    async def submit() -> hibachi.ResultHandle:
        return batcher.run(np.ones(2))

    with batcher:
        loop = asyncio.new_event_loop()
        handle = loop.run_until_complete(submit())
        gate.open()
        with pytest.raises(RuntimeError, match="not running"):
            handle.result(timeout=TIMEOUT)
        loop.close()
        with pytest.raises(RuntimeError, match="not running"):
            handle.result()


def test_a_thread_handle_cannot_be_awaited() -> None:
    with hibachi.FeedforwardBatcher(double) as batcher:
        handle = batcher.run(np.ones(2))

        async def wait() -> Any:
            return await handle

        with pytest.raises(TypeError, match="result"):
            asyncio.run(wait())
        np.testing.assert_array_equal(handle.result(TIMEOUT), np.full(2, 2.0))
