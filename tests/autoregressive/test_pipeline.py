"""`hibachi.Pipeline` as an autoregressive model: groups of rows in flight through its stages.

The property: whatever the arrivals, cancellations and failing rows, every
request gets from a pipeline exactly what it gets from the composed model
alone. The stages are a hash (stage 1) and a reduction (stage 2): rows are
independent, the mask is honoured, and padding is a value real tokens take.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hibachi
from hibachi._autoregressive.pipelined import PipelinedEngine
from hibachi._autoregressive.request import Request
from support.models import TIMEOUT, run_async

VOCAB = 7
STOP = 0
PAD = 3
POISON = 9  # a prompt value the model fails on (generated tokens are < VOCAB)


def reference(prompt: tuple[int, ...]) -> int:
    """The composed model's next token for one sequence, or -1 where it fails."""
    if POISON in prompt:
        return -1
    return (sum(prompt) * 5 + len(prompt)) % VOCAB


def alone(prompt: tuple[int, ...], budget: int) -> tuple[list[int], bool]:
    """The tokens one request gets alone, and whether it ends with ModelError."""
    sequence, out = list(prompt), []
    while len(out) < budget:
        token = reference(tuple(sequence))
        if token < 0:
            return out, True
        out.append(token)
        sequence.append(token)
        if token == STOP:
            break
    return out, False


def hash_stage(tokens: Any, mask: Any) -> Any:
    """Stage 1: per row, a hidden value; -1 marks a poisoned row."""
    real = np.where(mask, tokens, 0)
    hidden = real.sum(axis=1) * 5 + mask.sum(axis=1)
    return np.where((np.where(mask, tokens, -1) == POISON).any(axis=1), -1, hidden)


def identity_stage(hidden: Any) -> Any:
    return hidden.copy()


def reduce_stage(hidden: Any) -> Any:
    """Stage 2: the token; fails the call if any row is poisoned."""
    if (hidden < 0).any():
        raise ValueError("poisoned row")
    return (hidden % VOCAB).astype(np.int64)


async def async_reduce_stage(hidden: Any) -> Any:
    await asyncio.sleep(0)
    return reduce_stage(hidden)


