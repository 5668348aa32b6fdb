"""A frozen snapshot of what a `FeedforwardBatcher` has done."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FeedforwardStats"]


@dataclass(frozen=True)
class FeedforwardStats:
    """A snapshot of a `FeedforwardBatcher`'s counters.

    ``batches`` counts model calls, the reruns of halves of a failed batch
    and of an item that failed alone (``retried_batches``) included;
    ``mean_batch_size`` is items per model call.
    Each batch taken from the queue was released for one reason:
    ``released_full`` (it filled ``max_batch_size``), ``released_waited``
    (its oldest item had waited ``max_wait``) or ``released_eager`` (nothing
    made it wait: ``max_wait=0``, or the batcher was closing).
    ``mean_queue_wait`` is in seconds, from ``run()`` to the item's batch
    leaving the queue; ``padding_fraction`` is the share of the cells handed
    to the model that were padding.
    """

    requests_submitted: int
    requests_completed: int
    requests_failed: int
    requests_cancelled: int
    requests_timed_out: int
    batches: int
    mean_batch_size: float
    mean_queue_wait: float
    padding_fraction: float
    released_full: int
    released_waited: int
    released_eager: int
    retried_batches: int
    queue_depth: int
