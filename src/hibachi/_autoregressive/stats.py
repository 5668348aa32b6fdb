"""A frozen snapshot of what an `AutoregressiveBatcher` has done."""

from __future__ import annotations

from dataclasses import dataclass

from .._core.settings import warn_renamed

__all__ = ["AutoregressiveStats"]


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
