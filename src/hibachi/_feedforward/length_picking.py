"""Picking items of similar length for a padded batch.

When more items wait than fit in one batch, the batch is padded to its
longest item, so which items go together decides how much padding the model
computes on. The oldest waiting item always goes (no item starves); the rest
are the items beside it in the best cut of the queue sorted by length: what a
hand-written loop does with every item up front (sort, then cut into batches),
so that the batches that follow pad as little as the loop's would.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

__all__ = ["choose_counts"]


def choose_counts(
    lengths: Sequence[int], counts: Sequence[int], anchor: int, size: int
) -> list[int]:
    """How many items of each length to put in a batch of ``size``.

    ``lengths`` are ascending and distinct, ``counts[i]`` items of length
    ``lengths[i]`` wait, and one of length ``lengths[anchor]`` must go.
    Sorted by length, the waiting items are cut into batches of ``size``
    either from the shortest or from the longest, whichever pads less in all;
    the batch is the cut that holds the anchor's length (its first item, if
    that length spans two cuts), widened to a full batch if it is the short
    cut at either end: the rest is cut afresh for the next batch anyway.
    Returns a count per length.
    """
    cuts = _Cuts(lengths, counts)
    if cuts.total <= size:
        return list(counts)
    cut_both_ways = [cuts.bounds(size, from_short) for from_short in (True, False)]
    bounds = min(cut_both_ways, key=lambda cut: cut[0])[1]  # a tie: from the shortest
    first = cuts.cumulative[anchor]  # where the anchor's length starts in sorted order
    start = max(b for b in bounds if b <= first)
    end = min(b for b in bounds if b > first)
    if end - start < size:
        start, end = (0, size) if start == 0 else (end - size, end)
    return cuts.counts_between(start, end)


class _Cuts:
    """The waiting items sorted by length, as prefix sums over the lengths."""

    def __init__(self, lengths: Sequence[int], counts: Sequence[int]) -> None:
        self.lengths = lengths
        self.cumulative, self.weighted = [0], [0]
        for length, count in zip(lengths, counts, strict=True):
            self.cumulative.append(self.cumulative[-1] + count)
            self.weighted.append(self.weighted[-1] + count * length)
        self.total = self.cumulative[-1]

    def bounds(self, size: int, from_short: bool) -> tuple[int, list[int]]:
        """Cut positions into batches of ``size``, and the padding they make in all."""
        if from_short:
            bounds = [*range(0, self.total, size), self.total]
        else:
            bounds = [0, *range(self.total % size or size, self.total + 1, size)]
        waste = sum(self._waste(s, e) for s, e in itertools.pairwise(bounds))
        return waste, bounds

    def _waste(self, start: int, end: int) -> int:
        return (end - start) * self._length_at(end - 1) - (self._sum(end) - self._sum(start))

    def _bucket(self, position: int) -> int:
        return bisect.bisect_right(self.cumulative, position) - 1

    def _length_at(self, position: int) -> int:
        return self.lengths[self._bucket(position)]

    def _sum(self, position: int) -> int:
        """Total length of the first ``position`` items in sorted order."""
        if position >= self.total:
            return self.weighted[-1]
        bucket = self._bucket(position)
        return self.weighted[bucket] + (position - self.cumulative[bucket]) * self.lengths[bucket]

    def counts_between(self, start: int, end: int) -> list[int]:
        """Per length, how many of the sorted positions in [start, end) it holds."""
        return [
            max(0, min(end, hi) - max(start, lo)) for lo, hi in itertools.pairwise(self.cumulative)
        ]
