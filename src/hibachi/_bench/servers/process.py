"""One HTTP server in a child process: on 127.0.0.1, awaited until it answers, always stopped.

`ServerProcess` is a context manager. Entering it starts the command on a
free loopback port and waits until ``GET /v1/models`` answers (or the child
exits, or ``start_seconds`` pass: `ServerFailed`, with the end of its log);
leaving it, however it is left (an error, Ctrl-C), stops the child's whole
process group: SIGTERM, then SIGKILL after ``stop_seconds``. On Linux the
child also gets SIGTERM if the thread that started it dies (start servers
from the main thread). Its output goes to a temporary log, whose end a
failure quotes; the log is deleted when the server is stopped.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

__all__ = ["ServerFailed", "ServerProcess", "free_port"]

HOST = "127.0.0.1"


class ServerFailed(RuntimeError):
    """A server did not start, or did not answer, in time."""


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``command(port)`` run as a child process serving on 127.0.0.1:``port``."""

    def __init__(
        self,
        name: str,
        command: Callable[[int], list[str]],
        *,
        env: Mapping[str, str] | None = None,
        start_seconds: float = 300.0,
        stop_seconds: float = 15.0,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._command = command(self.port)
        self._env = {**os.environ, **(env or {})}
        self._start_seconds = start_seconds
        self._stop_seconds = stop_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._state = _State.UNOPENED

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child and wait until it answers; `ServerFailed` (child stopped) if not."""
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"{self.name} was started already")
        self._state = _State.OPENED
        self._launch()
        try:
            self._await_ready()
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        fd, log = tempfile.mkstemp(prefix=f"hibachi-bench-{self.port}-", suffix=".log")
        self._log = Path(log)
        with os.fdopen(fd, "wb") as out:
            self._process = subprocess.Popen(
                _dying_with_parent(self._command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,  # its own process group: stopped as one, not by Ctrl-C
            )

    def _await_ready(self) -> None:
        deadline = time.monotonic() + self._start_seconds
        while not _answers(f"{self.url}/v1/models"):
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited ({self._process.returncode}): {self.tail()}"
                )
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"{self.name} did not answer within {self._start_seconds:.0f} s: {self.tail()}"
                )
            time.sleep(0.25)  # a child's start has no event to wait on but its port

    def stop(self) -> None:
        """Stop the child's process group and delete its log (idempotent)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(self._stop_seconds)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.unlink(missing_ok=True)

    def tail(self, lines: int = 15) -> str:
        """The last lines of the child's output, for an error message."""
        if self._log is None or not self._log.exists():
            return "(no output)"
        text = self._log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # the group the child leads: it and whatever it started


# Run first in the child, then replaced by the command (exec keeps the setting): the child
# gets SIGTERM when the thread that started it dies. A preexec_fn would do the same, but
# makes subprocess fork the whole (multithreaded) bench process.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "  # PR_SET_PDEATHSIG
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def _dying_with_parent(command: list[str]) -> list[str]:
    """``command``, on Linux first told to end with the bench (see `_DIE_WITH_PARENT`)."""
    if sys.platform != "linux":
        return command
    return [sys.executable, "-c", _DIE_WITH_PARENT, *command]
