"""The ways of serving that the workloads compare: each gives the tokens ``generate()`` gives."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from hibachi._bench.methods import generate, streams
from hibachi._bench.methods.embed import Unavailable, load_sentence_transformer
from hibachi._bench.methods.outcome import trim
from hibachi._bench.models.llama import build_llama
from hibachi._bench.models.requests import make_requests
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
