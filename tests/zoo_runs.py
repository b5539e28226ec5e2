"""The model zoo's sweeps (tests/test_zoo.py): a :class:`background.Runs` pool (two background
children at a time in all), each child sweeping one model on one torch thread, started at
collection. The child runs the test's own check (``test_zoo.check(test name, model name)``) and
reports it passed, skipped (with the reason) or failed (with the traceback)."""

from __future__ import annotations

import sys
from pathlib import Path

from background import Runs

TESTS = Path(__file__).resolve().parent
TORCHVISION_TEST, TIMM_TEST = "test_torchvision_constructor", "test_timm_model"

_CHILD = """
import json, sys, traceback
sys.path.insert(0, sys.argv[3])
import pytest
import test_zoo
try:
    test_zoo.check(sys.argv[1], sys.argv[2])
    report = {"passed": True}
except pytest.skip.Exception as exc:
    report = {"skipped": str(exc.msg)}
except BaseException:
    report = {"problems": [traceback.format_exc()[-6000:]]}
print(json.dumps(report))
"""

RUNS = Runs({TORCHVISION_TEST: "name", TIMM_TEST: "name"},
            lambda key: [sys.executable, "-c", _CHILD, key[0], key[1], str(TESTS)])


def judge(test: str, name: str) -> None:
    """Wait for the child of ``(test, name)`` and pass, skip or fail as it reported."""
    import pytest

    report = RUNS.result((test, name))
    if "skipped" in report:
        pytest.skip(report["skipped"])
    assert report.get("passed"), "\n".join(report.get("problems", ["no report"]))
