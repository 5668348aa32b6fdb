"""`causal_lm_batcher` takes the batcher's settings as typed keywords, with its defaults."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hibachi  # noqa: E402
from hibachi.integrations.transformers import causal_lm_batcher  # noqa: E402
from support.tiny_lms import EOS, tiny_llama  # noqa: E402

MADE_HERE = {"model", "stop_token", "pad_value", "backend"}  # from the model and its ids
OLD = {"padding_token", "prefill_chunk", "overlap"}


def parameters(function: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def test_every_batcher_setting_is_a_keyword_with_the_batcher_s_default() -> None:
    own, batcher = parameters(causal_lm_batcher), parameters(hibachi.AutoregressiveBatcher)
    assert not any(p.kind is p.VAR_KEYWORD for p in own.values())
    passed_on = set(batcher) - MADE_HERE - OLD
    assert passed_on <= set(own)
    assert {name: own[name].default for name in passed_on} == {
        name: batcher[name].default for name in passed_on
    }


def test_an_unknown_keyword_is_python_s_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'padding_token'"):
        causal_lm_batcher(tiny_llama(), eos_token_id=EOS, padding_token=0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [("prefill_chunk", "max_batch_tokens", 24), ("overlap", "delivery_thread", True)],
)
def test_an_old_keyword_warns_and_is_passed_on(old: str, new: str, value: Any) -> None:
    with pytest.warns(
        DeprecationWarning, match=rf"causal_lm_batcher\({old}=…\) .* use {new}="
    ) as seen:
        batcher = causal_lm_batcher(tiny_llama(), max_length=64, eos_token_id=EOS, **{old: value})
    assert seen[0].filename == __file__
    assert getattr(batcher._settings, new) == value


def test_the_settings_reach_the_batcher() -> None:
    batcher = causal_lm_batcher(
        tiny_llama(),
        max_length=64,
        eos_token_id=EOS,
        max_queue_size=3,
        max_new_tokens=5,
        max_prompt_length=7,
        max_unread_tokens=11,
        max_batch_tokens=13,
    )
    s = batcher._settings
    assert (s.max_queue_size, s.max_new_tokens, s.max_prompt_length) == (3, 5, 7)
    assert (s.max_unread_tokens, s.max_batch_tokens, s.delivery_thread) == (11, 13, False)
