"""Every field honoured or refused, strict types, and OpenAI's error shape with the right
status on every path: malformed bodies, wrong types, refused features, limits, unknown
routes and methods. Driven by raw HTTP against one server."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

from hibachi.serve import (
    LanguageModel,
    ServeSettings,
    create_app,
    default_embedding_model,
    tiny_language_model,
)
from support.serve import Running, running

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def language_model() -> LanguageModel:
    return tiny_language_model()


@pytest.fixture(scope="module")
def server(language_model: LanguageModel) -> Iterator[Running]:
    settings = ServeSettings(max_batch_size=4, max_length=64)
    with running(create_app(language_model, default_embedding_model(), settings=settings)) as s:
        yield s


def send(server: Running, path: str, data: bytes, method: str = "POST") -> tuple[int, Any]:
    """``data`` as the body, as is; the status and the parsed answer."""
    import http.client

    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def refused(answer: Any) -> dict[str, Any]:
    """The error of an answer in OpenAI's shape (and nothing else in it)."""
    assert set(answer) == {"error"}, answer
    error: dict[str, Any] = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error"
    return error


# -- malformed bodies ----------------------------------------------------------------------

MALFORMED = {
    "not-json": b"{prompt: 'a'}",
    "invalid-utf8": b'{"prompt": "a\xff\xfe"}',
    "lone-surrogate": b'{"prompt": "a\\ud800b"}',
    "deep-nesting": b'{"prompt": "a", "stop": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge-integer": b'{"prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}",
    "top-level-array": b'["a"]',
    "empty": b"",
    "trailing-garbage": b'{"prompt": "a"} {"prompt": "b"}',
    "nan": b'{"prompt": "a", "temperature": NaN}',
    "infinity": b'{"prompt": "a", "timeout": Infinity}',
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_a_malformed_body_is_a_400(server: Running, path: str, data: bytes) -> None:
    status, answer = send(server, path, data)
    assert status == 400, answer
    refused(answer)


# -- strict types and ranges --------------------------------------------------------------


def completion(**fields: Any) -> dict[str, Any]:
    return {"prompt": "hello", "max_tokens": 2, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": CHAT, "max_tokens": 2, **fields}


WRONG = [
    ("/v1/completions", completion(max_tokens="5"), "max_tokens", "invalid_type"),
    ("/v1/completions", completion(max_tokens=5.0), "max_tokens", "invalid_type"),
    ("/v1/completions", completion(max_tokens=True), "max_tokens", "invalid_type"),
    ("/v1/completions", completion(max_tokens=0), "max_tokens", "invalid_value"),
    ("/v1/completions", completion(max_tokens=10**30), "max_tokens", "context_length_exceeded"),
    ("/v1/completions", completion(stream="yes"), "stream", "invalid_type"),
    ("/v1/completions", completion(stream=1), "stream", "invalid_type"),
    ("/v1/completions", completion(temperature="0.5"), "temperature", "invalid_type"),
    ("/v1/completions", completion(temperature=2.5), "temperature", "invalid_value"),
    ("/v1/completions", completion(top_p=0), "top_p", "invalid_value"),
    ("/v1/completions", completion(top_k=-2), "top_k", "invalid_value"),
    ("/v1/completions", completion(seed=-1), "seed", "invalid_value"),
    ("/v1/completions", completion(seed=2**64), "seed", "invalid_value"),
    ("/v1/completions", completion(timeout=0), "timeout", "invalid_value"),
    ("/v1/completions", completion(timeout="1"), "timeout", "invalid_type"),
    ("/v1/completions", completion(prompt=None), "prompt", "invalid_value"),
    ("/v1/completions", completion(prompt={}), "prompt", "invalid_value"),
    ("/v1/completions", completion(prompt=[]), "prompt", "invalid_value"),
    ("/v1/completions", completion(prompt=[1, True]), "prompt", "invalid_value"),
    ("/v1/completions", completion(prompt=[-1]), "prompt", "invalid_value"),
    ("/v1/completions", completion(prompt=[1.5]), "prompt", "invalid_value"),
    ("/v1/completions", completion(prompt=[10**40]), "prompt", None),
    ("/v1/completions", completion(prompt=["a", "b"]), "prompt", "invalid_value"),
    ("/v1/completions", completion(prompt="a " * 100), "prompt", "context_length_exceeded"),
    ("/v1/completions", completion(stop=5), "stop", "invalid_value"),
    ("/v1/completions", completion(stop=["a", 5]), "stop", "invalid_value"),
    ("/v1/completions", completion(stop=[""]), "stop", "invalid_value"),
    ("/v1/completions", completion(stop=["s"] * 17), "stop", "limit_exceeded"),
    ("/v1/completions", completion(stop=["s" * 257]), "stop", "limit_exceeded"),
    ("/v1/completions", completion(logit_bias={"x": 1}), "logit_bias", "invalid_value"),
    ("/v1/completions", completion(logit_bias={"5": 101}), "logit_bias", "invalid_value"),
    ("/v1/completions", completion(logit_bias={"5": "1"}), "logit_bias.5", "invalid_type"),
    ("/v1/completions", completion(logit_bias={"-5": 1}), "logit_bias", "invalid_value"),
    ("/v1/completions", completion(presence_penalty=3), "presence_penalty", "invalid_value"),
    ("/v1/completions", completion(frequency_penalty=-3), "frequency_penalty", "invalid_value"),
    ("/v1/completions", completion(repetition_penalty=0), "repetition_penalty", "invalid_value"),
    ("/v1/completions", completion(min_tokens=-1), "min_tokens", "invalid_value"),
    ("/v1/completions", completion(ignore_eos="true"), "ignore_eos", "invalid_type"),
    (
        "/v1/completions",
        completion(stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
        "invalid_type",
    ),
    (
        "/v1/completions",
        completion(stream_options={"extra": 1}),
        "stream_options.extra",
        "unknown_parameter",
    ),
    ("/v1/completions", completion(model=5), "model", "invalid_type"),
    (
        "/v1/completions",
        completion(stream_options={"include_usage": True}),
        "stream_options",
        "invalid_value",
    ),
    ("/v1/chat/completions", chat(messages=[]), "messages", "invalid_value"),
    ("/v1/chat/completions", chat(messages="hi"), "messages", "invalid_type"),
    (
        "/v1/chat/completions",
        chat(messages=[{"role": "tool", "content": "x"}]),
        "messages[0].role",
        "invalid_value",
    ),
    (
        "/v1/chat/completions",
        chat(messages=[{"role": "user"}]),
        "messages[0].content",
        "invalid_value",
    ),
    (
        "/v1/chat/completions",
        chat(messages=[*CHAT, {"role": "user", "content": 5}]),
        "messages[1].content",
        "invalid_value",
    ),
    (
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "a", "name": "x"}]),
        "messages[0].name",
        "unknown_parameter",
    ),
    (
        "/v1/chat/completions",
        chat(max_completion_tokens="3"),
        "max_completion_tokens",
        "invalid_type",
    ),
    (
        "/v1/chat/completions",
        chat(max_completion_tokens=10**30),
        "max_completion_tokens",
        "context_length_exceeded",
    ),
    ("/v1/embeddings", {"input": 5}, "input", "invalid_value"),
    ("/v1/embeddings", {"input": []}, "input", "invalid_value"),
    ("/v1/embeddings", {"input": [[]]}, "input", "invalid_value"),
    ("/v1/embeddings", {"input": [1, "a"]}, "input", "invalid_value"),
    ("/v1/embeddings", {"input": ["a"] * 2049}, "input", "limit_exceeded"),
    ("/v1/embeddings", {"input": [10**9]}, "input", None),
    ("/v1/embeddings", {"input": [[1, 2], "a"]}, "input", "invalid_value"),
    ("/v1/completions", completion(n=1.0), "n", "unsupported_parameter"),
    ("/v1/completions", completion(echo=0.0), "echo", "unsupported_parameter"),
    (
        "/v1/embeddings",
        {"input": "a", "encoding_format": "int8"},
        "encoding_format",
        "invalid_value",
    ),
    ("/v1/embeddings", {"input": "a", "dimensions": "384"}, "dimensions", "invalid_type"),
    ("/v1/embeddings", {"input": "a", "dimensions": 0}, "dimensions", "invalid_value"),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), WRONG)
