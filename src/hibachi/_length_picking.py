"""Picking items of similar length for a padded batch.

When more items wait than fit in one batch, the batch is padded to its
longest item, so which items go together decides how much padding the
model computes on. The oldest waiting item always goes (no item starves);
the rest are chosen to waste the least padding around it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["choose_counts"]


def choose_counts(
    lengths: Sequence[int], counts: Sequence[int], anchor: int, size: int
) -> list[int]:
    """How many items of each length to put in a batch of ``size``.

    ``lengths`` are ascending and distinct, ``counts[i]`` items of length
    ``lengths[i]`` wait, and one of them, of length ``lengths[anchor]``, must
    be in the batch. Returns a count per length, summing to ``size`` (or to
    every item, if fewer wait), that minimises ``size * longest - total length``.

    For each candidate longest length ``top`` (at least the anchor's), the
    best batch is the anchor plus the ``size - 1`` longest others not above
    ``top``; prefix sums make each candidate O(log n).
    """
    if sum(counts) <= size:
        return list(counts)
    if size == 1:
        return [int(i == anchor) for i in range(len(counts))]
    others = list(counts)
    others[anchor] -= 1
    cumulative, weighted = _prefix_sums(lengths, others)
    need = size - 1
    best: tuple[int, int, int, int] | None = None  # (waste, top, cut, from_cut)
    for top in range(anchor, len(lengths)):
        have = cumulative[top + 1]
        if have < need:
            continue
        cut = bisect.bisect_right(cumulative, have - need, 0, top + 2) - 1
        full = have - cumulative[cut + 1]
        from_cut = need - full
        total = weighted[top + 1] - weighted[cut + 1] + from_cut * lengths[cut] + lengths[anchor]
        waste = size * lengths[top] - total
        if best is None or waste < best[0]:
            best = (waste, top, cut, from_cut)
    assert best is not None  # at top = len(lengths) - 1 every other item is available
    return _take(others, anchor, *best[1:])


def _prefix_sums(lengths: Sequence[int], counts: Sequence[int]) -> tuple[list[int], list[int]]:
    cumulative, weighted = [0], [0]
    for length, count in zip(lengths, counts, strict=True):
        cumulative.append(cumulative[-1] + count)
        weighted.append(weighted[-1] + count * length)
    return cumulative, weighted


def _take(others: list[int], anchor: int, top: int, cut: int, from_cut: int) -> list[int]:
    """Counts for: every other item in (cut, top], ``from_cut`` of ``cut``, and the anchor."""
    take = [0] * len(others)
    take[cut + 1 : top + 1] = others[cut + 1 : top + 1]
    take[cut] += from_cut
    take[anchor] += 1
    return take
