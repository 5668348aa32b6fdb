"""A shared prompt prefix computed once: time to first token with prefix caching on and off.

``--requests`` requests arrive at once, each a ``--prefix``-token prefix they
all share (a long system prompt: English text for SmolLM2, random ids for the
tiny Llama) followed by a distinct ``--tail``-token tail, ``--tokens`` new
tokens each, greedy, with ``max_batch_size`` = the requests. The same
requests are served with ``prefix_caching=True`` and ``False`` (alternating,
``--rounds`` rounds); the figures are the medians over the rounds of each
run's time to first token p50 and p95 and its tokens/s, and whether both gave
the same tokens.

Usage: python benchmarks/kv_cache_prefix.py [--model smollm2|tiny] [--rounds 1] [--results]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from typing import Any

import hibachi.integrations.transformers as paged
from kv_cache_common import Request, Results, median, serve, smollm2, spread, tiny

SYSTEM = (
    "You are a careful assistant. Answer the user's question in plain words, cite what you "
    "are sure of, say so when you are not, and keep every answer short and kind. "
)


def requests(model: Any, tokenizer: Any, args: argparse.Namespace) -> list[Request]:
    rng = random.Random(0)
    vocab = int(model.config.vocab_size)
    if tokenizer is None:
        prefix = [rng.randrange(3, vocab) for _ in range(args.prefix)]
    else:
        ids = tokenizer(SYSTEM * (1 + args.prefix // 30), add_special_tokens=False)["input_ids"]
        prefix = list(ids[: args.prefix])
    return [
        Request(prefix + [rng.randrange(3, vocab) for _ in range(args.tail)], args.tokens)
        for _ in range(args.requests)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prefix", type=int, default=512)
    parser.add_argument("--tail", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    model, tokenizer = smollm2() if args.model == "smollm2" else tiny()
    if args.model == "tiny":
        args.prefix = min(args.prefix, 200)
    work = requests(model, tokenizer, args)
    results = Results(
        f"Prefix caching: {args.requests} requests sharing a {args.prefix}-token prefix "
        f"({args.model})",
        (__doc__ or "").split("Usage:")[0].split("\n", 2)[2].strip(),
    )
    runs: dict[bool, list[Any]] = {True: [], False: []}
    for _ in range(args.rounds):
        for caching in (False, True):
            batcher = paged.causal_lm_batcher(
                model, max_batch_size=args.requests, eos_token_id=None, prefix_caching=caching
            )
            served = serve(batcher, work)
            memory = batcher.stats().memory
            served.peak["hits"] = memory.prefix_cache_hits if memory else 0
            runs[caching].append(served)
    same = all(a.tokens == b.tokens for a, b in zip(runs[True], runs[False], strict=True))
    p50 = {c: [percentile(s.first, 0.5) for s in r] for c, r in runs.items()}
    rows = []
    for caching in (False, True):
        served = runs[caching]
        rows.append(
            [
                "on" if caching else "off",
                f"{median(p50[caching]) * 1000:,.0f} ms",
                f"{median([percentile(s.first, 0.95) for s in served]) * 1000:,.0f} ms",
                spread(p50[caching]),
                f"{median([s.tokens_per_s for s in served]):.1f}",
                f"{statistics.median(s.peak['hits'] for s in served):,.0f}",
            ]
        )
    gain = median(p50[False]) / median(p50[True])
    results.table(
        "time to first token",
        ["prefix caching", "TTFT p50", "TTFT p95", "p50 spread", "tokens/s", "prompt tokens hit"],
        rows,
        note=f"TTFT p50 {gain:.1f}x better with prefix caching; same tokens: "
        f"{'yes' if same else 'NO'}; {args.rounds} round(s).",
    )
    if args.results:
        results.write(f"kv_cache_prefix_{args.model}")


if __name__ == "__main__":
    main()
