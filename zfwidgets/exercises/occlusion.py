"""Exercise: the occlusion loop of the paper's Fig. 7, checked against zfwidgets' sweep.

The student writes ``fn(model, x, size, stride, fill, target) -> [R, C]``: for every corner
``(top, left)`` of the occluder grid (``top`` in ``0, stride, 2 * stride, ...`` up to
``H - size`` inclusive, likewise ``left``), a copy of ``x`` with the ``size`` x ``size`` square
at that corner set to ``fill``, run through the model; entry ``[i, j]`` is the softmax
probability of class ``target`` with the occluder at row corner ``i`` and column corner ``j``.
The reference is :func:`zfwidgets.occlusion_maps` (the incremental engine, exact), on small
random CNNs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..backend.occlusion import occlusion_maps
from .verdict import Case, Verdict, run_cases

__all__ = ["check_occlusion_loop", "reference_occlusion", "small_cnn"]


def small_cnn(seed: int = 0, classes: int = 10, width: int = 8) -> nn.Module:
    """A small random CNN (conv, ReLU, max-pool, conv, ReLU, average, linear) in eval mode,
    the same for the same seed; the checkers' test model.

    Parameters
    ----------
    seed : int
        Seed of the weights.
    classes : int
        Number of outputs (logits).
    width : int
        Channels of the first convolution (the second has twice as many).

    Returns
    -------
    nn.Module
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))
        with torch.no_grad():                      # livelier logits than the default init
            model[-1].weight.mul_(10.0)
    return model.eval()


def reference_occlusion(model: nn.Module, x: torch.Tensor, size: int, stride: int,
                        fill: float, target: int) -> np.ndarray:
    """The occlusion map of ``target``'s probability, by zfwidgets (the checker's reference).

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits.
    x : torch.Tensor
        ``[1, 3, H, W]`` input.
    size, stride : int
        Occluder side and step.
    fill : float
        The occluder's value (in the model's input space).
    target : int
        The class whose probability is mapped.

    Returns
    -------
    numpy.ndarray
        ``[R, C]`` float64.
    """
    r = occlusion_maps(model, x, size, stride, target=target, fill=float(fill))
    return r.prob.astype(np.float64)


def _loop(model, x, size, stride, fill, target, *, rows=None, cols=None, value=None,
          transpose=False, logits=False, clamp_last=False, off_by_one=False):
    h, w = x.shape[-2:]

    def corners(side):
        if clamp_last:
            n = -(-(side - size) // stride) + 1
            return sorted({min(i * stride, side - size) for i in range(n)})
        end = side - size + (0 if off_by_one else 1)
        return list(range(0, end, stride))

    rows = corners(h) if rows is None else rows
    cols = corners(w) if cols is None else cols
    out = np.zeros((len(rows), len(cols)))
    with torch.no_grad():
        for i, top in enumerate(rows):
            for j, left in enumerate(cols):
                y = x.clone()
                y[..., top:top + size, left:left + size] = fill if value is None else value
                z = model(y)[0]
                out[i, j] = float(z[target] if logits else torch.softmax(z, 0)[target])
    return out.T if transpose else out


def _occlusion_mistakes(model, x, size, stride, fill, target):
    args = (model, x, size, stride, fill, target)
    h, w = x.shape[-2:]
    return {
        "row i of the map is the occluder's vertical position (top = i * stride), column j "
        "its horizontal one: loop over top in the outer loop": _loop(*args, transpose=True),
        "fill the square with the `fill` value given, not with 0":
            None if fill == 0 else _loop(*args, value=0.0),
        "the last corner is H - size itself: range(0, H - size + 1, stride)":
            _loop(*args, off_by_one=True),
        "corners are 0, stride, 2 * stride ... up to H - size; do not move the last one to "
        "the border": _loop(*args, clamp_last=True),
        "map the probability (softmax of the logits), not the logit":
            _loop(*args, logits=True),
        "an occluder of side `size` covers size pixels: a slice top:top + size (not size + 1)":
            _loop(model, x, size + 1, stride, fill, target,
                  rows=list(range(0, h - size + 1, stride)),
                  cols=list(range(0, w - size + 1, stride))),
    }


def _occlusion_cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    specs = [("32x32 input, 8 px square every 8 px, fill 0", (32, 32), 8, 8, 0.0, 0),
             ("30x30 input, 8 px square every 4 px: 30 - 8 = 22 is not a multiple of 4, the "
              "last corner is 20", (30, 30), 8, 4, 0.0, 3),
             ("24x36 input (wider than high), 6 px square every 5 px, fill 0.5", (24, 36), 6, 5,
              0.5, 7),
             ("28x28 input, 12 px square every 4 px, fill -1", (28, 28), 12, 4, -1.0, 1),
             ("16x20 input, 4 px square with stride 6 (gaps between positions), fill 2",
              (16, 20), 4, 6, 2.0, 5),
             ("12x12 input, 1 px occluder at every pixel", (12, 12), 1, 1, 0.0, 2)]
    cases = []
    for n, (name, (h, w), size, stride, fill, target) in enumerate(specs):
        model = small_cnn(seed + n)
        x = torch.randn(1, 3, h, w, generator=gen)
        expected = reference_occlusion(model, x, size, stride, fill, target)
        a = (model, x, size, stride, fill, target)
        cases.append(Case(name, a, expected,
                          hint="for each corner: clone x, set the square to fill, run the "
                               "model, take softmax(logits)[target]",
                          mistakes=lambda a=a: _occlusion_mistakes(*a)))
    return cases


def check_occlusion_loop(fn, *, strict: bool = False, show: bool = True, seed: int = 0
                         ) -> Verdict:
    """Check a student's occlusion loop (the paper's Fig. 7 d) against zfwidgets' sweep.

    Parameters
    ----------
    fn : callable
        ``fn(model, x, size, stride, fill, target)``: ``model`` a classifier in eval mode
        returning logits ``[1, classes]``, ``x`` its ``[1, 3, H, W]`` input, ``size`` the
        occluder's side, ``stride`` its step, ``fill`` the occluder's value (a float, in the
        model's input space), ``target`` a class id; returns the ``[R, C]`` map of
        ``softmax(model(occluded x))[target]`` with the occluder's top-left corner at
        ``(i * stride, j * stride)``, for every corner that keeps the square inside the
        image (``R = (H - size) // stride + 1``).
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random models and inputs.

    Returns
    -------
    Verdict
    """
    return run_cases("the occlusion loop", fn, _occlusion_cases(seed), strict=strict,
                     show=show, covered="square and non-square inputs, sizes 1-12, strides "
                     "that do and do not divide H - size, gaps, fills 0, 0.5, -1, 2")
