"""Cost per item of dynamic batching: hibachi, the asyncio floor, and the peers, in one run.

An identity model, batches of at most 64, 20,000 concurrent caller tasks.
Targets: hibachi within 1.3x the floor, and adding at least 3x less above the
floor than the better of the peers (``batched``, ``async-batcher``).
The measuring functions live in ``hibachi._bench.feedforward_overhead``.

Usage: python benchmarks/feedforward_overhead.py [--callers N] [--batch-size B] [--repeat R]
       [--runs K]
"""

from __future__ import annotations

import argparse

from hibachi._bench.feedforward_overhead import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (a process per method)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per process")
    args = parser.parse_args()
    result = measure(args.callers, args.batch_size, args.repeat, args.runs)
    best_of = args.repeat * args.runs
    print(
        f"cost per item, identity model, {args.callers:,} concurrent callers, "
        f"batches of {args.batch_size} (best of {best_of}, each method in its own processes):"
    )
    cpu = result.cpu
    assert cpu is not None
    rows = [
        ("asyncio floor (hand-written batcher)", result.floor, cpu.floor),
        ("hibachi FeedforwardBatcher", result.hibachi, cpu.hibachi),
        ("batched (aio.dynamically)", result.batched, cpu.batched),
        ("async-batcher, model on the loop", result.async_batcher, cpu.async_batcher),
        (
            "async-batcher, model off the loop",
            result.async_batcher_off_loop,
            cpu.async_batcher_off_loop,
        ),
    ]
    print(f"  {'':<38} {'wall us':>8} {'x floor':>8} {'cpu us':>8} {'x floor':>8}")
    for label, wall, busy in rows:
        if wall is None or busy is None:
            print(f"  {label:<38} not installed")
            continue
        x_wall, x_cpu = wall / result.floor, busy / cpu.floor
        print(f"  {label:<38} {wall * 1e6:8.2f} {x_wall:7.2f}x {busy * 1e6:8.2f} {x_cpu:7.2f}x")
    for clock, figures in (("wall", result), ("cpu", cpu)):
        print(f"{clock:>4}: hibachi / floor {figures.ratio_to_floor:.2f}x (target <= 1.30x)")
        median = figures.median_round_ratio
        if median is not None:
            rounds = " ".join(f"{r:.2f}" for r in figures.round_ratios)
            print(f"      median of the rounds' ratios {median:.2f}x ({rounds})")
        if figures.added_vs_best_peer is not None:
            added = figures.added_vs_best_peer
            print(f"      the best peer adds {added:.1f}x what hibachi adds (target >= 3x)")
        off_loop = figures.async_batcher_off_loop
        if off_loop is not None:
            added = (off_loop - figures.floor) / max(figures.hibachi - figures.floor, 1e-9)
            print(f"      async-batcher with its model off the loop adds {added:.1f}x")


if __name__ == "__main__":
    main()
