"""Exercise: Grad-CAM (Selvaraju et al. 2017), checked against zfwidgets' implementation.

The student writes ``fn(model, x, layer, target)``: run the model on ``x`` with a forward hook
on the module ``layer`` that keeps its output ``A`` (``[1, K, h, w]``), take the gradient of the
class logit ``model(x)[0, target]`` with respect to ``A``, average it over the positions to get
one weight per map, and return ``ReLU(sum_k w_k A_k)``: either at the layer's resolution
``[h, w]``, or upsampled bilinearly (``align_corners=False``) to the input's ``[H, W]``. The
reference is :class:`zfwidgets.backend.explain.methods.GradCAM` (the one behind
``Session.gradcam``), on small random CNNs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backend.explain.methods import GradCAM, class_backward, upsample
from .verdict import Case, Verdict, as_array, compare_arrays, leftover_hook_note, run_cases

__all__ = ["check_gradcam", "reference_gradcam"]


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("layer is not a module of model")


def reference_gradcam(model: nn.Module, x: torch.Tensor, layer: nn.Module, target: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of ``target`` at ``layer`` by zfwidgets (the checker's reference).

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``[1, classes]``.
    x : torch.Tensor
        ``[1, 3, H, W]`` input.
    layer : nn.Module
        A module of ``model`` whose output is a ``[1, K, h, w]`` map.
    target : int
        The class whose logit is explained.

    Returns
    -------
    (low, full) : tuple of torch.Tensor
        The map at the layer's resolution ``[h, w]`` and upsampled to ``[H, W]``.
    """
    out = GradCAM().run(model, x, (int(target),), _layer_name(model, layer))
    return out.low.double(), out.map.double()


def _compare_cam(got, expected) -> str | None:
    low, full = expected
    arr = as_array(got)
    if arr is None:
        return f"your function returned {type(got).__name__}, not an array of numbers"
    core = tuple(d for d in arr.shape if d != 1)
    pick = low if low is not None and core == tuple(low.shape) else full
    if pick is None:
        return "(this mistake gives no map of that shape)"
    if core not in (tuple(low.shape) if low is not None else (), tuple(full.shape)):
        shapes = [tuple(t.shape) for t in (low, full) if t is not None]
        return (f"your answer has shape {tuple(arr.shape)}; return the map at the layer's "
                f"resolution {shapes[0]} or upsampled to the input's {shapes[-1]}")
    return compare_arrays(got, pick)


def _variants(model, x, layer, target):
    """Known wrong Grad-CAMs: (low, full) pairs."""
    name = _layer_name(model, layer)
    back = class_backward(model, x, (int(target),), "gradient", name)
    acts, grads = back.acts.double(), back.act_grad.double()
    size = x.shape[-2:]

    def pair(low):
        return low, upsample(low, size).double()

    weighted = (grads.mean(dim=(1, 2))[:, None, None] * acts).sum(0)
    relu = weighted.clamp(min=0)
    with torch.enable_grad():
        xx = x.detach().clone()
        seen = {}
        handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
        try:
            prob = torch.softmax(model(xx), 1)[0, int(target)]
        finally:
            handle.remove()
        (pg,) = torch.autograd.grad(prob, seen["a"])
    pweighted = (pg[0].double().mean(dim=(1, 2))[:, None, None] * acts).sum(0).clamp(min=0)
    corners = F.interpolate(relu[None, None], size=tuple(size), mode="bilinear",
                            align_corners=True)[0, 0]
    out = {
        "Grad-CAM keeps only what speaks for the class: apply a ReLU to the weighted sum":
            pair(weighted),
        "average the gradient over the positions to get ONE weight per map "
        "(grad.mean(dim=(2, 3))), then weight the whole map with it":
            pair((grads * acts).sum(0).clamp(min=0)),
        "the weights are the gradient's MEAN over positions, not its sum":
            pair(relu * acts.shape[1] * acts.shape[2]),
        "return the raw map, not one scaled to a maximum of 1":
            pair(relu / relu.max()) if float(relu.max()) > 0 else None,
        "take the gradient of the class logit (the score before the softmax), not of its "
        "probability": pair(pweighted),
        "ReLU at the layer's resolution first, then upsample (or return the low-resolution "
        "map)": (None, upsample(weighted, size).double().clamp(min=0)),
        "upsample with F.interpolate(..., mode='bilinear', align_corners=False)":
            (None, corners),
    }
    for other, module in model.named_modules():
        if other and module is not layer and other != name:
            try:
                ref = GradCAM().run(model, x, (int(target),), other)
            except Exception:  # a layer without a spatial map
                continue
            out[f"this is Grad-CAM at module {other!r}: hook the `layer` you are given "
                f"(module {name!r})"] = (ref.low.double(), ref.map.double())
    return {hint: v for hint, v in out.items() if v is not None}


def _cam_net(seed: int, deep: bool = False) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mods = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 12, 3, padding=1), nn.ReLU()]
        if deep:
            mods += [nn.MaxPool2d(2), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU()]
        width = 16 if deep else 12
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
        model = nn.Sequential(*mods).eval()
        with torch.no_grad():                      # maps of a readable size
            model[-1].weight.mul_(10.0)
        return model


def _cam_cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    specs = [("32x32 input, the last ReLU's maps (8x8)", 32, 32, False, 4, 3),
             ("32x32 input, the last convolution's maps (before their ReLU: some are negative)",
              32, 32, False, 3, 5),
             ("24x40 input (wider than high), the last ReLU's maps", 24, 40, False, 4, 0),
             ("a deeper net on 48x48, a middle layer (12 maps of 24x24)", 48, 48, True, 4, 8),
             ("a deeper net on 48x48, the last layer (16 maps of 12x12)", 48, 48, True, 7, 2)]
    cases = []
    for n, (name, h, w, deep, index, target) in enumerate(specs):
        model = _cam_net(seed + n, deep)
        x = torch.randn(1, 3, h, w, generator=gen)
        layer = model[index]
        expected = reference_gradcam(model, x, layer, target)
        cases.append(Case(name, (model, x, layer, target), expected,
                          hint="hook `layer` to keep its output A, take the gradient of "
                               "model(x)[0, target] with respect to A, weights = its mean over "
                               "positions, then ReLU(sum_k w_k A_k)",
                          mistakes=lambda a=(model, x, layer, target): _variants(*a),
                          compare=_compare_cam))
    return cases


def check_gradcam(fn, *, strict: bool = False, show: bool = True, seed: int = 0) -> Verdict:
    """Check a student's Grad-CAM against zfwidgets' (Selvaraju et al. 2017).

    Parameters
    ----------
    fn : callable
        ``fn(model, x, layer, target)``: ``model`` a classifier in eval mode returning logits
        ``[1, classes]``, ``x`` its ``[1, 3, H, W]`` input, ``layer`` one of the model's
        modules (an ``nn.Module`` whose output is ``[1, K, h, w]``), ``target`` a class id;
        returns ``ReLU(sum_k w_k A_k)`` where ``A`` is ``layer``'s output and ``w_k`` the
        mean over positions of ``d logit[target] / d A_k``: the raw map (not rescaled),
        either ``[h, w]`` or upsampled bilinearly (``align_corners=False``) to ``[H, W]``.
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
    return run_cases("Grad-CAM", fn, _cam_cases(seed), strict=strict, show=show,
                     covered="ReLU and convolution layers, maps with negative parts, a "
                     "non-square input, a middle and a last layer",
                     after=leftover_hook_note)
