"""Exercise: how much of a filter's energy a strided convolution aliases (the paper's Fig. 6).

The student writes ``fn(weight, stride, size)``: for each filter of ``weight``
(``[F, C, kh, kw]``), zero-pad it to ``size x size``, take its 2-d DFT, sum ``|DFT|^2`` over the
input channels, and return the fraction of that energy at frequencies above ``0.5 / stride``
cycles per pixel on either axis (``numpy.fft.fftfreq(size)`` gives each bin's frequency): an
``[F]`` array. The reference is :func:`zfwidgets.backend.experiments.diagnosis.aliased_energy`,
the number behind ``zf.diagnose_filters(...).aliased``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backend.experiments.diagnosis import aliased_energy
from .verdict import Case, Verdict, as_array, compare_arrays, run_cases

__all__ = ["check_aliased_energy"]


def _strides(stride) -> tuple[int, int]:
    return (stride, stride) if isinstance(stride, int) else tuple(int(s) for s in stride)


def _fraction(energy, fy, fx, keep_outside):
    total = energy.reshape(energy.shape[0], -1).sum(1)
    mask = keep_outside(np.abs(fy)[:, None], np.abs(fx)[None, :])
    return energy[:, mask].sum(1) / np.where(total > 0, total, 1.0)


def _variants(weight, stride, size):
    """Known wrong answers of one case."""
    sy, sx = _strides(stride)
    w = weight.detach().double()
    spec = torch.fft.fft2(w, s=(size, size))
    power = (spec.abs() ** 2).sum(1).numpy()
    amplitude = spec.abs().sum(1).numpy()
    f = np.fft.fftfreq(size)
    per_channel = (spec.abs() ** 2).numpy()              # [F, C, size, size]
    out = {
        "the output grid holds frequencies up to 0.5 / stride (its Nyquist limit), not "
        "0.5 * stride": _fraction(power, f, f, lambda ay, ax: (ay > 0.5 * sy) | (ax > 0.5 * sx)),
        "energy above the limit on EITHER axis aliases (|fy| > limit OR |fx| > limit), not "
        "only where both are": _fraction(power, f, f,
                                         lambda ay, ax: (ay > 0.5 / sy) & (ax > 0.5 / sx)),
        "the limit is per axis (the grid is square), not on the radius sqrt(fy^2 + fx^2)":
            _fraction(power, f, f, lambda ay, ax: np.hypot(ay, ax) > 0.5 / min(sy, sx)),
        "energy is the SQUARED magnitude |DFT|^2, not |DFT|":
            _fraction(amplitude, f, f, lambda ay, ax: (ay > 0.5 / sy) | (ax > 0.5 / sx)),
        "sum the energy over the input channels first, then take the fraction (not the mean "
        "of each channel's fraction)": np.stack([
            _fraction(per_channel[:, c], f, f, lambda ay, ax: (ay > 0.5 / sy) | (ax > 0.5 / sx))
            for c in range(w.shape[1])], 1).mean(1),
        "a frequency exactly at the limit is still represented: use >, not >=":
            _fraction(power, f, f, lambda ay, ax: (ay >= 0.5 / sy) | (ax >= 0.5 / sx)),
    }
    if w.shape[2] != size or w.shape[3] != size:
        small = torch.fft.fft2(w)
        fk, fl = np.fft.fftfreq(w.shape[2]), np.fft.fftfreq(w.shape[3])
        out["zero-pad the filter to size x size before the DFT (torch.fft.fft2(w, s=(size, "
            "size))): a kernel-sized DFT has too few frequency bins"] = _fraction(
            (small.abs() ** 2).sum(1).numpy(), fk, fl,
            lambda ay, ax: (ay > 0.5 / sy) | (ax > 0.5 / sx))
    if sy != sx:
        out["the stride is (rows, columns): the rows' limit is 0.5 / stride[0], the columns' "
            "0.5 / stride[1]"] = _fraction(power, f, f,
                                           lambda ay, ax: (ay > 0.5 / sx) | (ax > 0.5 / sy))
    return out


def _compare(got, expected) -> str | None:
    arr = as_array(got)
    if arr is None:
        return f"your function returned {type(got).__name__}, not an array of numbers"
    if arr.size != expected.size:
        return (f"your answer has {arr.size} values; return one fraction per filter "
                f"({expected.size})")
    return compare_arrays(arr.reshape(expected.shape), expected)


def _cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    stripes = torch.zeros(4, 3, 7, 7, dtype=torch.float64)
    cols = torch.arange(7, dtype=torch.float64)
    stripes[0] = 1.0                                           # flat: nothing aliases
    stripes[1] = torch.cos(torch.pi * cols)                    # 0.5 c/px across: all aliases
    stripes[2] = torch.cos(2 * torch.pi * 0.18 * cols)         # below 0.25 c/px
    stripes[3] = torch.cos(2 * torch.pi * 0.18 * cols)[:, None].expand(7, 7)  # rows vary
    specs = [("96 random 11x11 filters at stride 4 (AlexNet's conv1)",
              torch.randn(96, 3, 11, 11, generator=gen), 4, 64),
             ("random 7x7 filters at stride 2 (ZF-Net's conv1)",
              torch.randn(16, 3, 7, 7, generator=gen), 2, 64),
             ("flat, checkerboard-column and 0.18 cycles/px stripe filters at stride 2",
              stripes, 2, 64),
             ("smooth 5x5 filters (blurred noise) at stride 2, padded to 32",
              torch.nn.functional.avg_pool2d(torch.randn(8, 3, 9, 9, generator=gen), 5, 1),
              2, 32),
             ("3x3 filters, stride (1, 2): only the columns are subsampled",
              torch.randn(8, 2, 3, 3, generator=gen), (1, 2), 16)]
    return [Case(name, (w, stride, size), aliased_energy(w, stride, size),
                 hint="energy = |fft2(w, s=(size, size))|^2 summed over the input channels; "
                      "aliased where |fy| > 0.5 / stride_rows or |fx| > 0.5 / stride_cols; "
                      "divide by each filter's total",
                 mistakes=lambda a=(w, stride, size): _variants(*a), compare=_compare)
            for name, w, stride, size in specs]


def check_aliased_energy(fn, *, strict: bool = False, show: bool = True, seed: int = 0
                         ) -> Verdict:
    """Check a student's aliased-energy fraction of strided filters (the paper's Fig. 6).

    Parameters
    ----------
    fn : callable
        ``fn(weight, stride, size)``: ``weight`` a ``[F, C, kh, kw]`` tensor of convolution
        filters, ``stride`` an int or ``(rows, columns)``, ``size`` the zero-padded DFT size;
        returns ``[F]``: each filter's energy (``|DFT|^2`` summed over the input channels) at
        frequencies above ``0.5 / stride`` cycles per pixel on either axis, over its total.
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
    return run_cases("the aliased energy of strided filters", fn, _cases(seed), strict=strict,
                     show=show, covered="AlexNet- and ZF-Net-like first layers, flat and striped "
                     "filters with known answers, smooth filters, a stride that differs per axis")
