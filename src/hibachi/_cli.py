"""The ``hibachi`` command: ``hibachi bench`` shows, measured, what batching buys;
``hibachi serve`` serves models over an OpenAI-compatible HTTP API.

Nothing heavy is imported here: torch, transformers, rich, matplotlib and
FastAPI load only once ``hibachi bench`` or ``hibachi serve`` runs.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._bench.settings import WORKLOADS

__all__ = ["main"]

BENCH_DESCRIPTION = """\
Measure what hibachi does for you, on this machine, with no downloads.

Four workloads (and a fifth on request), each comparing hibachi with the usual
alternatives:

  generation   a small GPT-style model (Llama code, random weights) serving many
               concurrent clients with mixed prompt lengths and budgets: hibachi
               vs generate() one request at a time, vs static batching (padded
               groups that wait for their longest member), vs transformers'
               generate_batch. Tokens/s, time to first token, and whether the
               greedy outputs match generate().
  embeddings   all-MiniLM-L6-v2 sentence embeddings for concurrent callers:
               hibachi vs one model call per text, vs sentence-transformers'
               encode() on the whole list.
  overhead     no-op models: what hibachi itself costs per token / per item,
               vs the asyncio floor and the peer libraries batched and
               async-batcher.
  scaling      throughput as the number of concurrent clients grows (the plot).
  pipeline     (only with --workloads pipeline) two matmul stages in a
               hibachi.Pipeline, each on its own thread, vs the same two
               composed into one model; both batchers; each stage's busy share.

It prints a table per workload, and writes every figure to a JSON file and the
charts to a PNG. Methods whose library is not installed are skipped with a note.
"""

BENCH_EPILOG = """\
examples:
  hibachi bench --quick                      about a minute on a laptop CPU
  hibachi bench                              the full run, a few minutes
  hibachi bench --workloads generation,scaling --concurrency 1,8,64
  hibachi bench --device cuda --json gpu.json --plot gpu.png

exit status: 0 when every method ran or was skipped, 1 when one failed,
2 for bad arguments.
"""


SERVE_DESCRIPTION = """\
Serve a language model and an embedding model over HTTP, shaped as OpenAI's API
(the official openai client works unchanged), with continuous batching.

  GET  /v1/models             POST /v1/completions     POST /v1/chat/completions
  POST /v1/embeddings         GET  /health             GET  /metrics (Prometheus)

With no --model, a small random-weight Llama (its text through the packaged
MiniLM tokenizer); with no --embedding-model, the packaged all-MiniLM-L6-v2.
Nothing is downloaded. A request may carry a deadline: the X-Request-Timeout
header or a "timeout" field (seconds).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hibachi`` command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(args)
    return _bench(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hibachi",
        description="hibachi: batched inference for tensor models.",
    )
    parser.add_argument("--version", action="version", version=f"hibachi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")
    bench = commands.add_parser(
        "bench",
        help="measure what hibachi does for you, on this machine",
        description=BENCH_DESCRIPTION,
        epilog=BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench_arguments(bench)
    serve = commands.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _serve_arguments(serve)
    return parser


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="a local transformers causal LM (model and tokenizer) for /v1/completions and "
        "/v1/chat/completions (default: a small random-weight Llama)",
    )
    serve.add_argument(
        "--embedding-model",
        type=Path,
        metavar="DIR",
        help="a local sentence encoder for /v1/embeddings (default: the packaged all-MiniLM-L6-v2)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (8000)")
    serve.add_argument(
        "--max-batch-size",
        type=_positive,
        default=32,
        metavar="N",
        help="rows per generation step, texts per embedding call (32)",
    )
    serve.add_argument(
        "--max-queue-size",
        type=_positive,
        default=1024,
        metavar="N",
        help="requests waiting per model before 429 (1024)",
    )
    serve.add_argument(
        "--max-length",
        type=_positive,
        default=None,
        metavar="N",
        help="most tokens (prompt and completion) per sequence (default: the model's context)",
    )
    serve.add_argument(
        "--kv-cache-bytes",
        type=_bytes,
        default=None,
        metavar="N[K|M|G]",
        help="most memory for the keys and values of all sequences, e.g. 2G (K, M, G: "
        "binary multiples; default: half the memory available); it, not --max-length, "
        "decides how many sequences run at once",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long in-flight requests may finish (10)",
    )
    serve.add_argument(
        "--stream-interval",
        type=_positive,
        default=1,
        metavar="N",
        help="stream one chunk per N pieces of text (1); more costs less per token",
    )
    serve.add_argument("--device", default="cpu", help="where the models run (cpu)")
    serve.add_argument(
        "--replicas",
        type=_positive,
        metavar="N",
        help="serve through Ray Serve with N replicas, one batcher each (needs the ray extra)",
    )
    serve.add_argument(
        "--autoscale",
        type=_bounds,
        metavar="MIN,MAX",
        help="serve through Ray Serve, between MIN and MAX replicas as the load asks",
    )
    serve.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this running Ray cluster (default: start a local one)",
    )


