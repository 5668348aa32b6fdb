"""Where one decode step's time goes: hibachi's KV-cache adapter next to the bare forward.

The quick preset's random Llama, or with ``--model smollm2`` the bench's real
model (SmolLM2-135M-Instruct). ``--rows`` rows each hold a prompt of
``--length`` tokens, then decode ``--steps`` tokens. Prints the microseconds
per decode step of

- the bare forward: ``model.forward`` on (rows, 1) with a ``StaticCache`` of
  ``--max-length`` tokens, and with a ``DynamicCache`` (what ``generate()`` uses),
  split into transformers' own mask building, the cache writes, and the rest;
- hibachi's adapter: ``CausalLMAdapter.step`` split into its pieces (mask,
  position planning, cache writes, the forward, sampling; "rest of step" is
  whatever no piece names);
- hibachi's engine: a batcher serving the same rows, its busy time per step
  outside ``CausalLMAdapter.step`` (scheduling, staging inputs, delivering tokens).

Each figure is the median over ``--repeat`` passes of the mean over ``--steps`` steps.

``--layers``: inside the forward instead, layer by layer, the bare forward with
generate()'s ``DynamicCache`` and hibachi's adapter alternating pass by pass on
the same rows: the decoder layers' attention (the cache writes and the
attention kernel included), their MLPs, their norms and residuals, the LM head,
and the rest of the forward (embedding, rotary, masks, final norm), with
``generate()``'s own time per step beside them.

``--temperature`` (with ``--top-p``, ``--top-k``): the adapter's rows sample,
each with its own seed, so that "sampling" is the sampler's cost per step.

Usage: python benchmarks/decode_step_profile.py [--rows 8] [--length 40] [--steps 200]
       python benchmarks/decode_step_profile.py --model smollm2 --layers --rows 1 --steps 24
       python benchmarks/decode_step_profile.py --model smollm2 --adapter-only --rows 32 \
           --temperature 1 --top-p 0.9
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import transformers
from transformers.cache_utils import DynamicLayer, StaticLayer

from hibachi import AutoregressiveBatcher
from hibachi._bench.methods.streams import serve_with_hibachi
from hibachi._bench.models.language import generation_model
from hibachi._bench.models.llama import build_llama, eos_of
from hibachi._bench.models.requests import make_requests
from hibachi._bench.settings import preset
from hibachi._bench.timing.steps import TimedModel
from hibachi.integrations import transformers as adapter_module
from hibachi.integrations.transformers import _architectures, _kv_cache, _sampler

Spans = defaultdict[str, float]


@contextmanager
def timed(owner: Any, name: str, label: str, spans: Spans) -> Iterator[None]:
    """Within the block, calls of ``owner.name`` add their time to ``spans[label]``."""
    original = getattr(owner, name, None)
    if original is None:  # a piece this version does not have
        yield
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spans[label] += time.perf_counter() - start

    own = name in vars(owner)  # else inherited, or a bound method of the owner's class
    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        if own:
            setattr(owner, name, vars(owner).get(name) and original)
        else:
            delattr(owner, name)


@contextmanager
def all_timed(pieces: list[tuple[Any, str, str]], spans: Spans) -> Iterator[None]:
    if not pieces:
        yield
        return
    (owner, name, label), rest = pieces[0], pieces[1:]
    with timed(owner, name, label, spans), all_timed(rest, spans):
        yield


def bare_pieces(model: Any, spans: Spans) -> list[tuple[Any, str, str]]:
    llama = transformers.models.llama.modeling_llama
    return [
        (model, "forward", "forward (model.forward)"),
        (llama, "create_causal_mask", "  transformers' mask"),
        (StaticLayer, "update", "  cache writes"),
        (DynamicLayer, "update", "  cache writes"),
    ]


def optional_module(name: str) -> Any:
    """``hibachi.integrations.<name>``, or None in a version without it."""
    try:
        return importlib.import_module(f"hibachi.integrations.{name}")
    except ImportError:
        return None


def adapter_pieces(adapter: Any) -> list[tuple[Any, str, str]]:
    """hibachi's pieces by name; a name this version lacks is skipped."""
    llama = transformers.models.llama.modeling_llama
    decode_masks = optional_module("_decode_masks")
    row_attention = optional_module("_row_attention")
    return [
        (getattr(decode_masks, "DecodeMasks", None), "masks", "  mask build"),
        (getattr(row_attention, "Segmenter", None), "segments", "  row split"),
        (adapter, "step", "step (CausalLMAdapter.step)"),
        (adapter, "_plan", "  position planning"),
        (getattr(adapter, "_planner", None), "decode", "  position planning"),
        (getattr(adapter, "_planner", None), "layout", "  position planning"),
        (_architectures.ServingPlan, "masks", "  mask build"),
        (adapter_module, "_masks", "  mask build"),
        (adapter.model, "forward", "  forward (model.forward)"),
        (llama, "create_causal_mask", "    transformers' mask"),
        (_kv_cache._SlotLayer, "update", "    cache writes"),
        (_sampler.Sampler, "pick", "  sampling"),
    ]


