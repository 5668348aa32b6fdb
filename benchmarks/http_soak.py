"""An HTTP soak of ``hibachi serve``: many requests, careless and hostile clients among them.

Starts ``hibachi serve`` (its default models: SmolLM2-135M-Instruct and
all-MiniLM-L6-v2) on a free loopback port and sends ``--requests`` requests at
``--concurrency`` at a time, on raw sockets with keep-alive: completions and
chat completions (whole and streamed), embeddings, model lists; 10% of clients
leave early (before their body is sent, before their answer, or mid-stream),
5% send malformed bodies, one generation in ten carries a deadline, and halfway
through a burst of ``--burst`` requests arrives at once, beyond the queue.

It checks what must hold, and exits 1 if anything does not:

- no response (or stream event) is a 500, and no well-formed request is refused
  with a 4xx other than 429 (or 504 for one with a deadline);
- no request hangs (each must end within ``--hang-after`` seconds);
- no answer names another model than the one asked (``model`` of every 200);
- ``hibachi_requests_running`` and ``..._waiting`` return to 0 at the end;
- the server's RSS is reported from after the warm-up to the end (``--rss-growth``
  bounds its growth).

Usage: python benchmarks/http_soak.py [--quick] [--requests 20000] [--model tiny]
Writes its figures to ``--json`` (default benchmarks/results/http_soak.json) and a
results document to ``--out`` (default benchmarks/results/http_soak.md): its date,
machine, commit, command and load, then the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SMOLLM2, MINILM, TINY = "SmolLM2-135M-Instruct", "all-MiniLM-L6-v2", "hibachi-llama"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
]


# -- a minimal HTTP/1.1 client on asyncio streams ------------------------------------------


class Closed(Exception):
    """The server closed the connection."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: list[str] = field(default_factory=list)


class Connection:
    """One keep-alive connection to the server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, method: str, path: str, body: bytes = b"", **headers: str) -> None:
        await self.open()
        assert self.writer is not None
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        if body or method == "POST":
            lines.append(f"Content-Length: {headers.pop('length', len(body))}")
            lines.append(f"Content-Type: {headers.pop('kind', 'application/json')}")
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def answer(self, *, until_first_event: bool = False) -> Answer:
        """The response: its body, or (for an event stream) its events' data."""
        assert self.reader is not None
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise Closed from exc
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
        }
        answer = Answer(status, headers)
        if headers.get("transfer-encoding") == "chunked":
            await self._chunks(answer, until_first_event)
        else:
            answer.body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close":
            self.close()
        return answer

    async def _chunks(self, answer: Answer, until_first_event: bool) -> None:
        assert self.reader is not None
        buffer = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            buffer += data[:-2]
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                answer.events.append(event.decode().removeprefix("data: "))
            if until_first_event and answer.events:
                return


# -- the requests -------------------------------------------------------------------------


@dataclass
class Plan:
    """One request: what to send, and what answers are acceptable."""

    kind: str
    path: str
    body: bytes
    model: str | None = None  # the model a 200 must name
    inputs: int = 0  # embeddings a 200 must hold
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    leave: str | None = None  # how the client leaves early: before-body, before-answer, mid-stream
    malformed: bool = False
    deadline: bool = False


def text(rng: random.Random, least: int, most: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(least, most)))


def plan(rng: random.Random, llm: str) -> Plan:
    roll = rng.random()
    if roll < 0.05:
        return malformed(rng)
    if roll < 0.15:
        return leaving(rng, llm)
    if roll < 0.20:
        return Plan("models", "/v1/models" if rng.random() < 0.5 else "/health", b"")
    if roll < 0.45:
        inputs = [text(rng, 1, 12) for _ in range(rng.randint(1, 8))]
        body = json.dumps({"model": MINILM, "input": inputs}).encode()
        return Plan("embeddings", "/v1/embeddings", body, MINILM, inputs=len(inputs))
    return generation(rng, llm)


