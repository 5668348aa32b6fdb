"""`AutoregressiveBatcher`: continuous batching for token-by-token models."""

from __future__ import annotations

import time
from typing import Any, final

from .._backends import Backend
from .._core.lifecycle import Lifecycle
from .._core.model import is_fatal, model_error
from .._core.settings import UNSET, renamed
from .._core.time_limits import check_timeout
from .._core.values import describe_value
from .._exceptions import HibachiError, InvalidRequest, ModelError
from .build import MAX_BATCH_SIZE, build, check_settings
from .courier import CourierSink
from .incremental import Accepted, IncrementalModel
from .pipelined import merged_counters
from .request import Request, check_budget, check_prompt
from .scheduler import Scheduler
from .stats import AutoregressiveStats
from .stream import TokenStream

__all__ = ["MAX_BATCH_SIZE", "AutoregressiveBatcher"]


@final
class AutoregressiveBatcher(Lifecycle):
    """Serves many concurrent generation requests with one model call per step.

    ``model(tokens, mask)`` receives ``tokens`` of shape (B, S, *token_shape),
    left-padded with ``pad_value``, and ``mask`` (B, S), True on real
    tokens; it returns one new token per row, shape (B, *token_shape). It may
    be a function, a bound method, a ``torch.nn.Module``, sync or async; it
    runs on the batcher's own thread, so it never blocks a caller's event loop.

    An `IncrementalModel` (a model with a per-sequence cache) is run
    incrementally instead: each step hands it only the tokens each row has not
    seen, with the row's slot number and the request's ``options``.

    Args:
        model: the model callable.
        stop_token: a sequence ends when the model produces this token (it is
            the stream's last token). ``token_shape`` is its shape.
        pad_value: the token that fills the left of shorter rows; fixes dtype
            and device. Required.
        max_batch_size: at most this many sequences per model call.
        max_queue_size: at most this many requests wait; beyond, ``run``
            raises `QueueFull`. None for unbounded.
        max_new_tokens: the default budget of a request that names none.
        backend: a `Backend` for a tensor library hibachi does not know.
        max_batch_tokens: with an `IncrementalModel`, the most cells (rows *
            width, padding included) a step that feeds prompts may hand the
            model. Such steps alternate with the steps of rows that are
            decoding, so this bounds how long a long prompt holds them up.
        max_prompt_length: the longest prompt ``run`` accepts (in tokens);
            a longer one is refused with `InvalidRequest`. None: no limit.
        max_unread_tokens: back-pressure. A stream whose caller has left this
            many tokens unread is ended: after those tokens, its iteration
            raises `QueueFull`, and its row goes to others. None: no limit.
        delivery_thread: deliver each step's tokens (one per row, the ends of
            streams, the wake-up of the callers' event loops) on a thread of
            their own, while the engine thread goes on to the next model call.
            Callers get the same tokens, in the same order, with the same ends.
            It pays when the model call leaves the GIL free for longer than a
            thread hand-off costs (a large model, a GPU); on a small CPU model
            it costs more than it saves (docs/autoregressive.md). False: the
            engine thread delivers.
        padding_token, prefill_chunk, overlap: the old names of ``pad_value``,
            ``max_batch_tokens`` and ``delivery_thread``; deprecated.

    Counts (``max_new_tokens``, ``max_batch_tokens``, ``max_prompt_length``,
    ``max_unread_tokens``) are at most 2**63-1 and ``max_batch_size`` at most
    65536; a larger value is refused with `ConfigurationError` here (or
    `InvalidRequest` in ``run``).
    """

    def __init__(
        self,
        model: Any,
        *,
        stop_token: Any,
        pad_value: Any = None,
        max_batch_size: int = 16,
        max_queue_size: int | None = 65536,
        max_new_tokens: int = 1024,
        backend: Backend | None = None,
        max_batch_tokens: int = 512,
        max_prompt_length: int | None = None,
        max_unread_tokens: int | None = 65536,
        delivery_thread: bool = False,
        padding_token: Any = UNSET,
        prefill_chunk: int = UNSET,
        overlap: bool = UNSET,
    ) -> None:
        super().__init__()
        owner = "AutoregressiveBatcher"
        pad_value = renamed(owner, "padding_token", "pad_value", padding_token, pad_value, None)
        if pad_value is None:
            raise TypeError(f"{owner}() missing 1 required keyword-only argument: 'pad_value'")
        settings = check_settings(
            stop_token=stop_token,
            pad_value=pad_value,
            max_batch_size=max_batch_size,
            max_queue_size=max_queue_size,
            max_new_tokens=max_new_tokens,
            backend=backend,
            max_batch_tokens=renamed(
                owner, "prefill_chunk", "max_batch_tokens", prefill_chunk, max_batch_tokens, 512
            ),
            max_prompt_length=max_prompt_length,
            max_unread_tokens=max_unread_tokens,
            delivery_thread=renamed(
                owner, "overlap", "delivery_thread", overlap, delivery_thread, False
            ),
        )
        self._settings = settings
        self._incremental = model if isinstance(model, IncrementalModel) else None
        parts = build(model, settings, self._note_departure)
        self._engine = parts.engine
        self._schedulers = parts.schedulers
        self._channels = parts.channels
        self._courier = parts.courier
        self._stages = parts.stages

    @property
    def max_batch_size(self) -> int:
        return self._settings.max_batch_size

    @property
    def _scheduler(self) -> Scheduler:
        """The scheduler that takes requests in (the first group's, with a `Pipeline`)."""
        return self._schedulers[0]

    def run(
        self,
        prompt: Any,
        *,
        max_new_tokens: int | None = None,
        timeout: float | None = None,
        options: Any = None,
    ) -> TokenStream:
        """Queue ``prompt`` (S, *token_shape) and return the stream of its new tokens.

        Raises `InvalidRequest` for a bad prompt or budget, `QueueFull` when
        the queue is full, `BatcherClosed` when the batcher is not open.
        ``timeout`` (seconds) ends the stream with `Timeout` if generation has
        not finished by then. ``options`` goes unchanged to an
        `IncrementalModel` (sampling parameters, say); other models take none.
        """
        self._check_open()
        s = self._settings
        budget = s.max_new_tokens if max_new_tokens is None else check_budget(max_new_tokens)
        seconds = check_timeout(timeout)
        storage = check_prompt(s.backend, prompt, s.pad_value, s.device, s.max_prompt_length)
        accepted = self._vet(prompt, budget, options)
        sink = self._channels.sink_for_current_context()
        deadline = None if seconds is None else time.monotonic() + seconds
        routed = sink if self._courier is None else CourierSink(sink, self._courier)
        request = Request(
            storage,
            accepted.max_new_tokens,
            routed,
            deadline=deadline,
            options=accepted.options,
            stops=accepted.ends_at_stop_token,
        )
        self._scheduler.submit(request)
        return TokenStream(request, sink, self._note_departure)

    def _note_departure(self) -> None:
        for scheduler in self._schedulers:
            scheduler.note_departure()

    def _vet(self, prompt: Any, budget: int, options: Any) -> Accepted:
        """The request's budget, options and stop rule, as the incremental model sees them."""
        if self._incremental is None:
            if options is not None:
                raise InvalidRequest("options are passed to an IncrementalModel only")
            return Accepted(budget, options)
        try:
            granted = self._incremental.check_request(prompt, budget, options)
        except HibachiError:
            raise
        except BaseException as exc:
            if is_fatal(exc):
                raise  # the caller's own thread is asked to stop
            raise model_error(exc) from exc
        accepted = granted if isinstance(granted, Accepted) else Accepted(granted, options)
        count = accepted.max_new_tokens
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= budget:
            raise ModelError(
                f"check_request() returned {describe_value(granted)}"
                f", expected an int in 1 … {budget} or an Accepted with one"
            )
        return accepted

    def stats(self) -> AutoregressiveStats:
        """A snapshot of the batcher's counters."""
        groups = self._schedulers
        c = merged_counters(groups) if len(groups) > 1 else groups[0].counters
        capacity = sum(g.counters.steps * g.max_batch_size for g in groups)
        return AutoregressiveStats(
            requests_admitted=c.admitted,
            requests_completed=c.completed,
            requests_cancelled=c.cancelled,
            requests_failed=c.failed,
            requests_timed_out=c.timed_out,
            steps=c.steps,
            tokens=c.tokens,
            mean_batch_fill=c.filled_rows / capacity if capacity else 0.0,
            padding_fraction=c.padding_cells / c.cells if c.cells else 0.0,
            queue_depth=len(self._scheduler.queue),
            requests_in_flight=sum(len(g.rows) for g in groups),
            requests_submitted=c.submitted,
            stage_busy=() if self._stages is None else self._stages.busy(),
            requests_preempted=c.preempted,
            peak_requests_in_flight=c.peak_rows,
            memory=None if self._incremental is None else self._incremental.memory_stats(),
        )
