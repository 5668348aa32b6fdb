""" "Casts safely" keeps every value, for every backend; torch inputs never carry autograd."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import hibachi

pytestmark = pytest.mark.usefixtures("no_leaked_engines")


def library(name: str) -> Any:
    return {"numpy": np, "torch": torch}[name]


def array(name: str, values: list[Any], dtype: str) -> Any:
    lib = library(name)
    return (
        lib.tensor(values, dtype=getattr(torch, dtype))
        if lib is torch
        else np.array(values, dtype=dtype)
    )


def batcher(name: str, dtype: str, model: Any = None, **options: Any) -> Any:
    def next_one(tokens: Any, mask: Any) -> Any:
        return tokens[:, -1] + 1

    return hibachi.AutoregressiveBatcher(
        model or next_one,
        stop_token=array(name, [99], dtype)[0],
        pad_value=array(name, [0], dtype)[0],
        max_batch_size=2,
        **options,
    )


NARROWING = [
    ("int64", "uint8", [300, 1000]),
    ("int64", "int32", [2**40, 1]),
    ("int32", "int16", [70000, 1]),
    ("int16", "int8", [-300, 1]),
    ("uint8", "int8", [200, 1]),
    ("float32", "int64", [0.5, 1.0]),
    ("float64", "float32", [1e-50, 1.0]),
    ("int64", "float32", [2**40 + 1, 1]),
    ("int64", "bool", [2, 0]),
]


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize(("given", "held", "values"), NARROWING)
def test_a_prompt_that_would_narrow_is_refused(
    name: str, given: str, held: str, values: list[Any]
) -> None:
    with batcher(name, held) as b, pytest.raises(hibachi.InvalidRequest, match="cast safely"):
        b.run(array(name, values, given))


WIDENING = [("uint8", "int64"), ("int32", "int64"), ("bool", "int16"), ("int16", "float32")]


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize(("given", "held"), WIDENING)
def test_a_prompt_that_widens_is_served(name: str, given: str, held: str) -> None:
    with batcher(name, held) as b:
        tokens = [int(t) for t in b.run(array(name, [1, 1], given), max_new_tokens=3)]
        assert tokens == [2, 3, 4]


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize(("given", "held", "values"), NARROWING)
def test_a_model_output_that_would_narrow_is_a_model_error(
    name: str, given: str, held: str, values: list[Any]
) -> None:
    def narrowing(tokens: Any, mask: Any) -> Any:
        return array(name, values[:1] * tokens.shape[0], given)

    with batcher(name, held, narrowing) as b:
        with pytest.raises(hibachi.ModelError, match="does not cast safely"):
            list(b.run(array(name, [1], held)))
        assert b.health().ok()


def test_torch_bfloat16_casts_like_its_values() -> None:
    from hibachi._backends import backend_of

    backend = backend_of(torch.zeros(1))
    assert backend is not None
    assert backend.can_cast(torch.bfloat16, torch.float32)
    assert backend.can_cast(torch.uint8, torch.bfloat16)
    assert not backend.can_cast(torch.float16, torch.bfloat16)
    assert not backend.can_cast(torch.bfloat16, torch.float16)
    assert not backend.can_cast(torch.int16, torch.bfloat16)


def test_a_prompt_that_requires_grad_builds_no_graph() -> None:
    seen: list[bool] = []

    def model(tokens: Any, mask: Any) -> Any:
        seen.append(tokens.requires_grad)
        return tokens[:, -1] + 1

    pad = torch.zeros((), requires_grad=True)
    with batcher("torch", "float32", model, max_new_tokens=5) as b:
        prompt = torch.ones(3, requires_grad=True)
        tokens = list(b.run(prompt))
        assert [float(t) for t in tokens] == [2, 3, 4, 5, 6]
        assert not any(t.requires_grad for t in tokens)
        buffer = b._scheduler.layout
        assert not buffer.tokens.requires_grad and buffer.tokens.grad_fn is None
    assert seen and not any(seen)
    with hibachi.AutoregressiveBatcher(
        model, stop_token=torch.tensor(99.0), pad_value=pad, max_new_tokens=2
    ) as b:
        assert [float(t) for t in b.run(prompt)] == [2, 3]
        assert not b._scheduler.layout.tokens.requires_grad
    assert not any(seen)


def test_a_sparse_prompt_is_read_as_its_dense_values() -> None:
    with batcher("torch", "int64") as b:
        prompt = torch.tensor([0, 0, 3]).to_sparse()
        assert [int(t) for t in b.run(prompt, max_new_tokens=2)] == [4, 5]
