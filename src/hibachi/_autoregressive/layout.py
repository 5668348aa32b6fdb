"""How the scheduler's active rows become a model's inputs, step after step.

The `Scheduler` decides which requests run; a *layout* holds what it feeds the
model and reads back what the model produced. There are two:

- `SequenceBuffer` (stateless models): every step hands the model every active
  sequence in full, left-padded; every row gets one new token.
- `SlotLayout` (`IncrementalModel`): the model keeps per-row state in numbered
  slots, so each step hands it only the tokens a row has not yet seen: the
  prompt, in chunks, then the previous token. A step may run a subset of the
  rows, and a row still being prefilled produces no token.

Rows are the scheduler's: 0 … n-1 are active, and a row that leaves is replaced
by the last one (``leave``), so both sides stay dense.

When a step fails, the scheduler retries it on subsets of its rows to find the
rows that fail on their own (`hibachi._autoregressive.isolation`): a layout
gives the inputs of the same step for some of its rows (``subset_inputs``).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias

import numpy as np

from .request import Request

__all__ = ["Emitted", "Layout", "RowIndex", "gather_rows"]

RowIndex: TypeAlias = np.ndarray[Any, np.dtype[np.intp]]

Emitted: TypeAlias = tuple[RowIndex | None, Any]
"""Which rows got a new token this step (None: rows 0 … n-1, in order) and those tokens."""


class Layout(Protocol):
    """What the scheduler needs from a layout. Every call comes from the engine thread.

    ``stateful`` says whether the model keeps per-row state: a call that
    returned (even unusable output) may then have committed it, so only a
    call that raised is retried.
    """

    stateful: bool

    def room(self, n: int) -> int:
        """How many more requests can be admitted while rows < n are active."""
        ...

    def fault(self) -> BaseException | None:
        """Why no request can ever be admitted again, if that is so."""
        ...

    def enter(self, row: int, request: Request, n: int) -> bool:
        """Row ``row`` starts serving ``request``; rows < n are active (``row == n - 1``).

        False: the model has no memory for it now (nothing changed; it waits).
        `ModelError`: the request fails (the model's admission raised).
        """
        ...

    def leave(self, row: int, n: int) -> None:
        """Row ``row`` ends; row ``n - 1`` takes its place."""
        ...

    def settle(self, n: int) -> None:
        """Rows have left; rows < n remain."""
        ...

    def reserve(self, n: int) -> bool:
        """Whether the model has room for the step `inputs` fixed (else a row is preempted)."""
        ...

    def retract(self) -> None:
        """The step `inputs` fixed will not run: the next `inputs` chooses afresh."""
        ...

    def newest(self, n: int) -> int:
        """The row of rows < n to preempt first."""
        ...

    def recompute(self, row: int) -> Any:
        """What row ``row``'s request is fed again once preempted: its prompt and tokens."""
        ...

    def inputs(self, n: int) -> tuple[Any, ...]:
        """The model's arguments for a step over the active rows < n; fixes the step's rows."""
        ...

    def subset_inputs(self, n: int, positions: list[int]) -> tuple[Any, ...]:
        """The model's arguments for this step's rows at ``positions`` (of ``step_size``) only.

        Fresh arrays, as the rows would be given in a step of their own; the
        step itself (its rows, what ``record`` expects) does not change.
        """
        ...

    def step_size(self, n: int) -> int:
        """How many rows the model gets (and returns tokens for) this step."""
        ...

    def step_rows(self, n: int) -> list[int]:
        """The rows in this step (those a model error ends)."""
        ...

    def step_cells(self, n: int) -> tuple[int, int]:
        """The cells handed to the model this step, and how many of them were padding."""
        ...

    def record(self, column: Any, n: int, host: Any = None) -> Emitted:
        """Take the step's output (``step_size`` tokens); say which rows got a new token.

        ``host`` is ``column``'s values as Python lists (`hibachi._backends._host.host_values`),
        or None where the backend cannot give them.
        """
        ...


def gather_rows(out: Any, source: Any, positions: list[int]) -> Any:
    """``out[i] = source[positions[i]]`` with basic indexing only (any backend); ``out``."""
    for i, position in enumerate(positions):
        out[i, ...] = source[position, ...]
    return out
