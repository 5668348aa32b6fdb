"""The server's plain parts, without a server: text assembly, drain rate, layering."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

pytest.importorskip("fastapi")

from hibachi.serve._drain import DrainRate
from hibachi.serve._text import TextAssembler


class Pieces:
    """A tokenizer whose token i decodes to PIECES[i], concatenated."""

    PIECES: ClassVar[list[str]] = ["he", "llo", " wor", "ld", "!", " \xe2", "\ufffd", " end"]

    def decode(self, ids: list[int], **_: object) -> str:
        text = "".join(self.PIECES[i] for i in ids)
        # a byte-level tokenizer shows an unfinished character as U+FFFD until it is complete
        return text.replace(" \xe2\ufffd", " é").replace(" \xe2", " \ufffd")


def assemble(ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], TextAssembler]:
    assembler = TextAssembler(Pieces(), stop)
    pieces = [assembler.add(i) for i in ids]
    pieces.append(assembler.finish())
    return [p for p in pieces if p], assembler


def test_pieces_join_to_the_decoded_text() -> None:
    pieces, assembler = assemble([0, 1, 2, 3, 4])
    assert pieces == ["he", "llo", " wor", "ld", "!"]
    assert assembler.text == "hello world!" and not assembler.stopped


def test_an_unfinished_character_is_held_back_until_complete() -> None:
    pieces, _ = assemble([0, 5, 6, 7])
    assert pieces == ["he", " é", " end"]  # never the placeholder U+FFFD


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        pytest.param(("world",), "hello ", id="across-tokens"),
        pytest.param(("lo w", "!"), "hel", id="first-of-several"),
        pytest.param(("xyz",), "hello world!", id="absent"),
    ],
)
def test_text_ends_before_the_first_stop_string(stop: tuple[str, ...], expected: str) -> None:
    pieces, assembler = assemble([0, 1, 2, 3, 4], stop)
    assert "".join(pieces) == expected
    assert assembler.stopped == (expected != "hello world!")


def test_text_that_may_begin_a_stop_string_waits() -> None:
    assembler = TextAssembler(Pieces(), ("world",))
    assert assembler.add(0) == "he"
    assert assembler.add(1) == "llo"
    assert assembler.add(2) == " "  # " wor" might be the start of "world"
    assert assembler.add(3) == ""
    assert assembler.stopped


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_retry_after_is_the_queue_over_the_drain_rate() -> None:
    clock = Clock()
    rate = DrainRate(window=10.0, clock=clock)
    assert rate.retry_after(0) == 1
    assert rate.retry_after(5) == 10  # nothing finished within the window: at least that long
    for _ in range(20):
        rate.note_finished()  # 2 per second over the window
    assert rate.retry_after(9) == 5
    assert rate.retry_after(10_000) == 60
    clock.now = 11.0
    assert rate.per_second() == 0.0


def test_import_hibachi_does_not_import_the_server() -> None:
    code = (
        "import sys, hibachi\n"
        "print(sorted({'fastapi', 'uvicorn', 'hibachi.serve'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_serve_command_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from hibachi._cli import main

    for argv in (["serve", "--port", "http"], ["serve", "--max-batch-size", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "/v1/chat/completions" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("every", "expected"),
    [(1, ["a", "b", "c", "d", "e"]), (2, ["a", "bc", "de"]), (3, ["a", "bcd", "e"])],
)
def test_a_stream_interval_groups_pieces_but_sends_the_first_at_once(
    every: int, expected: list[str]
) -> None:
    import asyncio

    from hibachi.serve._chunks import grouped

    async def pieces() -> AsyncIterator[str]:
        for piece in "abcde":
            yield piece

    async def collect() -> list[str]:
        return [group async for group in grouped(pieces(), every)]

    assert asyncio.run(collect()) == expected


def test_a_request_naming_no_budget_gets_openai_s_default_for_its_endpoint() -> None:
    from types import SimpleNamespace

    from hibachi.serve._bodies import ChatRequest, CompletionRequest
    from hibachi.serve._requests import max_tokens

    engine: Any = SimpleNamespace(max_length=512, default_max_tokens=16)
    chat = [{"role": "user", "content": "hi"}]
    assert max_tokens(CompletionRequest(prompt="hi"), engine, 2) == 16
    assert max_tokens(CompletionRequest(prompt="hi", max_tokens=3), engine, 2) == 3
    assert max_tokens(CompletionRequest(prompt="hi"), engine, 500) == 12  # the room left
    assert max_tokens(ChatRequest(messages=chat), engine, 2) == 510  # the room the sequence has
    assert max_tokens(ChatRequest(messages=chat, max_tokens=7), engine, 2) == 7
    both = ChatRequest(messages=chat, max_tokens=7, max_completion_tokens=5)
    assert max_tokens(both, engine, 2) == 5


def test_a_budget_beyond_the_context_is_a_400_stating_both_numbers() -> None:
    from types import SimpleNamespace

    from hibachi.serve._bodies import ChatRequest, CompletionRequest
    from hibachi.serve._errors import APIError
    from hibachi.serve._requests import max_tokens

    engine: Any = SimpleNamespace(max_length=512, default_max_tokens=16)
    with pytest.raises(APIError) as info:
        max_tokens(CompletionRequest(prompt="hi", max_tokens=503), engine, 10)
    error = info.value
    assert (error.status, error.param, error.code) == (400, "max_tokens", "context_length_exceeded")
    assert "maximum context length is 512 tokens" in error.message
    assert "513 tokens (10 in the prompt, 503 in the completion)" in error.message
    assert max_tokens(CompletionRequest(prompt="hi", max_tokens=502), engine, 10) == 502
    chat = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_completion_tokens=10**30)
    with pytest.raises(APIError) as info:
        max_tokens(chat, engine, 10)
    assert info.value.param == "max_completion_tokens"


def test_a_full_queue_is_429_with_the_time_to_drain_it_whichever_engine() -> None:
    from hibachi.serve._engines import queue_full

    clock = [0.0]
    drain = DrainRate(10.0, clock=lambda: clock[0])
    for _ in range(20):
        drain.note_finished()  # 2 per second
    error = queue_full(9, "inputs", drain)
    assert (error.status, error.code, error.retry_after) == (429, "queue_full", 5)
    assert "the queue is full (9 inputs waiting): retry in 5 s" in str(error)


def test_each_serve_flag_is_the_server_setting_of_its_name_with_its_default() -> None:
    import dataclasses

    from hibachi._cli import _parser
    from hibachi.serve import Access, ConnectionLimits, RequestLimits, ServeSettings

    commands = next(a for a in _parser()._actions if a.dest == "command")
    serve = commands.choices["serve"]  # type: ignore[index]
    flags = {a.dest: a.default for a in serve._actions if a.option_strings and a.dest != "help"}
    settings = {}
    for kind in (ServeSettings, RequestLimits, ConnectionLimits, Access):
        for field in dataclasses.fields(kind):
            if field.name not in ("limits", "connections", "access"):
                settings[field.name] = field.default
    for_models_and_sockets = {
        "model", "embedding_model", "device", "dtype", "model_cache", "host", "port",
        "replicas", "autoscale", "ray_address",
    }  # fmt: skip
    server = set(settings) - {"default_max_tokens", "stuck_after", "drain_window"}
    assert set(flags) - for_models_and_sockets == server
    expected = {**settings, "api_keys": [], "allowed_hosts": None}  # parsed as lists
    assert {name: flags[name] for name in server} == {name: expected[name] for name in server}


def test_a_tracked_adapter_keeps_its_ticket_and_steps_the_inner_model_with_its_options() -> None:
    import numpy as np

    import hibachi
    from hibachi.serve._engines import Ticket, TrackedAdapter

    class Inner(hibachi.IncrementalModel):
        seen: ClassVar[list[object]] = []

        def step(
            self, tokens: object, mask: object, slots: object, options: list[object]
        ) -> object:
            self.seen.extend(options)
            return np.zeros(1, dtype=np.int64)

        def release(self, slot: int) -> None:
            pass

        def check_request(self, prompt: object, budget: int, options: object) -> hibachi.Accepted:
            return hibachi.Accepted(3, ("parsed", options), ends_at_stop_token=False)

    steps: list[int] = []
    tracked = TrackedAdapter(Inner(), steps.append)
    ticket = Ticket({"temperature": 1.0})
    accepted = tracked.check_request(np.array([1]), 5, ticket)
    assert accepted == hibachi.Accepted(3, ticket, ends_at_stop_token=False)
    assert ticket.sampling == ("parsed", {"temperature": 1.0})
    tracked.step(np.ones((1, 1)), np.ones((1, 1), dtype=bool), np.array([0]), [ticket])
    assert Inner.seen == [("parsed", {"temperature": 1.0})]
    assert ticket.started is not None and steps == [1]


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("512K", 512 << 10), ("1.5G", 3 << 29), ("2g", 2 << 30), ("64M", 64 << 20)],
)
def test_kv_cache_bytes_take_binary_suffixes(text: str, size: int) -> None:
    from hibachi._cli import _parser

    args = _parser().parse_args(["serve", "--kv-cache-bytes", text])
    assert args.kv_cache_bytes == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "0", "2X", "nan"])
def test_kv_cache_bytes_refuse_what_is_no_size(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from hibachi._cli import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--kv-cache-bytes", text])
    assert "kv-cache-bytes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "off"),
    [
        pytest.param([[7] * 500] * 2048, True, id="2,048 rows of token ids"),
        pytest.param(["text"] * 2048, True, id="2,048 texts"),
        pytest.param([[7, 8, 9]], False, id="one short row"),
    ],
)
def test_a_large_embedding_request_is_prepared_off_the_event_loop(
    given: list[Any], off: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import threading

    from hibachi.serve import ServeSettings
    from hibachi.serve import _engines as engines
    from hibachi.serve._metrics import Metrics

    threads: set[threading.Thread] = set()
    item = engines._item

    def noted(row: Any) -> Any:
        threads.add(threading.current_thread())
        return item(row)

    monkeypatch.setattr(engines, "_item", noted)
    model: Any = engines.EmbeddingModel("e", print, _VocabOf(30_000), max_length=512)
    engine = engines.EmbeddingEngine(model, ServeSettings(), Metrics())

    async def prepare() -> threading.Thread:
        assert len(await engine.items(given)) == len(given)
        return threading.current_thread()

    loop_thread = asyncio.run(prepare())
    assert (loop_thread not in threads) is off, threads


class _VocabOf:
    """A tokenizer of ``size`` tokens whose every text is one token, 7."""

    pad_token_id = 0

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __call__(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[7] for _ in texts]}


@pytest.mark.parametrize(
    ("host", "hosts"),
    [("127.0.0.1", ["127.0.0.1", "localhost", "::1", "[::1]"]), ("0.0.0.0", None)],
)
def test_over_ray_the_front_gets_the_connection_limits_and_the_replicas_the_host_names(
    monkeypatch: pytest.MonkeyPatch, host: str, hosts: list[str] | None
) -> None:
    pytest.importorskip("ray.serve")
    from hibachi import _serve_cli
    from hibachi._cli import _parser
    from hibachi.serve import _ray

    seen: dict[str, Any] = {}
    monkeypatch.setattr(_ray, "serve_over_ray", lambda build, **options: seen.update(options))
    args = _parser().parse_args(
        ["serve", "--replicas", "2", "--host", host, "--max-connections", "7"]
    )
    assert _serve_cli.serve(args) == 0
    assert seen["settings"].connections.max_connections == 7
    assert args.allowed_hosts == hosts
    assert _serve_cli.settings_of(args).access.allowed_hosts == (
        None if hosts is None else tuple(hosts)
    )
