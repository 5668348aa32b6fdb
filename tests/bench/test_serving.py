"""The serving workload's parts: what a client reads from a stream, when the schedules send,
the figures as vllm bench serve defines them, and servers that are always stopped."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hibachi._bench.load.client import ChatClient, Record, Sender
from hibachi._bench.load.metrics import Slo, summarise
from hibachi._bench.load.schedule import Run, closed_loop, poisson
from hibachi._bench.servers.commands import Shape, hibachi_serve, transformers_serve
from hibachi._bench.servers.process import ServerFailed, ServerProcess
from hibachi._bench.workloads.serving import HIBACHI, TRANSFORMERS, _accepted_extras

httpx2 = pytest.importorskip("httpx2")


def record(sent: float, chunks: list[float], end: float, usage: int | None = None) -> Record:
    return Record(sent=sent, chunks=chunks, end=end, usage_tokens=usage)


# -- the figures ------------------------------------------------------------------------------


def test_a_records_times_are_vllms() -> None:
    r = record(10.0, [10.5, 10.7, 11.0, 11.1], end=11.2)
    assert r.ttft == pytest.approx(0.5)
    assert r.latency == pytest.approx(1.2)
    assert r.tokens == 4  # no usage: one token per chunk of content
    assert r.tpot == pytest.approx((1.2 - 0.5) / 3)
    assert r.itl == pytest.approx([0.2, 0.3, 0.1])
    assert record(0.0, [0.1, 0.2], end=0.3, usage=7).tokens == 7  # the server's own count
    assert record(0.0, [0.4], end=0.5).tpot == 0.0  # one token: vLLM's 0, not a division by 0
    assert math.isnan(record(0.0, [], end=1.0).ttft)


def test_summarise_counts_goodput_against_both_bounds_of_the_slo() -> None:
    fast = record(0.0, [0.1, 0.2, 0.3], end=0.3)  # TTFT 100 ms, TPOT 100 ms
    slow_start = record(0.0, [2.0, 2.1, 2.2], end=2.2)  # TTFT 2000 ms
    slow_tokens = record(0.0, [0.1, 1.1, 2.1], end=2.1)  # TPOT 1000 ms
    failed = Record(sent=0.0, end=1.0, error="HTTP 500")
    figures = summarise(Run([fast, slow_start, slow_tokens, failed], 4.0), Slo(1000, 500))
    assert figures["requests"] == "3/4" and figures["failed"] == 1
    assert figures["request_throughput"] == pytest.approx(3 / 4)
    assert figures["output_throughput"] == pytest.approx(9 / 4)
    assert figures["goodput"] == pytest.approx(1 / 4)
    assert figures["output_tokens"] == "3-3"
    assert figures["ttft_p50_ms"] == pytest.approx(100.0)
    assert figures["tpot_p99_ms"] == pytest.approx(1000.0, rel=0.05)
    assert figures["itl_p50_ms"] == pytest.approx(100.0)


def test_summarise_of_a_run_where_all_failed_has_no_percentiles() -> None:
    figures = summarise(Run([Record(sent=0.0, end=1.0, error="refused")], 1.0), Slo(1, 1))
    assert figures["requests"] == "0/1" and figures["ttft_p50_ms"] is None


# -- what a client reads ----------------------------------------------------------------------


def sse(*events: Any, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


def chunk(content: str | None = None, role: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"role": role, "content": content}}]}


class FakeServer:
    """An OpenAI-compatible server in a mock transport: refuses fields it does not know."""

    def __init__(self, knows: set[str]) -> None:
        self.knows = knows | {"model", "messages", "max_tokens", "temperature", "stream"}
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.bodies.append(body)
        unknown = set(body) - self.knows
        if unknown:
            return httpx2.Response(422, json={"detail": f"unexpected fields {sorted(unknown)}"})
        events = [chunk(role="assistant"), chunk("Hello"), chunk(" there"), chunk(None)]
        usage = {"choices": [], "usage": {"completion_tokens": 2}}
        return httpx2.Response(200, content=sse(*events, usage))


def client_of(server: FakeServer, **options: Any) -> ChatClient:
    return ChatClient("http://fake", "m", transport=httpx2.MockTransport(server), **options)


def test_a_stream_counts_chunks_of_content_not_the_role_and_reads_usage() -> None:
    async def main() -> Record:
        async with client_of(FakeServer(set())) as client:
            return await client.send("Hi", 5)

    got = asyncio.run(main())
    assert got.ok and got.text == "Hello there"
    assert len(got.chunks) == 2 and got.tokens == 2
    assert got.sent <= got.chunks[0] <= got.chunks[1] <= got.end


def test_an_error_status_or_event_fails_the_request_with_the_servers_words() -> None:
    def broken(request: Any) -> Any:
        if b"event" in request.content:
            return httpx2.Response(200, content=sse(chunk("a"), {"error": "model died"}))
        return httpx2.Response(503, text="overloaded")

    async def main() -> tuple[Record, Record]:
        async with ChatClient("http://fake", "m", transport=httpx2.MockTransport(broken)) as c:
            return await c.send("status", 3), await c.send("event", 3)

    status, event = asyncio.run(main())
    assert status.error == "HTTP 503: overloaded" and not status.ok
    assert event.error == "model died" and not event.ok


@pytest.mark.parametrize(
    ("knows", "sent"),
    [
        pytest.param(
            {"stream_options", "ignore_eos", "min_tokens"},
            {"stream_options": {"include_usage": True}, "ignore_eos": True, "min_tokens": 16},
            id="vllm-like",
        ),
        pytest.param(
            {"stream_options"}, {"stream_options": {"include_usage": True}}, id="usage only"
        ),
        pytest.param(set(), {}, id="strict"),
    ],
)
def test_each_server_gets_the_extra_fields_it_accepts(
    knows: set[str], sent: dict[str, Any]
) -> None:
    server = FakeServer(knows)

    async def main() -> dict[str, Any]:
        async with client_of(server) as client:
            client.extra = await _accepted_extras(client, 16)
            await client.send("Hi", 16)
            return client.extra

    assert asyncio.run(main()) == sent
    assert {k: v for k, v in server.bodies[-1].items() if k in sent} == sent


# -- when the schedules send ------------------------------------------------------------------


class Counting(Sender):
    """Answers after a short wait, counting how many requests are in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.asked: list[str] = []

    async def send(self, question: str, max_tokens: int) -> Record:
        sent = time.perf_counter()
        self.asked.append(question)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.005)  # the request's own time, not synchronisation
        self.in_flight -= 1
        now = time.perf_counter()
        return Record(sent=sent, chunks=[now], end=now, text=question)


