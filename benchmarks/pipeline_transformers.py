"""``causal_lm_batcher(model, stages=2)`` against ``stages=1`` on a random-weight Llama (issue #12).

A Llama of about 40M parameters (random weights, float32, no download) serves
``--clients`` concurrent streams, each a ``--prompt``-token prompt and
``--new-tokens`` new tokens (no stop token: every stream runs its budget).
Three configurations, in one run, interleaved ``--repeat`` times (each keeps
its best run: on a shared machine other work only slows a run down):

- ``stages=1``, 1 PyTorch thread; ``stages=1``, 2 PyTorch threads;
- ``stages=2``, 1 PyTorch thread (each stage computes on its own thread).

``max_batch_size`` is ``--clients`` in all (with stages=2: two groups of half).
Reported: tokens/s, the speed-up of ``stages=2`` over the better ``stages=1``,
each stage's busy share (its time in calls / wall time) and its time per call
in the pipeline against the same call alone (what the other stage costs it:
GIL, memory bandwidth). The GIL share of a stage is estimated by running the
same call on a model of the same depth with tiny widths, whose time is the
Python and dispatch overhead (held under the GIL) with almost no kernel time.
A last table gives a stage call's time alone at 8, 16 and 32 rows: where it
hardly grows with the rows, the call is bound by streaming the stage's
weights from memory, not by arithmetic. The first ``--check`` streams'
tokens are compared with ``model.generate()``.

Usage: python benchmarks/pipeline_transformers.py [--clients 32] [--new-tokens 48] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import numpy as np
import torch
import transformers

from hibachi.integrations.transformers import CausalLMAdapter, causal_lm_batcher

VOCAB = 4096


def llama(hidden: int, layers: int, intermediate: int, heads: int) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).float().eval()


async def serve(batcher: Any, prompts: list[torch.Tensor], budget: int) -> list[list[int]]:
    async def client(prompt: torch.Tensor) -> list[int]:
        return [int(t) async for t in batcher.run(prompt, max_new_tokens=budget)]

    async with batcher:
        return await asyncio.gather(*(client(p) for p in prompts))


def run(
    model: Any, stages: int, threads: int, prompts: list[torch.Tensor], budget: int
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    batcher = causal_lm_batcher(
        model,
        max_batch_size=len(prompts),
        max_length=int(max(p.shape[0] for p in prompts)) + budget + 1,
        eos_token_id=None,
        stages=stages,
    )
    start = time.perf_counter()
    tokens = asyncio.run(serve(batcher, prompts, budget))
    wall = time.perf_counter() - start
    stats = batcher.stats()
    return {
        "tokens": tokens,
        "wall": wall,
        "rate": sum(map(len, tokens)) / wall,
        "busy": [b / wall for b in stats.stage_busy],
        "per_call": [b / stats.steps for b in stats.stage_busy],
        "steps": stats.steps,
    }


def stage_call_times(model: Any, rows: int, length: int, repeat: int = 20) -> list[float]:
    """Each stage's time for one decode step of ``rows`` rows, run alone (1 thread)."""
    torch.set_num_threads(1)
    adapter = CausalLMAdapter(model, slots=2 * rows, max_length=length + repeat + 2, stages=2)
    staged = adapter._staged
    assert staged is not None
    slots = np.arange(rows)
    prompt = torch.randint(3, VOCAB, (rows, length))
    adapter.step(prompt, torch.ones_like(prompt, dtype=torch.bool), slots, [None] * rows)
    token = torch.randint(3, VOCAB, (rows, 1))
    ones = torch.ones_like(token, dtype=torch.bool)
    first, last = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        carry = staged.first(token, ones, slots, [None] * rows)
        t1 = time.perf_counter()
        staged.last(carry)
        t2 = time.perf_counter()
        first.append(t1 - t0)
        last.append(t2 - t1)
    return [statistics.median(first), statistics.median(last)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--check", type=int, default=4)
    args = parser.parse_args()

    model = llama(args.hidden, args.layers, args.intermediate, heads=8)
    params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(1)
    prompts = [
        torch.tensor(rng.integers(3, VOCAB, args.prompt), dtype=torch.long)
        for _ in range(args.clients)
    ]
    print(
        f"# Llama {params / 1e6:.1f}M parameters ({args.layers} layers, hidden {args.hidden}), "
        f"{args.clients} clients x {args.new_tokens} tokens, prompt {args.prompt}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    configs = [(1, 1), (1, 2), (2, 1)]
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for _ in range(args.repeat):
        for stages, threads in configs:
            result = run(model, stages, threads, prompts, args.new_tokens)
            if (stages, threads) not in best or result["rate"] > best[(stages, threads)]["rate"]:
                best[(stages, threads)] = result
            print(f"  stages={stages} threads={threads}: {result['rate']:,.0f} tok/s", flush=True)

    torch.set_num_threads(1)
    for i, prompt in enumerate(prompts[: args.check]):
        want = model.generate(
            prompt[None],
            attention_mask=torch.ones_like(prompt)[None],
            do_sample=False,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            pad_token_id=0,
        )[0, args.prompt :].tolist()
        for key, result in best.items():
            assert result["tokens"][i] == want, f"stream {i} of {key} differs from generate()"
    rows = args.clients // 2
    alone = stage_call_times(model, rows, args.prompt)
    scaling = {count: stage_call_times(model, count, args.prompt) for count in (8, 2 * rows)}
    scaling[rows] = alone
    scaling = dict(sorted(scaling.items()))
    tiny = llama(16, args.layers, 16, heads=2)
    overhead = stage_call_times(tiny, rows, args.prompt)

    base = max(best[(1, 1)]["rate"], best[(1, 2)]["rate"])
    print("\n| configuration | tokens/s | vs best stages=1 | busy share per stage |")
    print("|---|--:|--:|--:|")
    for (stages, threads), result in best.items():
        busy = "/".join(f"{b:.0%}" for b in result["busy"]) or "-"
        print(
            f"| stages={stages}, {threads} thread(s) | {result['rate']:,.0f} "
            f"| {result['rate'] / base:.2f}x | {busy} |"
        )
    piped = best[(2, 1)]
    print(f"\ntokens equal generate() on the first {args.check} streams of every configuration")
    print(
        f"\n| stage | call alone (decode, {rows} rows) | call in the pipeline (mean, all steps) "
        f"| Python/dispatch overhead (tiny widths) | GIL share estimate |"
    )
    print("|---|--:|--:|--:|--:|")
    for i in range(2):
        print(
            f"| {i + 1} | {alone[i] * 1e3:.2f} ms | {piped['per_call'][i] * 1e3:.2f} ms "
            f"| {overhead[i] * 1e3:.2f} ms | {overhead[i] / alone[i]:.0%} |"
        )
    print("\n| rows in a decode call | stage 1 alone | stage 2 alone | per row, both stages |")
    print("|--:|--:|--:|--:|")
    for count, times in scaling.items():
        print(
            f"| {count} | {times[0] * 1e3:.2f} ms | {times[1] * 1e3:.2f} ms "
            f"| {sum(times) / count * 1e3:.2f} ms |"
        )
    print(f"\nload {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
