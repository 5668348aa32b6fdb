"""No request holds the others up: while hostile requests are served or refused, a
bystander's token stream and ``/health`` keep their pace.

The bystander streams a long completion and polls ``/health``; meanwhile a
client sends, one after another, a 21 MB prompt, 1,000 stop strings of 1,000
characters, a 50 MB body, and requests at each limit that the server does serve
(or refuses only after tokenizing them): a prompt of ``max_input_chars``
characters, 16 stop strings of 256 characters, 2,048 texts to embed, a body of
token ids near ``max_request_bytes``. The largest gap between the bystander's
tokens, and the slowest ``/health``, may exceed their own before the hostile
requests by at most `BOUND` seconds. Before the event loop was kept free, the
first of those requests alone froze both for tens of seconds.

The server runs in a process of its own, so that the test's own clients do not
share its interpreter (and its GIL).
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

from support.serve import Running

pytestmark = pytest.mark.slow

# Seconds a bystander may wait beyond its worst before the hostile requests. The goal is
# 0.1 s (and this machine meets it: the test prints what it saw); the bound leaves room
# for a loaded 2-core CI machine, while the stalls it guards against lasted 10 s and more.
BOUND = 1.0

SERVER = """
import sys, torch
from hibachi.serve import ServeSettings, create_app, default_embedding_model, run
from hibachi.serve import tiny_language_model
torch.set_num_threads(1)
settings = ServeSettings(max_batch_size=32, max_length=4096)
app = create_app(tiny_language_model(), default_embedding_model(), settings=settings)
run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "Uvicorn running on" in line:
                break
        else:
            pytest.fail(f"the server exited with {process.wait()}")
        yield Running(None, "127.0.0.1", port)  # type: ignore[arg-type]
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:  # an event loop held up cannot handle its signal
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


class Bystander:
    """A long token stream and a ``/health`` poller, on threads of their own, and how
    long each has been waiting (`waits`)."""

    def __init__(self, server: Running) -> None:
        self.server = server
        self.tokens = 0
        self.last_token = time.monotonic()
        self.asked_health: float | None = None  # when the /health now pending was sent
        self.healths = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._stream), threading.Thread(target=self._poll)]

    def __enter__(self) -> Bystander:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def waits(self) -> tuple[float, float]:
        """Seconds since the last token, and since the pending /health was sent (0: none)."""
        now = time.monotonic()
        asked = self.asked_health
        return now - self.last_token, 0.0 if asked is None else now - asked

    def _stream(self) -> None:
        body = {"prompt": "go", "max_tokens": 4000, "temperature": 0, "stream": True}
        while not self.stop.is_set():  # a new stream when one ends
            with self.server.open_stream("/v1/completions", body) as stream:
                stream.sock.settimeout(600)
                for _ in stream.events():
                    self.last_token = time.monotonic()
                    self.tokens += 1
                    if self.stop.is_set():
                        return

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.asked_health = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=600)
            connection.request("GET", "/health")
            connection.getresponse().read()
            connection.close()
            self.asked_health = None
            self.healths += 1
            self.stop.wait(0.01)


def worst_waits(bystander: Bystander, until: Callable[[], bool], limit: float) -> list[float]:
    """The longest waits of the bystander's tokens and /health, sampled every 10 ms while
    ``until()`` is false or until one exceeds ``limit`` seconds."""
    worst = [0.0, 0.0]
    while not until():
        worst = [max(w, now) for w, now in zip(worst, bystander.waits(), strict=True)]
        if max(worst) > limit:
            break
        time.sleep(0.01)
    return worst


def raw_post(port: int, path: str, body: bytes) -> int:
    """POST ``body`` on a plain socket as careful clients do (``Expect: 100-continue``):
    the body goes only once the server asks for it; its final status."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        status, rest = _status(sock, b"")
        if status == 100:
            sock.sendall(body)
            status, _ = _status(sock, rest.split(b"\r\n\r\n", 1)[1])
    return status


def _status(sock: socket.socket, answer: bytes) -> tuple[int, bytes]:
    """The status of the next response on ``sock`` (``answer``: what was read already)."""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without answering"
        answer += chunk
    return int(answer.split()[1]), answer


def hostile_requests() -> list[tuple[str, str, bytes, set[int]]]:
    """(name, path, body, statuses it may get), each body built before the clock runs."""

    def as_json(value: Any) -> bytes:
        return json.dumps(value).encode()

    long_stops = ["x" * 1000] * 1000
    return [
        ("21 MB prompt", "/v1/completions", as_json({"prompt": "a " * 10_500_000}), {413}),
        ("1,000 stops", "/v1/completions", as_json({"prompt": "a", "stop": long_stops}), {400}),
        ("50 MB body", "/v1/completions", as_json({"prompt": "b" * 50_000_000}), {413}),
        (
            "prompt at max_input_chars",
            "/v1/completions",
            as_json({"prompt": "word " * 209_715}),
            {400},
        ),
        (
            "16 stops of 256",
            "/v1/completions",
            as_json(
                {
                    "prompt": "go",
                    "max_tokens": 200,
                    "stop": ["y" * 255 + str(i % 10) for i in range(16)],
                }
            ),
            {200},
        ),
        (
            "2,048 texts",
            "/v1/embeddings",
            as_json({"input": [f"text {i}" for i in range(2048)]}),
            {200},
        ),
        (
            "4 MB of token ids",
            "/v1/completions",
            as_json({"prompt": [30000] * 595_000}),
            {400},
        ),
    ]


def test_no_request_holds_up_another_s_tokens_or_health(server: Running) -> None:
    requests = hostile_requests()
    answers: list[tuple[str, int | str]] = []

    def attack() -> None:
        for name, path, body, _ in requests:
            try:
                answers.append((name, raw_post(server.port, path, body)))
            except OSError as exc:  # the server was stopped while held up
                answers.append((name, repr(exc)))
                return

    with Bystander(server) as bystander:
        while bystander.tokens < 50 or bystander.healths < 20:
            time.sleep(0.05)  # the bystander warms up
        calm_until = time.monotonic() + 2.0
        calm = worst_waits(bystander, lambda: time.monotonic() > calm_until, math.inf)
        attacker = threading.Thread(target=attack, daemon=True)  # held up, it is left behind
        attacker.start()
        limit = max(calm) + BOUND
        hostile = worst_waits(bystander, lambda: not attacker.is_alive(), limit)
        print(
            f"longest wait for a token {calm[0]:.3f} s calm, {hostile[0]:.3f} s under attack; "
            f"for /health {calm[1]:.3f} s calm, {hostile[1]:.3f} s under attack"
        )
        assert hostile[0] <= calm[0] + BOUND, f"a token waited {hostile[0]:.2f} s: {answers}"
        assert hostile[1] <= calm[1] + BOUND, f"/health waited {hostile[1]:.2f} s: {answers}"
    expected = {name: statuses for name, _, _, statuses in requests}
    assert all(status in expected[name] for name, status in answers), answers
