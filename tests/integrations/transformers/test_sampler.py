"""`Sampler`: a row's token is the same alone or in any batch, with every option mix.

The sampler is driven directly, step by step, as the adapter drives it: each
row is fed its prompt (in chunks) then the token it got last, and gets logits
that depend only on the row and the position: so a row must get the same
tokens alone (its prompt in one step, in its own sampler) and in a batch with
other rows of other settings, fed in other chunks, in other slots.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hibachi
from hibachi.integrations.transformers import Sampling, _draws
from hibachi.integrations.transformers._sampler import RowOptions, Sampler

STOP = 2
MAX_LENGTH = 48


@pytest.fixture(params=[1, 2], ids=["one-thread", "two-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@dataclass
class Row:
    """One request: its id (which picks its logits), prompt, settings, chunk and budget."""

    id: int
    prompt: list[int]
    settings: Sampling
    chunk: int = 1 << 30
    budget: int = 5
    fed: int = 0
    got: list[int] = field(default_factory=list)

    def fresh(self, chunk: int | None = None) -> Row:
        return Row(self.id, self.prompt, self.settings, chunk or self.chunk, self.budget)

    def next_inputs(self) -> list[int]:
        if self.fed < len(self.prompt):
            return self.prompt[self.fed : self.fed + self.chunk]
        return [self.got[-1]]


def logits_of(row: Row, position: int, vocab: int, dtype: torch.dtype, ties: bool) -> Any:
    """The logits of ``row`` for the token at ``position``: the same in every run."""
    generator = torch.Generator().manual_seed(row.id * 1009 + position)
    values = torch.randn(vocab, generator=generator, dtype=torch.float64) * 3
    if ties:
        values = (values * 2).round() / 2  # many tokens share a logit
    return values.to(dtype)


def serve(
    rows: list[Row], slots: list[int], vocab: int, dtype: torch.dtype, ties: bool
) -> list[list[int]]:
    """Step ``rows`` (in ``slots``) through one sampler until each has its budget."""
    sampler = Sampler(max(slots) + 1, MAX_LENGTH, torch.device("cpu"), stop_token=STOP)
    for row, slot in zip(rows, slots, strict=True):
        sampler.start(slot, RowOptions(row.settings, len(row.prompt)))
    while active := [i for i, row in enumerate(rows) if len(row.got) < row.budget]:
        fed = [rows[i].next_inputs() for i in active]
        width = max(map(len, fed))
        tokens = torch.zeros((len(active), width), dtype=torch.long)
        mask = torch.zeros((len(active), width), dtype=torch.bool)
        for j, inputs in enumerate(fed):
            tokens[j, width - len(inputs) :] = torch.tensor(inputs)
            mask[j, width - len(inputs) :] = True
        for i, inputs in zip(active, fed, strict=True):
            rows[i].fed += len(inputs)
        logits = torch.stack([logits_of(rows[i], rows[i].fed, vocab, dtype, ties) for i in active])
        step_slots = np.array([slots[i] for i in active], dtype=np.int64)
        picked = sampler.pick(logits, step_slots, sampler.fed(tokens, mask, step_slots))
        for i, token in zip(active, picked.tolist(), strict=True):
            if rows[i].fed >= len(rows[i].prompt):
                rows[i].got.append(token)
    return [row.got for row in rows]


def options(vocab: int, seeded: bool = True) -> st.SearchStrategy[Sampling]:
    return st.builds(
        Sampling,
        temperature=st.sampled_from([0.0, 0.0, 0.4, 1.0, 1.6]),
        top_k=st.sampled_from([0, 0, 1, 3, vocab - 1, vocab + 4]),
        top_p=st.sampled_from([1.0, 1.0, 0.95, 0.5, 0.05]),
        seed=st.integers(0, 2**63 - 1) if seeded else st.none(),
        logit_bias=st.dictionaries(st.integers(0, vocab - 1), st.floats(-100, 100), max_size=3),
        min_tokens=st.integers(0, 3),
        repetition_penalty=st.sampled_from([1.0, 1.0, 0.7, 1.3]),
        frequency_penalty=st.sampled_from([0.0, 0.0, -0.5, 1.5]),
        presence_penalty=st.sampled_from([0.0, 0.0, 0.8, -2.0]),
    )


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Row], list[Row], int, torch.dtype, bool, list[int]]:
    vocab = draw(st.sampled_from([5, 17, 64, 251]))
    count = draw(st.integers(1, 5))
    rows = [
        Row(
            i,
            draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=9)),
            draw(options(vocab)),
            draw(st.integers(1, 4)),
            draw(st.integers(1, 6)),
        )
        for i in range(count)
    ]
    others = [  # unseeded rows: they share the batch, their tokens are not compared
        Row(100 + i, [i + 1] * 3, draw(options(vocab, seeded=False)))
        for i in range(draw(st.integers(0, 2)))
    ]
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    slots = draw(st.permutations(range(count + len(others) + 2)))[: count + len(others)]
    return rows, others, vocab, dtype, draw(st.booleans()), slots


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=batches())
def test_a_row_gets_the_same_tokens_alone_and_in_any_batch(
    threads: int, case: tuple[list[Row], list[Row], int, torch.dtype, bool, list[int]]
) -> None:
    rows, others, vocab, dtype, ties, slots = case
    alone = [serve([row.fresh(chunk=1 << 30)], [0], vocab, dtype, ties)[0] for row in rows]
    crowd = serve([row.fresh() for row in rows] + others, slots, vocab, dtype, ties)
    assert crowd[: len(rows)] == alone


def test_plain_greedy_rows_get_the_argmax_among_rows_of_every_kind() -> None:
    vocab = 40
    kinds = [Sampling(), Sampling(temperature=1.0, top_p=0.5), Sampling(presence_penalty=1.0)]
    rows = [Row(i, [3, 4, 5], kinds[i % 3], budget=4) for i in range(6)]
    got = serve(rows, list(range(6)), vocab, torch.float32, ties=False)
    for row, tokens in zip(rows[::3], got[::3], strict=True):
        want = [int(logits_of(row, 3 + n, vocab, torch.float32, False).argmax()) for n in range(4)]
        assert tokens == want


def test_a_seed_gives_the_same_tokens_every_time_and_another_seed_others() -> None:
    def tokens(seed: int) -> list[int]:
        row = Row(0, [1, 2], Sampling(temperature=1.0, seed=seed), budget=12)
        return serve([row], [0], 1000, torch.float32, ties=False)[0]

    assert tokens(5) == tokens(5) != tokens(6)


def test_a_pick_that_raises_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_ = Sampling(temperature=1.0, seed=3, repetition_penalty=1.5, frequency_penalty=1)
    clean = serve([Row(0, [5, 6, 7], settings_, budget=6)], [0], 64, torch.float32, False)[0]
    sample = _draws.sample
    calls = iter(range(100))

    def flaky(*args: Any) -> torch.Tensor:
        if next(calls) == 3:  # the fourth token's step raises once, then is retried
            raise ConnectionError("a transient fault")
        return sample(*args)

    monkeypatch.setattr("hibachi.integrations.transformers._sampler.sample", flaky)
    sampler = Sampler(1, MAX_LENGTH, torch.device("cpu"), stop_token=STOP)
    sampler.start(0, RowOptions(settings_, 3))
    slot, got, inputs = np.array([0]), [], [5, 6, 7]
    row = Row(0, [5, 6, 7], settings_)
    while len(got) < 6:
        tokens = torch.tensor([inputs])
        fed = sampler.fed(tokens, torch.ones_like(tokens, dtype=torch.bool), slot)
        logits = logits_of(row, 3 + len(got), 64, torch.float32, False)[None]
        try:
            token = int(sampler.pick(logits, slot, fed)[0])
        except ConnectionError:
            continue
        got.append(token)
        inputs = [token]
    assert got == clean


@pytest.mark.parametrize(
    "fields", [{"min_tokens": 1}, {"frequency_penalty": 0.5}, {"presence_penalty": -1.0}]
)
def test_options_that_count_generated_tokens_need_the_prompt_length(
    fields: dict[str, Any],
) -> None:
    sampler = Sampler(1, MAX_LENGTH, torch.device("cpu"), stop_token=STOP)
    with pytest.raises(hibachi.InvalidRequest, match="prompt's length"):
        sampler.start(0, fields)
    sampler.start(0, {"temperature": 0.5, "repetition_penalty": 1.2, "logit_bias": {1: 2.0}})


@pytest.mark.parametrize("temperature", [1e-39, 1e-50, 1e-300, 5e-324])
def test_a_temperature_too_small_for_float32_is_greedy(temperature: float) -> None:
    settings_ = Sampling(temperature=temperature, seed=1)
    assert settings_.greedy
    sampler = Sampler(64, MAX_LENGTH, torch.device("cpu"))
    for slot in range(64):
        sampler.start(slot, settings_)
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    slots = np.arange(64)
    fed = sampler.fed(
        torch.ones(64, 1, dtype=torch.long), torch.ones(64, 1, dtype=torch.bool), slots
    )
    assert fed is None  # plain greedy: one argmax
    assert torch.equal(sampler.pick(logits, slots, fed), logits.argmax(dim=-1))


@pytest.mark.parametrize("temperature", [1e-30, 1e-20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_tiny_sampled_temperature_picks_the_top_token(
    temperature: float, dtype: torch.dtype
) -> None:
    sampler = Sampler(64, MAX_LENGTH, torch.device("cpu"))
    for slot in range(64):
        sampler.start(slot, Sampling(temperature=temperature, seed=slot))
    logits = (torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 1e3).to(dtype)
    slots, want = np.arange(64), logits.argmax(dim=-1)
    fed = sampler.fed(
        torch.ones(64, 1, dtype=torch.long), torch.ones(64, 1, dtype=torch.bool), slots
    )
    assert torch.equal(sampler.pick(logits, slots, fed), want)
