"""Memory stays bounded: buffers shrink back, unread streams are ended, staging fits its use."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import hibachi

pytestmark = pytest.mark.usefixtures("no_leaked_engines")


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


def batcher(model: Any = next_int, **options: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), pad_value=np.int64(0), **options
    )


def test_the_buffer_shrinks_back_when_a_long_prompt_leaves() -> None:
    capacities: list[int] = []

    def model(tokens: Any, mask: Any) -> Any:
        capacities.append(b._scheduler.layout.capacity)  # type: ignore[attr-defined]
        return next_int(tokens, mask)

    b = batcher(model, max_batch_size=4)
    with b:
        assert [int(t) for t in b.run(np.arange(1, 50_001), max_new_tokens=2)] == [50_001, 50_002]
        assert [int(t) for t in b.run(np.array([1]), max_new_tokens=2)] == [2, 3]
    assert max(capacities) >= 100_000
    assert capacities[-1] <= 64


def test_a_stream_never_read_is_ended_after_max_unread_tokens() -> None:
    with batcher(max_batch_size=2, max_unread_tokens=10) as b:
        unread = b.run(np.array([1]), max_new_tokens=10**6)
        assert [int(t) for t in b.run(np.array([100]), max_new_tokens=10)] == list(range(101, 111))
        tokens = []
        with pytest.raises(hibachi.QueueFull, match="max_unread_tokens"):
            for token in unread:
                tokens.append(int(token))
        assert tokens == list(range(2, 12))  # what was sent before it was ended
        stats = b.stats()
        assert (stats.requests_failed, stats.requests_completed) == (1, 1)


def test_a_reader_that_keeps_up_is_never_ended() -> None:
    read = threading.Semaphore(0)

    def paced(tokens: Any, mask: Any) -> Any:
        if tokens.shape[1] > 1:  # a token was sent: wait until it was read
            assert read.acquire(timeout=10)
        return next_int(tokens, mask)

    with batcher(paced, max_batch_size=1, max_unread_tokens=1) as b:
        tokens = []
        for token in b.run(np.array([1]), max_new_tokens=30):
            tokens.append(int(token))
            read.release()
        assert tokens == list(range(2, 32))


class Echo(hibachi.IncrementalModel):
    """Returns each row's last token plus one; records the staging arrays' size."""

    def __init__(self) -> None:
        self.staged: list[int] = []

    def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
        return np.asarray(tokens)[:, -1] + 1

    def release(self, slot: int) -> None:
        pass


def test_the_prefill_staging_holds_what_steps_use_not_max_batch_size_by_prefill_chunk() -> None:
    with batcher(Echo(), max_batch_size=64, max_batch_tokens=2**16) as b:
        layout = b._scheduler.layout
        assert [int(t) for t in b.run(np.arange(1, 6), max_new_tokens=2)] == [6, 7]
        staged = layout._tokens.nbytes + layout._mask.nbytes  # type: ignore[attr-defined]
        assert staged <= 1024  # it was 64 * 65536 * 9 bytes (36 MiB)


def test_unread_budget_is_a_count_setting() -> None:
    with pytest.raises(hibachi.ConfigurationError, match="max_unread_tokens must be at least 1"):
        batcher(max_unread_tokens=0)
    with batcher(max_unread_tokens=None, max_batch_size=1) as b:
        assert [int(t) for t in b.run(np.array([1]), max_new_tokens=3)] == [2, 3, 4]
