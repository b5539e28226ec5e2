"""Exercise: a receptive field by the recursion, checked against zfwidgets' tracker.

The student writes ``fn(layers) -> (size, stride, start)`` for a chain of windowed layers
(convolutions or poolings), each ``(kernel, stride, padding, dilation)`` along one axis. Going
up the chain from the input (size 1, stride 1, start 0), a layer with those parameters makes

* ``size  += dilation * (kernel - 1) * stride_before``;
* ``start -= padding * stride_before``;
* ``stride = stride_before * stride``.

Unit ``y`` of the last layer then sees input pixels ``start + y * stride`` up to (excluding)
``start + y * stride + size``. The reference is not that formula: it is the geometry zfwidgets
tracks op by op through a real forward pass of the same chain of ``nn.Conv2d`` / ``nn.MaxPool2d``
(:class:`~zfwidgets.backend.layers.GeometryMode`), which the tests check against the support of
input gradients.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..backend.layers import record_forward, scoped_eval
from .verdict import Case, Verdict, run_cases

__all__ = ["check_receptive_field", "layer_chain", "reference_receptive_field"]

#: Chains of real networks, one axis: (kernel, stride, padding, dilation).
ALEXNET = [(11, 4, 2, 1), (3, 2, 0, 1), (5, 1, 2, 1), (3, 2, 0, 1), (3, 1, 1, 1),
           (3, 1, 1, 1), (3, 1, 1, 1), (3, 2, 0, 1)]
ZFNET = [(7, 2, 1, 1), (3, 2, 0, 1), (5, 2, 0, 1), (3, 2, 0, 1), (3, 1, 1, 1), (3, 1, 1, 1),
         (3, 1, 1, 1), (3, 2, 0, 1)]
VGG16_BLOCK3 = [(3, 1, 1, 1), (3, 1, 1, 1), (2, 2, 0, 1), (3, 1, 1, 1), (3, 1, 1, 1),
                (2, 2, 0, 1), (3, 1, 1, 1), (3, 1, 1, 1), (3, 1, 1, 1)]


def _chain(layers) -> nn.Sequential:
    mods = []
    for n, (k, s, p, d) in enumerate(layers):
        if n % 2 and p <= k // 2:          # every other layer a pooling: same geometry
            mods.append(nn.MaxPool2d(k, s, p, d))
        else:
            mods.append(nn.Conv2d(1, 1, k, s, p, d, bias=False))
    return nn.Sequential(*mods)


def _input_side(layers) -> int:
    side = 16
    while True:
        n = side
        for k, s, p, d in layers:
            n = (n + 2 * p - d * (k - 1) - 1) // s + 1
            if n < 1:
                break
        else:
            return side
        side *= 2


def reference_receptive_field(layers) -> tuple[int, int, int]:
    """The receptive field of a chain's last layer as zfwidgets tracks it (the reference).

    Parameters
    ----------
    layers : sequence of (kernel, stride, padding, dilation)
        Windowed layers from the input up, one axis (square windows).

    Returns
    -------
    (size, stride, start) : tuple of int
        Unit ``y`` of the last layer sees input pixels ``start + y * stride`` to
        ``start + y * stride + size`` (exclusive); ``start`` is negative where padding makes the
        first unit look past the image's edge.
    """
    model = _chain(layers)
    side = _input_side(layers)
    record = record_forward(model, torch.zeros(1, 1, side, side))
    g = record.layers[-1].geometry
    return int(g.size[0]), int(g.stride[0]), int(g.start[0])


def _first(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _spec(module: nn.Module) -> tuple[int, int, int, int]:
    k = _first(module.kernel_size)
    d = _first(getattr(module, "dilation", 1))
    s = _first(module.stride if module.stride else k)
    p = module.padding
    if isinstance(p, str):
        p = 0 if p == "valid" else d * (k - 1) // 2
    return k, s, _first(p), d


def layer_chain(session, layer: str) -> list[tuple[int, int, int, int]]:
    """The windowed layers a forward pass runs up to ``layer``, as the exercise's input.

    Every ``nn.Conv2d``, ``nn.MaxPool2d`` and ``nn.AvgPool2d`` whose call finishes before
    ``layer``'s output is made, in that order, as ``(kernel, stride, padding, dilation)``
    along the rows (the first call of a reused module only). On a chain with side branches
    (a residual block's shortcut) this is the main path, whose receptive field contains the
    branches' (the tracker takes the union: they agree when the shortcut adds nothing wider).

    Parameters
    ----------
    session : Session
    layer : str
        One of ``session.layers``.

    Returns
    -------
    list of (kernel, stride, padding, dilation)
    """
    session.layer_info(layer)                     # UnknownLayerError with suggestions
    target = session.layer_module(layer)
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    chain: list[tuple[int, int, int, int]] = []
    seen: set[int] = set()
    done = []

    class _Stop(Exception):
        pass

    def hook(module, inputs, output):
        if isinstance(module, kinds) and id(module) not in seen:
            seen.add(id(module))
            chain.append(_spec(module))
        if module is target:
            done.append(True)
            raise _Stop

    handles = [m.register_forward_hook(hook) for m in session.model.modules()
               if isinstance(m, kinds) or m is target]
    try:
        with torch.no_grad(), scoped_eval(session.model):
            session.model(session.input_tensor)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return chain


def _formula(layers, *, dilation=True, jump_after=False, pad_steps=True, pad_shift=0,
             stride_sum=False):
    size, jump, start = 1, 1, 0
    for k, s, p, d in layers:
        d = d if dilation else 1
        if jump_after:
            jump = jump * s if not stride_sum else jump + s
        size += d * (k - 1) * jump
        start -= (p + pad_shift) * (jump if pad_steps else 1)
        if not jump_after:
            jump = jump * s if not stride_sum else jump + s
    return size, jump, start


def _rf_mistakes(layers):
    return {
        "dilation d spreads a kernel of k taps over d * (k - 1) + 1 pixels: grow the size by "
        "d * (k - 1) * stride": _formula(layers, dilation=False),
        "grow the size with the stride *before* the layer (the product of the earlier layers' "
        "strides), then multiply the stride by this layer's": _formula(layers, jump_after=True),
        "the stride is the product of the strides so far, not their sum":
            _formula(layers, stride_sum=True),
        "padding is counted in the layer's input units: each moves the start by the stride "
        "before the layer, start -= padding * stride": _formula(layers, pad_steps=False),
        "padding p moves the start by p steps, not p + 1 (or p - 1)":
            _formula(layers, pad_shift=1),
        "padding p moves the start by exactly p steps (p - 1 is one short)":
            _formula(layers, pad_shift=-1),
    }


def _compare_rf(got, expected) -> str | None:
    if hasattr(got, "size") and hasattr(got, "stride") and hasattr(got, "start") \
            and not isinstance(got, (torch.Tensor, np.ndarray)):
        got = (got.size, got.stride, got.start)
    try:
        values = [v[0] if isinstance(v, (tuple, list)) else v for v in got]
        values = [int(v) if float(v) == int(v) else float(v) for v in values]
    except (TypeError, ValueError):
        return (f"your function returned {got!r}; return three integers (size, stride, "
                "start)")
    if len(values) != 3:
        return f"your function returned {len(values)} values; return (size, stride, start)"
    names = ("size", "stride", "start")
    wrong = [f"{n} {v} (expected {e})" for n, v, e in zip(names, values, expected) if v != e]
    if not wrong:
        return None
    y = 1
    yours = (values[2] + y * values[1], values[2] + y * values[1] + values[0])
    theirs = (expected[2] + y * expected[1], expected[2] + y * expected[1] + expected[0])
    return (", ".join(wrong) + f"; e.g. unit 1 sees input pixels {yours[0]}..{yours[1] - 1} by "
            f"yours, {theirs[0]}..{theirs[1] - 1} really")


def _rf_cases(seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    specs = [("one 3x3 convolution, stride 1, padding 1", [(3, 1, 1, 1)]),
             ("two 3x3 convolutions without padding", [(3, 1, 0, 1), (3, 1, 0, 1)]),
             ("a 3x3 convolution with stride 2, then a 3x3 convolution",
              [(3, 2, 1, 1), (3, 1, 1, 1)]),
             ("AlexNet's conv1 .. pool5 (11x11 stride 4, padding 2; three 3x3 / 2 pools)",
              ALEXNET),
             ("ZF-Net's conv1 .. pool5 (7x7 stride 2)", ZFNET),
             ("VGG16 up to conv3_3 (3x3 convolutions, 2x2 pools)", VGG16_BLOCK3),
             ("dilated 3x3 convolutions, dilation 1, 2, 4 (padding = dilation)",
              [(3, 1, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4)]),
             ("a strided, dilated convolution after a strided one",
              [(5, 2, 2, 1), (3, 2, 2, 2), (3, 1, 0, 3)])]
    for n in range(4):
        depth = int(rng.integers(2, 7))
        chain = []
        for _ in range(depth):
            k = int(rng.integers(1, 8))
            chain.append((k, int(rng.integers(1, 4)), int(rng.integers(0, k // 2 + 1)),
                          int(rng.integers(1, 3))))
        specs.append((f"random chain {n + 1}: {chain}", chain))
    return [Case(name, (list(chain),), reference_receptive_field(chain),
                 hint="start from (size 1, stride 1, start 0) at the input and update all "
                      "three per layer, in order from the input up",
                 mistakes=lambda c=chain: _rf_mistakes(c), compare=_compare_rf)
            for name, chain in specs]


def check_receptive_field(fn, *, strict: bool = False, show: bool = True, seed: int = 0
                          ) -> Verdict:
    """Check a student's receptive-field recursion against zfwidgets' tracked geometry.

    Parameters
    ----------
    fn : callable
        ``fn(layers)``: ``layers`` a list of ``(kernel, stride, padding, dilation)`` tuples,
        the windowed layers (convolutions, poolings) from the input up along one axis;
        returns ``(size, stride, start)`` of the last layer's units: unit ``y`` sees input
        pixels ``start + y * stride`` up to ``start + y * stride + size`` (exclusive), and
        ``start`` is negative where padding makes a border unit look past the edge.
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random chains.

    Returns
    -------
    Verdict

    Examples
    --------
    >>> def rf(layers):
    ...     size, stride, start = 1, 1, 0
    ...     for k, s, p, d in layers:
    ...         size += d * (k - 1) * stride
    ...         start -= p * stride
    ...         stride *= s
    ...     return size, stride, start
    >>> check_receptive_field(rf, show=False).passed
    True
    """
    return run_cases("receptive field by the recursion", fn, _rf_cases(seed), strict=strict,
                     show=show, covered="AlexNet, ZF-Net and VGG16 chains, padding at the "
                     "border, strides, dilation, random chains")
