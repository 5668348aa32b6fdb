"""Drawing tokens: each setting draws from the distribution transformers' warpers define.

Thousands of rows with the same logits and different keys are drawn at once;
the counts must match the reference distribution (within 5 standard
deviations) and no token outside it may come. The keys are fixed, so each test
gives the same counts at every run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hibachi.integrations.transformers import _draws
from hibachi.integrations.transformers._draws import Draws, key_of, sample

ROWS = 12000


def draws(rows: int = ROWS, position: int = 5) -> Draws:
    keys = np.array([key_of(seed) for seed in range(rows)], dtype=np.uint64)
    return Draws(keys, np.full(rows, position, dtype=np.int64), torch.device("cpu"))


def drawn(logits: list[float], rows: int = ROWS, **settings: Any) -> np.ndarray[Any, Any]:
    """How many of ``rows`` rows drew each token of ``logits``."""
    tokens = sample(
        torch.tensor(logits, dtype=torch.float64).repeat(rows, 1),
        np.full(rows, settings.get("temperature", 1.0)),
        np.full(rows, settings.get("top_k", 0), dtype=np.int64),
        np.full(rows, settings.get("top_p", 1.0)),
        draws(rows),
    )
    return np.bincount(tokens.numpy(), minlength=len(logits))


def reference(logits: list[float], **settings: Any) -> np.ndarray[Any, Any]:
    """The distribution transformers' warpers leave, in their order."""
    scores = torch.tensor([logits], dtype=torch.float64)
    ids = torch.zeros((1, 1), dtype=torch.long)
    warpers = [TemperatureLogitsWarper(settings.get("temperature", 1.0))]
    if settings.get("top_k"):
        warpers.append(TopKLogitsWarper(settings["top_k"]))
    if settings.get("top_p", 1.0) < 1:
        warpers.append(TopPLogitsWarper(settings["top_p"]))
    for warper in warpers:
        scores = warper(ids, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


def assert_drawn_from(counts: np.ndarray[Any, Any], probabilities: np.ndarray[Any, Any]) -> None:
    expected = probabilities * counts.sum()
    assert not counts[probabilities == 0].any(), (counts, probabilities)
    spread = 5 * np.sqrt(expected * (1 - probabilities)) + 1
    assert (np.abs(counts - expected) <= spread).all(), (counts, expected.round(1))


LOGITS = [math.log(p) for p in [0.30, 0.20, 0.15, 0.12, 0.09, 0.07, 0.04, 0.03]]


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="temperature-1"),
        pytest.param({"temperature": 0.5}, id="temperature-0.5"),
        pytest.param({"temperature": 1.7}, id="temperature-1.7"),
        pytest.param({"top_k": 3}, id="top-k-3"),
        pytest.param({"top_k": 1}, id="top-k-1"),
        pytest.param({"top_p": 0.6}, id="top-p-0.6: every pick checked, some redrawn"),
        pytest.param({"top_p": 0.95}, id="top-p-0.95"),
        pytest.param({"top_p": 0.2}, id="top-p-0.2: the top token alone"),
        pytest.param({"top_k": 5, "top_p": 0.7}, id="top-k-then-top-p"),
        pytest.param({"temperature": 0.6, "top_k": 4, "top_p": 0.9}, id="all-three"),
    ],
)
def test_each_setting_draws_from_the_warpers_distribution(settings: dict[str, Any]) -> None:
    assert_drawn_from(drawn(LOGITS, **settings), reference(LOGITS, **settings))


@pytest.mark.parametrize("checks", [1, 2])
def test_rows_that_run_out_of_checks_draw_from_the_sorted_nucleus_alike(
    checks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sorts: list[int] = []
    sorted_nucleus = _draws._sorted_nucleus

    def counted(probs: torch.Tensor, *args: Any) -> torch.Tensor:
        sorts.append(probs.shape[0])
        return sorted_nucleus(probs, *args)

    monkeypatch.setattr(_draws, "_NUCLEUS_CHECKS", checks)
    monkeypatch.setattr(_draws, "_sorted_nucleus", counted)
    assert_drawn_from(drawn(LOGITS, top_p=0.6), reference(LOGITS, top_p=0.6))
    assert sum(sorts) > ROWS / 40  # rows whose picks kept falling outside: 35% at first


def test_top_k_keeps_every_token_tied_with_the_k_th() -> None:
    logits = [2.0, 1.0, 1.0, 1.0, 0.0, -1.0]  # top_k=2: the three 1.0s tie for second place
    probabilities = np.array([math.exp(v) for v in logits[:4]] + [0.0, 0.0])
    assert_drawn_from(drawn(logits, top_k=2), probabilities / probabilities.sum())


def test_top_p_keeps_every_token_tied_with_the_last_one_kept() -> None:
    logits = [math.log(p) for p in [0.4, 0.2, 0.2, 0.1, 0.1]]  # 0.4 + 0.2 reaches 0.5
    probabilities = np.array([0.4, 0.2, 0.2, 0.0, 0.0])
    assert_drawn_from(drawn(logits, top_p=0.5), probabilities / probabilities.sum())


def test_a_wide_vocabulary_with_a_long_tail() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(3000, generator=generator, dtype=torch.float64) * 2).tolist()
    want = reference(logits, top_p=0.9, temperature=0.8)
    counts = drawn(logits, rows=3000, top_p=0.9, temperature=0.8)
    assert not counts[want == 0].any()
    kept = want > 0
    assert kept.sum() > 20  # a nucleus that needs the exact checks, and the sort now and then
    top = np.argsort(want)[-10:]  # the likeliest tokens, drawn often enough to compare
    assert_drawn_from(
        np.append(counts[top], counts.sum() - counts[top].sum()),
        np.append(want[top], 1 - want[top].sum()),
    )


def test_logits_of_minus_infinity_are_never_drawn() -> None:
    logits = [0.0, -math.inf, 1.0, -math.inf]
    counts = drawn(logits, temperature=0.3)
    assert counts[1] == counts[3] == 0 and counts[0] and counts[2]


def test_uniforms_are_in_the_unit_interval_and_differ_by_key_position_and_round() -> None:
    d = draws(rows=4000)
    first = d.uniform(0).numpy()
    assert first.dtype == np.float64 and (first >= 0).all() and (first < 1).all()
    assert abs(first.mean() - 0.5) < 0.02 and len(set(first.tolist())) == 4000
    assert not np.array_equal(first, d.uniform(1).numpy())
    later = Draws(d.keys, d.positions + 1, d.device).uniform(0).numpy()
    assert not np.isclose(first, later).any()
    assert np.array_equal(first[[7, 3]], d.rows(np.array([7, 3])).uniform(0).numpy())


def test_a_seed_gives_the_same_key_always_and_no_seed_a_fresh_one() -> None:
    assert key_of(7) == key_of(7) != key_of(8)
    assert key_of(None) != key_of(None)
    assert key_of(2**63 - 1) != key_of(0)
