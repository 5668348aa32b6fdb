"""AutoregressiveBatcher through real asyncio and real threads: batching, models, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import numpy as np
import pytest
import torch

import hibachi
from support.models import (
    TIMEOUT,
    Gate,
    Make,
    Recorder,
    as_lists,
    next_int,
    run_async,
    tagged_expected,
    tagged_prompt,
    tagging,
    tagging_model,
    tags_of,
)

pytestmark = pytest.mark.usefixtures("no_leaked_engines")

# -- continuous batching ------------------------------------------------------------------


def test_the_quick_start(make_batcher: Make) -> None:
    batcher = make_batcher(next_int, stop_token=np.int64(9), pad_value=np.int64(0))

    async def main() -> list[int]:
        async with batcher:
            return [int(token) async for token in batcher.run(np.array([5, 6]))]

    assert run_async(main()) == [7, 8, 9]


def test_a_new_request_joins_a_running_batch_at_the_next_step(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_batch_size=4)

    async def main() -> None:
        async with batcher:
            first = batcher.run(tagged_prompt(1, 1), max_new_tokens=50)
            assert await gate.arrival() == [1]
            second = batcher.run(tagged_prompt(2, 1), max_new_tokens=3)
            gate.release()
            assert await gate.arrival() == [1, 2]
            gate.open()
            assert as_lists(await second.collect()) == tagged_expected(2, 1, 3)
            assert as_lists(await first.collect()) == tagged_expected(1, 1, 50)

    run_async(main())


def test_rows_are_refilled_from_the_queue_in_arrival_order(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_batch_size=2)

    async def main() -> None:
        async with batcher:
            blocker = batcher.run(tagged_prompt(9, 1), max_new_tokens=1)
            assert await gate.arrival() == [9]
            streams = {
                tag: batcher.run(tagged_prompt(tag, 1), max_new_tokens=tag) for tag in (1, 2, 3)
            }
            gate.open()
            for tag, stream in streams.items():
                assert as_lists(await stream.collect()) == tagged_expected(tag, 1, tag)
            await blocker.collect()

    run_async(main())
    assert gate.seen == [[9], [1, 2], [2, 3], [3], [3]]


def test_a_sync_model_does_not_block_the_callers_event_loop(make_batcher: Make) -> None:
    entered, release = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    def model(tokens: Any, mask: Any) -> Any:
        threads.append(threading.current_thread())
        entered.set()
        if not release.wait(TIMEOUT):  # only a coroutine of the caller's loop sets it
            raise RuntimeError("the caller's event loop was blocked")
        return tokens[:, -1] + 1

    batcher = make_batcher(model, stop_token=np.int64(-1), pad_value=np.int64(0))

    async def other_work() -> None:
        release.set()

    async def main() -> list[int]:
        async with batcher:
            stream = batcher.run(np.array([1]), max_new_tokens=2)
            await asyncio.to_thread(entered.wait, TIMEOUT)
            await asyncio.create_task(other_work())
            return [int(token) for token in await stream.collect()]

    assert run_async(main()) == [2, 3]
    assert threads and threading.main_thread() not in threads


def test_an_async_model_runs_on_its_own_loop(make_batcher: Make) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def model(tokens: Any, mask: Any) -> Any:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return tokens[:, -1] + 1

    batcher = make_batcher(model, stop_token=np.int64(4), pad_value=np.int64(0))

    async def main() -> tuple[list[int], asyncio.AbstractEventLoop]:
        async with batcher:
            tokens = [int(token) async for token in batcher.run(np.array([1]))]
            return tokens, asyncio.get_running_loop()

    tokens, caller_loop = run_async(main())
    assert tokens == [2, 3, 4]
    assert loops and caller_loop not in loops
    with make_batcher(model, stop_token=np.int64(4), pad_value=np.int64(0)) as threaded:
        assert [int(token) for token in threaded.run(np.array([2]))] == [3, 4]


def test_a_bound_method_is_a_model(make_batcher: Make) -> None:
    class Counter:
        def __init__(self) -> None:
            self.calls = 0

        def step(self, tokens: Any, mask: Any) -> Any:
            self.calls += 1
            return tokens[:, -1] + 1

    counter = Counter()
    with make_batcher(counter.step, stop_token=np.int64(5), pad_value=np.int64(0)) as batcher:
        assert [int(token) for token in batcher.run(np.array([1]))] == [2, 3, 4, 5]
    assert counter.calls == 4


def test_a_torch_module_is_a_model(make_batcher: Make) -> None:
    class Next(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = torch.nn.Parameter(torch.ones(()))
            self.inference: list[bool] = []

        def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            self.inference.append(torch.is_inference_mode_enabled())
            return tokens[:, -1] + self.step.long()

    module = Next()
    stop, pad = torch.tensor(4), torch.tensor(0)
    with make_batcher(module, stop_token=stop, pad_value=pad) as batcher:
        tokens = list(batcher.run(torch.tensor([0, 1])))
    assert [int(token) for token in tokens] == [2, 3, 4]
    assert all(isinstance(token, torch.Tensor) for token in tokens)
    assert module.inference == [True, True, True]


def test_the_thread_api_from_several_threads_at_once(make_batcher: Make) -> None:
    recorder = Recorder()
    failures: list[str] = []

    def caller(batcher: hibachi.AutoregressiveBatcher, first_tag: int) -> None:
        for tag in range(first_tag, first_tag + 5):
            length, budget = 1 + tag % 4, 5 + tag % 9
            tokens = [
                token.tolist()
                for token in batcher.run(tagged_prompt(tag, length), max_new_tokens=budget)
            ]
            if tokens != tagged_expected(tag, length, budget):
                failures.append(f"tag {tag}: {tokens}")

    with tagging(make_batcher, recorder, max_batch_size=4) as batcher:
        threads = [threading.Thread(target=caller, args=(batcher, 1 + 10 * i)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    assert not failures
    assert not any(thread.is_alive() for thread in threads)
    assert max(len(batch) for batch in recorder.batches) > 1, "the threads were never batched"


def test_a_thread_stream_cannot_be_iterated_with_async_for(make_batcher: Make) -> None:
    with make_batcher(next_int, stop_token=np.int64(3), pad_value=np.int64(0)) as batcher:
        stream = batcher.run(np.array([1]))

        async def main() -> None:
            with pytest.raises(TypeError, match="with `for`"):
                await stream.__anext__()

        run_async(main())
        assert [int(token) for token in stream] == [2, 3]


# -- cancellation ---------------------------------------------------------------------------


async def start_two(
    batcher: hibachi.AutoregressiveBatcher, gate: Gate
) -> tuple[hibachi.TokenStream, hibachi.TokenStream]:
    """Queue tag 2 while a blocker (tag 9) holds step 1; `go` then lets steps 1 and 2 run.

    Tag 1, queued before `go`, is admitted next to tag 2 at step 2, so step 3,
    the one in flight when the test looks, holds both rows.
    """
    blocker = batcher.run(tagged_prompt(9, 1), max_new_tokens=1)
    assert await gate.arrival() == [9]
    return blocker, batcher.run(tagged_prompt(2, 1), max_new_tokens=1000)


def go(gate: Gate, stream: hibachi.TokenStream) -> hibachi.TokenStream:
    gate.release(2)
    return stream


async def in_flight(gate: Gate) -> list[int]:
    """The batch of step 3 (steps 1 and 2 were let through)."""
    batches = [await gate.arrival() for _ in range(2)]
    assert batches[0] == [2, 1]
    return batches[1]


async def freed_at_next_step(gate: Gate) -> None:
    gate.release()  # step 3, which still held tag 1, completes
    assert await gate.arrival() == [2], "the cancelled row was not freed at the next step"
    gate.open()


def test_leaving_async_for_early_frees_the_row(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_batch_size=2)

    async def main() -> None:
        async with batcher:
            _blocker, other = await start_two(batcher, gate)
            async for token in go(gate, batcher.run(tagged_prompt(1, 1), max_new_tokens=1000)):
                assert token.tolist() == [1, 1]
                assert await in_flight(gate) == [2, 1]
                break
            await freed_at_next_step(gate)
            other.cancel()

    run_async(main())


def test_stream_cancel_frees_the_row(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_batch_size=2)

    async def main() -> None:
        async with batcher:
            _blocker, other = await start_two(batcher, gate)
            stream = go(gate, batcher.run(tagged_prompt(1, 1), max_new_tokens=1000))
            assert (await stream.__anext__()).tolist() == [1, 1]
            assert await in_flight(gate) == [2, 1]
            stream.cancel()
            assert stream.done()
            assert await stream.collect() == []
            await freed_at_next_step(gate)
            other.cancel()

    run_async(main())


def test_cancelling_the_callers_task_frees_the_row(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_batch_size=2)

    async def main() -> None:
        async with batcher:
            _blocker, other = await start_two(batcher, gate)
            stream = go(gate, batcher.run(tagged_prompt(1, 1), max_new_tokens=1000))
            first = asyncio.Event()

            async def consume() -> None:
                async for _ in stream:
                    first.set()

            task = asyncio.create_task(consume())
            await first.wait()
            assert await in_flight(gate) == [2, 1]
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stream.done()
            await freed_at_next_step(gate)
            other.cancel()

    run_async(main())


def test_leaving_a_for_loop_early_frees_the_row(make_batcher: Make) -> None:
    gate = Gate()
    with tagging(make_batcher, gate, max_batch_size=2) as batcher:
        blocker = batcher.run(tagged_prompt(9, 1), max_new_tokens=1)
        assert gate.next_batch() == [9]
        other = batcher.run(tagged_prompt(2, 1), max_new_tokens=1000)
        for token in go(gate, batcher.run(tagged_prompt(1, 1), max_new_tokens=1000)):
            assert token.tolist() == [1, 1]
            assert [gate.next_batch() for _ in range(2)] == [[2, 1], [2, 1]]
            break
        gate.release()
        assert gate.next_batch() == [2]
        gate.open()
        other.cancel()
        assert [token.tolist() for token in blocker] == [[9, 1]]


def test_leaving_async_for_early_frees_the_row_of_a_stream_still_held(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_batch_size=2)

    async def main() -> None:
        async with batcher:
            _blocker, other = await start_two(batcher, gate)
            stream = go(gate, batcher.run(tagged_prompt(1, 1), max_new_tokens=1000))
            async for _ in stream:
                assert await in_flight(gate) == [2, 1]
                break
            assert stream.done()  # the caller still holds it, but left the loop
            await freed_at_next_step(gate)
            other.cancel()

    run_async(main())


def test_leaving_a_for_loop_early_frees_the_row_of_a_stream_still_held(make_batcher: Make) -> None:
    gate = Gate()
    with tagging(make_batcher, gate, max_batch_size=2) as batcher:
        blocker = batcher.run(tagged_prompt(9, 1), max_new_tokens=1)
        assert gate.next_batch() == [9]
        other = batcher.run(tagged_prompt(2, 1), max_new_tokens=1000)
        stream = go(gate, batcher.run(tagged_prompt(1, 1), max_new_tokens=1000))
        for _ in stream:
            assert [gate.next_batch() for _ in range(2)] == [[2, 1], [2, 1]]
            break
        assert stream.done()
        gate.release()
        assert gate.next_batch() == [2]
        gate.open()
        other.cancel()
        assert len(list(blocker)) == 1


def test_a_request_cancelled_while_queued_never_reaches_the_model(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_batch_size=1)

    async def main() -> None:
        async with batcher:
            first = batcher.run(tagged_prompt(1, 1), max_new_tokens=2)
            assert await gate.arrival() == [1]
            queued = batcher.run(tagged_prompt(2, 1), max_new_tokens=2)
            queued.cancel()
            last = batcher.run(tagged_prompt(3, 1), max_new_tokens=2)
            gate.open()
            assert as_lists(await last.collect()) == tagged_expected(3, 1, 2)
            assert as_lists(await first.collect()) == tagged_expected(1, 1, 2)
            assert await queued.collect() == []

    run_async(main())
    assert 2 not in {tag for batch in gate.seen for tag in batch}
    assert batcher.stats().requests_cancelled == 1


# -- stats ------------------------------------------------------------------------------------


def test_stats_of_a_scripted_run(make_batcher: Make) -> None:
    def model(tokens: Any, mask: Any) -> Any:
        if 7 in tags_of(tokens, mask):
            raise KeyError("tag 7")
        return tagging_model(tokens, mask)

    gate = Gate(model)
    batcher = tagging(make_batcher, gate, max_batch_size=2)

    async def main() -> hibachi.AutoregressiveStats:
        async with batcher:
            x = batcher.run(tagged_prompt(1, 1), max_new_tokens=2)
            assert await gate.arrival() == [1]
            y = batcher.run(tagged_prompt(2, 3), max_new_tokens=1)
            z = batcher.run(tagged_prompt(3, 1), max_new_tokens=5)
            z.cancel()
            during = batcher.stats()
            gate.open()
            await x.collect()
            await y.collect()
            with pytest.raises(hibachi.ModelError):
                await batcher.run(tagged_prompt(7, 1)).collect()
            return during

    during = run_async(main())
    assert (during.queue_depth, during.requests_in_flight, during.steps) == (2, 1, 0)
    stats = batcher.stats()
    assert dataclasses.astuple(stats) == dataclasses.astuple(
        hibachi.AutoregressiveStats(
            requests_admitted=3,
            requests_completed=2,
            requests_cancelled=1,
            requests_failed=1,
            requests_timed_out=0,
            steps=3,
            tokens=3,
            mean_batch_fill=4 / 6,
            padding_fraction=1 / 8,
            queue_depth=0,
            requests_in_flight=0,
            requests_submitted=4,
            peak_requests_in_flight=2,
        )
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.steps = 0  # type: ignore[misc]
    assert during.steps == 0, "a snapshot changed after it was taken"


# -- event loops and threads together ----------------------------------------------------------


def test_callers_in_several_event_loops_at_once(make_batcher: Make) -> None:
    recorder = Recorder()
    results: dict[int, list[Any]] = {}

    async def caller(batcher: hibachi.AutoregressiveBatcher, tags: range) -> None:
        streams = {
            tag: batcher.run(tagged_prompt(tag, tag % 3 + 1), max_new_tokens=12) for tag in tags
        }
        for tag, stream in streams.items():
            results[tag] = as_lists(await stream.collect())

    with tagging(make_batcher, recorder, max_batch_size=8) as batcher:
        threads = [
            threading.Thread(
                target=run_async, args=(caller(batcher, range(10 * i + 1, 10 * i + 6)),)
            )
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    assert sorted(results) == [10 * i + j for i in range(4) for j in range(1, 6)]
    for tag, tokens in results.items():
        assert tokens == tagged_expected(tag, tag % 3 + 1, 12)


def test_streams_of_a_closed_event_loop_free_their_rows(make_batcher: Make) -> None:
    async def abandon(batcher: hibachi.AutoregressiveBatcher) -> list[hibachi.TokenStream]:
        streams = [batcher.run(tagged_prompt(tag, 1), max_new_tokens=10**9) for tag in (1, 2)]
        await streams[0].__anext__()
        return streams  # still referenced, never cancelled: only the loop's end tells

    batcher = tagging(make_batcher)
    with batcher:
        streams = run_async(abandon(batcher))
        closer = threading.Thread(target=batcher.close)  # drains: ends only if the rows are freed
        closer.start()
        closer.join(TIMEOUT)
        assert not closer.is_alive(), "rows of a closed event loop were never freed"
    assert len(streams) == 2
    assert batcher.stats().requests_cancelled == 2


def test_the_default_budget_comes_from_the_batcher(make_batcher: Make) -> None:
    with tagging(make_batcher, max_new_tokens=3) as batcher:
        assert as_lists(list(batcher.run(tagged_prompt(1, 2)))) == tagged_expected(1, 2, 3)
        assert len(list(batcher.run(tagged_prompt(2, 2), max_new_tokens=5))) == 5
