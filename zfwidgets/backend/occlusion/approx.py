"""Approximate occlusion, after Krypton (an option, never the default; its error is measured).

Nakandala, Kumar and Papakonstantinou (*Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations*, SIGMOD 2019) cast an occlusion sweep as incremental
view maintenance: the unoccluded pass is a materialized view of every layer, and each occluded
image recomputes only its "update patch", batched over many occluder positions. That exact part
is :mod:`.engine`. Two approximations go further (the paper reports up to 5x exact and 35x
approximate):

* **Projective-field thresholding.** Through the layers the region an occluder changes grows
  (its projective field) until it covers whole maps, but the change is concentrated near the
  centre of that region. Krypton caps the update patch at a fraction ``tau`` of each map's
  side, centred on the occluder; outside it the unoccluded values stand. Here:
  ``IncrementalMode(tau=...)``.
* **Adaptive drill-down.** A first pass at a coarse stride covers the whole image; the fine
  stride is then run only where the coarse map changes most (a fraction of the positions).
  Here: the coarse stage is the grid at ``k * stride`` with ``k * stride <= size`` (coarse
  occluders still tile the image); the ``drill_down`` fraction of the remaining positions with
  the largest interpolated change of P(target) are computed; the rest are interpolated
  (bilinear for the probabilities and feature totals, nearest for the top class).

Krypton tunes ``tau`` and the drill-down fraction to a target heat-map quality; here they are
parameters, and every approximate result carries its measured error: ``check`` positions
chosen at random are computed exactly (plain forward passes) and compared
(``OcclusionResult.approx_error``: the largest absolute difference of P(target)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import BadParameterError

__all__ = ["Approximation", "coarse_factor", "drill_down", "fill_in", "check_positions"]


@dataclass(frozen=True)
class Approximation:
    """Settings of an approximate sweep (``method="approximate"``).

    Attributes
    ----------
    tau : float
        Projective-field threshold, ``0 < tau <= 1``: the largest fraction of a map's side that
        an update patch may cover (1: no cap).
    drill_down : float
        Fraction, ``0 <= drill_down <= 1``, of the positions left after the coarse stage that
        are computed (those where the coarse map changes most); 1 computes all of them.
    check : int
        Positions computed exactly to measure the error (0: not measured).
    seed : int
        Seed of the random choice of the checked positions.
    """

    tau: float = 0.5
    drill_down: float = 0.25
    check: int = 16
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.tau, (int, float)) and 0 < self.tau <= 1):
            raise BadParameterError(f"tau must be in (0, 1], got {self.tau!r}")
        if not (isinstance(self.drill_down, (int, float)) and 0 <= self.drill_down <= 1):
            raise BadParameterError(f"drill_down must be in [0, 1], got {self.drill_down!r}")
        if isinstance(self.check, bool) or not isinstance(self.check, int) or self.check < 0:
            raise BadParameterError(f"check must be a count of positions, got {self.check!r}")


def coarse_factor(rows: int, cols: int, size: int, stride: int) -> int:
    """Stride multiplier of the coarse stage: the largest power of two ``k`` with
    ``k * stride <= size`` (no gap between coarse occluders) and at least 2 positions per
    axis."""
    k = 1
    while 2 * k * stride <= size and len(range(0, rows, 2 * k)) >= 2 \
            and len(range(0, cols, 2 * k)) >= 2:
        k *= 2
    return k


def _axis_weights(n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each fine index: the coarse indices below and above it and the weight of the
    upper one (clamped beyond the last coarse index)."""
    last = ((n - 1) // k) * k
    i = np.arange(n)
    lo = np.minimum((i // k) * k, last)
    hi = np.minimum(lo + k, last)
    w = np.where(hi > lo, (i - lo) / k, 0.0)
    return lo, hi, w


def interpolate(values: np.ndarray, k: int) -> np.ndarray:
    """Bilinear interpolation over the coarse lattice ``[::k, ::k]`` of ``values``
    (``[R, C, ...]``), to every position."""
    R, C = values.shape[:2]
    r0, r1, wr = _axis_weights(R, k)
    c0, c1, wc = _axis_weights(C, k)
    extra = (1,) * (values.ndim - 2)
    wr = wr.reshape(-1, 1, *extra)
    wc = wc.reshape(1, -1, *extra)
    v = values.astype(np.float64)
    top = v[r0][:, c0] * (1 - wc) + v[r0][:, c1] * wc
    bottom = v[r1][:, c0] * (1 - wc) + v[r1][:, c1] * wc
    return (top * (1 - wr) + bottom * wr).astype(values.dtype)


def nearest(values: np.ndarray, k: int) -> np.ndarray:
    """Each position takes the value of the nearest coarse-lattice position."""
    R, C = values.shape[:2]
    rows = np.minimum(np.rint(np.arange(R) / k).astype(int) * k, ((R - 1) // k) * k)
    cols = np.minimum(np.rint(np.arange(C) / k).astype(int) * k, ((C - 1) // k) * k)
    return values[rows][:, cols]


def drill_down(change: np.ndarray, done: np.ndarray, k: int, fraction: float) -> np.ndarray:
    """Flat indices of the positions to compute after the coarse stage.

    Parameters
    ----------
    change : numpy.ndarray
        ``[R, C]`` the coarse stage's change of P(target) (valid on the lattice ``[::k, ::k]``).
    done : numpy.ndarray
        ``[R, C]`` bool, positions computed already.
    k : int
        Coarse stride multiplier.
    fraction : float
        Share of the positions not yet done to compute: those where the interpolated change
        is largest (ties by position).
    """
    estimate = np.abs(interpolate(change, k)).reshape(-1)
    todo = np.flatnonzero(~done.reshape(-1))
    count = int(math.ceil(fraction * len(todo)))
    if count <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-estimate[todo], kind="stable")[:count]
    return np.sort(todo[order]).astype(np.int64)


def fill_in(arrays: dict[str, np.ndarray], done: np.ndarray, k: int) -> None:
    """Fill the positions not computed, in place: bilinear from the coarse lattice for
    ``prob``, ``top_prob`` and ``feats``, nearest for ``top_class``."""
    missing = ~done
    if not missing.any():
        return
    for name, values in arrays.items():
        if values is None:
            continue
        guess = nearest(values, k) if name == "top_class" else interpolate(values, k)
        values[missing] = guess[missing]


def check_positions(total: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct flat indices out of ``total``, at random (seeded), sorted."""
    count = min(int(count), total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=count, replace=False)).astype(np.int64)
