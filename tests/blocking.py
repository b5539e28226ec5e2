"""Run something that might block forever (open() on a FIFO) without hanging the test run."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest


def finishes(fn, seconds: float = 60.0, fifos=()):
    """``fn()`` in a thread; returns its value or re-raises its exception. Fails the test if it
    is still running after ``seconds`` (blocked in ``open()`` on a FIFO), after giving each of
    ``fifos`` a writer so that the thread can end."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"still running after {seconds} s: blocked on a FIFO")
    if "error" in out:
        raise out["error"]
    return out["value"]
