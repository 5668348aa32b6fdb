"""The synchronous core of dynamic batching.

One round is ``next_batch()`` → the model on ``inputs(batch)`` →
``complete(batch, output)``, or ``fail(batch, error)`` when the model raised
or returned something unusable. Everything here is plain code over plain
data: no threads, no event loop, and the time comes from ``clock``. The
engine drives it from its thread; tests drive it round by round with a fake
clock and items that record their outcome.

- ``next_batch`` first reruns the halves of a failed batch, then takes the
  next ready group from the `WaitingRoom`, dropping items whose caller left
  or whose deadline passed: they never reach the model. Of a group of padded
  items, it takes the oldest and those that make the cheapest batch with it,
  by the group's `CostModel` (see `length_picking`).
- ``inputs`` … ``complete`` is timed on ``clock``, and the time teaches the
  batch's `CostModel` what a batch of its kind costs.
- ``fail`` splits a failed batch in two and queues both halves ahead of
  everything else, so that in the end only items that fail on their own get
  the error; every other item gets its result.
- ``next_batch_ahead`` is the next batch taken early, to be stacked on
  another thread while the model runs the current one (then ``adopt``ed in
  place of ``inputs``): only when stacking that kind of batch has cost at
  least ``stack_ahead_min`` seconds (less, and the hand-off to another thread
  costs more than it saves) and a full batch waits (so taking it early loses
  nothing). ``stack_ahead_min`` is None by default: never. Stacking ahead
  needs a core that neither the model nor the event loop uses
  (docs/feedforward.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

from .._core.delivery import Failure
from .._core.model import describe
from .._exceptions import BatcherClosed, ModelError, Timeout
from .batch import Batch, assemble, split
from .cost_model import CostModel
from .item import Item, Layout
from .waiting_room import Group, Release, WaitingRoom

__all__ = ["STACK_AHEAD_MIN", "FeedforwardCore", "FeedforwardCounters"]

_TRIES_ALONE = 2  # an item fails only after failing this many times in a batch of its own

STACK_AHEAD_MIN = 0.001
"""Seconds: with ``stack_ahead``, a kind of input is stacked ahead once stacking its batches
takes this long."""
_PRICE_UNKNOWN = 0.001  # seconds: a model call's price before the cost model knows it
_PRICE_CAP = 0.05  # seconds: the most `call_price` answers, whatever was learnt

_SMOOTHING = 0.25  # the weight of the newest stacking time in its running average

_FLAT = CostModel()  # unpadded items: one length, so every batch is as full as it may be


@dataclass
class FeedforwardCounters:
    """What the core has done so far (read by ``stats()``)."""

    received: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    batches: int = 0
    batched_items: int = 0
    retried_batches: int = 0
    released_full: int = 0
    released_waited: int = 0
    released_eager: int = 0
    dispatched: int = 0
    queue_wait: float = 0.0
    cells: int = 0
    padding_cells: int = 0

    def count_release(self, items: list[Item], release: Release, now: float) -> None:
        if release is Release.FULL:
            self.released_full += 1
        elif release is Release.WAITED:
            self.released_waited += 1
        else:
            self.released_eager += 1
        self.dispatched += len(items)
        self.queue_wait += len(items) * now - sum(item._arrival for item in items)


class FeedforwardCore:
    """Which items go through the model together, and what becomes of its output."""

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_wait: float = 0.0,
        max_batch_tokens: int | None = None,
        trim_output: bool = False,
        copy_results: bool = True,
        clock: Callable[[], float] = time.monotonic,
        stack_ahead_min: float | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.room = WaitingRoom(max_batch_size, max_wait)
        self.trim_output = trim_output
        self.copy_results = copy_results
        self.clock = clock
        self.counters = FeedforwardCounters()
        self.costs: dict[Layout, CostModel] = {}
        self._retries: list[Batch] = []
        self._started: float | None = None  # when ``inputs`` began on the running batch
        self.stacking: dict[Layout, float] = {}  # seconds stacking a batch takes, on average
        self.stack_ahead_min = stack_ahead_min

    def __len__(self) -> int:
        """Items in the waiting room (not counting halves of failed batches)."""
        return len(self.room)

    def add(self, items: list[Item]) -> None:
        """Items that arrived, in arrival order."""
        self.counters.received += len(items)
        self.room.add(items)

    def wait_time(self) -> float | None:
        """Seconds until `next_batch` may have something; None: nothing waits."""
        if self._retries:
            return 0.0
        return self.room.wait_time(self.clock())

    # -- one round -------------------------------------------------------------------

    def next_batch(self, *, closing: bool = False) -> Batch | None:
        """The next batch to run, or None if nothing is ready.

        ``closing`` releases every group at once, whatever the wait policy.
        """
        now = self.clock()
        batch = self._next_retry(now)
        if batch is None:
            batch = self._next_release(now, closing)
        if batch is not None:
            self.counters.batches += 1
            self.counters.batched_items += len(batch)
        return batch

    def inputs(self, batch: Batch) -> Any:
        """The model's input for ``batch``: every leaf stacked (and padded) along axis 0."""
        started = self.clock()
        assembled = assemble(batch)
        self._note_stacking(batch.layout, self.clock() - started)
        if batch.length:
            self._started = started
        return self._count_cells(assembled)

    def next_batch_ahead(self) -> Batch | None:
        """The next batch, taken while the model runs the current one, to be stacked
        meanwhile; None unless that is worth it (see the module's docstring)."""
        least = self.stack_ahead_min
        if least is None or self._retries:
            return None
        found = self.room.next_group(self.clock())
        if found is None:
            return None
        group = found[0]
        if group.size < self.max_batch_size or self.stacking.get(group.layout, 0.0) < least:
            return None
        return self.next_batch()

    def adopt(self, batch: Batch, assembled: tuple[Any, int, int], seconds: float) -> Any:
        """`inputs` for a batch from `next_batch_ahead`, stacked elsewhere in ``seconds``:
        ``assembled`` is what `assemble` returned. The cost model learns the model's
        time from now on (the stacking overlapped the previous batch)."""
        self._note_stacking(batch.layout, seconds)
        if batch.length:
            self._started = self.clock()
        return self._count_cells(assembled)

    def _count_cells(self, assembled: tuple[Any, int, int]) -> Any:
        stacked, cells, padding = assembled
        self.counters.cells += cells
        self.counters.padding_cells += padding
        return stacked

    def _note_stacking(self, layout: Layout, seconds: float) -> None:
        last = self.stacking.get(layout)
        self.stacking[layout] = seconds if last is None else last + _SMOOTHING * (seconds - last)

    def complete(self, batch: Batch, output: Any, seconds: float | None = None) -> None:
        """Give each item its slice of ``output``; `ModelError` (nothing delivered) if unusable.

        ``seconds``: what the batch cost, where the clock cannot tell (batches
        in flight together through a pipeline); None: the time since ``inputs``.
        """
        try:
            results = split(output, batch, self.trim_output, self.copy_results)
        except ModelError:
            raise
        except Exception as exc:  # the output's own methods failed while it was split
            raise ModelError(
                f"the model's output could not be split per item: {describe(exc)}"
            ) from exc
        for item, result in zip(batch.items, results, strict=True):
            item._deliver(result)
        self.counters.completed += len(results)
        self._learn(batch, seconds)

    def cost_of(self, layout: Layout) -> CostModel:
        """What a batch of ``layout`` costs, as learnt so far."""
        model = self.costs.get(layout)
        if model is None:
            model = self.costs[layout] = CostModel()
        return model

    def call_price(self, layout: Layout) -> float:
        """Seconds a model call on ``layout`` costs whatever its size, as of the cost
        model's last fit (`_PRICE_UNKNOWN` before one), at most `_PRICE_CAP`.

        It does not refit: the engine asks after every batch, and a fit belongs
        to the choices that need one."""
        model = self.costs.get(layout)
        fixed = None if model is None else model.fitted_fixed
        return _PRICE_UNKNOWN if fixed is None else min(fixed, _PRICE_CAP)

    def fail(self, batch: Batch, error: BaseException) -> None:
        """``batch`` failed with ``error``: rerun its halves next, or fail its one item.

        An item fails only after failing twice alone, so that a transient fault
        (a model that fails once on a good batch) costs nobody their result.
        """
        self._started = None
        if len(batch) > 1:
            first, second = batch.halves()
            self._retries += [second, first]
            self.counters.retried_batches += 2
            return
        batch.tries += 1
        if batch.tries < _TRIES_ALONE:
            self._retries.append(batch)
            self.counters.retried_batches += 1
            return
        self.counters.failed += 1
        batch.items[0]._deliver(Failure(error))

    def abort(
        self, message: str, *, cause: BaseException | None = None, running: Batch | None = None
    ) -> None:
        """End every waiting item at once with `BatcherClosed` (closing with ``cancel``,
        or the engine failed with ``cause``), and the items of the ``running`` batch."""
        items = [item for batch in self._retries for item in batch.items] + self.room.drain()
        if running is not None:
            items = running.items + items
        self._retries.clear()
        for item in self._live(items, self.clock()):
            self.counters.failed += 1
            error = BatcherClosed(message)
            error.__cause__ = cause
            item._deliver(Failure(error))

    def waiting(self) -> list[Item]:
        """A copy of the items waiting (retries included), for another thread while
        the engine is stuck in the model."""
        retries = [item for batch in list(self._retries) for item in batch.items]
        return retries + self.room.snapshot()

    # -- internals -------------------------------------------------------------------

    def _next_retry(self, now: float) -> Batch | None:
        while self._retries:
            batch = self._retries.pop()
            items = self._live(batch.items, now)
            if len(items) == len(batch):
                return batch
            if items:
                return Batch(items, batch.layout)
        return None

    def _next_release(self, now: float, closing: bool) -> Batch | None:
        while (found := self.room.next_group(now, closing)) is not None:
            group, release = found
            items = self._fill(group, now)
            if items:
                self.counters.count_release(items, release, now)
                return Batch(items, group.layout)
        return None

    def _fill(self, group: Group, now: float) -> list[Item]:
        """The live items of ``group`` that make its next batch; departed ones are dropped.

        If any taken item had departed, the others go back and the batch is
        chosen again among those left.
        """
        cost = self.cost_of(group.layout) if group.layout.padded else _FLAT
        while group.size:
            taken = self.room.take(group, self.max_batch_size, self.max_batch_tokens, cost)
            items = self._live(taken, now)
            if len(items) == len(taken):
                return items
            self.room.put_back(group, items)
        return []

    def _learn(self, batch: Batch, seconds: float | None) -> None:
        started, self._started = self._started, None
        if seconds is None and started is not None:
            seconds = self.clock() - started
        if seconds is not None and batch.length:
            self.cost_of(batch.layout).observe(len(batch), batch.length, seconds)

    def _live(self, items: list[Item], now: float) -> list[Item]:
        """``items`` whose caller still waits; the others are ended and counted."""
        live = []
        for item in items:
            if item._departed:
                self._drop(item)
            elif item._deadline is not None and item._deadline <= now:
                self.counters.timed_out += 1
                item._deliver(Failure(Timeout("the request reached its deadline in the queue")))
            else:
                live.append(item)
        return live

    def _drop(self, item: Item) -> None:
        if item._expired:
            self.counters.timed_out += 1
            item._deliver(Failure(Timeout("the request timed out before it reached the model")))
        else:
            self.counters.cancelled += 1
            item._deliver(Failure(CancelledError()))
