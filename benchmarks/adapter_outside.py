"""The adapter's decode step against the bare forward it makes: what the adapter adds, unprofiled.

The quick preset's Llama, ``--rows`` rows with prompts of ``--length`` tokens.
Blocks of ``--steps`` decode steps through ``CausalLMAdapter.step`` (each block
from the same lengths) alternate with blocks of the bare ``model(...)`` call,
then ``argmax``, on the very inputs (positions, masks, cache plan) that one of
the adapter's steps handed the model; the figures are medians over
``--repeat`` blocks of each, in one run, with no timer inside either.
"outside" is the adapter's step less the bare call: planning, masks, the
cache's plan, sampling, restoring state; the cache's writes are in both.

Usage: python benchmarks/adapter_outside.py [--rows 8] [--length 40] [--repeat 41]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from hibachi._bench.llm import build_llama
from hibachi._bench.settings import preset
from hibachi.integrations.transformers import CausalLMAdapter


class Captured:
    """Records the inputs of the adapter's next model call."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.inputs: dict[str, Any] = {}

    def __enter__(self) -> Captured:
        call = self.adapter._call_model

        def capture(inputs: dict[str, Any], masks: Any, *rest: Any) -> Any:
            self.inputs = {**inputs, "attention_mask": masks}
            self.plan = self.adapter._cache.plan
            return call(inputs, masks, *rest)

        self.adapter._call_model = capture
        return self

    def __exit__(self, *exc: object) -> None:
        del self.adapter._call_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=41)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_llama(preset("quick").generation, "cpu", 0)
    rows, length, steps = args.rows, args.length, args.steps
    adapter = CausalLMAdapter(model, slots=rows, max_length=length + steps + 2)
    slots, options = np.arange(rows), [None] * rows
    ones = torch.ones((rows, 1), dtype=torch.bool)
    prompt = torch.randint(2, 1000, (rows, length))
    token = adapter.step(prompt, torch.ones((rows, length), dtype=torch.bool), slots, options)

    def decode(n: int) -> float:
        nonlocal token
        adapter._planner.lengths[:rows] = length + 1
        getattr(adapter._planner, "forget", lambda: None)()  # positions from the lengths
        start = time.perf_counter()
        for _ in range(n):
            token = adapter.step(token.reshape(rows, 1), ones, slots, options)
        return (time.perf_counter() - start) / n

    decode(steps // 2)
    with Captured(adapter) as captured:  # a step in the middle of a block
        decode(1)
    kept = adapter._cache.plan

    def bare(n: int) -> float:
        adapter._cache.plan = captured.plan
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(n):
                model(**captured.inputs).logits[:, -1].argmax(-1)
            seconds = (time.perf_counter() - start) / n
        adapter._cache.plan = kept
        return seconds

    adapter_times, bare_times = [], []
    for _ in range(args.repeat):
        adapter_times.append(decode(steps))
        bare_times.append(bare(steps))
    step, forward = statistics.median(adapter_times), statistics.median(bare_times)
    outside = step - forward
    print(
        f"{rows} rows: adapter step {step * 1e6:.0f} µs, the bare forward and argmax "
        f"{forward * 1e6:.0f} µs, outside {outside * 1e6:.0f} µs ({outside / step:.1%})"
    )


if __name__ == "__main__":
    main()
