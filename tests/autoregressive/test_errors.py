"""Errors: refused requests, failing models, full queues, closing, timeouts, bad settings."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
import torch

import hibachi
from support.models import (
    PAD,
    STOP,
    TIMEOUT,
    Gate,
    Make,
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

# -- refused requests ---------------------------------------------------------------------------

BAD_PROMPTS = [
    pytest.param([[1, 0]], "must be a numpy array, got builtins.list", id="not-an-array"),
    pytest.param(np.array([1, 0]), r"shape \(S, \*\(2,\)\).*got \(2,\)", id="rank-too-low"),
    pytest.param(np.zeros((1, 1, 2), np.int64), r"got \(1, 1, 2\)", id="rank-too-high"),
    pytest.param(np.zeros((3, 4), np.int64), r"got \(3, 4\)", id="wrong-token-shape"),
    pytest.param(np.zeros((0, 2), np.int64), "empty", id="empty"),
    pytest.param(
        np.zeros((2, 2), np.float64), "dtype float64, which does not cast safely", id="unsafe-dtype"
    ),
    pytest.param(
        np.zeros((2, 2), np.uint64), "dtype uint64, which does not cast safely", id="unsafe-uint"
    ),
    pytest.param(torch.zeros((2, 2), dtype=torch.int64), "got torch.Tensor", id="other-backend"),
]

BAD_OPTIONS = [
    pytest.param({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0", id="budget-0"),
    pytest.param({"max_new_tokens": -3}, "at least 1, got -3", id="budget-negative"),
    pytest.param({"max_new_tokens": 2.0}, "max_new_tokens must be an int, got float", id="float"),
    pytest.param({"max_new_tokens": "2"}, "must be an int, got str", id="budget-str"),
    pytest.param({"max_new_tokens": True}, "must be an int, got bool", id="budget-bool"),
    pytest.param({"timeout": 0}, "timeout must be a positive number", id="timeout-0"),
    pytest.param({"timeout": -1.0}, "timeout must be a positive number", id="timeout-negative"),
    pytest.param({"timeout": "1"}, "timeout must be a positive number", id="timeout-str"),
    pytest.param({"timeout": True}, "timeout must be a positive number", id="timeout-bool"),
    pytest.param({"timeout": float("nan")}, "timeout must be a positive number", id="nan"),
]


@pytest.mark.parametrize(("prompt", "message"), BAD_PROMPTS)
def test_a_bad_prompt_is_refused(make_batcher: Make, prompt: Any, message: str) -> None:
    with tagging(make_batcher) as batcher, pytest.raises(hibachi.InvalidRequest, match=message):
        batcher.run(prompt)


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_a_bad_option_is_refused(make_batcher: Make, options: dict[str, Any], message: str) -> None:
    with tagging(make_batcher) as batcher, pytest.raises(hibachi.InvalidRequest, match=message):
        batcher.run(tagged_prompt(1, 1), **options)


def test_refused_requests_do_not_disturb_the_others(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_queue_size=1)

    async def main() -> None:
        async with batcher:
            running = batcher.run(tagged_prompt(1, 2), max_new_tokens=20)
            assert await gate.arrival() == [1]
            for param in BAD_PROMPTS:
                with pytest.raises(hibachi.InvalidRequest):
                    batcher.run(param.values[0])
            for param in BAD_OPTIONS:
                with pytest.raises(hibachi.InvalidRequest):
                    batcher.run(tagged_prompt(2, 1), **param.values[0])
            queued = batcher.run(tagged_prompt(3, 1), max_new_tokens=2)  # the queue had room
            gate.open()
            assert as_lists(await running.collect()) == tagged_expected(1, 2, 20)
            assert as_lists(await queued.collect()) == tagged_expected(3, 1, 2)

    run_async(main())
    assert batcher.stats().requests_admitted == 2


def test_a_nan_timeout_does_not_hold_back_other_deadlines(make_batcher: Make) -> None:
    with tagging(make_batcher) as batcher:
        with pytest.raises(hibachi.InvalidRequest):
            batcher.run(tagged_prompt(1, 1), timeout=float("nan"))
        with pytest.raises(hibachi.Timeout):
            for _ in batcher.run(tagged_prompt(2, 1), max_new_tokens=10**9, timeout=0.05):
                pass


# -- the model fails ----------------------------------------------------------------------------


def test_a_model_exception_fails_only_the_request_that_fails_alone(make_batcher: Make) -> None:
    def model(tokens: Any, mask: Any) -> Any:
        if 2 in tags_of(tokens, mask):
            raise ZeroDivisionError("the model divided by zero")
        return tagging_model(tokens, mask)

    gate = Gate(model)
    batcher = tagging(make_batcher, gate, max_batch_size=2)

    async def main() -> None:
        async with batcher:
            a = batcher.run(tagged_prompt(1, 1), max_new_tokens=5)
            assert await gate.arrival() == [1]
            b = batcher.run(tagged_prompt(2, 1), max_new_tokens=5)
            c = batcher.run(tagged_prompt(3, 1), max_new_tokens=5)
            gate.open()
            with pytest.raises(hibachi.ModelError, match="ZeroDivisionError") as caught:
                await b.collect()
            assert isinstance(caught.value.__cause__, ZeroDivisionError)
            assert as_lists(await a.collect()) == tagged_expected(1, 1, 5)
            assert as_lists(await c.collect()) == tagged_expected(3, 1, 5)
            later = batcher.run(tagged_prompt(4, 1), max_new_tokens=3)
            assert as_lists(await later.collect()) == tagged_expected(4, 1, 3)

    run_async(main())
    assert gate.seen[:4] == [[1], [1, 2], [1], [2]]  # the step, then its halves
    assert batcher.stats().requests_failed == 1


BAD_OUTPUTS = [
    pytest.param(lambda t, m: t[:, -1, 0], "shape", id="wrong-shape"),
    pytest.param(lambda t, m: np.concatenate([t[:, -1]] * 2), "shape", id="wrong-batch"),
    pytest.param(lambda t, m: t[:, -1].tolist(), "returned list", id="not-an-array"),
    pytest.param(lambda t, m: torch.from_numpy(t[:, -1]), "returned Tensor", id="other-backend"),
    pytest.param(lambda t, m: t[:, -1] + 0.5, "dtype float64", id="unsafe-dtype"),
    pytest.param(lambda t, m: None, "returned NoneType", id="none"),
]


@pytest.mark.parametrize(("model", "message"), BAD_OUTPUTS)
def test_a_bad_model_output_is_a_model_error(make_batcher: Make, model: Any, message: str) -> None:
    with tagging(make_batcher, model) as batcher:
        with pytest.raises(hibachi.ModelError, match=message):
            list(batcher.run(tagged_prompt(1, 2)))
        with pytest.raises(hibachi.ModelError):  # and it keeps serving
            list(batcher.run(tagged_prompt(2, 2)))


def test_a_model_that_raises_in_async_code(make_batcher: Make) -> None:
    async def model(tokens: Any, mask: Any) -> Any:
        await asyncio.sleep(0)
        raise LookupError("async failure")

    with tagging(make_batcher, model) as batcher, pytest.raises(hibachi.ModelError) as caught:
        list(batcher.run(tagged_prompt(1, 1)))
    assert isinstance(caught.value.__cause__, LookupError)


# -- queue and lifecycle --------------------------------------------------------------------------


def test_max_queue_size_bounds_the_waiting_queue(make_batcher: Make) -> None:
    gate = Gate()
    with tagging(make_batcher, gate, max_batch_size=1, max_queue_size=1) as batcher:
        active = batcher.run(tagged_prompt(1, 1), max_new_tokens=2)
        assert gate.next_batch() == [1]
        queued = batcher.run(tagged_prompt(2, 1), max_new_tokens=2)
        with pytest.raises(hibachi.QueueFull, match="max_queue_size"):
            batcher.run(tagged_prompt(3, 1))
        gate.open()
        assert as_lists(list(active)) == tagged_expected(1, 1, 2)
        assert as_lists(list(queued)) == tagged_expected(2, 1, 2)
        assert as_lists(list(batcher.run(tagged_prompt(4, 1), max_new_tokens=1))) == [[4, 1]]


def test_run_before_open_and_after_close(make_batcher: Make) -> None:
    batcher = tagging(make_batcher)
    with pytest.raises(hibachi.BatcherClosed, match="unopened"):
        batcher.run(tagged_prompt(1, 1))
    with batcher:
        pass
    with pytest.raises(hibachi.BatcherClosed, match="closed"):
        batcher.run(tagged_prompt(1, 1))
    with pytest.raises(hibachi.BatcherClosed), batcher:
        pass
    batcher.close()  # idempotent


def test_aclose_is_idempotent(make_batcher: Make) -> None:
    batcher = tagging(make_batcher)

    async def main() -> None:
        async with batcher:
            pass
        await batcher.aclose()
        with pytest.raises(hibachi.BatcherClosed):
            batcher.run(tagged_prompt(1, 1))

    run_async(main())


def test_closing_drains_requests_in_flight_and_queued(make_batcher: Make) -> None:
    batcher = tagging(make_batcher, max_batch_size=2)

    async def main() -> list[hibachi.TokenStream]:
        async with batcher:
            return [batcher.run(tagged_prompt(t, 1), max_new_tokens=30) for t in range(1, 6)]

    streams = run_async(main())

    async def collect(stream: hibachi.TokenStream) -> list[Any]:
        return await stream.collect()

    for tag, stream in enumerate(streams, start=1):
        assert as_lists(run_async(collect(stream))) == tagged_expected(tag, 1, 30)


def test_closing_drains_thread_streams(make_batcher: Make) -> None:
    with tagging(make_batcher, max_batch_size=2) as batcher:
        streams = [batcher.run(tagged_prompt(tag, 1), max_new_tokens=30) for tag in range(1, 6)]
    for tag, stream in enumerate(streams, start=1):
        assert as_lists(list(stream)) == tagged_expected(tag, 1, 30)


def test_close_with_cancel_ends_every_stream(make_batcher: Make) -> None:
    batcher = tagging(make_batcher, max_batch_size=1)

    async def main() -> None:
        async with batcher:
            active = batcher.run(tagged_prompt(1, 1), max_new_tokens=10**9)
            queued = batcher.run(tagged_prompt(2, 1), max_new_tokens=10**9)
            assert (await active.__anext__()).tolist() == [1, 1]
            await batcher.aclose(cancel=True)
            with pytest.raises(hibachi.BatcherClosed):
                await active.collect()
            tokens: list[Any] = []
            with pytest.raises(hibachi.BatcherClosed):
                async for token in queued:
                    tokens.append(token)
            assert tokens == []

    run_async(main())


def test_an_exception_inside_async_with_ends_every_stream(make_batcher: Make) -> None:
    batcher = tagging(make_batcher, max_batch_size=1)
    streams: list[hibachi.TokenStream] = []

    async def main() -> None:
        async with batcher:
            streams.extend(batcher.run(tagged_prompt(t, 1), max_new_tokens=10**9) for t in (1, 2))
            await streams[0].__anext__()
            raise KeyError("the caller failed")

    with pytest.raises(KeyError):
        run_async(main())

    async def finish(stream: hibachi.TokenStream) -> None:
        with pytest.raises(hibachi.BatcherClosed):
            await stream.collect()

    for stream in streams:
        run_async(finish(stream))


def test_an_exception_inside_with_ends_blocked_thread_callers(make_batcher: Make) -> None:
    gate = Gate()
    outcomes: list[BaseException] = []

    def caller(stream: hibachi.TokenStream) -> None:
        try:
            list(stream)
        except hibachi.HibachiError as error:
            outcomes.append(error)

    batcher = tagging(make_batcher, gate, max_batch_size=1)
    threads: list[threading.Thread] = []
    with pytest.raises(KeyError), batcher:
        for tag in (1, 2, 3):
            stream = batcher.run(tagged_prompt(tag, 1), max_new_tokens=10**9)
            threads.append(threading.Thread(target=caller, args=(stream,)))
            threads[-1].start()
        assert gate.next_batch() == [1]
        gate.open()
        raise KeyError("the caller failed")
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a caller hangs"
    assert len(outcomes) == 3 and all(isinstance(e, hibachi.BatcherClosed) for e in outcomes)


# -- timeouts -----------------------------------------------------------------------------------


def test_timeout_of_a_queued_request(make_batcher: Make) -> None:
    gate = Gate()
    batcher = tagging(make_batcher, gate, max_batch_size=1)

    async def main() -> None:
        async with batcher:
            active = batcher.run(tagged_prompt(1, 1), max_new_tokens=3)
            assert await gate.arrival() == [1]
            queued = batcher.run(tagged_prompt(2, 1), max_new_tokens=3, timeout=0.01)
            await asyncio.sleep(0.02)  # let its deadline pass: the deadline is what is tested
            gate.open()
            with pytest.raises(hibachi.Timeout):
                await queued.collect()
            assert as_lists(await active.collect()) == tagged_expected(1, 1, 3)

    run_async(main())
    assert 2 not in {tag for batch in gate.seen for tag in batch}
    assert batcher.stats().requests_timed_out == 1


def test_timeout_of_an_active_request(make_batcher: Make) -> None:
    batcher = tagging(make_batcher)

    async def main() -> None:
        async with batcher:
            slow = batcher.run(tagged_prompt(1, 1), max_new_tokens=10**9, timeout=0.2)
            fast = batcher.run(tagged_prompt(2, 1), max_new_tokens=5)
            tokens: list[Any] = []
            with pytest.raises(hibachi.Timeout):
                async for token in slow:
                    tokens.append(token)
            assert tokens and as_lists(tokens) == tagged_expected(1, 1, len(tokens))
            assert as_lists(await fast.collect()) == tagged_expected(2, 1, 5)

    run_async(main())


# -- settings -------------------------------------------------------------------------------------

BAD_SETTINGS = [
    pytest.param({"model": "model"}, "must be callable", id="model-not-callable"),
    pytest.param({"max_batch_size": 0}, "max_batch_size must be at least 1", id="batch-0"),
    pytest.param({"max_batch_size": 2.5}, "max_batch_size must be an int", id="batch-float"),
    pytest.param({"max_batch_size": True}, "max_batch_size must be an int", id="batch-bool"),
    pytest.param({"max_queue_size": 0}, "max_queue_size must be at least 1", id="queue-0"),
    pytest.param({"max_new_tokens": 0}, "max_new_tokens must be at least 1", id="budget-0"),
    pytest.param({"stop_token": np.zeros(3, np.int64)}, "shape", id="stop-shape"),
    pytest.param({"stop_token": np.zeros(2, np.float64)}, "cast safely", id="stop-dtype"),
    pytest.param({"stop_token": [0, 0]}, "must be a numpy array", id="stop-list"),
    pytest.param({"pad_value": "pad"}, "must be a numpy array", id="padding-str"),
    pytest.param({"stop_token": torch.zeros(2, dtype=torch.int64)}, "numpy", id="mixed-libraries"),
    pytest.param({"backend": "numpy"}, "Backend", id="backend-not-a-backend"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SETTINGS)
def test_bad_settings_are_a_configuration_error(changes: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"model": tagging_model, "stop_token": STOP, "pad_value": PAD}
    settings.update(changes)
    model = settings.pop("model")
    with pytest.raises(hibachi.ConfigurationError, match=message):
        hibachi.AutoregressiveBatcher(model, **settings)


def test_python_scalar_tokens_are_numpy(make_batcher: Make) -> None:
    with make_batcher(next_int, stop_token=3, pad_value=0) as batcher:
        assert [int(token) for token in batcher.run(np.array([1]))] == [2, 3]
