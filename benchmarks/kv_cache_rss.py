"""The KV cache's part of the memory of a server of SmolLM2-135M-Instruct with 32 clients.

What ``hibachi serve`` builds for its language model — a ``CausalLMAdapter``
of ``max_batch_size`` 32 under an ``AutoregressiveBatcher`` — serves 32
clients, each sending ``--per-client`` chat requests one after another (the
model's chat template around a short question), up to ``--tokens`` new tokens
each, greedy, float32 on the CPU. Two caches, each in a process of its own:

- the slot cache of ``--baseline`` (a git ref; by default the last commit of
  ``main`` before the paged merge) at ``max_length=1024``, the length ``hibachi serve`` used to
  default to for memory's sake;
- the paged cache at the model's whole context (8,192 tokens) and the
  default budget (``kv_cache_bytes=None``).

The KV part is the process's resident anonymous memory (``RssAnon``) at its
peak while serving, less what it was before the cache was made (the model
loaded and run once on a batch of 32 chat prompts, without the cache, so that
the activations' memory is counted before); sampled every 10 ms. Beside it,
the bytes of the cache's own tensors resident at their peak (the ``Rss`` of
the paged cache's lanes; the slot cache's are all resident, reserved).

Usage: python benchmarks/kv_cache_rss.py [--per-client 2] [--tokens 64] [--results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from kv_cache_common import (
    Request,
    Results,
    Watch,
    baseline_package,
    committed,
    merge_base,
    rss_anon,
    serve,
    smollm2,
)
from kv_cache_speed import QUESTIONS

CLIENTS = 32


def measure(which: str, ref: str, per_client: int, tokens: int) -> dict[str, Any]:
    """In this process: serve the chat load with ``which`` cache; the memory figures."""
    import hibachi
    import hibachi.integrations.transformers as paged

    model, tokenizer = smollm2()
    eos = int(tokenizer.eos_token_id)
    _warm(model, [_chat(tokenizer, i) for i in range(CLIENTS)], eos)
    before = rss_anon()
    if which == "paged":
        adapter: Any = paged.CausalLMAdapter(model, slots=CLIENTS)
        batcher = hibachi.AutoregressiveBatcher
    else:
        package = baseline_package(ref)
        adapter = package.CausalLMAdapter(model, slots=CLIENTS, max_length=1024)
        batcher = sys.modules["hibachi_baseline"].AutoregressiveBatcher

    def make() -> Any:
        return batcher(
            adapter,
            stop_token=torch.tensor(eos),
            pad_value=torch.tensor(eos),
            max_batch_size=CLIENTS,
        )

    work = [
        Request(_chat(tokenizer, i), tokens, arrival=0.001 * i) for i in range(CLIENTS * per_client)
    ]

    def probe() -> dict[str, float]:
        seen = {"rss": float(rss_anon())}
        if which == "paged":
            seen["cache"] = committed(adapter._cache)
        return seen

    served = serve(make(), work, Watch(probe, "rss", interval=0.01))
    held = [len(r.prompt) + len(t) - 1 for r, t in zip(work, served.tokens, strict=True)]
    per_token = 30 * 2 * 3 * 64 * 4  # SmolLM2's keys and values per token, float32
    reserved = CLIENTS * 1025 * per_token
    return {
        "kv": served.peak["peak rss"] - before,
        "cache": served.peak.get("peak cache", reserved),
        "before": before,
        "tokens_per_s": served.tokens_per_s,
        "mean_held": sum(held) / len(held),
        "max_length": adapter.max_length,
    }


def _warm(model: Any, prompts: list[list[int]], pad: int) -> None:
    """One forward pass over a left-padded batch of ``prompts``, without the cache."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, use_cache=False)


def _chat(tokenizer: Any, i: int) -> list[int]:
    messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(ids if isinstance(ids, list) else ids["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--baseline", default=None, help="a git ref (default: the slot cache)")
    parser.add_argument("--only", choices=("slots", "paged"), help=argparse.SUPPRESS)
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    ref = args.baseline or merge_base()
    if args.only:
        print(json.dumps(measure(args.only, ref, args.per_client, args.tokens)))
        return
    figures = {}
    for which in ("slots", "paged"):
        command = [sys.executable, __file__, "--only", which, "--baseline", ref]
        command += ["--per-client", str(args.per_client), "--tokens", str(args.tokens)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        figures[which] = json.loads(out.stdout.strip().splitlines()[-1])
    results = Results(
        "The KV cache's part of a SmolLM2 server's memory, 32 clients",
        (__doc__ or "").split("Usage:")[0].split("\n", 2)[2].strip(),
    )
    slots, paged = figures["slots"], figures["paged"]
    rows = [
        [
            f"slot cache ({ref})" if which == "slots" else "paged",
            f"{figure['max_length']:,}",
            f"{figure['kv'] / 2**20:,.0f} MiB",
            f"{slots['kv'] / max(figure['kv'], 1):.1f}x",
            f"{figure['cache'] / 2**20:,.0f} MiB",
            f"{slots['cache'] / max(figure['cache'], 1):.1f}x",
            f"{figure['before'] / 2**20:,.0f} MiB",
            f"{figure['mean_held']:.0f}",
            f"{figure['tokens_per_s']:.1f}",
        ]
        for which, figure in (("slots", slots), ("paged", paged))
    ]
    results.table(
        "resident memory while serving",
        [
            "cache",
            "max_length",
            "KV part (peak RssAnon over before)",
            "smaller by",
            "cache tensors resident (peak)",
            "smaller by",
            "RssAnon before",
            "mean tokens a request held",
            "tokens/s",
        ],
        rows,
        note=f"{CLIENTS} clients x {args.per_client} chat requests, up to {args.tokens} tokens.",
    )
    if args.results:
        results.write("kv_cache_rss")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
