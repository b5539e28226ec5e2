"""Exercise: the paper's feature scale clipping (Sec. 3), checked against zfwidgets' own.

The student writes ``fn(weight, radius)``: given a ``[F, C, kh, kw]`` convolution weight, return
a new weight in which every filter (one output channel) whose RMS, ``sqrt(mean(w ** 2))`` over
its input channels and kernel positions, exceeds ``radius`` is scaled down to an RMS of exactly
``radius``; the other filters are left as they are. The reference is
:func:`zfwidgets.models.feature_scale_clipping` (what ``train(..., clip=0.1)`` calls after every
step), applied to a copy.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import feature_scale_clipping
from .verdict import Case, Verdict, as_array, compare_arrays, run_cases

__all__ = ["check_feature_scale_clipping"]


def reference_clipping(weight: torch.Tensor, radius: float) -> torch.Tensor:
    """``weight`` after feature scale clipping at ``radius`` (a new tensor, float64)."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
        feature_scale_clipping(conv, radius)
    return conv.weight.detach().double()


def _variants(weight, radius):
    """Known wrong answers of one case."""
    w = weight.double()
    flat = w.reshape(w.shape[0], -1)
    rms = flat.pow(2).mean(1).sqrt()
    norm = flat.norm(dim=1)
    std = flat.std(1)

    def scaled(value, over):
        scale = torch.where(over, radius / value, torch.ones_like(value))
        return w * scale.view(-1, 1, 1, 1)

    whole = float(flat.pow(2).mean().sqrt())
    return {
        "the RMS is the root of the MEAN of the squares (over the C x kh x kw weights of a "
        "filter), not the vector's length (the root of their sum)": scaled(norm, norm > radius),
        "the RMS is sqrt(mean(w ** 2)), not the standard deviation (which subtracts the mean)":
            scaled(std, std > radius),
        "only filters whose RMS EXCEEDS the radius are rescaled; the others stay as they are":
            scaled(rms, torch.ones_like(rms, dtype=torch.bool)),
        "scale a filter DOWN to the radius (multiply by radius / rms), do not cut its weights "
        "at +-radius": torch.where((rms > radius).view(-1, 1, 1, 1), w.clamp(-radius, radius), w),
        "each filter (one output channel, w[f]) has its own RMS, not the whole layer":
            w * (radius / whole if whole > radius else 1.0),
        "a filter is one OUTPUT channel, w[f, :, :, :] (the first axis), not an input channel":
            _per_input(w, radius),
    }


def _per_input(w, radius):
    rms = w.pow(2).mean(dim=(0, 2, 3)).sqrt()
    scale = torch.where(rms > radius, radius / rms, torch.ones_like(rms))
    return w * scale.view(1, -1, 1, 1)


def _compare(got, expected) -> str | None:
    arr = as_array(got)
    if arr is None:
        return f"your function returned {type(got).__name__}, not an array of numbers"
    if tuple(arr.shape) != tuple(expected.shape):
        return (f"your answer has shape {tuple(arr.shape)}; return the whole weight, "
                f"{tuple(expected.shape)}")
    return compare_arrays(arr, expected, rtol=1e-6)


def _cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.02, 0.4, 12).view(-1, 1, 1, 1)
    mixed = torch.randn(12, 3, 7, 7, generator=gen) * scales
    offset = torch.randn(6, 3, 5, 5, generator=gen) * 0.05 + torch.linspace(-0.3, 0.3, 6).view(
        -1, 1, 1, 1)
    specs = [("12 first-layer 7x7 filters, RMS 0.02 to 0.4, radius 0.1", mixed, 0.1),
             ("filters with a large mean (RMS and standard deviation differ), radius 0.1",
              offset, 0.1),
             ("every filter under the radius: nothing changes", mixed * 0.2, 0.1),
             ("16 filters over 8 input channels, 3x3, radius 0.05",
              torch.randn(16, 8, 3, 3, generator=gen) * 0.08, 0.05),
             ("one filter far over (RMS 2), radius 1", torch.cat([
                 torch.randn(1, 3, 5, 5, generator=gen) * 2,
                 torch.randn(3, 3, 5, 5, generator=gen) * 0.5]), 1.0)]
    return [Case(name, (w, radius), reference_clipping(w, radius),
                 hint="rms = sqrt(mean of w[f] ** 2) per output channel f; where rms > radius, "
                      "multiply w[f] by radius / rms",
                 mistakes=lambda a=(w, radius): _variants(*a), compare=_compare)
            for name, w, radius in specs]


def check_feature_scale_clipping(fn, *, strict: bool = False, show: bool = True, seed: int = 0
                                 ) -> Verdict:
    """Check a student's feature scale clipping (Zeiler & Fergus 2014, Sec. 3).

    Parameters
    ----------
    fn : callable
        ``fn(weight, radius)``: ``weight`` a ``[F, C, kh, kw]`` tensor, ``radius`` a positive
        number; returns the weight (same shape) with every filter ``weight[f]`` whose RMS
        exceeds ``radius`` multiplied by ``radius / rms``, the others unchanged. Changing
        ``weight`` in place and returning it is fine.
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random filters.

    Returns
    -------
    Verdict
    """
    return run_cases("feature scale clipping", fn, _cases(seed), strict=strict, show=show,
                     covered="filters over and under the radius, filters with a large mean, "
                     "several input channels, one filter far over")
