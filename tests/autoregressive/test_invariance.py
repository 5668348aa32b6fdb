"""Batch invariance: every request's tokens equal what it gets running alone.

The model hashes each row's real tokens (see `_models.hash_model`): rows are
independent and the mask is honoured, and the padding token is a value real
tokens also take, so a model fed padding as if it were real would differ.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hibachi
from support.harness import Driver, ListSink
from support.models import as_lists, hash_model, run_async

VOCAB = 7
STOP_VALUE = 0
PAD_VALUE = 3
MODEL = hash_model(VOCAB)


@dataclass(frozen=True)
class Spec:
    """One request of an example: its prompt, budget, arrival step and cancellation."""

    values: tuple[int, ...]
    budget: int
    arrival: int
    cancel_after: int | None  # tokens received before the caller cancels; None: never


specs = st.builds(
    Spec,
    values=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=10).map(tuple),
    budget=st.integers(1, 12),
    arrival=st.integers(0, 6),
    cancel_after=st.none() | st.integers(0, 5),
)
token_shapes = st.sampled_from([(), (2,), (2, 2)])


def prompt_of(spec: Spec, token_shape: tuple[int, ...], library: str) -> Any:
    values = np.array(spec.values, dtype=np.int64).reshape((-1,) + (1,) * len(token_shape))
    offsets = np.arange(int(np.prod(token_shape, dtype=np.int64))).reshape(token_shape)
    prompt = (values + offsets) % VOCAB
    return torch.from_numpy(prompt) if library == "torch" else prompt


def special(value: int, token_shape: tuple[int, ...], library: str) -> Any:
    token = np.full(token_shape, value, dtype=np.int64)
    return torch.from_numpy(token) if library == "torch" else token


def driver(token_shape: tuple[int, ...], library: str, max_batch_size: int) -> Driver:
    return Driver(
        MODEL,
        stop=special(STOP_VALUE, token_shape, library),
        pad=special(PAD_VALUE, token_shape, library),
        max_batch_size=max_batch_size,
    )


def alone(spec: Spec, token_shape: tuple[int, ...], library: str) -> list[Any]:
    """The tokens ``spec`` gets when it is the only request."""
    d = driver(token_shape, library, max_batch_size=1)
    _, sink = d.submit(prompt_of(spec, token_shape, library), max_new_tokens=spec.budget)
    d.run_until_idle()
    assert sink.ended and sink.error is None
    return sink.tokens()


def expected(spec: Spec, token_shape: tuple[int, ...], library: str) -> list[Any]:
    tokens = alone(spec, token_shape, library)
    return tokens if spec.cancel_after is None else tokens[: spec.cancel_after]


def batched(
    requests: list[Spec], token_shape: tuple[int, ...], library: str, max_batch_size: int
) -> list[ListSink]:
    """Run every request through one scheduler, arriving and cancelling as specified."""
    d = driver(token_shape, library, max_batch_size)
    submitted: dict[int, tuple[Any, ListSink]] = {}
    step = 0
    while True:
        for i, spec in enumerate(requests):
            if spec.arrival == step:
                prompt = prompt_of(spec, token_shape, library)
                submitted[i] = d.submit(prompt, max_new_tokens=spec.budget)
        for i, (request, sink) in submitted.items():
            limit = requests[i].cancel_after
            if limit is not None and not sink.ended and len(sink.items) >= limit:
                d.cancel(request)
        ran = d.step()
        step += 1
        if not ran and len(submitted) == len(requests):
            break
        assert step < 1000
    return [submitted[i][1] for i in range(len(requests))]


def check_invariance(
    requests: list[Spec], token_shape: tuple[int, ...], library: str, max_batch_size: int
) -> None:
    sinks = batched(requests, token_shape, library, max_batch_size)
    stop = np.full(token_shape, STOP_VALUE).tolist()
    for spec, sink in zip(requests, sinks, strict=True):
        assert sink.ended and sink.error is None
        tokens = sink.tokens()
        assert tokens == expected(spec, token_shape, library)
        assert stop not in tokens[:-1], "a token after the stop token"


@settings(max_examples=100, deadline=None)
@given(
    requests=st.lists(specs, min_size=1, max_size=8),
    token_shape=token_shapes,
    max_batch_size=st.integers(1, 4),
)
def test_batched_equals_alone_numpy(
    requests: list[Spec], token_shape: tuple[int, ...], max_batch_size: int
) -> None:
    check_invariance(requests, token_shape, "numpy", max_batch_size)


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(specs, min_size=1, max_size=8),
    token_shape=token_shapes,
    max_batch_size=st.integers(1, 4),
)
def test_batched_equals_alone_torch(
    requests: list[Spec], token_shape: tuple[int, ...], max_batch_size: int
) -> None:
    check_invariance(requests, token_shape, "torch", max_batch_size)


def test_the_model_tells_padding_from_real_tokens() -> None:
    """Guards the property: a model that ignored the mask would break it."""
    spec = Spec(values=(1,), budget=3, arrival=0, cancel_after=None)
    d = driver((), "numpy", max_batch_size=2)
    _, short = d.submit(prompt_of(spec, (), "numpy"), max_new_tokens=3)
    d.submit(np.arange(9, dtype=np.int64) % VOCAB, max_new_tokens=1)
    d.run_until_idle()
    tokens, mask = d.seen[0]
    assert (tokens[0, ~mask[0]] == PAD_VALUE).any()
    unmasked = MODEL(tokens, np.ones_like(mask))
    assert unmasked[0] != MODEL(tokens, mask)[0]
    assert short.tokens() == alone(spec, (), "numpy")


async def through_the_batcher(
    requests: list[Spec], token_shape: tuple[int, ...], library: str, max_batch_size: int
) -> list[list[Any]]:
    batcher = hibachi.AutoregressiveBatcher(
        MODEL,
        stop_token=special(STOP_VALUE, token_shape, library),
        pad_value=special(PAD_VALUE, token_shape, library),
        max_batch_size=max_batch_size,
    )

    async def caller(spec: Spec) -> list[Any]:
        for _ in range(spec.arrival):  # arrive a few loop turns later than others
            await asyncio.sleep(0)
        tokens: list[Any] = []
        if spec.cancel_after == 0:
            batcher.run(prompt_of(spec, token_shape, library), max_new_tokens=spec.budget).cancel()
            return tokens
        stream = batcher.run(prompt_of(spec, token_shape, library), max_new_tokens=spec.budget)
        async for token in stream:
            tokens.append(token)
            if len(tokens) == spec.cancel_after:
                break
        return as_lists(tokens)

    async with batcher:
        return await asyncio.gather(*(caller(spec) for spec in requests))


@settings(max_examples=30, deadline=None)
@given(
    requests=st.lists(specs, min_size=1, max_size=12),
    token_shape=token_shapes,
    library=st.sampled_from(["numpy", "torch"]),
    max_batch_size=st.integers(1, 5),
)
def test_batched_equals_alone_through_the_batcher(
    requests: list[Spec], token_shape: tuple[int, ...], library: str, max_batch_size: int
) -> None:
    results = run_async(through_the_batcher(requests, token_shape, library, max_batch_size))
    for spec, tokens in zip(requests, results, strict=True):
        assert tokens == expected(spec, token_shape, library)
