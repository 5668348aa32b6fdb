"""Who may call the server, and how little a slow or careless client can hold: API keys,
host names, the docs, JSON bodies only, body size and time, request heads' time and
size, idle connections, and the cap on open connections. Driven with raw sockets."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
pytest.importorskip("torch")

from hibachi.serve import (  # noqa: E402
    Access,
    ConnectionLimits,
    LanguageModel,
    RequestLimits,
    ServeSettings,
    create_app,
    server_for,
    tiny_language_model,
)
from support.serve import Running, running  # noqa: E402

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def language_model() -> LanguageModel:
    return tiny_language_model()


def serve(language_model: LanguageModel, **groups: Any) -> Any:
    return running(create_app(language_model, None, settings=ServeSettings(**groups)))


@pytest.fixture(scope="module")
def keyed(language_model: LanguageModel) -> Iterator[Running]:
    with serve(language_model, access=Access(api_keys=("other-key", KEY))) as served:
        yield served


def error_of(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer", ""],
    ids=["none", "wrong", "basic", "longer", "empty-bearer", "empty"],
)
def test_without_a_valid_key_every_v1_route_is_401(
    keyed: Running, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"),
                         ("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings")]:  # fmt: skip
        status, got, body = keyed.request(method, path, {"prompt": "a"}, headers)
        assert status == 401, (path, body)
        assert error_of(body)["code"] == "invalid_api_key"
        assert got["www-authenticate"] == "Bearer"


def test_any_of_the_keys_opens_v1_and_health_and_metrics_stay_open(keyed: Running) -> None:
    for key in ("other-key", KEY):
        client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["hibachi-llama"]
    assert keyed.request("GET", "/health")[0] == 200
    assert keyed.request("GET", "/metrics")[0] == 200
    with pytest.raises(openai.AuthenticationError):
        keyed.client().models.list()  # api_key="none"


def test_protect_all_guards_health_and_metrics_too(language_model: LanguageModel) -> None:
    access = Access(api_keys=(KEY,), protect_all=True)
    with serve(language_model, access=access) as served:
        for path in ("/health", "/metrics"):
            assert served.request("GET", path)[0] == 401
            assert served.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})[0] == 200


def test_a_key_comes_from_hibachi_api_key_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from hibachi._cli import _parser
    from hibachi._serve_cli import settings_of

    monkeypatch.setenv("HIBACHI_API_KEY", "env-one, env-two")
    args = _parser().parse_args(["serve", "--api-key", "flag-key"])
    settings = settings_of(args)
    assert settings.access.api_keys == ("flag-key", "env-one", "env-two")
    assert "flag-key" not in repr(settings) and "env-one" not in repr(settings)


# -- host names, docs ----------------------------------------------------------------------


def test_a_websocket_upgrade_is_an_http_request_that_passes_the_front_door(
    keyed: Running,
) -> None:
    """The server serves no WebSocket: an upgrade is answered as HTTP, keys and hosts checked
    (not a bare 403 from a WebSocket handshake no check saw)."""
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    for host, path, status in [("127.0.0.1", "/v1/models", 401), ("evil.example", "/health", 400)]:
        with socket.create_connection((keyed.host, keyed.port), timeout=30) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n".encode())
            answer = _read_one(sock)
        assert status_of(answer) == status, answer
        error_of(body_of(answer))


def test_bound_to_loopback_only_the_loopback_names_are_served(keyed: Running) -> None:
    for host in ("127.0.0.1", "localhost:8000", "[::1]:8000", "LOCALHOST"):
        assert keyed.request("GET", "/health", headers={"Host": host})[0] == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
        status, _, body = keyed.request("GET", "/health", headers={"Host": host})
        assert status == 400 and error_of(body)["code"] == "invalid_host", host


def test_allowed_hosts_names_the_hosts(language_model: LanguageModel) -> None:
    access = Access(allowed_hosts=("api.example", "*.svc.example"))
    with serve(language_model, access=access) as served:
        for host, status in [("api.example", 200), ("a.svc.example:80", 200),
                             ("127.0.0.1", 400), ("other.example", 400)]:  # fmt: skip
            assert served.request("GET", "/health", headers={"Host": host})[0] == status, host


def test_the_docs_are_off_unless_asked(keyed: Running, language_model: LanguageModel) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        status, _, body = keyed.request("GET", path)
        assert status == 404 and error_of(body)["code"] == "not_found"
    with serve(language_model, access=Access(docs=True)) as served:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert served.request("GET", path)[0] == 200


def test_listening_beyond_loopback_without_a_key_warns(
    language_model: LanguageModel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hibachi.serve"):
        server_for(create_app(language_model, None), host="0.0.0.0", port=0)
    assert "with no API key" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hibachi.serve"):
        app = create_app(
            language_model, None, settings=ServeSettings(access=Access(api_keys=("k",)))
        )
        server_for(app, host="0.0.0.0", port=0)
        server_for(create_app(language_model, None), host="127.0.0.1", port=0)
    assert "with no API key" not in caplog.text


# -- bodies -----------------------------------------------------------------------------


def raw(served: Running, data: bytes, *, read: bool = True, timeout: float = 30) -> bytes:
    """Send ``data`` on a fresh connection; what comes back until the server closes it."""
    with socket.create_connection((served.host, served.port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_all(sock) if read else b""


def _read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _read_one(sock: socket.socket) -> bytes:
    """One response with a ``Content-Length``, read whole (the connection left open)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def head(path: str, length: int, *extra: str, kind: str = "application/json") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {kind}",
             f"Content-Length: {length}", *extra]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(answer: bytes) -> int:
    return int(answer.split()[1])


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


