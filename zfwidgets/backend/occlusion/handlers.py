"""The incremental engine's op handlers, in one table: each computes a call on the dirty windows.

:class:`~.engine.IncrementalMode` sends every call that receives one of its placeholders to the
handler registered here for the call's function (:data:`HANDLERS`); a call with no handler runs
on dense values, which is always exact.

Adding an op
------------
Write ``handler(mode, func, args, kwargs)`` and register it with ``@handles(func, ...)`` (every
spelling the model may call: ``F.conv2d`` and ``torch.conv2d``...). It reads its arguments with
:func:`~zfwidgets.backend.ops.call_arg`, uses only the engine's public interface (``state``,
``tracked``, ``clean``, ``gather``, ``emit``, ``cache``, see :mod:`.engine`), returns
``mode.emit(...)``, and raises :class:`Fallback` for any case it does not treat exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..ops import call_arg, pool_args
from .fusion import PendingConv, fuse_into_conv
from .table import HANDLERS, Fallback, handles

if TYPE_CHECKING:
    from .engine import IncrementalMode, Patch

__all__ = ["HANDLERS", "handles"]


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise Fallback
        return int(v[0]), int(v[1])
    return int(v), int(v)


# =========================================================================== windowed ops

def _window_axis(t: np.ndarray, h: int, n_out: int, k: int, s: int, p: int, d: int,
                 tau: float = 1.0):
    """Output window on one axis of a strided window op, and the input window it needs.

    Returns ``(out_start[N], out_len, in_start[N], in_len)``; input starts are in unpadded
    coordinates (``-p`` is the first padded row). ``tau < 1`` caps the window at
    ``ceil(tau * n_out)`` rows, centred on the dirty ones (Krypton's projective-field
    threshold, :mod:`.approx`: not exact).
    """
    reach = d * (k - 1)
    r_min = -((-(t + p - reach)) // s)  # ceil
    # every batch gets the window of an image away from the border (the longest, whatever
    # the corner's phase modulo the stride), so that window shapes do not change from batch to
    # batch (each new shape costs oneDNN a new primitive, about as much as the call)
    phase = np.arange(s)
    need = int(((phase + h - 1 + p) // s - (-(-(phase + p - reach) // s))).max()) + 1
    out_len = min(max(1, need), n_out)
    if tau < 1.0:
        out_len = min(out_len, max(1, math.ceil(tau * n_out)))
        r_min = r_min + (need - out_len) // 2
    start = np.clip(r_min, 0, n_out - out_len)
    return start, out_len, start * s - p, (out_len - 1) * s + reach + 1


def _out_size(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """Output length of a window op (torch's rule, ``ceil_mode`` included: a last window may
    run past the input but must start inside it or its left padding)."""
    span = n + 2 * p - d * (k - 1) - 1
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= n + p else out


def _spatial(mode: IncrementalMode, func, args, kwargs, *, kernel, stride, padding, dilation,
             pad_value: float, run, lazy=None, macs: int = 0, ceil: bool = False):
    """Shared body of convolution / pooling: compute each image's output window only.

    ``run(window)`` computes the op on gathered windows (no padding); ``lazy(window, padding)``,
    when given, returns a :class:`~.fusion.PendingConv` of the result instead. ``macs``:
    multiply-adds per output value (a convolution's), recorded with ``mode.add_macs``.
    ``ceil``: a max pool's ``ceil_mode`` (the windows that run past the input see
    ``pad_value`` there, -inf, as torch's do).
    """
    st = mode.state(args[0])
    if st is None or st.clean.dim() != 4 or mode.tracked(args[1:]) or mode.tracked(kwargs):
        raise Fallback
    clean = mode.clean(func, args, kwargs)
    if not isinstance(clean, torch.Tensor) or clean.dim() != 4:
        raise Fallback
    H, W = st.clean.shape[2:]
    Ho, Wo = clean.shape[2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if _out_size(H, kh, sh, ph, dh, ceil) != Ho or _out_size(W, kw, sw, pw, dw, ceil) != Wo:
        raise Fallback
    per_image = macs * int(clean.shape[1])
    r0, ho, ti, hi = _window_axis(st.top, st.h, Ho, kh, sh, ph, dh, mode.tau)
    c0, wo, li, wi = _window_axis(st.left, st.w, Wo, kw, sw, pw, dw, mode.tau)
    if (ho == Ho and wo == Wo) or ho * wo > (1.0 - mode.min_saving) * Ho * Wo:
        # the whole output is dirty: run the op on the whole input with its own padding
        # (oneDNN's kernels are faster so than on a window padded by hand)
        zeros = np.zeros(st.n, np.int64)
        whole = st.patch if (st.h == H and st.w == W) else \
            mode.gather(st, zeros, zeros, H, W, pad_value=pad_value)
        if lazy is not None:
            out = lazy(whole, (ph, pw), (st.n, clean.shape[1], Ho, Wo))
        else:
            out = func(whole, *args[1:], **kwargs)
            if not isinstance(out, torch.Tensor) or out.shape[2:] != (Ho, Wo):
                raise Fallback
        result = mode.emit(clean, out, top=zeros, left=zeros)
        mode.add_macs(st.n * per_image * Ho * Wo, st.n * per_image * Ho * Wo)
        return result
    window = mode.gather(st, ti, li, hi, wi, pad_value=pad_value)
    if lazy is not None:
        out = lazy(window, (0, 0), (st.n, clean.shape[1], ho, wo))
    else:
        out = run(window)
        if out.shape[2:] != (ho, wo):
            raise Fallback
    result = mode.emit(clean, out, top=r0, left=c0)
    mode.add_macs(st.n * per_image * ho * wo, st.n * per_image * Ho * Wo)
    return result


@handles(torch.conv2d, F.conv2d)
def _conv(mode, func, args, kwargs):
    weight = call_arg(args, kwargs, 1, "weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise Fallback
    bias = call_arg(args, kwargs, 2, "bias")
    stride = _pair(call_arg(args, kwargs, 3, "stride", 1))
    padding = call_arg(args, kwargs, 4, "padding", 0)
    dilation = _pair(call_arg(args, kwargs, 5, "dilation", 1))
    groups = int(call_arg(args, kwargs, 6, "groups", 1))
    k = tuple(weight.shape[-2:])
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same" and all(dilation[a] * (k[a] - 1) % 2 == 0 for a in range(2)):
            padding = tuple(dilation[a] * (k[a] - 1) // 2 for a in range(2))
        else:
            raise Fallback
    padding = _pair(padding)

    def run(window):
        return F.conv2d(window, weight, bias, stride, 0, dilation, groups)

    def lazy(window, pad, shape):
        return PendingConv(window, weight, bias, padding=pad, stride=stride, dilation=dilation,
                           groups=groups, shape=shape)

    fusable = mode.fuse and isinstance(bias, (torch.Tensor, type(None)))
    return _spatial(mode, func, args, kwargs, kernel=k, stride=stride, padding=padding,
                    dilation=dilation, pad_value=0.0, run=run, lazy=lazy if fusable else None,
                    macs=int(weight.shape[1]) * k[0] * k[1])


@handles(F.max_pool2d, torch.max_pool2d)
def _max_pool(mode, func, args, kwargs):
    kernel, stride, padding, dilation = map(_pair, pool_args(args, kwargs, has_dilation=True))
    if call_arg(args, kwargs, 6, "return_indices", False) or not args[0].is_floating_point():
        raise Fallback
    ceil = bool(call_arg(args, kwargs, 5, "ceil_mode", False))

    def run(window):
        return F.max_pool2d(window, kernel, stride, 0, dilation)

    return _spatial(mode, func, args, kwargs, kernel=kernel, stride=stride, padding=padding,
                    dilation=dilation, pad_value=-math.inf, run=run, ceil=ceil)


@handles(F.avg_pool2d, torch._C._nn.avg_pool2d)
def _avg_pool(mode, func, args, kwargs):
    kernel, stride, padding, _ = map(_pair, pool_args(args, kwargs, has_dilation=False))
    if call_arg(args, kwargs, 4, "ceil_mode", False) \
            or call_arg(args, kwargs, 6, "divisor_override") is not None:
        raise Fallback
    if any(padding) and not call_arg(args, kwargs, 5, "count_include_pad", True):
        raise Fallback

    def run(window):
        return F.avg_pool2d(window, kernel, stride, 0)

    return _spatial(mode, func, args, kwargs, kernel=kernel, stride=stride, padding=padding,
                    dilation=(1, 1), pad_value=0.0, run=run)


@handles(F.adaptive_avg_pool2d, torch.mean, torch.Tensor.mean)
def _global_mean(mode, func, args, kwargs):
    """A global average pool (``adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``): each
    image's mean from the clean total and its window (no dense copy of the map). Its result
    differs everywhere, so it is returned as a plain tensor."""
    st = mode.state(args[0])
    if st is None or st.clean.dim() != 4 or kwargs.get("out") is not None \
            or kwargs.get("dtype") is not None:
        raise Fallback
    if func is F.adaptive_avg_pool2d:
        size = call_arg(args, kwargs, 1, "output_size")
        if (_pair(size) if size is not None else None) != (1, 1):
            raise Fallback
        keepdim = True
    else:
        dim = call_arg(args, kwargs, 1, "dim")
        if not isinstance(dim, (list, tuple)) or sorted(int(d) % 4 for d in dim) != [2, 3]:
            raise Fallback
        keepdim = bool(call_arg(args, kwargs, 2, "keepdim", False))
    H, W = st.clean.shape[2:]
    mean = (mode.window_totals(st) / (H * W)).to(st.clean.dtype)
    return mean.view(st.n, -1, 1, 1) if keepdim else mean


@handles(F.pad)
def _pad(mode, func, args, kwargs):
    st = mode.state(args[0])
    pad = list(call_arg(args, kwargs, 1, "pad", ()))
    if st is None or call_arg(args, kwargs, 2, "mode", "constant") != "constant" \
            or len(pad) not in (2, 4) or min(pad) < 0 \
            or isinstance(call_arg(args, kwargs, 3, "value"), torch.Tensor):
        raise Fallback
    pad += [0] * (4 - len(pad))
    clean = mode.clean(func, args, kwargs)
    return mode.emit(clean, st.patch, top=st.top + pad[2], left=st.left + pad[0], shares=st)


def _union(mode: IncrementalMode, states: list[Patch], clean: torch.Tensor
           ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-image corners and size ``(top, left, h, w)`` of one window that covers every
    state's window (the same size for every image, inside the map, and no smaller than in
    the earlier batches: ``mode.window``)."""
    H, W = states[0].clean.shape[2:]
    y0 = np.min([s.top for s in states], 0)
    x0 = np.min([s.left for s in states], 0)
    h = int((np.max([s.top + s.h for s in states], 0) - y0).max())
    w = int((np.max([s.left + s.w for s in states], 0) - x0).max())
    h, w = mode.window(clean, h, w)
    return np.clip(y0, 0, H - h), np.clip(x0, 0, W - w), h, w


@handles(torch.cat, torch.concat, torch.concatenate)
def _cat(mode, func, args, kwargs):
    tensors = call_arg(args, kwargs, 0, "tensors")
    dim = call_arg(args, kwargs, 1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or dim not in (1, -3) \
            or kwargs.get("out") is not None:
        raise Fallback
    states = [mode.state(t) for t in tensors]
    if any(s is None or s.clean.dim() != 4 for s in states):
        raise Fallback
    first = states[0]
    if any(s.n != first.n or s.clean.shape[2:] != first.clean.shape[2:] for s in states):
        raise Fallback
    clean = mode.clean(func, args, kwargs)
    top, left, h, w = _union(mode, states, clean)
    out = torch.cat([mode.gather(s, top, left, h, w) for s in states], 1)
    return mode.emit(clean, out, top=top, left=left)


# =========================================================================== elementwise ops
# func -> index of its ``inplace`` argument (None: no such argument). Data tensors of these
# functions broadcast against the feature map; other tensor arguments are per-channel parameters
# only where listed in _PARAM_ARGS.
_T = torch.Tensor
_UNARY: dict = {
    F.relu: 1, torch.relu: None, _T.relu: None, F.relu6: 1, F.hardtanh: 3, F.leaky_relu: 2,
    F.elu: 2, F.selu: 1, F.celu: 2, F.gelu: None, F.silu: 1, F.mish: 1, F.hardswish: 1,
    F.hardsigmoid: 1, F.sigmoid: None, torch.sigmoid: None, _T.sigmoid: None, F.tanh: None,
    torch.tanh: None, _T.tanh: None, F.softplus: None, F.threshold: 3, torch.neg: None,
    _T.neg: None, _T.__neg__: None, torch.abs: None, _T.abs: None, torch.exp: None, _T.exp: None,
    torch.clamp: None, _T.clamp: None, torch.clip: None, _T.clip: None, torch.clamp_min: None,
    _T.clamp_min: None, torch.clamp_max: None, _T.clamp_max: None, _T.contiguous: None,
    _T.clone: None, torch.clone: None, F.dropout: 3, F.dropout2d: 3, F.alpha_dropout: 3,
    F.feature_alpha_dropout: 3, F.batch_norm: None, F.prelu: None,
}
_UNARY_INPLACE = {torch.relu_, _T.relu_, F.relu_, F.hardtanh_, F.leaky_relu_, F.elu_,
                  F.threshold_, _T.sigmoid_, _T.tanh_, _T.neg_, _T.abs_, _T.exp_, _T.clamp_,
                  _T.clip_, _T.clamp_min_, _T.clamp_max_}
_BINARY = {torch.add, _T.add, _T.__add__, _T.__radd__, torch.sub, _T.sub, _T.__sub__,
           _T.__rsub__, torch.rsub, torch.mul, _T.mul, _T.__mul__, _T.__rmul__, torch.div,
           _T.div, _T.__truediv__, _T.__rtruediv__, torch.true_divide, _T.true_divide,
           torch.maximum, torch.minimum}
_BINARY_INPLACE = {_T.add_, _T.__iadd__, _T.sub_, _T.__isub__, _T.mul_, _T.__imul__, _T.div_,
                   _T.__itruediv__, _T.true_divide_}
# functions whose extra tensor arguments are per-channel parameters
_PARAM_ARGS = {F.batch_norm, F.prelu}
# eval-only functions: (index, name) of the ``training`` flag that must be False
_TRAINING_ARG = {F.dropout: (2, "training"), F.dropout2d: (2, "training"),
                 F.alpha_dropout: (2, "training"), F.feature_alpha_dropout: (2, "training"),
                 F.batch_norm: (5, "training")}
_DROPOUTS = {F.dropout, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout}
_CLAMPS = {torch.clamp, _T.clamp, torch.clip, _T.clip, _T.clamp_, _T.clip_}


def _inplace(func, args, kwargs) -> bool:
    if func in _UNARY_INPLACE or func in _BINARY_INPLACE:
        return True
    index = _UNARY.get(func)
    return index is not None and bool(call_arg(args, kwargs, index, "inplace", False))


@handles(*_UNARY, *_UNARY_INPLACE)
def _unary(mode, func, args, kwargs):
    if func in _CLAMPS and any(isinstance(call_arg(args, kwargs, i, n), torch.Tensor)
                               for i, n in ((1, "min"), (2, "max"))):
        raise Fallback
    return _elementwise(mode, func, args, kwargs, (0, "input"), _inplace(func, args, kwargs))


@handles(*_BINARY, *_BINARY_INPLACE)
def _binary(mode, func, args, kwargs):
    return _elementwise(mode, func, args, kwargs, (0, 1, "input", "other"),
                        _inplace(func, args, kwargs))


def _broadcast_ok(t, full_shape) -> bool:
    """A plain tensor / number that is the same for every image and every position."""
    if not isinstance(t, torch.Tensor):
        return True
    if t.dim() > len(full_shape):
        return False
    shape = (1,) * (len(full_shape) - t.dim()) + tuple(t.shape)
    return shape[0] == 1 and shape[-1] == 1 and shape[-2] == 1


def _data_args(mode, args, kwargs, positions) -> list[tuple[str, int | str, object, Patch]]:
    """``(where, key, value, state)`` of each data argument present (``where``: ``"a"`` for
    ``args[key]``, ``"k"`` for ``kwargs[key]``; ``state`` ``None`` for a plain value)."""
    data = []
    for pos in positions:
        if isinstance(pos, int):
            if pos < len(args):
                data.append(("a", pos, args[pos]))
        elif pos in kwargs:
            data.append(("k", pos, kwargs[pos]))
    out = []
    for where, key, v in data:
        st = mode.state(v)
        if st is None and mode.tracked(v):
            raise Fallback  # a placeholder already made dense
        out.append((where, key, v, st))
    return out


def _check_operands(mode, func, args, kwargs, positions, data, first: Patch) -> None:
    """Raise :class:`Fallback` unless every operand fits an elementwise call on the windows:
    patched data of one batch and map size, plain data that broadcast per channel, other
    tensors only as the per-channel parameters of :data:`_PARAM_ARGS`."""
    full = (first.n,) + tuple(first.clean.shape[1:])
    for _, _, v, s in data:
        if s is None and not _broadcast_ok(v, full):
            raise Fallback
        if s is not None and (s.n != first.n or s.clean.shape[2:] != first.clean.shape[2:]
                              or s.clean.dim() != 4):
            raise Fallback
    others = [a for i, a in enumerate(args) if i not in positions] + \
        [a for k, a in kwargs.items() if k not in positions]
    for a in others:
        if isinstance(a, torch.Tensor) and (func not in _PARAM_ARGS or mode.tracked(a)):
            raise Fallback


def _elementwise(mode: IncrementalMode, func, args, kwargs, positions, inplace: bool):
    """Unary and binary elementwise calls: compute on the union of the dirty windows only."""
    if kwargs.get("out") is not None:
        raise Fallback
    if func in _TRAINING_ARG and bool(call_arg(args, kwargs, *_TRAINING_ARG[func], False)):
        raise Fallback
    data = _data_args(mode, args, kwargs, positions)
    tracked = [(v, s) for _, _, v, s in data if s is not None]
    if not tracked:
        raise Fallback
    if mode.fuse and len(tracked) == 1 and tracked[0][1].pending is not None:
        fused = fuse_into_conv(mode, func, args, kwargs, *tracked[0], inplace=inplace)
        if fused is not None:
            return fused
    first = tracked[0][1]
    _check_operands(mode, func, args, kwargs, positions, data, first)
    # the in-place target must be a placeholder (a plain tensor cannot absorb a batch)
    target = args[0] if inplace else None
    if inplace and mode.state(target) is None:
        raise Fallback
    if func in _DROPOUTS:  # eval-mode dropout is the identity
        if inplace:
            return target
        return mode.emit(first.clean, first.patch, top=first.top, left=first.left, shares=first)
    clean = mode.clean(func, args, kwargs, inplace=inplace)
    top, left, h, w = _union(mode, [s for _, s in tracked], clean)
    new_args, new_kwargs = list(args), dict(kwargs)
    for where, key, v, s in data:
        if s is None:
            continue
        window = mode.gather(s, top, left, h, w)
        if inplace and v is target and window is s.patch and not s.owned:
            window = window.clone()
        if where == "a":
            new_args[key] = window
        else:
            new_kwargs[key] = window
    out = func(*new_args, **new_kwargs)
    if not isinstance(out, torch.Tensor):
        raise Fallback
    if inplace:
        return mode.emit(clean, out, top=top, left=left, into=target)
    storage = out.untyped_storage().data_ptr()
    shared = any(storage == s.patch.untyped_storage().data_ptr() for _, s in tracked)
    return mode.emit(clean, out, top=top, left=left,
                     shares=[s for _, s in tracked] if shared else ())
