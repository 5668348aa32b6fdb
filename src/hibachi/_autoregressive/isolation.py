"""One bad request fails alone: finding the rows of a failed step that fail on their own.

When the model raises on a step (or returns something unusable), the step is
retried on halves of its rows, and the halves of a half that fails, down to
single rows; a row that fails alone fails twice before it is given up on, so a
transient fault (a model that fails once on a good batch) costs nobody their
answer. Every row that succeeds in some retry gets the token of that retry, as
it would in a step of its own; only the rows that fail alone end, with
`ModelError` chaining the model's exception.

Retrying a subset of a step's rows is safe because a call that raised has
changed nothing: a stateless model keeps no state, and an `IncrementalModel`
commits no per-row state until its step returns (its contract). A stateful
model's call that *returned* an unusable output may have committed it, so its
rows are not retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.model import is_fatal, model_error
from .._exceptions import ModelError
from .scheduler import Scheduler

__all__ = ["attempt", "isolate"]

_TRIES_ALONE = 2  # a row fails only after failing this many times in a call of its own


class Failed:
    """Why a call failed, and whether its rows may be retried."""

    __slots__ = ("error", "retry")

    def __init__(self, error: ModelError, *, retry: bool) -> None:
        self.error = error
        self.retry = retry


def attempt(
    scheduler: Scheduler, call: Callable[..., Any], inputs: tuple[Any, ...], size: int
) -> tuple[Any, Failed | None]:
    """The model on ``inputs`` (``size`` rows): its checked output, or why it failed.

    `KeyboardInterrupt` and `SystemExit` propagate (`is_fatal`); any other
    exception from the model is a failure of this call.
    """
    try:
        with scheduler.backend.inference_context():
            output: Any = call(*inputs)
    except BaseException as exc:
        if is_fatal(exc):
            raise
        return None, Failed(model_error(exc), retry=True)
    try:
        return scheduler.check_output(output, size), None
    except ModelError as error:
        return None, Failed(error, retry=not scheduler.layout.stateful)


def isolate(scheduler: Scheduler, call: Callable[..., Any], size: int, failed: Failed) -> None:
    """The step over ``size`` rows failed: retry parts of it, then apply what came out.

    Rows that succeed in some retry get that retry's token; the others end
    with the error of their last failure.
    """
    backend, padding = scheduler.backend, scheduler.pad_value
    column = backend.full((size, *padding.shape), padding)
    failures: dict[int, BaseException] = {}
    pending: list[tuple[list[int], int]] = []

    def retry_or_fail(positions: list[int], tries: int, failed: Failed) -> None:
        parts = _split(positions, failed, tries)
        if not parts:
            failures.update(dict.fromkeys(positions, failed.error))
        pending.extend(parts)

    retry_or_fail(list(range(size)), 0, failed)
    while pending:
        positions, tries = pending.pop()
        inputs = scheduler.subset_inputs(positions)
        output, failed_now = attempt(scheduler, call, inputs, len(positions))
        if failed_now is not None:
            retry_or_fail(positions, tries, failed_now)
            continue
        for i, position in enumerate(positions):
            column[position, ...] = output[i, ...]
    scheduler.apply(column, failures)


def _split(positions: list[int], failed: Failed, tries: int) -> list[tuple[list[int], int]]:
    """The calls to try next after ``positions`` failed (last in the list runs first)."""
    if not failed.retry:
        return []
    if len(positions) == 1:
        return [(positions, tries + 1)] if tries + 1 < _TRIES_ALONE else []
    middle = len(positions) // 2
    return [(positions[middle:], 0), (positions[:middle], 0)]
