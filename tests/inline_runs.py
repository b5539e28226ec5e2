"""The inline-backend runs of the tutorial notebooks (tests/test_notebooks_inline.py), started
in the background as soon as pytest has collected them.

Each run is a child process (its own kernel, one torch thread) at a lower CPU priority
(``os.nice(NICE)``), two at a time, longest first. Started at collection, they use what the
rest of the suite leaves of the two cores (a widget or browser test keeps one core busy at
most) instead of holding the suite up for two minutes of their own; their tests are moved to
the end of the run (conftest) and only collect the results. A test run alone starts its own
notebook when it asks for it. Whatever is still running when pytest ends is killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TIMES = TESTS.parent / "bench" / "results" / "notebooks.json"
AT_ONCE = 2
NICE = 10
TIMEOUT_S = 1200
TEST_NAME = "test_notebook_runs_inline_and_shows_each_figure_once"

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from nbrun import run_notebook
run = run_notebook(Path(sys.argv[1]), "inline")
code = [i for i, c in enumerate(run.notebook.cells) if c.cell_type == "code"]
print(json.dumps({"problems": run.problems, "last": run.cells[-1].index if run.cells else None,
                  "last_code": max(code)}))
"""

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_runs: dict[Path, Future] = {}
_children: set[subprocess.Popen] = set()
_closed = False


def _lower_priority():
    try:
        os.nice(NICE)
    except OSError:
        pass


def run_in_child(path: Path) -> dict:
    """Run one notebook inline in a child process; its report (``problems``, ``last``,
    ``last_code``), or a report of the runner's own failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with _lock:
        if _closed:
            return {"problems": ["not run: the test session ended"], "last": None,
                    "last_code": None}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(TESTS)], env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 preexec_fn=_lower_priority if hasattr(os, "nice") else None)
        _children.add(child)
    try:
        out, err = child.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        return {"problems": [f"the runner took over {TIMEOUT_S} s"], "last": None,
                "last_code": None}
    finally:
        with _lock:
            _children.discard(child)
    if child.returncode != 0:
        return {"problems": [f"the runner failed (exit {child.returncode}): "
                             f"{err.strip()[-2000:]}"], "last": None, "last_code": None}
    return json.loads(out.strip().splitlines()[-1])


def longest_first(paths: list[Path]) -> list[Path]:
    """``paths`` in the order their runs should start: the longest first, by the run times
    ``bench/notebooks.py`` last recorded (``bench/results/notebooks.json``; a notebook it does
    not know starts first, the rest keep their order), so that two workers end together
    instead of one running the longest notebook alone at the end."""
    try:
        times = json.loads(TIMES.read_text())
    except (OSError, ValueError):
        return list(paths)

    def seconds(path: Path) -> float:
        try:
            return float(times[path.stem]["inline"]["seconds"])
        except (KeyError, TypeError, ValueError):
            return float("inf")

    return sorted(paths, key=seconds, reverse=True)


def start(paths) -> None:
    """Start the runs of ``paths`` not started yet (longest first), in the background."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="inline-notebook")
        for path in longest_first([Path(p) for p in paths if Path(p) not in _runs]):
            _runs[path] = _pool.submit(run_in_child, path)


def result(path) -> dict:
    """The report of ``path``'s run, started now if it was not; waits for it."""
    start([path])
    return _runs[Path(path)].result()


def selected(items) -> list[Path]:
    """The notebooks of the inline tests among pytest's ``items``."""
    return [item.callspec.params["path"] for item in items
            if getattr(item, "originalname", "") == TEST_NAME]


def shutdown() -> None:
    """Stop: cancel the runs not started, kill the running children."""
    global _closed
    with _lock:
        _closed = True
        pool, children = _pool, list(_children)
    for child in children:
        child.kill()
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