def test_closed_loop_keeps_at_most_its_clients_in_flight_and_sends_every_question() -> None:
    sender = Counting()
    asked = [f"q{i}" for i in range(10)]
    run = asyncio.run(closed_loop(sender, asked, 4, clients=3))
    assert sender.most == 3 and sorted(sender.asked) == sorted(asked)
    assert [r.text for r in run.records] == asked  # in the order of the questions
    assert run.seconds > 0


def test_poisson_sends_each_request_no_earlier_than_its_seeded_arrival() -> None:
    import numpy as np

    sender = Counting()
    asked = [f"q{i}" for i in range(6)]
    start = time.perf_counter()
    run = asyncio.run(poisson(sender, asked, 4, rate=200.0, seed=7))
    gaps = np.random.default_rng(7).exponential(1 / 200.0, size=6)
    arrivals = np.cumsum(gaps) - gaps[0]
    assert [r.text for r in run.records] == asked
    assert all(r.sent - start >= at - 1e-3 for r, at in zip(run.records, arrivals, strict=True))


# -- the servers' command lines ---------------------------------------------------------------


def test_both_servers_listen_on_loopback_and_transformers_cache_is_sized() -> None:
    shape = Shape("cpu", max_batch_size=32, max_length=192)
    for command in (hibachi_serve(Path("/m"), shape), transformers_serve(Path("/m"), shape)):
        assert command[command.index("--host") + 1] == "127.0.0.1"
        assert command[command.index("--device") + 1] == "cpu"
    tf = transformers_serve(Path("/m"), shape)
    assert "--continuous-batching" in tf
    assert tf[tf.index("--cb-num-blocks") + 1] == str(32 * 6)  # 192 tokens: 6 blocks of 32


