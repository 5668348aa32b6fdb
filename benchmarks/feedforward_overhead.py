"""Cost per item of dynamic batching: hibachi, the asyncio floor, and the peers, in one run.

An identity model, batches of at most 64, 20,000 concurrent caller tasks.
Targets: hibachi within 1.3x the floor, and adding at least 3x less above the
floor than the better of the peers (``batched``, ``async-batcher``).
The measuring functions live in ``hibachi._bench.feedforward_overhead``.

Usage: python benchmarks/feedforward_overhead.py [--callers N] [--batch-size B] [--repeat R]
"""

from __future__ import annotations

import argparse

from hibachi._bench.feedforward_overhead import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    result = measure(args.callers, args.batch_size, args.repeat)
    print(
        f"cost per item, identity model, {args.callers:,} concurrent callers, "
        f"batches of {args.batch_size} (best of {args.repeat}):"
    )
    rows = [
        ("asyncio floor (hand-written batcher)", result.floor),
        ("hibachi FeedforwardBatcher", result.hibachi),
        ("batched (aio.dynamically)", result.batched),
        ("async-batcher (AsyncBatcher)", result.async_batcher),
    ]
    for label, seconds in rows:
        if seconds is None:
            print(f"  {label:<38} not installed")
            continue
        above = (seconds - result.floor) * 1e6
        print(
            f"  {label:<38} {seconds * 1e6:7.2f} us  ({seconds / result.floor:.2f}x floor, "
            f"+{above:.2f} us)"
        )
    print(f"hibachi / floor: {result.ratio_to_floor:.2f}x (target <= 1.30x)")
    if result.added_vs_best_peer is not None:
        print(
            f"better peer adds {result.added_vs_best_peer:.1f}x what hibachi adds above the "
            "floor (target >= 3x)"
        )


if __name__ == "__main__":
    main()
