import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (rf_probe, ...) importable
os.environ.setdefault("MPLBACKEND", "Agg")
# OpenMP threads that sleep at barriers instead of spinning: on a small shared CI machine a
# spinning thread waits for a descheduled one in every one of the many small kernels (measured:
# up to 10x slower occlusion sweeps under load); and as many threads as the CPUs this process
# may use (affinity, cgroup quota), not as the host has. Set before torch is imported (this
# import does not import torch); inherited by the notebook kernels nbval starts and the servers
# the browser tests start. A variable already set is left alone. Results do not depend on it.
from zfwidgets.threads import thread_env  # noqa: E402

os.environ.update(thread_env())
# The suite's numbers are EfficientNet-Lite0's. zf.Session() / explore() / the CLI open alexnet
# when its ImageNet weights are in torch's hub cache (zfwidgets.default_model), so pin the
# default here: a machine with AlexNet cached runs the same tests as an offline CI runner (and
# a ZFWIDGETS_MODEL left in a developer's shell changes nothing). Inherited by notebook kernels
# (nbval) and the Voila kernels of the browser tests. TORCH_HOME is left alone: tests of the policy itself point it
# at a temporary folder and delete this variable with monkeypatch.
os.environ["ZFWIDGETS_MODEL"] = "efficientnet_lite0"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): the
    occlusion engine runs thousands of small kernels, which on a small shared CI machine wait
    for each other across OpenMP threads; results do not depend on it."""
    from zfwidgets.threads import using_threads

    with using_threads(1):
        yield


def _background_pools():
    """The background pools (tests/background.py) of the test helpers that have one."""
    import background
    import inline_runs  # noqa: F401  (makes its pool)
    import zoo_runs  # noqa: F401

    return background.pools()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The tests of the background pools go last: their children start at collection and
    have the whole run to finish (tests/background.py)."""
    pools = _background_pools()
    last = [item for item in items if any(p.owns(item) for p in pools)]
    if last:
        items[:] = [item for item in items if item not in last] + last


def pytest_collection_finish(session):
    if not session.config.option.collectonly:
        for pool in _background_pools():
            pool.start(pool.selected(session.items))


def pytest_sessionfinish(session, exitstatus):
    for pool in _background_pools():
        pool.shutdown()
