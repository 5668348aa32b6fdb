"""Where items wait for a batch: grouped by layout, released by the wait policy.

Items of one `Layout` form a group; a group is *ready* when it can fill a
batch, when waiting is off (``max_wait == 0``: whatever waits goes as soon as
the model is free), when its oldest item has waited ``max_wait``, or when the
batcher is closing. Of the ready groups, the one whose oldest item came first
goes next, so no group starves. Plain data and a clock reading passed in: no
threads, no timers.
"""

from __future__ import annotations

import enum
from collections import deque

from .cost_model import CostModel
from .item import Item, Layout
from .length_picking import pick_counts

__all__ = ["Group", "Release", "WaitingRoom"]


class Release(enum.Enum):
    """Why a batch left the waiting room."""

    FULL = "full"
    WAITED = "waited"
    EAGER = "eager"


class Group:
    """The waiting items of one layout, in FIFO buckets by length."""

    __slots__ = ("buckets", "layout", "size")

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.buckets: dict[int, deque[Item]] = {}
        self.size = 0

    def extend(self, items: list[Item]) -> None:
        """Items of one length, oldest first."""
        length = items[0]._length
        bucket = self.buckets.get(length)
        if bucket is None:
            bucket = self.buckets[length] = deque()
        bucket.extend(items)
        self.size += len(items)

    def oldest(self) -> Item:
        if len(self.buckets) == 1:
            return next(iter(self.buckets.values()))[0]
        return min((bucket[0] for bucket in self.buckets.values()), key=_seq)

    def take(self, count: int, max_cells: int | None, cost: CostModel) -> list[Item]:
        """Up to ``count`` items: the oldest, and those that make the cheapest batch with it.

        See `pick_counts`; ``max_cells`` bounds items times padded length,
        unless one item alone is longer.
        """
        if len(self.buckets) == 1:
            length, bucket = next(iter(self.buckets.items()))
            room = count if max_cells is None or length <= 0 else max(1, max_cells // length)
            if len(bucket) <= min(count, room):  # the whole group, a lone item most often
                self.buckets, self.size = {}, 0
                return list(bucket)
            taken = [bucket.popleft() for _ in range(min(count, room, len(bucket)))]
        else:
            taken = self._take_cheapest(count, max_cells, cost)
        self.size -= len(taken)
        for length in [length for length, bucket in self.buckets.items() if not bucket]:
            del self.buckets[length]
        return taken

    def put_back(self, items: list[Item]) -> None:
        """Return ``items`` just taken (oldest first) to the front of their buckets."""
        for item in reversed(items):
            bucket = self.buckets.get(item._length)
            if bucket is None:
                bucket = self.buckets[item._length] = deque()
            bucket.appendleft(item)
        self.size += len(items)

    def _take_cheapest(self, count: int, max_cells: int | None, cost: CostModel) -> list[Item]:
        lengths = sorted(self.buckets)
        anchor = lengths.index(self.oldest()._length)
        counts = [len(self.buckets[length]) for length in lengths]
        taken: list[Item] = []
        picked = pick_counts(lengths, counts, anchor, count, max_cells, cost)
        for length, n in zip(lengths, picked, strict=True):
            bucket = self.buckets[length]
            taken.extend(bucket.popleft() for _ in range(n))
        taken.sort(key=_seq)
        return taken


def _seq(item: Item) -> int:
    return item._seq


class WaitingRoom:
    """The groups of waiting items, and the wait policy that releases them."""

    def __init__(self, max_batch_size: int, max_wait: float) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self._groups: dict[Layout, Group] = {}
        self._next_seq = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, items: list[Item]) -> None:
        """Items that arrived, oldest first; each gets its place in line (``seq``)."""
        run: list[Item] = []  # consecutive items of one layout and length: one bucket
        layout, length, seq = None, -1, self._next_seq
        for item in items:
            item._seq = seq
            seq += 1
            if item._layout is not layout or item._length != length:
                if run:
                    self._add_run(run)
                run, layout, length = [], item._layout, item._length
            run.append(item)
        if run:
            self._add_run(run)
        self._next_seq = seq
        self.size += len(items)

    def _add_run(self, run: list[Item]) -> None:
        layout = run[0]._layout
        group = self._groups.get(layout)
        if group is None:
            group = self._groups[layout] = Group(layout)
        group.extend(run)

    def next_group(self, now: float, closing: bool = False) -> tuple[Group, Release] | None:
        """The ready group whose oldest item came first, and why it is ready; None if none is."""
        found: tuple[Group, Release] | None = None
        first = 0
        for group in self._groups.values():
            release = self._release(group, now, closing)
            if release is not None:
                seq = group.oldest()._seq
                if found is None or seq < first:
                    found, first = (group, release), seq
        return found

    def _release(self, group: Group, now: float, closing: bool) -> Release | None:
        if group.size >= self.max_batch_size:
            return Release.FULL
        if self.max_wait <= 0 or closing:
            return Release.EAGER
        if now >= group.oldest()._arrival + self.max_wait:
            return Release.WAITED
        return None

    def take(self, group: Group, count: int, max_cells: int | None, cost: CostModel) -> list[Item]:
        """Remove up to ``count`` items of ``group`` (see `Group.take`)."""
        taken = group.take(count, max_cells, cost)
        self.size -= len(taken)
        if not group.size:
            del self._groups[group.layout]
        return taken

    def put_back(self, group: Group, items: list[Item]) -> None:
        """Return ``items``, just taken from ``group``, to their places in line."""
        if items:
            group.put_back(items)
            self._groups.setdefault(group.layout, group)
            self.size += len(items)

    def wait_time(self, now: float) -> float | None:
        """Seconds until some group's wait runs out (0: one is ready); None when empty."""
        if not self._groups:
            return None
        due = min(group.oldest()._arrival for group in self._groups.values()) + self.max_wait
        return max(0.0, due - now)

    def snapshot(self) -> list[Item]:
        """A copy of every waiting item, leaving them waiting."""
        groups = list(self._groups.values())
        return [
            item for group in groups for bucket in list(group.buckets.values()) for item in bucket
        ]

    def drain(self) -> list[Item]:
        """Remove and return every waiting item, oldest first."""
        buckets = [bucket for group in self._groups.values() for bucket in group.buckets.values()]
        items = [item for bucket in buckets for item in bucket]
        self._groups.clear()
        self.size = 0
        return sorted(items, key=_seq)
