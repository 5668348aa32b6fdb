"""Where a decode step's time goes, per layer of SmolLM2: the paged cache against the slot cache.

``CausalLMAdapter`` of this tree and of ``--baseline`` (a git ref, by default
the last commit of ``main`` before the paged merge, imported beside it), on the same loaded
SmolLM2-135M-Instruct (30 layers, 3 key/value heads of 64, float32, CPU):
``--rows`` rows are prefilled with ``--context`` tokens each, then decode
steps over all of them are timed, ``--steps`` per round, the two versions
alternating over ``--rounds`` rounds. Each step is split into

- the cache's ``update`` (writing the step's keys and values, handing the
  attention its keys and values): per layer;
- the attention call (``sdpa``, or hibachi's per-run split of it): per layer;
- the rest of each decoder layer (projections, MLP, norms): per layer;
- outside the layers (embeddings, head, masks, positions, the adapter's own
  bookkeeping, sampling): per step.

Figures are medians over the rounds of µs per layer (or per step), with the
ratio paged / baseline. ``--gaps`` also times steps after a middle row left
and was not replaced: the paged cache's lanes then have a gap (two runs of
attention), the slot cache moved its last row into the hole (a copy, not
timed here).

Usage: python benchmarks/kv_cache_layers.py [--rows 1 16 32] [--context 128 512] [--results]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import hibachi.integrations.transformers as paged
from kv_cache_common import Results, baseline_package, median, merge_base, smollm2, spread

Spans = defaultdict[str, float]


@contextmanager
def timed(model: Any, package: Any, spans: Spans) -> Iterator[None]:
    """Within the block, time the cache's update, the attention and each decoder layer."""
    cache_module = package._kv_cache
    layer_class = next(
        getattr(cache_module, name)
        for name in ("_LaneLayer", "_SlotLayer")
        if hasattr(cache_module, name)
    )
    update = layer_class.update
    functions = {name: ALL_ATTENTION_FUNCTIONS[name] for name in ALL_ATTENTION_FUNCTIONS}

    def timed_update(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return update(self, *args, **kwargs)
        finally:
            spans["cache update"] += time.perf_counter() - start

    def timing(function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spans["attention"] += time.perf_counter() - start

        return call

    starts: dict[int, float] = {}

    def before(module: Any, args: Any) -> None:
        starts[id(module)] = time.perf_counter()

    def after(module: Any, args: Any, output: Any) -> None:
        spans["decoder layer"] += time.perf_counter() - starts.pop(id(module))

    layers = model.model.layers
    handles = [layer.register_forward_pre_hook(before) for layer in layers]
    handles += [layer.register_forward_hook(after) for layer in layers]
    layer_class.update = timed_update
    for name, function in functions.items():
        ALL_ATTENTION_FUNCTIONS._global_mapping[name] = timing(function)
    try:
        yield
    finally:
        layer_class.update = update
        for name, function in functions.items():
            ALL_ATTENTION_FUNCTIONS._global_mapping[name] = function
        for handle in handles:
            handle.remove()


def prefilled(package: Any, model: Any, rows: int, context: int, gap: bool) -> tuple[Any, Any]:
    """An adapter with ``rows`` rows of ``context`` tokens (one more, released, with ``gap``);
    the slots and last tokens of its decode steps."""
    extra = 1 if gap else 0
    adapter = package.CausalLMAdapter(model, slots=rows + extra, max_length=1024)
    generator = torch.Generator().manual_seed(0)
    last = []
    for slot in range(rows + extra):
        prompt = torch.randint(100, 40000, (1, context), generator=generator)
        mask = torch.ones((1, context), dtype=torch.bool)
        last.append(adapter.step(prompt, mask, np.array([slot]), [None]))
    slots = np.arange(rows + extra)
    if gap:  # a middle row leaves: the paged cache's lanes keep a gap (the slot cache moves
        middle = (rows + extra) // 2  # its last row into the hole, copying its keys)
        adapter.release(middle)
        keep = [i for i in range(rows + extra) if i != middle]
        slots, last = slots[keep], [last[i] for i in keep]
    return adapter, (slots, torch.cat(last)[:, None])


def decode(adapter: Any, state: Any, steps: int) -> float:
    slots, token = state
    ones = torch.ones((len(slots), 1), dtype=torch.bool)
    start = time.perf_counter()
    for _ in range(steps):
        token = adapter.step(token, ones, slots, [None] * len(slots))[:, None]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--context", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gaps", action="store_true")
    parser.add_argument("--baseline", default=None, help="a git ref (default: the slot cache)")
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ref = args.baseline or merge_base()
    model, _ = smollm2()
    base = baseline_package(ref)
    versions = {"baseline": base, "paged": paged}
    layers = len(model.model.layers)
    results = Results(
        "A decode step per layer of SmolLM2: the paged cache against the slot cache",
        (__doc__ or "").split("Usage:")[0].split("\n", 2)[2].strip(),
    )
    table = []
    shapes = [(r, c, False) for r in args.rows for c in args.context]
    shapes += [(r, c, True) for r in args.rows if r > 1 for c in args.context] if args.gaps else []
    for rows, context, gap in shapes:
        figures: dict[str, dict[str, list[float]]] = {v: defaultdict(list) for v in versions}
        states = {v: prefilled(p, model, rows, context, gap) for v, p in versions.items()}
        for _ in range(args.rounds):
            for name, package in versions.items():
                adapter, state = states[name]
                spans: Spans = defaultdict(float)
                with timed(model, package, spans):
                    seconds = decode(adapter, state, args.steps)
                per_layer = 1e6 / (args.steps * layers)
                got = figures[name]
                got["cache update"].append(spans["cache update"] * per_layer)
                got["attention"].append(spans["attention"] * per_layer)
                rest = spans["decoder layer"] - spans["cache update"] - spans["attention"]
                got["rest of layer"].append(rest * per_layer)
                outside = seconds - spans["decoder layer"]
                got["outside layers (per step)"].append(outside * 1e6 / args.steps)
                got["step (ms)"].append(seconds * 1e3 / args.steps)
        for part in figures["paged"]:
            before, after = median(figures["baseline"][part]), median(figures["paged"][part])
            table.append(
                [
                    rows,
                    context,
                    "gap" if gap else "run",
                    part,
                    f"{before:,.1f}",
                    f"{after:,.1f}",
                    spread(figures["paged"][part]),
                    f"{after / before:.2f}" if before else "-",
                ]
            )
    results.table(
        f"µs per layer (per step where named), baseline {ref}",
        ["rows", "context", "lanes", "part", "baseline", "paged", "paged spread", "ratio"],
        table,
        note=f"{args.rounds} rounds of {args.steps} decode steps, {torch.get_num_threads()} "
        "torch threads, max_length=1024 for both.",
    )
    if args.results:
        results.write("kv_cache_layers")


if __name__ == "__main__":
    main()
