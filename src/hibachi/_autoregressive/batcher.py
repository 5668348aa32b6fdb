"""`AutoregressiveBatcher`: continuous batching for token-by-token models."""

from __future__ import annotations

import time
from typing import Any, final

import numpy as np

from .._backends import Backend, backend_of
from .._core.delivery import Channels
from .._core.engine_thread import EngineThread
from .._core.lifecycle import Lifecycle
from .._core.model import ModelRunner, describe, is_fatal, model_error
from .._core.pipeline import Pipeline, Stages
from .._core.queue import WorkQueue
from .._core.time_limits import check_timeout
from .._core.values import describe_value
from .._exceptions import ConfigurationError, HibachiError, InvalidRequest, ModelError
from .courier import Courier, CourierSink
from .engine import Engine
from .incremental import Accepted, IncrementalModel
from .layout import Layout
from .pipelined import PipelinedEngine, group_sizes, merged_counters, slot_ranges
from .request import MAX_COUNT, Request, check_budget, check_prompt
from .scheduler import Scheduler
from .slots import SlotLayout
from .stats import AutoregressiveStats
from .stream import TokenStream

__all__ = ["MAX_BATCH_SIZE", "AutoregressiveBatcher"]

MAX_BATCH_SIZE = 1 << 16
"""The most rows a batcher's buffers are built for."""


@final
class AutoregressiveBatcher(Lifecycle):
    """Serves many concurrent generation requests with one model call per step.

    ``model(tokens, mask)`` receives ``tokens`` of shape (B, S, *token_shape),
    left-padded with ``padding_token``, and ``mask`` (B, S), True on real
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
        padding_token: fills the left of shorter rows; fixes dtype and device.
        max_batch_size: at most this many sequences per model call.
        max_queue_size: at most this many requests wait; beyond, ``run``
            raises `QueueFull`. None for unbounded.
        max_new_tokens: the default budget of a request that names none.
        backend: a `Backend` for a tensor library hibachi does not know.
        prefill_chunk: with an `IncrementalModel`, the most cells (rows *
            width) a step that feeds prompts may hand the model. Such steps
            alternate with the steps of rows that are decoding, so this bounds
            how long a long prompt holds them up.
        max_prompt_length: the longest prompt ``run`` accepts (in tokens);
            a longer one is refused with `InvalidRequest`. None: no limit.
        max_unread_tokens: back-pressure. A stream whose caller has left this
            many tokens unread is ended: after those tokens, its iteration
            raises `QueueFull`, and its row goes to others. None: no limit.
        overlap: deliver each step's tokens (one per row, the ends of streams,
            the wake-up of the callers' event loops) on a thread of their own,
            while the engine thread goes on to the next model call. Callers get
            the same tokens, in the same order, with the same ends. It pays
            when the model call leaves the GIL free for longer than a thread
            hand-off costs (a large model, a GPU); on a small CPU model it is
            slower (see the README). False: the engine thread delivers.

    Counts (``max_new_tokens``, ``prefill_chunk``, ``max_prompt_length``,
    ``max_unread_tokens``) are at most 2**63-1 and ``max_batch_size`` at most
    65536; a larger value is refused with `ConfigurationError` here (or
    `InvalidRequest` in ``run``).
    """

    def __init__(
        self,
        model: Any,
        *,
        stop_token: Any,
        padding_token: Any,
        max_batch_size: int = 16,
        max_queue_size: int | None = 4096,
        max_new_tokens: int = 1024,
        backend: Backend | None = None,
        prefill_chunk: int = 512,
        max_prompt_length: int | None = None,
        max_unread_tokens: int | None = 65536,
        overlap: bool = False,
    ) -> None:
        super().__init__()
        if backend is not None and not isinstance(backend, Backend):
            raise ConfigurationError(
                f"backend must implement hibachi.Backend, got {describe_value(backend)}"
            )
        self._backend = backend or _backend_for(padding_token)
        pad = _token(self._backend, padding_token, "padding_token")
        stop = _token(self._backend, stop_token, "stop_token")
        _check_tokens(self._backend, stop, pad)
        self._padding = pad
        self._device = self._backend.device(self._backend.to_user(pad))
        self._default_budget = _config(max_new_tokens, "max_new_tokens")
        _config(max_batch_size, "max_batch_size", most=MAX_BATCH_SIZE)
        if max_queue_size is not None:
            _config(max_queue_size, "max_queue_size", most=None)
        _config(prefill_chunk, "prefill_chunk")
        unread = (
            None if max_unread_tokens is None else _config(max_unread_tokens, "max_unread_tokens")
        )
        self._max_prompt_length = (
            None if max_prompt_length is None else _config(max_prompt_length, "max_prompt_length")
        )
        self._incremental = model if isinstance(model, IncrementalModel) else None
        self._max_batch_size = max_batch_size
        self._channels = Channels()
        if not isinstance(overlap, bool):
            raise ConfigurationError(f"overlap must be a bool, got {describe_value(overlap)}")
        self._courier = (
            Courier(self._backend, self._channels, self._note_departure, "hibachi-ar-courier")
            if overlap
            else None
        )
        queue: WorkQueue[Request] = WorkQueue(max_queue_size)

        def scheduler(rows: int, layout: Layout | None = None) -> Scheduler:
            made = Scheduler(
                self._backend,
                stop_token=self._backend.to_storage(stop, pad),
                padding_token=pad,
                max_batch_size=rows,
                queue=queue,
                layout=layout,
                max_unread_tokens=unread,
            )
            if self._courier is not None:
                made.send = self._courier.send
            return made

        self._engine: EngineThread
        self._stages: Stages | None = None
        staged = _staged(self._incremental)
        if isinstance(model, Pipeline):
            groups = model.groups_or(len(model.stages))
            self._schedulers = [scheduler(n) for n in group_sizes(max_batch_size, groups)]
            self._run_pipelined(model, None)
            return
        if self._incremental is not None and staged is not None:
            release = ModelRunner(self._incremental.release)
            self._schedulers = [
                scheduler(len(slots), self._slots(release, slots, prefill_chunk))
                for slots in slot_ranges(max_batch_size, staged.groups_or(len(staged.stages)))
            ]
            self._run_pipelined(staged, release)
            return
        runner = ModelRunner(model if self._incremental is None else self._incremental.step)
        layout: Layout | None = None
        if self._incremental is not None:
            layout = self._slots(runner, range(max_batch_size), prefill_chunk)
        self._schedulers = [scheduler(max_batch_size, layout)]
        self._engine = Engine(
            self._schedulers[0], runner, self._channels, "hibachi-ar", courier=self._courier
        )

    def _slots(self, runner: ModelRunner, slots: range, prefill_chunk: int) -> SlotLayout:
        """The layout of a group that owns ``slots``; ``runner`` calls the model's release."""
        assert self._incremental is not None
        release = self._incremental.release
        return SlotLayout(
            self._backend,
            self._padding,
            len(slots),
            prefill_chunk=prefill_chunk,
            release=lambda slot: runner.call(release, slot),
            first_slot=slots.start,
        )

    def _run_pipelined(self, pipeline: Pipeline, release: ModelRunner | None) -> None:
        stages = Stages(pipeline, "hibachi-ar", len(self._schedulers))
        self._engine = PipelinedEngine(
            self._schedulers,
            stages,
            self._channels,
            "hibachi-ar",
            release=release,
            courier=self._courier,
        )
        self._stages = stages

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

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
        budget = self._default_budget if max_new_tokens is None else check_budget(max_new_tokens)
        seconds = check_timeout(timeout)
        storage = check_prompt(
            self._backend, prompt, self._padding, self._device, self._max_prompt_length
        )
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
            requests_finished=c.finished,
            requests_cancelled=c.cancelled,
            requests_failed=c.failed,
            requests_timed_out=c.timed_out,
            steps=c.steps,
            tokens=c.tokens,
            mean_batch_fill=c.filled_rows / capacity if capacity else 0.0,
            padding_fraction=c.padding_cells / c.cells if c.cells else 0.0,
            queue_depth=len(self._scheduler.queue),
            active_rows=sum(len(g.rows) for g in groups),
            requests_submitted=c.submitted,
            stage_busy=() if self._stages is None else self._stages.busy(),
        )


