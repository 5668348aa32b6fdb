"""A frozen snapshot of what an `AutoregressiveBatcher` has done."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AutoregressiveStats"]


@dataclass(frozen=True)
class AutoregressiveStats:
    """A snapshot of an `AutoregressiveBatcher`'s counters.

    ``mean_batch_fill`` is the mean of (rows in the step / max_batch_size);
    ``padding_fraction`` is the share of the cells handed to the model that
    were padding.
    """

    requests_admitted: int
    requests_finished: int
    requests_cancelled: int
    requests_failed: int
    requests_timed_out: int
    steps: int
    tokens: int
    mean_batch_fill: float
    padding_fraction: float
    queue_depth: int
    active_rows: int
