"""Keeping third-party chatter out of the bench's output, and the hub out of its runs."""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    """No hub access, no tokenizer fork warnings, no progress bars or info logs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging: Any = importlib.import_module("transformers.utils.logging")

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # transformers' continuous batching logs at ERROR on a CPU without psutil.
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)