@contextmanager
def layer_clock(model: Any, spans: Spans) -> Iterator[None]:
    """Within the block, each forward adds the time of its pieces to ``spans``: the whole
    forward, the decoder layers, their attention and MLP modules, the LM head."""
    layers = model.base_model.layers
    parts = [(model, "forward"), (model.lm_head, "lm head")]
    for layer in layers:
        parts += [(layer, "layers"), (layer.self_attn, "attention"), (layer.mlp, "mlp")]
    starts: dict[int, float] = {}

    def pre(module: Any, args: Any, kwargs: Any) -> None:
        starts[id(module)] = time.perf_counter()

    def post(label: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            spans[label] += time.perf_counter() - starts.pop(id(module))

        return hook

    handles = []
    for module, label in parts:
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post(label), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def layer_figures(spans: Spans, layers: int) -> dict[str, float]:
    """``spans`` (seconds per step) as the rows of the per-layer table."""
    inside = spans["forward"] - spans["layers"] - spans["lm head"]
    return {
        "whole step": spans["whole step"],
        "outside model.forward": spans["whole step"] - spans["forward"],
        "model.forward": spans["forward"],
        "  embedding, rotary, masks, final norm": inside,
        f"  {layers} decoder layers": spans["layers"],
        "    attention (cache writes, kernel)": spans["attention"],
        "    MLP": spans["mlp"],
        "    norms and residuals": spans["layers"] - spans["attention"] - spans["mlp"],
        "  LM head": spans["lm head"],
        "per layer: attention": spans["attention"] / layers,
        "per layer: all of it": spans["layers"] / layers,
    }


def generate_step(model: Any, rows: int, length: int, steps: int) -> float:
    """Seconds per decode step of ``model.generate()`` itself (greedy, no padding)."""
    ids = torch.randint(2, 1000, (rows, length))
    mask = torch.ones_like(ids)

    def run(new: int) -> float:
        start = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new)
        return time.perf_counter() - start

    return (run(steps + 1) - run(1)) / steps


def compare_layers(model: Any, args: argparse.Namespace, steps: int) -> None:
    """The per-layer table: generate()'s DynamicCache forward and hibachi's adapter,
    alternating pass by pass, medians of ``--repeat`` passes."""
    rows, length = args.rows, args.length
    adapter = adapter_module.CausalLMAdapter(model, slots=rows, max_length=args.max_length)
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "hibachi": [], "generate": []}
    for _ in range(args.repeat):
        for name in ("bare", "hibachi"):
            spans: Spans = defaultdict(float)
            with layer_clock(model, spans):
                if name == "bare":
                    cache = transformers.DynamicCache(config=model.config)
                    bare_decode(model, cache, rows, length, steps, spans)
                else:
                    adapter_decode(adapter, rows, length, steps, spans)
            per_step = defaultdict(float, {k: v / steps for k, v in spans.items()})
            runs[name].append(layer_figures(per_step, len(model.base_model.layers)))
        with torch.inference_mode():
            runs["generate"].append({"whole step": generate_step(model, rows, length, steps)})
    medians = {
        name: {k: statistics.median(p[k] for p in passes) for k in passes[0]}
        for name, passes in runs.items()
    }
    bare, mine = medians["bare"], medians["hibachi"]
    print(f"\n{'µs per decode step':<42} {'DynamicCache':>12} {'hibachi':>12} {'difference':>11}")
    for label in bare:
        print(
            f"  {label:<40} {bare[label] * 1e6:12.1f} {mine[label] * 1e6:12.1f} "
            f"{(mine[label] - bare[label]) * 1e6:+11.1f}"
        )
    print(
        f"  {'generate() itself, whole step':<40} {medians['generate']['whole step'] * 1e6:12.1f}"
    )


