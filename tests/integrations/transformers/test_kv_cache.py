"""The adapter's paged KV cache: a budget of blocks, preemption, prefixes reused, memory given back.

A tiny random-weight Llama in float64: whatever the budget, every request that
completes gets ``model.generate()``'s tokens on its prompt alone.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hibachi  # noqa: E402
from hibachi.integrations.transformers import CausalLMAdapter, causal_lm_batcher  # noqa: E402
from support.models import TIMEOUT, run_async  # noqa: E402
from support.tiny_lms import EOS, VOCAB, generate, tiny_llama  # noqa: E402
from support.torch_threads import one_torch_thread  # noqa: E402, F401 (autouse: one PyTorch thread)

TOKEN = 512  # the tiny Llama's keys and values per token: 2 layers x 2 x 2 heads x 8 x 8 bytes


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny_llama()


def paged(model: Any, blocks: int, **options: Any) -> hibachi.AutoregressiveBatcher:
    """A batcher whose cache holds ``blocks`` blocks of 4 tokens."""
    settings = {"max_batch_size": 4, "max_length": 64, "max_batch_tokens": 16, **options}
    return causal_lm_batcher(
        model, eos_token_id=EOS, block_size=4, kv_cache_bytes=blocks * 4 * TOKEN, **settings
    )


async def stream(batcher: hibachi.AutoregressiveBatcher, job: dict[str, Any]) -> list[int]:
    await asyncio.sleep(job.get("arrival", 0.0))  # arrival jitter, not synchronisation
    got: list[int] = []
    quit_after = job.get("quit_after")
    async for token in batcher.run(
        job["prompt"], max_new_tokens=job["max_new_tokens"], options=job.get("options")
    ):
        got.append(int(token))
        if len(got) == quit_after:
            break
    return got


def serve(batcher: hibachi.AutoregressiveBatcher, jobs: list[dict[str, Any]]) -> list[list[int]]:
    async def main() -> list[list[int]]:
        async with batcher:
            return await asyncio.gather(*(stream(batcher, job) for job in jobs))

    return run_async(main(), timeout=TIMEOUT * 3)


def check(model: Any, jobs: list[dict[str, Any]], results: list[list[int]]) -> None:
    for job, got in zip(jobs, results, strict=True):
        want = generate(model, job["prompt"], job["max_new_tokens"])
        assert got == (want[: len(got)] if job.get("quit_after") else want), job


def test_the_budget_is_counted_in_blocks_of_the_models_keys_and_values(llama: Any) -> None:
    adapter = CausalLMAdapter(llama, slots=2, max_length=64, kv_cache_bytes=10 * 16 * TOKEN)
    assert adapter.sizes.bytes_per_token == TOKEN and adapter.sizes.capacity == 10
    stats = adapter.memory_stats()
    assert (stats.blocks_used, stats.blocks_cached, stats.blocks_free) == (0, 0, 10)
    assert stats.bytes_per_block == 16 * TOKEN


def test_rows_take_blocks_as_they_grow_and_give_them_back(llama: Any) -> None:
    batcher = paged(llama, blocks=64, prefix_caching=False)
    prompt = torch.arange(10, 19)  # 9 tokens: 3 blocks, then 4 as it grows past 12

    async def main() -> tuple[hibachi.MemoryStats, hibachi.MemoryStats]:
        async with batcher:
            tokens = batcher.run(prompt, max_new_tokens=6)
            await tokens.__anext__()
            during = batcher.stats().memory
            assert during is not None
            await tokens.collect()
            after = batcher.stats().memory
            assert after is not None
            return during, after

    during, after = run_async(main())
    assert during.blocks_used == 3
    assert after.blocks_used == 0 and after.blocks_free == 64 and after.peak_blocks == 4


def test_a_budget_too_small_for_a_prompt_refuses_it_naming_both_numbers(llama: Any) -> None:
    with paged(llama, blocks=3) as batcher:
        with pytest.raises(hibachi.InvalidRequest, match=r"13 tokens, more than the 12"):
            batcher.run(torch.arange(10, 23))
        # a prompt that fits is served; its budget is what the cache holds after it
        got = [int(t) for t in batcher.run(torch.arange(10, 20), max_new_tokens=50)]
    assert got == generate(llama, torch.arange(10, 20), 3)


def test_a_budget_that_holds_no_block_is_refused(llama: Any) -> None:
    with pytest.raises(hibachi.ConfigurationError, match="holds no block"):
        causal_lm_batcher(llama, eos_token_id=EOS, max_length=16, kv_cache_bytes=100)
    with pytest.raises(hibachi.ConfigurationError, match="kv_cache_bytes"):
        causal_lm_batcher(llama, eos_token_id=EOS, max_length=16, kv_cache_bytes=1.5)  # type: ignore[arg-type]


def test_max_length_defaults_to_the_models_context(llama: Any) -> None:
    adapter = CausalLMAdapter(llama, slots=1)
    assert adapter.max_length == llama.config.max_position_embeddings == 256


def test_rows_beyond_the_budget_are_preempted_and_still_get_generates_tokens(
    llama: Any,
) -> None:
    rng = random.Random(5)
    jobs = [
        {
            "prompt": torch.tensor([rng.randrange(6, VOCAB) for _ in range(rng.randrange(1, 14))]),
            "max_new_tokens": rng.randrange(8, 24),
        }
        for _ in range(8)
    ]
    batcher = paged(llama, blocks=10)
    results = serve(batcher, jobs)
    check(llama, jobs, results)
    stats = batcher.stats()
    assert stats.requests_preempted > 0 and stats.requests_failed == 0
    assert stats.memory is not None and stats.memory.blocks_used == 0


def test_a_shared_prefix_is_computed_once(llama: Any) -> None:
    shared = torch.arange(20, 52)  # 32 tokens: 8 blocks
    jobs = [
        {"prompt": torch.cat([shared, torch.tensor([60 + i])]), "max_new_tokens": 4}
        for i in range(4)
    ]
    batcher = paged(llama, blocks=64)
    check(llama, jobs, serve(batcher, jobs))
    memory = batcher.stats().memory
    assert memory is not None
    assert memory.prefix_cache_queries == 4 * 33
    assert memory.prefix_cache_hits >= 2 * 32  # the first computes it; most after reuse it
    off = paged(llama, blocks=64, prefix_caching=False)
    check(llama, jobs, serve(off, jobs))
    assert off.stats().memory.prefix_cache_hits == 0  # type: ignore[union-attr]


def test_a_preempted_seeded_request_draws_what_it_would_have_drawn(llama: Any) -> None:
    prompt = torch.tensor([11, 12, 13, 14])
    sampled = {"temperature": 0.9, "top_k": 40, "seed": 1234}
    job = {"prompt": prompt, "max_new_tokens": 24, "options": sampled}
    [alone] = serve(paged(llama, blocks=64), [job])
    crowd = [{"prompt": torch.arange(30 + i, 38 + i), "max_new_tokens": 24} for i in range(3)]
    tight = paged(llama, blocks=12)
    results = serve(tight, [*crowd, {**job, "arrival": 0.02}])
    assert tight.stats().requests_preempted > 0
    assert results[-1] == alone
    check(llama, crowd, results[:-1])


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"temperature": 0.9, "top_k": 40, "seed": 7}, id="seeded"),
        pytest.param({"repetition_penalty": 1.5, "presence_penalty": 0.5}, id="penalties"),
    ],
)
def test_a_request_whose_prefix_is_cached_gets_what_it_gets_without(
    llama: Any, options: dict[str, Any]
) -> None:
    """The cached prefix is never fed, yet it counts: draws keyed by position, penalties
    over the prompt, and no token 0 for a row whose prompt seemed not all in."""
    shared = torch.arange(40, 56)  # four whole blocks
    job = {"prompt": torch.cat([shared, torch.tensor([9, 8])]), "max_new_tokens": 12}
    job["options"] = options
    [alone] = serve(paged(llama, blocks=64, prefix_caching=False), [job])
    warm = {"prompt": torch.cat([shared, torch.tensor([7])]), "max_new_tokens": 2}
    batcher = paged(llama, blocks=64, max_batch_size=1)
    _, cached = serve(batcher, [warm, {**job, "arrival": 0.05}])
    stats = batcher.stats().memory
    assert stats is not None and stats.prefix_cache_hits >= 16
    assert cached == alone


def test_a_freed_lane_gives_its_memory_back(llama: Any) -> None:
    adapter = CausalLMAdapter(
        llama, slots=1, max_length=256, kv_cache_bytes=1 << 20, prefix_caching=False
    )
    prompt = torch.arange(200) % (VOCAB - 6) + 6
    assert adapter.admit(0, prompt, None, 0) == 0
    ones = torch.ones((1, 200), dtype=torch.bool)
    adapter.step(prompt[None], ones, torch.tensor([0]).numpy(), [None])
    keys = adapter._cache.layers[0].keys
    assert keys[0].abs().sum() > 0
    adapter.release(0)
    assert keys[0].abs().sum() == 0  # its pages went back to the system: they read zeros


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10**6),
    blocks=st.integers(8, 24),
    prefix_caching=st.booleans(),
    chunk=st.integers(4, 24),
)
def test_every_completed_request_equals_generate_whatever_the_budget(
    llama: Any, seed: int, blocks: int, prefix_caching: bool, chunk: int
) -> None:
    """Budgets of 8-24 blocks of 4 tokens for 4 rows of up to 32 tokens, shared prefixes,
    cancellations: rows wait, are preempted, reuse prefixes; tokens stay generate()'s."""
    rng = random.Random(seed)
    shared = [rng.randrange(6, VOCAB) for _ in range(8)]
    jobs = []
    for i in range(8):
        tail = [rng.randrange(6, VOCAB) for _ in range(rng.randrange(1, 9))]
        head = shared[: rng.choice([0, 4, 8])]
        jobs.append(
            {
                "prompt": torch.tensor(head + tail),
                "max_new_tokens": rng.randrange(1, 16),
                "arrival": rng.random() * 0.02,
                "quit_after": 2 if i == 3 else None,
            }
        )
    batcher = paged(llama, blocks, prefix_caching=prefix_caching, max_batch_tokens=chunk)
    check(llama, jobs, serve(batcher, jobs))
    stats = batcher.stats()
    assert stats.requests_failed == 0
    assert stats.memory is not None and stats.memory.blocks_used == 0


def test_the_kv_cache_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).parents[3] / "docs" / "kv-cache.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(example, "docs/kv-cache.md", "exec"), {})
    assert capsys.readouterr().out.split("\n")[:2] == ["[8, 8, 8, 8]", "192 0"]
