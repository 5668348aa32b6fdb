"""``hibachi.serve``: the real server (uvicorn on 127.0.0.1), driven by the openai client
and by raw HTTP on plain sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")

from hibachi.serve import (  # noqa: E402
    LanguageModel,
    ServeSettings,
    create_app,
    default_embedding_model,
    tiny_language_model,
)
from support.serve import Running, running  # noqa: E402

LLM = "hibachi-llama"
LONG = 500  # tokens: a request that runs for as long as a test needs it to


@pytest.fixture(scope="module")
def language_model() -> LanguageModel:
    return tiny_language_model()


@pytest.fixture(scope="module")
def server(language_model: LanguageModel) -> Iterator[Running]:
    settings = ServeSettings(max_batch_size=4, max_queue_size=8)
    app = create_app(language_model, default_embedding_model(), settings=settings)
    with running(app) as served:
        yield served


def generate(lm: LanguageModel, ids: list[int], n: int) -> list[int]:
    """transformers' own greedy generate(): the reference."""
    with torch.inference_mode():
        out = lm.model.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=lm.eos_token_id,
            pad_token_id=lm.pad_token_id,
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        )
    return [int(t) for t in out[0, len(ids) :]]


def decode(lm: LanguageModel, prompt: list[int], ids: list[int]) -> str:
    """The text ``ids`` add after ``prompt``."""

    def text(ids: list[int]) -> str:
        out: str = lm.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return out

    return text(prompt + ids)[len(text(prompt)) :]


def test_models_lists_both_models(server: Running) -> None:
    ids = [m.id for m in server.client().models.list()]
    assert ids == [LLM, "all-MiniLM-L6-v2"]


@pytest.mark.parametrize("prompt", ["the quick brown fox", [2003, 4248, 2829]], ids=["text", "ids"])
def test_a_greedy_completion_is_generate_s_text(
    server: Running, language_model: LanguageModel, prompt: Any
) -> None:
    done = server.client().completions.create(
        model=LLM, prompt=prompt, max_tokens=12, temperature=0
    )
    ids = (
        prompt
        if isinstance(prompt, list)
        else language_model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )
    expected = generate(language_model, ids, 12)
    assert done.choices[0].text == decode(language_model, ids, expected)
    assert done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(ids), 12)


def test_a_stream_is_the_same_text_in_pieces_then_done(server: Running) -> None:
    client = server.client()
    whole = client.completions.create(model=LLM, prompt="hello", max_tokens=10, temperature=0)
    pieces = list(
        client.completions.create(
            model=LLM, prompt="hello", max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert [p.choices[0].finish_reason for p in pieces][-1] == "length"
    *_, last = client.completions.create(
        model=LLM, prompt="hello", max_tokens=10, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert last.choices == [] and last.usage.completion_tokens == 10
    with server.open_stream(
        "/v1/completions", {"prompt": "hello", "max_tokens": 3, "stream": True}
    ) as raw:
        events = list(raw.events())
    assert raw.status == 200 and raw.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]" and len(events) == 3 + 2


def test_a_stop_string_ends_the_text_before_it(server: Running) -> None:
    client = server.client()
    text = (
        client.completions.create(model=LLM, prompt="stop here", max_tokens=12, temperature=0)
        .choices[0]
        .text
    )
    stop = text.split()[3]
    cut = client.completions.create(
        model=LLM, prompt="stop here", max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=LLM, prompt="stop here", max_tokens=12, temperature=0, stop=stop, stream=True
    )
    assert "".join(p.choices[0].text for p in streamed) == cut.choices[0].text


def test_a_seeded_sample_repeats(server: Running) -> None:
    client = server.client()
    texts = {
        client.completions.create(
            model=LLM,
            prompt="roll",
            max_tokens=8,
            temperature=1.0,
            top_p=0.9,
            seed=7,
            extra_body={"top_k": 50},
        )
        .choices[0]
        .text
        for _ in range(2)
    }
    assert len(texts) == 1


def test_chat_uses_the_chat_template(server: Running, language_model: LanguageModel) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "hello there"}]
    done = client.chat.completions.create(model=LLM, messages=messages, max_tokens=6, temperature=0)
    ids = language_model.tokenizer("user: hello there\nassistant:", add_special_tokens=False)[
        "input_ids"
    ]
    expected = decode(language_model, ids, generate(language_model, ids, 6))
    assert done.choices[0].message.content == expected
    assert done.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model=LLM, messages=messages, max_tokens=6, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks) == done.choices[0].message.content
    )


