"""The `Backend` protocol: what hibachi needs from a tensor library."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """The operations hibachi performs on a tensor library's arrays.

    hibachi keeps its buffers in *storage* arrays that it writes in place, and
    hands the model *user* arrays. For NumPy, PyTorch and CuPy both are the
    same arrays; for a library with immutable arrays (JAX) storage is NumPy and
    `to_user` copies. Every array argument below is a storage array unless its
    name says otherwise. Arrays must support ``.shape``, ``.dtype``, basic
    slicing, and (storage arrays) slice assignment ``a[key] = value``.

    Optional methods speed up the feedforward batcher, which otherwise
    builds its batches through the methods below (see
    ``hibachi._backends._stacking``): ``stack(xs)``, the user arrays ``xs``
    stacked along a new axis 0, and ``pad_stack(xs, length, fill)``, the same
    after right-padding each along axis 0 to ``length`` with the scalar ``fill``.
    A third, ``as_batch(x)``, is user array ``x`` as a batch of one (a new axis
    0) without a copy, for a batch of one item that needs no padding; or None
    where such a view would differ from ``stack([x])`` (not contiguous, part
    of an autograd graph …), and then ``x`` is stacked. The model then
    receives the caller's own memory: it must not write into its input.

    Two optional methods speed up the autoregressive batcher's steps (see
    ``hibachi._backends._host``): ``host_view(x)``, a NumPy array sharing the
    memory of storage array ``x``, or None where ``x`` is not on the host or its
    dtype has no NumPy twin; and ``host_values(x)``, storage ``x``'s values as
    (nested) Python lists, as ``tolist()`` gives them.

    See ``docs/backends.md`` for a worked example.
    """

    name: str

    def is_array(self, x: object) -> bool:
        """Whether ``x`` is a user array of this library."""
        ...

    def device(self, x: Any) -> Any:
        """The device a user array lives on (compared with ``==``)."""
        ...

    def can_cast(self, from_dtype: Any, to_dtype: Any) -> bool:
        """Whether ``from_dtype`` converts to ``to_dtype`` without loss."""
        ...

    def to_storage(self, x: Any, like: Any) -> Any:
        """A new storage array holding user array ``x`` with ``like``'s dtype and device."""
        ...

    def full(self, shape: tuple[int, ...], fill: Any) -> Any:
        """A new storage array of ``shape`` filled by broadcasting storage ``fill``."""
        ...

    def zeros_bool(self, shape: tuple[int, ...], like: Any) -> Any:
        """A new boolean storage array of ``shape`` on ``like``'s device."""
        ...

    def rows_equal(self, rows: Any, token: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """For each row of ``rows`` (n, *token_shape): whether it equals ``token`` everywhere.

        Returned on the host as a NumPy bool array of shape (n,).
        """
        ...

    def to_user(self, x: Any) -> Any:
        """The user array for storage ``x``: ``x`` itself where storage is mutable."""
        ...

    def unbind(self, x: Any) -> Sequence[Any]:
        """The rows of user array ``x`` along axis 0, as user arrays or scalars."""
        ...

    def inference_context(self) -> contextlib.AbstractContextManager[Any]:
        """A context entered around every model call (no autograd, for example)."""
        ...
