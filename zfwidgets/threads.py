"""Threads that fit the machine: the CPUs this process may really use, and torch's count from it.

torch starts one OpenMP thread per core it sees, which is every core of the host: a container
limited to 2 CPUs on a 64-core host runs 64 threads that wait for each other in every kernel.
:func:`available_cpus` is the smaller of the CPU affinity (``os.sched_getaffinity``) and the
cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the process's
own cgroup and its ancestors). A fractional quota is rounded down (at least 1): a thread more
than the quota pays is throttled while the others wait for it.

Nothing here changes a process on import, and importing it imports neither torch nor the rest of
the package (the ``zfwidgets`` command and the test suite read it before torch starts its
threads). The explorer's kernel gets :func:`thread_env` in its environment (``OMP_NUM_THREADS``,
and ``OMP_WAIT_POLICY=PASSIVE`` so that idle OpenMP threads sleep instead of spinning on a shared
machine); a script calls :func:`set_threads`, or uses :func:`using_threads`, which restores the
previous count.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

__all__ = ["CGROUP_ROOT", "available_cpus", "cgroup_cpu_limit", "passive_openmp",
           "set_threads", "thread_env", "torch_threads", "using_threads"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):      # not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")         # "max 100000" or "200000 100000"
    if not text:
        return None
    parts = text.split()
    if parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1]) if len(parts) > 1 else 100000.0
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        quota_us, period_us = float(quota), float(period)
    except (TypeError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _lineage(mount: Path, path: str) -> list[Path]:
    """The cgroup folder of ``path`` under ``mount`` and its ancestors up to ``mount``; only
    ``mount`` when the path is not visible there (a container sees its own cgroup as root)."""
    folders, here = [], mount / path.strip("/")
    if here.is_dir():
        while True:
            folders.append(here)
            if here == mount or mount not in here.parents:
                break
            here = here.parent
    if mount not in folders:
        folders.append(mount)
    return folders


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT,
                     proc_cgroup: str | os.PathLike = PROC_CGROUP) -> float | None:
    """This process's cgroup CPU quota, in CPUs (``quota / period``), or ``None`` if unlimited.

    Parameters
    ----------
    root : path
        Where the cgroup file systems are mounted (v2: ``root/cpu.max`` ...; v1: ``root/cpu``
        or ``root/cpu,cpuacct``).
    proc_cgroup : path
        The process's cgroup membership (``/proc/self/cgroup``).

    Returns
    -------
    float or None
        The smallest quota along the process's cgroup and its ancestors; ``None`` when no
        quota is set or none can be read (not Linux, no cgroup file system).
    """
    root = Path(root)
    quotas = []
    for line in (_read(Path(proc_cgroup)) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":                                        # v2 (unified)
            quotas += [_v2_quota(d) for d in _lineage(root, path)]
        elif "cpu" in controllers.split(","):                        # v1
            for name in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                mount = root / name
                if mount.is_dir():
                    quotas += [_v1_quota(d) for d in _lineage(mount, path)]
                    break
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def available_cpus(root: str | os.PathLike = CGROUP_ROOT,
                   proc_cgroup: str | os.PathLike = PROC_CGROUP) -> int:
    """How many CPUs this process may use: its affinity, capped by its cgroup's CPU quota.

    Parameters
    ----------
    root, proc_cgroup : path
        See :func:`cgroup_cpu_limit` (tests point them at fake files).

    Returns
    -------
    int
        At least 1; a fractional quota is rounded down.
    """
    cpus = _affinity()
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota + 1e-9)))
    return max(1, cpus)


def torch_threads(environ=None) -> int:
    """torch's intra-op thread count for this process: ``OMP_NUM_THREADS`` when the user set it
    (a positive integer), else :func:`available_cpus`.

    Parameters
    ----------
    environ : mapping, optional
        Defaults to ``os.environ``.

    Returns
    -------
    int
    """
    environ = os.environ if environ is None else environ
    try:
        asked = int(str(environ.get("OMP_NUM_THREADS", "")).split(",")[0])
    except ValueError:
        asked = 0
    return asked if asked > 0 else available_cpus()


def thread_env(environ=None) -> dict[str, str]:
    """The thread settings for a new process (a notebook kernel, a test run): ``OMP_NUM_THREADS``
    from :func:`available_cpus` and ``OMP_WAIT_POLICY=PASSIVE``, each only where ``environ``
    does not set it already (the user's choice wins).

    Parameters
    ----------
    environ : mapping, optional
        Defaults to ``os.environ``.

    Returns
    -------
    dict
        The variables to add (empty when ``environ`` sets both).
    """
    environ = os.environ if environ is None else environ
    out = {}
    if not environ.get("OMP_NUM_THREADS"):
        out["OMP_NUM_THREADS"] = str(available_cpus())
    if not environ.get("OMP_WAIT_POLICY"):
        out["OMP_WAIT_POLICY"] = "PASSIVE"
    return out


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (default :func:`torch_threads`); returns the previous.

    Parameters
    ----------
    n : int, optional
        A positive count; ``None``: what fits the machine.

    Returns
    -------
    int
        The count before the call, to restore it (or use :func:`using_threads`).
    """
    import torch

    from .errors import BadParameterError

    n = torch_threads() if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BadParameterError(f"a thread count must be a positive integer, got {n!r}")
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    return before


@contextlib.contextmanager
def using_threads(n: int | None = None):
    """Run a block with ``n`` torch threads (default :func:`torch_threads`), then restore.

    Parameters
    ----------
    n : int, optional
        See :func:`set_threads`.

    Yields
    ------
    int
        The count in effect inside the block.
    """
    import torch

    before = set_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def passive_openmp(environ=None) -> bool:
    """Whether this process's idle OpenMP threads sleep at once: ``OMP_WAIT_POLICY=PASSIVE``
    (what :func:`thread_env` gives the explorer's kernel and the test suite) and no
    ``GOMP_SPINCOUNT`` of the user's to spin first.

    Parameters
    ----------
    environ : mapping, optional
        Defaults to ``os.environ`` (OpenMP read it when torch started its threads).

    Returns
    -------
    bool
    """
    environ = os.environ if environ is None else environ
    policy = str(environ.get("OMP_WAIT_POLICY", "")).strip().upper()
    return policy == "PASSIVE" and not environ.get("GOMP_SPINCOUNT")