def generation(rng: random.Random, llm: str) -> Plan:
    chat = rng.random() < 0.4
    stream = rng.random() < 0.5
    fields: dict[str, Any] = {"model": llm, "max_tokens": rng.randint(1, 8), "stream": stream}
    if rng.random() < 0.5:
        fields |= {"temperature": 0.8, "seed": rng.randint(0, 1000)}
    else:
        fields["temperature"] = 0
    if chat:
        fields["messages"] = [{"role": "user", "content": text(rng, 2, 20)}]
    else:
        fields["prompt"] = text(rng, 2, 20)
    headers = {}
    deadline = rng.random() < 0.1
    if deadline:
        headers["X-Request-Timeout"] = f"{rng.uniform(0.05, 2.0):.2f}"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    kind = ("chat" if chat else "completion") + (" stream" if stream else "")
    return Plan(
        kind,
        path,
        json.dumps(fields).encode(),
        llm,
        stream=stream,
        headers=headers,
        deadline=deadline,
    )


def leaving(rng: random.Random, llm: str) -> Plan:
    fields = {"model": llm, "prompt": text(rng, 2, 10), "max_tokens": 64, "stream": True}
    how = rng.choice(["before-body", "before-answer", "mid-stream"])
    return Plan(
        f"leaves {how}", "/v1/completions", json.dumps(fields).encode(), llm, stream=True, leave=how
    )


MALFORMED: list[tuple[str, bytes, dict[str, str]]] = [
    ("not json", b"{prompt: 1}", {}),
    ("invalid utf-8", b'{"prompt": "\xff\xfe"}', {}),
    ("lone surrogate", b'{"prompt": "\\udc00"}', {}),
    ("wrong type", b'{"prompt": "a", "max_tokens": "5"}', {}),
    ("unknown field", b'{"prompt": "a", "tools": []}', {}),
    ("deep nesting", b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}),
    ("too large", b"{}", {"length": str(10**9)}),
    ("text/plain", b'{"prompt": "a"}', {"kind": "text/plain"}),
]


def malformed(rng: random.Random) -> Plan:
    name, body, headers = rng.choice(MALFORMED)
    return Plan(f"malformed: {name}", "/v1/completions", body, headers=headers, malformed=True)


# -- running one request --------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def problem(self, what: str) -> None:
        self.outcomes["problems"] += 1
        if len(self.problems) < 50:
            self.problems.append(what)


async def run(connection: Connection, job: Plan, tally: Tally, hang_after: float) -> None:
    began = time.monotonic()
    try:
        async with asyncio.timeout(hang_after):
            await _run(connection, job, tally)
    except TimeoutError:
        connection.close()
        tally.outcomes["hangs"] += 1
        tally.problem(f"{job.kind}: no answer within {hang_after:g} s")
    except (Closed, ConnectionError) as exc:
        connection.close()
        tally.problem(f"{job.kind}: the connection broke ({exc!r})")
    tally.latencies.append(time.monotonic() - began)