@pytest.fixture(scope="module")
def limited(language_model: LanguageModel) -> Iterator[Running]:
    limits = RequestLimits(max_request_bytes=1000)
    connections = ConnectionLimits(body_timeout=0.5, header_timeout=0.5, keep_alive_timeout=0.3,
                                   max_header_bytes=4096)  # fmt: skip
    with serve(language_model, limits=limits, connections=connections) as served:
        yield served


def test_a_body_declared_too_large_is_413_before_it_is_read(limited: Running) -> None:
    began = time.monotonic()
    answer = raw(limited, head("/v1/completions", 50_000_000))  # the body never comes
    assert status_of(answer) == 413 and b"connection: close" in answer.lower()
    error = error_of(body_of(answer))
    assert error["code"] == "request_too_large" and "max_request_bytes" in error["message"]
    assert time.monotonic() - began < 5


def test_a_chunked_body_is_cut_off_at_the_limit(limited: Running) -> None:
    chunk = b"x" * 600
    data = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + (b"258\r\n" + chunk + b"\r\n") * 2
    )  # two chunks of 600 bytes, no last chunk: the server must not wait for the rest
    answer = raw(limited, data)
    assert status_of(answer) == 413


def test_a_body_that_trickles_in_is_408(limited: Running) -> None:
    with socket.create_connection((limited.host, limited.port), timeout=30) as sock:
        sock.sendall(head("/v1/completions", 100) + b'{"prompt": ')
        answer = _read_all(sock)  # the rest of the body never comes
    assert status_of(answer) == 408
    assert error_of(body_of(answer))["code"] == "request_timeout"


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=x"])  # fmt: skip
def test_a_body_a_browser_could_send_to_another_site_is_415(limited: Running, kind: str) -> None:
    body = b'{"prompt": "a"}'
    answer = raw(limited, head("/v1/completions", len(body), kind=kind) + body)
    assert status_of(answer) == 415
    assert error_of(body_of(answer))["param"] == "Content-Type"


# -- connections ------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    limited: Running,
) -> None:
    began = time.monotonic()
    with socket.create_connection((limited.host, limited.port), timeout=30) as sock:
        answer = _read_all(sock)
    assert status_of(answer) == 408
    assert 0.4 < time.monotonic() - began < 10


def test_a_head_sent_a_byte_at_a_time_is_cut_off(limited: Running) -> None:
    """A slow-loris client: each byte resets no clock."""
    began = time.monotonic()
    with socket.create_connection((limited.host, limited.port), timeout=30) as sock:
        try:
            for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)  # the client's pace, not a synchronisation
                if time.monotonic() - began > 5:
                    break
        except OSError:
            pass  # closed by the server
        answer = _read_all(sock)
    assert status_of(answer) == 408
    assert time.monotonic() - began < 5


