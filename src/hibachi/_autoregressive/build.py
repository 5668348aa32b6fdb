"""How an `AutoregressiveBatcher` is put together: its settings checked, then its parts.

`check_settings` turns the constructor's arguments into `Settings` (or refuses
them with `ConfigurationError`); `build` makes the schedulers and the engine
that suit the model:

- a plain model, or an `IncrementalModel` without stages: one `Scheduler` and
  an `Engine` (an incremental model's rows over a `SlotLayout`);
- a `Pipeline`: a `Scheduler` per group of rows, and a `PipelinedEngine`;
- an `IncrementalModel` whose ``pipeline()`` gives stages: the same, each
  group over a `SlotLayout` of its own range of slots.

With ``delivery_thread``, every scheduler sends its tokens through one `Courier`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backends import Backend, backend_of
from .._core.delivery import Channels
from .._core.engine_thread import EngineThread
from .._core.model import ModelRunner, describe
from .._core.pipeline import Pipeline, Stages
from .._core.queue import WorkQueue
from .._core.settings import MAX_COUNT, check_count, check_flag
from .._core.values import describe_value
from .._exceptions import ConfigurationError
from .courier import Courier
from .engine import Engine
from .incremental import IncrementalModel, overrides
from .layout import Layout
from .pipelined import PipelinedEngine, group_sizes, slot_ranges
from .request import Request, check_cast
from .scheduler import Scheduler
from .slots import SlotLayout

__all__ = ["MAX_BATCH_SIZE", "Parts", "Settings", "build", "check_settings"]

MAX_BATCH_SIZE = 1 << 16
"""The most rows a batcher's buffers are built for."""

NAME = "hibachi-ar"
"""The engine's thread name (and its stages' and courier's prefix)."""


@dataclass(frozen=True)
class Settings:
    """An `AutoregressiveBatcher`'s settings, checked; tokens as storage arrays."""

    backend: Backend
    stop_token: Any
    pad_value: Any
    device: Any
    max_batch_size: int
    max_queue_size: int | None
    max_new_tokens: int
    max_batch_tokens: int
    max_prompt_length: int | None
    max_unread_tokens: int | None
    delivery_thread: bool


def check_settings(
    *,
    stop_token: Any,
    pad_value: Any,
    max_batch_size: object,
    max_queue_size: object,
    max_new_tokens: object,
    backend: object,
    max_batch_tokens: object,
    max_prompt_length: object,
    max_unread_tokens: object,
    delivery_thread: object,
) -> Settings:
    """The settings, each checked (`ConfigurationError` for the first that is not sound)."""
    if backend is not None and not isinstance(backend, Backend):
        raise ConfigurationError(
            f"backend must implement hibachi.Backend, got {describe_value(backend)}"
        )
    found = backend or _backend_for(pad_value)
    pad = _token(found, pad_value, "pad_value")
    stop = _token(found, stop_token, "stop_token")
    _check_tokens(found, stop, pad)
    return Settings(
        backend=found,
        stop_token=found.to_storage(stop, pad),
        pad_value=pad,
        device=found.device(found.to_user(pad)),
        max_new_tokens=check_count(max_new_tokens, "max_new_tokens"),
        max_batch_size=check_count(max_batch_size, "max_batch_size", most=MAX_BATCH_SIZE),
        max_queue_size=_optional_count(max_queue_size, "max_queue_size", most=None),
        max_batch_tokens=check_count(max_batch_tokens, "max_batch_tokens"),
        max_unread_tokens=_optional_count(max_unread_tokens, "max_unread_tokens"),
        max_prompt_length=_optional_count(max_prompt_length, "max_prompt_length"),
        delivery_thread=check_flag(delivery_thread, "delivery_thread"),
    )


@dataclass(frozen=True)
class Parts:
    """What `build` makes: the engine and the schedulers it steps (the first takes
    requests in), the channels and courier results leave through, the stages."""

    engine: EngineThread
    schedulers: list[Scheduler]
    channels: Channels
    courier: Courier | None
    stages: Stages | None


