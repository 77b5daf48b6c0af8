"""Settings for the whole suite."""

import os

import pytest
import torch

# pytest-xdist runs two workers on CI's two cores; with torch's default of one thread per core
# each, the four OpenMP threads spin against each other and CPU-heavy tests slow down 10x or more.
# One thread per worker (and per subprocess a test starts: servers, kernels, torchrun) fits.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

from blocks.fast import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as every entry point does: no page faults on each big activation


@pytest.fixture
def torch_threads():
    """`torch_threads(n)` runs the rest of a test on n intra-op threads; the suite's 1 comes back after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
