"""One bad request fails alone: a step that fails is retried on parts of its rows.

The scheduler is driven step by step (no threads): a stateless tagging model
and a `HistoryModel` (an `IncrementalModel` whose every token depends on its
slot's whole history) raise when a bad request shares their call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hibachi
from support.harness import Driver, ListSink
from support.incremental_models import HistoryModel, SlotDriver, expected, steady
from support.models import STOP_TAG, tagged_expected, tagged_prompt, tagging_model, tags_of

PAIR_STOP = np.array([STOP_TAG, STOP_TAG], dtype=np.int64)
PAIR_PAD = np.zeros(2, dtype=np.int64)


class Picky:
    """The tagging model, raising when a bad tag shares the call; counts the rows of each call."""

    def __init__(self, bad: set[int], transient: int = 0) -> None:
        self.bad = bad
        self.transient = transient  # the next calls that fail whatever their rows
        self.calls: list[list[int]] = []

    def __call__(self, tokens: Any, mask: Any) -> Any:
        tags = tags_of(tokens, mask)
        self.calls.append(tags)
        if self.transient:
            self.transient -= 1
            raise ConnectionError("a transient fault")
        if self.bad.intersection(tags):
            raise ValueError(f"bad tags {sorted(self.bad.intersection(tags))}")
        return tagging_model(tokens, mask)


def stateless(model: Any, rows: int = 8) -> Driver:
    return Driver(model, stop=PAIR_STOP, pad=PAIR_PAD, max_batch_size=rows)


def check_stateless(sinks: dict[int, tuple[ListSink, int, int]], bad: set[int]) -> None:
    for tag, (sink, length, budget) in sinks.items():
        if tag in bad:
            assert isinstance(sink.error, hibachi.ModelError), tag
            assert isinstance(sink.error.__cause__, ValueError)
        else:
            assert sink.error is None, (tag, sink.error)
            assert sink.tokens() == tagged_expected(tag, length, budget), tag


# -- stateless -------------------------------------------------------------------------------


def test_only_the_bad_rows_of_a_full_step_fail() -> None:
    bad = {3, 6}
    model = Picky(bad)
    d = stateless(model)
    sinks = {
        tag: (d.submit(tagged_prompt(tag, tag % 4 + 1), 6)[1], tag % 4 + 1, 6)
        for tag in range(1, 9)
    }
    d.run_until_idle()
    check_stateless(sinks, bad)
    assert d.scheduler.counters.failed == 2
    assert d.scheduler.counters.completed == 6


def test_a_retry_hands_the_model_the_rows_as_they_would_be_alone() -> None:
    model = Picky({2})
    d = stateless(model, rows=2)
    d.submit(tagged_prompt(1, 1), 3)
    d.submit(tagged_prompt(2, 5), 3)
    d.step()
    alone = [(tokens, mask) for tokens, mask in d.seen[1:]]
    assert [tags_of(t, m) for t, m in alone] == [[1], [2], [2]]
    assert alone[0][1].shape == (1, 1)  # the short row without the long row's padding
    assert alone[1][1].shape == (1, 5)


def test_a_transient_fault_costs_nobody_their_tokens() -> None:
    model = Picky(set(), transient=1)
    d = stateless(model, rows=4)
    sinks = {tag: (d.submit(tagged_prompt(tag, 2), 4)[1], 2, 4) for tag in range(1, 5)}
    d.run_until_idle()
    check_stateless(sinks, set())
    assert d.scheduler.counters.failed == 0


def test_a_row_that_fails_alone_once_is_tried_again() -> None:
    model = Picky(set(), transient=2)  # the step, then the first row alone
    d = stateless(model, rows=2)
    sinks = {tag: (d.submit(tagged_prompt(tag, 2), 3)[1], 2, 3) for tag in (1, 2)}
    d.run_until_idle()
    check_stateless(sinks, set())
    assert model.calls[:4] == [[1, 2], [1], [1], [2]]


def test_a_bad_row_alone_is_given_up_after_two_tries() -> None:
    model = Picky({1})
    d = stateless(model, rows=1)
    _, sink = d.submit(tagged_prompt(1, 2), 3)
    d.run_until_idle()
    assert isinstance(sink.error, hibachi.ModelError)
    assert model.calls == [[1], [1]]


def test_an_unusable_output_for_a_bad_row_fails_that_row_only() -> None:
    def model(tokens: Any, mask: Any) -> Any:
        out = tagging_model(tokens, mask)
        return out.astype(np.float64) if 4 in tags_of(tokens, mask) else out

    d = stateless(model, rows=4)
    sinks = {tag: (d.submit(tagged_prompt(tag, 1), 3)[1], 1, 3) for tag in range(1, 5)}
    d.run_until_idle()
    assert isinstance(sinks.pop(4)[0].error, hibachi.ModelError)
    for tag, (sink, length, budget) in sinks.items():
        assert sink.error is None and sink.tokens() == tagged_expected(tag, length, budget)


# -- incremental -----------------------------------------------------------------------------


def incremental(rows: int = 4, chunk: int = 8, **options: Any) -> SlotDriver:
    return SlotDriver(HistoryModel(rows, **options), max_batch_size=rows, max_batch_tokens=chunk)


def tokens(sink: Any) -> list[int]:
    return [int(t) for t in sink.tokens()]


def test_a_bad_request_in_a_prefill_step_fails_alone() -> None:
    d = incremental(fail_on={"bad"})
    good = {
        tag: (steady(3, i + 1), d.submit(tag, steady(3, i + 1), budget=5)[1])
        for i, tag in enumerate("abc")
    }
    _, bad = d.submit("bad", [5, 6, 7], budget=5)
    d.run_until_idle()
    assert isinstance(bad.error, hibachi.ModelError)
    for prompt, sink in good.values():
        assert sink.error is None and tokens(sink) == expected(prompt, 5)
    assert not d.model.violations
    assert sorted(d.model.released) == ["a", "b", "bad", "c"]


def test_a_request_that_turns_bad_while_decoding_fails_alone() -> None:
    d = incremental()
    prompts = {tag: steady(2, i + 1) for i, tag in enumerate("abcd")}
    sinks = {tag: d.submit(tag, prompt, budget=8)[1] for tag, prompt in prompts.items()}
    d.step()
    d.step()
    d.model.fail_on.add("c")
    d.run_until_idle()
    assert isinstance(sinks.pop("c").error, hibachi.ModelError)
    for tag, sink in sinks.items():
        assert sink.error is None and tokens(sink) == expected(prompts[tag], 8)
    assert not d.model.violations


def test_a_decode_step_of_some_rows_is_retried_on_those_rows() -> None:
    d = incremental(rows=3, chunk=2)
    prompts = {"a": steady(1, 1), "b": steady(1, 2)}
    a, _ = d.submit("a", prompts["a"], budget=20)
    _, b = d.submit("b", prompts["b"], budget=6)
    d.step()
    d.submit("c", list(range(3, 13)), budget=2)  # prefilled in chunks of 2
    d.step()
    d.cancel(a)  # c moves into row 0: the rows decoding are now [1]
    d.step()
    d.model.fail_next = 1
    d.run_until_idle()
    assert b.error is None and tokens(b) == expected(prompts["b"], 6)
    assert not d.model.violations


def test_an_unusable_output_of_an_incremental_step_is_not_retried() -> None:
    d = incremental(bad_output_on={"bad"})
    _, good = d.submit("good", steady(), budget=3)
    _, bad = d.submit("bad", steady(), budget=3)
    d.step()
    assert len(d.model.calls) == 1  # the model may have taken the tokens in: no retry
    assert isinstance(good.error, hibachi.ModelError) and isinstance(bad.error, hibachi.ModelError)


# -- the property: good requests get exactly their tokens, whoever shares their steps -----

REQUESTS = st.lists(
    st.tuples(st.integers(1, 6), st.integers(1, 6), st.booleans(), st.integers(0, 3)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=REQUESTS, rows=st.integers(1, 6), transient=st.integers(0, 1))
def test_good_requests_get_their_tokens_whatever_shares_their_steps(
    requests: list[tuple[int, int, bool, int]], rows: int, transient: int
) -> None:
    bad = {tag for tag, (_, _, is_bad, _) in enumerate(requests, 1) if is_bad}
    model = Picky(bad, transient=transient)
    d = stateless(model, rows=rows)
    sinks = {}
    for tag, (length, budget, _, wait) in enumerate(requests, 1):
        sinks[tag] = (d.submit(tagged_prompt(tag, length), budget)[1], length, budget)
        for _ in range(wait):
            d.step()
    d.run_until_idle()
    check_stateless(sinks, bad)


INCREMENTAL_REQUESTS = st.lists(
    st.tuples(
        st.lists(st.integers(3, 50), min_size=1, max_size=9),  # prompt
        st.integers(1, 6),  # budget
        st.none() | st.integers(0, 6),  # after how many steps its calls raise (None: never)
        st.integers(0, 3),  # steps before the next request arrives
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=INCREMENTAL_REQUESTS, rows=st.integers(1, 5), chunk=st.integers(1, 12))
def test_good_incremental_requests_get_their_tokens_whatever_shares_their_steps(
    requests: list[tuple[list[int], int, int | None, int]], rows: int, chunk: int
) -> None:
    d = incremental(rows=rows, chunk=chunk)
    turns_bad: dict[int, list[int]] = {}
    steps = 0

    def step() -> bool:
        nonlocal steps
        d.model.fail_on.update(turns_bad.pop(steps, []))
        steps += 1
        return d.step()

    sinks = {}
    for tag, (prompt, budget, bad_after, wait) in enumerate(requests):
        if bad_after is not None:
            turns_bad.setdefault(steps + bad_after, []).append(tag)
        sinks[tag] = (prompt, budget, bad_after, d.submit(tag, prompt, budget=budget)[1])
        for _ in range(wait):
            step()
    while step() or turns_bad:
        pass
    for tag, (prompt, budget, bad_after, sink) in sinks.items():
        alone = expected(prompt, budget)
        if sink.error is None:
            assert tokens(sink) == alone, tag
        else:
            assert bad_after is not None and isinstance(sink.error, hibachi.ModelError), tag
            assert tokens(sink) == alone[: len(tokens(sink))], tag
    assert not d.model.violations
    assert sorted(d.model.released) == sorted(sinks)


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_every_row_bad_fails_every_row(rows: int) -> None:
    bad = set(range(1, rows + 1))
    d = stateless(Picky(bad), rows=rows)
    sinks = {tag: (d.submit(tagged_prompt(tag, 2), 4)[1], 2, 4) for tag in bad}
    d.run_until_idle()
    check_stateless(sinks, bad)
    assert d.scheduler.counters.failed == rows and not d.scheduler.rows


# -- the feedforward batcher: an item alone is tried twice too ---------------------------------


def test_a_feedforward_item_that_fails_once_alone_gets_its_result() -> None:
    calls = []

    def model(batch: Any) -> Any:
        calls.append(len(batch))
        if len(calls) == 1:
            raise ConnectionError("a transient fault")
        if (batch < 0).any():
            raise ValueError("negative")
        return batch * 2

    with hibachi.FeedforwardBatcher(model, max_batch_size=1) as batcher:
        assert batcher.run(np.ones(2)).result(timeout=10).tolist() == [2.0, 2.0]
        with pytest.raises(hibachi.ModelError) as caught:
            batcher.run(-np.ones(2)).result(timeout=10)
        assert isinstance(caught.value.__cause__, ValueError)
    assert calls == [1, 1, 1, 1]
    assert batcher.stats().retried_batches == 2
