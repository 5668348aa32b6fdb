"""What a memory-bounded `IncrementalModel` adds to a `SlotLayout`.

Such a model is asked whether a request's prompt fits before the request
takes a slot (`admitted`: its ``admit``, checked) and for room before each
step (its ``reserve``). A row it has no room for is *preempted*: its memory
goes to others and its request is queued again with the tokens it has
produced appended to its prompt, to be fed afresh when memory allows.
`TokenLog` keeps those tokens, one storage row per active row, written once
per step with the step's tokens (through NumPy views where the storage has
them, as the layout's own writes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._backends import Backend
from .._core.model import is_fatal, model_error
from .._core.values import describe_value
from .._exceptions import ModelError
from .layout import RowIndex

__all__ = ["Admit", "Reserve", "TokenLog", "admitted"]

Admit = Callable[[int, Any, Any, int], "int | None"]
"""``admit(slot, prompt, options, generated)``: see `IncrementalModel.admit`."""

Reserve = Callable[[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, Any]], bool]
"""``reserve(slots, counts)``: see `IncrementalModel.reserve`."""


def admitted(
    admit: Admit, slot: int, prompt: Any, length: int, options: Any, generated: int
) -> int | None:
    """``admit``'s answer for a prompt of ``length`` tokens: how many the model holds, or
    None (no memory). `ModelError` if it raised (chained) or said something else; a
    fatal exception (`is_fatal`) propagates."""
    try:
        held = admit(slot, prompt, options, generated)
    except BaseException as exc:
        if is_fatal(exc):
            raise
        raise model_error(exc) from exc
    if held is None:
        return None
    if isinstance(held, bool) or not isinstance(held, int) or not 0 <= held < length:
        raise ModelError(
            f"admit() returned {describe_value(held)} for a prompt of {length} tokens, "
            f"expected None or an int in 0 … {length - 1}"
        )
    return held


class TokenLog:
    """The tokens produced by each of up to ``rows`` rows since it entered."""

    def __init__(self, backend: Backend, padding: Any, rows: int, writes: Any) -> None:
        """``writes``: the layout's `slots.writes_for` (how its storage is written)."""
        self._backend = backend
        self._padding = padding
        self._writes = writes
        self.counts = np.zeros(rows, dtype=np.int64)
        self._all = np.arange(rows)
        self._allocate(rows, 16)

    def _allocate(self, rows: int, capacity: int) -> None:
        shape = (rows, capacity, *self._padding.shape)
        self._tokens = self._backend.full(shape, self._padding)
        self._target = self._writes.target(self._tokens)
        self.capacity = capacity

    def start(self, row: int) -> None:
        """Row ``row`` begins a request: it has produced nothing yet."""
        self.counts[row] = 0

    def add(self, rows: RowIndex | None, n: int, values: Any) -> None:
        """Rows ``rows`` (None: rows < n) produced ``values`` (as the layout's writes hold
        a step's tokens: a list, or an array, one per row)."""
        index = self._all[:n] if rows is None else rows
        columns = self.counts[index]
        if columns.size and int(columns.max()) >= self.capacity:
            self._grow()
        self._target[index, columns] = values
        self.counts[index] = columns + 1

    def move(self, source: int, row: int) -> None:
        """Row ``source``'s tokens become row ``row``'s (the scheduler's rows stay dense)."""
        count = int(self.counts[source])
        self._target[row, :count] = self._target[source, :count]
        self.counts[row] = count

    def sequence(self, row: int, prompt: Any) -> Any:
        """A new storage array: ``prompt`` (a target, as the layout holds prompts) followed
        by the tokens row ``row`` has produced."""
        length, count = int(prompt.shape[0]), int(self.counts[row])
        whole = self._backend.full((length + count, *self._padding.shape), self._padding)
        target = self._writes.target(whole)
        target[:length] = prompt
        target[length:] = self._target[row, :count]
        return whole

    def _grow(self) -> None:
        target, capacity = self._target, self.capacity
        self._allocate(int(self.counts.size), 2 * capacity)
        self._target[:, :capacity] = target
