"""`batcher.health()`: state, engine alive, how long the model call now running has run."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import hibachi

TIMEOUT = 10.0


class Gate:
    """A model that blocks inside its call until released; `entered` is set when it is inside."""

    def __init__(self, output: Any) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.output = output

    def __call__(self, *args: Any) -> Any:
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        return self.output(*args)


def autoregressive(model: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=2
    )


def feedforward(model: Any) -> hibachi.FeedforwardBatcher:
    return hibachi.FeedforwardBatcher(model, max_batch_size=2)


CASES = [
    pytest.param(autoregressive, lambda t, m: t[:, -1] + 1, np.array([1, 2]), id="autoregressive"),
    pytest.param(feedforward, lambda x: x * 2, np.ones(3), id="feedforward"),
]


@pytest.mark.parametrize(("make", "output", "request_input"), CASES)
def test_health_follows_the_lifecycle_and_the_model_call(
    make: Any, output: Any, request_input: Any
) -> None:
    gate = Gate(output)
    batcher = make(gate)
    assert batcher.health().state == "unopened"
    assert not batcher.health().ok()
    with batcher:
        health = batcher.health()
        assert health.ok() and health.engine_alive and health.in_model_for is None
        kwargs = {"max_new_tokens": 1} if make is autoregressive else {}
        answer = batcher.run(request_input, **kwargs)
        assert gate.entered.wait(TIMEOUT)
        stuck = batcher.health()
        assert stuck.in_model_for is not None and stuck.in_model_for >= 0
        assert stuck.ok() and not stuck.ok(stuck_after=-1.0)
        gate.release.set()
        if make is autoregressive:
            list(answer)
        else:
            answer.result(timeout=TIMEOUT)
    closed = batcher.health()
    assert closed.state == "closed" and not closed.engine_alive and not closed.ok()
    assert closed.failure is None


def test_health_names_the_failure_of_a_dead_engine() -> None:
    batcher = feedforward(lambda x: x)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("a bug inside hibachi")

    with batcher:
        batcher._engine.core.next_batch = broken  # type: ignore[attr-defined]
        with pytest.raises(hibachi.HibachiError):
            batcher.run(np.ones(3)).result(timeout=TIMEOUT)
        assert batcher._engine.join(timeout=TIMEOUT)
        health = batcher.health()
        assert not health.engine_alive and not health.ok()
        assert health.failure is not None and "KeyError" in health.failure
