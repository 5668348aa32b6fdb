"""Decode attention split into runs of rows, each read up to its own longest row: exact or not used.

Every served architecture of the zoo, with the split forced at every row
(``split_cost`` 0), decodes rows of very different lengths in one batch and
must give each row ``model.generate()``'s tokens on its prompt alone; a call
the split cannot serve exactly goes to ``sdpa`` unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from hibachi.integrations.transformers import CausalLMAdapter, _row_attention  # noqa: E402
from hibachi.integrations.transformers._row_attention import (  # noqa: E402
    Segmenter,
    Segments,
    row_attention,
)
from support.torch_threads import one_torch_thread  # noqa: E402, F401 (autouse: one PyTorch thread)
from support.zoo_models import SERVED, VOCAB, reference, tiny_model  # noqa: E402

PROMPTS = [19, 2, 11, 1, 23]  # tokens per row: lengths far apart, in no order
STEPS = 6
# on sdpa but calling it themselves, not through transformers' AttentionInterface: never split
OWN_SDPA = {"falcon-rotary"}


def decode(adapter: CausalLMAdapter, prompts: list[torch.Tensor], steps: int) -> list[list[int]]:
    """Each prompt prefilled alone, then ``steps`` decode steps over all rows at once."""
    got: list[list[int]] = []
    for slot, prompt in enumerate(prompts):
        mask = torch.ones((1, len(prompt)), dtype=torch.bool)
        got.append([int(adapter.step(prompt[None], mask, np.array([slot]), [None])[0])])
    slots = np.arange(len(prompts))
    ones = torch.ones((len(prompts), 1), dtype=torch.bool)
    for _ in range(steps):
        last = torch.tensor([row[-1] for row in got])[:, None]
        tokens = adapter.step(last, ones, slots, [None] * len(prompts))
        for row, token in zip(got, tokens, strict=True):
            row.append(int(token))
    return got


@pytest.fixture
def splits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many attention calls were split into runs (one entry per call, its run count)."""
    calls: list[int] = []
    fits = _row_attention._fits

    def counting(segments: Segments, *args: Any) -> bool:
        ok = fits(segments, *args)
        if ok:
            calls.append(len(segments.starts))
        return ok

    monkeypatch.setattr(_row_attention, "_fits", counting)
    return calls


@pytest.mark.parametrize(("model_type", "settings"), SERVED)
def test_split_decode_attention_gives_generates_tokens(
    model_type: str, settings: dict[str, Any], splits: list[int], request: pytest.FixtureRequest
) -> None:
    model = tiny_model(model_type, **settings)
    adapter = CausalLMAdapter(model, slots=len(PROMPTS), max_length=40)
    if adapter._segmenter is not None:
        adapter._segmenter.split_cost = 0  # a run per row wherever lengths differ
    rng = np.random.default_rng(len(model_type))
    prompts = [torch.from_numpy(rng.integers(6, VOCAB, n)) for n in PROMPTS]
    got = decode(adapter, prompts, STEPS)
    for prompt, tokens in zip(prompts, got, strict=True):
        assert tokens == reference(model, prompt, STEPS + 1, None), len(prompt)
    if adapter._segmenter is not None and request.node.callspec.id not in OWN_SDPA:
        assert splits and max(splits) == len(PROMPTS)  # the split ran, a run per row


def test_a_model_not_on_sdpa_is_never_split() -> None:
    model = tiny_model("llama", attn_implementation="eager")
    assert CausalLMAdapter(model, slots=2, max_length=16)._segmenter is None


def test_runs_start_where_a_split_saves_more_than_it_costs() -> None:
    positions = np.array([1000, 15, 20, 990, 1010, 30])
    assert Segmenter(50).segments(object(), positions) == Segments(
        rows=6, kv_length=1011, starts=(0, 1, 3, 5), lengths=(1001, 21, 1011, 31)
    )
    assert Segmenter(10**6).segments(object(), positions) is None  # one run: not split


def test_a_call_the_runs_do_not_fit_goes_to_sdpa_unchanged() -> None:
    query, key = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 9, 4)
    mask = torch.zeros(3, 1, 1, 9)
    segments = Segments(rows=3, kv_length=8, starts=(0, 1), lengths=(3, 8))  # 8 keys, not 9
    want, _ = sdpa_attention_forward(torch.nn.Module(), query, key, key, mask)
    assert torch.equal(split(segments, query, key, key, mask), want)


def split(segments: Segments, *args: torch.Tensor) -> torch.Tensor:
    token = _row_attention._current.set(segments)
    try:
        return row_attention(torch.nn.Module(), *args)[0]
    finally:
        _row_attention._current.reset(token)


def test_runs_read_each_row_up_to_its_own_length() -> None:
    query, key, value = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 9, 4), torch.randn(3, 2, 9, 4)
    mask = torch.zeros(3, 1, 1, 9)
    mask[0, ..., 3:] = mask[2, ..., 5:] = torch.finfo(mask.dtype).min
    segments = Segments(rows=3, kv_length=9, starts=(0, 1, 2), lengths=(3, 9, 5))
    want, _ = sdpa_attention_forward(torch.nn.Module(), query, key, value, mask)
    torch.testing.assert_close(split(segments, query, key, value, mask), want)
    key[0, :, 3:] = value[2, :, 5:] = float("nan")  # past each row's length: never read
    torch.testing.assert_close(split(segments, query, key, value, mask), want)
