"""Sweep every causal LM transformers ships through `causal_lm_batcher` (minutes; not a test).

    PYTHONPATH=src .venv/bin/python scripts/zoo_sweep.py [model_type ...]

For each model type of transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING``: build a
tiny random-weight model (``tests/support/zoo_models.py``), run seven requests through
a batcher of three slots with prompts crossing the sliding window, random
arrivals and a cancellation, and compare every request with ``generate()`` on
its prompt alone. Prints one line per model type:

    EXACT | f32 EXACT      the tokens are generate()'s (f32: in float32)
    WRONG                  the tokens differ (a bug if the type is served!)
    REFUSED <why>          causal_lm_batcher refused it when built
    FAIL | GENERATE-FAIL   the batcher, or generate() itself, failed
    BUILD-FAIL             no tiny model could be built here

``--all`` checks even the types hibachi refuses as not checked (which is how
a type earns its place in ``_zoo.SERVED``).
"""

from __future__ import annotations

import asyncio
import random
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import hibachi
import hibachi.integrations.transformers._architectures as architectures
from hibachi.integrations.transformers import causal_lm_batcher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.zoo_models import OVERRIDES, VOCAB, reference, tiny_model

SECONDS_PER_TYPE = 60
MEMORY = 5 * 2**30


class _Timeout(Exception):
    pass


def _alarm(*_: Any) -> None:
    raise _Timeout(f"over {SECONDS_PER_TYPE} s")


def jobs(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "prompt": torch.tensor([rng.randrange(6, VOCAB) for _ in range(rng.randrange(1, 24))]),
            "max_new_tokens": rng.randrange(1, 14),
            "arrival": rng.random() * 0.02,
            "quit_after": 2 if i == 3 else None,
        }
        for i in range(7)
    ]


async def stream(b: Any, prompt: Any, max_new_tokens: int, arrival: float, quit_after: Any) -> Any:
    await asyncio.sleep(arrival)  # arrival jitter
    got: list[int] = []
    async for token in b.run(prompt, max_new_tokens=max_new_tokens):
        got.append(int(token))
        if len(got) == quit_after:
            break
    return got


def check(model: Any) -> str:
    work = jobs(3)
    try:
        wants = [reference(model, j["prompt"], j["max_new_tokens"], None) for j in work]
    except Exception as exc:
        return f"GENERATE-FAIL {type(exc).__name__}: {exc}"
    try:
        batcher = causal_lm_batcher(
            model, max_batch_size=3, max_length=48, eos_token_id=None, prefill_chunk=16
        )
    except hibachi.ConfigurationError as exc:
        return f"REFUSED {exc}"

    async def main() -> list[list[int]]:
        async with batcher:
            return list(await asyncio.gather(*(stream(batcher, **j) for j in work)))

    try:
        results = asyncio.run(main())
    except Exception as exc:
        return f"FAIL {type(exc).__name__}: {exc}"
    for job, got, want in zip(work, results, wants, strict=True):
        if got != (want[: len(got)] if job["quit_after"] else want):
            return f"WRONG prompt of {len(job['prompt'])}: got {got}, want {want}"
    return "EXACT"


def sweep_one(model_type: str) -> str:
    settings = OVERRIDES.get(model_type, {})
    try:
        model = tiny_model(model_type, **settings)
    except Exception as exc:
        return f"BUILD-FAIL {type(exc).__name__}: {exc}"
    result = check(model)
    if "Float32, BFloat16 or Float16" in result:  # expert kernels without float64
        result = "f32 " + check(tiny_model(model_type, dtype=torch.float32, **settings))
    return result


def main(argv: list[str]) -> None:
    if "--all" in argv:
        architectures._refuse_unchecked = lambda *_: None  # check the unchecked too
    types = [a for a in argv if not a.startswith("--")] or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))  # some default configs are huge
    signal.signal(signal.SIGALRM, _alarm)
    torch.set_num_threads(1)
    for model_type in types:
        signal.alarm(SECONDS_PER_TYPE)
        try:
            result = sweep_one(model_type)
        except (_Timeout, MemoryError, RuntimeError) as exc:
            result = f"BUILD-FAIL {type(exc).__name__}: {exc}"
        finally:
            signal.alarm(0)
        print(f"{model_type:28s} {' '.join(result.split())[:240]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