# -- a server in a child process --------------------------------------------------------------

SERVER = textwrap.dedent(
    """
    import http.server, json, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "fake"}]}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    print("serving", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.slow
def test_a_server_is_awaited_then_stopped_with_its_whole_group() -> None:
    server = ServerProcess("fake", lambda port: [sys.executable, "-c", SERVER, str(port)])
    with server:
        assert server.url.startswith("http://127.0.0.1:") and _answers(server.url)
        process = server._process
        assert process is not None
    assert process.poll() is not None and not _answers(server.url)
    server.stop()  # idempotent


@pytest.mark.slow
def test_a_server_is_stopped_when_the_block_raises() -> None:
    server = ServerProcess("fake", lambda port: [sys.executable, "-c", SERVER, str(port)])
    with pytest.raises(KeyboardInterrupt), server:
        process = server._process
        raise KeyboardInterrupt
    assert process is not None and process.poll() is not None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the guard is Linux's PR_SET_PDEATHSIG")
def test_a_server_ends_when_the_bench_that_started_it_is_killed() -> None:
    import signal
    import subprocess

    bench = textwrap.dedent(
        f"""
        import sys, time
        from hibachi._bench.servers.process import ServerProcess
        server = ServerProcess("fake", lambda port: [sys.executable, "-c", {SERVER!r}, str(port)])
        server.start()
        print(server._process.pid, server.url, flush=True)
        time.sleep(120)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", bench], stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        pid, url = parent.stdout.readline().split()
        assert _answers(url)
        parent.send_signal(signal.SIGKILL)  # no finally, no __exit__: only the guard is left
    deadline = time.monotonic() + 30
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)  # an orphan's end has no event this process can wait on
    assert not _alive(int(pid)) and not _answers(url)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "match"),
    [
        pytest.param(
            "print('no model here'); raise SystemExit(3)", r"exited \(3\).*no model", id="exits"
        ),
        pytest.param("import time; time.sleep(60)", "did not answer within 1 s", id="silent"),
    ],
)
def test_a_server_that_does_not_come_up_fails_clearly_and_is_stopped(
    script: str, match: str
) -> None:
    server = ServerProcess("bad", lambda port: [sys.executable, "-c", script], start_seconds=1)
    with pytest.raises(ServerFailed, match=match):
        server.start()
    assert server._process is None  # stopped


# -- the workload, end to end -----------------------------------------------------------------


@pytest.mark.slow
def test_the_workload_drives_both_servers_and_the_batcher_in_process_then_stops_them() -> None:
    import re

    from hibachi._bench import NullProgress, preset
    from hibachi._bench.workloads import serving

    pytest.importorskip("fastapi")
    settings = preset("tiny", workloads=("serving",))
    section = serving.measure(settings, NullProgress())
    rows = {row.method: row for row in section.rows}
    labels = ["1 client", "2 clients", "8 req/s"]
    for server in ("hibachi serve", "transformers serve"):
        for label in labels:
            row = rows[f"{server} · {label}"]
            assert row.status == "ok" and row.values["requests"] == "2/2", row
            assert isinstance(row.values["ttft_p50_ms"], float)
    assert {f"{serving.IN_PROCESS} · {label}" for label in labels[:2]} <= set(rows)
    assert f"{serving.IN_PROCESS} · 8 req/s" not in rows  # the in-process reference: clients only
    assert {s.label for s in section.series} >= {HIBACHI, TRANSFORMERS}
    urls = re.findall(r"at (http://127\.0\.0\.1:\d+)", " ".join(section.notes))
    assert len(urls) == 2 and not any(_answers(url) for url in urls)  # both stopped
