"""FeedforwardBatcher on every built-in backend, and on a user backend without ``stack``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import hibachi
from support.feedforward import TIMEOUT, run_async


def numpy_array(values: Any) -> Any:
    return np.asarray(values, dtype=np.float32)


def torch_array(values: Any) -> Any:
    import torch

    return torch.tensor(np.asarray(values, dtype=np.float32))


def jax_array(values: Any) -> Any:
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(values, dtype=np.float32))


def strict_array(values: Any) -> Any:
    import array_api_strict

    return array_api_strict.asarray(np.asarray(values, dtype=np.float32))


MAKERS = [
    pytest.param(numpy_array, id="numpy"),
    pytest.param(torch_array, id="torch"),
    pytest.param(jax_array, id="jax"),
    pytest.param(strict_array, id="array-api-strict"),
]


def as_numpy(x: Any) -> np.ndarray[Any, Any]:
    if hasattr(x, "detach"):
        return np.asarray(x.detach().cpu())
    if type(x).__module__.startswith("array_api_strict"):
        import array_api_strict

        return np.asarray(array_api_strict.asarray(x)._array)
    return np.asarray(x)


def affine(batch: dict[str, Any]) -> Any:
    return {"y": batch["x"] * 2 + 1, "first": batch["x"][:, 0]}


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("pad", [None, -1.0], ids=["stacked", "padded"])
def test_every_backend_batches_and_answers_in_its_own_arrays(
    make: Callable[[Any], Any], pad: float | None
) -> None:
    lengths = [3, 1, 4, 3, 2] if pad is not None else [3] * 5
    inputs = [{"x": make(np.arange(n) + 10 * i)} for i, n in enumerate(lengths)]
    options: dict[str, Any] = {"max_batch_size": 8}
    if pad is not None:
        options |= {"pad_value": pad, "trim_output": True}

    async def main() -> list[Any]:
        async with hibachi.FeedforwardBatcher(affine, **options) as b:
            return await asyncio.gather(*(b.run(x) for x in inputs))

    results = run_async(main())
    for x, result in zip(inputs, results, strict=True):
        assert type(result["y"]) is type(x["x"])
        np.testing.assert_array_equal(as_numpy(result["y"]), as_numpy(x["x"]) * 2 + 1)
        assert float(as_numpy(result["first"])) == float(as_numpy(x["x"])[0])


class Tensor:
    """The docs' toy tensor type: a wrapped NumPy array, immutable for the user."""

    def __init__(self, data: Any) -> None:
        self.data = np.asarray(data)
        self.shape, self.dtype = self.data.shape, self.data.dtype


class ToyBackend:
    """The docs' `Backend` example, which has neither ``stack`` nor ``pad_stack``."""

    name = "toy"

    def is_array(self, x: object) -> bool:
        return isinstance(x, Tensor)

    def device(self, x: Any) -> Any:
        return "cpu"

    def can_cast(self, from_dtype: Any, to_dtype: Any) -> bool:
        return bool(np.can_cast(from_dtype, to_dtype, casting="safe"))

    def to_storage(self, x: Any, like: Any) -> Any:
        data = x.data if isinstance(x, Tensor) else x
        return np.array(data, dtype=like.dtype, copy=True)

    def full(self, shape: tuple[int, ...], fill: Any) -> Any:
        buf = np.empty(shape, dtype=fill.dtype)
        buf[...] = fill
        return buf

    def zeros_bool(self, shape: tuple[int, ...], like: Any) -> Any:
        return np.zeros(shape, dtype=bool)

    def rows_equal(self, rows: Any, token: Any) -> Any:
        return (rows == token).reshape(len(rows), -1).all(axis=1)

    def to_user(self, x: Any) -> Any:
        return Tensor(x)

    def unbind(self, x: Any) -> list[Any]:
        return [Tensor(row) for row in x.data]

    def inference_context(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


def test_a_user_backend_without_stack_batches_through_the_protocol() -> None:
    backend = ToyBackend()
    calls: list[tuple[int, ...]] = []

    def model(batch: Tensor) -> Tensor:
        calls.append(batch.shape)
        return Tensor(batch.data.sum(axis=1))  # padding with 0 leaves the sums alone

    for pad in (None, 0):
        calls.clear()
        options: dict[str, Any] = {"backend": backend, "max_batch_size": 8}
        if pad is not None:
            options["pad_value"] = pad
        lengths = [2, 2, 2] if pad is None else [1, 3, 2]
        with hibachi.FeedforwardBatcher(model, **options) as b:
            handles = [b.run(Tensor(np.arange(n) + 5)) for n in lengths]
            results = [handle.result(TIMEOUT) for handle in handles]
        assert calls and all(shape[0] <= 3 for shape in calls)
        for n, result in zip(lengths, results, strict=True):
            assert isinstance(result, Tensor)
            assert int(result.data) == int((np.arange(n) + 5).sum())


def test_an_output_that_cannot_be_trimmed_is_retried_not_fatal_to_the_engine() -> None:
    model = lambda batch: Tensor(batch.data + 1)  # noqa: E731 - rows of Tensor cannot be sliced
    options = {"backend": ToyBackend(), "pad_value": 0, "trim_output": True}
    options |= {"max_batch_size": 2, "max_wait": 10.0}  # the two share one batch
    with hibachi.FeedforwardBatcher(model, **options) as b:
        short, long = b.run(Tensor(np.arange(1))), b.run(Tensor(np.arange(3)))
        # together the short row needs trimming, which fails; alone, neither does
        np.testing.assert_array_equal(short.result(TIMEOUT).data, [1])
        np.testing.assert_array_equal(long.result(TIMEOUT).data, [1, 2, 3])
    assert b.stats().retried_batches == 2
