"""Picking the items of a padded batch by what the batch will cost.

A padded batch costs what its longest item makes every item cost, plus the
price of a call (the `CostModel`). Of the waiting items of one kind, sorted
by length, the batch is a run of neighbours that holds the oldest waiting
item (so none starves), chosen to do the most work per second of model time:
the sum of what its items would cost in ideal batches (full, every item of
one length) over what this batch costs. So it may take fewer items than fit,
of similar length, and leave a long item for a batch of longer ones, rather
than pad every item to it. A batch is never predicted to cost more than its
items would one call each, and it holds at most ``size`` items and, unless it
is one item, at most ``max_cells`` padded cells.

For a given longest item, adding the next shorter one helps while its ideal
cost exceeds the batch's work per second times what it adds (its padded
row): the items are tried longest first, and the scan stops at the first that
does not help, since every shorter one helps less. That holds with the
attention term too: at a given padded length, every row adds the same price
(``per_cell · length + per_cell_length · length²``), and a shorter item's
ideal cost is never more than a longer one's.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

from .cost_model import CostModel

__all__ = ["pick_counts"]

_TIE = 1e-9  # relative: work rates this close are equal, and the bigger batch wins


def pick_counts(
    lengths: Sequence[int],
    counts: Sequence[int],
    anchor: int,
    size: int,
    max_cells: int | None,
    cost: CostModel,
) -> list[int]:
    """How many items of each length to put in the batch.

    ``lengths`` are ascending and distinct, ``counts[i]`` items of length
    ``lengths[i]`` wait, and the first of length ``lengths[anchor]`` (the
    oldest waiting item) must go. Returns a count per length.
    """
    # only the lengths within ``size`` places of the anchor in sorted order can go with it
    cumulative = list(itertools.accumulate(counts, initial=0))
    first = cumulative[anchor]
    low = bisect.bisect_right(cumulative, max(0, first - size + 1)) - 1
    high = bisect.bisect_right(cumulative, min(cumulative[-1] - 1, first + size - 1))
    near = _pick_near(lengths[low:high], counts[low:high], anchor - low, size, max_cells, cost)
    return [0] * low + near + [0] * (len(lengths) - high)


def _pick_near(
    lengths: Sequence[int],
    counts: Sequence[int],
    anchor: int,
    size: int,
    max_cells: int | None,
    cost: CostModel,
) -> list[int]:
    queue = _Sorted(lengths, counts, size, max_cells, cost)
    best = _Best()
    first = queue.cumulative[anchor]  # the anchor's place in sorted order
    for top in range(anchor, len(lengths)):
        room = queue.room(lengths[top])
        if top > anchor and queue.cumulative[top] >= first + room:
            break  # this length and every longer one are out of reach
        end = min(queue.cumulative[top + 1], first + room)
        _widen_down(queue, first, end, room, best)
    return queue.counts_between(best.start, best.end)


class _Best:
    """The best batch found so far, as a run ``[start, end)`` of the sorted queue."""

    def __init__(self) -> None:
        self.rate = -1.0
        self.items = 0
        self.start = self.end = 0

    def offer(self, start: int, end: int, rate: float) -> None:
        items = end - start
        better = rate > self.rate * (1 + _TIE)
        if better or (rate >= self.rate * (1 - _TIE) and items > self.items):
            self.rate, self.items, self.start, self.end = rate, items, start, end


def _widen_down(queue: _Sorted, first: int, end: int, room: int, best: _Best) -> None:
    """Offer ``[start, end)`` for ``start`` from ``first`` down, while the rate does not fall."""
    cost, length = queue.cost, queue.length_at(end - 1)
    work, alone = queue.work(first, end), queue.alone(first, end)
    start, rate = first, -1.0
    while True:
        items = end - start
        seconds = cost.predict(items, length)
        new_rate = work / seconds
        if new_rate < rate * (1 - _TIE):
            return
        rate = new_rate
        if items == 1 or seconds <= alone * (1 + _TIE):  # never worse than one call each
            best.offer(start, end, rate)
        if start == 0 or items >= room:
            return
        start -= 1
        below = queue.length_at(start)
        work += queue.ideal(below)
        alone += cost.predict(1, below)


class _Sorted:
    """The waiting items sorted by length, as prefix sums over the lengths."""

    def __init__(
        self,
        lengths: Sequence[int],
        counts: Sequence[int],
        size: int,
        max_cells: int | None,
        cost: CostModel,
    ) -> None:
        self.lengths, self.size, self.max_cells, self.cost = lengths, size, max_cells, cost
        self.cumulative: list[int] = [0]
        self._alone, self._ideal = [0.0], [0.0]
        cumulative, alone, ideal = self.cumulative, self._alone, self._ideal
        for length, count in zip(lengths, counts, strict=True):
            cumulative.append(cumulative[-1] + count)
            alone.append(alone[-1] + count * cost.predict(1, length))
            ideal.append(ideal[-1] + count * self.ideal(length))

    def room(self, length: int) -> int:
        """The most items of ``length`` a batch may hold."""
        if self.max_cells is None or length <= 0:
            return self.size
        return max(1, min(self.size, self.max_cells // length))

    def ideal(self, length: int) -> float:
        """An item's share of a full batch of items of its own length."""
        room = self.room(length)
        return self.cost.predict(room, length) / room

    def work(self, start: int, end: int) -> float:
        """The ideal costs of the items in ``[start, end)``."""
        return self._prefix(self._ideal, end) - self._prefix(self._ideal, start)

    def alone(self, start: int, end: int) -> float:
        """What the items in ``[start, end)`` cost one call each."""
        return self._prefix(self._alone, end) - self._prefix(self._alone, start)

    def length_at(self, position: int) -> int:
        return self.lengths[self._bucket(position)]

    def _bucket(self, position: int) -> int:
        return bisect.bisect_right(self.cumulative, position) - 1

    def _prefix(self, sums: list[float], position: int) -> float:
        """``sums`` (per length, cumulative) up to the first ``position`` items in sorted order."""
        if position >= self.cumulative[-1]:
            return sums[-1]
        bucket = self._bucket(position)
        per_item = (sums[bucket + 1] - sums[bucket]) / (
            self.cumulative[bucket + 1] - self.cumulative[bucket]
        )
        return sums[bucket] + (position - self.cumulative[bucket]) * per_item

    def counts_between(self, start: int, end: int) -> list[int]:
        """Per length, how many of the sorted positions in [start, end) it holds."""
        return [
            max(0, min(end, hi) - max(start, lo))
            for lo, hi in zip(self.cumulative, self.cumulative[1:], strict=False)
        ]
