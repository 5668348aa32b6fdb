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

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hibachi  # noqa: E402
from _models import TIMEOUT, run_async  # noqa: E402
from _zoo_models import EOS, VOCAB, WINDOW, reference, tiny_model  # noqa: E402
from hibachi.integrations.transformers import causal_lm_batcher  # noqa: E402

F32 = {"dtype": torch.float32}  # expert kernels (grouped_mm) without a float64 version
HYBRID = {"layer_types": ["sliding_attention", "full_attention"]}


def served(model_type: str, id: str | None = None, **settings: Any) -> Any:
    return pytest.param(model_type, settings, id=id or model_type)


SERVED = [
    # full attention: learned, rotary and partial-rotary positions
    served("gpt2"),
    served("llama"),
    served("qwen3"),
    served("gemma"),
    served("phi"),
    served("gpt_neox"),
    served("opt"),
    served("gpt_bigcode"),
    served("stablelm"),
    served("olmo2"),
    served("granite"),
    served("cohere"),
    # sliding windows (8 tokens), on every layer or alternating with full attention
    served("mistral"),
    served("starcoder2"),
    served("phi3"),
    served("qwen2", id="qwen2-sliding", use_sliding_window=True, max_window_layers=1),
    served("gemma2"),
    served("gemma3_text", **HYBRID),
    served("cohere2", **HYBRID),
    # ALiBi
    served("bloom"),
    served("mpt"),
    served("falcon", id="falcon-alibi", alibi=True),
    served("falcon", id="falcon-rotary"),
    # mixture of experts, in float32
    served("mixtral", **F32),
    served("qwen2_moe", **F32),
    served("qwen3_moe", **F32),
    served("olmoe", **F32),
    # recurrent state: Mamba, Mamba 2, and Jamba's Mamba layers beside attention (and experts)
    served("mamba"),
    served("mamba2", num_heads=8, head_dim=8, n_groups=1),
    served("falcon_mamba"),
    served("jamba", attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, **F32),
]


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
    refused("qwen3_next", "not been checked"),
    refused("llama", "attn_implementation", id="llama-flex", attn_implementation="flex_attention"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models gain nothing from two threads, and lose much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        model, max_batch_size=3, max_length=40, eos_token_id=eos, prefill_chunk=12
    )
    results = serve(batcher, jobs)
    for job, got in zip(jobs, results, strict=True):
        want = reference(model, job["prompt"], job["max_new_tokens"], eos)
        assert got == (want[: len(got)] if job["quit_after"] else want), job["prompt"].shape
    assert batcher.stats().requests_failed == 0


@pytest.mark.parametrize(("model_type", "settings", "reason"), REFUSED)
def test_refused_architectures_are_refused_when_built(
    model_type: str, settings: dict[str, Any], reason: str
) -> None:
    model = tiny_model(model_type, **settings)
    with pytest.raises(hibachi.ConfigurationError, match=reason):
        causal_lm_batcher(model, max_batch_size=2, max_length=32, eos_token_id=EOS)
