"""A preallocated, left-padded token buffer written in place.

Rows 0 … n-1 are the active sequences, right-aligned: every row's latest token
sits in column ``end - 1``, and the model sees the window ``[start, end)``.
Appending a step's tokens writes one column; the window moves right and the
buffer is re-laid out (doubling when it must grow) only when it runs out of
room, so the amortised cost of a step does not depend on sequence length.

Token indexing ends with ``...``: the array API (unlike NumPy) refuses an
index that names fewer axes than the array has.

Invariant: for rows < n, columns ``[start, end)`` hold padding (mask False)
then the row's tokens (mask True). Nothing else in the buffer is ever read.

It is the scheduler's `Layout` for stateless models: every step runs every
active row, in order, and each gets one new token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backends import Backend
from .._backends._host import host_view
from .layout import Emitted, gather_rows
from .request import Request

__all__ = ["SequenceBuffer"]

_MIN_CAPACITY = 16


class SequenceBuffer:
    """Token and mask storage for up to ``rows`` left-padded sequences."""

    stateful = False

    def __init__(self, backend: Backend, padding: Any, rows: int, capacity: int = 64) -> None:
        self._backend = backend
        self._padding = padding
        self._token_shape = tuple(padding.shape)
        self.rows = rows
        self.lengths = np.zeros(rows, dtype=np.int64)
        self.start = self.end = capacity // 4
        self._smallest = max(capacity, _MIN_CAPACITY)
        self._allocate(self._smallest)

    @property
    def capacity(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def width(self) -> int:
        return self.end - self.start

    def view(self, n: int) -> tuple[Any, Any]:
        """The tokens (n, width, *token_shape) and mask (n, width) of rows < n."""
        window = slice(self.start, self.end)
        return self.tokens[:n, window, ...], self.mask[:n, window]

    def admit(self, row: int, prompt: Any, n: int) -> None:
        """Write ``prompt`` (L, *token_shape) into ``row``; rows < n are active."""
        length = int(prompt.shape[0])
        self._widen(length, n)
        pad_end = self.end - length
        self.tokens[row, self.start : pad_end, ...] = self._padding
        self.tokens[row, pad_end : self.end, ...] = prompt
        self.mask[row, self.start : pad_end] = False
        self.mask[row, pad_end : self.end] = True
        self.lengths[row] = length

    def append(self, column: Any, n: int, host: Any = None) -> None:
        """Write one new token (n, *token_shape) at the end of rows < n (``host``:
        ``column``'s values as Python lists, written through the buffers' host views
        if they have one)."""
        if self.end == self.capacity:
            self._relocate(self.width, n)
        if host is not None and self._host is not None:
            tokens, mask = self._host
            tokens[:n, self.end, ...] = host
            mask[:n, self.end] = True
        else:
            self.tokens[:n, self.end, ...] = column
            self.mask[:n, self.end] = True
        self.lengths[:n] += 1
        self.end += 1

    def move(self, src: int, dst: int) -> None:
        """Copy row ``src``'s window into row ``dst`` (to keep active rows dense)."""
        window = slice(self.start, self.end)
        self.tokens[dst, window, ...] = self.tokens[src, window, ...]
        self.mask[dst, window] = self.mask[src, window]
        self.lengths[dst] = self.lengths[src]

    def trim(self, n: int) -> None:
        """Drop leading columns that hold only padding for rows < n."""
        longest = int(self.lengths[:n].max()) if n else 0
        self.start = self.end - longest
        self._shrink(n)

    def padding_cells(self, n: int) -> int:
        """How many cells of the current view of rows < n are padding."""
        return n * self.width - int(self.lengths[:n].sum())

    # -- the scheduler's `Layout` ----------------------------------------------------

    def room(self, n: int) -> int:
        return self.rows - n

    def fault(self) -> BaseException | None:
        return None

    def enter(self, row: int, request: Request, n: int) -> bool:
        self.admit(row, request.prompt, n)
        return True

    def reserve(self, n: int) -> bool:
        return True  # a stateless model's memory is the step's own

    def retract(self) -> None:
        pass

    def newest(self, n: int) -> int:
        return n - 1

    def recompute(self, row: int) -> Any:
        raise NotImplementedError("a stateless model's rows are never preempted")

    def leave(self, row: int, n: int) -> None:
        if row != n - 1:
            self.move(n - 1, row)

    def settle(self, n: int) -> None:
        self.trim(n)

    def inputs(self, n: int) -> tuple[Any, Any]:
        tokens, mask = self.view(n)
        return self._backend.to_user(tokens), self._backend.to_user(mask)

    def subset_inputs(self, n: int, positions: list[int]) -> tuple[Any, Any]:
        longest = int(self.lengths[positions].max())
        window = slice(self.end - longest, self.end)
        shape = (len(positions), longest)
        backend = self._backend
        tokens = backend.full(shape + self._token_shape, self._padding)
        mask = backend.zeros_bool(shape, self._padding)
        gather_rows(tokens, self.tokens[:, window, ...], positions)
        gather_rows(mask, self.mask[:, window], positions)
        return backend.to_user(tokens), backend.to_user(mask)

    def step_size(self, n: int) -> int:
        return n

    def step_rows(self, n: int) -> list[int]:
        return list(range(n))

    def step_cells(self, n: int) -> tuple[int, int]:
        return n * self.width, self.padding_cells(n)

    def record(self, column: Any, n: int, host: Any = None) -> Emitted:
        self.append(column, n, host)
        return None, column

    # -- internals --------------------------------------------------------------------

    def _widen(self, length: int, n: int) -> None:
        """Make the window at least ``length`` wide, padding rows < n on the left."""
        if length <= self.width:
            return
        if self.end - length < 0:
            self._relocate(length, n)
        new_start = self.end - length
        self.tokens[:n, new_start : self.start, ...] = self._padding
        self.mask[:n, new_start : self.start] = False
        self.start = new_start

    def _shrink(self, n: int) -> None:
        """Give memory back once the window is far narrower than the buffer (a long row left)."""
        fitting = max(self._smallest, _next_power_of_two(2 * (self.width + 1)))
        if self.capacity >= 4 * fitting:
            self._relocate(self.width, n, fitting)

    def _relocate(self, width: int, n: int, capacity: int | None = None) -> None:
        """Re-lay the window out with room for ``width`` columns and growth on both sides."""
        if capacity is None:
            needed = 2 * (width + 1)
            capacity = self.capacity if needed <= self.capacity else _next_power_of_two(needed)
        old_tokens, old_mask = self.tokens, self.mask
        old = slice(self.start, self.end)
        self._allocate(capacity)
        end = capacity - (capacity - width) * 3 // 4
        start = end - self.width
        self.tokens[:n, start:end, ...] = old_tokens[:n, old, ...]
        self.mask[:n, start:end] = old_mask[:n, old]
        self.start, self.end = start, end

    def _allocate(self, capacity: int) -> None:
        shape = (self.rows, capacity)
        self.tokens = self._backend.full(shape + self._token_shape, self._padding)
        self.mask = self._backend.zeros_bool(shape, self._padding)
        tokens, mask = host_view(self._backend, self.tokens), host_view(self._backend, self.mask)
        self._host = None if tokens is None or mask is None else (tokens, mask)


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()
