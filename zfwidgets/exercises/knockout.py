"""Exercise: knock feature maps out (the causal test behind the paper's Table 3 and Fig. 7).

The student writes ``fn(model, layer, channels, x)``: run ``model`` on ``x`` with the maps
``channels`` of the module ``layer``'s output set to zero (a forward hook that returns the
changed output), and return the logits ``[1, classes]``; the hook is removed afterwards, so
the model is left as it was. The reference is :class:`zfwidgets.backend.explain.ablation.
AblatedModel` (the model of ``Session.ablated``), on small random CNNs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backend.explain.ablation import AblatedModel
from .verdict import Case, Verdict, compare_arrays, leftover_hook_note, run_cases

__all__ = ["check_knockout"]


def _name(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is layer)


def reference_knockout(model: nn.Module, layer: nn.Module, channels, x: torch.Tensor
                       ) -> torch.Tensor:
    """The logits of ``model`` on ``x`` with ``channels`` of ``layer``'s output zeroed."""
    with torch.no_grad():
        return AblatedModel(model, {_name(model, layer): list(channels)})(x).double()


def _hooked(model, layer, x, edit, pre=False):
    register = layer.register_forward_pre_hook if pre else layer.register_forward_hook
    handle = register((lambda m, i: (edit(i[0]),)) if pre else (lambda m, i, o: edit(o)))
    try:
        with torch.no_grad():
            return model(x).double()
    finally:
        handle.remove()


def _variants(model, layer, channels, x):
    """Known wrong answers of one case."""
    chans = list(channels)

    def zero(axis, which):
        def edit(t):
            t = t.clone()
            index = [slice(None)] * t.dim()
            index[axis] = which
            t[tuple(index)] = 0
            return t
        return edit

    shapes = _shapes(model, layer, x)
    keep = [c for c in range(shapes["o"][1]) if c not in chans]
    out = {
        "zero the layer's OUTPUT (register_forward_hook), not its input":
            _hooked(model, layer, x, zero(1, chans), pre=True)
            if shapes["i"][1] > max(chans) else None,
        "zero the channels you are given and keep the others, not the other way round":
            _hooked(model, layer, x, zero(1, keep)),
        "the channels are axis 1 of the [N, C, H, W] output (output[:, channels]), not rows":
            _hooked(model, layer, x, zero(2, [c for c in chans if c < shapes["o"][2]])),
        "knock out every channel in the list, not only the first": _hooked(
            model, layer, x, zero(1, chans[:1])) if len(chans) > 1 else None,
        "return the logits (the model's output), not probabilities":
            torch.softmax(reference_knockout(model, layer, chans, x), 1),
    }
    if isinstance(layer, nn.Conv2d) and layer.bias is not None:
        saved = layer.weight.detach().clone()
        try:
            with torch.no_grad():
                layer.weight[chans] = 0
                out["a map is zero when the layer's OUTPUT is: zeroing a filter's weights "
                    "leaves its bias"] = model(x).double()
        finally:
            with torch.no_grad():
                layer.weight.copy_(saved)
    return {hint: v for hint, v in out.items() if v is not None}


def _shapes(model, layer, x):
    seen = {}
    h = layer.register_forward_hook(lambda m, i, o: seen.update(i=i[0].shape, o=o.shape))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return seen


def _net(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, 10)).eval()


def _cases(seed: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    specs = [("the first ReLU's maps 0 and 5", 1, [0, 5], 32),
             ("the second convolution's maps 1, 6 and 7 (before their ReLU)", 3, [1, 6, 7], 32),
             ("an in-place ReLU's maps 1 to 9, on a 24x40 input", 4, list(range(1, 10)), 24),
             ("the last ReLU's map 15, alone", 7, [15], 32)]
    cases = []
    for n, (name, index, chans, h) in enumerate(specs):
        model = _net(seed + n)
        x = torch.randn(1, 3, h, 40 if h == 24 else h, generator=gen)
        layer = model[index]
        cases.append(Case(name, (model, layer, chans, x),
                          reference_knockout(model, layer, chans, x),
                          hint="handle = layer.register_forward_hook(hook) where hook returns a "
                               "copy of the output with output[:, channels] = 0; call the model; "
                               "handle.remove() in a finally: block",
                          mistakes=lambda a=(model, layer, chans, x): _variants(*a),
                          compare=lambda got, ref: compare_arrays(got, ref, rtol=1e-5)))
    return cases


def check_knockout(fn, *, strict: bool = False, show: bool = True, seed: int = 0) -> Verdict:
    """Check a student's feature-map knock-out against zfwidgets' ablated model.

    Parameters
    ----------
    fn : callable
        ``fn(model, layer, channels, x)``: ``model`` a classifier in eval mode, ``layer`` one
        of its modules (output ``[1, C, h, w]``), ``channels`` a list of map ids, ``x`` a
        ``[1, 3, H, W]`` input; returns the logits ``[1, classes]`` of ``model(x)`` with those
        maps of ``layer``'s output set to zero.
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
    return run_cases("knocking maps out", fn, _cases(seed), strict=strict, show=show,
                     covered="ReLU and convolution layers, an in-place ReLU, one and several "
                     "maps, a non-square input", after=leftover_hook_note)
