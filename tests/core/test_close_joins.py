"""Leaving a batcher's ``with`` / ``async with`` by an exception ends it as leaving it
normally does: every caller ended, and no thread of the batcher outliving the block.

A program that ends right after such a block must exit with its traceback and
status 1; an engine thread still inside a torch call at interpreter exit aborts
it instead (``terminate called without an active exception``, status 134).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import hibachi
from support.models import TIMEOUT, run_async

NEGATIVE_WAIT = 0.5  # how long a helper waits to see that a block has NOT been left yet


class Held:
    """A model whose calls, once ``hold`` is set, wait for ``release``; ``returned`` is
    set when a held call has returned."""

    def __init__(self, output: Callable[..., Any]) -> None:
        self.output = output
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def __call__(self, *args: Any) -> Any:
        if self.hold.is_set():
            self.entered.set()
            assert self.release.wait(TIMEOUT)
            self.returned.set()
        return self.output(*args)


def autoregressive(model: Held) -> tuple[Any, Callable[[Any], Any]]:
    batcher = hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=2
    )
    return batcher, lambda b: b.run(np.array([1]), max_new_tokens=50)


def feedforward(model: Held) -> tuple[Any, Callable[[Any], Any]]:
    batcher = hibachi.FeedforwardBatcher(model, max_batch_size=2)
    return batcher, lambda b: b.run(np.ones(2))


KINDS = [
    pytest.param(autoregressive, lambda tokens, mask: tokens[:, -1] + 1, id="autoregressive"),
    pytest.param(feedforward, lambda x: x * 2, id="feedforward"),
]


def release_unless_left(model: Held, left: threading.Event) -> threading.Thread:
    """Release the model once the block is left, or after `NEGATIVE_WAIT` if it is not."""

    def release() -> None:
        left.wait(NEGATIVE_WAIT)
        model.release.set()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


class Boom(Exception):
    pass


@pytest.mark.parametrize(("make", "output"), KINDS)
def test_with_left_by_an_exception_waits_for_the_model_call_and_the_thread(
    make: Any, output: Any
) -> None:
    model = Held(output)
    batcher, ask = make(model)
    left = threading.Event()
    helper = None
    with pytest.raises(Boom), batcher:
        model.hold.set()
        request = ask(batcher)
        assert model.entered.wait(TIMEOUT)
        helper = release_unless_left(model, left)
        raise Boom
    returned_before_leaving = model.returned.is_set()
    left.set()
    assert helper is not None
    helper.join()
    assert returned_before_leaving, "the block was left while the model call still ran"
    assert not batcher.health().engine_alive
    assert not batcher._engine._thread.is_alive()
    del request


@pytest.mark.parametrize(("make", "output"), KINDS)
def test_async_with_left_by_an_exception_waits_for_the_model_call_and_the_thread(
    make: Any, output: Any
) -> None:
    model = Held(output)
    batcher, ask = make(model)
    left = threading.Event()
    seen: list[bool] = []

    async def main() -> None:
        with pytest.raises(Boom):
            async with batcher:
                model.hold.set()
                request = ask(batcher)
                await asyncio.to_thread(model.entered.wait, TIMEOUT)
                helper = release_unless_left(model, left)
                raise Boom
        seen.append(model.returned.is_set())
        left.set()
        await asyncio.to_thread(helper.join)
        with pytest.raises(hibachi.BatcherClosed):
            await (request.collect() if hasattr(request, "collect") else request)

    run_async(main())
    assert seen == [True], "the block was left while the model call still ran"
    assert not batcher._engine._thread.is_alive()


def test_cancelling_the_task_that_leaves_async_with_still_waits_for_the_thread() -> None:
    model = Held(lambda tokens, mask: tokens[:, -1] + 1)
    batcher, ask = autoregressive(model)

    async def body(raising: asyncio.Event) -> None:
        async with batcher:
            model.hold.set()
            request = ask(batcher)
            await asyncio.to_thread(model.entered.wait, TIMEOUT)
            raising.set()  # its waiter runs once this task waits inside __aexit__
            raise Boom
        del request

    async def main() -> bool:
        raising = asyncio.Event()
        task = asyncio.create_task(body(raising))
        await raising.wait()
        assert batcher.state.value == "closing"
        left = threading.Event()
        helper = release_unless_left(model, left)
        task.cancel()  # the close is under way: cancelling its task must not cut it short
        with pytest.raises(asyncio.CancelledError):
            await task
        returned = model.returned.is_set()
        left.set()
        await asyncio.to_thread(helper.join)
        return returned

    assert run_async(main()), "the task ended while the model call still ran"
    assert not batcher._engine._thread.is_alive()


PROGRAM = """
import asyncio, sys, threading
import torch
import transformers
import hibachi
from hibachi.integrations.transformers import causal_lm_batcher

torch.set_num_threads(1)
busy = threading.Event()

def heavy(*_):
    # each model call spends a second or so inside torch's own (C++) code
    busy.set()
    a = torch.ones(400, 400)
    for _ in range(400):
        a = torch.tanh(a @ a / 400)

class Slow(torch.nn.Module):
    def forward(self, x):
        heavy()
        return x * 2

def slow_llama():
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    model.model.layers[0].register_forward_hook(heavy)
    return model

async def language_async():
    # one run() refused inside a gather while the others are inside the model
    async with causal_lm_batcher(slow_llama(), max_batch_size=4, max_length=512,
                                 eos_token_id=None) as batcher:
        async def generate(prompt):
            if prompt is None:
                await asyncio.to_thread(busy.wait)
                prompt = [10**6]
            return await batcher.run(torch.tensor(prompt), max_new_tokens=100).collect()
        await asyncio.gather(*[generate([1, 2, 3]) for _ in range(3)], generate(None))

async def feedforward_async():
    async with hibachi.FeedforwardBatcher(Slow(), max_batch_size=2) as batcher:
        first = batcher.run(torch.ones(3))
        await asyncio.to_thread(busy.wait)
        raise ValueError("the caller's own mistake")

def feedforward_sync():
    with hibachi.FeedforwardBatcher(Slow(), max_batch_size=2) as batcher:
        first = batcher.run(torch.ones(3))
        busy.wait()
        raise ValueError("the caller's own mistake")

case = sys.argv[1]
if case == "feedforward_sync":
    feedforward_sync()
else:
    asyncio.run(globals()[case]())
"""


@pytest.mark.slow
@pytest.mark.parametrize("case", ["language_async", "feedforward_async", "feedforward_sync"])
def test_a_program_ending_on_the_exception_exits_with_its_traceback_and_status_1(
    case: str,
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM), case],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "terminate called" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 1, done.stderr[-2000:]
    raised = "InvalidRequest: token id" if case == "language_async" else "ValueError: the caller's"
    assert raised in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize(("make", "output"), KINDS)
def test_close_without_wait_returns_while_the_requests_left_run_to_their_end(
    make: Any, output: Any
) -> None:
    model = Held(output)
    batcher, ask = make(model)
    batcher.start()
    model.hold.set()
    request = ask(batcher)
    assert model.entered.wait(TIMEOUT)
    batcher.close(wait=False)  # the model call is still held: close must not wait for it
    assert not model.returned.is_set()
    model.hold.clear()
    model.release.set()
    result = list(request) if hasattr(request, "__iter__") else [request.result(TIMEOUT)]
    assert result  # drained, not cancelled
    assert batcher._engine.join(TIMEOUT)
