"""The Scheduler driven synchronously, step by step, with a fake clock and list sinks."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from hibachi import BatcherClosed, ModelError, QueueFull, Timeout
from hibachi._core.queue import WorkQueue
from support.harness import Driver
from support.models import POISON, STOP_TAG, tagged_expected, tagged_prompt, tagging_model, tags_of

PAIR_STOP = np.array([STOP_TAG, STOP_TAG], dtype=np.int64)
PAIR_PAD = np.zeros(2, dtype=np.int64)


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


def tagging_driver(max_batch_size: int = 4, **options: Any) -> Driver:
    return Driver(
        tagging_model, stop=PAIR_STOP, pad=PAIR_PAD, max_batch_size=max_batch_size, **options
    )


def batches(driver: Driver) -> list[list[int]]:
    """The tags of the rows of every model call, in row order."""
    return [tags_of(tokens, mask) for tokens, mask in driver.seen]


def test_a_request_gets_exactly_its_budget() -> None:
    d = Driver(next_int, stop=np.int64(99), pad=np.int64(0))
    request, sink = d.submit(np.array([5, 6]), max_new_tokens=3)
    assert d.run_until_idle() == 3
    assert sink.tokens() == [7, 8, 9]
    assert sink.ended and sink.error is None
    assert request.ended and request.prompt is None


def test_the_stop_token_is_the_last_token() -> None:
    d = Driver(next_int, stop=np.int64(9), pad=np.int64(0))
    _, sink = d.submit(np.array([5, 6]), max_new_tokens=100)
    d.run_until_idle()
    assert sink.tokens() == [7, 8, 9]
    assert sink.ended and sink.error is None


def test_a_vector_token_stops_only_when_every_element_matches() -> None:
    stop = np.array([1, 2, 3], dtype=np.int64)

    def model(tokens: Any, mask: Any) -> Any:
        steps = mask.sum(axis=1, keepdims=True)  # 2, 3, 4 …
        return np.where(steps >= 3, stop, np.array([1, 2, 0]))

    d = Driver(model, stop=stop, pad=np.zeros(3, dtype=np.int64))
    _, sink = d.submit(np.zeros((2, 3), dtype=np.int64), max_new_tokens=10)
    d.run_until_idle()
    assert sink.tokens() == [[1, 2, 0], [1, 2, 3]]


@pytest.mark.parametrize("token_shape", [(3,), (2, 2)], ids=["vector", "matrix"])
def test_tokens_of_any_shape(token_shape: tuple[int, ...]) -> None:
    stop = np.full(token_shape, 50, dtype=np.int64)
    d = Driver(next_int, stop=stop, pad=np.zeros(token_shape, dtype=np.int64))
    prompt = np.arange(2 * np.prod(token_shape)).reshape((2, *token_shape))
    _, sink = d.submit(prompt, max_new_tokens=4)
    d.run_until_idle()
    expected = [(prompt[-1] + k).tolist() for k in range(1, 5)]
    assert sink.tokens() == expected
    tokens, mask = d.seen[-1]
    assert tokens.shape == (1, 5, *token_shape) and mask.shape == (1, 5)


def test_admission_follows_arrival_order_within_max_batch_size() -> None:
    d = tagging_driver(max_batch_size=2)
    sinks = {tag: d.submit(tagged_prompt(tag, 1), max_new_tokens=tag)[1] for tag in (1, 2, 3, 4)}
    d.run_until_idle()
    assert batches(d) == [[1, 2], [2, 3], [3, 4], [3, 4], [4], [4]]
    for tag, sink in sinks.items():
        assert sink.tokens() == tagged_expected(tag, 1, tag)


def test_a_new_request_joins_the_running_batch_at_the_next_step() -> None:
    d = tagging_driver()
    d.submit(tagged_prompt(1, 2), max_new_tokens=10)
    d.step()
    d.step()
    d.submit(tagged_prompt(2, 1), max_new_tokens=2)
    d.step()
    assert batches(d) == [[1], [1], [1, 2]]


def test_rows_stay_dense_after_a_departure() -> None:
    d = tagging_driver()
    requests = [d.submit(tagged_prompt(tag, tag), max_new_tokens=6) for tag in (1, 2, 3, 4)]
    d.step()
    d.cancel(requests[1][0])
    d.step()
    assert batches(d) == [[1, 2, 3, 4], [1, 4, 3]]
    d.run_until_idle()
    for tag, (_, sink) in zip((1, 3, 4), (requests[0], requests[2], requests[3]), strict=True):
        assert sink.tokens() == tagged_expected(tag, tag, 6)
    assert requests[1][1].tokens() == tagged_expected(2, 2, 1)


def test_columns_of_padding_are_trimmed_when_a_long_row_leaves() -> None:
    d = tagging_driver()
    d.submit(tagged_prompt(1, 9), max_new_tokens=1)
    _, short = d.submit(tagged_prompt(2, 1), max_new_tokens=3)
    d.run_until_idle()
    widths = [tokens.shape[1] for tokens, _ in d.seen]
    assert widths == [9, 2, 3]
    assert short.tokens() == tagged_expected(2, 1, 3)


def test_left_padding_and_mask_seen_by_the_model() -> None:
    d = Driver(next_int, stop=np.int64(99), pad=np.int64(-1))
    d.submit(np.array([5, 6, 7]), max_new_tokens=1)
    d.submit(np.array([8]), max_new_tokens=1)
    d.step()
    tokens, mask = d.seen[0]
    assert tokens.tolist() == [[5, 6, 7], [-1, -1, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


def test_many_steps_through_relocation_keep_every_history_intact() -> None:
    d = tagging_driver(max_batch_size=3)
    sinks = [
        (tag, length, budget, d.submit(tagged_prompt(tag, length), max_new_tokens=budget)[1])
        for tag, length, budget in [(1, 1, 200), (2, 40, 150), (3, 3, 90), (4, 70, 60), (6, 2, 5)]
    ]
    d.run_until_idle()
    for tag, length, budget, sink in sinks:
        assert sink.tokens() == tagged_expected(tag, length, budget)
        assert all(token[1] != POISON for token in sink.tokens())


def test_cancelled_while_queued_never_reaches_the_model() -> None:
    d = tagging_driver(max_batch_size=1)
    d.submit(tagged_prompt(1, 1), max_new_tokens=2)
    queued, sink = d.submit(tagged_prompt(2, 1), max_new_tokens=2)
    d.step()
    d.cancel(queued)
    d.run_until_idle()
    assert 2 not in {tag for batch in batches(d) for tag in batch}
    assert sink.ended and sink.error is None and sink.items == []
    assert d.scheduler.counters.cancelled == 1


def test_a_cancelled_row_is_freed_at_the_next_step() -> None:
    d = tagging_driver(max_batch_size=1)
    active, sink = d.submit(tagged_prompt(1, 1), max_new_tokens=100)
    d.submit(tagged_prompt(2, 1), max_new_tokens=1)
    d.step()
    d.cancel(active)
    d.step()
    assert batches(d) == [[1], [2]]
    assert sink.ended and sink.error is None and len(sink.items) == 1


def test_deadline_of_a_queued_request() -> None:
    d = tagging_driver(max_batch_size=1)
    _, first = d.submit(tagged_prompt(1, 1), max_new_tokens=3)
    _, late = d.submit(tagged_prompt(2, 1), max_new_tokens=3, deadline=5.0)
    d.step()
    d.clock.advance(4.9)
    d.step()
    assert not late.ended
    d.clock.advance(0.2)
    d.run_until_idle()
    assert isinstance(late.error, Timeout) and late.items == []
    assert first.tokens() == tagged_expected(1, 1, 3)
    assert 2 not in {tag for batch in batches(d) for tag in batch}
    assert d.scheduler.counters.timed_out == 1


def test_deadline_of_an_active_request() -> None:
    d = tagging_driver()
    _, slow = d.submit(tagged_prompt(1, 1), max_new_tokens=100, deadline=5.0)
    _, other = d.submit(tagged_prompt(2, 1), max_new_tokens=4)
    d.step()
    d.step()
    d.clock.advance(5.0)
    d.run_until_idle()
    assert isinstance(slow.error, Timeout)
    assert slow.tokens() == tagged_expected(1, 1, 2)
    assert other.tokens() == tagged_expected(2, 1, 4) and other.error is None
    assert batches(d)[2:] == [[2], [2]]


def test_deadlines_of_finished_requests_are_forgotten() -> None:
    d = tagging_driver()
    for tag in range(1, 1001):
        d.submit(tagged_prompt(tag, 1), max_new_tokens=1, deadline=1e9)
        d.step()
    assert len(d.scheduler._deadlines) < 200


def test_a_model_error_fails_only_the_row_that_fails_alone() -> None:
    def model(tokens: Any, mask: Any) -> Any:
        if 2 in tags_of(tokens, mask):
            raise ZeroDivisionError("boom")
        return tagging_model(tokens, mask)

    d = Driver(model, stop=PAIR_STOP, pad=PAIR_PAD, max_batch_size=2)
    _, a = d.submit(tagged_prompt(1, 1), max_new_tokens=5)
    d.step()
    _, b = d.submit(tagged_prompt(2, 1), max_new_tokens=5)
    _, c = d.submit(tagged_prompt(3, 1), max_new_tokens=2)
    d.run_until_idle()
    assert isinstance(b.error, ModelError) and b.items == []
    assert isinstance(b.error.__cause__, ZeroDivisionError)
    assert a.tokens() == tagged_expected(1, 1, 5) and a.error is None
    assert c.tokens() == tagged_expected(3, 1, 2) and c.error is None
    assert d.scheduler.counters.failed == 1


def test_a_bad_output_is_a_model_error() -> None:
    d = Driver(lambda tokens, mask: tokens[:, -2:], stop=np.int64(9), pad=np.int64(0))
    _, sink = d.submit(np.array([1, 2]))
    d.run_until_idle()
    assert isinstance(sink.error, ModelError)
    assert "shape" in str(sink.error)


def test_abort_ends_active_and_queued_requests() -> None:
    d = tagging_driver(max_batch_size=1)
    _, active = d.submit(tagged_prompt(1, 1), max_new_tokens=10)
    _, queued = d.submit(tagged_prompt(2, 1), max_new_tokens=10)
    cancelled_request, cancelled = d.submit(tagged_prompt(3, 1), max_new_tokens=10)
    d.step()
    cancelled_request.cancelled = True
    d.scheduler.abort(BatcherClosed("closed"))
    assert isinstance(active.error, BatcherClosed) and len(active.items) == 1
    assert isinstance(queued.error, BatcherClosed) and queued.items == []
    assert cancelled.ended and cancelled.error is None
    assert not d.step()


def test_counters_of_a_scripted_run() -> None:
    d = tagging_driver(max_batch_size=2)
    d.submit(tagged_prompt(1, 3), max_new_tokens=2)
    d.submit(tagged_prompt(2, 1), max_new_tokens=3)
    cancelled, _ = d.submit(tagged_prompt(3, 1), max_new_tokens=3)
    d.cancel(cancelled)
    d.run_until_idle()
    c = d.scheduler.counters
    # step 1: widths 3, rows [3, 1]; step 2: width 4, rows [4, 2]; step 3: width 3, row [3]
    assert (c.admitted, c.completed, c.cancelled, c.failed) == (2, 2, 1, 0)
    assert (c.steps, c.tokens, c.filled_rows) == (3, 5, 5)
    assert (c.cells, c.padding_cells) == (6 + 8 + 3, 2 + 2 + 0)


def test_work_queue_bounds_and_close() -> None:
    q: WorkQueue[int] = WorkQueue(2)
    q.put(1)
    q.put(2)
    with pytest.raises(QueueFull):
        q.put(3)
    assert q.take(5) == [1, 2]
    q.close()
    with pytest.raises(BatcherClosed):
        q.put(4)


def test_work_queue_wait_returns_on_put_and_wake() -> None:
    q: WorkQueue[int] = WorkQueue(None)
    waiting = threading.Thread(target=q.wait)
    waiting.start()
    q.put(1)
    waiting.join(timeout=5)
    assert not waiting.is_alive()
    q.take(1)
    waiting = threading.Thread(target=q.wait)
    waiting.start()
    q.wake()
    waiting.join(timeout=5)
    assert not waiting.is_alive()


def test_float_vector_tokens_such_as_audio_frames() -> None:
    stop = np.full(4, -1.0, dtype=np.float32)

    def model(tokens: Any, mask: Any) -> Any:
        last = tokens[:, -1]
        return np.where(last[:, :1] >= 1.0, stop, last + np.float32(0.25))

    d = Driver(model, stop=stop, pad=np.zeros(4, dtype=np.float32))
    _, sink = d.submit(np.full((2, 4), 0.5, dtype=np.float32), max_new_tokens=10)
    _, int_prompt = d.submit(np.ones((1, 4), dtype=np.int8), max_new_tokens=10)
    d.run_until_idle()
    assert sink.tokens() == [[0.75] * 4, [1.0] * 4, [-1.0] * 4]
    assert int_prompt.tokens() == [[-1.0] * 4]
    assert all(item.dtype == np.float32 for item in sink.items)


def test_a_scheduler_sends_its_tokens_the_way_it_was_built_to() -> None:
    sent: list[tuple[list[int], list[int]]] = []

    def send(sinks: list[tuple[Any, int]], column: Any) -> None:
        sent.append(([i for _, i in sinks], column.tolist()))

    d = Driver(next_int, stop=np.int64(99), pad=np.int64(0), send=send)
    _, a = d.submit(np.array([1]), max_new_tokens=2)
    _, b = d.submit(np.array([5]), max_new_tokens=2)
    d.run_until_idle()
    assert sent == [([0, 1], [2, 6]), ([0, 1], [3, 7])]
    assert a.items == b.items == [] and a.ended and b.ended  # no token went past ``send``
