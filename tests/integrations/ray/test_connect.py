"""`connect` without a cluster: when it looks for a token, and the errors it
names (``ray.init`` stands in for a cluster). A real token-authenticated
cluster is joined in test_two_nodes.py."""

from __future__ import annotations

from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

import hibachi  # noqa: E402
from hibachi.integrations.ray import ClusterUnreachable, connect  # noqa: E402
from hibachi.integrations.ray import _connect as connect_module  # noqa: E402


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What ``connect`` did, in order; Ray not initialised, ``ray.init`` faked."""
    seen: list[str] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(connect_module, "_use_token_if_found", lambda: seen.append("token"))
    monkeypatch.setattr(ray, "init", lambda address=None, **_: seen.append(f"init {address}"))
    return seen


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("10.0.0.1:6379", ["token", "init 10.0.0.1:6379"], id="explicit"),
        pytest.param("auto", ["init auto"], id="auto-ray-finds-the-token-itself"),
        pytest.param(None, ["init None"], id="local-cluster"),
    ],
)
def test_the_token_is_looked_for_before_joining_an_explicit_address(
    calls: list[str], address: str | None, expected: list[str]
) -> None:
    connect(address)
    assert calls == expected


def test_a_connected_process_stays_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("joined twice"))
    connect("10.0.0.1:6379")


def refused_token() -> BaseException:
    try:
        raise RuntimeError("Failed to connect to GCS: RPC error: InvalidAuthToken: missing")
    except RuntimeError as inner:
        error = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
        error.__cause__ = inner
        return error


@pytest.mark.parametrize(
    ("raised", "names"),
    [
        pytest.param(refused_token(), "refused this process's token", id="token-refused"),
        pytest.param(
            ray.exceptions.AuthenticationError("no token"), "none was found", id="no-token"
        ),
        pytest.param(ConnectionError("nothing there"), "no Ray cluster answered", id="no-cluster"),
    ],
)
def test_a_failed_join_says_what_to_fix(
    calls: list[str], monkeypatch: pytest.MonkeyPatch, raised: BaseException, names: str
) -> None:
    def init(**_: Any) -> None:
        raise raised

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ClusterUnreachable) as caught:
        connect("10.0.0.1:6379")
    message = str(caught.value)
    assert names in message and "10.0.0.1:6379" in message
    if "token" in names:
        assert "ray get-auth-token" in message and "RAY_AUTH_TOKEN" in message
    assert caught.value.__cause__ is raised
    assert isinstance(caught.value, hibachi.HibachiError | ConnectionError)
