"""Generation with a KV cache on CPU: hibachi next to transformers, in one run.

A random-weight Llama of about 5.5M parameters; 32 requests arrive at once with
prompts of 8-256 tokens and budgets of 16-128 new tokens (greedy). Prints the
tokens/s of

- hibachi: `causal_lm_batcher` (per-slot KV cache, continuous batching),
- ``model.generate()`` one request at a time,
- transformers' own continuous batching (the manager behind
  ``model.generate_batch``, each request with its own budget),

the speed-ups (targets: >= 3x one at a time, >= 2x generate_batch), whether
every request got the same tokens as ``generate()``, and the share of each
hibachi step spent outside the model (target: <= 10%). Each method runs
``--repeat`` times; the fastest run counts (other work only slows runs down).

Usage: python benchmarks/generation.py [--batch-size 32] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch

from hibachi._bench.generation import Outcome, continuous_batching, one_at_a_time
from hibachi._bench.llm import build_llama, eos_of, make_requests, parameters
from hibachi._bench.settings import preset
from hibachi._bench.step_share import StepShare, kv_cache_run


def best(run: Callable[[], Outcome], repeat: int) -> Outcome:
    return max((run() for _ in range(repeat)), key=lambda outcome: outcome.tokens_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="slots / requests per batch")
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    size = dataclasses.replace(
        preset("full").generation, clients=args.clients, batch_size=args.batch_size
    )
    model = build_llama(size, "cpu", seed=0)
    requests = make_requests(size.clients, size.prompt_lengths, size.budgets, size.vocab, 0)
    print(
        f"Llama {parameters(model) / 1e6:.1f}M params, {size.clients} requests, prompts "
        f"{size.prompt_lengths}, budgets {size.budgets}, batch size {size.batch_size}, "
        f"{args.threads} torch threads, best of {args.repeat}"
    )

    reference = best(lambda: one_at_a_time(model, requests, "cpu"), args.repeat)
    runs = [
        kv_cache_run(
            model,
            requests,
            batch_size=size.batch_size,
            eos=eos_of(size),
            prefill_chunk=args.prefill_chunk,
        )
        for _ in range(args.repeat)
    ]
    hibachi, share = max(runs, key=lambda run: run[0].tokens_per_s)
    continuous = best(lambda: continuous_batching(model, requests, size.batch_size), args.repeat)

    rows = [
        ("hibachi (KV cache)", hibachi),
        ("generate() one at a time", reference),
        ("transformers generate_batch", continuous),
    ]
    print(f"{'':30}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'x one':>8}{'x batch':>9}  same")
    for name, outcome in rows:
        same = sum(a == b for a, b in zip(outcome.tokens, reference.tokens, strict=True))
        print(
            f"{name:30}{sum(map(len, outcome.tokens)):>8}{outcome.seconds:>9.2f}"
            f"{outcome.tokens_per_s:>10.0f}{outcome.tokens_per_s / reference.tokens_per_s:>8.2f}"
            f"{outcome.tokens_per_s / continuous.tokens_per_s:>9.2f}  {same}/{len(requests)}"
        )
    report_share(share)


def report_share(share: StepShare) -> None:
    print(
        f"hibachi: {share.steps} steps, {share.model_seconds:.2f} s in the model of "
        f"{share.busy_seconds:.2f} s busy: {share.outside:.1%} of each step outside the model"
    )


if __name__ == "__main__":
    main()
