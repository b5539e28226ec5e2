"""Progressive occlusion: a coarse map first, refined stage by stage to the requested stride.

A sweep at stride ``s`` has its occluder corners at ``0, s, 2s, ...``; the corners at
``0, k s, 2 k s, ...`` are a subset of them, the grid of a sweep at stride ``k s``. A
progressive sweep computes the coarsest grid first (a few positions: a picture in a fraction
of a second), then the corners each finer stage adds (stride ``k s / 2``, ``k s / 4`` ... ``s``),
never one twice. Every stage is exactly the one-shot sweep of its own grid; the last is the
requested map. :func:`stage_factors` picks the stages; :func:`schedule` orders the positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import BadParameterError
from .grid import check_int

__all__ = ["FIRST_POSITIONS", "schedule", "stage_factors"]

#: The coarsest stage has at least this many positions (a 3 x 3 map is still a picture).
FIRST_POSITIONS = 9


def stage_factors(rows: int, cols: int, stride: int, progressive) -> list[int]:
    """Stride multipliers of the stages, coarsest first, ending with 1.

    Parameters
    ----------
    rows, cols : int
        Positions per axis of the requested grid.
    stride : int
        The requested stride.
    progressive : bool or sequence of int
        ``False``: one stage. ``True``: strides ``k s, k s / 2, ..., s`` with ``k`` the
        largest power of two whose grid still has :data:`FIRST_POSITIONS` positions. A
        sequence: the coarser strides themselves (in input pixels), each a multiple of the next
        and of ``stride``.

    Raises
    ------
    BadParameterError
        For a stride that is not a multiple of the next finer one.
    """
    if progressive is False or progressive is None:
        return [1]
    if progressive is True:
        k = 1
        while _count(rows, 2 * k) * _count(cols, 2 * k) >= FIRST_POSITIONS:
            k *= 2
        return [k >> i for i in range(k.bit_length())]
    if isinstance(progressive, (str, bytes)) or not isinstance(progressive, Sequence):
        raise BadParameterError(f"progressive must be True, False or a list of coarser strides, "
                                f"got {progressive!r}")
    strides = [check_int("progressive stride", s) for s in progressive]
    strides = sorted(set(strides) | {stride}, reverse=True)
    for coarse, fine in zip(strides, strides[1:]):
        if fine < stride or coarse % fine:
            raise BadParameterError(
                f"progressive strides must each be a multiple of the next finer one and of the "
                f"stride {stride}, got {list(progressive)}")
    return [s // stride for s in strides]


def _count(n: int, k: int) -> int:
    return len(range(0, n, k))


def schedule(rows: int, cols: int, factors: Sequence[int]
             ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The order in which a progressive sweep computes the positions.

    Returns
    -------
    order : numpy.ndarray
        Flat indices ``i * cols + j`` of the requested grid, each once: the coarsest stage's
        positions first (row by row), then those each finer stage adds.
    checkpoints : list of (int, int)
        ``(n, k)``: once the first ``n`` positions of ``order`` are computed, the stage of
        stride multiplier ``k`` is complete.
    """
    seen = np.zeros((rows, cols), bool)
    order: list[np.ndarray] = []
    checkpoints = []
    count = 0
    for k in factors:
        grid = np.zeros((rows, cols), bool)
        grid[::k, ::k] = True
        new = np.flatnonzero(grid & ~seen)
        seen |= grid
        order.append(new)
        count += len(new)
        checkpoints.append((count, int(k)))
    return np.concatenate(order).astype(np.int64), checkpoints