def bare_decode(model: Any, cache: Any, rows: int, length: int, steps: int, spans: Spans) -> None:
    ids = torch.randint(2, 1000, (rows, length))
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        spans.clear()  # the prefill's figures are not a decode step's
        for step in range(steps):
            positions = torch.full((rows, 1), length + step)
            start = time.perf_counter()
            out = model(
                input_ids=token, past_key_values=cache, position_ids=positions, use_cache=True
            )
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            spans["whole step"] += time.perf_counter() - start


def adapter_decode(
    adapter: Any, rows: int, length: int, steps: int, spans: Spans, sampling: Any = None
) -> None:
    """``steps`` decode steps of ``rows`` rows; every row greedy, or with ``sampling``'s
    settings (each its own seed)."""
    slots = torch.arange(rows).numpy()
    options = [None if sampling is None else {**sampling, "seed": row} for row in range(rows)]
    prompt = torch.randint(2, 1000, (rows, length))
    token = adapter.step(prompt, torch.ones((rows, length), dtype=torch.bool), slots, options)
    ones = torch.ones((rows, 1), dtype=torch.bool)
    spans.clear()  # the prefill's figures are not a decode step's
    for _ in range(steps):
        start = time.perf_counter()
        token = adapter.step(token.reshape(rows, 1), ones, slots, options)
        spans["whole step"] += time.perf_counter() - start
    for slot in range(rows):
        adapter.release(slot)


def engine_pieces() -> list[tuple[Any, str, str]]:
    from hibachi._autoregressive.scheduler import Scheduler
    from hibachi._autoregressive.slots import SlotLayout
    from hibachi._backends._array_api import TorchBackend
    from hibachi._core.delivery import Channels

    return [
        (Scheduler, "schedule", "schedule"),
        (Scheduler, "model_inputs", "model_inputs"),
        (Scheduler, "check_output", "check_output"),
        (TorchBackend, "to_storage", "  to_storage (copy)"),
        (Scheduler, "apply", "apply (stop check, record, deliver)"),
        (Scheduler, "_count_step", "  counters"),
        (SlotLayout, "record", "  record"),
        (TorchBackend, "rows_equal", "  stop check"),
        (TorchBackend, "unbind", "  unbind"),
        (Scheduler, "_deliver", "  deliver"),
        (Channels, "flush", "flush (wake the event loop)"),
    ]


def engine_outside(model: Any, rows: int, length: int, steps: int) -> dict[str, float]:
    """A batcher serving ``rows`` clients: seconds per step outside the adapter's step."""
    adapter = adapter_module.CausalLMAdapter(model, slots=rows, max_length=length + steps + 1)
    timed_model = TimedModel(adapter)
    eos = eos_of(preset("quick").generation)
    batcher = AutoregressiveBatcher(
        timed_model,
        stop_token=torch.tensor(-1),
        pad_value=torch.tensor(eos),
        max_batch_size=rows,
    )
    requests = make_requests(rows, (length, length), (steps, steps), 1000, 0)
    spans: Spans = defaultdict(float)
    with all_timed(engine_pieces(), spans):
        outcome = asyncio.run(serve_with_hibachi(batcher, requests, "cpu"))
    share = timed_model.share()
    outside = share.busy_seconds - share.model_seconds
    figures = {k: v / share.steps for k, v in spans.items()}
    named = sum(v for k, v in figures.items() if not k.startswith(" "))
    figures["the rest (waiting for the GIL)"] = outside / share.steps - named
    figures["engine, outside the step"] = outside / share.steps
    return {**figures, "tokens/s": outcome.tokens_per_s}


def measure(
    run: Callable[[Spans], None], pieces: list[tuple[Any, str, str]], steps: int, repeat: int
) -> dict[str, float]:
    passes: list[dict[str, float]] = []
    for _ in range(repeat):
        spans: Spans = defaultdict(float)
        with all_timed(pieces, spans):
            run(spans)
        passes.append({k: v / steps for k, v in spans.items()})
    return {k: statistics.median(p.get(k, 0.0) for p in passes) for k in passes[0]}


