"""Backends: NumPy, PyTorch, JAX, a generic array-API library, and a user's own."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import array_api_compat
import array_api_strict
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hibachi
from support.models import run_async

pytestmark = pytest.mark.usefixtures("no_leaked_engines")

STOP = 5
MOD = 97


def sum_model(tokens: Any, mask: Any) -> Any:
    """Next token: (sum of the row's real tokens + their count) mod 97, in any array-API library."""
    xp = array_api_compat.array_namespace(tokens, mask)
    token_dims = tokens.ndim - 2
    wide_mask = xp.reshape(mask, (*mask.shape, *(1,) * token_dims))
    total = xp.sum(xp.where(wide_mask, tokens, xp.zeros_like(tokens)), axis=1)
    count = xp.sum(xp.astype(mask, tokens.dtype), axis=1)
    return (total + xp.reshape(count, (count.shape[0], *(1,) * token_dims))) % MOD


def expected(prompt: np.ndarray[Any, Any], budget: int) -> list[Any]:
    sequence = [np.array(token) for token in prompt]
    out: list[Any] = []
    for _ in range(budget):
        token = (sum(sequence) + len(sequence)) % MOD
        out.append(token.tolist())
        sequence.append(token)
        if (token == STOP).all():
            break
    return out


class Library:
    """How to make arrays of one library and recognise them."""

    def __init__(
        self,
        name: str,
        make: Callable[[np.ndarray[Any, Any]], Any],
        array_type: type,
        to_host: Callable[[Any], np.ndarray[Any, Any]] = np.asarray,
    ) -> None:
        self.name, self.make, self.array_type, self.to_host = name, make, array_type, to_host


LIBRARIES = [
    pytest.param(Library("numpy", np.asarray, np.ndarray | np.generic), id="numpy"),  # type: ignore[arg-type]
    pytest.param(Library("torch", torch.from_numpy, torch.Tensor, lambda x: x.numpy()), id="torch"),
    pytest.param(Library("jax", jnp.asarray, jax.Array), id="jax"),
    pytest.param(
        Library(
            "array-api-strict",
            array_api_strict.asarray,
            type(array_api_strict.asarray(0)),
            np.from_dlpack,
        ),
        id="array-api-strict",
    ),
]


def dtype_for(library: Library) -> Any:
    return np.int32 if library.name == "jax" else np.int64  # JAX is 32-bit unless x64 is on


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("token_shape", [(), (3,)], ids=["scalar", "vector"])
def test_streams_are_correct_and_in_the_callers_library(
    library: Library, token_shape: tuple[int, ...]
) -> None:
    dtype = dtype_for(library)
    seen_types: set[type] = set()

    def model(tokens: Any, mask: Any) -> Any:
        seen_types.update({type(tokens), type(mask)})
        if library.name == "jax":  # eager JAX compiles every op for every new width: slow
            return jnp.asarray(sum_model(np.asarray(tokens), np.asarray(mask)))
        return sum_model(tokens, mask)

    prompts = [
        (np.arange(length * int(np.prod(token_shape))) + length).reshape(length, *token_shape)
        for length in (1, 4, 2, 7)
    ]
    prompts = [p.astype(dtype) for p in prompts]
    batcher = hibachi.AutoregressiveBatcher(
        model,
        stop_token=library.make(np.full(token_shape, STOP, dtype=dtype)),
        pad_value=library.make(np.full(token_shape, 11, dtype=dtype)),
        max_batch_size=4,
    )

    async def main() -> list[list[Any]]:
        async with batcher:
            streams = [batcher.run(library.make(p), max_new_tokens=12) for p in prompts]
            return await asyncio.gather(*(s.collect() for s in streams))

    results = run_async(main())
    for prompt, tokens in zip(prompts, results, strict=True):
        assert all(isinstance(token, library.array_type) for token in tokens)
        assert [library.to_host(token).tolist() for token in tokens] == expected(prompt, 12)
    assert all(issubclass(kind, library.array_type) for kind in seen_types)
    assert batcher.stats().mean_batch_fill > 0.25


def test_torch_tokens_come_back_on_the_callers_device() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pad = torch.tensor(0, device=device)
    with hibachi.AutoregressiveBatcher(
        sum_model, stop_token=torch.tensor(STOP, device=device), pad_value=pad
    ) as batcher:
        tokens = list(batcher.run(torch.tensor([1, 2], device=device), max_new_tokens=3))
        with pytest.raises(hibachi.InvalidRequest):
            batcher.run(torch.tensor([1, 2], dtype=torch.float32, device=device))
    assert all(token.device == device for token in tokens)
    assert [int(token) for token in tokens] == expected(np.array([1, 2]), 3)


def test_import_hibachi_imports_no_tensor_library() -> None:
    code = """
import sys
import numpy as np
import hibachi
heavy = {"torch", "jax", "jaxlib", "array_api_strict", "cupy"}
assert not heavy & set(sys.modules), heavy & set(sys.modules)
with hibachi.AutoregressiveBatcher(lambda t, m: t[:, -1] + 1, stop_token=3, pad_value=0) as b:
    assert [int(t) for t in b.run(np.array([1]))] == [2, 3]
assert not heavy & set(sys.modules), heavy & set(sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# -- a library hibachi does not know ---------------------------------------------------------------


class Boxed:
    """A toy tensor type: a read-only wrapper around a NumPy array."""

    def __init__(self, data: Any) -> None:
        self.data = np.asarray(data)
        self.shape, self.dtype = self.data.shape, self.data.dtype


class BoxedBackend:
    """Storage in NumPy, Boxed arrays outside."""

    name = "boxed"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def is_array(self, x: object) -> bool:
        return isinstance(x, Boxed)

    def device(self, x: Any) -> Any:
        return "box"

    def can_cast(self, from_dtype: Any, to_dtype: Any) -> bool:
        return bool(np.can_cast(from_dtype, to_dtype, casting="safe"))

    def to_storage(self, x: Any, like: Any) -> Any:
        self._count("to_storage")
        return np.array(x.data if isinstance(x, Boxed) else x, dtype=like.dtype, copy=True)

    def full(self, shape: tuple[int, ...], fill: Any) -> Any:
        buf = np.empty(shape, dtype=fill.dtype)
        buf[...] = fill
        return buf

    def zeros_bool(self, shape: tuple[int, ...], like: Any) -> Any:
        return np.zeros(shape, dtype=bool)

    def rows_equal(self, rows: Any, token: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
        result: np.ndarray[Any, np.dtype[np.bool_]] = (rows == token).reshape(len(rows), -1).all(1)
        return result

    def to_user(self, x: Any) -> Any:
        self._count("to_user")
        return Boxed(x)

    def unbind(self, x: Any) -> Sequence[Any]:
        return [Boxed(row) for row in x.data]

    def inference_context(self) -> contextlib.AbstractContextManager[Any]:
        self._count("inference_context")
        return contextlib.nullcontext()


def boxed_model(tokens: Boxed, mask: Boxed) -> Boxed:
    assert isinstance(tokens, Boxed) and isinstance(mask, Boxed)
    return Boxed((np.where(mask.data, tokens.data, 0).sum(axis=1) + mask.data.sum(axis=1)) % MOD)


def run_boxed(backend: BoxedBackend | None) -> list[Any]:
    with hibachi.AutoregressiveBatcher(
        boxed_model,
        stop_token=Boxed(np.int64(STOP)),
        pad_value=Boxed(np.int64(0)),
        backend=backend,
    ) as batcher:
        with pytest.raises(hibachi.InvalidRequest, match="boxed array, got numpy"):
            batcher.run(np.array([1, 2]))
        tokens = list(batcher.run(Boxed(np.array([1, 1])), max_new_tokens=4))
    assert all(isinstance(token, Boxed) for token in tokens)
    return [int(token.data) for token in tokens]


def test_a_backend_given_to_the_batcher() -> None:
    backend = BoxedBackend()
    assert isinstance(backend, hibachi.Backend)
    assert run_boxed(backend) == expected(np.array([1, 1]), 4)
    assert backend.calls["inference_context"] >= 1 and backend.calls["to_user"] >= 2


def test_a_registered_backend() -> None:
    backend = BoxedBackend()
    hibachi.register_backend(Boxed, backend)
    assert run_boxed(None) == expected(np.array([1, 1]), 4)
    assert backend.calls["to_storage"] >= 3


def test_register_backend_refuses_what_is_no_backend() -> None:
    with pytest.raises(TypeError, match=r"does not implement hibachi\.Backend"):
        hibachi.register_backend(Boxed, object())  # type: ignore[arg-type]


@pytest.mark.parametrize("guard", [True, False], ids=["c-guard", "without-it"])
def test_torch_calls_run_in_inference_mode(guard: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from hibachi._backends._array_api import TorchBackend

    if not guard:  # a torch without the C guard: torch.inference_mode instead
        monkeypatch.delattr(torch._C, "_InferenceMode")
    backend = TorchBackend()
    monkeypatch.undo()
    with backend.inference_context():
        assert torch.is_inference_mode_enabled()
    assert not torch.is_inference_mode_enabled()
