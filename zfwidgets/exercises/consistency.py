"""Exercise: the consistency score of the paper's Table 1 (the correspondence analysis, Fig. 8).

The student writes ``fn(changes)``: ``changes`` is ``[N, D]``, one feature-change vector
``eps_i = x_i - x~_i`` per image (the features of the image minus those of the image with one
part hidden). Return ``Delta``, the mean over the pairs ``i < j`` of the fraction of the ``D``
entries whose *signs* differ (``torch.sign``: ``-1``, ``0``, ``+1``; a feature that did not
change has sign 0), a number in ``[0, 1]``. The reference is
:func:`zfwidgets.backend.experiments.correspondence.sign_consistency` (the score
``zf.correspondence`` reports is its mean).
"""

from __future__ import annotations

import itertools

import torch

from ..backend.experiments.correspondence import sign_consistency
from .verdict import Case, Verdict, as_array, run_cases

__all__ = ["check_consistency"]


def reference_consistency(changes: torch.Tensor) -> float:
    """``Delta``: the mean normalized Hamming distance between the signs of every pair of rows."""
    return float(sign_consistency(changes).mean())


def _variants(changes):
    """Known wrong answers of one case."""
    c = changes.double()
    n, d = c.shape
    s = torch.sign(c)
    pairs = list(itertools.combinations(range(n), 2))
    ordered = list(itertools.product(range(n), repeat=2))

    def mean_over(sig, which, norm=d):
        return float(sum(float((sig[i] != sig[j]).sum()) / norm for i, j in which) / len(which))

    positive = (c > 0).double()
    return {
        "compare the SIGNS (torch.sign: -1, 0, +1): a feature that did not change has sign 0, "
        "which is not the sign of a feature that fell": mean_over(positive, pairs),
        "compare the signs, not the values (two changes of the same sign agree, whatever their "
        "size)": mean_over(c, pairs),
        "the pairs are i < j: each pair once, and never an image with itself":
            mean_over(s, ordered),
        "divide each pair's count of differing signs by D, the length of the vector":
            mean_over(s, pairs, 1),
        "Delta is the MEAN over the pairs (the paper's sum only scales it)":
            mean_over(s, pairs) * len(pairs),
        "compare every pair of images, not only neighbours (i, i + 1)":
            mean_over(s, [(i, i + 1) for i in range(n - 1)]),
    }


def _compare(got, expected) -> str | None:
    arr = as_array(got)
    if arr is None or arr.size != 1:
        return f"your function returned {got!r}; return one number"
    value = float(arr.reshape(()))
    if abs(value - expected) <= 1e-9 + 1e-7 * abs(expected):
        return None
    return f"yours {value:.6g}, expected {expected:.6g}"


def _cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 300, generator=gen)
    relu = torch.relu(torch.randn(5, 200, generator=gen)) - torch.relu(
        torch.randn(5, 200, generator=gen))
    relu[:, :80] = 0                                  # features a part's square never reached
    specs = [("five images whose changes mostly agree (a consistent part)",
              base + 0.6 * torch.randn(5, 300, generator=gen)),
             ("five unrelated changes (about half the signs differ)",
              torch.randn(5, 300, generator=gen)),
             ("rectified features: many changes are exactly 0", relu),
             ("two images", torch.randn(2, 50, generator=gen)),
             ("the same change in every image (Delta = 0)", base.expand(4, 300).clone())]
    return [Case(name, (c,), reference_consistency(c),
                 hint="s = torch.sign(changes); for every pair i < j the fraction of entries "
                      "where s[i] != s[j]; then the mean over the pairs",
                 mistakes=lambda c=c: _variants(c), compare=_compare)
            for name, c in specs]


def check_consistency(fn, *, strict: bool = False, show: bool = True, seed: int = 0) -> Verdict:
    """Check a student's consistency score ``Delta`` (the paper's Table 1).

    Parameters
    ----------
    fn : callable
        ``fn(changes)``: ``changes`` a ``[N, D]`` tensor, one feature-change vector per image;
        returns the mean over pairs ``i < j`` of the fraction of the ``D`` entries where
        ``torch.sign(changes[i]) != torch.sign(changes[j])``, a number.
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random changes.

    Returns
    -------
    Verdict
    """
    return run_cases("the consistency score Delta", fn, _cases(seed), strict=strict, show=show,
                     covered="consistent, unrelated and identical changes, rectified features "
                     "with zero changes, two images")
