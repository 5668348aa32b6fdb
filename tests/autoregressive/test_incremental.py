"""The incremental mode: an `IncrementalModel` fed only unseen tokens, in numbered slots.

Most tests drive the synchronous scheduler over a `SlotLayout` step by step;
the last ones go through the real batcher, its thread and asyncio.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hibachi
from support.incremental_models import (
    PAD,
    STOP,
    AsyncHistoryModel,
    HistoryModel,
    SlotDriver,
    driver,
    expected,
    next_token,
    steady,
    tokens,
)
from support.models import TIMEOUT, run_async

# -- what the model is fed ----------------------------------------------------------------


def test_a_row_is_fed_its_prompt_then_one_token_per_step() -> None:
    d = driver(slots=1)
    _, sink = d.submit("a", [5, 6, 7], budget=4)
    d.run_until_idle()
    assert tokens(sink) == expected([5, 6, 7], 4)
    assert [call.widths for call in d.model.calls] == [[3]] + [[1]] * (len(tokens(sink)) - 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(
        st.tuples(
            st.lists(st.integers(1, 99), min_size=1, max_size=30),  # prompt
            st.integers(1, 12),  # budget
            st.integers(0, 6),  # arrival step
            st.one_of(st.none(), st.integers(0, 8)),  # cancelled after this many steps
        ),
        min_size=1,
        max_size=8,
    ),
    slots=st.integers(1, 4),
    chunk=st.integers(1, 16),
)
def test_every_request_gets_what_it_gets_alone(
    requests: list[tuple[list[int], int, int, int | None]], slots: int, chunk: int
) -> None:
    d = driver(slots, chunk)
    submitted: dict[int, Any] = {}
    for step in range(10_000):
        for tag, (prompt, budget, arrival, cancel_at) in enumerate(requests):
            if arrival == step:
                submitted[tag] = d.submit(tag, prompt, budget)
            if tag in submitted and cancel_at is not None and step == arrival + cancel_at:
                d.cancel(submitted[tag][0])
        if not d.step() and step > 6:
            break
    assert not d.model.violations
    for tag, (prompt, budget, _, cancel_at) in enumerate(requests):
        _, sink = submitted[tag]
        got, want = tokens(sink), expected(prompt, budget)
        assert sink.ended and sink.error is None
        assert got == want if cancel_at is None else got == want[: len(got)]
        if any(tag in call.tags for call in d.model.calls):
            assert d.model.released.count(tag) == 1
    assert len(d.model.released) == d.scheduler.counters.admitted
    assert sorted(d.layout.free) == list(range(slots))


def test_a_long_prompt_is_fed_in_chunks_between_decode_steps() -> None:
    d = driver(slots=2, chunk=8)
    prompt = steady()
    _, short = d.submit("short", prompt, budget=30)
    d.step()
    _, long = d.submit("long", list(range(1, 31)), budget=2)
    d.run_until_idle()
    calls = d.model.calls
    assert all(len(c.slots) * c.width <= 8 for c in calls)
    prefill = [i for i, c in enumerate(calls) if c.tags == ["long"] and c.width > 1]
    assert [calls[i].widths for i in prefill] == [[8], [8], [8], [6]]
    # the decoding row gets a step between two prefill steps
    assert [calls[i + 1].tags for i in prefill] == [["short"]] * 3 + [["short", "long"]]
    assert tokens(long) == expected(list(range(1, 31)), 2)
    assert tokens(short) == expected(prompt, 30)


def test_a_prefill_step_packs_prompts_within_the_chunk() -> None:
    d = driver(slots=4, chunk=8)
    for tag in "abc":
        d.submit(tag, [1, 2, 3], budget=1)
    d.step()
    first = d.model.calls[0]
    assert first.tags == ["a", "b"] and first.width == 3


def test_a_row_yields_nothing_until_its_prompt_is_in() -> None:
    d = driver(slots=1, chunk=4)
    _, sink = d.submit("a", list(range(1, 11)), budget=3)
    d.step()
    d.step()
    assert sink.items == []
    d.step()
    assert tokens(sink) == expected(list(range(1, 11)), 1)


def test_stats_count_the_cells_fed() -> None:
    d = driver(slots=2, chunk=16)
    d.submit("a", [1, 2, 3, 4, 5], budget=2)
    d.submit("b", [1], budget=2)
    d.run_until_idle()
    c = d.scheduler.counters
    real = 5 + 1 + sum(len(call.widths) for call in d.model.calls[1:])
    assert c.cells - c.padding_cells == real
    assert c.padding_cells == 4  # "b" padded to "a"'s width in the first step


# -- slots: released on every exit, before reuse ------------------------------------------


def exit_by_stop(d: SlotDriver) -> None:
    prompt = next(p for p in ([k] for k in range(1, 99)) if expected(p, 1) == [STOP])
    d.submit("x", prompt, budget=5)
    d.run_until_idle()


def exit_by_budget(d: SlotDriver) -> None:
    d.submit("x", steady(), budget=2)
    d.run_until_idle()


def exit_by_cancellation(d: SlotDriver) -> None:
    request, _ = d.submit("x", steady(), budget=50)
    d.step()
    d.step()
    d.cancel(request)
    d.step()


def exit_by_deadline(d: SlotDriver) -> None:
    d.submit("x", steady(), budget=50, deadline=1.0)
    d.step()
    d.clock.advance(2.0)
    d.step()


def exit_by_model_error(d: SlotDriver) -> None:
    d.model.fail_on.add("x")
    d.submit("x", [5, 6], budget=50)
    d.step()


def exit_by_bad_output(d: SlotDriver) -> None:
    d.model.bad_output_on.add("x")
    d.submit("x", [5, 6], budget=50)
    d.step()


def exit_by_abort(d: SlotDriver) -> None:
    d.submit("x", steady(), budget=50)
    d.step()
    d.scheduler.abort(hibachi.BatcherClosed("closed"))


@pytest.mark.parametrize(
    "leave",
    [
        pytest.param(exit_by_stop, id="stop"),
        pytest.param(exit_by_budget, id="budget"),
        pytest.param(exit_by_cancellation, id="cancel"),
        pytest.param(exit_by_deadline, id="deadline"),
        pytest.param(exit_by_model_error, id="model-error"),
        pytest.param(exit_by_bad_output, id="bad-output"),
        pytest.param(exit_by_abort, id="abort"),
    ],
)
def test_a_slot_is_released_on_every_exit_before_its_caller_hears(leave: Any) -> None:
    d = driver(slots=1)
    leave(d)
    assert d.model.events[:2] == [("release", "x"), ("end", "x")]
    _, sink = d.submit("y", [7, 8, 9], budget=4)  # gets the same slot, fresh
    d.run_until_idle()
    assert tokens(sink) == expected([7, 8, 9], 4)
    assert not d.model.violations


def test_a_model_error_ends_only_the_rows_of_that_step() -> None:
    d = driver(slots=2, fail_on={"long"})
    prompt = steady()
    _, short = d.submit("short", prompt, budget=6)
    d.step()
    _, long = d.submit("long", list(range(1, 20)), budget=2)
    d.run_until_idle()
    assert isinstance(long.error, hibachi.ModelError)
    assert isinstance(long.error.__cause__, RuntimeError)
    assert short.error is None and tokens(short) == expected(prompt, 6)
    assert d.model.released == ["long", "short"]


def test_a_request_cancelled_while_queued_never_reaches_the_model() -> None:
    d = driver(slots=1)
    d.submit("a", [1, 2], budget=3)
    request, sink = d.submit("b", [3, 4], budget=3)
    d.cancel(request)
    d.run_until_idle()
    assert all("b" not in call.tags for call in d.model.calls)
    assert "b" not in d.model.released and sink.ended


def test_a_slot_whose_release_fails_is_not_used_again() -> None:
    d = driver(slots=2, release_fails={0})
    d.submit("a", [1, 2], budget=2)
    d.run_until_idle()
    for tag in "bcd":
        _, sink = d.submit(tag, [3, 4], budget=2)
        d.run_until_idle()
        assert tokens(sink) == expected([3, 4], 2)
    assert {slot for call in d.model.calls if call.tags != ["a"] for slot in call.slots} == {1}
    assert [slot for slot, _ in d.layout.retired] == [0]


def test_when_no_slot_can_be_released_queued_requests_fail() -> None:
    d = driver(slots=1, release_fails={0})
    d.submit("a", [1, 2], budget=2)
    d.run_until_idle()
    _, sink = d.submit("b", [3, 4], budget=2)
    d.step()
    assert isinstance(sink.error, hibachi.ModelError)
    assert isinstance(sink.error.__cause__, RuntimeError)
    with pytest.raises(hibachi.BatcherClosed):
        d.submit("c", [1], budget=1)


# -- through the batcher ------------------------------------------------------------------


class Vetting(HistoryModel):
    """Refuses prompts longer than 5 tokens; grants at most 3 tokens."""

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> int:
        if prompt.shape[0] > 5:
            raise hibachi.InvalidRequest("too long")
        return min(max_new_tokens, 3)


def batcher(model: Any, **options: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        model,
        stop_token=np.int64(STOP),
        pad_value=np.int64(PAD),
        max_batch_size=model.slots,
        **options,
    )


def test_run_vets_requests_with_the_model() -> None:
    with batcher(Vetting(2)) as b:
        with pytest.raises(hibachi.InvalidRequest, match="too long"):
            b.run(np.arange(1, 7))
        got = [int(t) for t in b.run(np.array([5, 6]), max_new_tokens=10, options="a")]
    assert got == expected([5, 6], 3)
    assert b.stats().requests_admitted == 1


def test_run_refuses_options_for_a_stateless_model() -> None:
    with (
        hibachi.AutoregressiveBatcher(
            lambda tokens, mask: tokens[:, -1], stop_token=np.int64(2), pad_value=np.int64(0)
        ) as b,
        pytest.raises(hibachi.InvalidRequest, match="options"),
    ):
        b.run(np.array([1]), options={"temperature": 1.0})


class Accepting(HistoryModel):
    """Grants each request an `Accepted`: options ``("tag", options)``; a request whose
    options are ``"through"`` is not ended by the stop token."""

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> hibachi.Accepted:
        return hibachi.Accepted(
            max_new_tokens, ("tag", options), ends_at_stop_token=options != "through"
        )


def history_through_stops(prompt: list[int], budget: int) -> list[int]:
    """``expected`` for a request that the stop token does not end."""
    history = list(prompt)
    for _ in range(budget):
        history.append(next_token(history))
    return history[len(prompt) :]


@pytest.mark.parametrize(
    "prompts",
    [
        pytest.param([[1, 7], [1, 16]], id="stop-first"),  # the first token, from a prefill step
        pytest.param([[1, 1], [1, 9]], id="stop-later"),  # from decode steps of every row
    ],
)
def test_a_request_accepted_with_ends_at_stop_token_false_runs_to_its_budget(
    prompts: list[list[int]],
) -> None:
    async def main(b: hibachi.AutoregressiveBatcher) -> list[list[int]]:
        async with b:
            streams = [
                b.run(np.array(p), max_new_tokens=9, options=tag)
                for p, tag in zip(prompts * 2, ["through", "through", "a", "b"], strict=True)
            ]
            return [[int(t) for t in await s.collect()] for s in streams]

    got = run_async(main(batcher(Accepting(4), max_batch_tokens=4)))
    wants = [history_through_stops(p, 9) for p in prompts] + [expected(p, 9) for p in prompts]
    assert got == wants
    assert all(STOP in want[:-1] for want in wants[:2])  # the stop token did come, and went on


def test_accepted_options_replace_those_given_to_run() -> None:
    seen: list[Any] = []

    class Recording(Accepting):
        def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
            seen.extend(options)
            return super().step(tokens, mask, slots, options)

    with batcher(Recording(1)) as b:
        assert [int(t) for t in b.run(np.array([5, 6]), max_new_tokens=3, options="x")] == (
            expected([5, 6], 3)
        )
    assert seen and all(o == ("tag", "x") for o in seen)


@pytest.mark.parametrize("budget", [0, 11, True, 2.0])
def test_an_accepted_budget_outside_the_request_s_is_a_model_error(budget: Any) -> None:
    class Granting(HistoryModel):
        def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> Any:
            return hibachi.Accepted(budget, options)

    with batcher(Granting(1)) as b, pytest.raises(hibachi.ModelError, match="Accepted"):
        b.run(np.array([5]), max_new_tokens=10)


def test_options_reach_the_model_unchanged() -> None:
    seen: list[Any] = []

    class Recording(HistoryModel):
        def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
            seen.extend(options)
            return super().step(tokens, mask, slots, options)

    options = {"anything": object()}
    with batcher(Recording(1)) as b:
        list(b.run(np.array([5]), max_new_tokens=2, options=options))
    assert seen and all(o is options for o in seen)


@pytest.mark.parametrize("model_type", [HistoryModel, AsyncHistoryModel], ids=["sync", "async"])
def test_concurrent_callers_with_cancellations(model_type: type[HistoryModel]) -> None:
    model = model_type(3)
    rng = random.Random(4)
    jobs = [
        ([rng.randrange(1, 99) for _ in range(rng.randrange(1, 25))], rng.randrange(1, 15))
        for _ in range(24)
    ]
    quitters = set(range(0, 24, 5))

    async def client(b: hibachi.AutoregressiveBatcher, tag: int) -> list[int]:
        await asyncio.sleep(rng.random() * 0.01)  # arrival jitter, not synchronisation
        prompt, budget = jobs[tag]
        got: list[int] = []
        async for token in b.run(np.array(prompt), max_new_tokens=budget, options=tag):
            got.append(int(token))
            if tag in quitters and len(got) == 2:
                break
        return got

    async def main() -> list[list[int]]:
        async with batcher(model, max_batch_tokens=16) as b:
            return await asyncio.wait_for(
                asyncio.gather(*(client(b, tag) for tag in range(24))), TIMEOUT
            )

    results = run_async(main())
    for tag, got in enumerate(results):
        want = expected(*jobs[tag])
        assert got == (want[: len(got)] if tag in quitters else want)
    assert not model.violations
    assert sorted(model.released) == list(range(24))


def test_closing_at_once_releases_every_slot() -> None:
    model = HistoryModel(2)
    b = batcher(model)
    b.start()
    prompts = [steady(start=k) for k in (1, 10, 20)]
    streams = [b.run(np.array(p), max_new_tokens=500, options=k) for k, p in enumerate(prompts)]
    for stream in streams[:2]:
        next(stream)  # both slots in use; the third request waits
    b.close(cancel=True)
    for stream in streams:
        with pytest.raises(hibachi.BatcherClosed):
            list(stream)
    assert sorted(model.released) == [0, 1]
