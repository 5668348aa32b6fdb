"""hibachi: batched inference for tensor models.

Many callers each send one request; hibachi groups them into batches on the
fly, runs the model once per step for the whole batch, and streams each
caller's results back as they are produced.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from ._autoregressive.batcher import AutoregressiveBatcher as AutoregressiveBatcher
from ._autoregressive.incremental import Accepted as Accepted
from ._autoregressive.incremental import IncrementalModel as IncrementalModel
from ._autoregressive.stats import AutoregressiveStats as AutoregressiveStats
from ._autoregressive.stats import MemoryStats as MemoryStats
from ._autoregressive.stream import TokenStream as TokenStream
from ._backends import Backend as Backend
from ._backends import register_backend as register_backend
from ._core.health import Health as Health
from ._core.pipeline import Pipeline as Pipeline
from ._exceptions import BatcherClosed as BatcherClosed
from ._exceptions import ConfigurationError as ConfigurationError
from ._exceptions import HibachiError as HibachiError
from ._exceptions import InvalidRequest as InvalidRequest
from ._exceptions import ModelError as ModelError
from ._exceptions import QueueFull as QueueFull
from ._exceptions import Timeout as Timeout
from ._feedforward.batcher import FeedforwardBatcher as FeedforwardBatcher
from ._feedforward.handle import ResultHandle as ResultHandle
from ._feedforward.stats import FeedforwardStats as FeedforwardStats

try:
    __version__ = _metadata.version("hibachi-batch")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Accepted",
    "AutoregressiveBatcher",
    "AutoregressiveStats",
    "Backend",
    "BatcherClosed",
    "ConfigurationError",
    "FeedforwardBatcher",
    "FeedforwardStats",
    "Health",
    "HibachiError",
    "IncrementalModel",
    "InvalidRequest",
    "MemoryStats",
    "ModelError",
    "Pipeline",
    "QueueFull",
    "ResultHandle",
    "Timeout",
    "TokenStream",
    "__version__",
    "register_backend",
]
