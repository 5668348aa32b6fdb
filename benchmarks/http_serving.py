"""HTTP serving on loopback: `hibachi serve`'s app next to the same batcher in-process, in one run.

- Generation: ``--clients`` (256) concurrent streaming clients through the
  official ``openai`` client (``AsyncOpenAI``) against the server on
  127.0.0.1 (a child process, as it would be deployed), and the same
  requests (same prompts, budgets, greedy) through an `AutoregressiveBatcher`
  over the same model in this process. Prints errors (target: 0) and
  tokens/s of each, and their ratio (target: HTTP >= 0.85x in-process).
- Embeddings: ``--texts`` texts, each its own ``/v1/embeddings`` request,
  against sentence-transformers' ``encode`` of the same texts: the lowest
  cosine (target: >= 0.99999).

The model is `hibachi serve`'s default Llama (random weights, the MiniLM
tokenizer's vocabulary) at ``--hidden`` / ``--layers``. Each side runs
``--repeat`` times, alternating, and keeps its best (other work only slows a
run down). Every phase has a deadline (``--deadline`` seconds).

Usage: python benchmarks/http_serving.py [--clients 256] [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

PROMPT_LENGTHS = (8, 64)
BUDGETS = (16, 64)


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    budget: int


@dataclass(frozen=True)
class Run:
    tokens: int
    errors: int
    seconds: float
    cpu: float = 0.0  # CPU seconds of this process (the client, over HTTP)
    server_cpu: float = 0.0  # CPU seconds of the server process (HTTP only)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def make_requests(count: int, vocab: int, seed: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed)
    return [
        Request(
            rng.integers(1000, vocab, size=int(rng.integers(*PROMPT_LENGTHS))).tolist(),
            int(rng.integers(BUDGETS[0], BUDGETS[1] + 1)),
        )
        for _ in range(count)
    ]


def build_model(args: argparse.Namespace) -> object:
    from hibachi.serve import default_language_model

    return default_language_model(hidden=args.hidden, layers=args.layers, heads=args.heads)


def settings(args: argparse.Namespace) -> object:
    from hibachi.serve import ServeSettings

    return ServeSettings(
        max_batch_size=args.batch_size,
        max_queue_size=4 * args.clients,
        stream_interval=args.stream_interval,
    )


# -- the server: a child process -------------------------------------------------


def serve_child(args: argparse.Namespace) -> None:
    import torch

    from hibachi.serve import create_app, default_embedding_model, run

    torch.set_num_threads(args.threads)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    app = create_app(build_model(args), default_embedding_model(), settings=settings(args))
    if os.environ.get("HIBACHI_PROFILE"):  # where the server's event loop spends its time
        import cProfile

        cProfile.runctx(
            "run(app, host='127.0.0.1', port=args.port, log_level='warning', access_log=False)",
            globals(),
            {"run": run, "app": app, "args": args},
            os.environ["HIBACHI_PROFILE"],
        )
        return
    run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    child = [sys.executable, __file__, "--child", "--port", str(port), *sys.argv[1:]]
    process = subprocess.Popen(child)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.deadline
    while not _listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)
    return process, url


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


# -- generation ---------------------------------------------------------------------


async def over_http(url: str, server: int, requests: list[Request], deadline: float) -> Run:
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=deadline
    )

    async def one(request: Request) -> int:
        stream = await client.completions.create(
            model="hibachi-llama",
            prompt=request.prompt,
            max_tokens=request.budget,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        tokens = 0
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens

    await one(requests[0])  # warm the connection pool and the server up
    start, cpu, server_cpu = time.perf_counter(), time.process_time(), cpu_seconds(server)
    async with asyncio.timeout(deadline):
        results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
    seconds = time.perf_counter() - start
    cpu, server_cpu = time.process_time() - cpu, cpu_seconds(server) - server_cpu
    await client.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"  first error: {errors[0]!r}")
    tokens = sum(r for r in results if isinstance(r, int))
    return Run(tokens, len(errors), seconds, cpu, server_cpu)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process ``pid`` has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def in_process(model: object, args: argparse.Namespace, requests: list[Request]) -> Run:
    import torch

    from hibachi.serve._engines import LanguageEngine
    from hibachi.serve._metrics import Metrics

    engine = LanguageEngine(model, settings(args), Metrics())  # type: ignore[arg-type]
    batcher = engine.batcher
    from hibachi.serve._engines import Ticket

    async def one(request: Request) -> int:
        stream = batcher.run(
            torch.tensor(request.prompt),
            max_new_tokens=request.budget,
            options=Ticket({"temperature": 0.0}),
        )
        return len(await stream.collect())

    async with batcher:
        await one(requests[0])
        start, cpu = time.perf_counter(), time.process_time()
        async with asyncio.timeout(args.deadline):
            counts = await asyncio.gather(*(one(r) for r in requests))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(sum(counts), 0, seconds, cpu)


# -- embeddings ---------------------------------------------------------------------


async def embed_over_http(
    url: str, texts: list[str], deadline: float
) -> tuple[list[list[float]], float]:
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=deadline
    )

    async def one(text: str) -> list[float]:
        answer = await client.embeddings.create(model="all-MiniLM-L6-v2", input=text)
        return answer.data[0].embedding

    start = time.perf_counter()
    async with asyncio.timeout(deadline):
        vectors = await asyncio.gather(*(one(t) for t in texts))
    seconds = time.perf_counter() - start
    await client.close()
    return list(vectors), seconds


def min_cosine(a: list[list[float]], b: np.ndarray) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    return float(cos.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, each side")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per phase")
    parser.add_argument(
        "--switch-interval", type=float, default=0.0, help="server's GIL switch interval"
    )
    parser.add_argument(
        "--stream-interval", type=int, default=1, help="the server's pieces of text per chunk"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        serve_child(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    model = build_model(args)
    requests = make_requests(args.clients, len(model.tokenizer))  # type: ignore[attr-defined]
    params = sum(p.numel() for p in model.model.parameters()) / 1e6  # type: ignore[attr-defined]
    print(
        f"Llama {params:.1f}M params (hidden {args.hidden}, {args.layers} layers), "
        f"{args.clients} streaming clients, prompts {PROMPT_LENGTHS} tokens, budgets {BUDGETS}, "
        f"batch size {args.batch_size}, stream interval {args.stream_interval}, "
        f"{args.threads} torch thread(s) per side, "
        f"best of {args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    process, url = start_server(args)
    try:
        local = http = None
        for _ in range(args.repeat):
            run = asyncio.run(in_process(model, args, requests))
            local = run if local is None or run.tokens_per_s > local.tokens_per_s else local
            run = asyncio.run(over_http(url, process.pid, requests, args.deadline))
            http = run if http is None or run.tokens_per_s > http.tokens_per_s else http
        assert local is not None and http is not None
        report(local, http)
        embeddings(url, args)
    finally:
        process.terminate()
        process.wait(60)


def report(local: Run, http: Run) -> None:
    us = 1e6 / http.tokens
    print(
        f"in-process batcher  : {local.tokens:6d} tokens {local.tokens_per_s:8.0f} tokens/s"
        f"  CPU {local.cpu * 1e6 / local.tokens:5.0f} us/token"
    )
    print(
        f"HTTP, openai client : {http.tokens:6d} tokens {http.tokens_per_s:8.0f} tokens/s"
        f"  CPU {http.server_cpu * us:5.0f} us/token in the server, "
        f"{http.cpu * us:5.0f} in the client; errors {http.errors}"
    )
    ratio = http.tokens_per_s / local.tokens_per_s
    print(f"HTTP / in-process   : {ratio:.2f}x tokens/s (target >= 0.85)")


def embeddings(url: str, args: argparse.Namespace) -> None:
    from sentence_transformers import SentenceTransformer

    from hibachi._bench.models.minilm import make_texts
    from hibachi.serve._models import minilm_folder

    texts = make_texts(args.texts, (4, 120), seed=0)
    encoder = SentenceTransformer(str(minilm_folder()), device="cpu")
    start = time.perf_counter()
    reference = encoder.encode(texts, batch_size=32)
    st_seconds = time.perf_counter() - start
    vectors, seconds = asyncio.run(embed_over_http(url, texts, args.deadline))
    print(
        f"embeddings: {len(texts)} texts over HTTP in {seconds:.2f} s "
        f"({len(texts) / seconds:.0f} texts/s; sentence-transformers encode: "
        f"{len(texts) / st_seconds:.0f} texts/s on the whole list), "
        f"min cosine vs sentence-transformers {min_cosine(vectors, reference):.6f} "
        "(target >= 0.99999)"
    )


if __name__ == "__main__":
    main()