def build(model: Any, settings: Settings, on_lost: Callable[[], None]) -> Parts:
    """The parts that serve ``model``; ``on_lost``: a caller's event loop was found closed."""
    channels = Channels()
    courier = (
        Courier(settings.backend, channels, on_lost, f"{NAME}-courier")
        if settings.delivery_thread
        else None
    )
    make = _SchedulerMaker(settings, courier)
    if isinstance(model, Pipeline):
        groups = group_sizes(settings.max_batch_size, model.groups_or(len(model.stages)))
        schedulers = [make(rows) for rows in groups]
        return _pipelined(model, schedulers, channels, courier, release=None)
    staged = _stages_of(model)
    if staged is not None:
        release = ModelRunner(model.release)
        ranges = slot_ranges(settings.max_batch_size, staged.groups_or(len(staged.stages)))
        schedulers = [make(len(slots), _slots(settings, release, model, slots)) for slots in ranges]
        return _pipelined(staged, schedulers, channels, courier, release)
    if isinstance(model, IncrementalModel):
        runner = ModelRunner(model.step)
        slots = range(settings.max_batch_size)
        scheduler = make(settings.max_batch_size, _slots(settings, runner, model, slots))
    else:
        runner = ModelRunner(model)
        scheduler = make(settings.max_batch_size)
    engine = Engine(scheduler, runner, channels, NAME, courier=courier)
    return Parts(engine, [scheduler], channels, courier, stages=None)


class _SchedulerMaker:
    """Makes the schedulers of one batcher: one queue, one way to send tokens."""

    def __init__(self, settings: Settings, courier: Courier | None) -> None:
        self._settings = settings
        self._queue: WorkQueue[Request] = WorkQueue(settings.max_queue_size)
        self._send = None if courier is None else courier.send

    def __call__(self, rows: int, layout: Layout | None = None) -> Scheduler:
        s = self._settings
        return Scheduler(
            s.backend,
            stop_token=s.stop_token,
            pad_value=s.pad_value,
            max_batch_size=rows,
            queue=self._queue,
            layout=layout,
            max_unread_tokens=s.max_unread_tokens,
            send=self._send,
        )


def _pipelined(
    pipeline: Pipeline,
    schedulers: list[Scheduler],
    channels: Channels,
    courier: Courier | None,
    release: ModelRunner | None,
) -> Parts:
    stages = Stages(pipeline, NAME, len(schedulers))
    engine = PipelinedEngine(schedulers, stages, channels, NAME, release=release, courier=courier)
    return Parts(engine, schedulers, channels, courier, stages)


def _slots(
    settings: Settings, runner: ModelRunner, model: IncrementalModel, slots: range
) -> SlotLayout:
    """The layout of a group that owns ``slots``; ``runner`` calls the model's release.
    The model's ``admit`` and ``reserve`` are asked only where it overrides them."""
    release = model.release
    return SlotLayout(
        settings.backend,
        settings.pad_value,
        len(slots),
        max_batch_tokens=settings.max_batch_tokens,
        release=lambda slot: runner.call(release, slot),
        first_slot=slots.start,
        admit=model.admit if overrides(model, "admit") else None,
        reserve=model.reserve if overrides(model, "reserve") else None,
    )


def _stages_of(model: Any) -> Pipeline | None:
    """An incremental model's `Pipeline` of stages, if it has one."""
    if not isinstance(model, IncrementalModel):
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


def _backend_for(pad_value: Any) -> Backend:
    """The pad value's backend; NumPy for a Python scalar."""
    found = backend_of(pad_value)
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
            f"stop_token has shape {tuple(stop.shape)} but pad_value {tuple(pad.shape)}: "
            "both have the shape of one token"
        )
    check_cast(backend, stop.dtype, pad, "stop_token", ConfigurationError)


def _optional_count(value: object, name: str, *, most: int | None = MAX_COUNT) -> int | None:
    """None, or a count as `check_count` has it."""
    return None if value is None else check_count(value, name, most=most)
