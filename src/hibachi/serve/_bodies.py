"""The request bodies, as OpenAI names their fields: every field honoured or refused.

Types are strict: ``"5"`` is not a number, ``1`` is not ``true``, ``NaN`` and
``Infinity`` are no numbers at all. A field the server does not know is a 400
naming it; so is a field OpenAI defines that hibachi does not serve (tools,
response formats, audio, logprobs, several choices...), unless it carries its
neutral value (``"tool_choice": "none"``, ``"n": 1``...), which changes
nothing. Fields hibachi adds, as vLLM does: ``top_k``, ``min_tokens``,
``ignore_eos``, ``repetition_penalty``, and ``timeout`` (seconds: the
request's deadline, like the ``X-Request-Timeout`` header).

The server's `RequestLimits` reach the validators through pydantic's
validation context (``model_validate_json(..., context={"limits": ...})``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ._settings import RequestLimits

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "Prompt",
    "StreamOptions",
    "TokenIds",
]

MAX_SEED = 2**63 - 1
Prompt = str | list[int]  # one prompt: its text, or its token ids
TokenIds = list[int]


def _limits(info: ValidationInfo) -> RequestLimits:
    context = info.context
    limits = context.get("limits") if isinstance(context, dict) else None
    return limits if isinstance(limits, RequestLimits) else RequestLimits()


def over_limit(what: str, count: int, limit: int, name: str) -> PydanticCustomError:
    """A limit of `RequestLimits` exceeded: ``what`` has ``count``, at most ``limit``.

    The numbers go in as text: pydantic's message templates take no format specs.
    """
    return PydanticCustomError(
        "limit_exceeded",
        "{what} {count}; this server takes at most {limit} ({name})",
        {"what": what, "count": f"{count:,}", "limit": f"{limit:,}", "name": name},
    )


# -- refused unless neutral -------------------------------------------------------------


def _served_only_as(neutral: Callable[[Any], bool], what: str) -> AfterValidator:
    """A field hibachi does not serve, accepted only at a value that changes nothing."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None or neutral(value):
            return value
        raise PydanticCustomError(
            "not_served",
            "{field} is not served by hibachi serve{what}",
            {"field": info.field_name, "what": f" ({what})" if what else ""},
        )

    return AfterValidator(check)


def _never(value: Any) -> bool:
    return False


Refused = Annotated[Any, _served_only_as(_never, "")]


def _false(value: Any) -> bool:
    return value is False or (type(value) is int and value == 0)  # not 0.0: types are strict


def _one(value: Any) -> bool:
    return type(value) is int and value == 1  # not 1.0, not true


OnlyFalse = Annotated[Any, _served_only_as(_false, "only false")]
OnlyOne = Annotated[Any, _served_only_as(_one, "only 1")]


def _text_format(value: Any) -> bool:
    return bool(value == {"type": "text"})


def _no_tool(value: Any) -> bool:
    return bool(value == "none")


def _text_only(value: Any) -> bool:
    return bool(value == ["text"])


def _standard_tier(value: Any) -> bool:
    return value in ("auto", "default")


def _empty_suffix(value: Any) -> bool:
    return bool(value == "")


# -- prompts ------------------------------------------------------------------------------


def _token_ids(value: Any, where: str) -> list[int]:
    """``value`` as token ids: a non-empty list of ints >= 0 (bools are no ints)."""
    if not isinstance(value, list):
        raise PydanticCustomError(
            "invalid_prompt",
            "{where} must be an array of token ids, got {got}",
            {"where": where, "got": _describe(value)},
        )
    if not value:
        raise PydanticCustomError("invalid_prompt", "{where} must not be empty", {"where": where})
    for i, token in enumerate(value):
        if type(token) is not int or token < 0:
            raise PydanticCustomError(
                "invalid_token",
                "{where}[{i}] must be a token id (an integer >= 0), got {got}",
                {"where": where, "i": i, "got": _describe(token)},
            )
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _prompt(value: Any, info: ValidationInfo) -> Prompt:
    """One prompt: text, token ids, or a list holding one of those."""
    if isinstance(value, list) and value and isinstance(value[0], str | list):
        if len(value) != 1:
            raise PydanticCustomError(
                "invalid_prompt", "one prompt per request, got {count}", {"count": len(value)}
            )
        value = value[0]
    if isinstance(value, str):
        _check_chars(len(value), info, "the prompt has")
        return value
    if isinstance(value, list):
        return _token_ids(value, "prompt")
    raise PydanticCustomError(
        "invalid_prompt",
        "prompt must be a string or an array of token ids, got {got}",
        {"got": type(value).__name__},
    )


def _check_chars(count: int, info: ValidationInfo, what: str) -> None:
    limit = _limits(info).max_input_chars
    if count > limit:
        raise over_limit(f"{what} characters:", count, limit, "max_input_chars")


