"""Convolution fusion: a windowed convolution waits until read, so a batch norm and a rectifier
that follow it fold into one call.

The convolution handler hands the engine a :class:`PendingConv` instead of a tensor. While it is
pending, :func:`fuse_into_conv` can fold an eval-mode batch norm into its weights
(:func:`fold_batch_norm`, cached per engine) and a ReLU / ReLU6 (any rectifier at 0 that
:func:`~zfwidgets.backend.ops.rectifier_call` recognises, with no slope below 0) into the call,
which then runs oneDNN's fused convolution (:func:`fused_conv`) when this torch has a working
one. That saves two passes over every patch; folding changes float rounding only (about 1e-7
relative per layer).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..ops import call_arg, rectifier_call

__all__ = ["PendingConv", "fold_batch_norm", "fuse_into_conv", "fused_conv"]


@functools.cache
def fused_conv():
    """oneDNN's fused convolution + activation (a private torch op), if present and correct
    here (checked once against ``F.conv2d`` on a small case), else ``None``."""
    try:
        candidate = torch.ops.mkldnn._convolution_pointwise
        with torch.inference_mode():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 4, 6, 5, generator=g).contiguous(memory_format=torch.channels_last)
            w = torch.randn(6, 2, 3, 3, generator=g)
            b = torch.randn(6, generator=g)
            pairs = [
                (F.conv2d(x, w, b, (2, 1), (1, 0), (1, 2), 2).clamp(0.0, 0.5),
                 candidate(x, w, b, [1, 0], [2, 1], [1, 2], 2, "hardtanh", [0.0, 0.5], "")),
                (F.conv2d(x, w, b, 1, 1, 1, 2),
                 candidate(x, w, b, [1, 1], [1, 1], [1, 1], 2, "none", [], "")),
                (F.conv2d(x, w, b, 1, 1, 1, 2).clamp(min=0.0),
                 candidate(x, w, b, [1, 1], [1, 1], [1, 1], 2, "relu", [], "")),
            ]
        if all(r.shape == o.shape and torch.allclose(r, o, atol=1e-5, rtol=1e-5)
               for r, o in pairs):
            return candidate
    except Exception:  # noqa: BLE001 - no such op, or not usable: plain convolutions
        pass
    return None


class PendingConv:
    """A convolution of gathered windows, run only when its result is read.

    Parameters
    ----------
    window : torch.Tensor
        The gathered input windows.
    weight, bias : torch.Tensor
    padding, stride, dilation : pair of int
    groups : int
    shape : tuple of int
        ``(N, C_out, h, w)`` of the result (the engine checks it before running anything).

    Attributes
    ----------
    post : tuple or None
        The activation fused into the call: ``("relu",)`` or ``("hardtanh", 0.0, hi)``.
    folded : bool
        Whether a batch norm is folded into ``weight`` / ``bias``.
    """

    __slots__ = ("window", "weight", "bias", "padding", "stride", "dilation", "groups", "shape",
                 "post", "folded")

    def __init__(self, window, weight, bias, *, padding, stride, dilation, groups, shape):
        self.window, self.weight, self.bias = window, weight, bias
        self.padding, self.stride, self.dilation, self.groups = padding, stride, dilation, groups
        self.shape = tuple(shape)
        self.post = None
        self.folded = False

    @property
    def dtype(self) -> torch.dtype:
        """The result's dtype (the window's)."""
        return self.window.dtype

    def copy(self) -> PendingConv:
        """A copy to fold something more into (placeholders never change once emitted)."""
        other = PendingConv(self.window, self.weight, self.bias, padding=self.padding,
                            stride=self.stride, dilation=self.dilation, groups=self.groups,
                            shape=self.shape)
        other.post, other.folded = self.post, self.folded
        return other

    def run(self) -> torch.Tensor:
        """The convolution (with what was folded into it): ``[N, C_out, h, w]``."""
        x = self.window
        fused = fused_conv()
        if fused is not None and x.dtype == torch.float32 and x.device.type == "cpu" \
                and (self.post is not None or self.folded):
            attr, scalars = ("none", []) if self.post is None else \
                (self.post[0], list(self.post[1:]))
            return fused(x.contiguous(memory_format=torch.channels_last), self.weight, self.bias,
                         list(self.padding), list(self.stride), list(self.dilation), self.groups,
                         attr, scalars, "")
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                       self.groups)
        if self.post is not None:
            out = out.clamp_(min=0.0) if self.post[0] == "relu" else \
                out.clamp_(self.post[1], self.post[2])
        return out


def fold_batch_norm(cache: dict, weight, bias, mean, var, gamma, beta, eps
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolution ``(weight, bias)`` with an eval-mode batch norm folded in.

    ``cache`` (one engine's ``mode.cache("fold")``) keeps each folding for the sweep, keyed by
    the tensors' identities, which it keeps alive.
    """
    key = (id(weight), id(bias), id(mean), id(var), id(gamma), id(beta), float(eps))
    hit = cache.get(key)
    if hit is not None:
        return hit[0], hit[1]
    scale = torch.rsqrt(var.double() + float(eps))
    if gamma is not None:
        scale = scale * gamma.double()
    shift = -mean.double() * scale
    if beta is not None:
        shift = shift + beta.double()
    if bias is not None:
        shift = shift + bias.double() * scale
    w = (weight.double() * scale.view(-1, 1, 1, 1)).to(weight.dtype).contiguous()
    b = shift.to(weight.dtype)
    cache[key] = (w, b, weight, bias, mean, var, gamma, beta)
    return w, b


