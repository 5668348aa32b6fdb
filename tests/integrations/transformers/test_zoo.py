"""A zoo of transformers causal LMs through `causal_lm_batcher`: exact tokens, or refused at once.

Each served architecture (tiny random weights, float64 unless its kernels
want float32) gets more requests than slots, mixed prompt lengths (many
longer than the sliding window of 8), random arrivals and a few cancellations,
and every finished request must equal ``model.generate()`` on its prompt alone,
token for token. Each refused architecture must be refused when the batcher is
built, with a `ConfigurationError` that says why.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hibachi  # noqa: E402
from hibachi.integrations.transformers import CausalLMAdapter, causal_lm_batcher  # noqa: E402
from support.models import TIMEOUT, run_async  # noqa: E402
from support.torch_threads import one_torch_thread  # noqa: E402, F401 (autouse: one PyTorch thread)
from support.zoo_models import (  # noqa: E402
    EOS,
    F32,
    OVERRIDES,
    SERVED,
    VOCAB,
    WINDOW,
    reference,
    served,
    tiny_model,
)

pytestmark = pytest.mark.slow


def refused(model_type: str, reason: str, id: str | None = None, **settings: Any) -> Any:
    return pytest.param(model_type, settings, reason, id=id or model_type)


REFUSED = [
    refused(
        "gpt_neo",
        "window_size=8",
        id="gpt_neo-local-window",
        num_layers=2,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
    ),
    refused("llama4_text", "chunked_attention"),
    refused("bart", "encoder-decoder family"),
    refused("bert", "encoder"),
    refused("rwkv", "RWKV"),
    refused("falcon_h1", "hybrid"),
    refused("recurrent_gemma", "not been checked"),
    refused("minimax", "not been checked"),
    refused("llama", "attn_implementation", id="llama-flex", attn_implementation="flex_attention"),
]


def workload(seed: int) -> list[dict[str, Any]]:
    """Eight requests: prompts of 1 … 20 tokens, budgets up to 12, random arrivals, 2 cancelled."""
    rng = random.Random(seed)
    jobs = []
    for i in range(8):
        length = rng.choice([1, 2, rng.randrange(3, WINDOW), rng.randrange(WINDOW, 21)])
        jobs.append(
            {
                "prompt": torch.tensor([rng.randrange(6, VOCAB) for _ in range(length)]),
                "max_new_tokens": rng.randrange(1, 13),
                "arrival": rng.random() * 0.02,
                "quit_after": 2 if i in (2, 5) else None,
            }
        )
    return jobs


async def stream(
    batcher: hibachi.AutoregressiveBatcher,
    prompt: Any,
    max_new_tokens: int,
    arrival: float,
    quit_after: int | None,
) -> list[int]:
    await asyncio.sleep(arrival)  # arrival jitter, not synchronisation
    got: list[int] = []
    async for token in batcher.run(prompt, max_new_tokens=max_new_tokens):
        got.append(int(token))
        if len(got) == quit_after:
            break
    return got


def serve(batcher: hibachi.AutoregressiveBatcher, jobs: list[dict[str, Any]]) -> list[list[int]]:
    async def main() -> list[list[int]]:
        async with batcher:
            clients = (stream(batcher, **job) for job in jobs)
            return await asyncio.wait_for(asyncio.gather(*clients), TIMEOUT * 3)

    return run_async(main(), timeout=TIMEOUT * 4)


@pytest.mark.parametrize(("model_type", "settings"), SERVED)
def test_served_architectures_give_generates_tokens(
    model_type: str, settings: dict[str, Any]
) -> None:
    model = tiny_model(model_type, **settings)
    assert model.config.num_hidden_layers == 2
    eos = None if len(model_type) % 2 else EOS  # both ends: by budget alone, and by a stop token
    jobs = workload(seed=len(model_type))
    batcher = causal_lm_batcher(
        model, max_batch_size=3, max_length=40, eos_token_id=eos, max_batch_tokens=12
    )
    results = serve(batcher, jobs)
    for job, got in zip(jobs, results, strict=True):
        want = reference(model, job["prompt"], job["max_new_tokens"], eos)
        assert got == (want[: len(got)] if job["quit_after"] else want), job["prompt"].shape
    assert batcher.stats().requests_failed == 0


@pytest.mark.parametrize(("model_type", "settings"), SERVED)
def test_served_architectures_give_generates_tokens_in_a_tight_budget(
    model_type: str, settings: dict[str, Any]
) -> None:
    """Eight blocks of 4 tokens for rows that grow to 23 tokens (6 blocks) each: requests
    wait for memory, rows are preempted and recomputed, prompts share a prefix the cache
    reuses, one request is cancelled."""
    model = tiny_model(model_type, **settings)
    eos = None if len(model_type) % 2 else EOS
    rng = random.Random(len(model_type))
    shared = [rng.randrange(6, VOCAB) for _ in range(8)]
    jobs = [
        {
            "prompt": torch.tensor(shared[: 8 * (i % 2)] + [rng.randrange(6, VOCAB)] * 4),
            "max_new_tokens": 12,
            "arrival": 0.0,
            "quit_after": 3 if i == 4 else None,
        }
        for i in range(6)
    ]
    per_token = CausalLMAdapter(model, slots=1, max_length=40).sizes.bytes_per_token
    batcher = causal_lm_batcher(
        model,
        max_batch_size=3,
        max_length=40,
        eos_token_id=eos,
        max_batch_tokens=12,
        block_size=4,
        kv_cache_bytes=max(1, 8 * 4 * per_token),
    )
    results = serve(batcher, jobs)
    for job, got in zip(jobs, results, strict=True):
        want = reference(model, job["prompt"], job["max_new_tokens"], eos)
        assert got == (want[: len(got)] if job["quit_after"] else want), job["prompt"].shape
    stats = batcher.stats()
    assert stats.requests_failed == 0
    assert per_token == 0 or stats.requests_preempted > 0


@pytest.mark.parametrize(("model_type", "settings", "reason"), REFUSED)
def test_refused_architectures_are_refused_when_built(
    model_type: str, settings: dict[str, Any], reason: str
) -> None:
    model = tiny_model(model_type, **settings)
    with pytest.raises(hibachi.ConfigurationError, match=reason):
        causal_lm_batcher(model, max_batch_size=2, max_length=32, eos_token_id=EOS)


@pytest.fixture(scope="module")
def mistral() -> Any:
    return tiny_model("mistral")


@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 3 * WINDOW), min_size=3, max_size=5),
    budgets=st.lists(st.integers(1, 2 * WINDOW), min_size=5, max_size=5),
    chunk=st.integers(1, 24),
)
def test_sliding_window_rows_equal_generate_alone(
    mistral: Any, lengths: list[int], budgets: list[int], chunk: int
) -> None:
    """Prompts up to three windows long, any prefill chunk: each row sees only its own window."""
    jobs = [
        {
            "prompt": torch.arange(length) % (VOCAB - 6) + 6,
            "max_new_tokens": budget,
            "arrival": 0.0,
            "quit_after": None,
        }
        for length, budget in zip(lengths, budgets, strict=False)
    ]
    batcher = causal_lm_batcher(
        mistral, max_batch_size=2, max_length=64, eos_token_id=None, max_batch_tokens=chunk
    )
    results = serve(batcher, jobs)
    for job, got in zip(jobs, results, strict=True):
        assert got == reference(mistral, job["prompt"], job["max_new_tokens"], None)


def test_recurrent_state_is_allocated_once_and_zeroed_on_release() -> None:
    adapter = CausalLMAdapter(tiny_model("mamba"), slots=2, max_length=32)
    slots = np.array([0, 1])
    tokens, mask = torch.tensor([[0, 7, 8], [9, 10, 11]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    adapter.step(tokens, mask.bool(), slots, [None, None])
    states = adapter._states
    kept = [*states._conv.values(), *states._recurrent.values()]
    storage = {t.data_ptr() for t in kept}
    assert len(storage) == len(kept) == 4 and all(t.shape[0] == 2 for t in kept)  # 2 layers
    adapter.step(torch.tensor([[12], [13]]), torch.ones(2, 1, dtype=torch.bool), slots, [None] * 2)
    adapter.release(0)
    for tensor in (*states._conv.values(), *states._recurrent.values()):
        assert tensor.data_ptr() in storage
        assert not tensor[0].any() and tensor[1].any()


def test_eos_none_ends_requests_by_their_budget_alone(mistral: Any) -> None:
    prompt = torch.tensor([7, 8, 9])
    want = reference(mistral, prompt, 20, None)
    job = {"prompt": prompt, "max_new_tokens": 20, "arrival": 0.0, "quit_after": None}

    def tokens(eos: int | None) -> list[int]:
        batcher = causal_lm_batcher(mistral, max_batch_size=1, max_length=32, eos_token_id=eos)
        return serve(batcher, [job])[0]

    assert tokens(None) == want
    assert tokens(want[2]) == want[: want.index(want[2]) + 1]  # a stop token would end it early


@pytest.mark.parametrize(("model_type", "settings"), [served("mamba"), served("jamba", **F32)])
def test_a_step_that_raised_midway_changes_no_recurrent_state(
    model_type: str, settings: dict[str, Any]
) -> None:
    """Two forward passes raise after the first layer ran (the second midway through a step
    of one pass per column): the batcher retries the step on its rows, which must then get
    exactly the tokens they would have got."""
    settings = {**OVERRIDES.get(model_type, {}), **settings}
    model = tiny_model(model_type, **settings)
    jobs = workload(seed=3)
    wants = [reference(model, job["prompt"], job["max_new_tokens"], None) for job in jobs]
    calls = iter(range(10**6))

    def fault(module: Any, args: Any) -> None:
        if next(calls) in (5, 40):
            raise ConnectionError("a transient fault")

    layers = model.base_model.layers
    handle = layers[1].register_forward_pre_hook(fault)
    try:
        batcher = causal_lm_batcher(
            model, max_batch_size=3, max_length=40, eos_token_id=None, max_batch_tokens=12
        )
        results = serve(batcher, jobs)
    finally:
        handle.remove()
    for job, got, want in zip(jobs, results, wants, strict=True):
        assert got == (want[: len(got)] if job["quit_after"] else want)
    assert next(calls) > 40  # it did raise, twice


def test_a_step_of_several_passes_that_raised_leaves_lengths_and_states_as_they_were() -> None:
    """A continuing prompt chunk runs one pass per column; the third raises. The rows'
    lengths and recurrent states must be as before the step, so a retry gives the same."""
    model = tiny_model("mamba")
    slots, options = np.array([0, 1]), [None, None]
    first = (torch.tensor([[0, 7, 8], [9, 10, 11]]), torch.tensor([[0, 1, 1], [1, 1, 1]]).bool())
    then = (torch.tensor([[12, 13, 14], [15, 16, 17]]), torch.ones(2, 3, dtype=torch.bool))
    clean = CausalLMAdapter(model, slots=2, max_length=32)
    clean.step(*first, slots, options)
    want = clean.step(*then, slots, options)

    adapter = CausalLMAdapter(model, slots=2, max_length=32)
    adapter.step(*first, slots, options)
    before = [
        t.clone() for t in (*adapter._states._conv.values(), *adapter._states._recurrent.values())
    ]
    passes = iter(range(100))

    def fault(module: Any, args: Any) -> None:
        if next(passes) == 2:
            raise ConnectionError("a transient fault")

    handle = model.base_model.layers[1].register_forward_pre_hook(fault)
    with pytest.raises(ConnectionError):
        adapter.step(*then, slots, options)
    handle.remove()
    after = [*adapter._states._conv.values(), *adapter._states._recurrent.values()]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert adapter._planner.lengths.tolist() == [2, 3]
    assert torch.equal(adapter.step(*then, slots, options), want)
