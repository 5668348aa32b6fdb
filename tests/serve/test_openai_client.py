"""The official ``openai`` client, unchanged, through every documented call hibachi
serves: sync and async, whole and streamed (with usage), raw and streaming responses,
and its retries of a 429 after the ``Retry-After`` the server sends."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
pytest.importorskip("torch")

from hibachi.serve import (  # noqa: E402
    LanguageModel,
    ServeSettings,
    create_app,
    default_embedding_model,
    tiny_language_model,
)
from support.serve import Running, running  # noqa: E402

LLM, EMBEDDER = "hibachi-llama", "all-MiniLM-L6-v2"
CHAT = [{"role": "user", "content": "hello there"}]
LONG = 500


@pytest.fixture(scope="module")
def language_model() -> LanguageModel:
    return tiny_language_model()


@pytest.fixture(scope="module")
def server(language_model: LanguageModel) -> Iterator[Running]:
    settings = ServeSettings(max_batch_size=4)
    with running(create_app(language_model, default_embedding_model(), settings=settings)) as s:
        yield s


@pytest.fixture
def client(server: Running) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0) as client:
        yield client


def async_client(server: Running) -> Any:
    """An `AsyncOpenAI` for ``async with`` inside the test's own event loop."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_models_list_and_retrieve(server: Running, client: Any) -> None:
    assert [m.id for m in client.models.list()] == [LLM, EMBEDDER]
    assert client.models.retrieve(LLM).id == LLM
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")

    async def main() -> list[str]:
        async with async_client(server) as aclient:
            assert (await aclient.models.retrieve(EMBEDDER)).owned_by == "hibachi"
            return [m.id async for m in aclient.models.list()]

    assert asyncio.run(main()) == [LLM, EMBEDDER]


def test_completions_whole_streamed_and_async_agree(server: Running, client: Any) -> None:
    ask = {"model": LLM, "prompt": "once upon", "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(**ask)
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 8
    chunks = list(
        client.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    async def main() -> tuple[str, str]:
        async with async_client(server) as aclient:
            done = await aclient.completions.create(**ask)
            stream = await aclient.completions.create(**ask, stream=True)
            return done.choices[0].text, "".join([c.choices[0].text async for c in stream])

    assert asyncio.run(main()) == (whole.choices[0].text, whole.choices[0].text)


def test_chat_whole_streamed_and_async_agree(server: Running, client: Any) -> None:
    ask = {"model": LLM, "messages": CHAT, "max_completion_tokens": 6, "temperature": 0}
    whole = client.chat.completions.create(**ask)
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens == 6
    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 6

    async def main() -> str:
        async with async_client(server) as aclient:
            stream = await aclient.chat.completions.create(**ask, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream])

    assert asyncio.run(main()) == whole.choices[0].message.content


def test_embeddings_as_floats_and_base64_sync_and_async(server: Running, client: Any) -> None:
    texts = ["a cat", "a dog", "the stock market"]
    floats = client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    packed = client.embeddings.create(model=EMBEDDER, input=texts)  # the client asks base64
    assert [d.index for d in floats.data] == [0, 1, 2]
    for a, b in zip(floats.data, packed.data, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    same = client.embeddings.create(model=EMBEDDER, input="a cat", dimensions=384)
    assert len(same.data[0].embedding) == 384

    async def main() -> Any:
        async with async_client(server) as aclient:
            return await aclient.embeddings.create(model=EMBEDDER, input=texts)

    assert np.allclose(asyncio.run(main()).data[1].embedding, floats.data[1].embedding, atol=1e-6)


def test_raw_and_streaming_responses(server: Running, client: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=LLM, messages=CHAT, max_tokens=3, temperature=0
    )
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    assert raw.parse().usage.completion_tokens == 3
    with client.completions.with_streaming_response.create(
        model=LLM, prompt="go", max_tokens=3, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and len(lines) == 3 + 2
    raw = client.embeddings.with_raw_response.create(model=EMBEDDER, input="x")
    assert len(raw.parse().data) == 1


def test_errors_reach_the_client_as_its_own_exceptions(server: Running, client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=LLM, messages=CHAT, tools=[{"type": "function",
                                       "function": {"name": "f"}}])  # fmt: skip
    assert info.value.param == "tools" and info.value.code == "unsupported_parameter"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="a")


def test_a_429_is_retried_after_its_retry_after(language_model: LanguageModel) -> None:
    settings = ServeSettings(max_batch_size=1, max_queue_size=1, drain_window=1.0)
    with running(create_app(language_model, None, settings=settings)) as served:
        body = {"prompt": "go", "max_tokens": LONG, "stream": True}
        busy = served.open_stream("/v1/completions", body)
        next(busy.events())
        waiting = served.open_stream("/v1/completions", body)
        status, headers, _ = served.post("/v1/completions", {"prompt": "go", "max_tokens": 1})
        assert status == 429 and headers["retry-after"] == "1"
        hooks = {"response": [lambda r: _free_on_429(r, busy, waiting)]}  # the queue empties
        with openai.OpenAI(
            base_url=f"{served.url}/v1",
            api_key="none",
            max_retries=1,
            http_client=openai.DefaultHttpxClient(event_hooks=hooks),
        ) as client:
            began = time.monotonic()
            done = client.completions.create(model=LLM, prompt="go", max_tokens=2)
        assert done.usage.completion_tokens == 2
        assert time.monotonic() - began >= 1.0  # it waited as Retry-After said


def _free_on_429(response: Any, *streams: Any) -> None:
    if response.status_code == 429:
        for stream in streams:
            stream.close()


def test_the_chat_role_chunk_goes_with_the_first_token_not_on_arrival(
    language_model: LanguageModel,
) -> None:
    """Benchmark clients time the first token from the first chunk: a request that waits
    in the queue sends nothing until its first token."""
    settings = ServeSettings(max_batch_size=1)
    with running(create_app(language_model, None, settings=settings)) as served:
        busy = served.open_stream("/v1/completions", {"prompt": "go", "max_tokens": LONG,
                                                      "stream": True})  # fmt: skip
        next(busy.events())  # it holds the only row
        queued = served.open_stream(
            "/v1/chat/completions", {"messages": CHAT, "max_tokens": 3, "stream": True}
        )
        queued.sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            next(queued.events())  # nothing while it waits in the queue
        busy.close()
        queued.sock.settimeout(60)
        events = [json.loads(e) for e in queued.events() if e != "[DONE]"]
        queued.close()
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["delta"]["content"] is not None


def test_base64_embeddings_are_little_endian_float32(server: Running, client: Any) -> None:
    status, _, answer = server.post("/v1/embeddings", {"input": "x", "encoding_format": "base64"})
    vector = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")
    assert status == 200 and vector.shape == (384,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_an_embedding_request_larger_than_the_queue_is_served_whole() -> None:
    """OpenAI takes 2,048 inputs per request: a request is admitted whole while fewer than
    max_queue_size inputs wait, however many inputs it brings."""
    settings = ServeSettings(max_batch_size=8, max_queue_size=4)
    with (
        running(create_app(None, default_embedding_model(), settings=settings)) as served,
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0) as client,
    ):
        done = client.embeddings.create(model=EMBEDDER, input=[f"t{i}" for i in range(300)])
        assert [d.index for d in done.data] == list(range(300))