def _bench_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--quick",
        action="store_true",
        help="smaller models and fewer requests: under a minute on 2 CPU cores",
    )
    bench.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the models run (default: cpu)",
    )
    bench.add_argument(
        "--concurrency",
        type=_counts,
        metavar="N,N,...",
        help="client counts for the scaling workload (default: 1,2,4,8,16,32,64; "
        "--quick: 1,4,16,64)",
    )
    bench.add_argument(
        "--workloads",
        type=_workloads,
        metavar="NAME,...",
        help=f"which workloads to run, comma-separated, from: {', '.join(WORKLOADS)} "
        "(default: all)",
    )
    bench.add_argument(
        "--json",
        type=Path,
        default=Path("bench-out/bench.json"),
        metavar="PATH",
        help="where to write every figure as JSON (default: bench-out/bench.json)",
    )
    bench.add_argument(
        "--plot",
        type=Path,
        default=Path("bench-out/bench.png"),
        metavar="PATH",
        help="where to write the charts as PNG (default: bench-out/bench.png)",
    )
    bench.add_argument(
        "--markdown",
        type=Path,
        metavar="PATH",
        help="also write the tables as Markdown (for a README)",
    )
    bench.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="PyTorch threads (default: the CPUs other processes leave free)",
    )
    # For hibachi's own tests: every workload end to end in seconds. Figures are meaningless.
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


def _port(text: str) -> int:
    return _whole(text, 0, 65535, "a port 0-65535")


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers like 1,4,16, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers of clients >= 1, got {text!r}")
    return tuple(sorted(set(counts)))


def _positive(text: str) -> int:
    return _whole(text, 1, None, "a whole number >= 1")


def _whole(text: str, least: int, most: int | None, expected: str) -> int:
    """``text`` as an int in ``least`` … ``most`` (None: no limit), or an argparse error."""
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least or (most is not None and value > most):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _workloads(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        what = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(
            f"unknown workload {what}: choose from {', '.join(WORKLOADS)}"
        )
    return tuple(name for name in WORKLOADS if name in names)


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from ._bench import preset, run_bench
    from ._bench.environment import busy_cpus, busy_warning, cuda_available
    from ._bench.plot import write_plot
    from ._bench.progress import RichProgress
    from ._bench.report import markdown, print_report, write_json

    # Piped or captured output gets a table width that fits every column.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    if args.device == "cuda" and not cuda_available():
        console.print("[red]--device cuda: torch sees no CUDA device on this machine[/red]")
        return 2
    warning = busy_warning(busy_cpus())
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    name = "tiny" if args.tiny else "quick" if args.quick else "full"
    settings = preset(
        name,
        device=args.device,
        concurrency=args.concurrency,
        workloads=args.workloads,
        threads=args.threads,
    )
    with RichProgress(console) as progress:
        report = run_bench(settings, progress)
    print_report(report, console)
    write_json(report, args.json)
    console.print(f"figures:  {args.json}")
    if write_plot(report, args.plot):
        console.print(f"plot:     {args.plot}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report))
        console.print(f"markdown: {args.markdown}")
    return 1 if report.failed else 0


def _serve(args: argparse.Namespace) -> int:
    if args.replicas or args.autoscale or args.ray_address:
        return _serve_over_ray(args)
    from .serve import run

    run(_build_app(args), host=args.host, port=args.port)
    return 0


def _serve_over_ray(args: argparse.Namespace) -> int:
    if args.replicas and args.autoscale:
        raise SystemExit("hibachi serve: --replicas and --autoscale exclude each other")
    from .serve._ray import scaling_options, serve_over_ray

    serve_over_ray(
        functools.partial(_build_app, args),
        max_batch_size=args.max_batch_size,
        host=args.host,
        port=args.port,
        address=args.ray_address,
        **scaling_options(args.replicas, args.autoscale),
    )
    return 0


def _build_app(args: argparse.Namespace) -> Any:
    """The server's app, its models loaded: in this process, or in each Ray replica."""
    from .serve import (
        ServeSettings,
        create_app,
        default_embedding_model,
        default_language_model,
        load_embedding_model,
        load_language_model,
    )

    device = args.device
    language = (
        load_language_model(args.model, device=device)
        if args.model
        else default_language_model(device=device)
    )
    embedder = (
        load_embedding_model(args.embedding_model, device=device)
        if args.embedding_model
        else default_embedding_model(device=device)
    )
    settings = ServeSettings(
        max_batch_size=args.max_batch_size,
        max_queue_size=args.max_queue_size,
        max_length=args.max_length,
        kv_cache_bytes=args.kv_cache_bytes,
        shutdown_grace=args.shutdown_grace,
        stream_interval=args.stream_interval,
    )
    return create_app(language, embedder, settings=settings)


_BINARY = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _bytes(text: str) -> int:
    """A count of bytes: ``N``, or ``N`` followed by K, M, G or T (binary multiples)."""
    number, unit = text.strip(), ""
    if number and number[-1].upper() in "KMGT":
        number, unit = number[:-1], number[-1].upper()
    try:
        value = float(number) * _BINARY[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected bytes such as 512M or 2G, got {text!r}"
        ) from None
    if not value >= 1 or value != value:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return int(value)


def _bounds(text: str) -> tuple[int, int]:
    """``MIN,MAX`` replicas, 1 <= MIN <= MAX."""
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return low, high
