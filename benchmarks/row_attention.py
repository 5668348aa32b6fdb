"""Decode attention split into runs of rows (`_row_attention`) against one read of them all.

For each model (the quick and full presets' Llama, and a wider one) and each
spread of row lengths, 8 rows are prefilled, then decode steps alternate
between the adapter as it is (split by its rule), split at every row
(``split_cost`` 0) and never split, ``--steps`` steps each, ``--repeat`` times;
the figures are medians of µs per decode step over those blocks, in one run.

``--calibrate`` first times one ``sdpa`` decode call (8 heads of 64) at a few
key lengths: the fixed cost of a call over the cost of one key element is
what a split must save to pay (``transformers.ROW_SPLIT_ELEMENTS``).

Usage: python benchmarks/row_attention.py [--steps 10] [--repeat 5] [--calibrate]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import numpy as np
import torch

from hibachi._bench.models.llama import build_llama
from hibachi._bench.settings import preset
from hibachi.integrations import transformers as adapter_module
from hibachi.integrations.transformers import _row_attention

SPREADS = {
    "16..1024": [512, 16, 1024, 64, 256, 32, 768, 128],
    "2 long 6 short": [1024, 16, 24, 1000, 32, 16, 40, 20],
    "all 512": [512] * 8,
    "500..520": [505, 517, 500, 520, 511, 503, 514, 508],
    "16..64": [40, 16, 64, 24, 56, 32, 48, 20],
}


def models() -> dict[str, Any]:
    quick, full = preset("quick").generation, preset("full").generation
    wide = dataclasses.replace(full, hidden=1024, layers=2, heads=16)
    return {
        f"quick (hidden {quick.hidden}, {quick.layers} layers)": build_llama(quick, "cpu", 0),
        f"full (hidden {full.hidden}, {full.layers} layers)": build_llama(full, "cpu", 0),
        f"wide (hidden {wide.hidden}, {wide.layers} layers)": build_llama(wide, "cpu", 0),
    }


def prefill(adapter: Any, lengths: list[int]) -> torch.Tensor:
    tokens = []
    for slot, length in enumerate(lengths):
        prompt = torch.randint(2, 1000, (1, length))
        mask = torch.ones((1, length), dtype=torch.bool)
        tokens.append(adapter.step(prompt, mask, np.array([slot]), [None]))
    return torch.cat(tokens)


def block(adapter: Any, token: torch.Tensor, steps: int) -> tuple[float, torch.Tensor]:
    rows = len(token)
    slots, options = np.arange(rows), [None] * rows
    ones = torch.ones((rows, 1), dtype=torch.bool)
    start = time.perf_counter()
    for _ in range(steps):
        token = adapter.step(token.reshape(rows, 1), ones, slots, options)
    return (time.perf_counter() - start) / steps, token


def compare(model: Any, lengths: list[int], steps: int, repeat: int) -> dict[str, float]:
    max_length = max(lengths) + 3 * steps * repeat + 2
    adapter = adapter_module.CausalLMAdapter(model, slots=len(lengths), max_length=max_length)
    rule = adapter._segmenter
    every = _row_attention.Segmenter(0)
    variants = {
        "one read (longest row)": None,
        "split by the rule": rule,
        "split at every row": every,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        token = prefill(adapter, lengths)
        block(adapter, token, 2)  # warm
        for _ in range(repeat):
            for name, segmenter in variants.items():
                adapter._segmenter = segmenter
                seconds, token = block(adapter, token, steps)
                times[name].append(seconds)
    adapter._segmenter = rule
    return {name: statistics.median(t) for name, t in times.items()}


def calibrate() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    heads, dim = 8, 64
    print(f"\none sdpa decode call, 1 row, {heads} heads of {dim} (median of 200):")
    for length in (16, 128, 512, 1024, 2048):
        q = torch.randn(1, heads, 1, dim)
        k, v = torch.randn(1, heads, length, dim), torch.randn(1, heads, length, dim)
        mask = torch.zeros(1, 1, 1, length)
        samples = []
        for _ in range(200):
            start = time.perf_counter()
            sdpa_attention_forward(module, q, k, v, mask)
            samples.append(time.perf_counter() - start)
        median = statistics.median(samples)
        per = median / (2 * heads * dim * length)
        print(f"  {length:5} keys: {median * 1e6:7.1f} µs  ({per * 1e9:.3f} ns per key element)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--spreads", default=",".join(SPREADS), help="comma-separated names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.calibrate:
        calibrate()
    for title, model in models().items():
        print(f"\n{title}: µs per decode step of 8 rows (median of {args.repeat} blocks)")
        for spread in args.spreads.split(","):
            figures = compare(model, SPREADS[spread], args.steps, args.repeat)
            base = figures["one read (longest row)"]
            row = "  ".join(f"{k} {v * 1e6:8.0f} ({v / base:.2f}x)" for k, v in figures.items())
            print(f"  {spread:<16} {row}")


if __name__ == "__main__":
    main()
