"""Outputs that can be read two ways are refused, never guessed; pad values that do
not fit the input's dtype are refused at `run()`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hibachi
from support.feedforward import TIMEOUT, Driver


def one_per_item(batch: Any) -> Any:
    """The common mistake: a list of per-item results instead of one batch-major array."""
    return [row * 2 for row in batch]


@settings(max_examples=100, deadline=None)
@given(
    items=st.integers(1, 9),
    width=st.integers(1, 9),
    max_batch_size=st.integers(1, 9),
    kind=st.sampled_from([list, tuple]),
)
def test_one_result_per_item_never_gives_a_caller_another_callers_values(
    items: int, width: int, max_batch_size: int, kind: type
) -> None:
    driver = Driver(lambda batch: kind(one_per_item(batch)), max_batch_size=max_batch_size)
    submitted = [driver.submit(np.arange(width, dtype=np.float64) + 100 * i) for i in range(items)]
    driver.drain()
    for item in submitted:  # read batch-major, some would get other callers' values
        assert isinstance(item.error, hibachi.ModelError)


@settings(max_examples=100, deadline=None)
@given(items=st.integers(1, 9), outputs=st.integers(2, 4), max_batch_size=st.integers(1, 9))
def test_a_batch_major_tuple_reaches_every_caller_exactly(
    items: int, outputs: int, max_batch_size: int
) -> None:
    def model(batch: Any) -> Any:
        return tuple(batch * (k + 1) for k in range(outputs))

    driver = Driver(model, max_batch_size=max_batch_size)
    xs = [np.arange(3, dtype=np.float64) + 10 * i for i in range(items)]
    submitted = [driver.submit(x) for x in xs]
    driver.drain()
    for x, item in zip(xs, submitted, strict=True):
        results = item.result
        assert isinstance(results, tuple) and len(results) == outputs
        for k, result in enumerate(results):
            np.testing.assert_array_equal(result, x * (k + 1))


def test_the_ambiguous_output_names_the_fix() -> None:
    driver = Driver(one_per_item, max_batch_size=4)
    items = [driver.submit(np.ones(4)) for _ in range(4)]
    driver.drain()
    for item in items:
        assert isinstance(item.error, hibachi.ModelError)
        assert "batch-major" in str(item.error)


def test_an_output_that_mirrors_a_tuple_input_is_not_ambiguous() -> None:
    driver = Driver(lambda pair: (pair[0] + 1, pair[1] - 1), max_batch_size=2)
    items = [driver.submit((np.full(2, float(i)), np.full(2, float(i)))) for i in range(2)]
    assert driver.drain() == [2]
    for i, item in enumerate(items):
        first, second = item.result
        np.testing.assert_array_equal(first, np.full(2, i + 1.0))
        np.testing.assert_array_equal(second, np.full(2, i - 1.0))


def test_a_batcher_refuses_one_result_per_item() -> None:
    with hibachi.FeedforwardBatcher(one_per_item, max_batch_size=3, max_wait=0.05) as batcher:
        handles = [batcher.run(np.full(3, float(i))) for i in range(3)]
        for handle in handles:
            with pytest.raises(hibachi.ModelError, match="one result per item"):
                handle.result(timeout=TIMEOUT)


# -- pad values that do not fit the input's dtype -------------------------------------

DOES_NOT_FIT = [
    (-1, np.uint8),
    (300, np.int8),
    (256, np.uint8),
    (0.5, np.int64),
    (math.nan, np.int32),
    (math.inf, np.int64),
    (2, np.bool_),
    (1e300, np.float32),
    pytest.param(10**400, np.float64, id="10**400-float64"),
    (1j, np.float64),
    (-1, torch.uint8),
    (300, torch.int8),
    (0.5, torch.int64),
    (math.nan, torch.int32),
    (1e300, torch.float16),
]
FITS = [
    (0, np.uint8),
    (255, np.uint8),
    (-128, np.int8),
    (1.0, np.int64),
    (True, np.int32),
    (1, np.bool_),
    (0.1, np.float32),
    (math.nan, np.float32),
    (-math.inf, np.float16),
    (1j, np.complex64),
    (np.int64(-1), np.int16),
    (-1, torch.int64),
    (0.5, torch.bfloat16),
    (math.nan, torch.float32),
]


def array(dtype: Any) -> Any:
    if isinstance(dtype, torch.dtype):
        return torch.zeros(3, dtype=dtype)
    return np.zeros(3, dtype=dtype)


@pytest.mark.parametrize(("pad", "dtype"), DOES_NOT_FIT, ids=str)
def test_a_pad_value_that_does_not_fit_is_refused_at_run(pad: Any, dtype: Any) -> None:
    with hibachi.FeedforwardBatcher(lambda x: x, pad_value=pad) as batcher:
        with pytest.raises(hibachi.InvalidRequest, match="does not fit"):
            batcher.run(array(dtype))
        with pytest.raises(hibachi.InvalidRequest, match="does not fit"):
            batcher.run(array(dtype))  # refused every time, not only the first


@pytest.mark.parametrize(("pad", "dtype"), FITS, ids=str)
def test_a_pad_value_that_fits_pads(pad: Any, dtype: Any) -> None:
    with hibachi.FeedforwardBatcher(lambda x: x, pad_value=pad, trim_output=True) as batcher:
        x = array(dtype)
        result = batcher.run(x).result(timeout=TIMEOUT)
        assert result.dtype == x.dtype and tuple(result.shape) == (3,)


def test_a_pad_value_per_leaf_is_checked_per_leaf() -> None:
    with hibachi.FeedforwardBatcher(lambda x: x, pad_value={"ids": -1, "w": None}) as batcher:
        with pytest.raises(hibachi.InvalidRequest, match="does not fit"):
            batcher.run({"ids": np.zeros(2, np.uint8), "w": np.zeros(1, np.uint8)})
        ok = batcher.run({"ids": np.zeros(2, np.int8), "w": np.zeros(1, np.uint8)})
        assert ok.result(timeout=TIMEOUT)["ids"].dtype == np.int8
