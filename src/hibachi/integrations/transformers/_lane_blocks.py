"""A group of lanes' memory in blocks: a budget, who holds what, and cached prefixes.

Each row of the key/value cache runs in a lane of its own (`_kv_cache`),
and its memory is counted in blocks of ``block_size`` tokens: a row holds
the blocks its tokens need, taken as it grows (`reserve`), and gives them
back when it leaves (`release`). The blocks of all rows and cached prefixes
stay within ``capacity``, the budget.

With prefix caching, every full block a row computes is named
(`PrefixIndex`); a lane whose row has left keeps its named blocks as a cache
of prefixes until their memory is needed, least recently used lane first
(the tail of its sequence first). A new row whose prompt starts with named
blocks is given them (`admit`): in place, when it can take a lane that holds
them, else copied from a lane that holds them, into the lane it takes. At
least the prompt's last token is always computed, for the next token's sake.

Lanes are numbered 0 … count-1 here (a group's own); memory is given back
through ``forget(lane, start, stop)`` (columns of a lane, every layer).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._prefix_index import PrefixIndex

__all__ = ["Admission", "LaneBlocks"]

Forget = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Admission:
    """Where a new row runs: its ``lane``, the prompt tokens it holds already (``held``),
    and the lane to copy them from (None: they are in its own lane, or none are held)."""

    lane: int
    held: int
    source: int | None


class LaneBlocks:
    """The blocks of ``count`` lanes of ``columns`` tokens, within ``capacity`` blocks."""

    def __init__(
        self,
        count: int,
        *,
        capacity: int,
        block_size: int,
        columns: int,
        prefix_caching: bool,
        forget: Forget,
    ) -> None:
        self.capacity = capacity
        self.block_size = block_size
        self._columns = columns
        self._forget = forget
        self.held = np.zeros(count, dtype=np.int64)  # blocks held by each lane's row
        self._touched = np.zeros(count, dtype=np.int64)  # blocks whose memory may be committed
        self._named = np.zeros(count, dtype=np.int64)  # leading blocks named in the index
        self._idle: OrderedDict[int, None] = OrderedDict.fromkeys(range(count))  # LRU first
        self.index = PrefixIndex(count, block_size) if prefix_caching else None
        self.history = np.zeros((count, columns), dtype=np.int64) if prefix_caching else None
        self.used = 0
        self.cached = 0
        self.peak = 0
        self.queries = 0
        self.hits = 0

    def blocks(self, tokens: Any) -> Any:
        """The blocks ``tokens`` tokens take (an int, or an array of them)."""
        return -(-tokens // self.block_size)

    # -- rows coming and going ------------------------------------------------------

    def admit(self, prompt: np.ndarray[Any, Any]) -> Admission | None:
        """A lane for a row with ``prompt`` (int64 token ids), its prompt's blocks held;
        None if they are not free. Copy the held tokens from ``source`` if it is not
        None (then `copied`), then call `settle`."""
        length = int(prompt.size)
        need = int(self.blocks(length))
        if self.used + need > self.capacity:  # every cached block can be given back
            return None
        depth, holders = 0, set[int]()
        if self.index is not None:
            depth, holders = self.index.longest(prompt, (length - 1) // self.block_size)
            self.queries += length
            self.hits += depth * self.block_size
        lane, source = self._choose(holders)
        self._take(lane, keep=depth if source is None else 0)
        self._hold(lane, need)
        return Admission(lane, depth * self.block_size, source)

    def copied(self, admission: Admission, prompt: np.ndarray[Any, Any]) -> None:
        """The held tokens of ``admission`` were copied into its lane: name them there."""
        assert self.index is not None and self.history is not None
        lane, size = admission.lane, self.block_size
        self.history[lane, : admission.held] = prompt[: admission.held]
        for block in range(admission.held // size):
            self.index.add(lane, prompt[block * size : (block + 1) * size])
        self._named[lane] = admission.held // size

    def bare(self) -> int:
        """A lane for a row that was not admitted (a step fed it first): nothing held."""
        lane, _ = self._choose(set())
        self._take(lane, keep=0)
        return lane

    def settle(self) -> None:
        """Give back cached blocks, least recently used first, until the budget holds."""
        excess = self.used + self.cached - self.capacity
        for lane in list(self._idle):
            if excess <= 0:
                return
            named = int(self._named[lane])
            if named:
                count = min(excess, named)
                self._unname(lane, named - count)
                excess -= count

    def release(self, lane: int) -> None:
        """``lane``'s row has left: its named blocks stay cached, the rest is given back."""
        self.used -= int(self.held[lane])
        self.held[lane] = 0
        named = int(self._named[lane])
        self.cached += named
        self._give_back(lane, named)
        self._idle[lane] = None

    # -- a step ---------------------------------------------------------------------

    def reserve(self, lanes: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any]) -> bool:
        """Hold the blocks of ``lengths`` tokens in each of ``lanes``; False (and nothing
        held) if they are not free."""
        need = self.blocks(lengths)
        held = self.held[lanes]
        grow = need > held
        if not grow.any():
            return True
        if int(lengths.max()) > self._columns:  # past its lane: never, through the batcher
            return False
        extra = int((need - held)[grow].sum())
        if self.used + extra > self.capacity:
            return False
        self.held[lanes] = np.maximum(held, need)
        self._touched[lanes] = np.maximum(self._touched[lanes], need)
        self.used += extra
        self.peak = max(self.peak, self.used + self.cached)
        self.settle()
        return True

    def name(self, lanes: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any]) -> None:
        """``lanes`` now hold ``lengths`` tokens (in `history`): name their full blocks."""
        if self.index is None:
            return
        assert self.history is not None
        full = lengths // self.block_size
        filled = full > self._named[lanes]
        size = self.block_size
        for lane, blocks in zip(lanes[filled].tolist(), full[filled].tolist(), strict=True):
            for depth in range(int(self._named[lane]), blocks):
                self.index.add(lane, self.history[lane, depth * size : (depth + 1) * size])
            self._named[lane] = blocks

    # -- internals ------------------------------------------------------------------

    def _choose(self, holders: set[int]) -> tuple[int, int | None]:
        """The lane a new row takes, and the lane to copy its prefix from (None: none, or
        in place): an idle lane that holds its prefix (the lowest), else the lowest idle
        lane that caches nothing (lanes stay packed), else the least recently used."""
        in_place = [lane for lane in holders if lane in self._idle]
        if in_place:
            return min(in_place), None
        empty = [lane for lane in self._idle if not self._named[lane]]
        lane = min(empty) if empty else next(iter(self._idle))
        return lane, (min(holders) if holders else None)

    def _take(self, lane: int, keep: int) -> None:
        """``lane`` leaves the idle lanes, keeping its first ``keep`` named blocks."""
        del self._idle[lane]
        self.cached -= int(self._named[lane])
        self._unname(lane, keep, cached=False)

    def _hold(self, lane: int, blocks: int) -> None:
        self.held[lane] = blocks
        self._touched[lane] = max(int(self._touched[lane]), blocks)
        self.used += blocks
        self.peak = max(self.peak, self.used + self.cached)

    def _unname(self, lane: int, depth: int, *, cached: bool = True) -> None:
        """``lane`` keeps its named blocks up to ``depth``; the memory after them goes back."""
        dropped = 0 if self.index is None else self.index.drop(lane, depth)
        if cached:
            self.cached -= dropped
        self._named[lane] = min(int(self._named[lane]), depth)
        self._give_back(lane, depth)

    def _give_back(self, lane: int, blocks: int) -> None:
        """Give back the memory of ``lane``'s blocks from ``blocks`` on (to the lane's end:
        no row holds them, so the page the last block shares with them goes too)."""
        if self._touched[lane] > blocks:
            self._forget(lane, blocks * self.block_size, self._columns)
            self._touched[lane] = blocks
