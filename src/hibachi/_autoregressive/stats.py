"""A frozen snapshot of what an `AutoregressiveBatcher` has done."""

from __future__ import annotations

from dataclasses import dataclass

from .._core.settings import warn_renamed

__all__ = ["AutoregressiveStats", "MemoryStats"]


@dataclass(frozen=True)
class MemoryStats:
    """What an `IncrementalModel`'s bounded memory holds (a paged key/value cache's blocks).

    Memory is counted in blocks of ``block_size`` tokens: ``blocks_used`` are
    held by rows, ``blocks_cached`` by no row but kept for the prefixes they
    hold (given back, least recently used first, when memory is needed),
    ``blocks_free`` by nothing; the three add up to the budget's blocks.
    ``peak_blocks`` is the most blocks used and cached at once so far.

    ``prefix_cache_queries`` counts the prompt tokens the model looked up in
    its cache of prefixes, ``prefix_cache_hits`` those it found (their keys
    and values were not computed again).
    """

    blocks_used: int
    blocks_cached: int
    blocks_free: int
    block_size: int = 1
    bytes_per_block: int = 0
    peak_blocks: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0

    @property
    def blocks_total(self) -> int:
        """The blocks the budget allows."""
        return self.blocks_used + self.blocks_cached + self.blocks_free

    @property
    def usage(self) -> float:
        """The share of the budget's blocks held by rows (0.0 … 1.0)."""
        total = self.blocks_total
        return self.blocks_used / total if total else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        """The share of looked-up prompt tokens found in the prefix cache."""
        queries = self.prefix_cache_queries
        return self.prefix_cache_hits / queries if queries else 0.0


@dataclass(frozen=True)
class AutoregressiveStats:
    """A snapshot of an `AutoregressiveBatcher`'s counters.

    ``mean_batch_fill`` is the mean of (rows in the step / max_batch_size);
    ``padding_fraction`` is the share of the cells handed to the model that
    were padding.

    ``requests_submitted`` counts the requests ``run`` accepted;
    ``requests_admitted`` those that got a row. Every accepted request is in
    exactly one place, so whenever the batcher is idle (or closed)::

        requests_submitted == requests_completed + requests_cancelled
            + requests_failed + requests_timed_out + requests_in_flight + queue_depth

    (A snapshot taken while requests move may be off by those in motion.)
    ``requests_completed`` counts the requests that ended with their stop
    token or their budget; ``requests_in_flight`` those that hold a row.

    ``requests_preempted`` counts the times a row was preempted (its memory
    given to others, its request queued again to be recomputed);
    ``peak_requests_in_flight`` is the most rows active at once so far.
    ``memory``: what the model's memory holds (`MemoryStats`), where the
    model reports it (`IncrementalModel.memory_stats`); else None.

    ``stage_busy``: with a `Pipeline` model, the seconds each stage has spent
    in its calls (divided by the time under load: each stage's busy share);
    empty for a plain model. ``mean_batch_fill`` is then per group of rows.
    """

    requests_admitted: int
    requests_completed: int
    requests_cancelled: int
    requests_failed: int
    requests_timed_out: int
    steps: int
    tokens: int
    mean_batch_fill: float
    padding_fraction: float
    queue_depth: int
    requests_in_flight: int
    requests_submitted: int = 0
    stage_busy: tuple[float, ...] = ()
    requests_preempted: int = 0
    peak_requests_in_flight: int = 0
    memory: MemoryStats | None = None

    @property
    def requests_finished(self) -> int:
        """Deprecated: ``requests_completed``."""
        warn_renamed("AutoregressiveStats.requests_finished", "requests_completed")
        return self.requests_completed

    @property
    def active_rows(self) -> int:
        """Deprecated: ``requests_in_flight``."""
        warn_renamed("AutoregressiveStats.active_rows", "requests_in_flight")
        return self.requests_in_flight
