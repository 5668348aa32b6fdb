"""Fuzzing the FeedforwardBatcher: arbitrary arguments at every public entry point,
arbitrary outputs and exceptions from the model.

Invariants: every caller gets a result or a `HibachiError` within a bounded
time; callers with good inputs get exactly their results; the batcher keeps
serving, or after `KeyboardInterrupt` / `SystemExit` from the model ends
every caller with an error that names it; nothing the batcher held stays
alive once it is closed.

Examples are derandomized so CI sees the same cases every run;
``HIBACHI_FUZZ_EXPLORE=2000`` searches anew, with that many examples per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import threading
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hibachi
from hibachi._feedforward.handle import _LoopHandle, _ThreadHandle
from support.feedforward import TIMEOUT

pytestmark = pytest.mark.slow

EXPLORE = bool(os.environ.get("HIBACHI_FUZZ_EXPLORE"))  # a number of examples: search anew
FUZZ = settings(
    max_examples=int(os.environ.get("HIBACHI_FUZZ_EXPLORE", "0")) or 60,
    deadline=None,
    derandomize=not EXPLORE,  # CI sees the same cases every run; a fresh search is asked for
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Weird:
    """An object that looks like an array until its attributes are read."""

    __array_namespace__ = None

    @property
    def shape(self) -> Any:
        raise ValueError("no shape")

    @property
    def dtype(self) -> Any:
        raise ValueError("no dtype")

    def __len__(self) -> int:
        raise ValueError("no length")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot print this exception")

    def __repr__(self) -> str:
        raise RuntimeError("cannot repr this exception")


class CustomBase(BaseException):
    pass


class FussyList(list):  # type: ignore[type-arg]
    """A list whose iteration fails."""

    def __iter__(self) -> Any:
        raise KeyError("no iterating")


FATAL = (KeyboardInterrupt, SystemExit)
EXCEPTIONS = [
    ValueError,
    RuntimeError,
    MemoryError,
    RecursionError,
    StopIteration,
    StopAsyncIteration,
    ZeroDivisionError,
    Unprintable,
    GeneratorExit,
    asyncio.CancelledError,
    CustomBase,
    KeyboardInterrupt,
    SystemExit,
]

small_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
dtypes = st.one_of(
    hnp.scalar_dtypes(),
    st.just(np.dtype(object)),
    st.just(np.dtype([("a", "i4"), ("b", "f8")])),
)
numpy_arrays = hnp.arrays(dtypes, small_shapes)
torch_tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    small_shapes,
    st.sampled_from([torch.float32, torch.int64, torch.uint8, torch.bool, torch.bfloat16]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.complex_numbers(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.just(Weird()),
    st.just(object()),
    st.just(math.inf),
    st.just(10**400),
)
values = st.recursive(
    st.one_of(scalars, numpy_arrays, torch_tensors),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.lists(inner, max_size=2).map(FussyList),
        st.dictionaries(st.one_of(st.text(max_size=2), st.integers()), inner, max_size=3),
    ),
    max_leaves=6,
)
timeouts = st.one_of(
    st.none(),
    st.floats(),
    st.integers(min_value=-5, max_value=10**400),
    st.just(math.inf),
    st.booleans(),
    st.text(max_size=2),
)


def answer(handle: hibachi.ResultHandle) -> Any:
    """The handle's result or HibachiError; fails the test if it took too long."""
    try:
        return handle.result(timeout=TIMEOUT)
    except hibachi.Timeout as error:
        if "no result within" in str(error):
            raise AssertionError("a caller was left waiting") from error
        return error
    except (hibachi.HibachiError, CancelledError, asyncio.CancelledError) as error:
        return error


def good(i: int) -> np.ndarray[Any, Any]:
    return np.full(2, float(i))


def assert_good(handles: list[hibachi.ResultHandle], scale: float = 2.0) -> None:
    for i, handle in enumerate(handles):
        np.testing.assert_array_equal(handle.result(timeout=TIMEOUT), good(i) * scale)


def live_handles() -> int:
    kinds = {_LoopHandle, _ThreadHandle}
    return sum(1 for o in gc.get_objects() if type(o) in kinds)


def assert_empty(batcher: hibachi.FeedforwardBatcher) -> None:
    """A closed batcher holds no request: nothing keeps a caller's memory alive."""
    core = batcher._core
    assert len(batcher._queue) == 0 and len(core) == 0 and not core._retries
    assert batcher._engine._running is None


def engine_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "hibachi-ff")


@FUZZ
@given(x=values, timeout=timeouts)
def test_run_with_arbitrary_arguments(x: Any, timeout: Any) -> None:
    def model(batch: Any) -> Any:
        return batch * 2 if isinstance(batch, np.ndarray) and batch.dtype == float else batch

    with hibachi.FeedforwardBatcher(model, max_batch_size=4) as batcher:
        before = [batcher.run(good(i)) for i in range(3)]
        try:
            handle = batcher.run(x, timeout=timeout)
        except hibachi.HibachiError:
            handle = None
        after = [batcher.run(good(i)) for i in range(3)]
        if handle is not None:
            answer(handle)
        assert_good(before)
        assert_good(after)
        assert batcher.health().ok()


