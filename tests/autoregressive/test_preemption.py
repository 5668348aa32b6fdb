"""Bounded memory: admission by memory, preemption and recompute, prefixes a model holds.

A `MemoryModel` holds each slot's tokens in blocks of a small budget. The
synchronous scheduler over a `SlotLayout` is driven step by step; every
request that completes must get exactly what it gets alone, whatever was
preempted, cancelled or recomputed on the way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hibachi
from support.incremental_models import STOP, SlotDriver, expected, steady, tokens
from support.memory_models import MemoryModel
from support.models import TIMEOUT, run_async


def memory_driver(
    slots: int = 3, blocks: int = 6, block: int = 4, chunk: int = 8, **options: Any
) -> SlotDriver:
    model = MemoryModel(slots, blocks=blocks, block=block, **options)
    return SlotDriver(model, max_batch_size=slots, max_batch_tokens=chunk)


def test_a_request_waits_until_the_blocks_of_its_prompt_are_free() -> None:
    d = memory_driver(slots=3, blocks=3, block=4)
    _, first = d.submit("a", steady(8), budget=3)  # 2 blocks, then a third
    _, second = d.submit("b", steady(5, start=5), budget=2)  # 2 blocks: must wait
    d.step()
    assert [call.tags for call in d.model.calls] == [["a"]]
    d.run_until_idle()
    assert tokens(first) == expected(steady(8), 3)
    assert tokens(second) == expected(steady(5, start=5), 2)
    assert d.scheduler.counters.preempted == 0
    assert not d.model.violations and d.model.used == 0


def test_the_newest_row_is_preempted_and_recomputed_with_its_tokens() -> None:
    d = memory_driver(slots=2, blocks=4, block=4, chunk=16)
    old_prompt, new_prompt = steady(4), steady(4, start=7)
    _, old = d.submit("old", old_prompt, budget=9)
    _, new = d.submit("new", new_prompt, budget=9)
    d.run_until_idle()
    assert tokens(old) == expected(old_prompt, 9)
    assert tokens(new) == expected(new_prompt, 9)
    assert d.scheduler.counters.preempted >= 1
    resumed = [(tag, generated) for tag, generated, _ in d.model.admits if generated]
    assert resumed and {tag for tag, _ in resumed} == {"new"}  # never the oldest
    assert old.error is None and new.error is None
    assert not d.model.violations and d.model.used == 0


def test_a_preempted_request_goes_before_those_that_waited_behind_it() -> None:
    d = memory_driver(slots=3, blocks=4, block=4, chunk=16)
    d.submit("old", steady(4), budget=9)
    d.submit("new", steady(4, start=7), budget=9)
    while not d.scheduler.counters.preempted:
        d.step()
    before = len(d.model.admits)
    _, late = d.submit("late", steady(4, start=9), budget=2)
    d.run_until_idle()
    after = [(tag, generated) for tag, generated, _ in d.model.admits[before:]]
    assert after[0][0] == "new" and after[0][1] > 0
    assert tokens(late) == expected(steady(4, start=9), 2)


def test_a_preempted_request_keeps_its_deadline_and_its_cancellation() -> None:
    d = memory_driver(slots=2, blocks=3, block=4, chunk=16)
    d.submit("old", steady(4), budget=12)
    waiting, timed = d.submit("timed", steady(4, start=7), budget=12, deadline=5.0)
    while not d.scheduler.counters.preempted:
        d.step()
    assert not waiting.active
    d.clock.advance(10.0)
    d.step()
    assert isinstance(timed.error, hibachi.Timeout)
    gone, cancelled = d.submit("gone", steady(4, start=9), budget=12)
    while d.scheduler.counters.preempted < 2:
        d.step()
    d.cancel(gone)
    d.run_until_idle()
    assert cancelled.ended and cancelled.error is None
    got = tokens(cancelled)
    assert got == expected(steady(4, start=9), 12)[: len(got)]
    assert d.scheduler.counters.timed_out == 1 and d.scheduler.counters.cancelled == 1
    assert d.model.used == 0


def test_a_lone_row_the_model_has_no_room_for_fails_instead_of_looping() -> None:
    class Refusing(MemoryModel):
        def reserve(self, slots: Any, counts: Any) -> bool:
            return False

    d = SlotDriver(Refusing(1, blocks=8), max_batch_size=1)
    _, sink = d.submit("a", [5, 6], budget=4)
    d.run_until_idle()
    assert isinstance(sink.error, hibachi.ModelError) and "no memory" in str(sink.error)
    assert d.scheduler.counters.failed == 1 and sorted(d.layout.free) == [0]


def test_admit_that_raises_or_says_nonsense_fails_that_request_alone() -> None:
    class Picky(MemoryModel):
        def admit(self, slot: int, prompt: Any, options: Any, generated: int) -> int | None:
            if options == "boom":
                raise RuntimeError("bad admit")
            if options == "nonsense":
                return len(prompt)  # the last token must be fed: at most len - 1
            return super().admit(slot, prompt, options, generated)

    d = SlotDriver(Picky(2, blocks=8), max_batch_size=2)
    _, boom = d.submit("boom", [5, 6], budget=2)
    _, nonsense = d.submit("nonsense", [5, 6], budget=2)
    _, fine = d.submit("fine", [5, 6], budget=2)
    d.run_until_idle()
    assert isinstance(boom.error, hibachi.ModelError) and "bad admit" in str(boom.error)
    assert isinstance(nonsense.error, hibachi.ModelError) and "admit()" in str(nonsense.error)
    assert tokens(fine) == expected([5, 6], 2)
    assert sorted(d.layout.free) == [0, 1]


def test_a_request_that_never_fits_fails_once_nothing_else_runs() -> None:
    d = memory_driver(slots=2, blocks=2, block=4)
    _, big = d.submit("big", steady(12), budget=2)
    d.run_until_idle()
    assert isinstance(big.error, hibachi.ModelError) and "no memory" in str(big.error)


def test_a_held_prefix_is_not_fed_again() -> None:
    d = memory_driver(slots=1, blocks=8, block=4, prefix_cache=True)
    shared = steady(9)
    _, first = d.submit("first", [*shared, 40], budget=2)
    d.run_until_idle()
    _, second = d.submit("second", [*shared, 41, 42], budget=3)
    d.run_until_idle()
    assert d.model.admits[-1][2] == 8  # two whole blocks of the first prompt
    fed = [sum(call.widths) for call in d.model.calls if call.tags == ["second"]]
    assert fed[0] == 11 - 8
    assert tokens(second) == expected([*shared, 41, 42], 3)
    assert tokens(first) == expected([*shared, 40], 2)


def test_requests_are_offered_while_the_next_prefill_step_can_start_them() -> None:
    d = memory_driver(slots=4, blocks=64, block=4, chunk=8)
    for tag in "abc":
        d.submit(tag, steady(6, start=3 + len(tag)), budget=1)
    d.scheduler.schedule()
    assert len(d.scheduler.rows) == 2  # 6 tokens wait after the first; 12 after the second


def test_stats_count_preemptions_and_keep_the_books() -> None:
    d = memory_driver(slots=2, blocks=4, block=4, chunk=16)
    d.submit("old", steady(4), budget=9)
    d.submit("new", steady(4, start=7), budget=9)
    d.run_until_idle()
    c = d.scheduler.counters
    assert c.preempted >= 1 and c.admitted == 2 and c.completed == 2
    assert c.submitted == c.completed + c.cancelled + c.failed + c.timed_out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(
        st.tuples(
            st.lists(st.integers(3, 99), min_size=1, max_size=8),  # prompt
            st.integers(1, 24),  # budget
            st.integers(0, 3),  # arrival step
            st.one_of(st.none(), st.integers(0, 12)),  # cancelled after this many steps
            st.integers(0, 2),  # a shared prefix of this many blocks
        ),
        min_size=1,
        max_size=8,
    ),
    slots=st.integers(1, 4),
    blocks=st.integers(4, 8),
    chunk=st.integers(1, 16),
    prefix_cache=st.booleans(),
)
def test_every_completed_request_gets_what_it_gets_alone_under_preemption(
    requests: list[tuple[list[int], int, int, int | None, int]],
    slots: int,
    blocks: int,
    chunk: int,
    prefix_cache: bool,
) -> None:
    """Budgets of 4-8 blocks of 4 tokens for up to 4 rows of up to 40 tokens: admission
    waits, rows are preempted and recomputed, prefixes are reused; every request that
    completes equals its run alone, every stream ends, all memory comes back."""
    d = memory_driver(slots, blocks=blocks, block=4, chunk=chunk, prefix_cache=prefix_cache)
    shared = [50 + i for i in range(8)]
    prompts = [shared[: 4 * shared_blocks] + prompt for prompt, *_, shared_blocks in requests]
    # as a model's check_request clamps them: every request fits the budget alone
    budgets = [min(r[1], 4 * blocks - len(p) + 1) for r, p in zip(requests, prompts, strict=True)]
    submitted: dict[int, Any] = {}
    for step in range(10_000):
        for tag, (_, _, arrival, cancel_at, _) in enumerate(requests):
            if arrival == step:
                submitted[tag] = d.submit(tag, prompts[tag], budgets[tag])
            if tag in submitted and cancel_at is not None and step == arrival + cancel_at:
                d.cancel(submitted[tag][0])
        if not d.step() and step > 6:
            break
    assert not d.model.violations
    for tag, (_, _, _, cancel_at, _) in enumerate(requests):
        _, sink = submitted[tag]
        got, want = tokens(sink), expected(prompts[tag], budgets[tag])
        assert sink.ended and sink.error is None
        assert got == want if cancel_at is None else got == want[: len(got)]
    assert d.model.used == 0 and sorted(d.layout.free) == list(range(slots))
    c = d.scheduler.counters
    assert c.submitted == c.completed + c.cancelled + c.failed + c.timed_out


def test_through_the_batcher_streams_pause_but_never_skip_or_repeat() -> None:
    model = MemoryModel(3, blocks=6, block=4)
    prompts = [steady(4, start=2 + 2 * i) for i in range(6)]

    async def main() -> list[list[int]]:
        async with hibachi.AutoregressiveBatcher(
            model, stop_token=np.int64(STOP), pad_value=np.int64(0), max_batch_size=3
        ) as batcher:
            streams = [
                batcher.run(np.array(p), max_new_tokens=10, options=i)
                for i, p in enumerate(prompts)
            ]
            return [[int(t) for t in await stream.collect()] for stream in streams]

    results = run_async(main(), timeout=TIMEOUT)
    assert results == [expected(p, 10) for p in prompts]
    assert not model.violations and model.used == 0
