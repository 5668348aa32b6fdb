"""A real hibachi server on 127.0.0.1 for the serve tests: uvicorn on a free port, in a thread."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from hibachi.serve import GracefulServer, server_for


class _Server(GracefulServer):
    """Sets ``ready`` once uvicorn listens (an Event, not a polling loop)."""

    ready: threading.Event

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@dataclass
class Running:
    server: GracefulServer
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, **options: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, **options)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One raw HTTP request: status, headers (lower-cased names), body."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            data = None if body is None else json.dumps(body)
            all_headers = {"content-type": "application/json", **(headers or {})}
            connection.request(method, path, body=data, headers=all_headers)
            response = connection.getresponse()
            got = {k.lower(): v for k, v in response.getheaders()}
            return response.status, got, response.read()
        finally:
            connection.close()

    def post(self, path: str, body: Any, **headers: str) -> tuple[int, dict[str, str], Any]:
        status, got, data = self.request("POST", path, body, headers)
        return status, got, json.loads(data)

    def open_stream(self, path: str, body: Any, headers: dict[str, str] | None = None) -> RawStream:
        """A streaming request on a raw socket, its response headers read."""
        sock = socket.create_connection((self.host, self.port), timeout=60)
        data = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n".encode()
            + data
        )
        stream = RawStream(sock)
        stream.read_head()
        return stream

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of ``/metrics``: (name, sorted labels) → value."""
        status, _, data = self.request("GET", "/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(data.decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_for_metric(
        self, name: str, value: float, timeout: float = 30.0, **labels: str
    ) -> None:
        """Until ``/metrics`` shows ``value`` (the server acts between model steps)."""
        deadline = time.monotonic() + timeout
        while (seen := self.metric(name, **labels)) != value:
            assert time.monotonic() < deadline, f"{name}{labels} stayed {seen}, expected {value}"
            time.sleep(0.02)


class RawStream:
    """A server-sent event stream read off a plain socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def read_head(self) -> None:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), "the server closed the connection before its headers"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = dict(
            (k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])
        )

    def events(self) -> Iterator[str]:
        """Each event's data up to the last ([DONE] or an error), chunked framing skipped."""
        while True:
            while b"data: " in self.buffer and b"\n\n" in self.buffer.split(b"data: ", 1)[1]:
                _, rest = self.buffer.split(b"data: ", 1)
                data, self.buffer = rest.split(b"\n\n", 1)
                yield data.decode()
                if data == b"[DONE]" or data.startswith(b'{"error"'):
                    return
            if not self._fill():
                return

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def running(app: Any) -> Iterator[Running]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = server_for(app, host="127.0.0.1", port=port, log_level="warning")
    server.__class__ = _Server
    server.ready = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(60), "the server did not start"  # type: ignore[attr-defined]
        yield Running(server, "127.0.0.1", port)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"
