"""Memory that follows the tokens: the paged KV cache on a mixed workload, against the slot cache.

``--requests`` requests arrive at once, prompts and budgets uniform in the
workload's ranges (SmolLM2: prompts 16-512 tokens, budgets 16-256; the tiny
Llama of the tests: 8-128 and 8-64), random token ids, no stop token (each
request runs its whole budget), greedy, float32 (SmolLM2) on the CPU.

1. **Memory at peak.** The paged cache with room for every row at once
   (``max_batch_size`` = the requests, the default budget), prefix caching on
   and off: the KV memory allocated (blocks used and cached, and the lane
   pages resident, the ``Rss`` of their mappings) at its peak, over what the tokens
   rows hold at that moment need (their keys and values, unrounded). The slot
   cache reserves ``max_batch_size`` x ``max_length`` whatever the rows hold.
2. **Same memory, more work.** A budget of 16 rows x 1,024 tokens: the slot
   cache (this tree's baseline, ``--baseline``: 16 slots of 1,024) against
   the paged cache (``kv_cache_bytes`` = the same bytes, up to 64 rows):
   rows at once and tokens/s.
3. **A quarter of the peak.** The paged cache with a budget of a quarter of
   the tokens held at the peak of (1): requests wait, rows are preempted and
   recomputed; every request must complete with the tokens it got with room
   to spare (and, with ``--check``, ``generate()``'s on its prompt alone).

One run of each (the workload is long); rows at once and held tokens are
sampled every few milliseconds by a thread beside the engine.

Usage: python benchmarks/kv_cache_memory.py [--model smollm2|tiny] [--check N] [--results]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import hibachi.integrations.transformers as paged
from kv_cache_common import (
    Request,
    Results,
    Watch,
    baseline_package,
    committed,
    merge_base,
    mixed,
    serve,
    smollm2,
    tiny,
)

WORKLOADS = {"smollm2": ((16, 512), (16, 256)), "tiny": ((8, 128), (8, 64))}


def probe(batcher: Any) -> Any:
    """What `Watch` reads: rows, tokens held, and the paged cache's memory."""
    adapter = batcher._incremental
    per_token = getattr(getattr(adapter, "sizes", None), "bytes_per_token", 0)

    def read() -> dict[str, float]:
        seen = {
            "rows": batcher.stats().requests_in_flight,
            "held": float(adapter._planner.lengths.sum()) * per_token,
        }
        memory = adapter.memory_stats() if hasattr(adapter, "sizes") else None
        if memory is not None:
            seen["used"] = memory.blocks_used * memory.bytes_per_block
            seen["allocated"] = (memory.blocks_used + memory.blocks_cached) * memory.bytes_per_block
            seen["committed"] = committed(adapter._cache)
        return seen

    return read


def run_paged(model: Any, requests: list[Request], memory: bool = True, **settings: Any) -> Any:
    """``requests`` through a paged batcher; ``memory``: watch its memory too (else only its
    rows, as the slot cache's are, so that both pay the same for being watched)."""
    batcher = paged.causal_lm_batcher(model, eos_token_id=None, **settings)
    watch = (
        Watch(probe(batcher), "allocated", interval=0.02)
        if memory
        else Watch(probe_rows(batcher), "rows", interval=0.02)
    )
    served = serve(batcher, requests, watch)
    served.peak["preempted"] = batcher.stats().requests_preempted
    served.peak["bytes per token"] = batcher._incremental.sizes.bytes_per_token
    return served


def memory_at_peak(model: Any, requests: list[Request], results: Results) -> Any:
    rows = []
    kept = None
    for caching in (False, True):
        served = run_paged(model, requests, max_batch_size=len(requests), prefix_caching=caching)
        peak = served.peak
        held = peak["peak held"]
        rows.append(
            [
                "on" if caching else "off",
                f"{peak['peak rows']:.0f}",
                f"{held / 2**20:.2f} MiB",
                f"{peak['peak used'] / held:.3f}",
                f"{peak['peak allocated'] / held:.3f}",
                f"{peak['peak committed'] / held:.3f}",
            ]
        )
        kept = kept or served
    per_token = kept.peak["bytes per token"]
    length = min(1024, paged_context(model))
    reserved = len(requests) * (length + 1) * per_token
    results.table(
        "1. KV memory at its peak over what the held tokens need at their peak",
        [
            "prefix caching",
            "rows at once",
            "held tokens need (peak)",
            "blocks held by rows",
            "blocks held and cached",
            "pages resident",
        ],
        rows,
        note=(
            f"{len(requests)} requests at once; each ratio is a peak over the peak of what the "
            "rows' tokens need. The slot cache for the same rows at "
            f"max_length={length:,} reserves {reserved / 2**20:.0f} MiB."
        ),
    )
    return kept