class FailsOnce:
    """A stage that raises on its first call with more than one row (a transient fault)."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage
        self.failed = False

    def __call__(self, hidden: Any) -> Any:
        if not self.failed and len(hidden) > 1:
            self.failed = True
            raise RuntimeError("transient")
        return self.stage(hidden)


def checking_first(tokens: Any, mask: Any) -> Any:
    """Stage 1 that fails itself on a poisoned row (so the failure is in stage 1)."""
    hidden = hash_stage(tokens, mask)
    if (hidden < 0).any():
        raise ValueError("poisoned row")
    return hidden


@dataclass(frozen=True)
class Spec:
    values: tuple[int, ...]
    budget: int
    arrival: int
    cancel_after: int | None


specs = st.builds(
    Spec,
    values=st.lists(st.sampled_from([*range(VOCAB), POISON]), min_size=1, max_size=8).map(tuple),
    budget=st.integers(1, 10),
    arrival=st.integers(0, 6),
    cancel_after=st.none() | st.integers(0, 4),
)


def make_pipeline(kind: str, groups: int | None, transient: bool) -> hibachi.Pipeline:
    last: Any = async_reduce_stage if kind == "async" else reduce_stage
    if transient:
        last = FailsOnce(last)
    if kind == "three":
        return hibachi.Pipeline(hash_stage, identity_stage, last, groups=groups)
    if kind == "fails-in-1":
        return hibachi.Pipeline(checking_first, last, groups=groups)
    return hibachi.Pipeline(hash_stage, last, groups=groups)


async def serve(pipe: hibachi.Pipeline, requests: list[Spec], max_batch_size: int) -> Any:
    batcher = hibachi.AutoregressiveBatcher(
        pipe, stop_token=np.int64(STOP), pad_value=np.int64(PAD), max_batch_size=max_batch_size
    )

    async def caller(spec: Spec) -> tuple[list[int], bool]:
        for _ in range(spec.arrival):
            await asyncio.sleep(0)
        stream = batcher.run(np.array(spec.values), max_new_tokens=spec.budget)
        tokens: list[int] = []
        if spec.cancel_after == 0:
            stream.cancel()
            return tokens, False
        try:
            async for token in stream:
                tokens.append(int(token))
                if len(tokens) == spec.cancel_after:
                    break
        except hibachi.ModelError:
            return tokens, True
        return tokens, False

    async with batcher:
        results = await asyncio.gather(*(caller(spec) for spec in requests))
    return results, batcher.stats()


@settings(max_examples=40, deadline=None)
@given(
    requests=st.lists(specs, min_size=1, max_size=10),
    kind=st.sampled_from(["sync", "async", "three", "fails-in-1"]),
    groups=st.none() | st.integers(1, 3),
    transient=st.booleans(),
    max_batch_size=st.integers(1, 6),
)
def test_a_pipeline_equals_the_composed_model_alone(
    requests: list[Spec], kind: str, groups: int | None, transient: bool, max_batch_size: int
) -> None:
    pipe = make_pipeline(kind, groups, transient)
    results, stats = run_async(serve(pipe, requests, max_batch_size))
    for spec, (tokens, failed) in zip(requests, results, strict=True):
        want, fails = alone(spec.values, spec.budget)
        if spec.cancel_after is not None and spec.cancel_after <= len(want):
            want, fails = want[: spec.cancel_after], fails and spec.cancel_after > len(want)
        assert (tokens, failed) == (want, fails and spec.cancel_after != 0)
    ended = stats.requests_completed + stats.requests_cancelled + stats.requests_failed
    assert stats.requests_submitted == ended + stats.requests_timed_out
    assert stats.requests_in_flight == 0 and stats.queue_depth == 0
    assert len(stats.stage_busy) == len(pipe.stages)


def test_two_groups_are_in_different_stages_at_once() -> None:
    """Stage 2 holds group A's step until stage 1 has started group B's: only
    overlapping stages let that happen."""
    second_call = threading.Event()
    calls = 0

    def first(tokens: Any, mask: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            second_call.set()
        return hash_stage(tokens, mask)

    def last(hidden: Any) -> Any:
        assert second_call.wait(TIMEOUT), "stage 1 did not run while stage 2 held a step"
        return reduce_stage(hidden)

    pipe = hibachi.Pipeline(first, last)
    with hibachi.AutoregressiveBatcher(
        pipe, stop_token=np.int64(STOP), pad_value=np.int64(PAD), max_batch_size=2
    ) as batcher:
        streams = [batcher.run(np.array([v]), max_new_tokens=3) for v in (1, 4)]
        got = [[int(t) for t in stream] for stream in streams]
    assert got == [alone((1,), 3)[0], alone((4,), 3)[0]]


@pytest.mark.parametrize(
    ("max_batch_size", "groups", "sizes"),
    [(16, 2, [8, 8]), (5, 2, [3, 2]), (1, 2, [1]), (7, 3, [3, 2, 2])],
)
def test_max_batch_size_bounds_the_rows_of_all_groups_together(
    max_batch_size: int, groups: int, sizes: list[int]
) -> None:
    seen: list[int] = []

    def first(tokens: Any, mask: Any) -> Any:
        seen.append(len(tokens))
        return hash_stage(tokens, mask)

    pipe = hibachi.Pipeline(first, reduce_stage, groups=groups)
    with hibachi.AutoregressiveBatcher(
        pipe, stop_token=np.int64(99), pad_value=np.int64(PAD), max_batch_size=max_batch_size
    ) as batcher:
        streams = [batcher.run(np.array([1]), max_new_tokens=4) for _ in range(3 * max_batch_size)]
        for stream in streams:
            assert len(list(stream)) == 4
    assert max(seen) == max(sizes)
    assert batcher._schedulers and [s.max_batch_size for s in batcher._schedulers] == sizes


def test_a_light_load_is_spread_over_every_group() -> None:
    """Two requests waiting and room for eight: one row in each group, so both stages
    have work. Driven by hand: the stage threads are not started, so jobs stay queued."""
    pipe = hibachi.Pipeline(hash_stage, reduce_stage)
    batcher = hibachi.AutoregressiveBatcher(
        pipe, stop_token=np.int64(99), pad_value=np.int64(PAD), max_batch_size=8
    )
    engine = batcher._engine
    assert isinstance(engine, PipelinedEngine)
    for value in (1, 2):
        sink = batcher._channels.sink_for_current_context()
        batcher._scheduler.submit(Request(np.array([value]), 4, sink))
    assert engine._start_idle()
    assert [len(group.scheduler.rows) for group in engine.groups] == [1, 1]
