"""The hop: what `FeedforwardBatcher` adds to a lone item's latency.

One caller awaits its items one after the other, so every batch holds one
item and nothing overlaps: the caller's wall time per item is the model
call's wall time plus the hop (``run()``'s checks, the engine's wake-up,
picking the batch, stacking it, splitting the output, the answer's way back
to the event loop). Per item, the hop is the caller's wall time (``await
batcher.run(x)``, input already built) minus the model call's own wall time,
timed inside the model. Prints the median over the items of each round, for:

- ``numpy``: a lone float32 array of 64 values, ``batch * 2``;
- ``torch-dict``: a dict of two padded 1-D int64 tensors of 16-48 tokens (as
  a tokenizer gives them), a cheap pooling of them: the embedders' input path;
- ``minilm``: all-MiniLM-L6-v2 on texts of 4-120 words, with PyTorch on
  ``--threads`` threads (needs the ``bench`` extra).

``--baseline SRC`` compares with another hibachi in the same process: the
package in folder ``SRC`` (``git archive <commit> src | tar -x -C /tmp/old``
gives ``/tmp/old/src``) is imported under another name, and the two take
turns round by round, so that both see the same load. Each round's
difference of medians is printed, and the median of those.

Usage: python benchmarks/feedforward_latency.py [--models numpy,torch-dict,minilm]
       [--items 200] [--rounds 3] [--threads 1] [--baseline SRC]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import hibachi

_clock = time.perf_counter


class Timed:
    """The model, timing each of its calls."""

    def __init__(self, model: Callable[[Any], Any]) -> None:
        self.model = model
        self.seconds: list[float] = []

    def __call__(self, batch: Any) -> Any:
        start = _clock()
        output = self.model(batch)
        self.seconds.append(_clock() - start)
        return output


async def hops(
    package: ModuleType, model: Callable[[Any], Any], inputs: list[Any], **options: Any
) -> list[float]:
    """Per input after the first: the caller's wall time minus the model call's, seconds."""
    timed = Timed(model)
    walls = []
    async with package.FeedforwardBatcher(timed, **options) as batcher:
        for x in inputs:
            start = _clock()
            await batcher.run(x)
            walls.append(_clock() - start)
    return [wall - model for wall, model in zip(walls[1:], timed.seconds[1:], strict=True)]


def numpy_workload(items: int) -> tuple[Callable[[Any], Any], list[Any], dict[str, Any]]:
    xs = [np.full(64, i, np.float32) for i in range(items)]
    return (lambda batch: batch * 2), xs, {}


def torch_dict_workload(items: int) -> tuple[Callable[[Any], Any], list[Any], dict[str, Any]]:
    import torch

    generator = np.random.default_rng(0)

    def tokens(n: int) -> dict[str, Any]:
        ids = torch.from_numpy(generator.integers(1, 30_000, n))
        return {"input_ids": ids, "attention_mask": torch.ones(n, dtype=torch.int64)}

    def model(batch: dict[str, Any]) -> Any:
        mask = batch["attention_mask"]
        pooled = (batch["input_ids"] * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
        return pooled.expand(-1, 8).float()

    xs = [tokens(int(n)) for n in generator.integers(16, 49, items)]
    return model, xs, {"pad_value": {"input_ids": 0, "attention_mask": 0}}


def minilm_workload(items: int) -> tuple[Callable[[Any], Any], list[Any], dict[str, Any]]:
    from hibachi._bench.models.minilm import PAD_VALUE, load_minilm, make_texts

    minilm = load_minilm("cpu")
    xs = [minilm.tokenize(text) for text in make_texts(items, (4, 120), 0)]
    return minilm, xs, {"pad_value": PAD_VALUE}


WORKLOADS = {"numpy": numpy_workload, "torch-dict": torch_dict_workload, "minilm": minilm_workload}


def baseline(src: str) -> ModuleType:
    """The hibachi package in folder ``src``, imported as ``hibachi_baseline``."""
    folder = Path(src) / "hibachi"
    spec = importlib.util.spec_from_file_location(
        "hibachi_baseline", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    return package


def median_hop(package: ModuleType, workload: tuple[Any, list[Any], dict[str, Any]]) -> float:
    model, xs, options = workload
    gc.collect()
    return statistics.median(asyncio.run(hops(package, model, xs, **options))) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="numpy,torch-dict,minilm")
    parser.add_argument("--items", type=int, default=200, help="items per round (minilm: /8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--baseline", help="src folder of another hibachi to compare with")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    trees = {"this": hibachi} | ({"baseline": baseline(args.baseline)} if args.baseline else {})
    print(
        f"the hop per lone item (caller wall - model wall), median µs per round; this tree is "
        f"{Path(hibachi.__file__).parent}"
        + (f", baseline {args.baseline}" if args.baseline else "")
    )
    for name in args.models.split(","):
        workload = WORKLOADS[name](args.items // 8 if name == "minilm" else args.items)
        medians: dict[str, list[float]] = {tree: [] for tree in trees}
        for i in range(args.rounds):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for tree in order:
                medians[tree].append(median_hop(trees[tree], workload))
        for tree, figures in medians.items():
            rounds = " ".join(f"{m:.0f}" for m in figures)
            print(
                f"  {name:<11} {tree:<15} {statistics.median(figures):7.0f} µs  (rounds: {rounds})"
            )
        if args.baseline:
            diffs = [a - b for a, b in zip(medians["this"], medians["baseline"], strict=True)]
            rounds = " ".join(f"{d:+.0f}" for d in diffs)
            print(
                f"  {name:<11} {'this - baseline':<15} {statistics.median(diffs):+7.0f} µs  "
                f"(rounds: {rounds})"
            )


if __name__ == "__main__":
    main()