def paged_context(model: Any) -> int:
    """The model's context, as the paged cache takes it by default."""
    from hibachi.integrations.transformers._kv_memory import model_context

    return model_context(model)


def same_memory(model: Any, requests: list[Request], ref: str, results: Results) -> None:
    per_token = paged.CausalLMAdapter(model, slots=1, max_length=64).sizes.bytes_per_token
    length = min(1024, paged_context(model))
    budget = 16 * length * per_token
    slots = baseline_package(ref).causal_lm_batcher(
        model, max_batch_size=16, max_length=length, eos_token_id=None
    )
    before = serve(slots, requests, Watch(probe_rows(slots), "rows", interval=0.02))
    after = run_paged(model, requests, memory=False, max_batch_size=64, kv_cache_bytes=budget)
    rows = [
        [
            f"slot cache ({ref}), 16 x {length:,}",
            f"{before.peak['peak rows']:.0f}",
            f"{before.tokens_per_s:.1f}",
            "1.00",
            "1.00",
        ],
        [
            f"paged, kv_cache_bytes={budget:,}",
            f"{after.peak['peak rows']:.0f}",
            f"{after.tokens_per_s:.1f}",
            f"{after.peak['peak rows'] / before.peak['peak rows']:.2f}",
            f"{after.tokens_per_s / before.tokens_per_s:.2f}",
        ],
    ]
    results.table(
        f"2. The same memory: 16 rows x {length:,} tokens of keys and values",
        ["cache", "rows at once", "tokens/s", "rows vs slot", "tokens/s vs slot"],
        rows,
        note=f"same tokens: {'yes' if before.tokens == after.tokens else 'NO'}; "
        f"paged preemptions: {after.peak['preempted']:.0f}",
    )


def probe_rows(batcher: Any) -> Any:
    return lambda: {"rows": batcher.stats().requests_in_flight}


def quarter(model: Any, requests: list[Request], ample: Any, check: int, results: Results) -> None:
    per_token = ample.peak["bytes per token"]
    budget = int(ample.peak["peak held"] / 4)
    tight = run_paged(model, requests, max_batch_size=len(requests), kv_cache_bytes=budget)
    same = sum(a == b for a, b in zip(ample.tokens, tight.tokens, strict=True))
    wanted = [_generate(model, r) for r in requests[:check]]
    matched = sum(w == t for w, t in zip(wanted, tight.tokens, strict=False))
    results.table(
        "3. A quarter of the peak: preempted and recomputed, the same tokens",
        [
            "budget",
            "completed",
            "same tokens as with room",
            "preemptions",
            f"= generate() (first {check})",
            "tokens/s",
        ],
        [
            [
                f"{budget:,} B ({budget // per_token:,} tokens)",
                f"{len(tight.tokens)}",
                f"{same}/{len(requests)}",
                f"{tight.peak['preempted']:.0f}",
                f"{matched}/{check}",
                f"{tight.tokens_per_s:.1f}",
            ]
        ],
    )


def _generate(model: Any, request: Request) -> list[int]:
    prompt = torch.tensor(request.prompt)[None]
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=request.budget,
        min_new_tokens=request.budget,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return [int(t) for t in out[0, prompt.shape[1] :]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=WORKLOADS, default="smollm2")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--check", type=int, default=0, help="requests checked against generate()")
    parser.add_argument("--sections", default="1,2,3", help="which sections to run (1,2,3)")
    parser.add_argument("--baseline", default=None, help="a git ref (default: the slot cache)")
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    model, _ = smollm2() if args.model == "smollm2" else tiny()
    prompts, budgets = WORKLOADS[args.model]
    vocab = int(model.config.vocab_size)
    requests = mixed(args.requests, prompts, budgets, vocab)
    results = Results(
        f"Memory that follows the tokens ({args.model}, {args.requests} mixed requests)",
        (__doc__ or "").split("Usage:")[0].split("\n", 2)[2].strip(),
    )
    sections = {int(part) for part in args.sections.split(",")}
    ample = memory_at_peak(model, requests, results) if sections & {1, 3} else None
    if 2 in sections:
        same_memory(model, requests, args.baseline or merge_base(), results)
    if 3 in sections:
        quarter(model, requests, ample, args.check, results)
    if args.results:
        results.write(f"kv_cache_memory_{args.model}")


if __name__ == "__main__":
    main()
