"""Whatever a caller does with a `TokenStream`, it works or raises at once: nobody waits forever.

See "What a caller may do with a stream" in docs/autoregressive.md.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import threading
import time
from typing import Any

import numpy as np
import pytest

import hibachi
from support.models import TIMEOUT, Gate, run_async

pytestmark = pytest.mark.usefixtures("no_leaked_engines")


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


def ints(tokens: Any) -> list[int]:
    return [int(t) for t in tokens]


def batcher(model: Any = next_int, **options: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=4, **options
    )


def wait_until(condition: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


def test_iterating_twice_gives_the_rest_then_nothing() -> None:
    with batcher() as b:
        stream = b.run(np.array([1]), max_new_tokens=3)
        assert ints(stream) == [2, 3, 4]
        assert ints(stream) == []
        broken = b.run(np.array([1]), max_new_tokens=10)
        for _ in broken:
            break  # leaving the loop cancels the stream
        assert ints(broken) == []


def test_a_second_thread_reading_at_once_is_refused_and_the_first_is_served() -> None:
    gate = Gate(next_int, record=lambda tokens, mask: None)
    with batcher(gate) as b:
        stream = b.run(np.array([1]), max_new_tokens=3)
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.extend(ints(stream)))
        reader.start()
        wait_until(lambda: stream._reading)
        with pytest.raises(RuntimeError, match="another thread is already reading"):
            next(iter(stream))
        gate.open()
        reader.join(TIMEOUT)
        assert got == [2, 3, 4]


def test_a_second_task_reading_at_once_is_refused_and_the_first_is_served() -> None:
    gate = Gate(next_int, record=lambda tokens, mask: None)

    async def main() -> None:
        async with batcher(gate) as b:
            stream = b.run(np.array([1]), max_new_tokens=3)
            first = asyncio.create_task(stream.collect())
            await asyncio.sleep(0)  # the first task runs until it waits for a token
            assert stream._reading
            with pytest.raises(RuntimeError, match="another task is already reading"):
                await stream.__anext__()
            gate.open()
            assert ints(await first) == [2, 3, 4]

    run_async(main())


def test_waiting_in_another_event_loop_is_refused() -> None:
    gate = Gate(next_int, record=lambda tokens, mask: None)
    with batcher(gate) as b:

        async def make() -> hibachi.TokenStream:
            return b.run(np.array([1]), max_new_tokens=3)

        stream = run_async(make())

        async def read() -> None:
            with pytest.raises(RuntimeError, match="event loop it was created in"):
                await stream.collect()

        run_async(read())
        stream.cancel()
        gate.open()


def test_the_wrong_kind_of_loop_is_refused() -> None:
    with batcher() as b:
        in_thread = b.run(np.array([1]), max_new_tokens=3)

        async def main() -> None:
            with pytest.raises(TypeError, match="iterate it with `for`"):
                await in_thread.collect()
            in_loop = b.run(np.array([1]), max_new_tokens=3)
            with pytest.raises(TypeError, match="iterate it with `async for`"):
                next(iter(in_loop))
            assert ints(await in_loop.collect()) == [2, 3, 4]

        run_async(main())
        assert ints(in_thread) == [2, 3, 4]


def test_a_cancelled_stream_ends_at_once() -> None:
    with batcher() as b:
        stream = b.run(np.array([1]), max_new_tokens=10**6)
        stream.cancel()
        assert ints(stream) == []

        async def main() -> None:
            stream = b.run(np.array([1]), max_new_tokens=10**6)
            stream.cancel()
            assert await stream.collect() == []
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()

        run_async(main())


def test_streams_outlive_their_batcher() -> None:
    b = batcher()
    with b:
        finished = b.run(np.array([1]), max_new_tokens=3)
    assert ints(finished) == [2, 3, 4]
    with batcher() as b:
        cut = b.run(np.array([1]), max_new_tokens=10**6)
        b.close(cancel=True)
    with pytest.raises(hibachi.BatcherClosed):
        list(cut)
    assert ints(cut) == []


@pytest.mark.parametrize("duplicate", [copy.copy, copy.deepcopy, pickle.dumps])
def test_a_stream_cannot_be_copied(duplicate: Any) -> None:
    with batcher() as b:
        stream = b.run(np.array([1]), max_new_tokens=3)
        with pytest.raises(TypeError, match="cannot be copied"):
            duplicate(stream)
        assert ints(stream) == [2, 3, 4]