def test_embeddings_equal_sentence_transformers(server: Running) -> None:
    from sentence_transformers import SentenceTransformer

    from hibachi.serve._models import minilm_folder

    texts = ["a short one", "batching many small requests into one model call " * 8, "x"]
    reference = SentenceTransformer(str(minilm_folder()), device="cpu").encode(texts)
    client = server.client()
    served = [
        d.embedding for d in client.embeddings.create(model="all-MiniLM-L6-v2", input=texts).data
    ]
    as_floats = server.post("/v1/embeddings", {"input": texts[1], "encoding_format": "float"})[2]
    for got, want in [
        *zip(served, reference, strict=True),
        (as_floats["data"][0]["embedding"], reference[1]),
    ]:
        cosine = np.dot(got, want) / np.linalg.norm(got) / np.linalg.norm(want)
        assert cosine >= 0.99999


@pytest.mark.parametrize(
    ("path", "body", "headers", "param"),
    [
        pytest.param(
            "/v1/completions", {"prompt": "a", "max_tokens": 0}, {}, "max_tokens", id="max_tokens"
        ),
        pytest.param(
            "/v1/completions",
            {"prompt": "a", "temperature": -1},
            {},
            "temperature",
            id="temperature",
        ),
        pytest.param("/v1/completions", {"prompt": "a", "top_p": 0}, {}, "top_p", id="top_p"),
        pytest.param("/v1/completions", {"max_tokens": 3}, {}, "prompt", id="no-prompt"),
        pytest.param(
            "/v1/completions", {"prompt": [1, 10**9]}, {}, "prompt", id="token-out-of-vocab"
        ),
        pytest.param("/v1/completions", {"prompt": ["a", "b"]}, {}, "prompt", id="two-prompts"),
        pytest.param("/v1/completions", {"prompt": ""}, {}, "prompt", id="empty-prompt"),
        pytest.param("/v1/completions", {"prompt": "a " * 5000}, {}, "prompt", id="too-long"),
        pytest.param("/v1/completions", {"prompt": "a", "n": 2}, {}, "n", id="n"),
        pytest.param("/v1/completions", {"prompt": "a", "logprobs": 2}, {}, "logprobs", id="lp"),
        pytest.param("/v1/completions", {"prompt": "a", "best_of": 3}, {}, "best_of", id="best_of"),
        pytest.param("/v1/completions", {"prompt": "a", "echo": True}, {}, "echo", id="echo"),
        pytest.param(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a"}], "top_logprobs": 3},
            {},
            "top_logprobs",
            id="top_logprobs",
        ),
        pytest.param(
            "/v1/completions",
            {"prompt": "a"},
            {"X-Request-Timeout": "soon"},
            "X-Request-Timeout",
            id="timeout-header",
        ),
        pytest.param("/v1/chat/completions", {"messages": []}, {}, "messages", id="no-messages"),
        pytest.param(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            {},
            "messages[0].content",
            id="image",
        ),
        pytest.param("/v1/embeddings", {"input": []}, {}, "input", id="empty-input"),
        pytest.param(
            "/v1/embeddings",
            {"input": "a", "encoding_format": "int8"},
            {},
            "encoding_format",
            id="encoding",
        ),
    ],
)
def test_a_client_mistake_is_a_400_naming_the_field(
    server: Running, path: str, body: dict[str, Any], headers: dict[str, str], param: str
) -> None:
    status, _, answer = server.post(path, body, **headers)
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error"
    assert param.split(".")[0].lower() in answer["error"]["message"].lower()


def test_an_unknown_model_is_a_404_and_a_bad_body_is_a_400(server: Running) -> None:
    status, _, answer = server.post("/v1/completions", {"model": "gpt-9", "prompt": "a"})
    assert (status, answer["error"]["param"]) == (404, "model")
    status, _, body = server.request("POST", "/v1/completions", None)
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model=LLM, prompt="a", max_tokens=-5)


