"""What every benchmark writes about the machine it ran on, and waiting for a quiet machine.

The scripts in ``bench/`` are run as ``python bench/NAME.py``, so this module is importable as
``_common`` (the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_text() -> str:
    """The 1 / 5 / 15 minute load averages, as text."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine_info(**extra: str) -> dict[str, str]:
    """CPU, cores, platform, Python / torch versions, torch threads, OpenMP wait policy, load
    average and date; ``extra`` rows (reference-library versions ...) go before the date."""
    import torch

    import zfwidgets

    info = {
        "cpu": cpu_model(),
        "os.cpu_count()": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zfwidgets": zfwidgets.__version__,
        "torch threads (intra / inter-op)":
            f"{torch.get_num_threads()} / {torch.get_num_interop_threads()}",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset: threads spin)"),
    }
    info.update(extra)
    info["load average (1/5/15 min) at start"] = load_text()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def machine_table(info: dict[str, str]) -> list[str]:
    """``info`` as the lines of a two-column markdown table."""
    return ["| machine | |", "|---|---|", *(f"| {k} | {v} |" for k, v in info.items())]


def busy(threshold: float = 1.0) -> bool:
    """Whether the 1-minute load average says other jobs were running (more than ``threshold``
    runnable processes besides this one's threads)."""
    try:
        return os.getloadavg()[0] > threshold + 1
    except OSError:
        return False


def wait_for_quiet(threshold: float | None, max_wait: float) -> None:
    """Wait (at most ``max_wait`` s) until the 1-minute load average drops below ``threshold``
    (``None``: do not wait); print the load before measuring."""
    start = time.monotonic()
    while threshold is not None and os.getloadavg()[0] >= threshold \
            and time.monotonic() - start < max_wait:
        time.sleep(5)
    print(f"# load average before measuring: {load_text()} "
          f"(waited {time.monotonic() - start:.0f} s)", flush=True)


def load_note(before: str, after: str | None = None) -> str:
    """A sentence for the results file saying how busy the machine was while it ran."""
    span = before if after is None else f"{before} before, {after} after"
    try:
        values = [float(v) for v in (before + " / " + (after or before)).split(" / ")]
    except ValueError:
        return f"Load average: {span}."
    cores = os.cpu_count() or 1
    if max(values[0], values[3]) > cores:
        return (f"**The machine was shared** with other jobs while this ran ({cores} cores, load "
                f"average {span}): absolute times are noisy and pessimistic; the ratios between "
                "methods measured in the same run are more reliable.")
    return (f"The machine was quiet ({cores} cores, load average {span}): no other job ran "
            "beside the benchmark.")
