"""The synchronous feedforward core, round by round with a fake clock (issue #3)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hibachi import InvalidRequest, ModelError, Timeout
from hibachi._backends._array_api import NumpyBackend
from hibachi._exceptions import BatcherClosed
from hibachi._feedforward.cost_model import CostModel
from hibachi._feedforward.waiting_room import Group
from support.feedforward import Driver


def double(batch: Any) -> Any:
    return batch * 2


def arange(n: int, start: int = 0, dtype: Any = np.float32) -> np.ndarray[Any, Any]:
    return np.arange(start, start + n, dtype=dtype)


# -- batching ------------------------------------------------------------------------


def test_items_are_stacked_up_to_max_batch_size_and_each_gets_its_row() -> None:
    driver = Driver(double, max_batch_size=4)
    items = [driver.submit(arange(3, i)) for i in range(10)]
    assert driver.drain() == [4, 4, 2]
    assert [call.shape for call in driver.calls] == [(4, 3), (4, 3), (2, 3)]
    for i, item in enumerate(items):
        np.testing.assert_array_equal(item.result, arange(3, i) * 2)


def test_nested_inputs_are_stacked_leaf_by_leaf_and_nested_outputs_split() -> None:
    def model(batch: dict[str, Any]) -> Any:
        assert isinstance(batch, dict) and list(batch) == ["a", "b"]
        assert isinstance(batch["b"], list) and isinstance(batch["b"][1], tuple)
        return (batch["a"] + 1, {"sum": batch["b"][0].sum(axis=1)})

    driver = Driver(model)
    xs = [{"a": arange(2, i), "b": [arange(3, i), (arange(1, i),)]} for i in range(3)]
    items = [driver.submit(x) for x in xs]
    assert driver.drain() == [3]
    for x, item in zip(xs, items, strict=True):
        added, sums = item.result
        np.testing.assert_array_equal(added, x["a"] + 1)
        assert set(sums) == {"sum"} and sums["sum"] == x["b"][0].sum()


# -- wait policy ---------------------------------------------------------------------


def test_eager_policy_takes_whatever_waits_when_the_model_is_free() -> None:
    driver = Driver(double, max_batch_size=8)
    driver.submit(arange(2))
    assert driver.round() == 1
    for i in range(3):
        driver.submit(arange(2, i))
    assert driver.drain() == [3]
    counters = driver.core.counters
    assert (counters.released_eager, counters.released_full, counters.released_waited) == (2, 0, 0)


def test_a_batch_that_is_not_full_waits_max_wait_from_its_oldest_item() -> None:
    driver = Driver(double, max_batch_size=8, max_wait=0.010)
    driver.submit(arange(2))
    assert driver.round() is None
    assert driver.core.wait_time() == pytest.approx(0.010)
    driver.clock.advance(0.006)
    driver.submit(arange(2, 1))  # a newer item does not restart the window
    assert driver.round() is None
    assert driver.core.wait_time() == pytest.approx(0.004)
    driver.clock.advance(0.004)
    assert driver.round() == 2
    assert driver.core.counters.released_waited == 1
    assert driver.core.wait_time() is None


def test_a_full_batch_never_waits() -> None:
    driver = Driver(double, max_batch_size=4, max_wait=10.0)
    for i in range(6):
        driver.submit(arange(2, i))
    assert driver.round() == 4
    assert driver.round() is None  # the other two wait for their window
    assert driver.core.counters.released_full == 1


def test_closing_releases_every_group_at_once() -> None:
    driver = Driver(double, max_batch_size=4, max_wait=10.0)
    items = [driver.submit(arange(2, i)) for i in range(3)]
    assert driver.round() is None
    assert driver.drain(closing=True) == [3]
    assert all(item.answered for item in items)


# -- shapes and dtypes ---------------------------------------------------------------


def test_items_of_different_shapes_or_dtypes_are_never_stacked_together() -> None:
    driver = Driver(double, max_batch_size=8)
    kinds = [(2, np.float32), (3, np.float32), (2, np.float64), (2, np.int64)]
    items = [driver.submit(arange(n, i, dtype)) for i in range(12) for n, dtype in [kinds[i % 4]]]
    assert sorted(driver.drain()) == [3, 3, 3, 3]
    assert len({(call.shape[1:], call.dtype) for call in driver.calls}) == 4
    for item in items:
        np.testing.assert_array_equal(item.result, item._leaves * 2)
        assert item.result.dtype == item._leaves.dtype


def test_groups_go_first_come_first_served() -> None:
    driver = Driver(double, max_batch_size=8)
    driver.submit(arange(3))  # group B's oldest arrives first
    for i in range(4):
        driver.submit(arange(2, i))
    driver.submit(arange(3, 1))
    driver.drain()
    assert [call.shape for call in driver.calls] == [(2, 3), (4, 2)]


def test_a_lone_item_of_another_shape_does_not_starve_behind_full_batches() -> None:
    driver = Driver(double, max_batch_size=4, max_wait=0.010)
    for i in range(4):
        driver.submit(arange(2, i))
    lone = driver.submit(arange(5))
    for step in range(10):  # a full batch of the common shape arrives every 3 ms
        driver.clock.advance(0.003)
        for i in range(4):
            driver.submit(arange(2, 10 * step + i))
        driver.round()
        if lone.answered:
            break
    assert lone.answered
    assert driver.clock.now - lone._arrival <= 0.010 + 0.003


# -- padding -------------------------------------------------------------------------


def test_padding_to_the_longest_and_trimming_back() -> None:
    lengths = [2, 5, 3]
    for trim in (False, True):
        driver = Driver(double, max_batch_size=4, pad_value=-1, trim_output=trim)
        items = [driver.submit(arange(n, 10 * n)) for n in lengths]
        driver.drain()
        (call,) = driver.calls
        assert call.shape == (3, 5)
        assert (call[0, 2:] == -1).all() and (call[2, 3:] == -1).all()
        for n, item in zip(lengths, items, strict=True):
            np.testing.assert_array_equal(item.result[:n], arange(n, 10 * n) * 2)
            assert item.result.shape == ((n,) if trim else (5,))


def test_nested_pad_values_pad_each_leaf_and_none_leaves_stay_as_they_are() -> None:
    pad = {"ids": 0, "mask": False, "pos": None}

    def model(batch: dict[str, Any]) -> Any:
        assert batch["ids"].shape[:2] == batch["mask"].shape and batch["pos"].shape[1:] == (2,)
        return (batch["ids"] * batch["mask"]).sum(axis=1) + batch["pos"][:, 0]

    driver = Driver(model, pad_value=pad)
    xs = [
        {"ids": arange(n, 1, np.int64), "mask": np.ones(n, bool), "pos": np.array([n, 0])}
        for n in (1, 4, 2)
    ]
    items = [driver.submit(x) for x in xs]
    driver.drain()
    for x, item in zip(xs, items, strict=True):
        assert item.result == x["ids"].sum() + x["pos"][0]
    stats = driver.core.counters
    assert stats.padding_cells == 2 * (3 * 4 - 7) and stats.cells == 2 * 3 * 4 + 3 * 2


@pytest.mark.parametrize(
    ("pad_value", "x", "complaint"),
    [
        pytest.param({"ids": 0}, {"ids": arange(2), "mask": arange(2)}, "pad_value", id="keys"),
        pytest.param((0, 0), [arange(2)], "pad_value", id="length"),
        pytest.param(0, np.float32(3.0), "at least one axis", id="0-d"),
    ],
)
def test_a_pad_value_that_does_not_fit_the_input_is_refused(
    pad_value: Any, x: Any, complaint: str
) -> None:
    driver = Driver(double, pad_value=pad_value)
    with pytest.raises(InvalidRequest, match=complaint):
        driver.submit(x)


def test_similar_lengths_go_together_and_the_oldest_always_goes() -> None:
    driver = Driver(double, max_batch_size=2, pad_value=0, trim_output=True)
    lengths = [9, 1, 2, 10, 1, 8]
    items = [driver.submit(arange(n)) for n in lengths]
    driver.drain()
    batches = [sorted(int((call[i] != 0).sum()) + 1 for i in range(2)) for call in driver.calls]
    assert batches == [[9, 10], [1, 1], [2, 8]]  # the sorted cuts; 9, then 1, is the oldest
    for n, item in zip(lengths, items, strict=True):
        np.testing.assert_array_equal(item.result, arange(n) * 2)


@given(
    waiting=st.integers(1, 12),
    count=st.integers(1, 12),
    length=st.integers(0, 6),
    max_cells=st.none() | st.integers(1, 40),
)
def test_a_group_of_one_length_gives_its_oldest_items_within_the_bounds(
    waiting: int, count: int, length: int, max_cells: int | None
) -> None:
    items: list[Any] = [mock.Mock(_length=length, _seq=i) for i in range(waiting)]
    group = Group(mock.Mock())
    group.extend(items)
    room = count if max_cells is None or length == 0 else max(1, max_cells // length)
    taken = min(waiting, count, room)
    assert group.take(count, max_cells, CostModel()) == items[:taken]
    assert group.size == waiting - taken
    assert [item for bucket in group.buckets.values() for item in bucket] == items[taken:]


# -- errors ------------------------------------------------------------------------


def test_a_failing_batch_is_halved_until_only_the_failing_items_get_the_error() -> None:
    def model(batch: Any) -> Any:
        if (batch[:, 0] < 0).any():
            raise ValueError("negative input")
        return batch + 1

    driver = Driver(model, max_batch_size=8)
    values = [3, -1, 4, 1, -5, 9, 2, 6]
    items = [driver.submit(np.array([v, 0.0])) for v in values]
    driver.drain()
    for value, item in zip(values, items, strict=True):
        if value < 0:
            assert isinstance(item.error, ModelError)
            assert isinstance(item.error.__cause__, ValueError)
        else:
            assert item.result[0] == value + 1
    assert len(driver.calls) <= 2 * len(values) - 1
    assert driver.core.counters.failed == 2 and driver.core.counters.completed == 6
    later = driver.submit(np.array([7.0, 0.0]))
    driver.drain()
    assert later.result[0] == 8


@pytest.mark.parametrize(
    ("output", "complaint"),
    [
        pytest.param(lambda b: "nonsense", "builtins.str", id="not-an-array"),
        pytest.param(lambda b: b[:-1], "shape", id="wrong-batch-size"),
        pytest.param(lambda b: b.sum(), "shape", id="scalar"),
        pytest.param(lambda b: {"ok": b, "bad": [1, 2]}, "builtins.int", id="nested-non-array"),
    ],
)
def test_an_unusable_output_is_a_clear_model_error(output: Any, complaint: str) -> None:
    driver = Driver(output, max_batch_size=4)
    items = [driver.submit(arange(2, i)) for i in range(3)]
    driver.drain()
    for item in items:
        assert isinstance(item.error, ModelError)
        assert complaint in str(item.error)


@pytest.mark.parametrize("count", [pytest.param(1, id="alone"), pytest.param(2, id="two")])
def test_inputs_that_cannot_be_stacked_fail_alone_with_invalid_request(count: int) -> None:
    driver = Driver(double, max_batch_size=2)
    items = [driver.submit(np.zeros(2, np.uint8)) for _ in range(count)]
    error = ValueError("cannot stack")
    with (
        mock.patch.object(NumpyBackend, "stack", side_effect=error),
        mock.patch.object(NumpyBackend, "as_batch", side_effect=error),
    ):
        driver.drain()
    assert all(isinstance(item.error, InvalidRequest) for item in items)


def test_a_pad_value_that_does_not_fit_the_dtype_is_refused_at_submission() -> None:
    driver = Driver(double, pad_value=300)  # 300 does not fit in uint8
    with pytest.raises(InvalidRequest, match="does not fit"):
        driver.submit(np.zeros(2, np.uint8))


# -- cancellation, deadlines, closing -------------------------------------------------


def test_a_departed_item_never_reaches_the_model() -> None:
    driver = Driver(lambda b: b, max_batch_size=8)
    items = [driver.submit(arange(1, i)) for i in range(5)]
    items[1].cancelled = items[3].cancelled = True
    driver.drain()
    (call,) = driver.calls
    assert call[:, 0].tolist() == [0, 2, 4]
    assert driver.core.counters.cancelled == 2


def test_an_item_past_its_deadline_is_answered_with_timeout_without_the_model() -> None:
    driver = Driver(double, max_batch_size=8, max_wait=1.0)
    late = driver.submit(arange(2), timeout=0.5)
    driver.clock.advance(1.0)
    on_time = driver.submit(arange(2, 1))
    driver.clock.advance(1.0)
    driver.drain()
    assert isinstance(late.error, Timeout)
    assert [call.shape[0] for call in driver.calls] == [1]
    np.testing.assert_array_equal(on_time.result, arange(2, 1) * 2)
    assert driver.core.counters.timed_out == 1


def test_abort_ends_every_waiting_item_with_batcher_closed() -> None:
    driver = Driver(double, max_batch_size=8, max_wait=1.0)
    items = [driver.submit(arange(2, i)) for i in range(3)]
    driver.core.abort("closed")
    assert all(isinstance(item.error, BatcherClosed) for item in items)
    assert len(driver.core) == 0 and driver.round() is None


def test_counters_track_queue_wait_and_retries() -> None:
    def model(batch: Any) -> Any:
        if (batch < 0).any():
            raise ValueError("negative")
        return batch

    driver = Driver(model, max_batch_size=4, max_wait=0.5)
    driver.submit(arange(2))
    driver.clock.advance(0.25)
    driver.submit(arange(2, -5))
    driver.clock.advance(0.25)
    driver.drain()
    counters = driver.core.counters
    assert counters.queue_wait == pytest.approx(0.5 + 0.25)
    # the halves, then the bad half once more alone
    assert counters.dispatched == 2 and counters.retried_batches == 3 and counters.batches == 4