def test_past_its_deadline_a_request_gets_504_or_a_timeout_event(server: Running) -> None:
    body = {"prompt": "tick", "max_tokens": LONG, "temperature": 0}
    status, _, answer = server.post("/v1/completions", body, **{"X-Request-Timeout": "0.05"})
    assert status == 504 and answer["error"]["type"] == "timeout"
    with server.open_stream("/v1/completions", {**body, "stream": True, "timeout": 0.05}) as s:
        last = json.loads(list(s.events())[-1])
    assert last["error"]["type"] == "timeout"
    with pytest.raises(openai.APIError, match="deadline"):
        list(
            server.client().completions.create(
                model=LLM,
                prompt="tick",
                max_tokens=LONG,
                stream=True,
                extra_headers={"X-Request-Timeout": "0.05"},
            )
        )
    assert server.metric("hibachi_requests_ended_total", model=LLM, reason="timed_out") >= 3


def test_a_client_that_closes_mid_stream_frees_its_row(server: Running) -> None:
    cancelled = server.metric("hibachi_requests_ended_total", model=LLM, reason="cancelled")
    stream = server.open_stream(
        "/v1/completions", {"prompt": "go", "max_tokens": LONG, "stream": True}
    )
    first = next(stream.events())
    assert json.loads(first)["choices"][0]["text"] is not None
    assert server.metric("hibachi_requests_running", model=LLM) == 1
    stream.close()
    server.wait_for_metric("hibachi_requests_running", 0, model=LLM)
    server.wait_for_metric(
        "hibachi_requests_ended_total", cancelled + 1, model=LLM, reason="cancelled"
    )


def test_a_client_that_leaves_while_queued_never_reaches_the_model(server: Running) -> None:
    body = {"prompt": "go", "max_tokens": LONG, "stream": True}
    cancelled = server.metric("hibachi_requests_ended_total", model=LLM, reason="cancelled")
    stepped = server.metric("hibachi_queue_time_seconds_count", model=LLM)
    busy = [server.open_stream("/v1/completions", body) for _ in range(4)]  # every row
    for stream in busy:
        next(stream.events())
    with server.open_stream("/v1/completions", body):
        assert server.metric("hibachi_requests_waiting", model=LLM) == 1
    server.wait_for_metric(
        "hibachi_requests_ended_total", cancelled + 1, model=LLM, reason="cancelled"
    )
    for stream in busy:
        stream.close()
    server.wait_for_metric("hibachi_requests_running", 0, model=LLM)
    server.wait_for_metric("hibachi_requests_waiting", 0, model=LLM)
    server.wait_for_metric(
        "hibachi_requests_ended_total", cancelled + 5, model=LLM, reason="cancelled"
    )
    # the four busy requests had model steps; the one that left while queued had none
    assert server.metric("hibachi_queue_time_seconds_count", model=LLM) == stepped + 4


def test_health_and_metrics(server: Running) -> None:
    status, _, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    server.client().completions.create(model=LLM, prompt="count me", max_tokens=3)
    names = {name for name, _ in server.metrics()}
    for name in (
        "hibachi_requests_running",
        "hibachi_requests_waiting",
        "hibachi_time_to_first_token_seconds_count",
        "hibachi_time_per_output_token_seconds_count",
        "hibachi_e2e_request_latency_seconds_count",
        "hibachi_queue_time_seconds_count",
        "hibachi_batch_fill_ratio_count",
        "hibachi_generation_tokens_total",
        "hibachi_requests_ended_total",
        "hibachi_kv_cache_usage_ratio",
        "hibachi_prefix_cache_queries_total",
        "hibachi_prefix_cache_hits_total",
        "hibachi_requests_preempted_total",
    ):
        assert name in names, name
    assert server.metric("hibachi_prefix_cache_queries_total", model=LLM) > 0
    assert 0 <= server.metric("hibachi_kv_cache_usage_ratio", model=LLM) <= 1
    assert server.metric("hibachi_requests_ended_total", model=LLM, reason="budget") >= 1


