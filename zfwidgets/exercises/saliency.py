"""Exercise: gradient saliency (Simonyan et al. 2014), checked against zfwidgets' implementation.

The student writes ``fn(model, x, target)``: the gradient of the class logit
``model(x)[0, target]`` with respect to the input ``x`` (``[1, 3, H, W]``), and of it, per pixel,
the largest magnitude over the colour channels: an ``[H, W]`` map. The reference is
:class:`zfwidgets.backend.explain.methods.Saliency` (the one behind ``Session.saliency``), on
small random CNNs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backend.explain.methods import Saliency
from .verdict import Case, Verdict, as_array, compare_arrays, leftover_hook_note, run_cases

__all__ = ["check_saliency", "reference_saliency"]


def reference_saliency(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Gradient saliency of ``target`` by zfwidgets (the checker's reference).

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``[1, classes]``.
    x : torch.Tensor
        ``[1, 3, H, W]`` input.
    target : int
        The class whose logit is explained.

    Returns
    -------
    torch.Tensor
        ``[H, W]``: ``max over channels of |d logit[target] / d x|``, float64.
    """
    return Saliency().run(model, x, (int(target),)).map.double()


def _input_gradient(model, x, target, score="logit"):
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        out = model(xx)
        value = torch.softmax(out, 1)[0, target] if score == "prob" else \
            out[0].sum() if score == "all" else out[0, target]
        (g,) = torch.autograd.grad(value, xx)
    return g[0].double(), xx.detach()[0].double()


def _variants(model, x, target):
    """Known wrong saliency maps of one case."""
    g, xx = _input_gradient(model, x, target)
    pg, _ = _input_gradient(model, x, target, "prob")
    ag, _ = _input_gradient(model, x, target, "all")
    pick = g.abs().argmax(0, keepdim=True)
    out = {
        "take the MAGNITUDE: |gradient|, then the largest over the channels (a strongly "
        "negative gradient matters as much as a positive one)": g.max(0).values,
        "the signed value of the largest magnitude is the raw map; the saliency map is its "
        "absolute value": g.gather(0, pick)[0],
        "one value per pixel is the LARGEST magnitude over the three colour channels, not "
        "their mean": g.abs().mean(0),
        "the largest magnitude over the colour channels, not their sum": g.abs().sum(0),
        "the largest magnitude over the colour channels, not the length of the colour "
        "vector": g.norm(dim=0),
        "the gradient alone, not gradient x input": (g * xx).abs().max(0).values,
        "take the gradient of the class logit (the score before the softmax), not of its "
        "probability": pg.abs().max(0).values,
        "differentiate the ONE logit model(x)[0, target], not the sum of all logits":
            ag.abs().max(0).values,
        "return the raw map, not one scaled to a maximum of 1":
            g.abs().max(0).values / g.abs().max(),
    }
    return out


def _compare_saliency(got, expected) -> str | None:
    arr = as_array(got)
    if arr is None:
        return f"your function returned {type(got).__name__}, not an array of numbers"
    core = tuple(d for d in arr.shape if d != 1)
    if len(core) == 3 and core[0] == 3 and core[1:] == tuple(expected.shape):
        return (f"your answer has shape {tuple(arr.shape)}, one map per colour channel; "
                f"take the largest magnitude over the channels: {tuple(expected.shape)}")
    return compare_arrays(got, expected)


def _net(seed: int, pool: bool) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mods = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()]
        mods += [nn.MaxPool2d(2)] if pool else [nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                                 nn.ReLU()]
        mods += [nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                 nn.Flatten(), nn.Linear(12, 10)]
        return nn.Sequential(*mods).eval()


def _cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    specs = [("32x32 input, a net with max-pooling", 32, 32, True, 3),
             ("32x32 input, a net with a strided convolution instead", 32, 32, False, 7),
             ("24x40 input (wider than high)", 24, 40, True, 0),
             ("an input of large values (the magnitudes differ between channels)", 28, 28,
              False, 5)]
    cases = []
    for n, (name, h, w, pool, target) in enumerate(specs):
        model = _net(seed + n, pool)
        x = torch.randn(1, 3, h, w, generator=gen) * (4.0 if "large" in name else 1.0)
        cases.append(Case(name, (model, x, target), reference_saliency(model, x, target),
                          hint="x = x.clone().requires_grad_(True); take the gradient of "
                               "model(x)[0, target] with respect to x, then "
                               "grad.abs().amax(dim=channel) per pixel",
                          mistakes=lambda a=(model, x, target): _variants(*a),
                          compare=_compare_saliency))
    return cases


def check_saliency(fn, *, strict: bool = False, show: bool = True, seed: int = 0) -> Verdict:
    """Check a student's gradient saliency map against zfwidgets' (Simonyan et al. 2014).

    Parameters
    ----------
    fn : callable
        ``fn(model, x, target)``: ``model`` a classifier in eval mode returning logits
        ``[1, classes]``, ``x`` its ``[1, 3, H, W]`` input, ``target`` a class id; returns the
        ``[H, W]`` map ``max over channels of |d logit[target] / d x|`` (not rescaled).
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random models and inputs.

    Returns
    -------
    Verdict
        A note is added when the function leaves a hook on the model.
    """
    return run_cases("gradient saliency", fn, _cases(seed), strict=strict, show=show,
                     covered="max-pooling and strided nets, a non-square input, inputs whose "
                     "channels' gradients differ in sign and size", after=leftover_hook_note)