def test_a_wrong_value_is_a_400_naming_the_field_as_sent(
    server: Running, path: str, body: dict[str, Any], param: str, code: str | None
) -> None:
    status, answer = send(server, path, json.dumps(body).encode())
    assert status == 400, answer
    error = refused(answer)
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert param.split(".")[0].split("[")[0] in error["message"], error


def test_a_budget_beyond_the_context_states_both_numbers(server: Running) -> None:
    status, answer = send(
        server, "/v1/completions", json.dumps(completion(max_tokens=100)).encode()
    )
    message = refused(answer)["message"]
    assert status == 400 and "maximum context length is 64 tokens" in message
    assert "in the prompt, 100 in the completion" in message


# -- refused features, and their neutral values -------------------------------------------

REFUSED = [
    ("/v1/completions", completion(suffix="after"), "suffix"),
    ("/v1/completions", completion(best_of=2), "best_of"),
    ("/v1/completions", completion(echo=True), "echo"),
    ("/v1/completions", completion(n=2), "n"),
    ("/v1/completions", completion(logprobs=1), "logprobs"),
    ("/v1/completions", completion(logprobs=True), "logprobs"),
    ("/v1/completions", completion(service_tier="flex"), "service_tier"),
    ("/v1/completions", completion(store=True), "store"),
    ("/v1/completions", completion(metadata={"a": "b"}), "metadata"),
    ("/v1/chat/completions", chat(top_logprobs=2), "top_logprobs"),
    ("/v1/chat/completions", chat(tools=[{"type": "function"}]), "tools"),
    ("/v1/chat/completions", chat(tool_choice="auto"), "tool_choice"),
    ("/v1/chat/completions", chat(functions=[{"name": "f"}]), "functions"),
    ("/v1/chat/completions", chat(function_call="auto"), "function_call"),
    ("/v1/chat/completions", chat(response_format={"type": "json_object"}), "response_format"),
    ("/v1/chat/completions", chat(modalities=["text", "audio"]), "modalities"),
    ("/v1/chat/completions", chat(audio={"voice": "alloy"}), "audio"),
    ("/v1/chat/completions", chat(prediction={"type": "content"}), "prediction"),
    ("/v1/chat/completions", chat(reasoning_effort="low"), "reasoning_effort"),
    ("/v1/chat/completions", chat(verbosity="low"), "verbosity"),
    ("/v1/chat/completions", chat(web_search_options={}), "web_search_options"),
    (
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content",
    ),
    ("/v1/embeddings", {"input": "a", "dimensions": 64}, "dimensions"),
]


