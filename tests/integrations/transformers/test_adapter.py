"""`hibachi.integrations.transformers`: causal LMs with a per-slot KV cache.

Tiny random-weight GPT-2 and Llama models in float64: greedy tokens must equal
``model.generate()`` on each prompt alone, exactly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hibachi  # noqa: E402
from hibachi.integrations.transformers import (  # noqa: E402
    CausalLMAdapter,
    Sampling,
    causal_lm_batcher,
)
from support.models import TIMEOUT, run_async  # noqa: E402
from support.tiny_lms import EOS, VOCAB, generate, tiny_gpt2, tiny_llama  # noqa: E402
from support.torch_threads import one_torch_thread  # noqa: E402, F401 (autouse: one PyTorch thread)

MODELS = [pytest.param(tiny_gpt2, id="gpt2"), pytest.param(tiny_llama, id="llama")]


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny_llama()


async def stream(
    batcher: hibachi.AutoregressiveBatcher,
    prompt: Any,
    *,
    arrival: float = 0.0,
    quit_after: int | None = None,
    **options: Any,
) -> list[int]:
    await asyncio.sleep(arrival)  # arrival jitter, not synchronisation
    got: list[int] = []
    async for token in batcher.run(prompt, **options):
        got.append(int(token))
        if len(got) == quit_after:
            break
    return got


def serve(batcher: hibachi.AutoregressiveBatcher, jobs: list[dict[str, Any]]) -> list[list[int]]:
    async def main() -> list[list[int]]:
        async with batcher:
            clients = (stream(batcher, **job) for job in jobs)
            return await asyncio.wait_for(asyncio.gather(*clients), TIMEOUT * 3)

    return run_async(main())


@pytest.mark.parametrize("build", MODELS)
def test_greedy_tokens_equal_generate_on_each_prompt_alone(build: Callable[[], Any]) -> None:
    model = build()
    rng = random.Random(7)
    jobs = []
    for i in range(12):
        prompt = torch.tensor([rng.randrange(6, VOCAB) for _ in range(rng.randrange(1, 40))])
        jobs.append(
            {
                "prompt": prompt,
                "max_new_tokens": rng.randrange(1, 20),
                "arrival": rng.random() * 0.05,
                "quit_after": 3 if i % 4 == 1 else None,
            }
        )
    batcher = causal_lm_batcher(
        model, max_batch_size=3, max_length=64, eos_token_id=EOS, max_batch_tokens=16
    )
    results = serve(batcher, jobs)
    for job, got in zip(jobs, results, strict=True):
        want = generate(model, job["prompt"], job["max_new_tokens"])
        assert got == (want[: len(got)] if job["quit_after"] else want)
    stats = batcher.stats()
    assert stats.requests_admitted == 12 and stats.requests_failed == 0


def test_tokens_are_torch_scalars_of_token_ids(llama: Any) -> None:
    with causal_lm_batcher(llama, max_batch_size=2, max_length=32, eos_token_id=EOS) as b:
        tokens = list(b.run(torch.tensor([7, 8, 9]), max_new_tokens=4))
    assert all(isinstance(t, torch.Tensor) and t.shape == () for t in tokens)
    assert all(t.dtype == torch.long for t in tokens)


SAMPLED = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 1234}


def test_a_seeded_request_gets_the_same_tokens_alone_and_in_a_full_batch(llama: Any) -> None:
    prompt = torch.tensor([11, 12, 13, 14])

    def batcher() -> hibachi.AutoregressiveBatcher:
        return causal_lm_batcher(llama, max_batch_size=4, max_length=64, eos_token_id=EOS)

    job = {"prompt": prompt, "max_new_tokens": 20, "options": SAMPLED}
    [alone] = serve(batcher(), [job])
    others = [
        {"prompt": torch.tensor([20 + i] * (3 + 5 * i)), "max_new_tokens": 20, "options": o}
        for i, o in enumerate([None, {"temperature": 1.5}, {**SAMPLED, "seed": 99}])
    ]
    crowded = serve(batcher(), [others[0], job, *others[1:]])
    assert crowded[1] == alone
    assert crowded[3] != alone  # another seed
    assert alone != generate(llama, prompt, 20)  # it did sample


@pytest.mark.parametrize(
    "narrow", [{"top_k": 1}, {"top_p": 1e-9}], ids=["top-k-of-one", "tiny-top-p"]
)
def test_sampling_from_the_top_token_alone_is_greedy(llama: Any, narrow: dict[str, Any]) -> None:
    prompt = torch.tensor([30, 31, 32])
    job = {"prompt": prompt, "max_new_tokens": 10, "options": {"temperature": 2.0, **narrow}}
    batcher = causal_lm_batcher(llama, max_batch_size=2, max_length=32, eos_token_id=EOS)
    assert serve(batcher, [job]) == [generate(llama, prompt, 10)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"temperature": -1}, "temperature", id="negative-temperature"),
        pytest.param({"top_p": 0.0}, "top_p", id="top-p-zero"),
        pytest.param({"top_k": 1.5}, "top_k", id="top-k-float"),
        pytest.param({"seed": "x"}, "seed", id="seed-str"),
        pytest.param({"beam": 2}, "unknown", id="unknown-key"),
        pytest.param(0.7, "mapping", id="not-a-mapping"),
    ],
)
def test_bad_options_are_refused_at_run(llama: Any, options: Any, message: str) -> None:
    with causal_lm_batcher(llama, max_batch_size=1, max_length=16, eos_token_id=EOS) as b:
        with pytest.raises(hibachi.InvalidRequest, match=message):
            b.run(torch.tensor([7]), options=options)
        assert b.stats().queue_depth == 0


def test_sampling_options_parse() -> None:
    assert Sampling.parse(None).greedy
    assert Sampling.parse({"temperature": 0.5, "seed": 3}) == Sampling(temperature=0.5, seed=3)


def test_a_prompt_longer_than_max_length_is_refused(llama: Any) -> None:
    with causal_lm_batcher(llama, max_batch_size=1, max_length=8, eos_token_id=EOS) as b:
        with pytest.raises(hibachi.InvalidRequest, match="max_length=8"):
            b.run(torch.arange(10, 19))
        assert len(list(b.run(torch.arange(10, 18), max_new_tokens=1))) == 1


def test_a_sequence_ends_when_it_fills_max_length(llama: Any) -> None:
    prompt = torch.arange(10, 16)
    want = generate(llama, prompt, 3)
    assert EOS not in want
    with causal_lm_batcher(llama, max_batch_size=1, max_length=8, eos_token_id=EOS) as b:
        assert [int(t) for t in b.run(prompt, max_new_tokens=50)] == want


def test_the_cache_is_allocated_once_and_reused(llama: Any) -> None:
    adapter = CausalLMAdapter(llama, slots=2, max_length=48)
    batcher = hibachi.AutoregressiveBatcher(
        adapter, stop_token=torch.tensor(EOS), pad_value=torch.tensor(0), max_batch_size=2
    )
    rng = random.Random(3)
    jobs = [
        {
            "prompt": torch.tensor([rng.randrange(6, VOCAB)] * rng.randrange(1, 30)),
            "max_new_tokens": 8,
        }
        for _ in range(16)
    ]
    with batcher:
        list(batcher.run(torch.tensor([7, 8]), max_new_tokens=2))
        pointers = [layer.keys.data_ptr() for layer in adapter._cache.layers]
    results = serve(
        hibachi.AutoregressiveBatcher(
            adapter, stop_token=torch.tensor(EOS), pad_value=torch.tensor(0), max_batch_size=2
        ),
        jobs,
    )
    assert [layer.keys.data_ptr() for layer in adapter._cache.layers] == pointers
    assert adapter._planner.rows.count == 0 and not adapter._planner.lengths.any()
    for job, got in zip(jobs, results, strict=True):
        assert got == generate(llama, job["prompt"], job["max_new_tokens"])


def test_a_model_in_training_mode_is_refused() -> None:
    model = tiny_llama().train()
    with pytest.raises(hibachi.ConfigurationError, match="eval"):
        causal_lm_batcher(model, eos_token_id=EOS, max_length=16)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"max_length": 1000}, "positions", id="beyond-positions"),
        pytest.param({"max_length": 0}, "max_length", id="zero-length"),
        pytest.param({"eos_token_id": "x"}, "eos_token_id", id="eos-not-int"),
        pytest.param({"pad_token_id": -1}, "pad_token_id", id="negative-pad"),
    ],
)
def test_bad_settings_are_refused(llama: Any, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(hibachi.ConfigurationError, match=message):
        causal_lm_batcher(llama, **{"eos_token_id": EOS, "max_length": 16, **settings})


def test_the_generation_bench_times_each_step(llama: Any) -> None:
    from hibachi._bench.methods.streams import kv_cache_run
    from hibachi._bench.models.requests import make_requests

    requests = make_requests(4, (1, 12), (1, 6), VOCAB, seed=0)
    outcome, share = kv_cache_run(llama, requests, batch_size=2, eos=EOS, prefill_chunk=8)
    for request, got in zip(requests, outcome.tokens, strict=True):
        assert got == generate(llama, torch.tensor(request.prompt), request.budget)
    assert share.steps >= max(r.budget for r in requests)
    assert 0 < share.model_seconds < share.busy_seconds and 0 < share.outside < 1
