"""A/B of ``delivery_thread=``: tokens/s with delivery on the engine thread and on the courier's.

The bench's random-weight Llama (``--preset quick`` or ``full``) served through
``causal_lm_batcher`` to ``--clients`` asyncio clients at once, each with a
prompt and a budget drawn as the bench's generation workload draws them.
``delivery_thread=False`` and ``delivery_thread=True`` alternate ``--repeat`` times in this one
run; printed: the median tokens/s of each, and the median of the per-pair
ratios. Both must give every client the same tokens (greedy), which is checked.

Usage: python benchmarks/delivery_thread.py [--preset quick] [--clients 1 8 32] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

import torch

from hibachi._bench.methods.streams import serve_with_hibachi
from hibachi._bench.models.llama import build_llama, eos_of
from hibachi._bench.models.requests import make_requests
from hibachi._bench.settings import preset
from hibachi.integrations.transformers import causal_lm_batcher


def serve(
    model: Any, size: Any, clients: int, delivery_thread: bool, seed: int
) -> tuple[float, Any]:
    requests = make_requests(clients, size.prompt_lengths, size.budgets, size.vocab, seed)
    longest = max(len(r.prompt) + r.budget for r in requests)
    batcher = causal_lm_batcher(
        model,
        max_batch_size=min(clients, size.batch_size),
        max_length=longest + 1,
        eos_token_id=eos_of(size),
        delivery_thread=delivery_thread,
    )
    outcome = asyncio.run(serve_with_hibachi(batcher, requests, "cpu"))
    return outcome.tokens_per_s, outcome.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["quick", "full"], default="quick")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = preset(args.preset).generation
    model = build_llama(size, "cpu", 0)
    print(
        f"{args.preset} preset's Llama, {torch.get_num_threads()} torch thread(s), "
        f"delivery_thread=False/True alternated {args.repeat} times (medians)"
    )
    print(f"  {'clients':>7} {'False':>14} {'True':>13} {'True/False':>11}")
    for clients in args.clients:
        serve(model, size, clients, False, 0)  # warm-up
        rates: dict[bool, list[float]] = {False: [], True: []}
        ratios = []
        for i in range(args.repeat):
            order = (False, True) if i % 2 == 0 else (True, False)
            pair: dict[bool, float] = {}
            outputs = []
            for delivery_thread in order:
                pair[delivery_thread], tokens = serve(model, size, clients, delivery_thread, i)
                rates[delivery_thread].append(pair[delivery_thread])
                outputs.append(tokens)
            if outputs[0] != outputs[1]:
                raise SystemExit(f"delivery_thread changed the tokens ({clients} clients, run {i})")
            ratios.append(pair[True] / pair[False])
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        ratio = statistics.median(ratios)
        print(f"  {clients:>7} {off:>12,.0f}/s {on:>11,.0f}/s {ratio:>10.2f}x")


if __name__ == "__main__":
    main()