@pytest.mark.parametrize(("path", "body", "param"), REFUSED)
def test_a_feature_not_served_is_a_400_naming_it(
    server: Running, path: str, body: dict[str, Any], param: str
) -> None:
    status, answer = send(server, path, json.dumps(body).encode())
    assert status == 400, answer
    error = refused(answer)
    assert error["param"] == param
    assert error["code"] in ("unsupported_parameter", "unsupported_value"), error


def test_an_unknown_field_is_a_400_naming_it(server: Running) -> None:
    status, answer = send(server, "/v1/completions", json.dumps(completion(foo=1)).encode())
    error = refused(answer)
    assert status == 400 and error["param"] == "foo" and error["code"] == "unknown_parameter"


NEUTRAL = [
    (
        "/v1/completions",
        completion(
            n=1,
            best_of=1,
            echo=False,
            logprobs=False,
            suffix="",
            user="u-1",
            store=False,
            service_tier="auto",
        ),
    ),
    ("/v1/completions", completion(logprobs=0, stream_options=None, seed=3, top_k=-1)),
    (
        "/v1/chat/completions",
        chat(
            tool_choice="none",
            response_format={"type": "text"},
            modalities=["text"],
            parallel_tool_calls=False,
            top_logprobs=0,
            safety_identifier="s",
            prompt_cache_key="k",
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
        ),
    ),
    ("/v1/embeddings", {"input": "a", "dimensions": 384, "user": "u", "encoding_format": "base64"}),
]


@pytest.mark.parametrize(("path", "body"), NEUTRAL)
def test_a_refused_feature_at_its_neutral_value_is_served(
    server: Running, path: str, body: dict[str, Any]
) -> None:
    status, answer = send(server, path, json.dumps(body).encode())
    assert status == 200, answer


@pytest.mark.parametrize(
    "name",
    ["temperature", "top_p", "top_k", "seed", "min_tokens", "ignore_eos", "logit_bias",
     "presence_penalty", "frequency_penalty", "repetition_penalty"],
)  # fmt: skip
def test_a_sampling_field_reaches_the_model_s_options_or_is_refused(
    server: Running, name: str
) -> None:
    from hibachi.integrations.transformers import Sampling

    served = {f.name for f in dataclasses.fields(Sampling)}
    value = {"temperature": 0.5, "top_p": 0.9, "top_k": 5, "seed": 1, "min_tokens": 1,
             "ignore_eos": True, "logit_bias": {"5": 2.5}, "presence_penalty": 0.5,
             "frequency_penalty": 0.5, "repetition_penalty": 1.1}[name]  # fmt: skip
    status, answer = send(
        server, "/v1/completions", json.dumps(completion(**{name: value})).encode()
    )
    if name in served:
        assert status == 200, answer
    else:
        assert status == 400 and refused(answer)["param"] == name, answer