def _stop(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise PydanticCustomError("invalid_stop", "stop must be a string or an array of strings")
    limits = _limits(info)
    if len(stops) > limits.max_stop_strings:
        raise over_limit("stop strings:", len(stops), limits.max_stop_strings, "max_stop_strings")
    for i, stop in enumerate(stops):
        if not stop:
            raise PydanticCustomError("invalid_stop", "stop[{i}] is empty", {"i": i})
        if len(stop) > limits.max_stop_chars:
            raise over_limit(
                f"stop[{i}] has characters:", len(stop), limits.max_stop_chars, "max_stop_chars"
            )
    return tuple(stops)


def _logit_bias(value: dict[str, float], info: ValidationInfo) -> dict[int, float]:
    limit = _limits(info).max_logit_bias
    if len(value) > limit:
        raise over_limit("logit_bias entries:", len(value), limit, "max_logit_bias")
    bias = {}
    for key, number in value.items():
        if not (key.isascii() and key.isdigit()) or len(key) > 18:
            raise PydanticCustomError(
                "invalid_logit_bias",
                "logit_bias keys must be token ids (integers >= 0 as strings), got {key}",
                {"key": _describe(key)},
            )
        if not -100 <= number <= 100:
            raise PydanticCustomError(
                "invalid_logit_bias",
                "logit_bias[{key}] must be in -100 ... 100, got {value}",
                {"key": key, "value": number},
            )
        bias[int(key)] = float(number)
    return bias


# -- bodies -------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class StreamOptions(_Body):
    include_usage: bool = False
    include_obfuscation: OnlyFalse = None


class _Sampling(_Body):
    """What completions and chat completions share."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: Annotated[Any, AfterValidator(_stop)] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    timeout: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool | None = None
    logit_bias: Annotated[dict[str, float], AfterValidator(_logit_bias)] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)
    user: str | None = None  # an end-user's id, for the caller's own abuse tracking
    n: OnlyOne = None
    logprobs: OnlyFalse = None
    top_logprobs: OnlyFalse = None
    service_tier: Annotated[Any, _served_only_as(_standard_tier, "only auto or default")] = None
    store: OnlyFalse = None
    metadata: Refused = None

    @field_validator("stream_options")
    @classmethod
    def _with_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream", False):
            raise PydanticCustomError(
                "invalid_stream_options", "stream_options is only taken with stream: true"
            )
        return value


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one prompt, as text or token ids."""

    prompt: Annotated[Any, AfterValidator(_prompt)]
    best_of: OnlyOne = None
    echo: OnlyFalse = None
    suffix: Annotated[Any, _served_only_as(_empty_suffix, "only an empty one")] = None


def _content(value: Any) -> str:
    """A message's text: a string, or text parts joined (any other part is refused)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError(
            "invalid_content", "content must be a string or an array of text parts"
        )
    texts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise PydanticCustomError(
                "not_served",
                "content[{i}]: only text parts ({{'type': 'text', 'text': ...}}) are served, "
                "got {got}",
                {"i": i, "got": _describe(kind if kind is not None else part)},
            )
        texts.append(part["text"])
    return "".join(texts)


class ChatMessage(_Body):
    """A message of a chat: text, or text parts (an image or audio part is a 400).

    ``developer`` is the newer name of ``system``: chat templates are given
    ``system``.
    """

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[Any, AfterValidator(_content)]

    @property
    def text(self) -> str:
        text: str = self.content
        return text


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``: messages rendered by the tokenizer's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: Annotated[Any, _served_only_as(_text_format, 'only {"type": "text"}')] = None
    tools: Refused = None
    tool_choice: Annotated[Any, _served_only_as(_no_tool, 'only "none"')] = None
    parallel_tool_calls: bool | None = None  # nothing to call: it changes nothing
    functions: Refused = None
    function_call: Annotated[Any, _served_only_as(_no_tool, 'only "none"')] = None
    modalities: Annotated[Any, _served_only_as(_text_only, 'only ["text"]')] = None
    audio: Refused = None
    prediction: Refused = None
    reasoning_effort: Refused = None
    verbosity: Refused = None
    web_search_options: Refused = None
    safety_identifier: str | None = None  # as ``user``
    prompt_cache_key: str | None = None  # prefixes are not cached across requests

    @field_validator("messages")
    @classmethod
    def _total_chars(cls, messages: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
        _check_chars(sum(len(m.text) for m in messages), info, "the messages have")
        return messages


def _input(value: Any, info: ValidationInfo) -> list[str] | list[list[int]]:
    """Texts, or rows of token ids: a string, strings, token ids, or rows of them."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise PydanticCustomError(
            "invalid_input", "input must be a string or a non-empty array of strings or token ids"
        )
    limits = _limits(info)
    if all(type(v) is int for v in value):
        value = [value]
    if len(value) > limits.max_embedding_inputs:
        raise over_limit("inputs:", len(value), limits.max_embedding_inputs, "max_embedding_inputs")
    if all(isinstance(v, str) for v in value):
        texts: list[str] = value
        _check_chars(sum(len(v) for v in texts), info, "the inputs have")
        return texts
    return [_token_ids(row, f"input[{i}]") for i, row in enumerate(value)]


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``: one text or many (or token ids)."""

    input: Annotated[Any, AfterValidator(_input)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    user: str | None = None
