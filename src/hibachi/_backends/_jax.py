"""JAX: arrays are immutable, so hibachi's buffers live in NumPy on the host."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._array_api import NumpyBackend

__all__ = ["JaxBackend"]


class JaxBackend(NumpyBackend):
    """JAX arrays outside, NumPy storage inside.

    JAX arrays cannot be written in place, so the buffers are NumPy and every
    model call receives a fresh JAX copy of the window (O(B·S) per step in the
    stateless mode; only the new tokens in the incremental mode).
    """

    def __init__(self) -> None:
        super().__init__()
        import jax
        import jax.numpy as jnp

        self.name = "jax"
        self._jax = jax
        self._jnp = jnp

    def is_array(self, x: object) -> bool:
        return isinstance(x, self._jax.Array)

    def device(self, x: Any) -> Any:
        if isinstance(x, np.ndarray | np.generic):
            return self._jax.devices("cpu")[0]
        return next(iter(x.devices()))

    def can_cast(self, from_dtype: Any, to_dtype: Any) -> bool:
        return bool(self._jnp.can_cast(from_dtype, to_dtype))

    def to_storage(self, x: Any, like: Any) -> Any:
        return np.array(x, dtype=like.dtype, copy=True)

    def to_user(self, x: Any) -> Any:
        return self._jnp.asarray(x)

    def unbind(self, x: Any) -> Sequence[Any]:
        return [x[i] for i in range(x.shape[0])]

    def stack(self, xs: Sequence[Any]) -> Any:
        return self._jnp.stack(list(xs))

    def as_batch(self, x: Any) -> Any:
        # immutable arrays: a copy is no hazard, and ``jnp.stack`` costs less than ``x[None]``
        return None

    def pad_stack(self, xs: Sequence[Any], length: int, fill: Any) -> Any:
        jnp = self._jnp
        return jnp.stack([jnp.pad(x, _right(x, length), constant_values=fill) for x in xs])


def _right(x: Any, length: int) -> list[tuple[int, int]]:
    """``jnp.pad`` widths that right-pad axis 0 of ``x`` to ``length``."""
    return [(0, length - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
