"""BaseExceptions from the model (see `hibachi._core.model.is_fatal`), autoregressive batcher.

`KeyboardInterrupt` and `SystemExit` stop the engine: every caller ends with a
`HibachiError` that names them, and `health()` shows the failure. Any other
`BaseException` (`asyncio.CancelledError` from an async model, `GeneratorExit`,
a subclass of the user's own) fails only the requests of that call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import hibachi

pytestmark = [
    pytest.mark.usefixtures("no_leaked_engines"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

POISON = 13


class UsersOwnBaseException(BaseException):
    pass


NON_FATAL: list[Callable[[], BaseException]] = [
    asyncio.CancelledError,
    GeneratorExit,
    UsersOwnBaseException,
]
FATAL: list[Callable[[], BaseException]] = [KeyboardInterrupt, lambda: SystemExit(3)]


def raising(make_exc: Callable[[], BaseException], *, is_async: bool) -> Any:
    """next-int, except that a step holding a row whose last token is POISON raises."""

    def step(tokens: Any, mask: Any) -> Any:
        if (tokens[:, -1] == POISON).any():
            raise make_exc()
        return tokens[:, -1] + 1

    async def async_step(tokens: Any, mask: Any) -> Any:
        await asyncio.sleep(0)
        return step(tokens, mask)

    return async_step if is_async else step


def batcher_over(model: Any, **options: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), pad_value=np.int64(0), **options
    )


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("make_exc", NON_FATAL, ids=lambda f: f.__name__)
def test_a_non_fatal_base_exception_fails_only_its_step(
    make_exc: Callable[[], BaseException], is_async: bool
) -> None:
    with batcher_over(raising(make_exc, is_async=is_async), max_batch_size=1) as batcher:
        with pytest.raises(hibachi.ModelError) as info:
            list(batcher.run(np.array([POISON])))
        assert type(info.value.__cause__) is type(make_exc())
        assert [int(t) for t in batcher.run(np.array([1]), max_new_tokens=3)] == [2, 3, 4]
        assert batcher.health().ok()
        assert batcher.stats().requests_failed == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("make_exc", FATAL, ids=["KeyboardInterrupt", "SystemExit"])
def test_a_fatal_base_exception_ends_every_caller_and_says_why(
    make_exc: Callable[[], BaseException], is_async: bool
) -> None:
    name = type(make_exc()).__name__
    batcher = batcher_over(raising(make_exc, is_async=is_async), max_batch_size=2)
    with batcher:
        streams = [batcher.run(np.array([POISON - 2]), max_new_tokens=50) for _ in range(5)]
        for stream in streams:
            with pytest.raises(hibachi.HibachiError, match=name):
                list(stream)
        batcher._engine._thread.join(timeout=10)
        health = batcher.health()
        assert not health.engine_alive and not health.ok()
        assert health.failure is not None and name in health.failure
        with pytest.raises(hibachi.BatcherClosed):
            batcher.run(np.array([1]))


class ReleaseRaises(hibachi.IncrementalModel):
    """next-int over per-slot histories; release() raises what ``make_exc`` builds, once."""

    def __init__(self, make_exc: Callable[[], BaseException] | None = None) -> None:
        self.make_exc = make_exc
        self.last: dict[int, int] = {}

    def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
        return np.asarray(tokens)[:, -1] + 1

    def release(self, slot: int) -> None:
        make_exc, self.make_exc = self.make_exc, None
        if make_exc is not None:
            raise make_exc()

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> int:
        if options is not None:
            raise options()
        return max_new_tokens


@pytest.mark.parametrize("make_exc", NON_FATAL, ids=lambda f: f.__name__)
def test_a_release_raising_a_non_fatal_base_exception_retires_only_its_slot(
    make_exc: Callable[[], BaseException],
) -> None:
    with batcher_over(ReleaseRaises(make_exc), max_batch_size=2) as batcher:
        assert [int(t) for t in batcher.run(np.array([1]), max_new_tokens=2)] == [2, 3]
        for _ in range(3):
            assert [int(t) for t in batcher.run(np.array([5]), max_new_tokens=2)] == [6, 7]
        assert len(batcher._scheduler.layout.retired) == 1  # type: ignore[attr-defined]
        assert batcher.health().ok()


def test_a_release_raising_keyboard_interrupt_stops_the_engine() -> None:
    batcher = batcher_over(ReleaseRaises(KeyboardInterrupt), max_batch_size=2)
    with batcher:
        first = batcher.run(np.array([1]), max_new_tokens=1)
        others = [batcher.run(np.array([5]), max_new_tokens=50) for _ in range(4)]
        assert [int(t) for t in first] == [2]  # its row ended before release raised
        for stream in others:
            with pytest.raises(hibachi.HibachiError, match="KeyboardInterrupt"):
                list(stream)
        assert batcher._engine.join(timeout=10)
        failure = batcher.health().failure
        assert failure is not None and "KeyboardInterrupt" in failure


@pytest.mark.parametrize("make_exc", NON_FATAL, ids=lambda f: f.__name__)
def test_check_request_raising_a_base_exception_is_a_model_error(
    make_exc: Callable[[], BaseException],
) -> None:
    with batcher_over(ReleaseRaises(), max_batch_size=2) as batcher:
        with pytest.raises(hibachi.ModelError, match=make_exc.__name__) as info:
            batcher.run(np.array([1]), options=make_exc)
        assert type(info.value.__cause__) is make_exc
        assert [int(t) for t in batcher.run(np.array([1]), max_new_tokens=2)] == [2, 3]


def test_check_request_raising_keyboard_interrupt_reaches_the_caller_only() -> None:
    with batcher_over(ReleaseRaises(), max_batch_size=2) as batcher:
        with pytest.raises(KeyboardInterrupt):
            batcher.run(np.array([1]), options=KeyboardInterrupt)
        assert [int(t) for t in batcher.run(np.array([1]), max_new_tokens=2)] == [2, 3]
