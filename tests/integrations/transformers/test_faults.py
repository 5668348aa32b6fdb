"""The transformers adapter and bad requests: refused at ``run()`` when it can be known,
failing alone when only the model can tell, and leaving no trace in the others' tokens.

A tiny random-weight Llama in float64; the reference is ``generate()`` alone.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hibachi  # noqa: E402
from hibachi.integrations.transformers import causal_lm_batcher  # noqa: E402
from support.models import TIMEOUT, run_async  # noqa: E402
from support.tiny_lms import EOS, VOCAB, generate, tiny_llama  # noqa: E402
from support.torch_threads import one_torch_thread  # noqa: E402, F401 (autouse: one PyTorch thread)

POISON = 3  # a prompt holding this id makes the model raise, in its second layer


class Faults:
    """Hooks that make a Llama raise midway through its forward pass (after layer 0
    wrote its keys and values): on a prefill holding POISON, or on the next
    ``transient`` calls whatever they hold."""

    def __init__(self, model: Any) -> None:
        self.transient = 0
        self.calls = 0
        self._poisoned = False
        self._lock = threading.Lock()
        model.register_forward_pre_hook(self._look, with_kwargs=True)
        model.model.layers[1].register_forward_pre_hook(self._raise)

    def _look(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        self.calls += 1
        self._poisoned = ids.shape[1] > 1 and bool((ids == POISON).any())

    def _raise(self, module: Any, args: Any) -> None:
        if self._poisoned:
            raise ValueError("a poisoned prompt")
        if self.transient:
            self.transient -= 1
            raise ConnectionError("a transient fault")


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny_llama()


@pytest.fixture
def faulty() -> tuple[Any, Faults]:
    model = tiny_llama()
    return model, Faults(model)


# -- refused at run() --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        pytest.param([7, VOCAB, 8], f"token id {VOCAB} at position 1", id="past-the-vocabulary"),
        pytest.param([7, 8, -4], "token id -4 at position 2", id="negative"),
        pytest.param([10**6], "token id 1000000 at position 0", id="huge"),
    ],
)
def test_token_ids_outside_the_vocabulary_are_refused(
    llama: Any, prompt: list[int], message: str
) -> None:
    with causal_lm_batcher(llama, max_batch_size=2, max_length=16, eos_token_id=EOS) as b:
        with pytest.raises(hibachi.InvalidRequest, match=message):
            b.run(torch.tensor(prompt))
        assert b.stats().queue_depth == 0
        good = torch.tensor([7, 8, 9])
        assert [int(t) for t in b.run(good, max_new_tokens=4)] == generate(llama, good, 4)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        pytest.param(torch.tensor([True, False]), r"torch\.bool", id="bool"),
        pytest.param(torch.tensor([7.0, 8.0]), "float", id="float"),
        pytest.param(torch.tensor([7.5]), "float", id="fractional"),
    ],
)
def test_prompts_that_are_not_token_ids_are_refused(llama: Any, prompt: Any, message: str) -> None:
    batcher = causal_lm_batcher(llama, max_batch_size=1, max_length=16, eos_token_id=EOS)
    with batcher, pytest.raises(hibachi.InvalidRequest, match=message):
        batcher.run(prompt)


def test_the_adapter_refuses_bad_ids_when_asked_directly(llama: Any) -> None:
    from hibachi.integrations.transformers import CausalLMAdapter

    adapter = CausalLMAdapter(llama, slots=1, max_length=16)
    assert adapter.vocab_size == VOCAB
    with pytest.raises(hibachi.InvalidRequest, match="token id 97 at position 0"):
        adapter.check_request(torch.tensor([97]), 4, None)
    with pytest.raises(hibachi.InvalidRequest, match=r"torch\.bool"):
        adapter.check_request(torch.tensor([True]), 4, None)
    granted = adapter.check_request(torch.tensor([96, 0], dtype=torch.int32), 4, None)
    assert granted.max_new_tokens == 4


# -- failing alone in the model -------------------------------------------------------------


def serve(batcher: hibachi.AutoregressiveBatcher, jobs: list[dict[str, Any]]) -> list[Any]:
    """Each job's tokens, or the error its stream raised."""

    async def one(job: dict[str, Any]) -> Any:
        try:
            return [int(t) async for t in batcher.run(**job)]
        except hibachi.HibachiError as error:
            return error

    async def main() -> list[Any]:
        async with batcher:
            import asyncio

            return await asyncio.gather(*(one(job) for job in jobs))

    return run_async(main(), timeout=3 * TIMEOUT)


def prompts(count: int, length: int = 4) -> list[Any]:
    return [
        torch.tensor([10 + (7 * i + j) % 80 for j in range(length + i % 3)]) for i in range(count)
    ]


def test_a_poisoned_prompt_fails_alone_and_the_others_match_generate(
    faulty: tuple[Any, Faults],
) -> None:
    model, _ = faulty
    good = prompts(6)
    bad = [torch.tensor([11, POISON, 12]), torch.tensor([POISON, 40])]
    jobs = [{"prompt": p, "max_new_tokens": 6} for p in good[:3] + bad[:1] + good[3:] + bad[1:]]
    results = serve(
        causal_lm_batcher(model, max_batch_size=8, max_length=32, eos_token_id=EOS), jobs
    )
    for job, got in zip(jobs, results, strict=True):
        prompt = job["prompt"]
        if bool((prompt == POISON).any()):
            assert isinstance(got, hibachi.ModelError)
            assert isinstance(got.__cause__, ValueError)
        else:
            assert got == generate(model, prompt, 6)


def test_transient_faults_midway_through_the_model_cost_nobody_their_tokens(
    faulty: tuple[Any, Faults],
) -> None:
    model, faults = faulty
    good = prompts(5)
    batcher = causal_lm_batcher(model, max_batch_size=8, max_length=32, eos_token_id=EOS)
    faults.transient = 1  # the first step, a prefill of every prompt
    jobs = [{"prompt": p, "max_new_tokens": 6} for p in good]
    first = serve(batcher, jobs)
    assert first == [generate(model, p, 6) for p in good]


def test_a_fault_in_a_decode_step_leaves_lengths_cache_and_samplers_as_they_were(
    faulty: tuple[Any, Faults],
) -> None:
    model, faults = faulty
    seeded = {"temperature": 1.0, "seed": 7}
    prompt = torch.tensor([20, 21, 22])

    def sampled(transient_at: int | None) -> list[int]:
        batcher = causal_lm_batcher(model, max_batch_size=2, max_length=32, eos_token_id=EOS)
        adapter = batcher._incremental
        assert adapter is not None

        async def main() -> list[int]:
            async with batcher:
                got = []
                stream = batcher.run(prompt, max_new_tokens=8, options=seeded)
                other = batcher.run(torch.tensor([30, 31]), max_new_tokens=8)
                async for token in stream:
                    got.append(int(token))
                    if len(got) == transient_at:
                        faults.transient = 1  # a decode step of both rows fails once
                await other.collect()
                return got

        return run_async(main())

    assert sampled(3) == sampled(None)