def show(title: str, figures: dict[str, float], whole: str) -> None:
    print(f"\n{title}")
    total = figures[whole]
    for label, seconds in figures.items():
        print(f"  {label:<34} {seconds * 1e6:9.1f} µs  {seconds / total:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=40, help="prompt tokens per row")
    parser.add_argument("--max-length", type=int, default=96, help="the caches' length")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--model", choices=("quick", "smollm2"), default="quick", help="which model (quick)"
    )
    parser.add_argument(
        "--layers", action="store_true", help="inside the forward, layer by layer (see above)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="the adapter's rows sample at this temperature, each with its own seed (0: greedy)",
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="with --temperature")
    parser.add_argument("--top-k", type=int, default=0, help="with --temperature")
    parser.add_argument(
        "--engine-only", action="store_true", help="only the engine's pieces (a batcher serving)"
    )
    parser.add_argument(
        "--adapter-only", action="store_true", help="only the adapter's pieces (no engine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "smollm2":
        size = preset("quick").generation
        model = generation_model(dataclasses.replace(size, model="smollm2"), "cpu", 0).model
        name = "SmolLM2-135M-Instruct"
    else:
        model, name = build_llama(preset("quick").generation, "cpu", 0), "quick preset's Llama"
    rows, length, steps = args.rows, args.length, args.steps
    steps = min(steps, args.max_length - length - 1)
    print(
        f"{name}, {rows} rows, prompts of {length}, {steps} decode steps, "
        f"max_length {args.max_length}, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeat} passes"
    )
    if args.layers:
        compare_layers(model, args, steps)
        return

    def static(spans: Spans) -> None:
        cache = transformers.StaticCache(config=model.config, max_cache_len=args.max_length)
        bare_decode(model, cache, rows, length, steps, spans)

    def dynamic(spans: Spans) -> None:
        cache = transformers.DynamicCache(config=model.config)
        bare_decode(model, cache, rows, length, steps, spans)

    if args.engine_only:
        show_engine(model, rows, length, steps, args.repeat)
        return
    adapter = adapter_module.CausalLMAdapter(model, slots=rows, max_length=args.max_length)

    def hibachi(spans: Spans) -> None:
        adapter_decode(adapter, rows, length, steps, spans, sampling_options(args))

    if not args.adapter_only:
        static_figures = measure(static, bare_pieces(model, defaultdict(float)), steps, args.repeat)
        show("bare forward, StaticCache", static_figures, "whole step")
        show(
            "bare forward, DynamicCache (generate()'s)",
            measure(dynamic, bare_pieces(model, defaultdict(float)), steps, args.repeat),
            "whole step",
        )
    figures = measure(hibachi, adapter_pieces(adapter), steps, args.repeat)
    named = sum(v for k, v in figures.items() if k.startswith("  ") and not k.startswith("    "))
    figures["  rest of step"] = figures["step (CausalLMAdapter.step)"] - named
    forward = figures["  forward (model.forward)"]
    figures["adapter outside model.forward"] = figures["step (CausalLMAdapter.step)"] - forward
    show("hibachi CausalLMAdapter.step", figures, "whole step")
    if args.adapter_only:
        return
    rate = show_engine(model, rows, length, steps, args.repeat)
    bare = rows / static_figures["whole step"]
    print(f"\nhibachi: {rate:,.0f} tokens/s (the bare StaticCache forward alone: {bare:,.0f})")


def sampling_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The rows' sampling settings from the command line, or None: greedy."""
    if not args.temperature:
        return None
    return {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}


def show_engine(model: Any, rows: int, length: int, steps: int, repeat: int) -> float:
    """Print the engine's pieces (medians of ``repeat`` runs); the best tokens/s."""
    engine = [engine_outside(model, rows, length, steps) for _ in range(repeat)]
    rate = max(e.pop("tokens/s") for e in engine)
    medians = {k: statistics.median(e[k] for e in engine) for k in engine[0]}
    show("hibachi engine, per step outside adapter.step", medians, "engine, outside the step")
    print(f"hibachi: {rate:,.0f} tokens/s")
    return rate


if __name__ == "__main__":
    main()