@pytest.fixture
def small_server(language_model: LanguageModel) -> Iterator[Running]:
    """One row and one queue place, and a tokenizer without a chat template."""
    tokenizer = type(language_model.tokenizer).from_pretrained(
        language_model.tokenizer.name_or_path
    )
    lm = LanguageModel("plain", language_model.model, tokenizer, language_model.eos_token_id, 0)
    settings = ServeSettings(max_batch_size=1, max_queue_size=1, shutdown_grace=0.2)
    with running(create_app(lm, None, settings=settings)) as served:
        yield served


def test_a_full_queue_answers_429_with_retry_after(small_server: Running) -> None:
    body = {"prompt": "go", "max_tokens": LONG, "stream": True}
    running_one = small_server.open_stream("/v1/completions", body)
    next(running_one.events())
    waiting_one = small_server.open_stream("/v1/completions", body)
    status, headers, answer = small_server.post("/v1/completions", {**body, "stream": False})
    assert status == 429 and answer["error"]["type"] == "rate_limit_error"
    assert int(headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        small_server.client().completions.create(model="plain", prompt="go")
    assert small_server.metric("hibachi_requests_ended_total", model="plain", reason="refused") == 2
    running_one.close()
    waiting_one.close()


def test_without_a_chat_template_chat_is_a_400(small_server: Running) -> None:
    status, _, answer = small_server.post(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 400 and answer["error"]["code"] == "no_chat_template"
    status, _, answer = small_server.post("/v1/embeddings", {"input": "hi"})
    assert status == 404


def test_health_is_503_once_an_engine_is_closed(small_server: Running) -> None:
    state = small_server.server.config.app.state.hibachi
    state.language.batcher.close()
    status, _, body = small_server.request("GET", "/health")
    assert status == 503 and json.loads(body)["models"]["plain"]["state"] == "closed"


def test_shutdown_drains_then_ends_the_rest_with_an_error_event(
    language_model: LanguageModel,
) -> None:
    settings = ServeSettings(max_batch_size=2, shutdown_grace=0.5)
    app = create_app(language_model, None, settings=settings)
    body = {"prompt": "go", "temperature": 0, "stream": True}
    with running(app) as served:
        long = served.open_stream("/v1/completions", {**body, "max_tokens": LONG})
        short = served.open_stream("/v1/completions", {**body, "max_tokens": 5})
        long_events = long.events()
        next(long_events)
        served.server.handle_exit(15, None)  # what SIGTERM calls
        assert app.state.hibachi.draining
        with short, long:
            assert list(short.events())[-1] == "[DONE]"  # finished within the grace period
            last = json.loads(list(long_events)[-1])  # cut at its end, with an error event
    assert last["error"]["code"] == "shutdown"
    ended = app.state.hibachi.metrics.ended
    assert ended.labels(LLM, "shutdown")._value.get() == 1
    assert ended.labels(LLM, "budget")._value.get() == 1


class Poisoned(torch.nn.Embedding):
    """An embedding that raises on one token id: a model that fails mid-service."""

    POISON = 999

    def forward(self, ids: Any) -> Any:
        if bool((ids == self.POISON).any()):
            raise RuntimeError("poisoned token")
        return super().forward(ids)


def test_a_model_error_is_a_500_or_a_last_error_event() -> None:
    lm = tiny_language_model(seed=1)
    table = lm.model.get_input_embeddings()
    poisoned = Poisoned(table.num_embeddings, table.embedding_dim)
    poisoned.load_state_dict(table.state_dict())
    lm.model.set_input_embeddings(poisoned)
    with running(create_app(lm, None)) as served:
        status, _, answer = served.post("/v1/completions", {"prompt": [5, Poisoned.POISON]})
        assert status == 500 and answer["error"]["type"] == "server_error"
        assert "poisoned" not in answer["error"]["message"]  # no internals leak to clients
        body = {"prompt": [5, Poisoned.POISON], "stream": True}
        with served.open_stream("/v1/completions", body) as stream:
            events = list(stream.events())
        assert stream.status == 200 and json.loads(events[-1])["error"]["type"] == "server_error"
        with pytest.raises(openai.APIError):
            list(served.client().completions.create(model=LLM, prompt=[5, 999], stream=True))
        ok = served.client().completions.create(model=LLM, prompt=[5, 6], max_tokens=4)
        assert ok.usage.completion_tokens == 4  # the server keeps serving
        assert served.metric("hibachi_requests_ended_total", model=LLM, reason="failed") == 3