def _with_batch_norm(mode, pending: PendingConv, args, kwargs) -> PendingConv | None:
    """``pending`` with the ``F.batch_norm`` call ``args, kwargs`` folded in, or ``None``."""
    mean = call_arg(args, kwargs, 1, "running_mean")
    var = call_arg(args, kwargs, 2, "running_var")
    gamma, beta = call_arg(args, kwargs, 3, "weight"), call_arg(args, kwargs, 4, "bias")
    eps = call_arg(args, kwargs, 7, "eps", 1e-5)
    if mean is None or var is None or isinstance(eps, torch.Tensor):
        return None
    if not all(isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() == pending.shape[1]
               and not mode.tracked(t) for t in (mean, var, gamma, beta) if t is not None):
        return None
    new = pending.copy()
    new.weight, new.bias = fold_batch_norm(mode.cache("fold"), pending.weight, pending.bias,
                                           mean, var, gamma, beta, eps)
    new.folded = True
    return new


def _with_rectifier(pending: PendingConv, x, func, args, kwargs) -> PendingConv | None:
    """``pending`` with the rectifier call ``func(x, ...)`` fused in, or ``None``."""
    rect = rectifier_call(func, args, kwargs)
    if rect is None or rect.x is not x or rect.slope != 0.0:
        return None
    new = pending.copy()
    new.post = ("relu",) if rect.hi is None else ("hardtanh", 0.0, rect.hi)
    return new


def fuse_into_conv(mode, func, args, kwargs, x: torch.Tensor, st, *, inplace: bool):
    """Fold a batch norm or rectifier applied to the pending convolution of placeholder ``x``
    (its :class:`~.engine.Patch` ``st``) into it: the new placeholder, or ``None`` when the
    call cannot be folded (the caller then computes it on the patch)."""
    pending = st.pending
    if args[0] is not x or pending.post is not None:
        return None
    if func is F.batch_norm:
        new = None if pending.folded else _with_batch_norm(mode, pending, args, kwargs)
    else:
        new = _with_rectifier(pending, x, func, args, kwargs)
    if new is None:
        return None
    clean = mode.clean(func, args, kwargs, inplace=inplace)
    return mode.emit(clean, new, top=st.top, left=st.left, into=x if inplace else None)
