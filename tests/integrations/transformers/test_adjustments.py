"""Logit changes equal their references: transformers' processor, OpenAI's formulas.

`Adjustments` is given each row's history (prompt and generated tokens) the way
the sampler gives it, then changes a batch of logits; each row must equal its
reference computed alone: transformers' ``RepetitionPenaltyLogitsProcessor``
over prompt and generated tokens, and a per-token loop for ``logit_bias``,
``min_tokens`` and the frequency and presence penalties (generated tokens only).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from hibachi.integrations.transformers import Sampling
from hibachi.integrations.transformers._adjustments import Adjustments

STOP = 1
MAX_LENGTH = 40


def reference(
    logits: torch.Tensor, prompt: list[int], generated: list[int], settings: Sampling
) -> torch.Tensor:
    """One row's changed logits, in vLLM's order."""
    x = logits.clone()
    dtype = x.dtype
    for token, bias in settings.logit_bias.items():
        x[token] += torch.tensor(bias, dtype=dtype)
    if len(generated) < settings.min_tokens:
        x[STOP] = -torch.inf
    if settings.repetition_penalty != 1:
        processor = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)
        x = processor(torch.tensor([prompt + generated]), x[None])[0]
    frequency = torch.tensor(settings.frequency_penalty, dtype=dtype)
    presence = torch.tensor(settings.presence_penalty, dtype=dtype)
    if settings.frequency_penalty or settings.presence_penalty:
        for token, count in Counter(generated).items():
            x[token] = x[token] - frequency * count - presence
    return x


def changed(
    logits: torch.Tensor, histories: list[tuple[list[int], list[int]]], kinds: list[Sampling]
) -> torch.Tensor:
    """The batch's logits changed by `Adjustments`, each row's history recorded in one go."""
    rows = len(kinds)
    adjustments = Adjustments(rows + 3, MAX_LENGTH, torch.device("cpu"), STOP)
    slots = np.random.default_rng(rows).permutation(rows + 3)[:rows]  # not the rows' order
    for slot, kind in zip(slots.tolist(), kinds, strict=True):
        adjustments.start(slot, kind)
    fed = []
    for slot, (prompt, generated) in zip(slots.tolist(), histories, strict=True):
        tokens = prompt + generated
        adjustments.record(np.full(len(tokens), slot), np.arange(len(tokens)), tokens)
        fed.append(len(tokens))
    prompts = np.array([len(prompt) for prompt, _ in histories])
    out = logits.clone()
    adjustments.apply(out, slots, np.array(fed), prompts)
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[Any, list[tuple[list[int], list[int]]], list[Sampling]]:
    vocab = draw(st.integers(3, 50))
    rows = draw(st.integers(1, 6))
    tokens = st.integers(0, vocab - 1)
    histories = [
        (
            draw(st.lists(tokens, min_size=1, max_size=12)),
            draw(st.lists(tokens, max_size=12)),
        )
        for _ in range(rows)
    ]
    kinds = [
        Sampling(
            logit_bias=draw(st.dictionaries(tokens, st.floats(-100, 100), max_size=4)),
            min_tokens=draw(st.integers(0, 14)),
            repetition_penalty=draw(st.sampled_from([1.0, 0.5, 1.2, 3.0])),
            frequency_penalty=draw(st.sampled_from([0.0, 0.3, -1.1, 2.0])),
            presence_penalty=draw(st.sampled_from([0.0, 0.7, -2.0])),
        )
        for _ in range(rows)
    ]
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    values = st.lists(st.floats(-30, 30, width=32), min_size=rows * vocab, max_size=rows * vocab)
    logits = torch.tensor(draw(values), dtype=dtype).reshape(rows, vocab)
    return logits, histories, kinds


@settings(max_examples=150, deadline=None)
@given(case=cases())
def test_each_row_is_changed_as_its_reference_alone(
    case: tuple[Any, list[tuple[list[int], list[int]]], list[Sampling]],
) -> None:
    logits, histories, kinds = case
    got = changed(logits, histories, kinds)
    for row, ((prompt, generated), settings_) in enumerate(zip(histories, kinds, strict=True)):
        want = reference(logits[row], prompt, generated, settings_)
        assert torch.equal(got[row], want), (row, settings_)


def test_the_repetition_penalty_counts_the_prompt_and_the_others_generated_tokens_only() -> None:
    logits = torch.full((2, 6), 2.0)
    histories = [([1, 2], [3, 3]), ([1, 2], [3, 3])]
    kinds = [Sampling(repetition_penalty=2.0), Sampling(frequency_penalty=0.5)]
    got = changed(logits, histories, kinds)
    assert got[0].tolist() == [2.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert got[1].tolist() == [2.0, 2.0, 2.0, 1.0, 2.0, 2.0]  # 2 - 0.5 * 2


def test_min_tokens_keeps_the_stop_token_back_until_enough_were_generated() -> None:
    logits = torch.zeros((3, 4))
    histories = [([0], []), ([0], [2, 3]), ([0], [2, 3, 2])]
    got = changed(logits, histories, [Sampling(min_tokens=3)] * 3)
    assert got[:, STOP].tolist() == [-torch.inf, -torch.inf, 0.0]


def test_rows_without_changes_are_left_as_they_were() -> None:
    logits = torch.randn(3, 9)
    kinds = [Sampling(), Sampling(presence_penalty=1.0), Sampling(temperature=0.5)]
    got = changed(logits, [([4], [5])] * 3, kinds)
    assert torch.equal(got[[0, 2]], logits[[0, 2]]) and not torch.equal(got[1], logits[1])


@pytest.mark.parametrize("stop", [None, 99])
def test_min_tokens_does_nothing_without_a_stop_token_in_the_logits(stop: int | None) -> None:
    adjustments = Adjustments(1, MAX_LENGTH, torch.device("cpu"), stop)
    adjustments.start(0, Sampling(min_tokens=5))
    logits = torch.zeros((1, 8))
    adjustments.apply(logits, np.array([0]), np.array([1]), np.array([1]))
    assert not logits.any()
