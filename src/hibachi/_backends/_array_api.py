"""Backends for libraries that speak the array API, through array-api-compat.

`ArrayAPIBackend` serves any library whose arrays support in-place slice
assignment (NumPy, PyTorch, CuPy, array-api-strict, …). `NumpyBackend` and
`TorchBackend` add fast paths for the calls made once per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ArrayAPIBackend", "NumpyBackend", "TorchBackend"]


class ArrayAPIBackend:
    """A backend over an array-API namespace ``xp`` with mutable arrays."""

    def __init__(self, xp: Any, name: str | None = None) -> None:
        self.xp = xp
        self.name: str = name or str(getattr(xp, "__name__", "array-api"))

    def is_array(self, x: object) -> bool:
        import array_api_compat

        if not array_api_compat.is_array_api_obj(x):
            return False
        try:
            return array_api_compat.array_namespace(x) is self.xp
        except TypeError:
            return False

    def device(self, x: Any) -> Any:
        import array_api_compat

        return array_api_compat.device(x)

    def can_cast(self, from_dtype: Any, to_dtype: Any) -> bool:
        return bool(self.xp.can_cast(from_dtype, to_dtype))

    def to_storage(self, x: Any, like: Any) -> Any:
        return self.xp.asarray(x, dtype=like.dtype, device=self.device(like), copy=True)

    def full(self, shape: tuple[int, ...], fill: Any) -> Any:
        buf = self.xp.empty(shape, dtype=fill.dtype, device=self.device(fill))
        buf[...] = fill
        return buf

    def zeros_bool(self, shape: tuple[int, ...], like: Any) -> Any:
        return self.xp.zeros(shape, dtype=self.xp.bool, device=self.device(like))

    def rows_equal(self, rows: Any, token: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
        xp = self.xp
        equal = xp.reshape(rows == token, (rows.shape[0], -1))
        return _to_numpy(xp.all(equal, axis=1))

    def to_user(self, x: Any) -> Any:
        return x

    def unbind(self, x: Any) -> Sequence[Any]:
        return [x[i, ...] for i in range(x.shape[0])]

    def inference_context(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def stack(self, xs: Sequence[Any]) -> Any:
        return self.xp.stack(list(xs))

    def pad_stack(self, xs: Sequence[Any], length: int, fill: Any) -> Any:
        first = xs[0]
        shape = (len(xs), length, *first.shape[1:])
        out = self.xp.full(shape, fill, dtype=first.dtype, device=self.device(first))
        for i, x in enumerate(xs):
            out[i, : x.shape[0], ...] = x
        return out


class NumpyBackend(ArrayAPIBackend):
    """NumPy, with native calls on the per-step path."""

    def __init__(self) -> None:
        import array_api_compat.numpy as xp

        super().__init__(xp, name="numpy")

    def is_array(self, x: object) -> bool:
        return isinstance(x, np.ndarray | np.generic)

    def device(self, x: Any) -> Any:
        return "cpu"

    def can_cast(self, from_dtype: Any, to_dtype: Any) -> bool:
        return bool(np.can_cast(from_dtype, to_dtype, casting="safe"))

    def to_storage(self, x: Any, like: Any) -> Any:
        return np.array(x, dtype=like.dtype, copy=True)

    def full(self, shape: tuple[int, ...], fill: Any) -> Any:
        buf = np.empty(shape, dtype=fill.dtype)
        buf[...] = fill
        return buf

    def zeros_bool(self, shape: tuple[int, ...], like: Any) -> Any:
        return np.zeros(shape, dtype=bool)

    def rows_equal(self, rows: Any, token: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
        result: np.ndarray[Any, np.dtype[np.bool_]]
        result = (rows == token).reshape(rows.shape[0], -1).all(axis=1)
        return result

    def unbind(self, x: Any) -> Sequence[Any]:
        return list(x)

    def host_view(self, x: Any) -> np.ndarray[Any, Any] | None:
        return x if isinstance(x, np.ndarray) else None

    def host_values(self, x: Any) -> list[Any]:
        values: list[Any] = x.tolist()
        return values

    def stack(self, xs: Sequence[Any]) -> Any:
        first = xs[0]
        if type(first) is np.ndarray and first.ndim:
            # one C call, where np.stack makes a view per array: faster for small rows
            return np.concatenate(xs).reshape(len(xs), *first.shape)
        return np.stack(xs)

    def as_batch(self, x: Any) -> Any:
        # a subclass (np.matrix, a masked array) may index differently: stacked instead
        return x[None] if type(x) is np.ndarray and x.flags.c_contiguous else None

    def pad_stack(self, xs: Sequence[Any], length: int, fill: Any) -> Any:
        first = xs[0]
        out = np.full((len(xs), length, *first.shape[1:]), fill, dtype=first.dtype)
        for i, x in enumerate(xs):
            out[i, : x.shape[0]] = x
        return out


class TorchBackend(ArrayAPIBackend):
    """PyTorch; model calls run under ``torch.inference_mode``."""

    def __init__(self) -> None:
        import array_api_compat.torch as xp

        super().__init__(xp, name="torch")
        import torch

        self._torch = torch
        # torch.inference_mode enters this C guard through two Python layers: a third the cost
        guard = getattr(torch._C, "_InferenceMode", None)
        self._inference_guard = guard if callable(guard) else None

    def is_array(self, x: object) -> bool:
        return isinstance(x, self._torch.Tensor)

    def device(self, x: Any) -> Any:
        return x.device

    def can_cast(self, from_dtype: Any, to_dtype: Any) -> bool:
        # torch.can_cast allows narrowing (int64 -> uint8): hibachi needs every value kept.
        return _torch_can_cast(self._torch, from_dtype, to_dtype)

    def to_storage(self, x: Any, like: Any) -> Any:
        # detached: a prompt that requires grad must not make the buffers part of a graph
        if x.layout != self._torch.strided:
            x = x.to_dense()
        if x.dtype == like.dtype and x.device == like.device and not x.requires_grad:
            return x.clone()  # one call, where ``to`` costs three times as much per step
        return x.detach().to(device=like.device, dtype=like.dtype, copy=True)

    def host_view(self, x: Any) -> np.ndarray[Any, Any] | None:
        if x.device.type != "cpu" or str(x.dtype) not in _NUMPY_OF or x.requires_grad:
            return None
        view: np.ndarray[Any, Any] = x.numpy()
        return view

    def host_values(self, x: Any) -> list[Any]:
        values: list[Any] = x.tolist()
        return values

    def rows_equal(self, rows: Any, token: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
        equal = (rows == token).reshape(rows.shape[0], -1).all(dim=1)
        result: np.ndarray[Any, np.dtype[np.bool_]] = equal.cpu().numpy()
        return result

    def unbind(self, x: Any) -> Sequence[Any]:
        rows: Sequence[Any] = x.unbind(0)
        return rows

    def stack(self, xs: Sequence[Any]) -> Any:
        return self._torch.stack(list(xs))

    def as_batch(self, x: Any) -> Any:
        # ``x[None]`` costs a third of ``unsqueeze(0)``; a subclass, a sparse or non-contiguous
        # tensor, or one that requires grad is stacked instead, as in a batch of many
        if type(x) is self._torch.Tensor and x.is_contiguous() and not x.requires_grad:
            return x[None]
        return None

    def pad_stack(self, xs: Sequence[Any], length: int, fill: Any) -> Any:
        first = xs[0]
        shape = (len(xs), length, *first.shape[1:])
        out = self._torch.full(shape, fill, dtype=first.dtype, device=first.device)
        for i, x in enumerate(xs):
            out[i, : x.shape[0]] = x
        return out

    def inference_context(self) -> contextlib.AbstractContextManager[Any]:
        guard = self._inference_guard
        mode: contextlib.AbstractContextManager[Any] = (
            self._torch.inference_mode() if guard is None else guard(True)
        )
        return mode


def _torch_can_cast(torch: Any, src: Any, dst: Any) -> bool:
    """Whether every value of torch dtype ``src`` is a value of ``dst``: NumPy's "safe" rule."""
    if src == dst:
        return True
    a, b = _NUMPY_OF.get(str(src)), _NUMPY_OF.get(str(dst))
    if a is not None and b is not None:
        return bool(np.can_cast(a, b, casting="safe"))
    if src == torch.bfloat16:  # float32's exponent, 8 significant bits
        return dst in (torch.float32, torch.float64, torch.complex64, torch.complex128)
    if dst == torch.bfloat16:
        return src in (torch.bool, torch.uint8, torch.int8)
    return False


_NUMPY_OF = {
    f"torch.{name}": np.dtype(name)
    for name in (
        "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
}  # fmt: skip
"""The torch dtypes that have a NumPy twin, by name (``str(torch.int64)``)."""


def _to_numpy(x: Any) -> np.ndarray[Any, Any]:
    """Bring a small array to the host as NumPy, whatever its library."""
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return np.asarray(x.get())
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)
