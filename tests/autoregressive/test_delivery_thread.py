"""``delivery_thread=True``: the courier thread delivers each step's tokens beside the next step.

The property: whatever the arrivals, cancellations, stops, budgets, failing
rows, transient faults and closes, every caller gets with ``delivery_thread=True``
exactly what its request gets alone, for a stateless model, an
`IncrementalModel` and an `IncrementalModel` in stages; nothing hangs, and the
courier's thread is gone after close. Then each mechanism on its own: tokens go
through the courier's thread, a stream's end waits behind its tokens, close
waits for the last deliveries, a closed event loop is reported, a failing sink
spoils no one else's delivery.
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
from hibachi._autoregressive.courier import Courier, CourierSink
from hibachi._backends import backend_of
from hibachi._core.delivery import Channels
from support.harness import Driver, ListSink
from support.incremental_models import PAD, STOP, HistoryModel, StagedHistoryModel, expected
from support.models import TIMEOUT, run_async

BAD = 61  # a stateless model raises on a row whose first token is this (prompts are 1 … 60)


def stateless(tokens: Any, mask: Any) -> Any:
    """`expected`'s model without a cache: each row's next token from its whole history."""
    tokens, mask = np.asarray(tokens), np.asarray(mask, dtype=bool)
    rows = [tokens[i][mask[i]].tolist() for i in range(len(tokens))]
    if any(row[0] == BAD for row in rows):
        raise RuntimeError("boom")
    return np.array([next_of(row) for row in rows], dtype=np.int64)


def next_of(history: list[int]) -> int:
    return expected(history, 1)[0]


@dataclass(frozen=True)
class Spec:
    prompt: tuple[int, ...]
    budget: int
    arrival: int
    cancel_after: int | None
    fails: bool


specs = st.builds(
    Spec,
    prompt=st.lists(st.integers(1, 60), min_size=1, max_size=10).map(tuple),
    budget=st.integers(1, 8),
    arrival=st.integers(0, 6),
    cancel_after=st.none() | st.integers(0, 4),
    fails=st.sampled_from([False, False, False, True]),
)


def make_model(kind: str, requests: list[Spec], slots: int, transient: int) -> Any:
    failing = {tag for tag, spec in enumerate(requests) if spec.fails}
    if kind == "stateless":
        return stateless
    if kind == "incremental":
        return HistoryModel(slots, fail_on=failing, fail_next=transient)
    return StagedHistoryModel(slots, groups=2, fail_on=failing, fail_next=transient)


async def serve(
    model: Any, requests: list[Spec], slots: int, close_after: int | None
) -> tuple[list[tuple[list[int], str]], hibachi.AutoregressiveBatcher]:
    incremental = isinstance(model, hibachi.IncrementalModel)
    b = hibachi.AutoregressiveBatcher(
        model,
        stop_token=np.int64(STOP),
        pad_value=np.int64(PAD),
        max_batch_size=slots,
        max_batch_tokens=6,
        delivery_thread=True,
    )

    async def caller(tag: int, spec: Spec) -> tuple[list[int], str]:
        for _ in range(spec.arrival):
            await asyncio.sleep(0)
        prompt = (BAD, *spec.prompt) if spec.fails and not incremental else spec.prompt
        got: list[int] = []
        try:
            stream = b.run(
                np.array(prompt), max_new_tokens=spec.budget, options=tag if incremental else None
            )
            if spec.cancel_after == 0:
                stream.cancel()
                return got, "cancelled"
            async for token in stream:
                got.append(int(token))
                if len(got) == spec.cancel_after:
                    break
        except hibachi.ModelError:
            return got, "failed"
        except hibachi.BatcherClosed:
            return got, "closed"
        return got, "done"

    async def closer() -> None:
        if close_after is not None:
            for _ in range(close_after):
                await asyncio.sleep(0)
            await b.aclose(cancel=True)

    async with b:
        results = await asyncio.wait_for(
            asyncio.gather(*(caller(tag, spec) for tag, spec in enumerate(requests)), closer()),
            TIMEOUT,
        )
    return results[:-1], b


@pytest.mark.parametrize("kind", ["stateless", "incremental", "staged"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(specs, min_size=1, max_size=8),
    slots=st.integers(1, 4),
    transient=st.integers(0, 1),
    close_after=st.none() | st.none() | st.integers(0, 30),
)
def test_with_a_delivery_thread_each_request_gets_what_it_gets_alone(
    kind: str, requests: list[Spec], slots: int, transient: int, close_after: int | None
) -> None:
    model = make_model(kind, requests, max(slots, 2), transient if kind != "stateless" else 0)
    results, b = run_async(serve(model, requests, max(slots, 2), close_after))
    for tag, (spec, (got, outcome)) in enumerate(zip(requests, results, strict=True)):
        alone = expected(list(spec.prompt), spec.budget)
        if spec.cancel_after is not None:
            alone = alone[: spec.cancel_after]
        if outcome == "closed":
            assert close_after is not None and got == alone[: len(got)], tag
        elif spec.fails and spec.cancel_after != 0:
            assert (got, outcome) == ([], "failed"), tag
        else:
            assert got == alone, tag
            assert outcome == ("cancelled" if spec.cancel_after == 0 else "done"), tag
    assert not getattr(model, "violations", [])
    courier = b._courier
    assert courier is not None and not courier._thread.is_alive()
    if close_after is None and isinstance(model, HistoryModel):
        fed = {tag for call in model.calls for tag in call.tags}
        assert sorted(model.released) == sorted(fed)


def test_callers_on_plain_threads_get_their_tokens() -> None:
    model = HistoryModel(3)
    prompts = [[4, 5], [7, 1, 3], [9], [12, 2, 8, 1], [5, 5]]
    got: dict[int, list[int]] = {}
    with hibachi.AutoregressiveBatcher(
        model,
        stop_token=np.int64(STOP),
        pad_value=np.int64(PAD),
        max_batch_size=3,
        delivery_thread=True,
    ) as b:

        def caller(tag: int) -> None:
            stream = b.run(np.array(prompts[tag]), max_new_tokens=6, options=tag)
            got[tag] = [int(t) for t in stream]

        threads = [threading.Thread(target=caller, args=(tag,)) for tag in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    assert got == {tag: expected(p, 6) for tag, p in enumerate(prompts)}


def test_delivery_thread_must_be_a_bool() -> None:
    with pytest.raises(hibachi.ConfigurationError, match="delivery_thread"):
        hibachi.AutoregressiveBatcher(
            stateless, stop_token=np.int64(STOP), pad_value=np.int64(PAD), delivery_thread=1
        )


# -- each mechanism ----------------------------------------------------------------------


class ThreadSink(ListSink):
    """A `ListSink` that records the thread of each write."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def put(self, item: Any) -> None:
        self.threads.add(threading.current_thread().name)
        super().put(item)

    def end(self, error: BaseException | None = None) -> None:
        self.threads.add(threading.current_thread().name)
        super().end(error)


