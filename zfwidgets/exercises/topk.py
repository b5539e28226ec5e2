"""Exercises of Fig. 2 and Fig. 5: the top-k hits of a map over images, the relative distance.

* :func:`check_top_k`: ``fn(maps, k) -> [(value, image, y, x), ...]``, the ``k`` strongest
  activations of one feature map over ``N`` images, at most one per image (its strongest
  position), strongest first, ties to the lower image index. Reference: zfwidgets' streaming
  miner (:class:`~zfwidgets.backend.mining.topk.Miner`, what :func:`zfwidgets.mine` runs), fed
  the maps themselves through an identity model.
* :func:`check_feature_distance`: ``fn(reference, transformed) -> float``, the Euclidean
  distance between two feature vectors divided by the reference's length (Fig. 5's measure,
  :meth:`zfwidgets.InvarianceResult.relative`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..backend.mining.topk import Miner
from .verdict import Case, Verdict, as_array, run_cases

__all__ = ["check_feature_distance", "check_top_k", "reference_feature_distance",
           "reference_top_k"]


# ============================================================================ top-k

def reference_top_k(maps: torch.Tensor, k: int) -> list[tuple[float, int, int, int]]:
    """The ``k`` strongest hits of one map over images, one per image (the reference).

    Parameters
    ----------
    maps : torch.Tensor
        ``[N, H, W]``: the map on each of ``N`` images.
    k : int

    Returns
    -------
    list of (value, image, y, x)
        Strongest first; ``min(k, N)`` hits.
    """
    miner = Miner(nn.Sequential(nn.Identity()), ["0"], k=k, per_image=1)
    miner.update(maps.detach().float()[:, None], torch.arange(maps.shape[0]))
    top = miner.result()["0"]
    return [hit for hit in top.hits(0) if hit[1] >= 0]


def _hits_array(hits) -> np.ndarray | None:
    try:
        rows = [tuple(float(v) for v in hit) for hit in hits]
    except (TypeError, ValueError):
        return None
    if any(len(r) != 4 for r in rows):
        return None
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _compare_hits(got, expected) -> str | None:
    arr, exp = _hits_array(got), _hits_array(expected)
    if arr is None:
        return (f"your function returned {type(got).__name__}; return a list of "
                "(value, image, y, x) tuples")
    if len(arr) != len(exp):
        return f"your function returned {len(arr)} hits, the reference {len(exp)}"
    for n, (a, e) in enumerate(zip(arr, exp)):
        if abs(a[0] - e[0]) > 1e-5 * max(1.0, abs(e[0])) or tuple(a[1:]) != tuple(e[1:]):
            return (f"hit {n + 1}: yours (value {a[0]:.4g}, image {int(a[1])}, y {int(a[2])}, "
                    f"x {int(a[3])}), expected (value {e[0]:.4g}, image {int(e[1])}, "
                    f"y {int(e[2])}, x {int(e[3])})")
    return None


def _topk_mistakes(maps, k):
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
    best, where = flat.max(1)
    per_image = [(float(best[i]), i, *divmod(int(where[i]), w)) for i in range(n)]
    everything = sorted(((float(v), i, *divmod(p, w)) for i in range(n)
                         for p, v in enumerate(flat[i].tolist())),
                        key=lambda t: (-t[0], t[1], t[2], t[3]))
    ranked = sorted(per_image, key=lambda t: (-t[0], t[1]))
    swapped = [(v, i, *divmod(y * w + x, h)) for v, i, y, x in ranked]
    latest = sorted(per_image, key=lambda t: (-t[0], -t[1]))
    return {
        "at most one hit per image (its strongest position), so the k hits come from k "
        "different images": everything[:k],
        "strongest first: sort by value, descending": sorted(per_image)[:k],
        "a flat position p is y = p // W, x = p % W (divide by the width)": swapped[:k],
        "among equal values the lower image index comes first": latest[:k],
        "a hit is (value, image, y, x): the row y before the column x":
            [(v, i, x, y) for v, i, y, x in ranked[:k]],
        "keep the k STRONGEST, not the first k images": per_image[:k],
    }


def _topk_cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    capped = torch.rand(12, 4, 4, generator=gen) * 8
    capped = capped.clamp(max=6.0)                     # like ReLU6: many maps reach 6.00
    dead = torch.zeros(5, 3, 3)
    dead[2, 1, 2] = 0.5
    specs = [("20 images of 5x5 maps, k = 9", torch.randn(20, 5, 5, generator=gen), 9),
             ("30 images of 4x7 maps (wider than high), k = 9",
              torch.randn(30, 4, 7, generator=gen), 9),
             ("12 images whose maps reach a cap of 6 (ties between images), k = 9", capped, 9),
             ("6 images, k = 9 (fewer images than hits asked for)",
              torch.randn(6, 3, 3, generator=gen), 9),
             ("5 images, almost all zero (a dead map), k = 3", dead, 3),
             ("50 images of 1x1 maps (a top layer), k = 4", torch.randn(50, 1, 1, generator=gen),
              4)]
    return [Case(name, (maps, k), reference_top_k(maps, k),
                 hint="for each image take its strongest position (max and argmax of the "
                      "flattened map), then sort the images by that value, strongest first",
                 mistakes=lambda m=maps, k=k: _topk_mistakes(m, k), compare=_compare_hits)
            for name, maps, k in specs]


def check_top_k(fn, *, strict: bool = False, show: bool = True, seed: int = 0) -> Verdict:
    """Check a student's top-k of a feature map over images (the paper's Fig. 2 selection).

    Parameters
    ----------
    fn : callable
        ``fn(maps, k)``: ``maps`` a ``[N, H, W]`` tensor, one feature map on each of ``N``
        images; returns a list of ``min(k, N)`` tuples ``(value, image, y, x)``: the strongest
        activations, at most one per image (that image's strongest position; among equal
        positions the first in reading order), strongest first, equal values in the order of
        the images.
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random maps.

    Returns
    -------
    Verdict
    """
    return run_cases("the top-k of a feature map", fn, _topk_cases(seed), strict=strict,
                     show=show, covered="square and non-square maps, ties at a cap, fewer "
                     "images than k, dead maps, 1x1 maps")


# ============================================================================ relative distance

def reference_feature_distance(reference: torch.Tensor, transformed: torch.Tensor) -> float:
    """Fig. 5's measure (the reference): ``|| transformed - reference || / || reference ||``
    over the flattened feature vectors (0 when the reference is all zero and so is the other).

    Parameters
    ----------
    reference : torch.Tensor
        The untransformed image's features (any shape).
    transformed : torch.Tensor
        The transformed image's features (same shape).

    Returns
    -------
    float
    """
    r, t = reference.double().flatten(), transformed.double().flatten()
    return float((t - r).norm() / max(float(r.norm()), 1e-12))


def _distance_mistakes(r, t):
    r, t = r.double().flatten(), t.double().flatten()
    return {
        "divide by the length of the ORIGINAL image's vector (the reference), not the "
        "transformed one": float((t - r).norm() / t.norm()),
        "the Euclidean distance is the square root of the sum of squares: "
        "(t - r).norm(), not its square": float(((t - r) ** 2).sum() / r.norm()),
        "divide by the reference's length, not by its squared length": float(
            (t - r).norm() / (r.norm() ** 2)),
        "relative means divided by the reference's length: || t - r || / || r ||":
            float((t - r).norm()),
        "sum over ALL values, not the mean: the norm of the difference": float(
            (t - r).pow(2).mean().sqrt() / r.norm()),
        "the distance of the vectors, not the difference of their lengths": float(
            abs(t.norm() - r.norm()) / r.norm()),
    }


def _compare_distance(got, expected) -> str | None:
    arr = as_array(got)
    if arr is None or arr.size != 1:
        return f"your function returned {got!r}; return one number"
    v = float(arr.reshape(()))
    if abs(v - expected) <= 1e-6 * max(1.0, abs(expected)):
        return None
    return f"yours {v:.6g}, expected {expected:.6g}"


def _distance_cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(32, 7, 7, generator=gen).clamp(min=0)
    specs = [("the same features twice (distance 0)", a, a.clone()),
             ("32 maps of 7x7 and a small change", a, a + 0.05 * torch.randn(32, 7, 7,
                                                                              generator=gen)),
             ("1280 maps of 7x7, unrelated", torch.rand(1280, 7, 7, generator=gen),
              torch.rand(1280, 7, 7, generator=gen)),
             ("a vector of 4096 (a fully connected layer)", torch.randn(4096, generator=gen),
              torch.randn(4096, generator=gen) * 2),
             ("features twice as large", a, 2 * a)]
    return [Case(name, (r, t), reference_feature_distance(r, t),
                 hint="flatten both, take the norm of their difference, divide by the norm of "
                      "the reference",
                 mistakes=lambda r=r, t=t: _distance_mistakes(r, t), compare=_compare_distance)
            for name, r, t in specs]


def check_feature_distance(fn, *, strict: bool = False, show: bool = True, seed: int = 0
                           ) -> Verdict:
    """Check a student's relative feature distance (the measure of the paper's Fig. 5).

    Parameters
    ----------
    fn : callable
        ``fn(reference, transformed)``: two feature tensors of the same shape (a layer's
        output for the original image and for a transformed one); returns
        ``|| transformed - reference || / || reference ||`` over all values, a number.
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random features.

    Returns
    -------
    Verdict
    """
    return run_cases("the relative feature distance", fn, _distance_cases(seed), strict=strict,
                     show=show, covered="equal, close, unrelated and scaled features, maps and "
                     "vectors")
