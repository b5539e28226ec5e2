"""Slow, self-contained checks run in child processes in the background, started as soon as
pytest has collected them (conftest), their tests moved to the end of the run.

The suite runs one test at a time on a 2-core machine, and many of its tests keep one core busy
at most (widgets, browsers, one-thread model checks). A :class:`Runs` pool starts its checks
at collection, each a child process with one torch thread at the lowest CPU priority
(``os.nice(NICE)``), at most :data:`AT_ONCE` of all pools' children at a time, so that they use
what the rest of the suite leaves of the cores; their tests, run last, only wait for and judge
the reports. Measured in clean-clone runs on the 2-core machine: the suite took 17 m 33 s (15 m
35 s in pytest) with the zoo on one thread in the run and the notebooks' inline runs waited
for; 15 m 34 s with four children at nice 10 (the browser tests 1.5-2x slower beside them);
14 m 42 s (13 m 06 s) with two at nice 19. A test run alone starts its own check when
it asks for it. Whatever is still running when pytest ends is killed.

A child prints its report as one JSON line, the last of its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

NICE = 19
#: children of all pools running at the same time
AT_ONCE = 2
TIMEOUT_S = 1200

_pools: list["Runs"] = []
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _shared_executor() -> ThreadPoolExecutor:
    """The one pool of :data:`AT_ONCE` worker threads that starts every pool's children."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="background")
        return _executor


def _lower_priority():
    try:
        os.nice(NICE)
    except OSError:
        pass


class Runs:
    """Background child processes, one per key (started by the shared :data:`AT_ONCE`
    workers, in the order the pools and their keys were started).

    A key is ``(test name, parameter value)``: the tests ``tests`` names select them.

    Parameters
    ----------
    tests : dict of str to str
        The test functions whose items this pool runs, each with the name of its parameter
        (``item.callspec.params[param]``).
    argv : callable
        ``argv(key)``: the child's command line.
    order : callable, optional
        ``order(keys)``: the keys in the order to start them (the longest first).
    """

    def __init__(self, tests: dict[str, str], argv: Callable[[tuple], list[str]], *,
                 order: Callable[[list], list] | None = None):
        self.tests, self.argv, self.order = dict(tests), argv, order or list
        self._lock = threading.Lock()
        self._runs: dict[Hashable, Future] = {}
        self._children: set[subprocess.Popen] = set()
        self._closed = False
        _pools.append(self)

    def _failed(self, why: str) -> dict:
        return {"problems": [why]}

    def _run(self, key) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with self._lock:
            if self._closed:
                return self._failed("not run: the test session ended")
            child = subprocess.Popen(self.argv(key), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_lower_priority if hasattr(os, "nice") else None)
            self._children.add(child)
        try:
            out, err = child.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return self._failed(f"the child took over {TIMEOUT_S} s")
        finally:
            with self._lock:
                self._children.discard(child)
        if child.returncode != 0:
            return self._failed(f"the child failed (exit {child.returncode}): "
                                f"{err.strip()[-3000:]}")
        return json.loads(out.strip().splitlines()[-1])

    def start(self, keys: Sequence) -> None:
        """Start the children of ``keys`` not started yet, in :attr:`order`."""
        with self._lock:
            for key in self.order([k for k in keys if k not in self._runs]):
                self._runs[key] = _shared_executor().submit(self._run, key)

    def result(self, key) -> dict:
        """The report of ``key``'s child, started now if it was not; waits for it."""
        self.start([key])
        return self._runs[key].result()

    def selected(self, items) -> list[tuple]:
        """The keys of this pool's tests among pytest's ``items``."""
        return [(item.originalname, item.callspec.params[self.tests[item.originalname]])
                for item in items if self.owns(item)]

    def owns(self, item) -> bool:
        """Whether pytest's ``item`` is one of this pool's tests."""
        return getattr(item, "originalname", "") in self.tests

    def shutdown(self) -> None:
        """Cancel the children not started, kill the running ones."""
        with self._lock:
            self._closed = True
            children = list(self._children)
            pending = list(self._runs.values())
        for future in pending:
            future.cancel()
        for child in children:
            child.kill()


def pools() -> list[Runs]:
    """Every pool the imported test helpers made."""
    return list(_pools)
