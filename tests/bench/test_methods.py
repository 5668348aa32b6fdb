"""The ways of serving that the workloads compare: each gives the tokens ``generate()`` gives."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from typing import Any

import pytest

from hibachi import AutoregressiveStats, MemoryStats
from hibachi._bench.methods import generate, streams
from hibachi._bench.methods.embed import Unavailable, load_sentence_transformer
from hibachi._bench.methods.outcome import Outcome, trim
from hibachi._bench.models.chat import QUESTIONS, chat_requests, questions
from hibachi._bench.models.language import generation_model
from hibachi._bench.models.llama import build_llama
from hibachi._bench.models.requests import LlmRequest, make_requests
from hibachi._bench.settings import preset

TINY = preset("tiny")


def test_trim_stops_at_the_budget_and_at_the_first_eos() -> None:
    assert trim([5, 6, 7, 8], 3, eos=9) == [5, 6, 7]
    assert trim([5, 9, 7, 9], 4, eos=9) == [5, 9]
    assert trim([5, 6, 9], 2, eos=9) == [5, 6]


@pytest.fixture(scope="module")
def llama() -> object:
    pytest.importorskip("transformers")
    size = replace(TINY.generation, vocab=512, hidden=64)
    return build_llama(size, "cpu", seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["stateless fallback", "transformers adapter"])
def test_hibachi_gets_the_same_greedy_tokens_as_generate(
    llama: object, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "stateless fallback":
        monkeypatch.setitem(sys.modules, "hibachi.integrations.transformers", None)
        assert streams.hibachi_label() == "hibachi (stateless)"
    else:
        pytest.importorskip("hibachi.integrations.transformers")
        assert streams.hibachi_label() == "hibachi (KV cache)"
    # Mixed lengths and budgets, more clients than rows: left padding and row reuse both happen.
    requests = make_requests(7, (1, 12), (1, 9), vocab=512, seed=3)
    alone = generate.one_at_a_time(llama, requests, "cpu")
    batched = streams.with_hibachi(llama, requests, batch_size=3, device="cpu")
    assert batched.tokens == alone.tokens
    assert [len(t) for t in alone.tokens] != [1] * 7
    if path == "transformers adapter":
        assert 0 < (batched.outside_model or 0) < 1 and 0 < (batched.outside_step or 0) < 1


@pytest.mark.slow
def test_static_batches_and_transformers_agree_with_generate(llama: object) -> None:
    requests = make_requests(5, (1, 10), (1, 6), vocab=512, seed=4)
    alone = generate.one_at_a_time(llama, requests, "cpu")
    assert generate.static_batches(llama, requests, 2, "cpu").tokens == alone.tokens
    assert generate.continuous_batching(llama, requests, 2).tokens == alone.tokens


def test_missing_sentence_transformers_names_the_bench_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(Unavailable, match=r"pip install 'hibachi-batch\[bench\]'"):
        load_sentence_transformer("cpu")


def test_time_per_output_token_is_per_request_after_its_first() -> None:
    outcome = Outcome([[1, 2, 3], [4], [5, 6]], [0.5, 0.2, 1.0], 3.0, last_token=[1.5, 0.2, 1.1])
    per_token = outcome.per_output_token()
    assert per_token[0] == pytest.approx(0.5) and per_token[2] == pytest.approx(0.1)
    assert math.isnan(per_token[1])  # one token: no time between tokens
    assert all(math.isnan(t) for t in Outcome([[1, 2]], [0.1], 1.0).per_output_token())


class Template:
    """A tokenizer's chat template in miniature: one id per word, a marker before the answer."""

    def apply_chat_template(self, messages: list[dict[str, str]], **options: object) -> Any:
        assert options == {"add_generation_prompt": True, "tokenize": True}
        (message,) = messages
        return {"input_ids": [len(w) for w in message["content"].split()] + [0]}


def test_chat_requests_render_shuffled_questions_through_the_template() -> None:
    requests = chat_requests(Template(), 60, (4, 9), seed=3)
    assert len(requests) == 60 > len(QUESTIONS)  # cycled once every question is asked
    assert all(r.prompt[-1] == 0 and 4 <= r.budget <= 9 for r in requests)
    asked = questions(60, seed=3)
    assert set(asked) == set(QUESTIONS) and asked[: len(QUESTIONS)] != list(QUESTIONS)
    assert requests == chat_requests(Template(), 60, (4, 9), seed=3)  # seeded


@pytest.mark.slow
def test_the_real_model_streams_generates_tokens_through_every_method() -> None:
    size = replace(preset("quick").generation, budgets=(2, 6))
    try:
        served = generation_model(size, "cpu", seed=0)
    except OSError as exc:
        pytest.skip(f"no model: {exc}")
    if served.tokenizer is None:
        pytest.skip(served.note)
    assert served.name == "SmolLM2-135M-Instruct" and generation_model(size, "cpu", 0) is served
    requests = served.requests(5, (1, 1), (2, 6), seed=1)
    alone = generate.one_at_a_time(served.model, requests, "cpu")
    for method in (
        lambda: streams.with_hibachi(served.model, requests, batch_size=2, device="cpu"),
        lambda: generate.static_batches(served.model, requests, 2, "cpu"),
        lambda: generate.continuous_batching(served.model, requests, 2),
    ):
        outcome = method()
        assert outcome.tokens == alone.tokens
        assert outcome.last_token is not None and len(outcome.last_token) == 5


def test_hibachis_outcome_carries_its_rows_at_once_peak_kv_bytes_and_prefix_hits() -> None:
    memory = MemoryStats(
        blocks_used=0,
        blocks_cached=3,
        blocks_free=5,
        bytes_per_block=4096,
        peak_blocks=6,
        prefix_cache_queries=40,
        prefix_cache_hits=10,
    )
    stats = AutoregressiveStats(*[0] * 7, 0.0, 0.0, 0, 0, peak_requests_in_flight=4)
    outcome = streams.with_memory(Outcome([[1]], [0.1], 1.0), replace(stats, memory=memory))
    assert (outcome.rows_at_once, outcome.peak_kv_bytes) == (4, 6 * 4096)
    assert outcome.prefix_hit_rate == 0.25
    plain = streams.with_memory(Outcome([[1]], [0.1], 1.0), stats)  # a model with no memory
    assert (plain.rows_at_once, plain.peak_kv_bytes, plain.prefix_hit_rate) == (4, None, None)


def test_the_timed_adapter_pages_and_caches_prefixes_as_causal_lm_batcher_does(
    llama: object,
) -> None:
    """The bench's timing wrapper passes admission through: a prefix shared by every prompt
    is found in the cache, and turning caching off changes no token."""
    pytest.importorskip("hibachi.integrations.transformers")
    shared = list(range(3, 35))  # two blocks of 16
    requests = [LlmRequest([*shared, 40 + i], 4) for i in range(6)]
    on = streams.with_hibachi(llama, requests, batch_size=2, device="cpu")
    off = streams.with_hibachi(llama, requests, batch_size=2, device="cpu", prefix_caching=False)
    assert on.tokens == off.tokens
    assert on.rows_at_once == off.rows_at_once == 2
    assert on.prefix_hit_rate is not None and on.prefix_hit_rate > 0.5
    assert off.prefix_hit_rate == 0.0
    assert on.peak_kv_bytes is not None and off.peak_kv_bytes is not None
    assert on.peak_kv_bytes > 0 and off.peak_kv_bytes > 0
    assert streams.hibachi_label(prefix_caching=False) == "hibachi (KV cache, no prefix caching)"
