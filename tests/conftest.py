import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (rf_probe, ...) importable
os.environ.setdefault("MPLBACKEND", "Agg")
# OpenMP threads that sleep at barriers instead of spinning: on a small shared CI machine a
# spinning thread waits for a descheduled one in every one of the many small kernels (measured:
# up to 10x slower occlusion sweeps under load). Set before torch is imported; inherited by the
# notebook kernels nbval starts. Results do not depend on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): the
    occlusion engine runs thousands of small kernels, which on a small shared CI machine wait
    for each other across OpenMP threads; results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