def driver_with_courier(on_lost: Any = lambda: None) -> tuple[Driver, Courier]:
    driver = Driver(stateless, stop=np.int64(STOP), pad=np.int64(PAD))
    backend = backend_of(np.int64(PAD))
    assert backend is not None
    courier = Courier(backend, Channels(), on_lost, "test-courier")
    driver.scheduler.send = courier.send
    return driver, courier


def submit_through(driver: Driver, courier: Courier, prompt: list[int], budget: int) -> Any:
    request, _ = driver.submit(np.array(prompt), budget)
    inner = ThreadSink()
    request.sink = CourierSink(inner, courier)
    return inner


def test_tokens_and_ends_are_written_on_the_courier_s_thread_in_order() -> None:
    driver, courier = driver_with_courier()
    courier.start()
    sinks = [submit_through(driver, courier, p, 5) for p in ([4, 6], [8], [10, 1, 2])]
    while driver.step():
        courier.post()
    courier.close()
    for sink, prompt in zip(sinks, ([4, 6], [8], [10, 1, 2]), strict=True):
        assert sink.tokens() == expected(prompt, 5) and sink.ended
        assert sink.threads == {"test-courier"}


def test_nothing_reaches_a_sink_before_a_post_and_the_end_follows_the_tokens() -> None:
    """The courier's thread not started: the engine's writes wait in its record, in order;
    a sink's end that bypassed the courier would come before its tokens (ListSink refuses)."""
    driver, courier = driver_with_courier()
    sink = submit_through(driver, courier, [4, 6], 3)
    driver.run_until_idle()
    assert sink.items == [] and not sink.ended
    courier.close()  # never started: delivers on this thread
    assert sink.tokens() == expected([4, 6], 3) and sink.ended


