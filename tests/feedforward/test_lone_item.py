"""A batch of one item that needs no padding reaches the model without a copy: the
caller's own arrays, with a new axis 0. Anything else is stacked, a copy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import hibachi
from support.feedforward import Driver


def shares(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())
    return bool(np.shares_memory(a, b))


def plus_one(batch: Any) -> Any:
    if isinstance(batch, dict):
        return {key: value + 1 for key, value in batch.items()}
    return batch + 1


def model_input(x: Any, *others: Any, **options: Any) -> tuple[Any, list[Any]]:
    """What the model receives for ``x`` (with ``others``, in one batch), and the results."""
    driver = Driver(plus_one, max_batch_size=1 + len(others), **options)
    items = [driver.submit(value) for value in (x, *others)]
    assert driver.drain() == [len(items)]
    (call,) = driver.calls
    return call, [item.result for item in items]


class Subclass(np.ndarray[Any, Any]):
    pass


ARRAYS = [
    pytest.param(np.arange(6, dtype=np.float32).reshape(2, 3), id="numpy"),
    pytest.param(torch.arange(6, dtype=torch.float32).reshape(2, 3), id="torch"),
]


@pytest.mark.parametrize("x", ARRAYS)
def test_a_lone_item_is_a_view_of_the_callers_array(x: Any) -> None:
    call, (result,) = model_input(x)
    assert shares(call, x) and tuple(call.shape) == (1, 2, 3)
    assert (call[0] == x).all()
    assert (result == x + 1).all() and not shares(result, x)


@pytest.mark.parametrize("x", ARRAYS)
def test_a_batch_of_two_is_a_copy(x: Any) -> None:
    call, results = model_input(x, x * 2)
    assert not shares(call, x) and tuple(call.shape) == (2, 2, 3)
    assert (results[1] == x * 2 + 1).all()


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(np.arange(12.0).reshape(3, 4)[:, ::2], id="numpy-strided"),
        pytest.param(np.arange(4.0).view(Subclass), id="numpy-subclass"),
        pytest.param(torch.arange(12.0).reshape(3, 4).t(), id="torch-transposed"),
        pytest.param(torch.arange(4.0).requires_grad_(), id="torch-requires-grad"),
    ],
)
def test_a_lone_item_a_view_would_not_match_is_stacked(x: Any) -> None:
    call, (result,) = model_input(x)
    assert not shares(call, x)
    if isinstance(x, torch.Tensor):
        assert call.is_contiguous()
        x, result = x.detach(), result.detach()
    np.testing.assert_array_equal(np.asarray(result), np.asarray(x) + 1)


def test_a_lone_dict_is_viewed_leaf_by_leaf_and_a_short_padded_leaf_is_padded() -> None:
    x = {
        "ids": torch.arange(1, 6),
        "mask": torch.ones(3, dtype=torch.int64),
        "extra": torch.ones(2),
    }
    call, (result,) = model_input(x, pad_value={"ids": 0, "mask": 0, "extra": None})
    assert shares(call["ids"], x["ids"]) and shares(call["extra"], x["extra"])
    assert not shares(call["mask"], x["mask"])  # 3 of the item's 5: padded, so a copy
    assert call["mask"].tolist() == [[1, 1, 1, 0, 0]]
    assert result["ids"].tolist() == [2, 3, 4, 5, 6]


def test_a_lone_padded_array_is_a_view() -> None:
    x = np.arange(5, dtype=np.int64)
    call, (result,) = model_input(x, pad_value=0)
    assert shares(call, x) and call.shape == (1, 5)
    assert result.tolist() == [1, 2, 3, 4, 5]


def test_in_padded_batches_a_lone_item_is_answered_as_in_a_batch() -> None:
    xs = [np.arange(n, dtype=np.float32) for n in (2, 5)]
    _, alone = model_input(xs[0], pad_value=0, trim_output=True)
    _, together = model_input(*xs, pad_value=0, trim_output=True)
    np.testing.assert_array_equal(alone[0], together[0])


def test_a_jax_lone_item_is_answered() -> None:
    import jax.numpy as jnp

    x = jnp.arange(3.0)
    _, (result,) = model_input(x)
    assert result.tolist() == [1.0, 2.0, 3.0]


def test_through_a_batcher_the_model_sees_the_callers_array() -> None:
    x = np.arange(4, dtype=np.float32)
    seen: list[Any] = []

    def model(batch: Any) -> Any:
        seen.append(batch)
        return batch * 2

    with hibachi.FeedforwardBatcher(model) as batcher:
        result = batcher.run(x).result(timeout=10)
    assert np.shares_memory(seen[0], x) and not np.shares_memory(result, x)
    assert result.tolist() == [0, 2, 4, 6]
