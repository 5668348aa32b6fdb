"""Would folding decoding rows into a prefill step save time? One forward against two.

The quick preset's Llama through hibachi's adapter, one torch thread. Times
(medians of ``--repeat``):

- a prefill step of ``--rows`` prompts of ``--width`` tokens;
- a decode step of ``--rows`` rows (one token each, after a prompt of ``--width``);
- one mixed step: those prompts and ``--rows`` decoding rows together, each
  decoding row left-padded to the prefill's width (what one forward for both
  costs under `IncrementalModel`'s (B, W) contract).

Usage: python benchmarks/prefill_mixing.py [--rows 32] [--width 16] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from hibachi._bench.llm import build_llama
from hibachi._bench.settings import preset
from hibachi.integrations import transformers as adapter_module


def timed_step(model: Any, rows: int, width: int, decoding: int, prompt: int, repeat: int) -> float:
    """Seconds of one step over ``rows`` rows of ``width``: the last ``decoding`` of
    them have a prompt of ``prompt`` tokens in already and feed one token (left-padded
    to ``width``)."""
    adapter = adapter_module.CausalLMAdapter(model, slots=rows, max_length=4 * prompt)
    slots, options = torch.arange(rows).numpy(), [None] * rows
    times = []
    for _ in range(repeat):
        if decoding:
            fed = torch.randint(2, 1000, (decoding, prompt))
            ones = torch.ones((decoding, prompt), dtype=torch.bool)
            adapter.step(fed, ones, slots[rows - decoding :], options[:decoding])
        tokens = torch.randint(2, 1000, (rows, width))
        mask = torch.ones((rows, width), dtype=torch.bool)
        mask[rows - decoding :, :-1] = False
        start = time.perf_counter()
        adapter.step(tokens, mask, slots, options)
        times.append(time.perf_counter() - start)
        for slot in range(rows):
            adapter.release(slot)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_llama(preset("quick").generation, "cpu", 0)
    rows, width, repeat = args.rows, args.width, args.repeat
    prefill = timed_step(model, rows, width, 0, width, repeat)
    decode = timed_step(model, rows, 1, rows, width, repeat)
    mixed = timed_step(model, 2 * rows, width, rows, width, repeat)
    print(f"prefill step, {rows} prompts of {width}:      {prefill * 1e3:7.2f} ms")
    print(f"decode step, {rows} rows:                   {decode * 1e3:7.2f} ms")
    print(f"  the two steps:                          {(prefill + decode) * 1e3:7.2f} ms")
    print(f"one mixed step (decoding rows padded):    {mixed * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
