"""An autouse fixture: a test module that imports it runs on one PyTorch thread.

Tiny models gain nothing from two threads, and lose much when the cores are busy.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