async def _run(connection: Connection, job: Plan, tally: Tally) -> None:
    method = "POST" if job.path.startswith("/v1/") and job.path != "/v1/models" else "GET"
    if job.leave == "before-body":
        await connection.send(
            method, job.path, job.body[: len(job.body) // 2], length=str(len(job.body))
        )
        connection.close()
        tally.outcomes["left"] += 1
        return
    await connection.send(method, job.path, job.body, **job.headers)
    if job.leave == "before-answer":
        connection.close()
        tally.outcomes["left"] += 1
        return
    answer = await connection.answer(until_first_event=job.leave == "mid-stream")
    if job.leave == "mid-stream":
        connection.close()
        tally.outcomes["left"] += 1
        return
    tally.statuses[answer.status] += 1
    judge(job, answer, tally)


def judge(job: Plan, answer: Answer, tally: Tally) -> None:
    status = answer.status
    if status >= 500 and status != 503 and status != 504:
        tally.problem(f"{job.kind}: {status} {answer.body[:200]!r}")
        return
    if job.malformed:
        if status in (400, 413, 415):
            tally.outcomes["malformed refused"] += 1
        else:
            tally.problem(f"{job.kind}: answered {status}")
        return
    if status == 429:
        tally.outcomes["429"] += 1 if "retry-after" in answer.headers else 0
        if "retry-after" not in answer.headers:
            tally.problem(f"{job.kind}: 429 without Retry-After")
        return
    if status == 504 and job.deadline:
        tally.outcomes["deadline"] += 1
        return
    if status != 200:
        tally.problem(f"{job.kind}: {status} {answer.body[:200]!r}")
        return
    if job.stream:
        judge_stream(job, answer, tally)
    else:
        judge_body(job, json.loads(answer.body), tally)


def judge_stream(job: Plan, answer: Answer, tally: Tally) -> None:
    if answer.events and answer.events[-1] != "[DONE]":
        error = json.loads(answer.events[-1]).get("error", {})
        if error.get("type") == "timeout" and job.deadline:
            tally.outcomes["deadline"] += 1
        else:
            tally.problem(f"{job.kind}: the stream ended with {error}")
        return
    chunks = [json.loads(event) for event in answer.events[:-1]]
    if any(chunk.get("model") != job.model for chunk in chunks) or not chunks:
        tally.problem(f"{job.kind}: a chunk names another model, or none came")
        return
    tally.outcomes["answered"] += 1


def judge_body(job: Plan, body: Any, tally: Tally) -> None:
    if job.model is not None and body.get("model") != job.model:
        tally.outcomes["wrong model"] += 1
        tally.problem(f"{job.kind}: answered by {body.get('model')!r}, not {job.model!r}")
        return
    if job.inputs and len(body.get("data", ())) != job.inputs:
        tally.problem(f"{job.kind}: {len(body.get('data', ()))} vectors for {job.inputs} inputs")
        return
    tally.outcomes["answered"] += 1


# -- the soak ----------------------------------------------------------------------------


async def soak(args: argparse.Namespace, port: int, rss: Any) -> tuple[Tally, dict[str, Any]]:
    rng = random.Random(args.seed)
    llm = TINY if args.model == "tiny" else SMOLLM2
    jobs = [plan(rng, llm) for _ in range(args.requests)]
    queue: asyncio.Queue[Plan | None] = asyncio.Queue()
    tally = Tally()
    figures: dict[str, Any] = {}
    warm = max(1, args.requests // 20)
    for job in jobs[:warm]:
        queue.put_nowait(job)
    await workers(queue, port, tally, args)
    figures["rss_after_warm_up_mib"] = rss() / 2**20
    trace = figures["rss_trace_mib"] = []
    sampler = asyncio.create_task(sample(rss, trace, every=args.rss_every))
    began = time.monotonic()
    half = (len(jobs) + warm) // 2
    for job in jobs[warm:half]:
        queue.put_nowait(job)
    await workers(queue, port, tally, args)
    burst = [generation(rng, llm) for _ in range(args.burst)]
    before = Counter(tally.statuses)
    await asyncio.gather(*(run(Connection(port), job, tally, args.hang_after) for job in burst))
    figures["burst_429"] = tally.statuses[429] - before[429]
    for job in jobs[half:]:
        queue.put_nowait(job)
    await workers(queue, port, tally, args)
    figures["seconds"] = time.monotonic() - began
    figures["settled"] = await settled(port, args.model)
    figures["rss_end_mib"] = rss() / 2**20
    sampler.cancel()
    return tally, figures


async def sample(rss: Any, trace: list[int], *, every: float) -> None:
    """The server's RSS (MiB) every ``every`` seconds, into ``trace``: growth or a plateau."""
    while True:
        trace.append(round(rss() / 2**20))
        await asyncio.sleep(every)


async def workers(
    queue: asyncio.Queue[Plan | None], port: int, tally: Tally, args: argparse.Namespace
) -> None:
    """``--concurrency`` clients, each on its own keep-alive connection, until ``queue`` is
    empty."""

    async def client() -> None:
        connection = Connection(port)
        try:
            while not queue.empty():
                await run(connection, queue.get_nowait(), tally, args.hang_after)
                done = sum(tally.statuses.values()) + tally.outcomes["left"]
                if done % 1000 == 0:
                    print(f"  {done:,} requests", file=sys.stderr, flush=True)
        finally:
            connection.close()

    await asyncio.gather(*(client() for _ in range(args.concurrency)))


async def settled(port: int, model: str) -> dict[str, float]:
    """``hibachi_requests_running`` and ``..._waiting`` per model, once they are 0 (or
    after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        connection = Connection(port)
        await connection.send("GET", "/metrics")
        answer = await connection.answer()
        connection.close()
        gauges = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in answer.body.decode().splitlines()
            if line.startswith(("hibachi_requests_running", "hibachi_requests_waiting"))
        }
        if not any(gauges.values()) or time.monotonic() > deadline:
            return gauges
        await asyncio.sleep(0.1)


# -- the server, and the report ------------------------------------------------------------


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-c",
        "from hibachi._cli import main; raise SystemExit(main())",
        "serve",
        "--port",
        str(port),
        "--max-queue-size",
        str(args.max_queue_size),
        "--max-batch-size",
        str(args.max_batch_size),
    ]
    if args.model:
        command += ["--model", args.model]
    if args.kv_cache_bytes:
        command += ["--kv-cache-bytes", args.kv_cache_bytes]
    # uvicorn's access log (stdout) is not kept; its stderr is read to the end, so a
    # server that logs much after its start never blocks on a full pipe
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    for line in server.stderr:
        if line.startswith("hibachi serve:"):
            print(line.rstrip(), file=sys.stderr)
        if "Uvicorn running on" in line:
            threading.Thread(target=_echo, args=(server.stderr,), daemon=True).start()
            return server, port
    raise SystemExit(f"hibachi serve exited with {server.wait()}")


def _echo(lines: Any) -> None:
    for line in lines:
        print(f"server: {line.rstrip()}", file=sys.stderr, flush=True)


def rss_of(pid: int) -> Any:
    def rss() -> int:
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    return rss


def report(args: argparse.Namespace, tally: Tally, figures: dict[str, Any]) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    growth = figures["rss_end_mib"] / figures["rss_after_warm_up_mib"] - 1
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "commit": _commit(),
        "command": " ".join([*_malloc_env(), "python", *sys.argv]),
        "load_average_at_start": figures.get("load"),
        "requests": args.requests + args.burst,
        "concurrency": args.concurrency,
        "burst": args.burst,
        "seconds": round(figures["seconds"], 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "outcomes": dict(tally.outcomes),
        "responses_500": sum(n for s, n in tally.statuses.items() if s == 500),
        "hangs": tally.outcomes["hangs"],
        "wrong_model": tally.outcomes["wrong model"],
        "burst_429": figures["burst_429"],
        "settled": figures["settled"],
        "rss_mib": [round(figures["rss_after_warm_up_mib"]), round(figures["rss_end_mib"])],
        "rss_growth": round(growth, 3),
        "rss_trace_mib": figures["rss_trace_mib"],
        "rss_every_s": args.rss_every,
        "latency_p50_p99_s": [
            round(latencies[len(latencies) // 2], 3),
            round(latencies[int(len(latencies) * 0.99)], 3),
        ],
        "problems": tally.problems,
    }
    result["ok"] = (
        not tally.outcomes["problems"]
        and not any(figures["settled"].values())
        and growth <= args.rss_growth
    )
    return result


def markdown(result: dict[str, Any]) -> str:
    """The results document: where and how it ran, then what must hold and what it measured."""
    load = " ".join(result["load_average_at_start"] or ["unknown"])
    rss_start, rss_end = result["rss_mib"]
    p50, p99 = result["latency_p50_p99_s"]
    lines = [
        "# HTTP soak of hibachi serve",
        "",
        f"- date: {result['date']}",
        f"- machine: {result['machine']}, load average {load} at start",
        f"- commit: {result['commit']}",
        f"- command: `{result['command']}`",
        f"- load: {result['requests']:,} requests ({result['burst']:,} of them in one burst "
        f"halfway), {result['concurrency']} clients on keep-alive connections, "
        f"{result['seconds']:,} s",
        "",
        "| what must hold | figure |",
        "|---|--:|",
        f"| responses of 500 | {result['responses_500']} |",
        f"| hangs | {result['hangs']} |",
        f"| answers naming another model | {result['wrong_model']} |",
        f"| other problems | {result['outcomes'].get('problems', 0)} |",
        f"| `hibachi_requests_running` / `_waiting` at the end | {_gauges(result['settled'])} |",
        f"| server RSS after the warm-up → end (MiB) | {rss_start:,} → {rss_end:,} "
        f"({result['rss_growth']:+.1%}) |",
        "",
        f"- statuses: {_counts(result['statuses'])}",
        f"- outcomes: {_counts(result['outcomes'])}",
        f"- server RSS (MiB) every {result['rss_every_s']:g} s after the warm-up: "
        + " ".join(str(mib) for mib in result["rss_trace_mib"]),
        f"- 429 in the burst: {result['burst_429']:,}",
        f"- latency per request, p50 / p99: {p50} s / {p99} s",
        f"- verdict: {'ok' if result['ok'] else 'FAILED'}",
        *(f"- problem: {problem}" for problem in result["problems"]),
        "",
    ]
    return "\n".join(lines)


def _gauges(settled: dict[str, float]) -> str:
    """``hibachi_requests_running{model="m"}: 0`` ... as ``m: 0 running, 0 waiting``."""
    models: dict[str, dict[str, float]] = {}
    for series, value in settled.items():
        name, _, label = series.partition("{")
        model = label.removeprefix('model="').removesuffix('"}')
        models.setdefault(model, {})[name.removeprefix("hibachi_requests_")] = value
    shown = [
        f"{model}: {values.get('running', 0):g} running, {values.get('waiting', 0):g} waiting"
        for model, values in models.items()
    ]
    return "; ".join(shown) or "none read"


def _counts(counts: dict[Any, int]) -> str:
    return ", ".join(f"{key}: {value:,}" for key, value in counts.items())


def _malloc_env() -> list[str]:
    """The allocator's settings the server inherits (``MALLOC_ARENA_MAX=2`` ...)."""
    return [f"{name}={value}" for name, value in os.environ.items() if name.startswith("MALLOC_")]


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 requests: a few minutes")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--burst", type=int, default=300, help="requests sent at once, halfway")
    parser.add_argument("--max-queue-size", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--model", help="the language model (default: hibachi serve's own)")
    parser.add_argument(
        "--kv-cache-bytes", help="the server's KV cache budget, e.g. 64M (default: its own)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-after", type=float, default=300.0)
    parser.add_argument(
        "--rss-growth",
        type=float,
        default=0.10,
        help="the RSS growth (after the warm-up) that fails",
    )
    parser.add_argument("--rss-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/http_soak.json"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/http_soak.md"))
    args = parser.parse_args()
    if args.quick:
        args.requests, args.burst = 2_000, 150
    load = (
        Path("/proc/loadavg").read_text().split()[:3] if os.path.exists("/proc/loadavg") else None
    )
    server, port = start_server(args)
    try:
        tally, figures = asyncio.run(soak(args, port, rss_of(server.pid)))
    finally:
        server.terminate()
        server.wait(120)
    figures["load"] = load
    result = report(args, tally, figures)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    args.out.write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "problems"}, indent=1))
    for problem in result["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
