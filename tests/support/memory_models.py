"""`MemoryModel`: a `HistoryModel` whose memory is a budget of blocks, with a cache of prefixes.

Each slot holds ``ceil(tokens / block)`` blocks of a budget of ``blocks``:
`admit` refuses a prompt whose blocks are not free, `reserve` refuses a step
whose new tokens need blocks that are not free. Released slots leave their
history in a cache of prefixes (which costs no blocks here): a prompt that
starts with whole blocks of a cached history is given them (`admit` says how
many tokens), as a paged cache would. Recorded as violations: a step that
feeds a slot more tokens than it reserved, and a slot admitted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from support.incremental_models import HistoryModel


def blocks_for(tokens: int, block: int) -> int:
    return -(-tokens // block)


@dataclass
class MemoryModel(HistoryModel):
    """Per-slot histories in at most ``blocks`` blocks of ``block`` tokens."""

    blocks: int = 8
    block: int = 4
    prefix_cache: bool = False
    admits: list[tuple[Any, int, int]] = field(default_factory=list)  # (tag, generated, held)
    refusals: int = 0  # reserve() calls answered False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.held = [0] * self.slots  # blocks per slot
        self.room = [0] * self.slots  # tokens reserved per slot
        self.admitted_slots: set[int] = set()
        self.cached: list[list[int]] = []

    @property
    def used(self) -> int:
        return sum(self.held)

    def admit(self, slot: int, prompt: Any, options: Any, generated: int) -> int | None:
        if slot in self.admitted_slots:
            self.violations.append(f"slot {slot} admitted twice")
        tokens = np.asarray(prompt).tolist()
        need = blocks_for(len(tokens), self.block)
        if self.used + need > self.blocks:
            return None
        held = self._cached_prefix(tokens) if self.prefix_cache else 0
        self.held[slot], self.room[slot] = need, len(tokens)
        self.history[slot] = tokens[:held]
        self.admitted_slots.add(slot)
        self.admits.append((options, generated, held))
        return held

    def _cached_prefix(self, tokens: list[int]) -> int:
        """The most whole blocks of ``tokens`` some cached history starts with (not all)."""
        best = 0
        for history in self.cached:
            same = 0
            while same < min(len(history), len(tokens)) and history[same] == tokens[same]:
                same += 1
            best = max(best, same - same % self.block)
        return min(best, len(tokens) - 1)

    def reserve(self, slots: Any, counts: Any) -> bool:
        wanted = {}
        for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
            seen = len(self.history[slot] or [])
            wanted[slot] = blocks_for(seen + count, self.block)
        extra = sum(max(0, need - self.held[slot]) for slot, need in wanted.items())
        if self.used + extra > self.blocks:
            self.refusals += 1
            return False
        for slot, need in wanted.items():
            self.held[slot] = max(self.held[slot], need)
            self.room[slot] = max(self.room[slot], self.held[slot] * self.block)
        return True

    def _feed(self, slot: int, real: list[int]) -> int:
        seen = len(self.history[slot] or [])
        if seen + len(real) > self.held[slot] * self.block:
            self.violations.append(f"slot {slot} fed past the memory it reserved")
        return super()._feed(slot, real)

    def release(self, slot: int) -> None:
        history = self.history[slot]
        if self.prefix_cache and history:
            self.cached.append(list(history))
        self.held[slot] = self.room[slot] = 0
        self.admitted_slots.discard(slot)
        super().release(slot)
