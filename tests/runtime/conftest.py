"""Fixtures the runtime tests share."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """A single-process reference computes on one thread, as each stage does (--threads 1):
    Adam divides by the root of tiny second moments, which turns another thread count's
    rounding into differences past rtol 1e-5 (measured on the GPT: 1e-4 with two threads, none
    with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
