"""A `Pipeline` behind either batcher: building it, closing, stuck and failing stages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import hibachi
from support.models import TIMEOUT


def next_token(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


def same(x: Any) -> Any:
    return x


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "-stage" in t.name and t.name.startswith("hibachi")]


def ar(pipe: hibachi.Pipeline, **options: Any) -> hibachi.AutoregressiveBatcher:
    options.setdefault("max_batch_size", 4)
    return hibachi.AutoregressiveBatcher(
        pipe, stop_token=np.int64(-1), pad_value=np.int64(0), **options
    )


class Gate:
    """A stage that waits at each call until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, x: Any) -> Any:
        self.entered.set()
        assert self.opened.wait(TIMEOUT)
        return x


@pytest.mark.parametrize(
    ("stages", "options", "message"),
    [
        ((), {}, "at least one stage"),
        ((same, 3), {}, "stage 1"),
        ((same,), {"groups": 0}, "groups"),
        ((same,), {"groups": True}, "groups"),
        ((same,), {"groups": np.True_}, "groups"),
        ((same,), {"groups": 2.0}, "groups"),
        ((same,), {"groups": 65}, "groups"),
        pytest.param((same,), {"groups": 10**5000}, "groups", id="groups-too-long-to-print"),
    ],
)
def test_a_bad_pipeline_is_refused(stages: tuple[Any, ...], options: Any, message: str) -> None:
    with pytest.raises(hibachi.ConfigurationError, match=message):
        hibachi.Pipeline(*stages, **options)


def test_groups_may_be_any_integer_as_other_counts_may() -> None:
    pipe = hibachi.Pipeline(same, groups=np.int64(2))
    assert pipe.groups == 2 and type(pipe.groups) is int


def test_calling_a_pipeline_composes_its_stages() -> None:
    pipe = hibachi.Pipeline(lambda a, b: a + b, lambda x: x * 10)
    assert pipe(1, 2) == 30
    assert pipe.groups is None and pipe.groups_or(3) == 3 and "2 stages" in repr(pipe)


def test_close_drains_every_stream() -> None:
    batcher = ar(hibachi.Pipeline(next_token, same))
    batcher.__enter__()
    streams = [batcher.run(np.array([i]), max_new_tokens=20) for i in range(10)]
    batcher.close()
    assert [len(list(stream)) for stream in streams] == [20] * 10
    assert batcher.stats().requests_completed == 10


def test_close_with_cancel_ends_every_stream_while_a_stage_holds_a_step() -> None:
    gate = Gate()
    batcher = ar(hibachi.Pipeline(next_token, gate))
    batcher.__enter__()
    streams = [batcher.run(np.array([i]), max_new_tokens=5) for i in range(6)]
    assert gate.entered.wait(TIMEOUT)
    closing = threading.Thread(target=batcher.close, kwargs={"cancel": True})
    closing.start()
    for stream in streams:
        with pytest.raises(hibachi.BatcherClosed):
            list(stream)
    gate.opened.set()
    closing.join(TIMEOUT)
    assert not closing.is_alive()


def test_stage_threads_end_with_the_batcher() -> None:
    before = set(stage_threads())
    with ar(hibachi.Pipeline(next_token, same, same)) as batcher:
        assert len(list(batcher.run(np.array([1]), max_new_tokens=3))) == 3
        assert len(set(stage_threads()) - before) == 3
    with hibachi.FeedforwardBatcher(hibachi.Pipeline(same, same)) as ff:
        assert ff.run(np.array([1])).result(TIMEOUT).tolist() == [1]
    for thread in set(stage_threads()) - before:
        thread.join(TIMEOUT)
        assert not thread.is_alive()


@pytest.mark.parametrize("kind", ["autoregressive", "feedforward"])
def test_a_stage_that_raises_keyboard_interrupt_stops_the_batcher(kind: str) -> None:
    def interrupt(x: Any) -> Any:
        raise KeyboardInterrupt

    pipe = hibachi.Pipeline(next_token if kind == "autoregressive" else same, interrupt)
    if kind == "autoregressive":
        with ar(pipe) as batcher:
            with pytest.raises(hibachi.HibachiError, match="KeyboardInterrupt"):
                list(batcher.run(np.array([1])))
            assert batcher.health().failure is not None
    else:
        with hibachi.FeedforwardBatcher(pipe) as ff:
            with pytest.raises(hibachi.HibachiError, match="KeyboardInterrupt"):
                ff.run(np.array([1])).result(TIMEOUT)
            assert ff.health().failure is not None


@pytest.mark.parametrize("kind", ["autoregressive", "feedforward"])
def test_a_stage_may_close_its_batcher(kind: str) -> None:
    holder: list[Any] = []

    def closer(x: Any) -> Any:
        holder[0].close()
        return x

    if kind == "autoregressive":
        batcher: Any = ar(hibachi.Pipeline(next_token, closer))
        run: Callable[[], Any] = lambda: list(batcher.run(np.array([1]), max_new_tokens=3))  # noqa: E731
    else:
        batcher = hibachi.FeedforwardBatcher(hibachi.Pipeline(same, closer))
        run = lambda: batcher.run(np.array([1])).result(TIMEOUT)  # noqa: E731
    holder.append(batcher)
    with batcher:
        run()
        batcher._engine.join(TIMEOUT)
    assert batcher.health().state == "closed"


def test_health_says_how_long_a_stage_has_been_in_its_call() -> None:
    gate = Gate()
    with hibachi.FeedforwardBatcher(hibachi.Pipeline(same, gate)) as batcher:
        handle = batcher.run(np.array([1]))
        assert gate.entered.wait(TIMEOUT)
        time.sleep(0.01)  # not synchronisation: only so the elapsed time is not zero
        assert (batcher.health().in_model_for or 0.0) > 0.0
        gate.opened.set()
        assert handle.result(TIMEOUT).tolist() == [1]


def test_a_request_times_out_while_a_stage_holds_its_step() -> None:
    gate = Gate()
    with ar(hibachi.Pipeline(next_token, gate)) as batcher:
        late = batcher.run(np.array([1]), max_new_tokens=5, timeout=0.05)
        with pytest.raises(hibachi.Timeout):
            list(late)
        gate.opened.set()
        assert len(list(batcher.run(np.array([1]), max_new_tokens=5))) == 5
    stats = batcher.stats()
    assert stats.requests_timed_out == 1 and stats.requests_completed == 1


def test_stats_count_each_stage_busy_time() -> None:
    def slow(x: Any) -> Any:
        time.sleep(0.002)
        return x

    with ar(hibachi.Pipeline(next_token, slow)) as batcher:
        list(batcher.run(np.array([1]), max_new_tokens=5))
    first, second = batcher.stats().stage_busy
    assert second >= 5 * 0.002 and first >= 0.0
    assert (
        hibachi.AutoregressiveBatcher(next_token, stop_token=np.int64(-1), pad_value=np.int64(0))
        .stats()
        .stage_busy
        == ()
    )
