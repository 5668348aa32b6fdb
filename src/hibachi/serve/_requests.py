"""From a request to what the engines take: its body parsed, token ids, options, deadline.

Parsing, tokenizing and chat templating run off the event loop when they are
large (see `_offload`), so no request holds the others up, even one that is
refused in the end.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from ._bodies import ChatMessage, ChatRequest, CompletionRequest
from ._engines import LanguageEngine
from ._errors import APIError, from_validation
from ._gate import take_body
from ._generation import GenerationParams
from ._offload import OFF_LOOP_BYTES, OFF_LOOP_CHARS, off_loop
from ._settings import RequestLimits

__all__ = ["chat_ids", "deadline", "generation_params", "max_tokens", "parse", "prompt_ids"]

TIMEOUT_HEADER = "x-request-timeout"
Body = TypeVar("Body", bound=BaseModel)

# the sampling fields, by the name the request and the model's ``options`` both use
OPTION_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "min_tokens",
    "ignore_eos",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


async def parse(request: Request, model: type[Body], limits: RequestLimits) -> Body:
    """The request's body as ``model``, or a 400 naming what is wrong with it."""
    body = take_body(request.scope)
    try:
        return await off_loop(
            len(body) > OFF_LOOP_BYTES,
            model.model_validate_json,
            body,
            context={"limits": limits},
        )
    except ValidationError as exc:
        raise from_validation(exc) from None


def deadline(request: Request, body_timeout: float | None) -> float | None:
    """Seconds the request may take: the ``X-Request-Timeout`` header or the body's
    ``timeout``, whichever is shorter; None for no deadline."""
    header = request.headers.get(TIMEOUT_HEADER)
    limits = [] if body_timeout is None else [body_timeout]
    if header is not None:
        try:
            seconds = float(header)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise APIError(
                400,
                f"X-Request-Timeout must be a number of seconds > 0, got {header[:40]!r}",
                param="X-Request-Timeout",
            )
        limits.append(seconds)
    return min(limits) if limits else None


async def prompt_ids(engine: LanguageEngine, prompt: str | list[int]) -> list[int]:
    """One prompt's token ids, from its text or its ids."""
    if isinstance(prompt, str):
        ids = await off_loop(len(prompt) > OFF_LOOP_CHARS, engine.encode, prompt)
    else:
        ids = prompt
    engine.check_prompt(ids, "prompt")
    return ids


async def chat_ids(engine: LanguageEngine, messages: list[ChatMessage]) -> list[int]:
    """The conversation rendered by the tokenizer's chat template, as token ids."""
    if not getattr(engine.tokenizer, "chat_template", None):
        raise APIError(
            400,
            f"model {engine.name!r} has no chat template: use /v1/completions",
            param="messages",
            code="no_chat_template",
        )
    conversation = [{"role": _template_role(m.role), "content": m.text} for m in messages]
    big = sum(len(m.text) for m in messages) > OFF_LOOP_CHARS or len(messages) > 16
    text = await off_loop(big, _render, engine.tokenizer, conversation)
    ids = await off_loop(big, engine.encode, text)
    engine.check_prompt(ids, "messages")
    return ids


def _template_role(role: str) -> str:
    return "system" if role == "developer" else role


def _render(tokenizer: Any, conversation: list[dict[str, str]]) -> str:
    try:
        text: str = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # the template's own refusal (jinja2 raise_exception)
        raise APIError(400, f"messages: {str(exc)[:500]}", param="messages") from exc
    return text


def generation_params(
    body: CompletionRequest | ChatRequest,
    ids: list[int],
    engine: LanguageEngine,
    timeout: float | None,
) -> GenerationParams:
    """The request as the engine takes it: ids, budget, options, stop strings, deadline."""
    budget = max_tokens(body, engine, len(ids))
    options = _options(body, engine)
    if body.min_tokens is not None and body.min_tokens > budget:
        raise APIError(
            400,
            f"min_tokens: {body.min_tokens:,} is more than the completion's budget ({budget:,})",
            param="min_tokens",
        )
    stop: tuple[str, ...] = body.stop or ()
    return GenerationParams(ids, budget, options, stop, timeout)


def _options(body: CompletionRequest | ChatRequest, engine: LanguageEngine) -> dict[str, Any]:
    """The sampling fields the request names, as the model's ``options``; one the model
    does not serve is a 400 naming it."""
    options = {name: value for name in OPTION_FIELDS if (value := getattr(body, name)) is not None}
    if options.get("top_k") == -1:  # vLLM's "off"
        options["top_k"] = 0
    options.setdefault("temperature", 1.0)  # OpenAI's default
    for name in options:
        if name not in engine.option_names:
            raise APIError(
                400,
                f"{name} is not served by this model",
                param=name,
                code="unsupported_parameter",
            )
    bias = options.get("logit_bias")
    if bias:
        engine.check_token_ids(list(bias), "logit_bias")
    return options


def max_tokens(body: CompletionRequest | ChatRequest, engine: LanguageEngine, prompt: int) -> int:
    """The completion's budget: the request's own, or OpenAI's default for its endpoint.

    OpenAI documents ``max_tokens`` on ``/v1/completions`` as defaulting to
    16 (here ``ServeSettings.default_max_tokens``); a chat completion that
    names no ``max_completion_tokens`` (nor the older ``max_tokens``) runs
    until it stops or fills the context, as vLLM's does too. A budget the
    request names that does not fit in the context after its ``prompt``
    tokens is a 400 stating both numbers, as OpenAI's and vLLM's; a default
    is cut to the room left.
    """
    room = engine.max_length - prompt
    name, asked = _asked_budget(body)
    if asked is None:
        default = engine.default_max_tokens if isinstance(body, CompletionRequest) else room
        return max(1, min(default, room))
    if asked > room:
        raise APIError(
            400,
            f"This model's maximum context length is {engine.max_length:,} tokens. However, "
            f"you requested {prompt + asked:,} tokens ({prompt:,} in the prompt, {asked:,} in "
            f"the completion). Please reduce the prompt or {name}.",
            param=name,
            code="context_length_exceeded",
        )
    return asked


def _asked_budget(body: CompletionRequest | ChatRequest) -> tuple[str, int | None]:
    if isinstance(body, ChatRequest) and body.max_completion_tokens is not None:
        return "max_completion_tokens", body.max_completion_tokens
    return "max_tokens", body.max_tokens
