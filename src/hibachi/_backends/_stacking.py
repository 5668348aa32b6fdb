"""Stacking user arrays into a batch: the backend's own ``stack`` / ``pad_stack`` /
``as_batch`` when it has them (every built-in backend does), else through the storage
methods every `Backend` has (``to_storage``, ``full``, slice assignment, ``to_user``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._protocol import Backend

__all__ = ["pad_stack", "stack", "stack_one"]


def stack(backend: Backend, xs: Sequence[Any]) -> Any:
    """The user arrays ``xs`` (all of one shape) stacked along a new axis 0."""
    method = getattr(backend, "stack", None)
    if method is not None:
        return method(xs)
    rows = [backend.to_storage(x, x) for x in xs]
    out = backend.full((len(rows), *rows[0].shape), rows[0])
    for i, row in enumerate(rows):
        out[i] = row
    return backend.to_user(out)


def stack_one(backend: Backend, x: Any) -> Any:
    """User array ``x`` as a batch of one: the backend's view of it with a new axis 0
    (``as_batch``) where it makes one, else ``stack([x])``, a copy."""
    method = getattr(backend, "as_batch", None)
    if method is not None:
        batch = method(x)
        if batch is not None:
            return batch
    return stack(backend, [x])


def pad_stack(backend: Backend, xs: Sequence[Any], length: int, fill: Any) -> Any:
    """``xs`` right-padded with ``fill`` along axis 0 to ``length``, then stacked."""
    method = getattr(backend, "pad_stack", None)
    if method is not None:
        return method(xs, length, fill)
    rows = [backend.to_storage(x, x) for x in xs]
    longest = max(rows, key=lambda row: row.shape[0])
    out = backend.full((len(rows), length, *longest.shape[1:]), longest[:1])
    out[...] = fill
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return backend.to_user(out)
