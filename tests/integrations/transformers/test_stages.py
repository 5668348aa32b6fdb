"""``causal_lm_batcher(model, stages=K)``: a decoder's layers split into stages, exact or refused.

Tiny random-weight models (float64) with four layers, more requests than
slots, mixed prompt lengths (longer than the sliding window and the prefill
chunk), random arrivals and a few cancellations: every finished request must
equal ``model.generate()`` on its prompt alone, token for token, as with
``stages=1``. A model type not checked split is refused when the batcher is built.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hibachi  # noqa: E402
from hibachi.integrations.transformers import CausalLMAdapter, causal_lm_batcher  # noqa: E402
from hibachi.integrations.transformers._staged import STAGED, layer_devices  # noqa: E402
from support.models import TIMEOUT, run_async  # noqa: E402
from support.torch_threads import one_torch_thread  # noqa: E402, F401 (autouse: one PyTorch thread)
from support.zoo_models import EOS, VOCAB, reference, tiny_model  # noqa: E402

pytestmark = pytest.mark.slow

LAYERS = {"num_hidden_layers": 4}


async def client(
    batcher: hibachi.AutoregressiveBatcher, prompt: Any, budget: int, arrival: float, quit: bool
) -> list[int]:
    await asyncio.sleep(arrival)  # arrival jitter, not synchronisation
    got: list[int] = []
    async for token in batcher.run(prompt, max_new_tokens=budget):
        got.append(int(token))
        if quit and len(got) == 2:
            break
    return got


def jobs(seed: int, count: int) -> list[tuple[Any, int, float, bool]]:
    rng = random.Random(seed)
    return [
        (
            torch.tensor([rng.randrange(6, VOCAB) for _ in range(rng.randrange(1, 30))]),
            rng.randrange(1, 14),
            rng.random() * 0.03,
            i % 5 == 3,
        )
        for i in range(count)
    ]


def serve(batcher: hibachi.AutoregressiveBatcher, work: list[Any]) -> list[list[int]]:
    async def main() -> list[list[int]]:
        async with batcher:
            clients = (client(batcher, *job) for job in work)
            return await asyncio.wait_for(asyncio.gather(*clients), TIMEOUT * 3)

    return run_async(main())


@pytest.mark.parametrize(
    ("model_type", "stages", "settings"),
    [
        pytest.param("llama", 2, {}, id="llama-2"),
        pytest.param("llama", 3, {}, id="llama-3"),
        pytest.param("qwen2", 2, {}, id="qwen2-2"),
        pytest.param(
            "qwen2",
            2,
            {"use_sliding_window": True, "max_window_layers": 1},
            id="qwen2-2-hybrid-sliding",
        ),
        pytest.param("qwen3", 2, {}, id="qwen3-2"),
        pytest.param(
            "qwen3",
            3,
            {"use_sliding_window": True, "max_window_layers": 2},
            id="qwen3-3-hybrid-sliding",
        ),
        pytest.param("mistral", 2, {}, id="mistral-2-sliding"),
        pytest.param("llama", ["cpu", "cpu"], {}, id="llama-placed-cpu-cpu"),
        pytest.param(
            "qwen3",
            [torch.device("cpu")] * 3,
            {"use_sliding_window": True, "max_window_layers": 2},
            id="qwen3-placed-3-cpu-hybrid-sliding",
        ),
    ],
)
def test_staged_tokens_equal_generate(model_type: str, stages: Any, settings: Any) -> None:
    model = tiny_model(model_type, **LAYERS, **settings)
    work = jobs(3, 14)
    batcher = causal_lm_batcher(
        model, max_batch_size=5, max_length=64, eos_token_id=EOS, max_batch_tokens=24, stages=stages
    )
    results = serve(batcher, work)
    for (prompt, budget, _, quit), got in zip(work, results, strict=True):
        want = reference(model, prompt, budget, EOS)
        assert got == (want[: len(got)] if quit else want)
    stats = batcher.stats()
    count = stages if isinstance(stages, int) else len(stages)
    assert stats.requests_failed == 0 and len(stats.stage_busy) == count
    assert all(busy > 0 for busy in stats.stage_busy)


@pytest.mark.parametrize("stages", [2, 3])
def test_staged_rows_in_a_tight_budget_are_preempted_and_still_equal_generate(
    stages: int,
) -> None:
    """Each group of three rows has its share of a budget, 11 blocks of 4 tokens (a row
    grows to 41 tokens): its requests wait for memory, its rows are preempted, within it."""
    model = tiny_model("llama", **LAYERS)
    work = jobs(5, 14)
    per_token = CausalLMAdapter(model, slots=1, max_length=64).sizes.bytes_per_token
    batcher = causal_lm_batcher(
        model,
        max_batch_size=3 * stages,
        max_length=64,
        eos_token_id=EOS,
        max_batch_tokens=24,
        stages=stages,
        block_size=4,
        kv_cache_bytes=stages * 11 * 4 * per_token,
    )
    results = serve(batcher, work)
    for (prompt, budget, _, quit), got in zip(work, results, strict=True):
        want = reference(model, prompt, budget, EOS)
        assert got == (want[: len(got)] if quit else want)
    stats = batcher.stats()
    assert stats.requests_failed == 0 and stats.requests_preempted > 0
    assert stats.memory is not None and stats.memory.blocks_used == 0


def test_every_served_type_is_tested() -> None:
    assert {"llama", "qwen2", "qwen3", "mistral"} == STAGED


@pytest.mark.parametrize(
    ("model_type", "reason"),
    [
        pytest.param("gemma", "scales its embeddings", id="gemma"),
        pytest.param("gpt2", "not served for GPT2LMHeadModel", id="gpt2"),
        pytest.param("lfm2", "not served", id="hybrid-recurrent"),
    ],
)
def test_unchecked_types_are_refused_when_split(model_type: str, reason: str) -> None:
    model = tiny_model(model_type, **LAYERS)
    with pytest.raises(hibachi.ConfigurationError, match=reason):
        causal_lm_batcher(model, max_batch_size=2, max_length=32, eos_token_id=EOS, stages=2)
    causal_lm_batcher(model, max_batch_size=2, max_length=32, eos_token_id=EOS)  # stages=1 serves


@pytest.mark.parametrize("stages", [0, -1, True, np.True_, 2.0, "2", 5])
def test_bad_stage_counts_are_refused(stages: Any) -> None:
    model = tiny_model("llama", **LAYERS)
    with pytest.raises(hibachi.ConfigurationError, match="stages"):
        causal_lm_batcher(model, max_batch_size=2, max_length=32, eos_token_id=EOS, stages=stages)


def test_a_numpy_integer_is_a_stage_count() -> None:
    model = tiny_model("llama", **LAYERS)
    adapter = CausalLMAdapter(model, slots=2, max_length=32, stages=np.int64(2))
    pipeline = adapter.pipeline()
    assert pipeline is not None and len(pipeline.stages) == 2


def test_a_step_that_raises_in_the_last_stage_commits_nothing() -> None:
    """The composed step fails in its last stage: the rows' lengths are as before, and
    the same step retried gives the tokens of a step that never failed."""
    model = tiny_model("llama", **LAYERS)
    adapter = CausalLMAdapter(model, slots=4, max_length=32, stages=2)  # slots 0, 1: group 1
    tokens = torch.tensor([[7, 8, 9], [0, 10, 11]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    slots = np.array([0, 1])
    staged = adapter._staged
    assert staged is not None
    head = staged._parts[-1]
    staged._parts[-1] = _Raising()
    with pytest.raises(RuntimeError, match="in the last stage"):
        adapter.step(tokens, mask, slots, [None, None])
    assert staged.planner(0).lengths[0] == 0 and staged.planner(0).lengths[1] == 0
    staged._parts[-1] = head
    got = adapter.step(tokens, mask, slots, [None, None])
    fresh = CausalLMAdapter(model, slots=4, max_length=32, stages=2)
    assert got.tolist() == fresh.step(tokens, mask, slots, [None, None]).tolist()
    assert staged.planner(0).lengths[0] == 3 and staged.planner(0).lengths[1] == 2


class _Raising:
    def __call__(self, **arguments: Any) -> Any:
        raise RuntimeError("in the last stage")


def test_seeded_sampling_gives_the_same_tokens_as_one_stage() -> None:
    """The sampler's draws are per slot and happen in the last stage, from what the
    first stage read of the step's inputs: a seeded request gets the tokens it gets
    with stages=1, whatever shares its group, its penalties too."""
    model = tiny_model("llama", **LAYERS)
    prompts = [torch.tensor([7 + i, 8, 9, 10 + i, 7]) for i in range(4)]
    changes: list[dict[str, Any]] = [
        {},
        {"repetition_penalty": 1.3, "frequency_penalty": 0.5},
        {"logit_bias": {3: 1.0, 9: -2.0}, "min_tokens": 3},
        {"presence_penalty": -1.0, "top_k": 5},
    ]
    options = [{"temperature": 0.9, "top_p": 0.95, "seed": i, **changes[i]} for i in range(4)]

    async def main(stages: int) -> list[list[int]]:
        batcher = causal_lm_batcher(
            model,
            max_batch_size=4,
            max_length=32,
            eos_token_id=EOS,
            stages=stages,
            max_batch_tokens=4,
        )
        async with batcher:
            streams = [
                batcher.run(p, max_new_tokens=6, options=o)
                for p, o in zip(prompts, options, strict=True)
            ]
            return [[int(t) for t in await s.collect()] for s in streams]

    assert run_async(main(2)) == run_async(main(1))


CPU, META = torch.device("cpu"), torch.device("meta")


def test_layer_devices_give_each_stage_an_even_slice_in_order() -> None:
    cuda = [torch.device(f"cuda:{i}") for i in range(3)]  # names only: nothing is placed
    assert layer_devices(5, cuda[:2]) == [cuda[0]] * 2 + [cuda[1]] * 3
    assert layer_devices(4, cuda) == [cuda[0], cuda[1], cuda[1], cuda[2]]
    for layers in range(1, 13):
        for count in range(1, layers + 1):
            placed = layer_devices(layers, [torch.device(f"cuda:{i}") for i in range(count)])
            assert len(placed) == layers
            assert [d.index for d in placed] == sorted(d.index for d in placed)
            assert {d.index for d in placed} == set(range(count))  # no stage without layers


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-head"])
@pytest.mark.parametrize("model_type", sorted(STAGED))
def test_placement_puts_each_stage_on_its_device(model_type: str, tied: bool) -> None:
    """``["cpu", "meta"]``: two distinct devices on a machine without a GPU (``meta``
    tensors have shapes and devices, no data: a step runs, its tokens cannot be read)."""
    model = tiny_model(model_type, **LAYERS, tie_word_embeddings=tied)
    rotary = model.model.rotary_emb
    adapter = CausalLMAdapter(model, slots=4, max_length=32, stages=["cpu", "meta"])
    staged = adapter._staged
    assert staged is not None and staged.devices == [CPU, META]
    inner = model.model
    wanted = layer_devices(len(inner.layers), [CPU, META])
    assert [_device_of(layer) for layer in inner.layers] == wanted == [CPU, CPU, META, META]
    first, last = staged._parts
    assert list(first.layers) == list(inner.layers[:2])
    assert list(last.model.layers) == list(inner.layers[2:])
    assert _device_of(inner.embed_tokens) == CPU and _device_of(inner.norm) == META
    assert _device_of(last.lm_head) == META and _device_of(last.model.norm) == META
    assert (model.lm_head.weight is inner.embed_tokens.weight) == tied
    if tied:  # the embeddings stay on the first device; the last stage's head is a copy
        assert _device_of(model.lm_head) == CPU
    # the user's rotary module stays put; the stage on meta calls a copy there
    assert first.rotary_emb is rotary and rotary.inv_freq.device == CPU
    assert last.model.rotary_emb is not rotary and last.model.rotary_emb.inv_freq.device == META
    tokens = torch.tensor([[7, 8, 9], [0, 10, 11]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    got = adapter.step(tokens, mask, np.array([0, 1]), [None, None])
    assert got.device == META and got.shape == (2,)  # the sampler is on the last device
    cached = [
        {layer.keys.device for layer in cache.layers if getattr(layer, "keys", None) is not None}
        for cache in staged._caches
    ]
    assert cached == [{CPU}, {META}]


def _device_of(module: Any) -> Any:
    (device,) = {p.device for p in module.parameters()}
    return device


@pytest.mark.parametrize(
    ("stages", "named"),
    [
        pytest.param([], "[]", id="empty"),
        pytest.param(["cpu", 3], "3 is not a device", id="an-int"),
        pytest.param([None], "None is not a device", id="none"),
        pytest.param(["cpu", "gpu"], "'gpu' is not a device torch has", id="bad-name"),
        pytest.param(["cpu", "cuda:999"], "'cuda:999' is not a device torch has", id="absent"),
        pytest.param(["cpu"] * 5, "more than the model's 4 layers", id="more-than-layers"),
        pytest.param("cpu", "'cpu'", id="a-string"),
    ],
)
def test_bad_device_lists_are_refused_naming_the_value(stages: Any, named: str) -> None:
    model = tiny_model("llama", **LAYERS)
    with pytest.raises(hibachi.ConfigurationError, match=re.escape(named)) as caught:
        causal_lm_batcher(model, max_batch_size=2, max_length=32, eos_token_id=EOS, stages=stages)
    assert "stages" in str(caught.value)
    assert {p.device for p in model.parameters()} == {CPU}  # refused before anything moved


def test_one_listed_device_runs_unstaged_on_it() -> None:
    model = tiny_model("llama", **LAYERS)
    adapter = CausalLMAdapter(model, slots=2, max_length=32, stages=[torch.device("cpu")])
    assert adapter.pipeline() is None and adapter._staged is None
    fresh = CausalLMAdapter(tiny_model("llama", **LAYERS), slots=2, max_length=32)
    tokens, mask = torch.tensor([[7, 8, 9]]), torch.ones((1, 3), dtype=torch.bool)
    slots = np.array([0])
    assert (
        adapter.step(tokens, mask, slots, [None]).tolist()
        == fresh.step(tokens, mask, slots, [None]).tolist()
    )
