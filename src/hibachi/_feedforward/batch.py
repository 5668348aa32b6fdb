"""A feedforward batch: its items stacked into the model's input, and the
model's output split back into one result per item."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._backends import Backend, backend_of
from .._backends._stacking import pad_stack, stack, stack_one
from .._exceptions import ModelError
from .item import Item, Layout
from .nesting import LEAF, Structure, flatten, unflatten

__all__ = ["Batch", "assemble", "split"]


class Batch:
    """Items of one layout that go through the model together.

    ``length`` is the longest padded first axis among them (0 if unpadded):
    every padded leaf is padded to it, so that trimming an output back to an
    item's own length gives what the item gets in a batch of its own.
    """

    __slots__ = ("items", "layout", "length", "tries")

    def __init__(self, items: list[Item], layout: Layout) -> None:
        self.items = items
        self.layout = layout
        self.length = max(item._length for item in items) if layout.padded else 0
        self.tries = 0  # the model calls this very batch has failed

    def __len__(self) -> int:
        return len(self.items)

    def halves(self) -> tuple[Batch, Batch]:
        middle = len(self.items) // 2
        return Batch(self.items[:middle], self.layout), Batch(self.items[middle:], self.layout)


def assemble(batch: Batch) -> tuple[Any, int, int]:
    """The model's input for ``batch``, the cells it holds, and how many are padding.

    A batch of one item that needs no padding is the item's own arrays with a
    new axis 0, views where the backend makes them (see `stack_one`): no copy.
    """
    layout, items = batch.layout, batch.items
    backend = layout.backend
    if layout.structure is LEAF:
        xs = [item._leaves for item in items]
        leaf, padding = _column(backend, xs, layout.pads[0], batch.length)
        return leaf, math.prod(leaf.shape), padding
    columns = zip(*(item._leaves for item in items), strict=True)
    leaves, cells, padding = [], 0, 0
    for column, pad in zip(columns, layout.pads, strict=True):
        leaf, padded = _column(backend, column, pad, batch.length)
        cells += math.prod(leaf.shape)
        padding += padded
        leaves.append(leaf)
    return unflatten(layout.structure, iter(leaves)), cells, padding


def _column(backend: Backend, xs: Sequence[Any], pad: Any, length: int) -> tuple[Any, int]:
    """The batch's leaf from its items' leaves ``xs``, and how many of its cells are padding."""
    if len(xs) == 1 and (pad is None or xs[0].shape[0] == length):
        return stack_one(backend, xs[0]), 0
    if pad is None:
        return stack(backend, xs), 0
    leaf = pad_stack(backend, xs, length, pad)
    return leaf, math.prod(leaf.shape) - sum(math.prod(x.shape) for x in xs)


def split(output: Any, batch: Batch, trim: bool, copy: bool = True) -> list[Any]:
    """One result per item of ``batch``, from the model's batch-major ``output``.

    With ``trim``, a result leaf whose first axis has the batch's padded length
    is cut back to its item's own length. With ``copy``, each result leaf is an
    array of its own (see `owned`), not a view of ``output``. Raises
    `ModelError` if ``output`` is not an array or a nesting of arrays with one
    row per item.
    """
    count = len(batch.items)
    own = batch.layout.backend
    backends: list[Backend | None]
    if own.is_array(output):
        structure, backends = LEAF, [own]
        columns = [_rows(output, count, own)]
    else:
        _refuse_one_per_item(output, count, batch.layout.structure)
        structure, leaves = flatten(output, lambda x: _backend_of(x, own) is not None)
        backends = [_backend_of(leaf, own) for leaf in leaves]
        columns = [
            _rows(leaf, count, backend) for leaf, backend in zip(leaves, backends, strict=True)
        ]
    if trim and batch.length:
        columns = [_trimmed(column, batch) for column in columns]
    if copy:
        columns = [_owned_rows(c, b) for c, b in zip(columns, backends, strict=True)]
    return _regroup(structure, columns)


def _owned_rows(rows: Sequence[Any], backend: Backend | None) -> list[Any]:
    """`owned` of each of ``rows`` (the rows of one array: all of one type)."""
    if rows and type(rows[0]) is np.ndarray:
        return [row.copy() for row in rows]
    if rows and backend is not None and backend.name == "torch" and backend.is_array(rows[0]):
        return [row.clone() for row in rows]
    return [owned(row, backend) for row in rows]


def owned(row: Any, backend: Backend | None) -> Any:
    """``row`` as an array that owns its memory: not a view that keeps the whole
    batch's output alive, and (torch) an ordinary tensor, not an inference one."""
    if isinstance(row, np.ndarray):
        return row.copy()
    if isinstance(row, np.generic):
        return row  # a NumPy scalar is its own copy
    if backend is None or backend.name == "jax" or not backend.is_array(row):
        return row  # a scalar, or a JAX array: immutable, and its rows are copies already
    if backend.name == "torch":
        return row.clone()  # outside inference mode: an ordinary tensor
    return backend.to_user(backend.to_storage(row, row))


def _refuse_one_per_item(output: Any, count: int, given: Structure) -> None:
    """`ModelError` if ``output`` may be one result per item rather than batch-major.

    That is: a list or tuple with exactly ``count`` elements (the batch's size)
    when the model was not given a list or tuple of that length (which its
    output may mirror). Such an output can be read two ways (``[f(x) for x
    in batch]``, or a nesting of batch-major arrays) and is never guessed at.
    """
    if not isinstance(output, list | tuple) or len(output) != count:
        return
    if given is not LEAF and given[0] != "dict" and len(given[1]) == count:
        return
    kind = type(output).__name__
    raise ModelError(
        f"the model returned a {kind} of {count} elements for a batch of {count} items: "
        "one result per item, or a nesting of batch-major arrays? Return one batch-major "
        "array (stack the per-item results), or a dict of them"
    )


def _backend_of(x: Any, own: Backend) -> Backend | None:
    """The batch's own backend if ``x`` is one of its arrays (it may be unregistered), else any."""
    if own.is_array(x):
        return own
    found = backend_of(x)
    return found if found is not None and found.is_array(x) else None


def _rows(leaf: Any, count: int, backend: Backend | None) -> Sequence[Any]:
    if backend is None:
        raise ModelError(
            f"the model returned {type(leaf).__module__}.{type(leaf).__qualname__} where an "
            "array with one row per item was expected"
        )
    shape = tuple(leaf.shape)
    if not shape or shape[0] != count:
        raise ModelError(
            f"the model returned an array of shape {shape} for a batch of {count}: "
            f"its first axis must have {count} rows, one per item"
        )
    rows: Sequence[Any] = backend.unbind(leaf)
    return rows


def _trimmed(rows: Sequence[Any], batch: Batch) -> list[Any]:
    longest = batch.length
    return [
        row[: item._length] if item._length < longest and _first_axis(row) == longest else row
        for row, item in zip(rows, batch.items, strict=True)
    ]


def _first_axis(row: Any) -> int | None:
    shape: tuple[int, ...] = tuple(getattr(row, "shape", ()))
    return int(shape[0]) if shape else None


def _regroup(structure: Structure, columns: list[Sequence[Any]]) -> list[Any]:
    if structure is LEAF:
        return list(columns[0]) if not isinstance(columns[0], list) else columns[0]
    if not columns:
        raise ModelError("the model returned an empty nesting: no array to split per item")
    return [unflatten(structure, iter(row)) for row in zip(*columns, strict=True)]