def _staged(model: IncrementalModel | None) -> Pipeline | None:
    """The incremental model's `Pipeline` of stages, if it has one."""
    if model is None:
        return None
    try:
        staged = model.pipeline()
    except Exception as exc:
        raise ConfigurationError(f"the model's pipeline() raised {describe(exc)}") from exc
    if staged is not None and not isinstance(staged, Pipeline):
        raise ConfigurationError(
            f"an IncrementalModel's pipeline() must return a hibachi.Pipeline or None, "
            f"got {describe_value(staged)}"
        )
    return staged


def _backend_for(padding_token: Any) -> Backend:
    """The padding token's backend; NumPy for a Python scalar."""
    found = backend_of(padding_token)
    if found is None:
        found = backend_of(np.zeros(()))
        assert found is not None
    return found


def _token(backend: Backend, token: Any, name: str) -> Any:
    """A token as a storage array of the backend (Python scalars become NumPy)."""
    if backend.is_array(token):
        return backend.to_storage(token, token)
    if backend.name == "numpy" and isinstance(token, int | float | bool):
        return np.asarray(token)
    raise ConfigurationError(f"{name} must be a {backend.name} array, got {type(token).__name__}")


def _check_tokens(backend: Backend, stop: Any, pad: Any) -> None:
    if tuple(stop.shape) != tuple(pad.shape):
        raise ConfigurationError(
            f"stop_token has shape {tuple(stop.shape)} but padding_token {tuple(pad.shape)}: "
            "both have the shape of one token"
        )
    if not backend.can_cast(stop.dtype, pad.dtype):
        raise ConfigurationError(
            f"stop_token's dtype {stop.dtype} does not cast safely to padding_token's {pad.dtype}"
        )


def _config(value: object, name: str, *, most: int | None = MAX_COUNT) -> int:
    """A setting that is a count: an int in 1 … ``most`` (None: any), or ConfigurationError."""
    try:
        return check_budget(value, name, most=most)
    except InvalidRequest as exc:
        raise ConfigurationError(str(exc)) from None
