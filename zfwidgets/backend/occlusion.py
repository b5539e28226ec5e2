"""Occlusion sensitivity (the paper's Fig. 7), exact and incremental.

A square of ``fill`` colour is slid over the image; for every occluder position we record the
probability of a target class, the most probable class, and the total activation of one feature
map of a top convolutional layer (the map strongest on the unoccluded image).

Incremental inference
---------------------
Each occluded image differs from the original only inside the square, so in every layer only a
window of the feature map can differ from the unoccluded pass. :class:`IncrementalMode` (a
:class:`torch.overrides.TorchFunctionMode`, active for one batched forward pass) represents each
intermediate tensor of a batch of occluded images as

* ``clean``: the tensor of the unoccluded image ``[1, C, H, W]`` (computed once, memoized), and
* ``patch``: ``[N, C, h, w]``, the values inside each image's dirty window, whose top-left
  corners ``top[n], left[n]`` differ per image; outside it the image equals ``clean``.

The model's own Python code runs unchanged; what it holds in its hands are cheap placeholders
(``clean.expand(N, ...)``, no memory) that the mode looks up. A convolution or pooling is computed
only on each image's dirty window plus the halo its kernel needs (gathered from ``clean`` and the
incoming patch in one indexed copy); elementwise operations (batch norm in eval mode, ReLU and
friends, residual additions ...) touch only the patch. Every other operation, or any case that a
handler does not recognise exactly, *falls back*: the placeholders it receives are turned into
real dense tensors (clean copy with the patches pasted) and the operation runs as usual. The
fallback is always exact, so an unknown operation can cost speed but never correctness. The
model is never modified: no hooks survive the call and no module state is touched.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import (BadParameterError, Cancelled, OutOfRangeError, UnknownLayerError, ZFError,
                      did_you_mean)
from ..models import class_name
from .ops import call_arg, pool_args
from .defaults import top_layer
from .layers import capture, resolve_layer, scoped_eval

__all__ = [
    "Cancelled",
    "FILLS",
    "IncrementalMode",
    "OcclusionResult",
    "OcclusionSweep",
    "fill_rgb",
    "fill_tensor",
    "occlude",
    "occluded_prediction",
    "occlusion",
    "occlusion_grid",
    "occlusion_maps",
    "occlusion_sweep",
]

#: Named occluder fills (see :func:`fill_tensor`); a float is a value in normalized input space.
FILLS = ("gray", "mean", "black", "white")


# =========================================================================== geometry helpers

def occlusion_grid(height: int, width: int, size: int, stride: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the occluder on each axis.

    Corners are ``0, stride, 2 * stride, ...`` up to ``side - size`` inclusive (the last corner
    is not moved to the border when ``side - size`` is not a multiple of ``stride``).

    Parameters
    ----------
    height, width : int
        Input size.
    size : int
        Side of the square occluder, ``1 <= size <= min(height, width)``.
    stride : int
        Step between positions, ``>= 1``.

    Returns
    -------
    rows, cols : numpy.ndarray
        ``int64`` corner coordinates, ``R = (height - size) // stride + 1`` rows and
        ``C = (width - size) // stride + 1`` columns.

    Raises
    ------
    BadParameterError
        For a size below 1 or above the image, or a stride below 1.
    """
    size, stride = _check_int("size", size), _check_int("stride", stride)
    if size < 1:
        raise BadParameterError(f"occluder size must be at least 1 pixel, got {size}")
    if size > min(height, width):
        raise BadParameterError(
            f"occluder size {size} is larger than the {height}x{width} input")
    if stride < 1:
        raise BadParameterError(f"occluder stride must be at least 1, got {stride}")
    return (np.arange(0, height - size + 1, stride, dtype=np.int64),
            np.arange(0, width - size + 1, stride, dtype=np.int64))


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise BadParameterError(f"{name} must be an integer, got {value!r}")
    return int(value)


def fill_tensor(fill: str | float, x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """The occluder colour as a ``[1, C, 1, 1]`` tensor in the model's (normalized) input space.

    Parameters
    ----------
    fill : {"gray", "mean", "black", "white"} or float
        ``"gray"``: the model's mean pixel, i.e. 0 in normalized space (the paper's gray square).
        ``"mean"``: this image's mean colour. ``"black"`` / ``"white"``: pixel 0 / 1 (needs
        ``mean`` and ``std``). A float is used as is, in normalized space.
    x : torch.Tensor
        The normalized input ``[1, C, H, W]``.
    mean, std : sequence of float, optional
        The preprocessing's per-channel statistics (for black and white).
    """
    c = x.shape[1]
    shape = (1, c, 1, 1)
    if isinstance(fill, bool):
        raise BadParameterError(f"fill must be one of {', '.join(FILLS)} or a number, got {fill!r}")
    if isinstance(fill, (int, float, np.floating, np.integer)):
        if not math.isfinite(float(fill)):
            raise BadParameterError(f"fill must be a finite number, got {fill!r}")
        return torch.full(shape, float(fill), dtype=x.dtype, device=x.device)
    if fill == "gray":
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    if fill == "mean":
        return x.mean(dim=(0, 2, 3), keepdim=True)
    if fill in ("black", "white"):
        if mean is None or std is None:
            raise BadParameterError(f"fill={fill!r} needs the preprocessing's mean and std")
        pixel = 0.0 if fill == "black" else 1.0
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
        return (pixel - m) / s
    raise BadParameterError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)} or a number "
                            "(in normalized input space)")