def test_close_waits_for_what_was_posted() -> None:
    _, courier = driver_with_courier()
    go = threading.Event()
    delivered: list[int] = []
    courier.start()
    courier._batch.append((lambda: go.wait(TIMEOUT) and delivered.append(1), ()))
    courier.post()
    threading.Timer(0.05, go.set).start()
    courier.close()
    assert delivered == [1]


def test_a_closed_event_loop_is_reported() -> None:
    lost = threading.Event()
    channels = Channels()
    backend = backend_of(np.int64(PAD))
    assert backend is not None
    courier = Courier(backend, channels, lost.set, "test-courier")

    async def make_sink() -> Any:
        return channels.sink_for_current_context()

    loop = asyncio.new_event_loop()
    sink = loop.run_until_complete(make_sink())
    loop.close()
    courier.start()
    courier.put(sink, 1)
    courier.close()
    assert lost.is_set()


def test_a_failing_sink_spoils_no_one_else_s_delivery() -> None:
    class Broken(ListSink):
        def put(self, item: Any) -> None:
            raise RuntimeError("a broken sink")

    _, courier = driver_with_courier()
    courier.start()
    good, broken = ListSink(), Broken()
    courier.put(broken, 1)
    courier.put(good, 2)
    courier.end(good, None)
    courier.close()
    assert good.items == [2] and good.ended


# -- crash, fatal exceptions and a stuck model, with the courier ---------------------------


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


def test_an_engine_failure_ends_every_stream_through_the_courier() -> None:
    b = hibachi.AutoregressiveBatcher(
        next_int,
        stop_token=np.int64(-1),
        pad_value=np.int64(0),
        max_batch_size=2,
        delivery_thread=True,
    )

    def broken(output: Any) -> None:
        raise KeyError("a bug inside hibachi")

    b._scheduler.apply = broken  # type: ignore[method-assign]
    with b:
        streams = [b.run(np.array([1, 2]), max_new_tokens=5, timeout=TIMEOUT) for _ in range(4)]
        for stream in streams:
            with pytest.raises(hibachi.HibachiError, match="engine failed"):
                list(stream)
        assert b._engine.join(timeout=TIMEOUT)
    assert b._courier is not None and not b._courier._thread.is_alive()


def test_a_fatal_exception_from_the_model_ends_every_stream_through_the_courier() -> None:
    calls = 0

    def model(tokens: Any, mask: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return next_int(tokens, mask)

    b = hibachi.AutoregressiveBatcher(
        model,
        stop_token=np.int64(-1),
        pad_value=np.int64(0),
        max_batch_size=2,
        delivery_thread=True,
    )
    with b:
        streams = [b.run(np.array([1, 2]), max_new_tokens=5, timeout=TIMEOUT) for _ in range(3)]
        for stream in streams:
            got: list[int] = []
            with pytest.raises(hibachi.HibachiError, match="KeyboardInterrupt"):
                got.extend(int(token) for token in stream)
            assert got == [3, 4][: len(got)]
        assert b._engine.join(timeout=TIMEOUT)
    assert b._courier is not None and not b._courier._thread.is_alive()


def test_close_with_cancel_while_the_model_is_stuck_ends_callers_and_later_the_courier() -> None:
    entered, release = threading.Event(), threading.Event()

    def model(tokens: Any, mask: Any) -> Any:
        if tokens.shape[1] > 3:  # the second decode step blocks
            entered.set()
            assert release.wait(TIMEOUT)
        return next_int(tokens, mask)

    b = hibachi.AutoregressiveBatcher(
        model,
        stop_token=np.int64(-1),
        pad_value=np.int64(0),
        max_batch_size=2,
        delivery_thread=True,
    )
    b.start()
    stream = b.run(np.array([1, 2]), max_new_tokens=10, timeout=TIMEOUT)
    assert entered.wait(TIMEOUT)
    b.close(cancel=True, wait=False)
    with pytest.raises(hibachi.BatcherClosed):
        list(stream)
    release.set()
    assert b._engine.join(timeout=TIMEOUT)
    assert b._courier is not None and not b._courier._thread.is_alive()
