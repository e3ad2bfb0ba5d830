"""Shared fixtures: tiny random Hugging Face models written by transformers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Parity tolerances hold for any thread count; a fixed count keeps runs comparable.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
