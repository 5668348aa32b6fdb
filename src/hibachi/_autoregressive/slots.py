"""`SlotLayout`: the scheduler's layout for an `IncrementalModel`.

The model keeps each row's state (a key/value cache, say) in a numbered slot,
so a step hands it only what a row has not seen yet. A new row's prompt is fed
in chunks; once it is all in, the row gets its first token, and every later
step feeds it the token it got last.

Two kinds of step keep long prompts from stalling rows that are decoding:

- a *decode* step runs every row whose prompt is in, one token each;
- a *prefill* step runs rows whose prompt is not, oldest first, at most
  ``max_batch_tokens`` cells (rows * width, padding included) in all, with the
  width that feeds the most prompt tokens. A row whose prompt is longer than
  the step's width gets the next ``width`` tokens of it.

While both kinds have work they alternate, so a decoding row waits at most one
prefill step (of at most ``max_batch_tokens`` cells) between two of its tokens.

Slots come from a free list; a row keeps its slot for its life. When a row
leaves, for whatever reason, the model's ``release(slot)`` is called before the
slot can go to anyone else. A slot whose release raised is never reused.

A model with bounded memory (`IncrementalModel.admit` and ``reserve``) is
asked, before a request takes a slot, whether its prompt fits and how much of
it the model already holds (a cached prefix, then not fed); such a model is
offered requests only while fewer than ``max_batch_tokens`` prompt tokens wait
to be fed. Before each step it is asked for room for the step's new tokens;
when it has none, the scheduler preempts the newest row (`newest`), whose
request is queued again with its prompt and the tokens it produced
(`recompute`, from a `TokenLog`); see `hibachi._autoregressive.memory`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import numpy as np

from .._backends import Backend
from .._backends._host import host_values, host_view
from .._core.model import is_fatal
from .._exceptions import ModelError
from .layout import Emitted, RowIndex, gather_rows
from .memory import Admit, Reserve, TokenLog, admitted
from .request import Request

__all__ = ["SlotLayout"]


class SlotLayout:
    """Per-row slots, unseen tokens and options for up to ``rows`` active rows."""

    stateful = True

    def __init__(
        self,
        backend: Backend,
        padding: Any,
        rows: int,
        *,
        max_batch_tokens: int,
        release: Callable[[int], object],
        first_slot: int = 0,
        admit: Admit | None = None,
        reserve: Reserve | None = None,
    ) -> None:
        """Slots ``first_slot`` … ``first_slot + rows - 1`` (a pipeline's groups own apart);
        ``admit`` and ``reserve``: the model's, where it bounds its memory (None: it does not)."""
        self._backend = backend
        self._padding = padding
        self._release = release
        self._admit = admit
        self._reserve = reserve
        self.max_batch_tokens = max_batch_tokens
        token_shape = tuple(padding.shape)
        self._writes = writes_for(backend, padding)
        # per row (the scheduler's rows, dense)
        self.slots = np.zeros(rows, dtype=np.int64)
        self.fed = np.zeros(rows, dtype=np.int64)
        self.admitted = np.zeros(rows, dtype=np.int64)
        self.prefilling = np.zeros(rows, dtype=bool)
        self.prompts: list[Any] = [None] * rows  # as `_writes` reads them
        self.options: list[Any] = [None] * rows
        self.last = backend.full((rows, 1, *token_shape), padding)
        self._last = self._writes.target(self.last)
        self._gathered = backend.full((rows, 1, *token_shape), padding)  # a decode step's subset
        self._gathered_target = self._writes.target(self._gathered)
        # slots
        self.free = list(range(first_slot, first_slot + rows))
        self.retired: list[tuple[int, BaseException]] = []
        self._fatal: BaseException | None = None  # from release(), raised at the next settle
        self._fatal_raised = False
        self._admissions = 0
        # prefill steps are staged here, grown to the largest step yet (see `_staging`)
        self._rows = rows
        self._pad = self._writes.target(padding)
        self._allocate_staging(0, 0)
        self._ones = backend.zeros_bool((rows, 1), padding)
        self._ones[...] = True
        self._prefill_next = True
        self._step = _Step.decode_all()
        self._waiting = 0  # rows whose prompt is not all in
        self._pending = 0  # prompt tokens not yet fed, over those rows
        self._decode_all: dict[int, tuple[Any, Any, Any]] = {}  # n: views of the first n rows
        self._log = None if reserve is None else TokenLog(backend, padding, rows, self._writes)
        self._counts = np.ones(rows, dtype=np.int64)  # a decode step's new tokens per row
        self._prefill_before = True  # `_prefill_next` before the last `inputs`

    # -- rows coming and going ----------------------------------------------------

    def room(self, n: int) -> int:
        if self._admit is not None and self._pending >= self.max_batch_tokens:
            return 0  # offered one by one, while the next prefill step can start them
        return len(self.free)

    def fault(self) -> BaseException | None:
        if self.free or len(self.retired) < self.slots.size:
            return None
        error = ModelError("no slot is left: the model's release() raised for every one")
        error.__cause__ = self.retired[-1][1]
        return error

    def enter(self, row: int, request: Request, n: int) -> bool:
        slot = heapq.heappop(self.free)
        held = 0 if self._admit is None else self._admitted(slot, request)
        if held is None:
            heapq.heappush(self.free, slot)
            return False
        self.slots[row] = slot
        prompt = self.prompts[row] = self._writes.target(request.prompt)
        self.options[row] = request.options
        self.fed[row] = held
        self.prefilling[row] = True
        self._waiting += 1
        self._pending += int(prompt.shape[0]) - held
        self.admitted[row] = self._admissions
        self._admissions += 1
        if self._log is not None:
            self._log.start(row)
        return True

    def _admitted(self, slot: int, request: Request) -> int | None:
        """The model's `admit` for ``request`` in ``slot`` (see `memory.admitted`); when it
        fails, ``slot`` is released (whatever the call left in it) and the request fails."""
        assert self._admit is not None
        prompt = self._backend.to_user(request.prompt)
        length = int(request.prompt.shape[0])
        try:
            return admitted(self._admit, slot, prompt, length, request.options, request.sent)
        except ModelError:
            self._free_slot(slot)
            raise
        except BaseException:
            heapq.heappush(self.free, slot)
            raise

    def leave(self, row: int, n: int) -> None:
        self._free_slot(int(self.slots[row]))
        if self.prefilling[row]:
            self._waiting -= 1
            self._pending -= int(self.prompts[row].shape[0]) - int(self.fed[row])
        last = n - 1
        if row != last:
            self.slots[row] = self.slots[last]
            self.fed[row] = self.fed[last]
            self.admitted[row] = self.admitted[last]
            self.prefilling[row] = self.prefilling[last]
            self.prompts[row] = self.prompts[last]
            self.options[row] = self.options[last]
            self._last[row] = self._last[last]
            if self._log is not None:
                self._log.move(last, row)
        self.prefilling[last] = False
        self.prompts[last] = self.options[last] = None

    # -- memory ---------------------------------------------------------------------

    def reserve(self, n: int) -> bool:
        """Ask the model for room for the step `inputs` fixed (True without ``reserve``)."""
        if self._reserve is None:
            return True
        step = self._step
        if step.rows is None:
            slots, counts = self.slots[:n], self._counts[:n]
        else:
            slots = self.slots[step.rows]
            counts = self._counts[: step.rows.size] if step.chunks is None else step.counts()
        return bool(self._reserve(slots, counts))

    def retract(self) -> None:
        """The step `inputs` fixed will not run (a row is preempted first): the next
        `inputs` chooses afresh, as if this one had not been asked for."""
        self._prefill_next = self._prefill_before

    def newest(self, n: int) -> int:
        """The row admitted last, of rows < n: the one preempted first."""
        return int(np.argmax(self.admitted[:n]))

    def recompute(self, row: int) -> Any:
        """Row ``row``'s prompt followed by the tokens it produced (storage): what its
        request is fed again, after a preemption."""
        assert self._log is not None
        return self._log.sequence(row, self.prompts[row])

    def settle(self, n: int) -> None:
        # A fatal exception from release() (see `is_fatal`) stops the engine, but only
        # once the rows that left are all ended, so the layout is consistent.
        fatal, self._fatal = self._fatal, None
        if fatal is not None:
            self._fatal_raised = True
            raise fatal

    def _free_slot(self, slot: int) -> None:
        try:
            self._release(slot)
        except BaseException as exc:
            self.retired.append((slot, exc))
            if is_fatal(exc) and not self._fatal_raised:
                self._fatal = exc
        else:
            heapq.heappush(self.free, slot)

    # -- one step -----------------------------------------------------------------

    def inputs(self, n: int) -> tuple[Any, Any, Any, list[Any]]:
        """(tokens, mask, slots, options) of the step's rows; see `IncrementalModel.step`."""
        self._prefill_before = self._prefill_next
        if self._waiting:
            return self._mixed_inputs(n)
        self._prefill_next = True
        self._step = _DECODE_ALL
        kept = self._decode_all.get(n)
        if kept is None:  # views, so they read what the rows hold at each step
            kept = self._decode_all[n] = (self.last[:n], self._ones[:n], self.slots[:n])
        to_user = self._backend.to_user
        return to_user(kept[0]), to_user(kept[1]), kept[2], self.options[:n]

    def _mixed_inputs(self, n: int) -> tuple[Any, Any, Any, list[Any]]:
        """A step while some rows are still taking their prompt in: prefill or decode."""
        waiting = np.flatnonzero(self.prefilling[:n])
        if self._prefill_next or waiting.size == n:
            self._prefill_next = False
            return self._prefill_inputs(waiting)
        self._prefill_next = True
        return self._decode_inputs(np.flatnonzero(~self.prefilling[:n]))

    def _decode_inputs(self, rows: RowIndex) -> tuple[Any, Any, Any, list[Any]]:
        self._step = _Step(rows, width=1, chunks=None)
        to_user = self._backend.to_user
        tokens = self._writes.gather(self._last, rows, self._gathered, self._gathered_target)
        ones = self._ones[: rows.size]
        return to_user(tokens), to_user(ones), self.slots[rows], self._options_of(rows)

    def _prefill_inputs(self, waiting: RowIndex) -> tuple[Any, Any, Any, list[Any]]:
        waiting = waiting[np.argsort(self.admitted[waiting], kind="stable")]
        left = [int(self.prompts[i].shape[0]) - int(self.fed[i]) for i in waiting.tolist()]
        count, width = _pack(left, self.max_batch_tokens)
        rows = waiting[:count]
        chunks = [min(r, width) for r in left[:count]]
        self._staging(count, width)
        for j, (row, chunk) in enumerate(zip(rows.tolist(), chunks, strict=True)):
            self._stage(j, row, chunk, width)
        self._step = _Step(rows, width=width, chunks=chunks)
        to_user = self._backend.to_user
        tokens, mask = self._tokens[:count, :width], self._mask[:count, :width]
        return to_user(tokens), to_user(mask), self.slots[rows], self._options_of(rows)

    def _staging(self, count: int, width: int) -> None:
        """Make the staging arrays at least (count, width), growing by doubling."""
        held_rows, held_width = self._mask.shape
        if count <= held_rows and width <= held_width:
            return
        rows = min(max(held_rows, _doubled(count)), self._rows)
        width = min(max(held_width, _doubled(width)), self.max_batch_tokens)
        self._allocate_staging(rows, width)

    def _allocate_staging(self, rows: int, width: int) -> None:
        backend = self._backend
        self._tokens = backend.full((rows, width, *self._padding.shape), self._padding)
        self._mask = backend.zeros_bool((rows, width), self._padding)
        self._staged = self._writes.target(self._tokens), self._writes.target(self._mask)

    def _stage(self, j: int, row: int, chunk: int, width: int) -> None:
        start = int(self.fed[row])
        pad = width - chunk
        tokens, mask = self._staged
        tokens[j, :pad] = self._pad
        tokens[j, pad:width] = self.prompts[row][start : start + chunk]
        mask[j, :pad] = False
        mask[j, pad:width] = True

    def _options_of(self, rows: RowIndex) -> list[Any]:
        options = self.options
        return [options[i] for i in rows.tolist()]

    def subset_inputs(self, n: int, positions: list[int]) -> tuple[Any, Any, Any, list[Any]]:
        """(tokens, mask, slots, options) of the step's rows at ``positions``, each as fed alone."""
        step, backend = self._step, self._backend
        rows = np.arange(n) if step.rows is None else step.rows
        chosen = rows[positions]
        k, shape = len(positions), tuple(self._padding.shape)
        if step.chunks is None:
            tokens = backend.full((k, 1, *shape), self._padding)
            gather_rows(tokens, self.last, chosen.tolist())
            mask = self._ones[:k]
        else:
            width = max(step.chunks[p] for p in positions)
            columns = slice(step.width - width, step.width)
            tokens = backend.full((k, width, *shape), self._padding)
            mask = backend.zeros_bool((k, width), self._padding)
            gather_rows(tokens, self._tokens[:, columns, ...], positions)
            gather_rows(mask, self._mask[:, columns], positions)
        options = [self.options[i] for i in chosen.tolist()]
        return backend.to_user(tokens), backend.to_user(mask), self.slots[chosen], options

    def step_size(self, n: int) -> int:
        rows = self._step.rows
        return n if rows is None else int(rows.size)

    def step_rows(self, n: int) -> list[int]:
        rows = self._step.rows
        return list(range(n)) if rows is None else rows.tolist()

    def step_cells(self, n: int) -> tuple[int, int]:
        step = self._step
        size = self.step_size(n)
        cells = size * step.width
        return cells, cells - (size if step.chunks is None else sum(step.chunks))

    def record(self, column: Any, n: int, host: Any = None) -> Emitted:
        step = self._step
        tokens = self._writes.values(column, host)
        if step.rows is None:
            self._last[:n, 0] = tokens
            if self._log is not None:
                self._log.add(None, n, tokens)
            return None, column
        if step.chunks is None:
            self.last[step.rows.tolist(), 0] = column
            if self._log is not None:
                self._log.add(step.rows, n, tokens)
            return step.rows, column
        return self._record_prefill(step.rows, step.chunks, column, tokens)

    def _record_prefill(
        self, rows: RowIndex, chunks: list[int], column: Any, tokens: Any
    ) -> Emitted:
        done = []
        keep = self._log is not None  # the prompts, to recompute a preempted row
        for j, (row, chunk) in enumerate(zip(rows.tolist(), chunks, strict=True)):
            self.fed[row] += chunk
            self._pending -= chunk
            if self.fed[row] == self.prompts[row].shape[0]:
                if not keep:
                    self.prompts[row] = None
                self.prefilling[row] = False
                self._waiting -= 1
                self._last[row, 0] = tokens[j]
                done.append(j)
        if keep and done:
            assert self._log is not None
            firsts = [tokens[j] for j in done] if isinstance(tokens, list) else tokens[done]
            self._log.add(rows[done], rows.size, firsts)
        return rows[done], column[done]


class _Step:
    """The rows of the current step (None: all, in order), its width, and each row's chunk."""

    __slots__ = ("chunks", "rows", "width")

    def __init__(self, rows: RowIndex | None, *, width: int, chunks: list[int] | None) -> None:
        self.rows = rows
        self.width = width
        self.chunks = chunks

    @classmethod
    def decode_all(cls) -> _Step:
        return _DECODE_ALL

    def counts(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Each row's new tokens in this prefill step."""
        assert self.chunks is not None
        return np.asarray(self.chunks, dtype=np.int64)


_DECODE_ALL = _Step(None, width=1, chunks=None)


def _doubled(n: int) -> int:
    """The power of two at least ``n``."""
    return 1 << (n - 1).bit_length()


def _pack(left: list[int], budget: int) -> tuple[int, int]:
    """How many of the rows (with ``left`` prompt tokens each) a prefill step takes, and its width.

    The step takes the first ``count`` rows and is ``width`` wide, with
    ``count * width <= budget``, choosing the pair that feeds the most prompt
    tokens (the fewest rows among equals). A row with more than ``width`` tokens
    left gets the next ``width`` of them, so long prompts need no padding.
    """
    remaining = np.asarray(left[:budget], dtype=np.int64)
    count = np.arange(1, remaining.size + 1)
    width = np.minimum(budget // count, np.maximum.accumulate(remaining))
    fed = np.minimum(remaining[None, :], width[:, None])
    fed[np.triu_indices(remaining.size, 1)] = 0  # the rows after each count
    best = int(np.argmax(fed.sum(axis=1)))
    return best + 1, int(width[best])


class _BackendWrites:
    """The layout's per-step writes, made through the backend on its own arrays."""

    def target(self, array: Any) -> Any:
        """What to write ``array`` (storage) through, or read it through for a write."""
        return array

    def values(self, column: Any, host: list[Any] | None) -> Any:
        """A step's tokens as they are written into a target: ``column`` itself."""
        return column

    def gather(self, source: Any, rows: RowIndex, kept: Any, kept_target: Any) -> Any:
        """Rows ``rows`` of ``source`` (a target), in order, as storage: a fresh array here."""
        return source[rows.tolist()]


class _HostWrites:
    """The same writes through NumPy views of host storage: a fraction of a tensor
    library's cost per write, which counts once per step between forward passes."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def target(self, array: Any) -> Any:
        view = host_view(self._backend, array)
        # storage of the layout's own dtype and device has a view (`writes_for`)
        return view if view is not None else np.asarray(host_values(self._backend, array))

    def values(self, column: Any, host: list[Any] | None) -> Any:
        return host if host is not None else self.target(column)

    def gather(self, source: Any, rows: RowIndex, kept: Any, kept_target: Any) -> Any:
        """The same, gathered through NumPy into the first rows of ``kept`` (storage)."""
        np.take(source, rows, axis=0, out=kept_target[: rows.size])
        return kept[: rows.size]


def writes_for(backend: Backend, padding: Any) -> _BackendWrites | _HostWrites:
    """How a layout holding storage like ``padding`` writes: through NumPy views where
    that storage has them (and the backend gives a step's tokens as Python values)."""
    if host_view(backend, padding) is None or getattr(backend, "host_values", None) is None:
        return _BackendWrites()
    return _HostWrites(backend)
