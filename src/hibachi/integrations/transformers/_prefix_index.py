"""Which lanes hold which prefixes: full blocks named by their tokens and everything before.

A block of ``block_size`` tokens at depth d of a sequence is named by the
name of the block before it and its own tokens (vLLM's chained block hash), so
two blocks share a name exactly when the sequences agree up to their end.
Names are exact, not hashes that may collide: a name is ``(parent id, the
block's token bytes)``, a dict key compared in full, and every distinct name
gets an id of its own.

A lane's full blocks are named as the lane fills (`add`); a lane whose
contents change forgets its blocks from some depth on (`drop`). `longest`
walks a prompt's blocks and says how many lead it, and which lanes hold all
of them (a lane holding block d holds the blocks before it: it holds one
sequence).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PrefixIndex"]

_ROOT = -1  # the parent id of a sequence's first block


@dataclass(eq=False)
class _Entry:
    id: int
    lanes: set[int] = field(default_factory=set)


class PrefixIndex:
    """The named full blocks of ``lanes`` lanes of ``block_size``-token blocks."""

    def __init__(self, lanes: int, block_size: int) -> None:
        self.block_size = block_size
        self._entries: dict[tuple[int, bytes], _Entry] = {}
        self._held: list[list[tuple[int, bytes]]] = [[] for _ in range(lanes)]  # names, by depth
        self._ids = itertools.count()

    def depth(self, lane: int) -> int:
        """How many leading blocks of ``lane`` are named."""
        return len(self._held[lane])

    def add(self, lane: int, tokens: np.ndarray) -> None:
        """``lane``'s next block is full and holds ``tokens`` (int64, ``block_size`` of them)."""
        held = self._held[lane]
        parent = self._entries[held[-1]].id if held else _ROOT
        name = (parent, tokens.astype(np.int64, copy=False).tobytes())
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = _Entry(next(self._ids))
        entry.lanes.add(lane)
        held.append(name)

    def drop(self, lane: int, depth: int) -> int:
        """``lane`` no longer holds its blocks from ``depth`` on; how many it held."""
        held = self._held[lane]
        dropped = held[depth:]
        for name in dropped:
            entry = self._entries[name]
            entry.lanes.discard(lane)
            if not entry.lanes:
                del self._entries[name]
        del held[depth:]
        return len(dropped)

    def longest(self, tokens: np.ndarray, most: int) -> tuple[int, set[int]]:
        """How many of the first ``most`` blocks of ``tokens`` are held, and the lanes
        that hold them all (empty for none)."""
        size, parent, lanes = self.block_size, _ROOT, set[int]()
        for depth in range(most):
            block = tokens[depth * size : (depth + 1) * size]
            entry = self._entries.get((parent, block.astype(np.int64, copy=False).tobytes()))
            if entry is None:
                return depth, set(lanes)
            parent, lanes = entry.id, entry.lanes
        return most, set(lanes)