def occlude(x: torch.Tensor, positions: Sequence[tuple[int, int]], size: int,
            fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Copies of ``x`` with a ``size`` x ``size`` square set to ``fill`` at each position.

    Parameters
    ----------
    x : torch.Tensor
        ``[1, C, H, W]`` input.
    positions : sequence of (top, left)
    size : int
    fill : tensor ``[1, C, 1, 1]`` or float

    Returns
    -------
    torch.Tensor
        ``[len(positions), C, H, W]``.
    """
    out = x.expand(len(positions), *x.shape[1:]).clone()
    if not isinstance(fill, torch.Tensor):
        fill = torch.full((1, x.shape[1], 1, 1), float(fill), dtype=x.dtype, device=x.device)
    value = fill.reshape(x.shape[1], 1, 1).to(x.dtype)
    for n, (top, left) in enumerate(positions):
        out[n, :, top:top + size, left:left + size] = value
    return out


# =========================================================================== incremental engine

class _Patch:
    """A batch of images equal to ``clean`` except inside one window per image.

    ``patch`` is ``[N, C, h, w]``; it may be *pending* (a convolution not run yet, see
    :class:`_Pending`), in which case reading it runs the convolution.
    """

    __slots__ = ("clean", "_patch", "pending", "top", "left", "owned", "shape")

    def __init__(self, clean: torch.Tensor, patch, top: np.ndarray, left: np.ndarray,
                 owned: bool = True, shape: tuple | None = None):
        self.clean, self.top, self.left, self.owned = clean, top, left, owned
        if isinstance(patch, _Pending):
            self._patch, self.pending = None, patch
            self.shape = tuple(shape)
        else:
            self._patch, self.pending = patch, None
            self.shape = tuple(patch.shape)

    @property
    def patch(self) -> torch.Tensor:
        if self.pending is not None:
            self._patch = self.pending.run()
            self.pending = None
        return self._patch

    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def h(self) -> int:
        return self.shape[2]

    @property
    def w(self) -> int:
        return self.shape[3]


class _Pending:
    """A convolution of gathered windows, run only when its result is read.

    Until then an eval-mode batch norm that follows can be folded into its weights and a ReLU or
    ReLU6 into the call (oneDNN's fused convolution), which saves two passes over the patch.
    Folding changes float rounding only (about 1e-7 relative per layer).
    """

    __slots__ = ("window", "weight", "bias", "padding", "stride", "dilation", "groups", "post",
                 "folded")

    def __init__(self, window, weight, bias, padding, stride, dilation, groups):
        self.window, self.weight, self.bias = window, weight, bias
        self.padding, self.stride, self.dilation, self.groups = padding, stride, dilation, groups
        self.post = None  # None, ("relu",) or ("hardtanh", lo, hi)
        self.folded = False

    def copy(self) -> _Pending:
        other = _Pending(self.window, self.weight, self.bias, self.padding, self.stride,
                         self.dilation, self.groups)
        other.post, other.folded = self.post, self.folded
        return other

    def run(self) -> torch.Tensor:
        x = self.window
        fused = _fused_conv()
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


_FUSED: list = []


def _fused_conv():
    """oneDNN's fused convolution + activation (private torch op), if present and correct here."""
    if not _FUSED:
        op = None
        try:
            candidate = torch.ops.mkldnn._convolution_pointwise
            with torch.inference_mode():
                g = torch.Generator().manual_seed(0)
                x = torch.randn(2, 4, 6, 5, generator=g).contiguous(
                    memory_format=torch.channels_last)
                w = torch.randn(6, 2, 3, 3, generator=g)
                b = torch.randn(6, generator=g)
                ref = F.conv2d(x, w, b, (2, 1), (1, 0), (1, 2), 2).clamp(0.0, 0.5)
                got = candidate(x, w, b, [1, 0], [2, 1], [1, 2], 2, "hardtanh", [0.0, 0.5], "")
                ref2 = F.conv2d(x, w, b, 1, 1, 1, 2)
                got2 = candidate(x, w, b, [1, 1], [1, 1], [1, 1], 2, "none", [], "")
                ref3 = F.conv2d(x, w, b, 1, 1, 1, 2).clamp(min=0.0)
                got3 = candidate(x, w, b, [1, 1], [1, 1], [1, 1], 2, "relu", [], "")
            if all(r.shape == o.shape and torch.allclose(r, o, atol=1e-5, rtol=1e-5)
                   for r, o in ((ref, got), (ref2, got2), (ref3, got3))):
                op = candidate
        except Exception:  # noqa: BLE001 - no such op, or not usable: plain convolutions
            op = None
        _FUSED.append(op)
    return _FUSED[0]


class _Dense:
    """A placeholder whose value had to be made real (its tensor is ``value``)."""

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor):
        self.value = value


class _Fallback(Exception):
    """Raised by a handler that cannot treat a call exactly; the call then runs densely."""


_METADATA = {"shape", "dtype", "device", "ndim", "is_cuda", "is_sparse", "is_quantized",
             "is_meta", "layout", "requires_grad", "names", "is_leaf", "grad_fn", "T"}
_METADATA_FUNCS = {torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel,
                   torch.Tensor.__len__, torch.Tensor.is_floating_point,
                   torch.Tensor.element_size, torch.Tensor.get_device, torch.Tensor.ndimension,
                   torch.Tensor.nelement, torch.Tensor.is_complex, torch.numel}


_PLAIN = {int, float, bool, str, type(None)}


def _is_metadata(func) -> bool:
    if func in _METADATA_FUNCS:
        return True
    owner = getattr(func, "__self__", None)  # property getters arrive as descriptor.__get__
    return (getattr(func, "__name__", "") == "__get__"
            and getattr(owner, "__name__", None) in _METADATA and owner.__name__ != "T")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise _Fallback
        return int(v[0]), int(v[1])
    return int(v), int(v)


# --- which calls are elementwise -------------------------------------------------------------
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


def _inplace(func, args, kwargs) -> bool:
    if func in _UNARY_INPLACE or func in _BINARY_INPLACE:
        return True
    index = _UNARY.get(func)
    return index is not None and bool(call_arg(args, kwargs, index, "inplace", False))


class IncrementalMode(TorchFunctionMode):
    """Run a model on a batch of occluded images, recomputing only what the occluders change.

    Parameters
    ----------
    min_saving : float
        A convolution or pooling whose dirty windows cover more than ``1 - min_saving`` of its
        output map is computed on the whole map (a gather would cost as much as it saves).
    fuse : bool
        Fold an eval-mode batch norm that directly follows a convolution into the convolution's
        weights, and a ReLU / ReLU6 into the call (oneDNN's fused convolution when available).
        Saves two passes over every patch; changes float rounding only (about 1e-7 relative per
        layer). ``False`` runs every operation exactly as the model calls it.

    Notes
    -----
    Use :meth:`inputs` to make the model's input inside the mode, run the model, and pass its
    output to :meth:`resolve`. The mode memoizes the unoccluded tensors, so one instance can serve
    every batch of a sweep over one image; ``stats`` counts how calls were handled.
    """

    def __init__(self, min_saving: float = 0.0, fuse: bool = True):
        super().__init__()
        self.min_saving = float(min_saving)
        self.fuse = bool(fuse)
        self._table: dict[int, tuple[weakref.ref, object]] = {}
        self._memo: dict = {}
        self._padded: dict = {}
        self.stats: dict[str, int] = {}
        self.unhandled: dict[str, int] = {}

    # ------------------------------------------------------------------ bookkeeping
    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _track(self, state, like: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(state, _Patch):
            ph = state.clean.expand(state.n, *state.clean.shape[1:])
        else:
            ph = like
        key = id(ph)
        table = self._table

        def forget(ref, key=key):
            entry = table.get(key)
            if entry is not None and entry[0] is ref:
                del table[key]

        table[key] = (weakref.ref(ph, forget), state)
        return ph

    def _state(self, t):
        if not isinstance(t, torch.Tensor):
            return None
        entry = self._table.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        return entry[1]

    def _set_state(self, t: torch.Tensor, state) -> None:
        ref = self._table[id(t)][0]
        self._table[id(t)] = (ref, state)

    def _any_tracked(self, obj, depth=0) -> bool:
        table = self._table
        if not table:
            return False
        if isinstance(obj, torch.Tensor):
            entry = table.get(id(obj))
            return entry is not None and entry[0]() is obj
        if isinstance(obj, dict):
            obj = obj.values()
        elif not isinstance(obj, (list, tuple)):
            return False
        if depth >= 3:
            return False
        for o in obj:
            if isinstance(o, torch.Tensor):
                entry = table.get(id(o))
                if entry is not None and entry[0]() is o:
                    return True
            elif isinstance(o, (list, tuple, dict)) and self._any_tracked(o, depth + 1):
                return True
        return False

    def _map(self, obj, fn, depth=0):
        if isinstance(obj, torch.Tensor):
            return fn(obj)
        if isinstance(obj, (list, tuple)) and depth < 3:
            out = [self._map(o, fn, depth + 1) for o in obj]
            return out if isinstance(obj, list) else type(obj)(out) if type(obj) is tuple else tuple(out)
        if isinstance(obj, dict) and depth < 3:
            return {k: self._map(v, fn, depth + 1) for k, v in obj.items()}
        return obj

    # ------------------------------------------------------------------ public
    def inputs(self, x: torch.Tensor, tops: np.ndarray, lefts: np.ndarray, size: int,
               fill: torch.Tensor) -> torch.Tensor:
        """The batch of occluded copies of ``x`` as a placeholder for the model.

        Parameters
        ----------
        x : torch.Tensor
            Unoccluded input ``[1, C, H, W]``.
        tops, lefts : numpy.ndarray
            Occluder corners, one per image.
        size : int
            Occluder side.
        fill : torch.Tensor
            ``[1, C, 1, 1]`` fill value.
        """
        n = len(tops)
        patch = fill.to(x.dtype).expand(n, x.shape[1], size, size).contiguous(
            memory_format=torch.channels_last)
        return self._track(_Patch(x, patch, np.asarray(tops, np.int64),
                                  np.asarray(lefts, np.int64)))

    def resolve(self, t):
        """The real value of a tensor (or nested list/tuple of tensors) made inside the mode."""
        return self._map(t, self._dense)

    def channel_totals(self, t: torch.Tensor) -> torch.Tensor:
        """Per-image, per-channel sums ``[N, C]`` of a ``[N, C, H, W]`` tensor made in the mode.

        For a patched tensor this is ``clean total - clean under the window + patch``, summed in
        float64, at the cost of the window only.
        """
        state = self._state(t)
        if isinstance(state, _Patch):
            clean = state.clean[0]
            c, H, W = clean.shape
            n = state.n
            total = clean.double().sum((1, 2))
            rows = state.top[:, None] + np.arange(state.h)
            cols = state.left[:, None] + np.arange(state.w)
            idx = torch.from_numpy((rows[:, :, None] * W + cols[:, None, :]).reshape(-1))
            under = clean.reshape(c, H * W).index_select(1, idx.to(clean.device))
            under = under.view(c, n, -1).double().sum(2).t()
            inside = state.patch.double().sum((2, 3))
            return (total[None] - under + inside).to(clean.dtype)
        value = state.value if isinstance(state, _Dense) else t
        return value.flatten(2).sum(2)

    # ------------------------------------------------------------------ dense values
    def _dense(self, t):
        state = self._state(t)
        if state is None:
            return t
        if isinstance(state, _Dense):
            return state.value
        value = self._materialize(state)
        self._set_state(t, _Dense(value))
        return value

    def _materialize(self, st: _Patch) -> torch.Tensor:
        self._count("materialize")
        clean, n = st.clean, st.n
        c, H, W = clean.shape[1:]
        out = clean.expand(n, c, H, W).contiguous()
        rows = st.top[:, None] + np.arange(st.h)
        cols = st.left[:, None] + np.arange(st.w)
        pos = (rows[:, :, None] * W + cols[:, None, :]).reshape(-1)
        img = np.repeat(np.arange(n), st.h * st.w)
        dev = clean.device
        vals = st.patch.permute(0, 2, 3, 1).reshape(-1, c)
        out.view(n, c, H * W)[torch.from_numpy(img).to(dev), :, torch.from_numpy(pos).to(dev)] = vals
        return out

    # ------------------------------------------------------------------ the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not (self._any_tracked(args) or (kwargs and self._any_tracked(kwargs))):
            return func(*args, **kwargs)
        if _is_metadata(func):
            return func(*args, **kwargs)
        handler = _HANDLERS.get(func)
        if handler is not None:
            try:
                out = handler(self, func, args, kwargs)
                self._count(getattr(func, "__name__", str(func)))
                return out
            except _Fallback:
                pass
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
        self.unhandled[name] = self.unhandled.get(name, 0) + 1
        return self._fallback(func, args, kwargs)

    def _fallback(self, func, args, kwargs):
        swapped: dict[int, torch.Tensor] = {}

        def real(t):
            state = self._state(t)
            if state is None:
                return t
            value = self._dense(t)
            swapped[id(value)] = t
            return value

        out = func(*self._map(args, real), **self._map(kwargs, real))
        if isinstance(out, torch.Tensor) and id(out) in swapped:
            return swapped[id(out)]  # an in-place op returning its (real) input
        return out

    # ------------------------------------------------------------------ clean values
    def _key(self, obj, keep: list, depth=0):
        """Hashable key of a call's arguments; tensors by identity (kept alive in ``keep``)."""
        if isinstance(obj, torch.Tensor):
            state = self._state(obj)
            if isinstance(state, _Patch):
                keep.append(state.clean)
                return ("P", id(state.clean))
            if state is not None:
                raise TypeError
            keep.append(obj)
            return ("T", id(obj))
        kind = type(obj)
        if kind in _PLAIN:
            return kind, obj
        if kind in (list, tuple) and depth < 3:
            if all(type(o) in _PLAIN for o in obj):  # strides, paddings ...
                return (kind,) + tuple(obj)
            return (kind,) + tuple(self._key(o, keep, depth + 1) for o in obj)
        if isinstance(obj, dict) and depth < 3:
            return ("d",) + tuple((k, self._key(v, keep, depth + 1))
                                  for k, v in sorted(obj.items()))
        hash(obj)
        return kind, obj

    def _clean(self, func, args, kwargs, inplace: bool):
        """``func`` applied to the unoccluded values (memoized across batches)."""
        keep: list = []
        try:
            key = (func, self._key(args, keep), self._key(kwargs, keep))
        except TypeError:
            key = None
        if key is not None and key in self._memo:
            return self._memo[key][0]
        first = [True]

        def clean(t):
            state = self._state(t)
            if not isinstance(state, _Patch):
                return t
            if inplace and first[0]:
                first[0] = False
                return state.clean.clone()
            return state.clean

        cargs = self._map(args, clean)
        ckwargs = self._map(kwargs, clean)
        out = func(*cargs, **ckwargs)
        if key is not None:
            # keep every keyed tensor alive so that its id cannot be reused
            self._memo[key] = (out, keep)
        return out

    def _padded_clean(self, clean: torch.Tensor, pads: tuple[int, int, int, int], value: float
                      ) -> torch.Tensor:
        """``clean`` padded (top, bottom, left, right) with ``value``, as ``[rows, C]`` HWC."""
        key = (id(clean), pads, value)
        hit = self._padded.get(key)
        if hit is not None:
            return hit[0]
        t, b, l, r = pads
        x = clean[0]
        if any(pads):
            x = F.pad(x, (l, r, t, b), value=value)
        flat = x.permute(1, 2, 0).reshape(-1, x.shape[0]).contiguous()
        self._padded[key] = (flat, clean)
        return flat

    def _gather(self, st: _Patch, T: np.ndarray, L: np.ndarray, hw: int, ww: int,
                pad_value: float = 0.0) -> torch.Tensor:
        """Window ``[N, C, hw, ww]`` of every image at corners ``(T[n], L[n])``.

        Corners may lie up to the padding outside the map; those pixels get ``pad_value``.
        The result is channels-last.
        """
        if (hw == st.h and ww == st.w and np.array_equal(T, st.top)
                and np.array_equal(L, st.left)):
            return st.patch
        clean = st.clean
        c, H, W = clean.shape[1:]
        n = st.n
        pads = (int(max(0, -T.min())), int(max(0, T.max() + hw - H)),
                int(max(0, -L.min())), int(max(0, L.max() + ww - W)))
        src = self._padded_clean(clean, pads, pad_value)
        Wp = W + pads[2] + pads[3]
        rows = T[:, None] + np.arange(hw)
        cols = L[:, None] + np.arange(ww)
        idx = ((rows + pads[0]) * Wp)[:, :, None] + (cols + pads[2])[:, None, :]
        dev = clean.device
        out = src.index_select(0, torch.from_numpy(idx.reshape(-1)).to(dev))
        # paste each image's patch where it falls inside its window
        pr = st.top - T  # patch corner inside the window
        pc = st.left - L
        vals = st.patch.permute(0, 2, 3, 1).reshape(-1, c)
        base = np.arange(n)[:, None, None] * (hw * ww)
        if (pr.min() >= 0 and pc.min() >= 0 and (pr + st.h).max() <= hw
                and (pc + st.w).max() <= ww):
            dst = base + ((pr[:, None] + np.arange(st.h)) * ww)[:, :, None] \
                + (pc[:, None] + np.arange(st.w))[:, None, :]
            out.index_copy_(0, torch.from_numpy(dst.reshape(-1)).to(dev), vals)
        else:
            prow = rows - st.top[:, None]  # patch row of each window row
            pcol = cols - st.left[:, None]
            inside = ((prow >= 0) & (prow < st.h))[:, :, None] & \
                     ((pcol >= 0) & (pcol < st.w))[:, None, :]
            if inside.any():
                psrc = (np.arange(n)[:, None, None] * (st.h * st.w)
                        + (prow * st.w)[:, :, None] + pcol[:, None, :])
                dst = base + (np.arange(hw)[:, None] * ww + np.arange(ww)[None, :])[None]
                sel = inside.reshape(-1)
                out.index_copy_(0, torch.from_numpy(dst.reshape(-1)[sel]).to(dev),
                                vals.index_select(0, torch.from_numpy(psrc.reshape(-1)[sel]).to(dev)))
        return out.view(n, hw, ww, c).permute(0, 3, 1, 2)

    def _emit(self, func, args, kwargs, clean_out, patch, top, left, inplace_target, owned,
              shape=None):
        """Check a handler's result against the clean output and return the placeholder.

        ``patch`` is a tensor, or a :class:`_Pending` convolution whose result has ``shape``.
        """
        if isinstance(patch, _Pending):
            dtype = patch.window.dtype
        else:
            shape, dtype = tuple(patch.shape), patch.dtype
        if not (isinstance(clean_out, torch.Tensor) and clean_out.dim() == 4
                and clean_out.shape[0] == 1 and len(shape) == 4
                and shape[1] == clean_out.shape[1] and dtype == clean_out.dtype
                and shape[2] <= clean_out.shape[2] and shape[3] <= clean_out.shape[3]
                and top.min() >= 0 and left.min() >= 0
                and (top + shape[2]).max() <= clean_out.shape[2]
                and (left + shape[3]).max() <= clean_out.shape[3]):
            raise _Fallback
        state = _Patch(clean_out, patch, top, left, owned, shape)
        if inplace_target is not None:
            self._set_state(inplace_target, state)
            return inplace_target
        return self._track(state)

    def _fold(self, weight, bias, mean, var, gamma, beta, eps):
        """Convolution weights with an eval-mode batch norm folded in (cached per sweep)."""
        key = ("fold", id(weight), id(bias), id(mean), id(var), id(gamma), id(beta), float(eps))
        hit = self._padded.get(key)
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
        self._padded[key] = (w, b, weight, bias, mean, var, gamma, beta)
        return w, b


# =========================================================================== handlers

def _window_axis(t: np.ndarray, h: int, size_in: int, n_out: int, k: int, s: int, p: int, d: int):
    """Output window on one axis of a strided window op, and the input window it needs.

    Returns ``(out_start[N], out_len, in_start[N], in_len)``; input starts are in unpadded
    coordinates (``-p`` is the first padded row).
    """
    reach = d * (k - 1)
    r_min = -((-(t + p - reach)) // s)  # ceil
    r_max = (t + h - 1 + p) // s
    r_min = np.clip(r_min, 0, n_out - 1)
    r_max = np.clip(r_max, 0, n_out - 1)
    out_len = int(max(1, (r_max - r_min + 1).max()))
    out_len = min(out_len, n_out)
    start = np.clip(r_min, 0, n_out - out_len)
    return start, out_len, start * s - p, (out_len - 1) * s + reach + 1


def _spatial(mode: IncrementalMode, func, args, kwargs, *, kernel, stride, padding, dilation,
             pad_value, run, lazy=None):
    """Shared body of convolution / pooling: compute each image's output window only."""
    x = args[0]
    st = mode._state(x)
    if not isinstance(st, _Patch) or st.clean.dim() != 4 or mode._any_tracked(args[1:]) \
            or mode._any_tracked(kwargs):
        raise _Fallback
    clean_out = mode._clean(func, args, kwargs, False)
    if not isinstance(clean_out, torch.Tensor) or clean_out.dim() != 4:
        raise _Fallback
    H, W = st.clean.shape[2:]
    Ho, Wo = clean_out.shape[2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1 != Ho or \
            (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1 != Wo:
        raise _Fallback
    if st.h == H and st.w == W:
        # the whole map is dirty: run the op with its own padding, no gather
        zeros = np.zeros(st.n, np.int64)
        if lazy is not None:
            pending = lazy(st.patch, (ph, pw))
            return mode._emit(func, args, kwargs, clean_out, pending, zeros, zeros, None, True,
                              (st.n, clean_out.shape[1], Ho, Wo))
        out = func(st.patch, *args[1:], **kwargs)
        if not isinstance(out, torch.Tensor) or out.shape[2:] != (Ho, Wo):
            raise _Fallback
        return mode._emit(func, args, kwargs, clean_out, out, zeros, zeros, None, True)
    r0, ho, ti, hi = _window_axis(st.top, st.h, H, Ho, kh, sh, ph, dh)
    c0, wo, li, wi = _window_axis(st.left, st.w, W, Wo, kw, sw, pw, dw)
    if ho * wo > (1.0 - mode.min_saving) * Ho * Wo:
        r0, ho, ti, hi = np.zeros_like(r0), Ho, np.full_like(r0, -ph), (Ho - 1) * sh + dh * (kh - 1) + 1
        c0, wo, li, wi = np.zeros_like(c0), Wo, np.full_like(c0, -pw), (Wo - 1) * sw + dw * (kw - 1) + 1
    window = mode._gather(st, ti, li, hi, wi, pad_value)
    if lazy is not None:
        return mode._emit(func, args, kwargs, clean_out, lazy(window, (0, 0)), r0, c0, None, True,
                          (st.n, clean_out.shape[1], ho, wo))
    out = run(window)
    if out.shape[2:] != (ho, wo):
        raise _Fallback
    return mode._emit(func, args, kwargs, clean_out, out, r0, c0, None, True)


def _conv_handler(mode, func, args, kwargs):
    weight = call_arg(args, kwargs, 1, "weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise _Fallback
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
            raise _Fallback
    padding = _pair(padding)

    def run(window):
        return F.conv2d(window, weight, bias, stride, 0, dilation, groups)

    def lazy(window, pad):
        return _Pending(window, weight, bias, pad, stride, dilation, groups)

    return _spatial(mode, func, args, kwargs, kernel=k, stride=stride, padding=padding,
                    dilation=dilation, pad_value=0.0, run=run,
                    lazy=lazy if mode.fuse and isinstance(bias, (torch.Tensor, type(None)))
                    else None)


def _max_pool_handler(mode, func, args, kwargs):
    kernel, stride, padding, dilation = map(_pair, pool_args(args, kwargs, has_dilation=True))
    if call_arg(args, kwargs, 5, "ceil_mode", False) or call_arg(args, kwargs, 6, "return_indices", False):
        raise _Fallback
    if not args[0].is_floating_point():
        raise _Fallback

    def run(window):
        return F.max_pool2d(window, kernel, stride, 0, dilation)

    return _spatial(mode, func, args, kwargs, kernel=kernel, stride=stride, padding=padding,
                    dilation=dilation, pad_value=-math.inf, run=run)


def _avg_pool_handler(mode, func, args, kwargs):
    kernel, stride, padding, _ = map(_pair, pool_args(args, kwargs, has_dilation=False))
    if call_arg(args, kwargs, 4, "ceil_mode", False) or call_arg(args, kwargs, 6, "divisor_override") \
            is not None:
        raise _Fallback
    if any(padding) and not call_arg(args, kwargs, 5, "count_include_pad", True):
        raise _Fallback

    def run(window):
        return F.avg_pool2d(window, kernel, stride, 0)

    return _spatial(mode, func, args, kwargs, kernel=kernel, stride=stride, padding=padding,
                    dilation=(1, 1), pad_value=0.0, run=run)


def _pad_handler(mode, func, args, kwargs):
    x = args[0]
    st = mode._state(x)
    pad = list(call_arg(args, kwargs, 1, "pad", ()))
    if not isinstance(st, _Patch) or call_arg(args, kwargs, 2, "mode", "constant") != "constant" \
            or len(pad) not in (2, 4) or min(pad) < 0 or isinstance(call_arg(args, kwargs, 3, "value"),
                                                                    torch.Tensor):
        raise _Fallback
    pad += [0] * (4 - len(pad))
    clean_out = mode._clean(func, args, kwargs, False)
    st.owned = False
    return mode._emit(func, args, kwargs, clean_out, st.patch, st.top + pad[2],
                      st.left + pad[0], None, False)


def _broadcast_ok(t, full_shape) -> bool:
    """A plain tensor / number that is the same for every image and every position."""
    if not isinstance(t, torch.Tensor):
        return True
    if t.dim() > len(full_shape):
        return False
    shape = (1,) * (len(full_shape) - t.dim()) + tuple(t.shape)
    return shape[0] == 1 and shape[-1] == 1 and shape[-2] == 1


def _elementwise(mode: IncrementalMode, func, args, kwargs, data_positions, inplace: bool):
    """Unary and binary elementwise calls: compute on the union of the dirty windows only."""
    if kwargs.get("out") is not None:
        raise _Fallback
    if func in _TRAINING_ARG:
        i, name = _TRAINING_ARG[func]
        if bool(call_arg(args, kwargs, i, name, False)):
            raise _Fallback
    data = []  # (container, key) of the data arguments
    for pos in data_positions:
        if isinstance(pos, int):
            if pos < len(args):
                data.append(("a", pos, args[pos]))
        elif pos in kwargs:
            data.append(("k", pos, kwargs[pos]))
    states = [(where, key, v, mode._state(v)) for where, key, v in data]
    tracked = [s for s in states if s[3] is not None]
    if not tracked or any(not isinstance(s[3], _Patch) for s in tracked):
        raise _Fallback
    if len(tracked) == 1 and tracked[0][3].pending is not None and mode.fuse:
        fused = _fuse_into_conv(mode, func, args, kwargs, tracked[0][2], tracked[0][3], inplace)
        if fused is not None:
            return fused
    first = tracked[0][3]
    full = (first.n,) + tuple(first.clean.shape[1:])
    for _, _, v, s in states:
        if s is None and not _broadcast_ok(v, full):
            raise _Fallback
        if s is not None and (s.n != first.n or s.clean.shape[2:] != first.clean.shape[2:]
                              or s.clean.dim() != 4):
            raise _Fallback
    # the in-place target must be a tracked tensor (a plain tensor cannot absorb a batch)
    target = args[0] if inplace else None
    if inplace and not isinstance(mode._state(target), _Patch):
        raise _Fallback
    # non-data tensor arguments must be per-channel parameters, and never tracked
    for i, a in enumerate(args):
        if i not in data_positions and isinstance(a, torch.Tensor):
            if func not in _PARAM_ARGS or mode._state(a) is not None:
                raise _Fallback
    for k, a in kwargs.items():
        if k not in data_positions and isinstance(a, torch.Tensor):
            if func not in _PARAM_ARGS or mode._state(a) is not None:
                raise _Fallback
    if func in _DROPOUTS:  # eval-mode dropout is the identity
        if inplace:
            return target
        first.owned = False
        return mode._emit(func, args, kwargs, first.clean, first.patch, first.top, first.left,
                          None, False)
    clean_out = mode._clean(func, args, kwargs, inplace)
    # the union of the windows, same size for every image
    if len(tracked) == 1:
        top, left, h, w = first.top, first.left, first.h, first.w
    else:
        tops = np.stack([s[3].top for s in tracked])
        lefts = np.stack([s[3].left for s in tracked])
        bottoms = np.stack([s[3].top + s[3].h for s in tracked])
        rights = np.stack([s[3].left + s[3].w for s in tracked])
        y0, x0 = tops.min(0), lefts.min(0)
        H, W = first.clean.shape[2:]
        h = int((bottoms.max(0) - y0).max())
        w = int((rights.max(0) - x0).max())
        top, left = np.clip(y0, 0, H - h), np.clip(x0, 0, W - w)
    swapped_patches = []
    new_args, new_kwargs = list(args), dict(kwargs)
    for where, key, v, s in states:
        if s is None:
            continue
        window = mode._gather(s, top, left, h, w)
        if inplace and v is target and window is s.patch and not s.owned:
            window = window.clone()
        swapped_patches.append(window)
        if where == "a":
            new_args[key] = window
        else:
            new_kwargs[key] = window
    out = func(*new_args, **new_kwargs)
    if not isinstance(out, torch.Tensor):
        raise _Fallback
    owned = not any(out.untyped_storage().data_ptr() == s.patch.untyped_storage().data_ptr()
                    for *_, s in tracked)
    if inplace:
        owned = True
    elif not owned:
        for *_, s in tracked:
            s.owned = False
    return mode._emit(func, args, kwargs, clean_out, out, top, left,
                      target if inplace else None, owned)


_RELUS = {F.relu, torch.relu, _T.relu, torch.relu_, _T.relu_, F.relu_}
_HARDTANHS = {F.hardtanh, F.hardtanh_, F.relu6}


def _fuse_into_conv(mode, func, args, kwargs, x, st: _Patch, inplace: bool):
    """Fold a batch norm / ReLU / ReLU6 applied to a pending convolution into it, or None."""
    pending = st.pending
    if args[0] is not x or pending.post is not None:
        return None
    new = None
    if func is F.batch_norm and not pending.folded:
        mean, var = call_arg(args, kwargs, 1, "running_mean"), call_arg(args, kwargs, 2, "running_var")
        gamma, beta = call_arg(args, kwargs, 3, "weight"), call_arg(args, kwargs, 4, "bias")
        eps = call_arg(args, kwargs, 7, "eps", 1e-5)
        if not all(isinstance(t, torch.Tensor) and t.dim() == 1
                   and t.numel() == st.shape[1] and mode._state(t) is None
                   for t in (mean, var, gamma, beta) if t is not None) \
                or mean is None or var is None or isinstance(eps, torch.Tensor):
            return None
        new = pending.copy()
        new.weight, new.bias = mode._fold(pending.weight, pending.bias, mean, var, gamma, beta,
                                          eps)
        new.folded = True
    elif func in _RELUS:
        new = pending.copy()
        new.post = ("relu",)
    elif func in _HARDTANHS:
        if func is F.relu6:
            lo, hi = 0.0, 6.0
        else:
            lo = call_arg(args, kwargs, 1, "min_val", -1.0)
            hi = call_arg(args, kwargs, 2, "max_val", 1.0)
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float))) or float(lo) != 0.0:
            return None
        new = pending.copy()
        new.post = ("hardtanh", 0.0, float(hi))
    if new is None:
        return None
    clean_out = mode._clean(func, args, kwargs, inplace)
    return mode._emit(func, args, kwargs, clean_out, new, st.top, st.left,
                      x if inplace else None, True, st.shape)


def _unary_handler(mode, func, args, kwargs):
    if func in (torch.clamp, _T.clamp, torch.clip, _T.clip, _T.clamp_, _T.clip_):
        if any(isinstance(call_arg(args, kwargs, i, n), torch.Tensor) for i, n in ((1, "min"), (2, "max"))):
            raise _Fallback
    return _elementwise(mode, func, args, kwargs, (0, "input"), _inplace(func, args, kwargs))


def _binary_handler(mode, func, args, kwargs):
    return _elementwise(mode, func, args, kwargs, (0, 1, "input", "other"),
                        _inplace(func, args, kwargs))


def _cat_handler(mode, func, args, kwargs):
    tensors = call_arg(args, kwargs, 0, "tensors")
    dim = call_arg(args, kwargs, 1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or dim not in (1, -3) \
            or kwargs.get("out") is not None:
        raise _Fallback
    states = [mode._state(t) for t in tensors]
    if any(not isinstance(s, _Patch) or s.clean.dim() != 4 for s in states):
        raise _Fallback
    first = states[0]
    if any(s.n != first.n or s.clean.shape[2:] != first.clean.shape[2:] for s in states):
        raise _Fallback
    clean_out = mode._clean(func, args, kwargs, False)
    H, W = first.clean.shape[2:]
    y0 = np.min([s.top for s in states], 0)
    x0 = np.min([s.left for s in states], 0)
    h = int((np.max([s.top + s.h for s in states], 0) - y0).max())
    w = int((np.max([s.left + s.w for s in states], 0) - x0).max())
    top, left = np.clip(y0, 0, H - h), np.clip(x0, 0, W - w)
    out = torch.cat([mode._gather(s, top, left, h, w) for s in states], 1)
    return mode._emit(func, args, kwargs, clean_out, out, top, left, None, True)


_HANDLERS: dict = {}
for _f in (torch.conv2d, F.conv2d):
    _HANDLERS[_f] = _conv_handler
for _f in (F.max_pool2d, torch.max_pool2d):
    _HANDLERS[_f] = _max_pool_handler
for _f in (F.avg_pool2d, torch._C._nn.avg_pool2d):
    _HANDLERS[_f] = _avg_pool_handler
_HANDLERS[F.pad] = _pad_handler
for _f in list(_UNARY) + list(_UNARY_INPLACE):
    _HANDLERS[_f] = _unary_handler
for _f in list(_BINARY) + list(_BINARY_INPLACE):
    _HANDLERS[_f] = _binary_handler
_HANDLERS[torch.cat] = _cat_handler
_HANDLERS[torch.concat] = _cat_handler
_HANDLERS[torch.concatenate] = _cat_handler
del _f


# =========================================================================== sweeps

@dataclass
class OcclusionResult:
    """Occlusion maps of one image (the paper's Fig. 7 b, d, e).

    Map entry ``[i, j]`` belongs to the occluder whose top-left corner is
    ``(rows[i], cols[j])`` in the model's input (see :meth:`extent` to draw it over the image).

    Attributes
    ----------
    prob : numpy.ndarray
        ``[R, C]`` probability of ``target`` with the occluder there (Fig. 7 d).
    top_class : numpy.ndarray
        ``[R, C]`` most probable class id (Fig. 7 e); names in ``labels``.
    top_prob : numpy.ndarray
        ``[R, C]`` probability of that class.
    feature : numpy.ndarray or None
        ``[R, C]`` total activation of ``channel`` of ``layer`` (Fig. 7 b); ``None`` when the
        sweep ran without a layer.
    layer : str or None
        Layer id of ``feature``.
    channel : int or None
        Feature map of ``layer``; by default its strongest on the unoccluded image.
    target : int
        Class whose probability ``prob`` holds; by default the unoccluded top class.
    target_label : str
        Its name.
    size, stride : int
        Occluder side and step, input pixels.
    rows, cols : numpy.ndarray
        Occluder corners (top, left) of the map's rows and columns.
    image_shape : tuple of int
        Input ``(H, W)``.
    base_prob : float
        ``P(target)`` without occluder.
    base_class : int
        Most probable class without occluder.
    base_feature : float or None
        The feature total without occluder.
    labels : dict of int to str
        Names of ``target``, ``base_class`` and every class in ``top_class``.
    features : numpy.ndarray or None
        ``[R, C, channels]``: the total of *every* channel of ``layer`` (so that another channel
        costs nothing: :meth:`for_channel`).
    base_features : numpy.ndarray or None
        ``[channels]`` totals without occluder.
    fill : str or float
        Occluder fill as requested.
    method : str
        ``"incremental"`` or ``"plain"`` (how it was computed; the values agree).
    seconds : float
        Wall time of the sweep.
    """

    prob: np.ndarray
    top_class: np.ndarray
    top_prob: np.ndarray
    feature: np.ndarray | None
    layer: str | None
    channel: int | None
    target: int
    target_label: str
    size: int
    stride: int
    rows: np.ndarray
    cols: np.ndarray
    image_shape: tuple[int, int]
    base_prob: float
    base_class: int
    base_feature: float | None
    labels: dict[int, str] = field(default_factory=dict)
    features: np.ndarray | None = field(default=None, repr=False)
    base_features: np.ndarray | None = field(default=None, repr=False)
    fill: str | float = "gray"
    method: str = "incremental"
    seconds: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        """Map shape ``(R, C)``."""
        return self.prob.shape

    def for_channel(self, channel: int) -> OcclusionResult:
        """The same maps with ``feature`` showing another channel of ``layer`` (no recompute).

        Raises
        ------
        OutOfRangeError
            If ``channel`` is not a channel of ``layer``.
        """
        if self.features is None:
            raise BadParameterError("this result has no feature maps (it was computed without "
                                    "a layer)")
        channel = _check_int("channel", channel)
        count = self.features.shape[-1]
        if not 0 <= channel < count:
            raise OutOfRangeError(f"channel {channel} is out of range for layer {self.layer!r} "
                                  f"({count} channels: 0..{count - 1})")
        return replace(self, channel=channel, feature=self.features[..., channel],
                       base_feature=float(self.base_features[channel]))

    def corner(self, i: int, j: int) -> tuple[int, int]:
        """Occluder corner ``(top, left)`` of map entry ``[i, j]``."""
        return int(self.rows[i]), int(self.cols[j])

    def index_of(self, y: float, x: float) -> tuple[int, int]:
        """Map entry whose occluder centre is nearest to input pixel ``(y, x)``."""
        half = (self.size - 1) / 2
        i = int(np.clip(np.rint((y - half - self.rows[0]) / self.stride), 0, len(self.rows) - 1))
        j = int(np.clip(np.rint((x - half - self.cols[0]) / self.stride), 0, len(self.cols) - 1))
        return i, j

    def extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` for ``imshow`` over the input image.

        Each map cell is centred on the centre of its occluder and is ``stride`` wide, in the
        coordinates of an image drawn by ``imshow`` (pixel ``k`` centred at ``k``).
        """
        half = (self.size - 1) / 2
        s = self.stride
        return (float(self.cols[0] + half - s / 2), float(self.cols[-1] + half + s / 2),
                float(self.rows[-1] + half + s / 2), float(self.rows[0] + half - s / 2))

    def classes(self) -> list[tuple[int, str, int]]:
        """Classes of ``top_class`` as ``(class_id, label, count)``, most frequent first."""
        ids, counts = np.unique(self.top_class, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return [(int(ids[k]), self.labels.get(int(ids[k]), f"class {int(ids[k])}"),
                 int(counts[k])) for k in order]

    def heatmap(self, which: str = "prob") -> np.ndarray:
        """A map at input resolution: each pixel averages the entries of the occluders covering it.

        Parameters
        ----------
        which : {"prob", "feature", "top_prob", "drop"}
            ``"drop"`` is ``base_prob - prob`` (how much hiding a pixel costs the target).

        Returns
        -------
        numpy.ndarray
            ``[H, W]`` float32; NaN where no occluder ever covered the pixel.
        """
        values = {"prob": self.prob, "feature": self.feature, "top_prob": self.top_prob,
                  "drop": None if self.prob is None else self.base_prob - self.prob}.get(which)
        if values is None:
            raise BadParameterError(f"heatmap of {which!r} is not available; choose prob, "
                                    "feature, top_prob or drop")
        H, W = self.image_shape
        acc = np.zeros((H + 1, W + 1), np.float64)
        cnt = np.zeros((H + 1, W + 1), np.float64)
        s = self.size
        for i, top in enumerate(self.rows):  # 2-d difference arrays: O(R*C + H*W)
            for j, left in enumerate(self.cols):
                v = float(values[i, j])
                for arr, val in ((acc, v), (cnt, 1.0)):
                    arr[top, left] += val
                    arr[top, left + s] -= val
                    arr[top + s, left] -= val
                    arr[top + s, left + s] += val
        acc = acc.cumsum(0).cumsum(1)[:H, :W]
        cnt = cnt.cumsum(0).cumsum(1)[:H, :W]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(cnt > 0.5, acc / np.maximum(cnt, 1), np.nan)
        return out.astype(np.float32)


@contextlib.contextmanager
def _layer_totals(model: nn.Module, layer: str | None, reduce):
    """For the block: ``box["value"] = reduce(output)`` for the 4-d output of ``layer`` (a
    :func:`~zfwidgets.backend.layers.capture` hook; nothing when ``layer`` is ``None``)."""
    box: dict = {"value": None}
    if layer is None:
        yield box
        return

    def on_output(_, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            box["value"] = reduce(output)

    with capture(model, [layer], on_output):
        yield box


def _plain_total(t: torch.Tensor) -> torch.Tensor:
    """Per-image total of every channel, ``[N, C]``."""
    return t.detach().flatten(2).sum(2)


def occlusion_batch_size(method: str) -> int:
    """Positions per forward pass: 32 for the incremental engine, 16 for plain batches."""
    return 32 if method == "incremental" else 16


class OcclusionSweep:
    """An occlusion sweep that runs one batch at a time (for widgets that stay responsive).

    Construction validates everything and runs the unoccluded pass; :meth:`step` runs the next
    batch; :meth:`result` assembles the maps once :attr:`done`. :func:`occlusion_maps` simply
    steps through it; a widget can step from its event loop and drop a superseded sweep.

    Parameters are those of :func:`occlusion_maps` (without the callbacks).

    Attributes
    ----------
    total : int
        Occluder positions.
    done_count : int
        Positions computed so far.
    method : str
        ``"incremental"`` or ``"plain"``.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, size: int = 32, stride: int = 8, *,
                 target: int | None = None, layer: str | None = None,
                 channel: int | None = None, fill: torch.Tensor | float = 0.0,
                 batch_size: int | None = None, method: str = "auto",
                 labels: Sequence[str] | None = None,
                 known_layers: Sequence[str] | None = None):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise BadParameterError(f"x must be one input [1, C, H, W], got {shape}")
        H, W = int(x.shape[2]), int(x.shape[3])
        self.rows, self.cols = occlusion_grid(H, W, size, stride)
        self.size, self.stride = int(size), int(stride)
        if method not in ("auto", "incremental", "plain"):
            raise BadParameterError(f"unknown method {method!r}; choose auto, incremental or plain")
        self._auto = method == "auto"
        if method == "auto":
            method = "incremental" if x.device.type == "cpu" and not _has_hooks(model) else "plain"
        self.method = method
        if batch_size is None:
            batch_size = occlusion_batch_size(method)
        batch_size = _check_int("batch_size", batch_size)
        if batch_size < 1:
            raise BadParameterError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        if not isinstance(fill, torch.Tensor):
            fill = fill_tensor(fill, x)
        self.fill = fill.to(device=x.device, dtype=x.dtype).reshape(1, x.shape[1], 1, 1)
        self.model, self.x, self.layer, self.labels = model, x, layer, labels
        if layer is not None:
            resolve_layer(model, layer, known_layers)  # UnknownLayerError before any work
        self._start = time.perf_counter()
        self._elapsed = 0.0

        # the unoccluded pass: base prediction, feature map, defaults
        with torch.inference_mode(), scoped_eval(model), \
                _layer_totals(model, layer, _plain_total) as hook:
            base_logits = _logits(model(x))
        base_probs = torch.softmax(base_logits.float(), 1)[0]
        num_classes = base_probs.numel()
        self.base_class = int(base_probs.argmax())
        if target is None:
            target = self.base_class
        target = _check_int("target", target)
        if not 0 <= target < num_classes:
            raise OutOfRangeError(f"target class {target} is out of range: the model has "
                                  f"{num_classes} classes (0..{num_classes - 1})")
        self.target = target
        self.base_prob = float(base_probs[target])
        self.base_feature = None
        self.base_features = None
        if layer is not None:
            if hook["value"] is None:
                raise UnknownLayerError(layer, known_layers or [])
            totals = hook["value"][0]
            self.base_features = totals.float().cpu().numpy()
            if channel is None:
                channel = int(totals.argmax())
            channel = _check_int("channel", channel)
            if not 0 <= channel < totals.numel():
                raise OutOfRangeError(f"channel {channel} is out of range for layer {layer!r} "
                                      f"({totals.numel()} channels: 0..{totals.numel() - 1})")
            self.base_feature = float(totals[channel])
        self.channel = channel

        self.corners = [(int(r), int(c)) for r in self.rows for c in self.cols]
        self.total = len(self.corners)
        self.done_count = 0
        self._probs = np.empty(self.total, np.float32)
        self._top = np.empty(self.total, np.int64)
        self._top_p = np.empty(self.total, np.float32)
        self._feats = (np.empty((self.total, len(self.base_features)), np.float32)
                       if layer is not None else None)
        self._engine = IncrementalMode() if method == "incremental" else None
        self._elapsed += time.perf_counter() - self._start

    @property
    def done(self) -> bool:
        """Whether every position has been computed."""
        return self.done_count >= self.total

    def step(self) -> int:
        """Run the next batch of positions; returns how many positions are done."""
        if self.done:
            return self.done_count
        t0 = time.perf_counter()
        b = self.done_count
        chunk = self.corners[b:b + self.batch_size]
        try:
            logits, feat = _run_batch(self.model, self.x, chunk, self.size, self.fill,
                                      self.layer, self._engine)
        except ZFError:
            raise
        except Exception as exc:
            if not (self._auto and self._engine is not None):
                raise
            # a model the incremental engine trips over: finish with plain forward passes
            warnings.warn(f"incremental occlusion failed on this model ({type(exc).__name__}: "
                          f"{exc}); continuing with plain forward passes", RuntimeWarning,
                          stacklevel=2)
            self._engine, self.method = None, "plain"
            logits, feat = _run_batch(self.model, self.x, chunk, self.size, self.fill,
                                      self.layer, None)
        p = torch.softmax(logits.float(), 1)
        n = len(chunk)
        self._probs[b:b + n] = p[:, self.target].cpu().numpy()
        tp, tc = p.max(1)
        self._top[b:b + n] = tc.cpu().numpy()
        self._top_p[b:b + n] = tp.cpu().numpy()
        if self._feats is not None:
            self._feats[b:b + n] = feat.float().cpu().numpy()
        self.done_count = b + n
        self._elapsed += time.perf_counter() - t0
        return self.done_count

    def result(self) -> OcclusionResult:
        """The maps; raises ``BadParameterError`` if the sweep is not finished."""
        if not self.done:
            raise BadParameterError(f"the sweep has computed {self.done_count} of {self.total} "
                                    "positions; call step() until done")
        self._engine = None  # drop the memoized clean tensors
        shape = (len(self.rows), len(self.cols))
        top = self._top.reshape(shape)
        labels = self.labels
        names = {}
        for cid in sorted(set(np.unique(top).tolist()) | {self.target, self.base_class}):
            cid = int(cid)
            names[cid] = class_name(labels, cid)
        return OcclusionResult(
            prob=self._probs.reshape(shape), top_class=top, top_prob=self._top_p.reshape(shape),
            feature=None if self._feats is None else self._feats[:, self.channel].reshape(shape),
            features=None if self._feats is None else self._feats.reshape(shape + (-1,)),
            base_features=self.base_features,
            layer=self.layer, channel=self.channel, target=self.target,
            target_label=names[self.target], size=self.size, stride=self.stride, rows=self.rows,
            cols=self.cols, image_shape=(int(self.x.shape[2]), int(self.x.shape[3])),
            base_prob=self.base_prob, base_class=self.base_class,
            base_feature=self.base_feature, labels=names, method=self.method,
            seconds=self._elapsed)


def occlusion_maps(model: nn.Module, x: torch.Tensor, size: int = 32, stride: int = 8, *,
                   target: int | None = None, layer: str | None = None,
                   channel: int | None = None, fill: torch.Tensor | float = 0.0,
                   batch_size: int | None = None, method: str = "auto",
                   progress: bool = False, on_progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   labels: Sequence[str] | None = None, known_layers: Sequence[str] | None = None,
                   ) -> OcclusionResult:
    """Occlusion sweep of one input over any classifier ``nn.Module``.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``[N, classes]``; run in eval mode, left exactly as it was.
    x : torch.Tensor
        Normalized input ``[1, C, H, W]``.
    size, stride : int
        Occluder side and step (see :func:`occlusion_grid`).
    target : int, optional
        Class for ``prob``; default the unoccluded top class.
    layer : str, optional
        Layer id for the feature map; ``None`` skips the feature.
    channel : int, optional
        Channel of ``layer``; default the one with the largest total activation unoccluded.
    fill : tensor ``[1, C, 1, 1]`` or float
        Occluder value in normalized space.
    batch_size : int, optional
        Occluded images per forward pass (default :func:`occlusion_batch_size`).
    method : {"auto", "incremental", "plain"}
        ``"incremental"`` recomputes only what each occluder changes (:class:`IncrementalMode`);
        ``"plain"`` runs every occluded copy through the model; ``"auto"`` is incremental on the
        CPU and plain elsewhere (and for a model carrying forward hooks of its own, which would
        see the engine's placeholders). Both give the same values (up to float rounding).
    progress : bool
        Show a ``tqdm`` progress bar.
    on_progress : callable, optional
        ``on_progress(done, total)`` after each batch.
    should_stop : callable, optional
        Checked before each batch; when it returns true the sweep raises :class:`Cancelled`.
    labels : sequence of str, optional
        Class names for the result.
    known_layers : sequence of str, optional
        Valid layer ids, for error messages.

    Returns
    -------
    OcclusionResult

    Raises
    ------
    BadParameterError, OutOfRangeError, UnknownLayerError
        For an impossible size or stride, a class or channel out of range, an unknown layer.
    Cancelled
        When ``should_stop`` asked to stop.
    """
    sweep = OcclusionSweep(model, x, size, stride, target=target, layer=layer, channel=channel,
                           fill=fill, batch_size=batch_size, method=method, labels=labels,
                           known_layers=known_layers)
    return _drive(sweep, progress, on_progress, should_stop)


def _drive(sweep: OcclusionSweep, progress, on_progress, should_stop) -> OcclusionResult:
    bar = _progress_bar(sweep.total, progress, sweep.size, sweep.stride)
    try:
        while not sweep.done:
            if should_stop is not None and should_stop():
                raise Cancelled(f"occlusion sweep (size {sweep.size}, stride {sweep.stride}) was "
                                f"cancelled after {sweep.done_count} of {sweep.total} positions")
            before = sweep.done_count
            sweep.step()
            if bar is not None:
                bar.update(sweep.done_count - before)
            if on_progress is not None:
                on_progress(sweep.done_count, sweep.total)
    finally:
        if bar is not None:
            bar.close()
    return sweep.result()


def _has_hooks(model: nn.Module) -> bool:
    """Whether the user put forward hooks on the model (they would see placeholders)."""
    from torch.nn.modules import module as _m

    if any(getattr(_m, name, None) for name in ("_global_forward_hooks",
                                                   "_global_forward_pre_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _logits(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise BadParameterError(
            "occlusion needs a classifier returning logits [N, classes], got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out


def _progress_bar(total: int, progress: bool, size: int, stride: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"occlusion {size}px/{stride}", unit="pos", leave=False)


def _eval_scope(model: nn.Module):
    """``scoped_eval`` when some module is in training mode; nothing to do otherwise."""
    if any(m.training for m in model.modules()):
        return scoped_eval(model)
    return contextlib.nullcontext()


def _run_batch(model, x, chunk, size, fill, layer, engine):
    """Logits ``[n, classes]`` and per-channel totals ``[n, C]`` of ``layer``'s output (``None``
    without a layer), for one batch of occluder corners."""
    tops = np.array([c[0] for c in chunk], np.int64)
    lefts = np.array([c[1] for c in chunk], np.int64)
    with torch.inference_mode(), _eval_scope(model):
        if engine is None:
            batch = occlude(x, chunk, size, fill)
            with _layer_totals(model, layer, _plain_total) as hook:
                logits = _logits(model(batch))
            return logits, hook["value"]
        with engine, _layer_totals(model, layer, engine.channel_totals) as hook:
            inp = engine.inputs(x, tops, lefts, size, fill)
            logits = _logits(engine.resolve(model(inp)))
        return logits, hook["value"]


# =========================================================================== the session entry

def _resolve_target(session, target) -> int | None:
    if target is None:
        return None
    if isinstance(target, str):
        labels = session.labels or []
        if target in labels:
            return labels.index(target)
        hint, _ = did_you_mean(target, labels, cutoff=0.6)
        raise BadParameterError(f"unknown target class {target!r}{hint}")
    return _check_int("target", target)


def occlusion_sweep(session, size: int = 32, stride: int = 8, target: int | str | None = None,
                    layer: str | None = None, fill: str | float = "gray", *,
                    channel: int | None = None, batch_size: int | None = None,
                    method: str = "auto") -> OcclusionSweep:
    """A step-by-step :class:`OcclusionSweep` of the session's image (see :func:`occlusion`)."""
    x = session.input_tensor
    occlusion_grid(int(x.shape[2]), int(x.shape[3]), size, stride)  # validates early
    if layer is None:
        layer = top_layer(session)
    session.layer_info(layer)  # UnknownLayerError with suggestions
    if channel is None:
        channel = session.strongest_channel(layer)
    else:
        session._check_unit(layer, _check_int("channel", channel))
    target = _resolve_target(session, target)
    pre = session.preprocessing
    fill_t = fill_tensor(fill, x, pre.mean, pre.std)
    sweep = OcclusionSweep(session.model, x, size, stride, target=target, layer=layer,
                           channel=channel, fill=fill_t, batch_size=batch_size, method=method,
                           labels=session.labels, known_layers=session.layers)
    sweep.fill_request = fill
    return sweep


def occlusion(session, size: int = 32, stride: int = 8, target: int | str | None = None,
              layer: str | None = None, fill: str | float = "gray", *, channel: int | None = None,
              batch_size: int | None = None, method: str = "auto", progress: bool = True,
              on_progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> OcclusionResult:
    """Occlusion sensitivity of the session's image (the paper's Fig. 7).

    A ``size`` x ``size`` square of ``fill`` is placed with its top-left corner at
    ``0, stride, 2 * stride, ...`` up to ``H - size`` on each axis, and the model is run on every
    occluded copy (incrementally: only the part of each layer that the square changes is
    recomputed; the values equal a plain loop over occluded copies).

    Parameters
    ----------
    session : Session
    size : int
        Occluder side in input pixels, ``1 <= size <= min(H, W)``.
    stride : int
        Step between occluder positions, ``>= 1``.
    target : int or str, optional
        Class (id or label) whose probability is mapped; default the unoccluded top class.
    layer : str, optional
        Layer for the feature map (Fig. 7 b); default :func:`~zfwidgets.backend.defaults.top_layer`
        (the model's top convolutional feature layer).
    fill : {"gray", "mean", "black", "white"} or float
        ``"gray"`` is the model's mean pixel, i.e. 0 in normalized input space (the paper's gray
        square); ``"mean"`` the image's own mean colour; ``"black"`` / ``"white"`` pixel 0 / 1;
        a float is a value in normalized input space.
    channel : int, optional
        Feature map of ``layer``; default :meth:`Session.strongest_channel` (strongest unoccluded).
    batch_size : int, optional
        Occluded images per forward pass.
    method : {"auto", "incremental", "plain"}
        See :func:`occlusion_maps`.
    progress : bool
        ``tqdm`` progress bar.
    on_progress : callable, optional
        ``on_progress(done, total)`` after each batch (widgets use this).
    should_stop : callable, optional
        Checked between batches; returning true stops the sweep with :class:`Cancelled`.

    Returns
    -------
    OcclusionResult

    Raises
    ------
    BadParameterError
        Size below 1 or above the image side, stride below 1, unknown fill or target label.
    OutOfRangeError
        Target class or channel out of range.
    UnknownLayerError
        ``layer`` is not one of the session's layers.
    Cancelled
        ``should_stop`` returned true.

    Examples
    --------
    >>> s = Session()                                        # doctest: +SKIP
    >>> r = s.occlusion(size=32, stride=8)                   # doctest: +SKIP
    >>> r.prob.shape, r.target_label                         # doctest: +SKIP
    ((25, 25), 'tiger cat')
    """
    sweep = occlusion_sweep(session, size, stride, target, layer, fill, channel=channel,
                            batch_size=batch_size, method=method)
    result = _drive(sweep, progress, on_progress, should_stop)
    result.fill = fill
    return result


def occluded_prediction(session, top: int, left: int, size: int, fill: str | float = "gray",
                        k: int = 5) -> list[tuple[int, str, float]]:
    """Top-``k`` classes of the session's image with one occluder: one forward pass.

    Parameters
    ----------
    session : Session
    top, left : int
        Occluder corner in input pixels (``0 <= top <= H - size``, likewise ``left``).
    size : int
        Occluder side.
    fill : see :func:`occlusion`
    k : int

    Returns
    -------
    list of (class_id, label, probability)
        Most probable first.

    Raises
    ------
    BadParameterError, OutOfRangeError
        For an impossible size or an occluder outside the image.
    """
    x = session.input_tensor
    H, W = int(x.shape[2]), int(x.shape[3])
    occlusion_grid(H, W, size, 1)
    top, left = _check_int("top", top), _check_int("left", left)
    if not (0 <= top <= H - size and 0 <= left <= W - size):
        raise OutOfRangeError(f"occluder corner {(top, left)} puts a {size}px square outside "
                              f"the {H}x{W} input (corners go up to {(H - size, W - size)})")
    pre = session.preprocessing
    fill_t = fill_tensor(fill, x, pre.mean, pre.std)
    model = session.model
    with torch.inference_mode(), scoped_eval(model):
        logits = _logits(model(occlude(x, [(top, left)], size, fill_t)))
    probs = torch.softmax(logits.float(), 1)[0]
    k = max(1, min(int(k), probs.numel()))
    values, ids = probs.topk(k)
    return [(int(i), session.label(int(i)), float(v)) for v, i in zip(values, ids)]


def fill_rgb(session, fill: str | float = "gray") -> tuple[float, float, float]:
    """The occluder colour as an RGB pixel in [0, 1] (for drawing it)."""
    x = session.input_tensor
    pre = session.preprocessing
    value = fill_tensor(fill, x, pre.mean, pre.std)
    rgb = pre.denormalize(value.reshape(1, -1, 1, 1))[0, :, 0, 0]
    return tuple(float(v) for v in rgb)
