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

    Every request `run()` accepted is counted once in ``requests_submitted``
    and, at any moment, in exactly one of the others::

        requests_submitted == requests_completed + requests_failed
                              + requests_cancelled + requests_timed_out
                              + requests_in_flight + queue_depth

    ``requests_in_flight`` counts requests taken from the queue that have no
    outcome yet: in the model, or in the halves of a failed batch waiting to be
    rerun; ``queue_depth`` those still waiting for a batch. A request is
    counted by what the engine did with it: one whose result was delivered as
    its caller cancelled is completed, not cancelled. The identity is exact
    whenever the batcher is idle or closed; a snapshot taken while it works
    may be off by the requests moving at that instant.

    ``stage_busy``: with a `Pipeline` model, the seconds each stage has spent
    in its calls (divided by the time under load: each stage's busy share);
    empty for a plain model.
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
    requests_in_flight: int = 0
    stage_busy: tuple[float, ...] = ()
