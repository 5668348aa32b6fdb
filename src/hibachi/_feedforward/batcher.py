"""`FeedforwardBatcher`: dynamic batching for models that answer in one call."""

from __future__ import annotations

import math
import threading
import time
from typing import Any, final

from .._backends import Backend
from .._core.delivery import Channels
from .._core.lifecycle import Lifecycle, State
from .._core.model import ModelRunner
from .._core.pipeline import Pipeline, Stages
from .._core.queue import WorkQueue
from .._core.settings import UNSET, check_count, check_flag, renamed
from .._core.time_limits import check_timeout
from .._core.values import describe_value
from .._exceptions import ConfigurationError
from .core import STACK_AHEAD_MIN, FeedforwardCore
from .engine import FeedforwardEngine
from .handle import ResultHandle, make_handle
from .item import InputChecker, Item
from .loop_inbox import LoopInboxes
from .pipelined import PipelinedFeedforwardEngine
from .stats import FeedforwardStats

__all__ = ["FeedforwardBatcher"]

_OPEN = State.OPEN  # an enum member looked up once: `run` is every caller's hot path


@final
class FeedforwardBatcher(Lifecycle):
    """Serves many concurrent callers, stacking their inputs into one model call.

    Each caller's input is an array, or a dict / tuple / list nesting of arrays.
    Inputs of one kind (the same nesting, and per leaf the same shape, dtype
    and device) are stacked leaf by leaf along a new axis 0, and
    ``model(batch)`` is called with the stacked nesting. It returns a
    batch-major array, or any nesting of batch-major arrays; each caller gets
    its own row. The model may be a function, a bound method, a
    ``torch.nn.Module``, sync or async; it runs on the batcher's own thread,
    so it never blocks a caller's event loop.

    The model must not write into its input, and a caller must not change
    its input before the result is in: a batch of one item that needs no
    padding is that caller's own arrays with a new axis 0 (NumPy and PyTorch
    views of contiguous arrays), not a copy.

    Args:
        model: the model callable.
        max_batch_size: at most this many items per model call.
        max_wait: seconds a batch that is not full may wait for more items,
            from the arrival of its oldest. 0 (the default): whenever the
            model is free it takes what is queued, so batches grow with load.
            ``math.inf``: a batch leaves only when full, or when the batcher closes.
        pad_value: right-pad along the first axis, to the longest in the
            batch, so that inputs of different lengths share a batch: a
            scalar for every leaf, or a nesting like the input's (a None leaf
            is not padded), e.g. ``{"input_ids": 0, "attention_mask": 0}``.
            An item's length is the longest first axis of its padded leaves;
            all padded leaves of a batch get the batch's longest length.
            A batch is the oldest waiting item and the items that make the
            cheapest batch with it, by what batches have cost so far: it may
            hold fewer, similar-length items, rather than pad many to a long one.
        trim_output: with ``pad_value``, cut each result leaf whose first axis
            has the batch's padded length back to the item's own length.
        max_batch_tokens: with ``pad_value``, at most this many padded cells
            (items times padded length) per batch, to bound the model's memory;
            None (the default) for no bound. An item longer than this on its
            own goes through the model alone.
        max_queue_size: at most this many items wait; beyond, ``run`` raises
            `QueueFull`. None for unbounded.
        backend: a `Backend` for a tensor library hibachi does not know; every
            leaf must then be one of its arrays.
        copy_results: True (the default): each result is an array of its own,
            and with torch an ordinary tensor (in-place operations and
            autograd work). False: each result is a view into the model's
            output for the whole batch, which it keeps alive, and with torch
            an inference tensor; it saves a copy per result.
        stack_ahead: stack and pad the next batch on a helper thread while
            the model runs the current one, for kinds of input whose stacking
            has cost at least ``STACK_AHEAD_MIN`` seconds and when a full batch
            waits. False (the default): every batch is stacked on the
            batcher's thread, just before its model call. It pays only with a
            core to spare beside the model and the callers' event loop
            (docs/feedforward.md). Not with a `Pipeline` model, whose stages
            already run side by side.
        overlap: the old name of ``stack_ahead``; deprecated.

    Counts (``max_batch_size``, ``max_batch_tokens``, ``max_queue_size``) are
    ints (NumPy's too) from 1, and yes/no settings bools: anything else is
    refused with `ConfigurationError`.
    """

    def __init__(
        self,
        model: Any,
        *,
        max_batch_size: int = 32,
        max_wait: float = 0.0,
        pad_value: Any = None,
        trim_output: bool = False,
        max_queue_size: int | None = 65536,
        backend: Backend | None = None,
        max_batch_tokens: int | None = None,
        copy_results: bool = True,
        stack_ahead: bool = False,
        overlap: bool = UNSET,
    ) -> None:
        super().__init__()
        stack_ahead = renamed(
            "FeedforwardBatcher", "overlap", "stack_ahead", overlap, stack_ahead, False
        )
        max_batch_size = check_count(max_batch_size, "max_batch_size")
        if max_batch_tokens is not None:
            max_batch_tokens = check_count(max_batch_tokens, "max_batch_tokens")
            if pad_value is None:
                raise ConfigurationError("max_batch_tokens needs a pad_value: it bounds padding")
        if max_queue_size is not None:
            max_queue_size = check_count(max_queue_size, "max_queue_size", most=None)
        _check_settings(max_wait, pad_value, check_flag(trim_output, "trim_output"))
        if check_flag(stack_ahead, "stack_ahead") and isinstance(model, Pipeline):
            raise ConfigurationError(
                "stack_ahead stacks the next batch beside the model; a Pipeline already runs "
                "its stages side by side: make the stacking a stage of it instead"
            )
        self._inputs = InputChecker(pad_value, backend)
        self._queue: WorkQueue[Item] = WorkQueue(max_queue_size)
        self._core = FeedforwardCore(
            max_batch_size=max_batch_size,
            max_wait=_seconds(max_wait),
            max_batch_tokens=max_batch_tokens,
            trim_output=trim_output,
            copy_results=check_flag(copy_results, "copy_results"),
            stack_ahead_min=STACK_AHEAD_MIN if stack_ahead else None,
        )
        self._inboxes = LoopInboxes(Channels(), self._queue.wake_sleeper)
        self._stages = (
            Stages(model, "hibachi-ff", model.groups_or(len(model.stages) + 1))
            if isinstance(model, Pipeline)
            else None
        )
        self._engine = (
            FeedforwardEngine(
                self._core, self._queue, ModelRunner(model), self._inboxes, "hibachi-ff"
            )
            if self._stages is None
            else PipelinedFeedforwardEngine(
                self._core, self._queue, self._stages, self._inboxes, "hibachi-ff"
            )
        )

    @property
    def max_batch_size(self) -> int:
        return self._core.max_batch_size

    def run(self, x: Any, *, timeout: float | None = None) -> ResultHandle:
        """Queue input ``x`` and return the handle of its result.

        Raises `InvalidRequest` for an input that is not an array or a nesting
        of arrays of one library (or does not match ``pad_value``), `QueueFull`
        when the queue is full, `BatcherClosed` when the batcher is not open.
        ``timeout`` (seconds): the handle fails with `Timeout` if the result is
        not in by then, and the item is dropped if it has not reached the model.
        ``math.inf`` (or more seconds than the platform can wait) means no limit.
        In an event loop, the items queued in one turn of the loop reach the
        model when the turn ends, together.
        """
        if self._state is not _OPEN:
            self._check_open()
        now = time.monotonic()
        seconds = None if timeout is None else check_timeout(timeout)
        deadline = None if seconds is None else now + seconds
        inbox = self._inboxes.for_current_loop()
        handle = make_handle(self._inputs.describe(x), inbox, now, deadline)
        if inbox is None:
            self._queue.put(handle)
        else:  # the engine wakes when this turn of the loop ends, for all its arrivals
            self._queue.put(handle, wake=False)
            inbox.hand_over()
        if seconds is not None:
            handle._arm(seconds)
        return handle

    def stats(self) -> FeedforwardStats:
        """A snapshot of the batcher's counters."""
        c = self._core.counters
        waiting, held = len(self._queue), len(self._core)
        ended = c.completed + c.failed + c.cancelled + c.timed_out
        return FeedforwardStats(
            requests_submitted=c.received + waiting,
            requests_completed=c.completed,
            requests_failed=c.failed,
            requests_cancelled=c.cancelled,
            requests_timed_out=c.timed_out,
            batches=c.batches,
            mean_batch_size=c.batched_items / c.batches if c.batches else 0.0,
            mean_queue_wait=c.queue_wait / c.dispatched if c.dispatched else 0.0,
            padding_fraction=c.padding_cells / c.cells if c.cells else 0.0,
            released_full=c.released_full,
            released_waited=c.released_waited,
            released_eager=c.released_eager,
            retried_batches=c.retried_batches,
            queue_depth=waiting + held,
            requests_in_flight=max(0, c.received - ended - held),
            stage_busy=() if self._stages is None else self._stages.busy(),
        )


def _seconds(max_wait: float) -> float:
    """``max_wait`` as a float; infinite where it is too large for one (``10**400``)."""
    return math.inf if max_wait >= threading.TIMEOUT_MAX else float(max_wait)


def _check_settings(max_wait: object, pad_value: object, trim_output: bool) -> None:
    number = isinstance(max_wait, int | float) and not isinstance(max_wait, bool)
    if not number or not 0 <= max_wait <= math.inf:  # type: ignore[operator]
        raise ConfigurationError(
            f"max_wait must be a number of seconds >= 0, got {describe_value(max_wait)}"
        )
    if trim_output and pad_value is None:
        raise ConfigurationError("trim_output needs a pad_value: only padded outputs are trimmed")
