"""An `IncrementalModel` whose ``pipeline()`` splits its step into stages.

The property: whatever the arrivals, cancellations, failing rows and transient
faults, every request gets from the staged model exactly what it gets from the
same model alone; each group's steps use only its own slots, a slot is never
released while a step of its is in the stages, and the stages' per-slot
states never disagree (a step that raised in either stage committed nothing).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hibachi
from hibachi._autoregressive.pipelined import PipelinedEngine, slot_ranges
from support.incremental_models import PAD, STOP, StagedHistoryModel, _Carry, expected, steady
from support.models import TIMEOUT, run_async


@dataclass(frozen=True)
class Spec:
    prompt: tuple[int, ...]
    budget: int
    arrival: int
    cancel_after: int | None
    fails: str | None  # "first" or "last": the stage that raises on this request's rows


specs = st.builds(
    Spec,
    prompt=st.lists(st.integers(1, 60), min_size=1, max_size=12).map(tuple),
    budget=st.integers(1, 8),
    arrival=st.integers(0, 6),
    cancel_after=st.none() | st.integers(0, 4),
    fails=st.sampled_from([None, None, None, "first", "last"]),
)


def batcher(model: StagedHistoryModel) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(STOP), pad_value=np.int64(PAD), max_batch_size=model.slots
    )


async def serve(model: StagedHistoryModel, requests: list[Spec], chunk: int) -> Any:
    b = hibachi.AutoregressiveBatcher(
        model,
        stop_token=np.int64(STOP),
        pad_value=np.int64(PAD),
        max_batch_size=model.slots,
        max_batch_tokens=chunk,
    )

    async def caller(tag: int, spec: Spec) -> tuple[list[int], bool]:
        for _ in range(spec.arrival):
            await asyncio.sleep(0)
        stream = b.run(np.array(spec.prompt), max_new_tokens=spec.budget, options=tag)
        got: list[int] = []
        if spec.cancel_after == 0:
            stream.cancel()
            return got, False
        try:
            async for token in stream:
                got.append(int(token))
                if len(got) == spec.cancel_after:
                    break
        except hibachi.ModelError:
            return got, True
        return got, False

    async with b:
        results = await asyncio.wait_for(
            asyncio.gather(*(caller(tag, spec) for tag, spec in enumerate(requests))), TIMEOUT
        )
    return results, b


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(specs, min_size=1, max_size=10),
    groups=st.integers(1, 3),
    slots=st.integers(1, 6),
    chunk=st.integers(1, 12),
    transient=st.integers(0, 1),  # a row fails alone after two faults in a row
)
def test_a_staged_model_equals_the_same_model_alone(
    requests: list[Spec], groups: int, slots: int, chunk: int, transient: int
) -> None:
    model = StagedHistoryModel(
        slots,
        groups=groups,
        fail_in_first={t for t, s in enumerate(requests) if s.fails == "first"},
        fail_on={t for t, s in enumerate(requests) if s.fails == "last"},
        fail_next=transient,
    )
    results, b = run_async(serve(model, requests, chunk))
    for tag, (spec, (got, failed)) in enumerate(zip(requests, results, strict=True)):
        if spec.fails is not None and spec.cancel_after != 0:
            assert (got, failed) == ([], True), tag
            continue
        want = expected(list(spec.prompt), spec.budget)
        if spec.cancel_after is not None:
            want = want[: spec.cancel_after]
        assert (got, failed) == (want, False), tag
    assert not model.violations
    fed = {tag for call in model.calls for tag in call.tags}
    assert sorted(model.released) == sorted(fed)  # every row that stepped, released once
    stats = b.stats()
    assert stats.requests_in_flight == 0 and len(stats.stage_busy) == 2


def test_each_group_owns_a_contiguous_range_of_slots() -> None:
    assert slot_ranges(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    model = StagedHistoryModel(5, groups=2)
    with batcher(model) as b:
        engine = b._engine
        assert isinstance(engine, PipelinedEngine)
        free = [sorted(group.scheduler.layout.free) for group in engine.groups]  # type: ignore[attr-defined]
        assert free == [[0, 1, 2], [3, 4]]


def test_a_group_s_state_is_not_touched_by_another_group_s_step() -> None:
    """Stage 2 holds group A's step until stage 1 has run group B's: A's per-slot
    state, in both stages, is what it was when A's step entered stage 2."""
    b_in_stage_1 = threading.Event()
    touched: list[str] = []

    class Holding(StagedHistoryModel):
        def first(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> _Carry:
            carry = super().first(tokens, mask, slots, options)
            if 1 in options:
                b_in_stage_1.set()
            return carry

        def last(self, carry: _Carry) -> Any:
            if 0 in carry.tags and not b_in_stage_1.is_set():
                before = [(list(self.history[s] or []), self.counts[s]) for s in carry.slots]
                assert b_in_stage_1.wait(TIMEOUT), "stage 1 did not run group B meanwhile"
                after = [(list(self.history[s] or []), self.counts[s]) for s in carry.slots]
                if before != after:
                    touched.append(f"{before} -> {after}")
            return super().last(carry)

    model = Holding(2, groups=2)
    with batcher(model) as b:
        streams = [b.run(np.array(prompt), max_new_tokens=4, options=tag) for tag, prompt in
                   enumerate(([4, 5], [6, 7, 8]))]  # fmt: skip
        got = [[int(t) for t in stream] for stream in streams]
    assert got == [expected([4, 5], 4), expected([6, 7, 8], 4)]
    assert not touched and not model.violations
    assert {model.calls[0].slots[0], model.calls[1].slots[0]} == {0, 1}


@pytest.mark.parametrize("value", [object(), [1, 2]], ids=["object", "list"])
def test_pipeline_must_return_a_pipeline(value: Any) -> None:
    class Wrong(StagedHistoryModel):
        def pipeline(self) -> Any:
            return value

    with pytest.raises(hibachi.ConfigurationError, match="pipeline\\(\\) must return"):
        batcher(Wrong(2))


def test_a_pipeline_method_that_raises_is_a_configuration_error() -> None:
    class Broken(StagedHistoryModel):
        def pipeline(self) -> Any:
            raise KeyError("no stages")

    with pytest.raises(hibachi.ConfigurationError, match="KeyError") as caught:
        batcher(Broken(2))
    assert isinstance(caught.value.__cause__, KeyError)


def test_closing_at_once_releases_every_slot() -> None:
    model = StagedHistoryModel(4, groups=2)
    b = batcher(model)
    b.start()
    streams = [b.run(np.array(steady(start=k)), max_new_tokens=500, options=k) for k in range(5)]
    for stream in streams[:4]:
        next(stream)  # every slot in use, in both groups; the fifth request waits
    b.close(cancel=True)
    for stream in streams:
        with pytest.raises(hibachi.BatcherClosed):
            list(stream)
    assert sorted(model.released) == [0, 1, 2, 3] and not model.violations
