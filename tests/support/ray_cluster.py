"""`LocalCluster`: a Ray cluster of several raylets on this host, started with Ray's CLI.

``ray start --head`` then ``ray start --address`` per further node, as on a
real cluster: token authentication on (a fresh token in the cluster's own
temp folder, named by ``RAY_AUTH_TOKEN_PATH``), every port chosen free,
every node's processes (its raylet, and the workers it starts: actors,
replicas) in a process group of their own. `kill_node` loses a node the way
a crashed machine does; leaving the ``with`` block kills every group, so
nothing outlives a test, even a failed one. It never calls ``ray stop``
(which stops every Ray on the host, other users' too).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from types import TracebackType

__all__ = ["LocalCluster", "free_port"]

RAY = str(Path(sys.executable).with_name("ray"))
STOP_S = 3.0  # how long a node gets to end on SIGTERM before SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalCluster:
    """A head and ``len(cpus) - 1`` more nodes, ``cpus[i]`` CPUs on node ``i``.

    ``address`` is the head's ``host:port``; ``env`` the environment a process
    needs to join the cluster (the token's path), without ``RAY_AUTH_MODE``.
    """

    def __init__(
        self,
        cpus: tuple[int, ...] = (1, 1),
        *,
        object_store_bytes: int = 100_000_000,
        node_env: dict[int, dict[str, str]] | None = None,
    ) -> None:
        self.cpus = cpus
        self.object_store_bytes = object_store_bytes
        self.node_env = node_env or {}
        self.temp = Path(tempfile.mkdtemp(prefix="ray-cluster-", dir="/tmp"))
        self.token = self.temp / "token"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
        self.env["RAY_AUTH_TOKEN_PATH"] = str(self.token)
        self._groups: list[int] = []

    def __enter__(self) -> LocalCluster:
        try:
            self.token.write_text(secrets.token_hex(32))
            for node in range(len(self.cpus)):
                self._start(node)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add_node(self, cpus: int) -> int:
        """Start one more node of ``cpus`` CPUs; its index."""
        self.cpus = (*self.cpus, cpus)
        self._start(len(self.cpus) - 1)
        return len(self.cpus) - 1

    def kill_node(self, node: int) -> None:
        """SIGKILL node ``node``'s raylet and every process it started, at once."""
        with suppress(ProcessLookupError):
            os.killpg(self._groups[node], signal.SIGKILL)

    def close(self) -> None:
        """End every node (SIGTERM, then SIGKILL), remove the temp folder. Idempotent."""
        for group in self._groups:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        while any(_alive(g) for g in self._groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        for group in self._groups:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)

    def _start(self, node: int) -> None:
        env = {**self.env, **self.node_env.get(node, {})}
        args = [RAY, "start", *self._ports(), "--num-cpus", str(self.cpus[node])]
        args += ["--object-store-memory", str(self.object_store_bytes)]
        args += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        if node == 0:
            args += ["--head", "--port", str(self.port), "--temp-dir", str(self.temp)]
            args += ["--include-dashboard", "false", "--dashboard-port", str(free_port())]
            args += ["--ray-client-server-port", str(free_port())]
        else:  # a joining node authenticates as the Ray docs say: RAY_AUTH_MODE=token
            args += ["--address", self.address]
            env["RAY_AUTH_MODE"] = "token"
        log = (self.temp / f"start-{node}.log").open("w")
        with log:
            starting = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            self._groups.append(starting.pid)
            if starting.wait(timeout=120) != 0:
                text = (self.temp / f"start-{node}.log").read_text()
                raise RuntimeError(f"ray start failed for node {node}:\n{text[-3000:]}")

    @staticmethod
    def _ports() -> list[str]:
        names = (
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
            "--node-manager-port",
            "--object-manager-port",
        )
        return [part for name in names for part in (name, str(free_port()))]


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
