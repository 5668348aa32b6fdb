"""What can run beside the model's forward: a decode step with Python work on a second thread.

The bench's Llama (``--preset``) through hibachi's adapter (``CausalLMAdapter.step``,
``--rows`` rows decoding), one step after another on this thread. Beside it, a
second thread is handed ``--work`` µs of pure Python per step through a
``queue.SimpleQueue`` (what a thread that delivers tokens would be handed).
Prints µs per step for each amount of side work, next to the same work done
inline on the stepping thread (what the engine does today), alternating the
variants ``--repeat`` times (medians).

A side variant faster than the inline one means the work hides in the forward's
GIL-free time; equal to the step alone plus the work means it does not.

Usage: python benchmarks/overlap_probe.py [--preset quick] [--rows 8] [--work 0 100 200]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import threading
import time
from collections.abc import Callable

import torch

from hibachi._bench.llm import build_llama
from hibachi._bench.settings import preset
from hibachi.integrations import transformers as adapter_module


def spin(seconds: float) -> None:
    """Pure Python for ``seconds`` (holds the GIL, as delivery's Python does)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin_yielding(seconds: float, slice_s: float = 10e-6) -> None:
    """`spin` in slices, letting go of the GIL between them (``time.sleep(0)``)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        spin(slice_s)
        time.sleep(0)


class Side:
    """A thread that runs each handed amount of work (``work(seconds)``)."""

    def __init__(self, work: Callable[[float], None] = spin) -> None:
        self.work = work
        self.inbox: queue.SimpleQueue[float | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while (seconds := self.inbox.get()) is not None:
            self.work(seconds)

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join()


class Spinner:
    """A thread that counts in pure Python until stopped: how much GIL the steps leave it."""

    def __init__(self) -> None:
        self.count = 0
        self.running = True
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        count = 0
        while self.running:
            count += 1
        self.count = count

    def counted(self, seconds: float | None, during: Callable[[], float]) -> tuple[int, float]:
        """The count reached in ``seconds`` alone (None) or while ``during`` runs; its time."""
        self.thread.start()
        start = time.perf_counter()
        if seconds is None:
            during()
        else:
            time.sleep(seconds)
        self.running = False
        self.thread.join()
        return self.count, time.perf_counter() - start


def greedy_neighbour(adapter: object, rows: int, steps: int) -> tuple[float, float]:
    """A pure-Python thread that never blocks, beside the steps: how fast it runs (a share of
    its speed alone), and the seconds per step meanwhile."""
    per_step: list[float] = []
    alone, seconds = Spinner().counted(0.3, lambda: 0.0)
    beside, elapsed = Spinner().counted(
        None, lambda: per_step.append(decode(adapter, rows, steps, lambda: None)) or 0.0
    )
    return (beside / elapsed) / (alone / seconds), per_step[0]


def decode(adapter: object, rows: int, steps: int, after: Callable[[], None]) -> float:
    """Seconds per decode step of ``rows`` rows, ``after`` called after each step."""
    step = adapter.step  # type: ignore[attr-defined]
    slots = torch.arange(rows).numpy()
    options = [None] * rows
    prompt = torch.randint(2, 1000, (rows, 40))
    token = step(prompt, torch.ones((rows, 40), dtype=torch.bool), slots, options)
    ones = torch.ones((rows, 1), dtype=torch.bool)
    start = time.perf_counter()
    for _ in range(steps):
        token = step(token.reshape(rows, 1), ones, slots, options)
        after()
    elapsed = time.perf_counter() - start
    for slot in range(rows):
        adapter.release(slot)  # type: ignore[attr-defined]
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["quick", "full"], default="quick")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=float, nargs="+", default=[0.0, 100.0, 200.0])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_llama(preset(args.preset).generation, "cpu", 0)
    adapter = adapter_module.CausalLMAdapter(model, slots=args.rows, max_length=40 + args.steps + 2)
    side, yielding = Side(), Side(spin_yielding)
    variants: dict[str, Callable[[], None]] = {"step alone": lambda: None}
    for micros in args.work:
        seconds = micros * 1e-6
        variants[f"+{micros:g} µs inline"] = lambda s=seconds: spin(s)
        variants[f"+{micros:g} µs on a side thread"] = lambda s=seconds: side.inbox.put(s)
        variants[f"+{micros:g} µs, side, yielding"] = lambda s=seconds: yielding.inbox.put(s)
    times: dict[str, list[float]] = {name: [] for name in variants}
    decode(adapter, args.rows, 5, lambda: None)  # warm-up
    for _ in range(args.repeat):
        for name, after in variants.items():
            times[name].append(decode(adapter, args.rows, args.steps, after))
    side.close()
    yielding.close()
    greedy = [greedy_neighbour(adapter, args.rows, args.steps) for _ in range(3)]
    share, during = (statistics.median(values) for values in zip(*greedy, strict=True))
    print(
        f"{args.preset} preset's Llama, {args.rows} rows, "
        f"{torch.get_num_threads()} torch thread(s), "
        f"{args.steps} steps x {args.repeat} alternations (medians)"
    )
    alone = statistics.median(times["step alone"])
    print(
        f"  a never-blocking Python thread beside the steps runs {share:.0%} as fast as "
        f"alone, and the steps take {during * 1e6:,.0f} µs meanwhile"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<30} {median * 1e6:8.0f} µs/step  {(median - alone) * 1e6:+8.0f}")


if __name__ == "__main__":
    main()
