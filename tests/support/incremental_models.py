"""A fake `IncrementalModel` that checks hibachi's slot contract, and a synchronous driver.

`HistoryModel` keeps each slot's history and returns a token computed from it,
so a token fed twice, lost, or fed to the wrong slot changes every later token
of that row. Each request's ``options`` is its tag: a step that brings a slot
a new tag before the slot was released is recorded as a violation.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import hibachi
from hibachi._autoregressive.incremental import overrides
from hibachi._autoregressive.pipelined import slot_ranges
from hibachi._autoregressive.request import Request, check_prompt
from hibachi._autoregressive.slots import SlotLayout
from hibachi._backends import Backend
from support.harness import Driver, ListSink

STOP = 2
PAD = 0


def next_token(history: list[int]) -> int:
    """The token that follows ``history``: 3 … 99, or now and then STOP if history[0] is odd."""
    value = (sum(history) * 31 + len(history) * 7) % 211
    return STOP if value % 17 == 0 and history[0] % 2 else 3 + value % 97


def expected(prompt: list[int], budget: int) -> list[int]:
    """What ``prompt`` gets alone."""
    history, out = list(prompt), []
    for _ in range(budget):
        token = next_token(history)
        out.append(token)
        history.append(token)
        if token == STOP:
            break
    return out


def steady(length: int = 2, start: int = 2) -> list[int]:
    """A prompt of ``length`` tokens that never leads to STOP (its first token is even)."""
    return [start * 2 + i for i in range(length)]


@dataclass
class StepCall:
    widths: list[int]
    slots: list[int]
    tags: list[Any]
    width: int


@dataclass
class HistoryModel(hibachi.IncrementalModel):
    """Per-slot histories; records every step and release, and contract violations."""

    slots: int
    fail_on: set[Any] = field(default_factory=set)  # tags whose step raises
    bad_output_on: set[Any] = field(default_factory=set)  # tags whose step returns junk
    fail_next: int = 0  # the next steps that raise whatever their rows (transient faults)
    release_fails: set[int] = field(default_factory=set)
    events: list[tuple[str, Any]] = field(default_factory=list)  # shared with sinks
    calls: list[StepCall] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.history: list[list[int] | None] = [None] * self.slots
        self.owner: list[Any] = [None] * self.slots

    def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
        tokens, mask = np.asarray(tokens), np.asarray(mask, dtype=bool)
        self._check_step(tokens, mask, slots, options)
        self.calls.append(
            StepCall(mask.sum(1).tolist(), slots.tolist(), list(options), mask.shape[1])
        )
        if any(tag in options for tag in self.fail_on):
            raise RuntimeError("boom")
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("a transient fault")
        out = [
            self._feed(slot, tokens[i][mask[i]].tolist()) for i, slot in enumerate(slots.tolist())
        ]
        if any(tag in options for tag in self.bad_output_on):
            return np.zeros((len(out), 3), dtype=np.int64)
        return np.array(out, dtype=np.int64)

    def _check_step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> None:
        if len(set(slots.tolist())) != len(slots) or not all(0 <= s < self.slots for s in slots):
            self.violations.append(f"bad slots {slots.tolist()}")
        if not mask.any(axis=1).all():
            self.violations.append("a row with no real token")
        for slot, tag in zip(slots.tolist(), options, strict=True):
            if self.owner[slot] is not None and self.owner[slot] != tag:
                self.violations.append(f"slot {slot} reused by {tag} before release")
            self.owner[slot] = tag

    def _feed(self, slot: int, real: list[int]) -> int:
        history = self.history[slot]
        if history is None:
            history = self.history[slot] = []
        history.extend(real)
        return next_token(history)

    def release(self, slot: int) -> None:
        self.events.append(("release", self.owner[slot]))
        if slot in self.release_fails:
            raise RuntimeError(f"cannot release {slot}")
        self.history[slot] = None
        self.owner[slot] = None

    @property
    def released(self) -> list[Any]:
        return [tag for kind, tag in self.events if kind == "release"]


class AsyncHistoryModel(HistoryModel):
    """The same model with ``async`` step and release."""

    async def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().step(tokens, mask, slots, options)

    async def release(self, slot: int) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().release(slot)


class LoggingSink(ListSink):
    """A list sink that notes in ``events`` when its stream ends."""

    def __init__(self, tag: Any, events: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.tag = tag
        self.events = events

    def end(self, error: BaseException | None = None) -> None:
        super().end(error)
        self.events.append(("end", self.tag))


class SlotDriver(Driver):
    """A `Scheduler` over a `SlotLayout` and a `HistoryModel`, stepped by hand."""

    model: HistoryModel

    def __init__(
        self, model: HistoryModel, *, max_batch_size: int, max_batch_tokens: int = 8
    ) -> None:
        def slots(backend: Backend, pad: Any) -> SlotLayout:
            return SlotLayout(
                backend,
                pad,
                max_batch_size,
                max_batch_tokens=max_batch_tokens,
                release=model.release,
                admit=model.admit if overrides(model, "admit") else None,
                reserve=model.reserve if overrides(model, "reserve") else None,
            )

        super().__init__(
            model.step,
            stop=np.int64(STOP),
            pad=np.int64(PAD),
            max_batch_size=max_batch_size,
            layout=slots,
        )
        self.model = model

    def submit(
        self, tag: Any, prompt: list[int], budget: int = 8, deadline: float | None = None
    ) -> tuple[Request, LoggingSink]:
        storage = check_prompt(self.backend, np.array(prompt, dtype=np.int64), self.pad, "cpu")
        sink = LoggingSink(tag, self.model.events)
        request = Request(storage, budget, sink, deadline=deadline, options=tag)
        self.scheduler.submit(request)
        return request, sink

    def _call(self, *inputs: Any) -> Any:
        return self.model.step(*inputs)


@dataclass
class _Carry:
    """What stage 1 hands stage 2: the step's slots, tags, and each row's history so far."""

    slots: list[int]
    tags: list[Any]
    pending: list[list[int]]


@dataclass
class StagedHistoryModel(HistoryModel):
    """`HistoryModel` as a two-stage pipeline, each stage with per-slot state of its own.

    Stage 1 keeps each slot's history; stage 2 keeps each slot's count of tokens
    seen. Stage 1 commits nothing: it hands stage 2 each row's history with the
    step's tokens added, and stage 2 commits both stages' state when it returns.
    Recorded as violations: a step whose rows span two groups' slot ranges, a
    slot in two steps at once or released while in the stages, and stages whose
    states disagree (one committed a step the other did not).
    """

    groups: int = 2
    fail_in_first: set[Any] = field(default_factory=set)  # tags whose stage 1 raises

    def __post_init__(self) -> None:
        super().__post_init__()
        self.counts = [0] * self.slots
        self.ranges = slot_ranges(self.slots, self.groups)
        self.in_flight: set[int] = set()
        self._lock = threading.Lock()

    def pipeline(self) -> hibachi.Pipeline:
        return hibachi.Pipeline(self.first, self.last, groups=self.groups)

    def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
        return self.last(self.first(tokens, mask, slots, options))

    def first(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> _Carry:
        tokens, mask = np.asarray(tokens), np.asarray(mask, dtype=bool)
        self._check_step(tokens, mask, slots, options)
        self._enter(slots.tolist())
        self.calls.append(
            StepCall(mask.sum(1).tolist(), slots.tolist(), list(options), mask.shape[1])
        )
        if any(tag in options for tag in self.fail_in_first):
            self._leave(slots.tolist())
            raise RuntimeError("boom in stage 1")
        pending = [
            list(self.history[slot] or []) + tokens[i][mask[i]].tolist()
            for i, slot in enumerate(slots.tolist())
        ]
        return _Carry(slots.tolist(), list(options), pending)

    def last(self, carry: _Carry) -> Any:
        try:
            for slot in carry.slots:
                if len(self.history[slot] or []) != self.counts[slot]:
                    self.violations.append(f"slot {slot}: the stages' states disagree")
            if any(tag in carry.tags for tag in self.fail_on):
                raise RuntimeError("boom")
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("a transient fault")
            out = [next_token(history) for history in carry.pending]
            for slot, history in zip(carry.slots, carry.pending, strict=True):
                self.history[slot], self.counts[slot] = history, len(history)
        finally:
            self._leave(carry.slots)
        if any(tag in carry.tags for tag in self.bad_output_on):
            return np.zeros((len(out), 3), dtype=np.int64)
        return np.array(out, dtype=np.int64)

    def release(self, slot: int) -> None:
        with self._lock:
            if slot in self.in_flight:
                self.violations.append(f"slot {slot} released while in the stages")
        self.counts[slot] = 0
        super().release(slot)

    def _enter(self, slots: list[int]) -> None:
        if not any(set(slots) <= set(r) for r in self.ranges):
            self.violations.append(f"a step's slots {slots} span groups {self.ranges}")
        with self._lock:
            if self.in_flight & set(slots):
                self.violations.append(f"slots {slots} in two steps at once")
            self.in_flight |= set(slots)

    def _leave(self, slots: list[int]) -> None:
        with self._lock:
            self.in_flight -= set(slots)


def driver(slots: int = 2, chunk: int = 8, **model_options: Any) -> SlotDriver:
    """A `SlotDriver` over a `HistoryModel` of ``slots`` slots."""
    return SlotDriver(
        HistoryModel(slots, **model_options), max_batch_size=slots, max_batch_tokens=chunk
    )


def tokens(sink: Any) -> list[int]:
    return [int(t) for t in sink.tokens()]
