"""The torch calls that zfwidgets' function modes intercept: how to read them, which rectify.

The backward rules (:mod:`.rules`), the receptive-field tracker (:mod:`.layers`) and the
incremental occlusion engine (:mod:`.occlusion`) all see calls such as ``F.conv2d(x, w, b, 2)``
or ``F.relu(x, inplace=True)`` inside a :class:`torch.overrides.TorchFunctionMode`. This module
is their shared vocabulary:

* :func:`call_arg` / :func:`pool_args` read an argument whether it was passed by position or by
  name;
* :func:`rectifier_call` says whether a call is a rectifier (ReLU, ReLU6, LeakyReLU,
  ``hardtanh(0, t)``, ``clamp(min=0)``, ``threshold(0, 0)`` ...) and with which bounds: the one
  table of rectifier ops, used by the rules (which replace them) and the occlusion engine (which
  fuses them into convolutions);
* :data:`RECTIFIER_MODULES` are the ``nn.Module`` classes that apply one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RECTIFIER_MODULES", "Rectifier", "call_arg", "pool_args", "rectifier_call"]


def call_arg(args, kwargs, index: int, name: str, default=None):
    """Argument ``name`` of a call: from ``kwargs``, else ``args[index]``, else ``default``."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def pool_args(args, kwargs, *, has_dilation: bool):
    """``(kernel, stride, padding, dilation)`` of an ``F.max_pool2d`` (``has_dilation``) or
    ``F.avg_pool2d`` call, as given (ints or pairs); a missing or empty stride is the kernel,
    as torch defines it."""
    kernel = call_arg(args, kwargs, 1, "kernel_size")
    stride = call_arg(args, kwargs, 2, "stride")
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel
    padding = call_arg(args, kwargs, 3, "padding", 0)
    dilation = call_arg(args, kwargs, 4, "dilation", 1) if has_dilation else 1
    return kernel, stride, padding, dilation


#: Module classes that apply a rectifier (a ``Hardtanh`` only when its lower bound is 0).
RECTIFIER_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh,
                                                  nn.Threshold)


@dataclass(frozen=True)
class Rectifier:
    """A rectifier call ``y = clamp(x, lo, hi)`` for ``x > lo``, ``slope * x`` below ``lo``.

    Attributes
    ----------
    x : torch.Tensor
        The rectified tensor.
    lo : float
        Lower bound (always 0: only rectifiers at 0 are recognised).
    hi : float or None
        Upper bound (6 for ReLU6), ``None`` for none.
    slope : float
        Slope below ``lo`` (LeakyReLU's ``negative_slope``), 0 for a plain rectifier.
    inplace : bool
        Whether the call writes its result into ``x``.
    """

    x: torch.Tensor
    lo: float
    hi: float | None
    slope: float
    inplace: bool


def _relu(args, kwargs):
    return 0.0, None, 0.0


def _relu6(args, kwargs):
    return 0.0, 6.0, 0.0


def _hardtanh(args, kwargs):
    lo = call_arg(args, kwargs, 1, "min_val", -1.0)
    hi = call_arg(args, kwargs, 2, "max_val", 1.0)
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor) or float(lo) != 0.0:
        return None
    return 0.0, float(hi), 0.0


def _leaky(args, kwargs):
    return 0.0, None, float(call_arg(args, kwargs, 1, "negative_slope", 0.01))


def _clamp(args, kwargs):
    lo = call_arg(args, kwargs, 1, "min", None)
    hi = call_arg(args, kwargs, 2, "max", None)
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        return None
    if lo is None or float(lo) != 0.0:
        return None
    return 0.0, None if hi is None else float(hi), 0.0


def _clamp_min(args, kwargs):
    lo = call_arg(args, kwargs, 1, "min", None)
    if isinstance(lo, torch.Tensor) or lo is None or float(lo) != 0.0:
        return None
    return 0.0, None, 0.0


def _threshold(args, kwargs):
    th = call_arg(args, kwargs, 1, "threshold", 0.0)
    val = call_arg(args, kwargs, 2, "value", 0.0)
    if isinstance(th, torch.Tensor) or isinstance(val, torch.Tensor):
        return None
    return (0.0, None, 0.0) if float(th) == 0.0 and float(val) == 0.0 else None


_T = torch.Tensor
# func -> (bounds parser, in place?): True / False, or the (index, name) of its ``inplace`` flag
_RECTIFIERS: dict = {
    F.relu: (_relu, (1, "inplace")),
    torch.relu: (_relu, False),
    _T.relu: (_relu, False),
    torch.relu_: (_relu, True),
    _T.relu_: (_relu, True),
    F.relu_: (_relu, True),
    F.relu6: (_relu6, (1, "inplace")),
    F.hardtanh: (_hardtanh, (3, "inplace")),
    F.hardtanh_: (_hardtanh, True),
    F.leaky_relu: (_leaky, (2, "inplace")),
    F.leaky_relu_: (_leaky, True),
    F.threshold: (_threshold, (3, "inplace")),
    F.threshold_: (_threshold, True),
    torch.clamp: (_clamp, False),
    torch.clip: (_clamp, False),
    _T.clamp: (_clamp, False),
    _T.clip: (_clamp, False),
    _T.clamp_: (_clamp, True),
    _T.clip_: (_clamp, True),
    torch.clamp_min: (_clamp_min, False),
    _T.clamp_min: (_clamp_min, False),
    _T.clamp_min_: (_clamp_min, True),
}

#: Every function that is a rectifier for some arguments (see :func:`rectifier_call`).
RECTIFIER_FUNCS = frozenset(_RECTIFIERS)


def rectifier_call(func, args, kwargs) -> Rectifier | None:
    """The rectifier that ``func(*args, **kwargs)`` applies, or ``None`` when it applies none.

    A call is a rectifier when it is one of :data:`RECTIFIER_FUNCS` with a floating-point tensor
    input and a lower bound of exactly 0 (``hardtanh(x, -1, 1)`` or ``clamp(x, min=-1)`` are
    not).
    """
    entry = _RECTIFIERS.get(func)
    if entry is None or not args:
        return None
    parse, inplace = entry
    x = args[0]
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    bounds = parse(args, kwargs)
    if bounds is None:
        return None
    if isinstance(inplace, tuple):
        inplace = bool(call_arg(args, kwargs, inplace[0], inplace[1], False))
    lo, hi, slope = bounds
    return Rectifier(x, lo, hi, slope, bool(inplace))
