"""`connect`: join a Ray cluster as Ray's own CLI does, token authentication included.

A cluster started by ``ray start --head`` where a token exists (Ray 2.60
writes one at ``~/.ray/auth_token`` the first time it starts a cluster)
authenticates every connection with it. ``ray.init`` turns token
authentication on for ``address="auto"`` when it finds a token, but not for
an explicit address: it then retries for 20 s and fails with a bare
``ConnectionError``. `connect` finds the token for any address.
"""

from __future__ import annotations

from typing import Any

import ray

from ._errors import ClusterUnreachable

__all__ = ["connect"]

_TOKEN_FIX = (
    "make the cluster's token available to this process: run `ray get-auth-token` on the "
    "head node and write its output to ~/.ray/auth_token here, or set RAY_AUTH_TOKEN (the "
    "token itself) or RAY_AUTH_TOKEN_PATH (a file holding it)"
)


def connect(address: str | None = None, **init_options: Any) -> None:
    """Join the Ray cluster at ``address`` (``"host:port"`` of its head, or
    ``"auto"``), or start a local one when None. Nothing is done if this
    process is connected already.

    Where ``RAY_AUTH_MODE`` is unset and a token is found (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``), token authentication
    is turned on for this process and the processes it starts, as
    ``ray start`` does. ``init_options`` go to ``ray.init``.

    Raises:
        ClusterUnreachable: the cluster refused the token (or none was found),
            or nothing answered at ``address``; the message says what to fix.
    """
    if ray.is_initialized():
        return
    if address not in (None, "auto"):
        _use_token_if_found()
    try:
        ray.init(address=address, **init_options)
    except ray.exceptions.AuthenticationError as exc:
        raise ClusterUnreachable(
            f"the Ray cluster at {address} requires a token and none was found: {_TOKEN_FIX}"
        ) from exc
    except ConnectionError as exc:
        if _refused_token(exc):
            raise ClusterUnreachable(
                f"the Ray cluster at {address} refused this process's token: {_TOKEN_FIX}"
            ) from exc
        raise ClusterUnreachable(
            f"no Ray cluster answered at {address}: check that it runs (`ray status` on its "
            "head node) and that the address is its head's host:port (`ray start --head "
            "--port PORT`)"
        ) from exc


def _use_token_if_found() -> None:
    """What ``ray.init(address="auto")`` does before it connects (Ray 2.60);
    nothing on a Ray without token authentication."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _refused_token(exc: BaseException) -> bool:
    """Whether Ray's error, or one it chains, is the cluster refusing the token."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
