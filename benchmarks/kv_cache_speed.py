"""The paged KV cache against the slot cache it replaced, on SmolLM2-135M-Instruct: tokens/s.

Chat prompts through the model's chat template (``--requests`` of them), ``--tokens``
new tokens each, greedy, float32 on the CPU, served by ``causal_lm_batcher``
with ``--clients`` clients at once: 1 (each request alone, one after another)
and 16. Two versions of hibachi run side by side in one process, on the same
loaded model: this tree's and a baseline's (``--baseline``, a git ref, by
default the last commit of ``main`` before the paged merge), whose source is taken from git into a
temporary package ``hibachi_baseline``. Rounds alternate the two; each figure
is the median tokens/s over ``--rounds`` rounds, with its spread (min-max over
the median), and the ratio of the medians.

For reference, the same rounds time ``generate()`` on each request alone (the
1-client line) and on one left-padded batch of every request (the 16-client
line), and check that hibachi's tokens equal ``generate()``'s.

Usage: python benchmarks/kv_cache_speed.py [--rounds 3] [--clients 1 16] [--results]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import time
from collections.abc import Callable
from typing import Any

import torch

from kv_cache_common import Results, baseline_package, median, merge_base, smollm2, spread

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for a good night's sleep.",
    "Explain photosynthesis in one paragraph.",
    "Write a haiku about the sea.",
    "What is 17 times 23?",
    "Name a few programming languages and what they are used for.",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet.",
    "What are the benefits of regular exercise?",
    "Translate 'good morning' into Spanish and German.",
    "What is a black hole?",
    "Suggest a name for a pet turtle.",
    "How does a bicycle stay upright?",
    "What should I pack for a weekend hike?",
    "Describe the taste of coffee to someone who never had it.",
]


def chat_prompts(tokenizer: Any, count: int) -> list[torch.Tensor]:
    prompts = []
    for i in range(count):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if not isinstance(ids, list):
            ids = ids["input_ids"]
        prompts.append(torch.tensor(ids))
    return prompts


def serve(
    make: Callable[..., Any], model: Any, prompts: list[torch.Tensor], tokens: int, clients: int
) -> tuple[float, list[list[int]]]:
    """tokens/s and the tokens, ``clients`` requests at a time through a fresh batcher."""

    async def one(batcher: Any, prompt: torch.Tensor) -> list[int]:
        return [int(t) for t in await batcher.run(prompt, max_new_tokens=tokens).collect()]

    async def main() -> list[list[int]]:
        async with make(model) as batcher:
            got: list[list[int]] = []
            for start in range(0, len(prompts), clients):
                group = prompts[start : start + clients]
                got += await asyncio.gather(*(one(batcher, p) for p in group))
            return got

    start = time.perf_counter()
    got = asyncio.run(main())
    return sum(map(len, got)) / (time.perf_counter() - start), got


def generate(model: Any, prompts: list[torch.Tensor], tokens: int, eos: int, batch: bool) -> float:
    """tokens/s of ``generate()``: each prompt alone, or all in one left-padded batch."""
    groups = [prompts] if batch else [[p] for p in prompts]
    produced, start = 0, time.perf_counter()
    for group in groups:
        width = max(len(p) for p in group)
        ids = torch.stack([torch.cat([p.new_full((width - len(p),), eos), p]) for p in group])
        mask = torch.stack([torch.arange(width) >= width - len(p) for p in group]).long()
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False, pad_token_id=eos
        )
        for row in out[:, width:]:
            produced += int((row != eos).sum()) + int((row == eos).any())
    return produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline", default=None, help="a git ref (default: the slot cache)")
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ref = args.baseline or merge_base()
    results = Results(
        "The paged KV cache against the slot cache (SmolLM2-135M-Instruct, tokens/s)",
        (__doc__ or "").split("Usage:")[0].split("\n", 2)[2].strip(),
    )
    model, tokenizer = smollm2()
    eos = int(tokenizer.eos_token_id)
    prompts = chat_prompts(tokenizer, args.requests)
    versions = {"baseline": baseline_package(ref), "paged": _current()}
    table = []
    for clients in args.clients:
        times: dict[str, list[float]] = {name: [] for name in (*versions, "generate()")}
        same = {name: True for name in versions}
        want: list[list[int]] | None = None
        for _ in range(args.rounds):
            for name, package in versions.items():

                def make(m: Any, package: Any = package, rows: int = max(clients, 16)) -> Any:
                    return package.causal_lm_batcher(
                        m, max_batch_size=rows, max_length=1024, eos_token_id=eos
                    )

                speed, got = serve(make, model, prompts, args.tokens, clients)
                times[name].append(speed)
                want = want or got if name == "baseline" else want
                same[name] = same[name] and got == want
            times["generate()"].append(generate(model, prompts, args.tokens, eos, clients > 1))
        base = median(times["baseline"])
        for name, values in times.items():
            label = (
                name
                if name != "generate()"
                else ("generate(), one padded batch" if clients > 1 else "generate(), each alone")
            )
            table.append(
                [
                    clients,
                    label,
                    f"{median(values):.1f}",
                    spread(values),
                    f"{median(values) / base:.3f}",
                    "" if name not in same else ("yes" if same[name] else "NO"),
                ]
            )
    results.table(
        f"tokens/s, baseline {ref}",
        ["clients", "served by", "tokens/s (median)", "spread", "vs baseline", "same tokens"],
        table,
        note=(
            f"{args.requests} chat prompts, {args.tokens} new tokens, {args.rounds} rounds, "
            f"{torch.get_num_threads()} torch threads; max_length=1024 for both (the "
            "baseline's default), the paged cache's other settings at their defaults."
        ),
    )
    if args.results:
        results.write("kv_cache_speed")


def _current() -> Any:
    return importlib.import_module("hibachi.integrations.transformers")


if __name__ == "__main__":
    main()
