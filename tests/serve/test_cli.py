"""``hibachi serve`` as a user runs it: a process with the embedded default models,
stopped by a real SIGTERM while a stream is running."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

from support.serve import Running

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], Running]]:
    port = free_port()
    command = [
        sys.executable, "-c", "from hibachi._cli import main; raise SystemExit(main())",
        "serve", "--port", str(port), "--max-batch-size", "2", "--shutdown-grace", "0.5",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:  # blocks until uvicorn says it listens, or the process ends
            if "Uvicorn running on" in line:
                break
        else:
            pytest.fail(f"hibachi serve exited with {process.wait()} before listening")
        yield process, Running(None, "127.0.0.1", port)  # type: ignore[arg-type]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_sigterm_ends_a_running_stream_with_an_error_event_then_exits_0(
    served: tuple[subprocess.Popen[str], Running],
) -> None:
    process, server = served
    status, _, body = server.request("GET", "/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["hibachi-llama", "all-MiniLM-L6-v2"]
    with server.open_stream(
        "/v1/completions", {"prompt": "go", "max_tokens": 500, "stream": True}
    ) as stream:
        events = stream.events()
        next(events)
        process.send_signal(signal.SIGTERM)
        last = json.loads(list(events)[-1])
    assert last["error"]["code"] == "shutdown"
    assert process.wait(timeout=60) == 0