settings_values = st.one_of(scalars, st.integers(-3, 70), st.floats(-1, 1), values)


@FUZZ
@given(
    options=st.dictionaries(
        st.sampled_from(
            [
                "max_batch_size",
                "max_wait",
                "pad_value",
                "trim_output",
                "max_queue_size",
                "max_batch_tokens",
                "copy_results",
            ]
        ),
        settings_values,
        max_size=4,
    ),
    cancel=scalars,
)
def test_constructor_and_close_with_arbitrary_arguments(
    options: dict[str, Any], cancel: Any
) -> None:
    if (
        "max_wait" in options
        and options["max_wait"] not in (None, 0)
        and not isinstance(options["max_wait"], str | bytes)
    ):
        options["max_wait"] = 0.0  # a real wait would only slow the test down
    try:
        batcher = hibachi.FeedforwardBatcher(lambda batch: batch, **options)
    except hibachi.ConfigurationError:
        return
    with batcher:
        try:
            handle = batcher.run(np.arange(3, dtype=np.int64))
        except hibachi.InvalidRequest:
            handle = None
        if handle is not None:
            result = answer(handle)
            if not isinstance(result, hibachi.HibachiError):
                np.testing.assert_array_equal(result, np.arange(3))
        with contextlib.suppress(ValueError):  # a cancel with no truth value: refused as is
            batcher.close(cancel=cancel)
    assert batcher.health().state == "closed"


@pytest.mark.parametrize("pad_value", [FussyList([0]), {"ids": FussyList([0])}, (FussyList(),)])
def test_a_pad_value_that_cannot_be_read_is_a_configuration_error(pad_value: Any) -> None:
    """Found by the fuzz: a nesting whose iteration raises escaped the constructor as is."""
    with pytest.raises(hibachi.ConfigurationError, match="pad_value could not be read"):
        hibachi.FeedforwardBatcher(lambda batch: batch, pad_value=pad_value)


outputs = st.one_of(values, st.builds(lambda: (row for row in range(3))))
raised = st.sampled_from(EXCEPTIONS)


@FUZZ
@given(output=st.one_of(outputs, raised), is_async=st.booleans(), poisoned=st.integers(1, 3))
def test_arbitrary_outputs_and_exceptions_from_the_model(
    output: Any, is_async: bool, poisoned: int
) -> None:
    """Items of one kind (float64, 2 wide) get their own values; whenever a batch holds
    an item of another kind (float32), the model returns ``output`` or raises it."""

    def answer_batch(batch: Any) -> Any:
        if batch.dtype == np.float64:
            return batch * 2
        if isinstance(output, type):
            raise output("fuzzed")
        return output

    async def async_model(batch: Any) -> Any:
        return answer_batch(batch)

    fatal = isinstance(output, type) and issubclass(output, FATAL)
    threads = engine_threads()
    batcher = hibachi.FeedforwardBatcher(
        async_model if is_async else answer_batch, max_batch_size=4
    )
    with batcher:
        goods = [batcher.run(good(i)) for i in range(4)]
        bads = [batcher.run(np.zeros(2, np.float32)) for _ in range(poisoned)]
        later = [batcher.run(good(i)) for i in range(4)]
        outcomes = [answer(h) for h in [*goods, *bads, *later]]
        if fatal:
            for outcome in outcomes[len(goods) :]:
                if isinstance(outcome, hibachi.HibachiError):
                    assert output.__name__ in str(outcome)
            failure = batcher.health().failure
            assert failure is not None and output.__name__ in failure
        else:
            assert_good(goods)
            assert_good(later)
            assert batcher.health().ok()
        del goods, bads, later, outcomes
    assert engine_threads() == threads
    assert_empty(batcher)


@pytest.mark.parametrize("kind", [k for k in EXCEPTIONS if k not in FATAL])
def test_each_exception_kind_leaves_the_batcher_serving(kind: type[BaseException]) -> None:
    calls = 0

    def model(batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= 2:  # an item fails after failing twice alone
            raise kind("fuzzed")
        return batch * 2

    with hibachi.FeedforwardBatcher(model, max_batch_size=1) as batcher:
        assert isinstance(answer(batcher.run(good(0))), hibachi.ModelError)
        assert_good([batcher.run(good(0))])
        assert batcher.health().ok()


def test_memory_returns_to_its_baseline_after_faults() -> None:
    def model(batch: Any) -> Any:
        if (batch < 0).any():
            raise ValueError("negative")
        return [batch] if batch.shape[0] == 1 else batch * 2  # ambiguous for batches of 1

    def cycle() -> None:
        with hibachi.FeedforwardBatcher(model, max_batch_size=8) as batcher:
            handles = [batcher.run(good(i - 2) if i % 3 else good(i)) for i in range(40)]
            handles[5].cancel()
            for handle in handles:
                answer(handle)
        assert_empty(batcher)

    cycle()
    gc.collect()
    baseline = live_handles()
    for _ in range(5):
        cycle()
    gc.collect()
    assert live_handles() == baseline