def test_sampling_fields_become_options_named_as_the_fields() -> None:
    from types import SimpleNamespace

    from hibachi.serve._bodies import CompletionRequest
    from hibachi.serve._requests import OPTION_FIELDS, _options

    engine: Any = SimpleNamespace(option_names=frozenset(OPTION_FIELDS), check_token_ids=print)
    body = CompletionRequest.model_validate(
        {
            "prompt": "a",
            "top_k": -1,
            "logit_bias": {"7": -100},
            "ignore_eos": True,
            "min_tokens": 3,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.2,
            "seed": 9,
            "top_p": 0.5,
        }
    )
    assert _options(body, engine) == {
        "temperature": 1.0, "top_p": 0.5, "top_k": 0, "seed": 9, "min_tokens": 3,
        "ignore_eos": True, "logit_bias": {7: -100.0}, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "repetition_penalty": 1.2,
    }  # fmt: skip


# -- usage within the context ------------------------------------------------------------


def test_usage_never_counts_past_the_context(server: Running) -> None:
    prompt = list(range(1000, 1060))  # 60 of the 64 tokens
    status, answer = send(server, "/v1/completions", json.dumps({"prompt": prompt}).encode())
    assert status == 200 and answer["usage"]["total_tokens"] <= 64
    assert answer["usage"]["completion_tokens"] == 4  # the default 16, cut to the room left
    status, answer = send(server, "/v1/chat/completions", json.dumps({"messages": CHAT}).encode())
    assert status == 200 and answer["usage"]["total_tokens"] <= 64


# -- routes and methods --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("POST", "/v1/nowhere", 404), ("GET", "/v1/completions", 405),
     ("DELETE", "/v1/chat/completions", 405), ("POST", "/health", 405),
     ("PUT", "/v1/models", 405)],
)  # fmt: skip
def test_unknown_routes_and_methods_answer_in_openai_s_shape(
    server: Running, method: str, path: str, status: int
) -> None:
    got, answer = send(server, path, b"{}", method=method)
    assert got == status
    refused(answer)


def test_an_error_quotes_at_most_a_little_of_what_was_sent(server: Running) -> None:
    body = json.dumps({"model": "m" * 100_000, "prompt": "a"}).encode()
    status, answer = send(server, "/v1/completions", body)
    assert status == 404 and len(refused(answer)["message"]) < 400


def test_an_unknown_model_is_a_404_naming_it(server: Running) -> None:
    for path in ("/v1/completions", "/v1/embeddings"):
        body = {"model": "gpt-9", "prompt": "a", "input": "a"}
        body.pop("input" if path == "/v1/completions" else "prompt")
        status, answer = send(server, path, json.dumps(body).encode())
        assert status == 404 and refused(answer)["param"] == "model"


LIMITS = [
    ({"prompt": "abc"}, "max_input_chars", "3"),
    ({"prompt": "a", "stop": ["s"] * 3}, "max_stop_strings", "3"),
    ({"prompt": "a", "stop": ["sss"]}, "max_stop_chars", "3"),
    ({"prompt": "a", "logit_bias": {"1": 1, "2": 1, "3": 1}}, "max_logit_bias", "3"),
]


@pytest.mark.parametrize(("body", "limit", "count"), LIMITS, ids=[limit for _, limit, _ in LIMITS])
def test_a_limit_exceeded_states_the_count_and_the_limit(
    body: dict[str, Any], limit: str, count: str
) -> None:
    from hibachi.serve import RequestLimits
    from hibachi.serve._bodies import CompletionRequest
    from hibachi.serve._errors import from_validation

    limits = dataclasses.replace(RequestLimits(), **{limit: 2})
    with pytest.raises(ValueError) as caught:
        CompletionRequest.model_validate_json(json.dumps(body), context={"limits": limits})
    message = from_validation(caught.value).message  # type: ignore[arg-type]
    assert f" {count};" in message and "at most 2 " in message and "{" not in message, message
