"""Decode masks kept between steps: updated in place only when every row moved on by one.

Rows decode, then are fed more tokens at once over the same rows (the same
layout, positions jumping by more than one), or a step raises midway and is
retried: the masks must be built afresh, and each row must still get
``model.generate()``'s tokens. Full attention and a sliding window of 8
(sequences longer than it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hibachi.integrations.transformers import CausalLMAdapter  # noqa: E402
from support.torch_threads import one_torch_thread  # noqa: E402, F401 (autouse: one PyTorch thread)
from support.zoo_models import VOCAB, reference, tiny_model  # noqa: E402

PROMPTS = [9, 3, 6]


def step(adapter: CausalLMAdapter, tokens: torch.Tensor) -> list[int]:
    rows, width = tokens.shape
    mask = torch.ones((rows, width), dtype=torch.bool)
    return adapter.step(tokens, mask, np.arange(rows), [None] * rows).tolist()  # type: ignore[no-any-return]


def prefill(adapter: CausalLMAdapter, prompts: list[torch.Tensor]) -> list[list[int]]:
    got = []
    for slot, prompt in enumerate(prompts):
        mask = torch.ones((1, len(prompt)), dtype=torch.bool)
        got.append([int(adapter.step(prompt[None], mask, np.array([slot]), [None])[0])])
    return got


def decode(adapter: CausalLMAdapter, got: list[list[int]], steps: int) -> None:
    for _ in range(steps):
        tokens = step(adapter, torch.tensor([row[-1] for row in got])[:, None])
        for row, token in zip(got, tokens, strict=True):
            row.append(token)


@pytest.fixture(params=["llama", "mistral"])
def model(request: pytest.FixtureRequest) -> Any:
    return tiny_model(request.param)


def prompts() -> list[torch.Tensor]:
    rng = np.random.default_rng(3)
    return [torch.from_numpy(rng.integers(6, VOCAB, n)) for n in PROMPTS]


def test_rows_fed_several_tokens_between_decode_steps_get_generates_tokens(model: Any) -> None:
    adapter = CausalLMAdapter(model, slots=len(PROMPTS), max_length=40)
    starts = prompts()
    got = prefill(adapter, starts)
    decode(adapter, got, 4)
    fed = torch.tensor([[7, 8, 9]] * len(PROMPTS))
    fed[:, 0] = torch.tensor([row[-1] for row in got])  # the last token, then two of ours
    after = [[token] for token in step(adapter, fed)]  # the same rows: the same layout
    decode(adapter, after, 6)
    for start, row, more in zip(starts, got, after, strict=True):
        sequence = torch.cat([start, torch.tensor([*row, 8, 9])])
        assert more == reference(model, sequence, len(more), None)


def test_a_decode_step_that_raised_midway_is_retried_with_the_right_masks(model: Any) -> None:
    adapter = CausalLMAdapter(model, slots=len(PROMPTS), max_length=40)
    starts = prompts()
    got = prefill(adapter, starts)
    decode(adapter, got, 4)
    last_layer = model.model.layers[-1]

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    hook = last_layer.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        step(adapter, torch.tensor([row[-1] for row in got])[:, None])
    hook.remove()
    decode(adapter, got, 6)
    for start, row in zip(starts, got, strict=True):
        assert row == reference(model, start, len(row), None)


def test_a_decode_step_whose_sampling_raised_is_retried_from_its_own_positions(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forward ran and the lengths moved on, then sampling raised: all put back."""
    adapter = CausalLMAdapter(model, slots=len(PROMPTS), max_length=40)
    starts = prompts()
    got = prefill(adapter, starts)
    decode(adapter, got, 4)

    def boom(*args: Any) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(adapter._sampler, "pick", boom)
        with pytest.raises(RuntimeError, match="boom"):
            step(adapter, torch.tensor([row[-1] for row in got])[:, None])
    decode(adapter, got, 6)
    for start, row in zip(starts, got, strict=True):
        assert row == reference(model, start, len(row), None)


def test_decode_steps_past_the_columns_a_rebuild_built_get_generates_tokens(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild builds the masks' first columns only (here 16): rows that decode past
    them must get the masks built further, not stale columns."""
    from hibachi.integrations.transformers import _decode_masks

    monkeypatch.setattr(_decode_masks, "FIRST_COLUMNS", 16)
    adapter = CausalLMAdapter(model, slots=len(PROMPTS), max_length=64)
    starts = prompts()
    got = prefill(adapter, starts)
    decode(adapter, got, 30)  # from 9 tokens past 16, then past 32
    for prompt, row in zip(starts, got, strict=True):
        assert row == reference(model, prompt, 31, None)