def test_a_head_too_large_is_431(limited: Running) -> None:
    data = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
    answer = raw(limited, data)
    assert status_of(answer) == 431
    assert error_of(body_of(answer))["code"] == "request_header_too_large"


def test_an_idle_keep_alive_connection_is_closed(limited: Running) -> None:
    with socket.create_connection((limited.host, limited.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        began = time.monotonic()
        answer = _read_all(sock)  # returns once the server closes the idle connection
    assert status_of(answer) == 200
    assert time.monotonic() - began < 10


def test_a_connection_beyond_the_cap_is_503_and_the_others_are_served(
    language_model: LanguageModel,
) -> None:
    connections = ConnectionLimits(max_connections=3, header_timeout=30)
    with serve(language_model, connections=connections) as served:
        held = [socket.create_connection((served.host, served.port)) for _ in range(3)]
        try:
            for sock in held:  # each connection is open once the server has answered on it
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(100).startswith(b"HTTP/1.1 200")
            answer = raw(served, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status_of(answer) == 503
            assert error_of(body_of(answer))["code"] == "too_many_connections"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while served.request("GET", "/health")[0] != 200:  # the closed ones are counted out
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_request_head_that_is_not_http_is_a_400_in_openai_s_shape(limited: Running) -> None:
    answer = raw(limited, b"GARBAGE \x00\x01 what\r\n\r\n")
    assert status_of(answer) == 400
    assert error_of(body_of(answer))["code"] == "invalid_http"


def test_bodies_held_at_once_are_bounded(language_model: LanguageModel) -> None:
    """Many slow uploads at the size limit cannot fill the memory: past
    max_buffered_bytes, one more body is 503 with Retry-After."""
    limits = RequestLimits(max_request_bytes=800)
    connections = ConnectionLimits(max_buffered_bytes=1000, body_timeout=30)
    with serve(language_model, limits=limits, connections=connections) as served:
        body = json.dumps({"prompt": "a" * 600, "max_tokens": 1}).encode()
        with socket.create_connection((served.host, served.port), timeout=30) as first:
            first.sendall(head("/v1/completions", len(body)) + body[:100])  # 600+ bytes held
            deadline = time.monotonic() + 10
            while True:  # until the server has taken in the first head
                answer = raw(served, head("/v1/completions", len(body), "Connection: close") + body)
                if status_of(answer) == 503 or time.monotonic() > deadline:
                    break
            assert status_of(answer) == 503 and b"retry-after: 1" in answer.lower()
            assert error_of(body_of(answer))["code"] == "busy"
            first.sendall(body[100:])
            assert status_of(first.recv(100)) == 200
        again = head("/v1/completions", len(body), "Connection: close") + body
        assert status_of(raw(served, again)) == 200


@pytest.mark.parametrize(("write_timeout", "dropped"), [(0.5, True), (60.0, False)])
def test_a_client_that_stops_reading_is_dropped(
    language_model: LanguageModel, write_timeout: float, dropped: bool
) -> None:
    """A large answer (64 vectors of 4,096 values, some 5 MB) to a client that reads
    nothing for 3 s: with a shorter write_timeout the server drops it rather than hold it
    for ever."""
    import torch

    from hibachi.serve import EmbeddingModel

    def wide(batch: dict[str, Any]) -> Any:
        return torch.rand(len(batch["input_ids"]), 4096)

    model = EmbeddingModel("wide", wide, language_model.tokenizer, max_length=16)
    connections = ConnectionLimits(write_timeout=write_timeout)
    app = create_app(None, model, settings=ServeSettings(connections=connections))
    with running(app) as served:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((served.host, served.port))
        body = json.dumps({"input": ["x"] * 64}).encode()
        sock.sendall(head("/v1/embeddings", len(body)) + body)
        time.sleep(3.0)  # the client's own behaviour: it reads nothing for a while
        sock.settimeout(60)
        answer = b""
        try:
            while chunk := sock.recv(1 << 20):
                answer += chunk
                if answer.endswith(b"}}"):
                    break
        except ConnectionResetError:
            pass
        sock.close()
    length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert (len(body_of(answer)) < length) == dropped
