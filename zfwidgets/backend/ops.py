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
* :data:`RECTIFIER_MODULES` are the ``nn.Module`` classes that apply one;
* :func:`refusal` is the allow-list of the deconvnet and guided rules: the ops through which
  they are defined (linear maps of the input, max-pool switches, the rectifiers) and why any
  other call on the path is refused;
* :func:`op_name` names a call for an error message; :class:`TensorTable` remembers which
  tensors a forward pass derived from the model's input (the rules and the geometry tracker
  both follow them);
* the op families of the geometry tracker (``GEO_CONV``, ``RESHAPE``, ``SPLIT`` ...,
  :func:`is_pointwise`): what each kind of op does to the positions of a map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ALLOWED_FUNCS", "FACTORIES", "RECTIFIER_MODULES", "WRITES", "Rectifier", "TensorTable", "call_arg", "op_name", "pool_args",
           "rectifier_call", "refusal", "tensors_in", "torch_funcs"]


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


# ============================================================================ derived tensors

def tensors_in(obj, depth: int = 0):
    """The tensors in a call's argument: a tensor, or inside (nested) lists / tuples / dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)) and depth < 3:
        for item in obj:
            yield from tensors_in(item, depth + 1)
    elif isinstance(obj, dict) and depth < 3:
        for item in obj.values():
            yield from tensors_in(item, depth + 1)


class TensorTable:
    """Tensors seen during one forward pass, each with a payload (what a mode knows of it).

    Keyed by ``id`` with the tensor itself kept, so that an id reused by a later tensor is never
    mistaken for the first one. Use it for one forward pass and drop it.
    """

    def __init__(self):
        self._table: dict[int, tuple[torch.Tensor, object]] = {}

    def __contains__(self, t) -> bool:
        entry = self._table.get(id(t))
        return entry is not None and entry[0] is t

    def get(self, t, default=None):
        """Payload of ``t``, or ``default`` when ``t`` was not seen."""
        entry = self._table.get(id(t))
        return default if entry is None or entry[0] is not t else entry[1]

    def put(self, t: torch.Tensor, payload) -> None:
        """Remember ``t`` with ``payload``."""
        self._table[id(t)] = (t, payload)


def op_name(func) -> str:
    """A readable name of a torch call: ``"softmax"``, ``"sigmoid_"``, ``"shape"`` ..."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # a tensor property: Tensor.shape.__get__
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("_") and not name.startswith("__"):  # F.threshold is "_threshold"
        name = name.lstrip("_")
    return name


# ============================================================================ the allow-list
# The deconvnet and guided backprop are defined (Zeiler & Fergus 2014 Sec. 2.1; Springenberg
# et al. 2015) for networks of filters (convolutions, linear layers: the backward pass applies
# the transposed filters), max-pooling (the switches), rectifiers (the rule itself) and the
# linear glue between them. Every op below is linear in its input-derived arguments (its
# gradient *is* the transposed map the rules need) or routes like max-pooling; any other op
# on the path from the input to the layer makes the rules undefined there.

_T = torch.Tensor
_NAMESPACES = (torch, _T, F, torch._C._nn)


def torch_funcs(*names: str) -> frozenset:
    """The torch / Tensor / functional callables of these names (those that exist)."""
    found = set()
    for name in names:
        for space in _NAMESPACES:
            f = getattr(space, name, None)
            if callable(f):
                found.add(f)
    return frozenset(found)


# Linear in every tensor argument taken together (sums, joins): any of them may be derived.
_SUMS = torch_funcs("add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "subtract",
               "__sub__", "__isub__", "__rsub__", "rsub", "neg", "neg_", "negative",
               "__neg__", "__pos__", "positive", "cat", "concat", "concatenate", "stack",
               "hstack", "vstack", "dstack")
# Multilinear: linear in each argument alone, so at most one may be derived (x * w, x @ W;
# never x * gate(x), q @ k).
_PRODUCTS = torch_funcs("mul", "mul_", "__mul__", "__imul__", "__rmul__", "multiply", "matmul",
                   "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "addmm", "baddbmm",
                   "addbmm", "addmv", "mv", "outer", "tensordot")
# Linear in their first argument (the input) only: the others (weights, divisor, indices,
# shapes) must not depend on the image.
_LINEAR_IN_INPUT = torch_funcs(
    # filters and linear layers
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "linear", "batch_norm", "div", "div_", "__truediv__", "__itruediv__", "__div__",
    "true_divide", "divide",
    # pooling: averages are linear, max-pools route through their switches
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "amax", "max",
    "mean", "sum", "nanmean",
    # padding, resampling by a fixed linear map
    "pad", "constant_pad_nd", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "native_channel_shuffle",
    # reshapes, views, copies, selections
    "reshape", "view", "view_as", "reshape_as", "flatten", "unflatten", "permute",
    "transpose", "transpose_", "swapaxes", "swapdims", "t", "movedim", "moveaxis", "squeeze",
    "squeeze_", "unsqueeze", "unsqueeze_", "expand", "expand_as", "broadcast_to", "repeat",
    "tile", "chunk", "split", "split_with_sizes", "tensor_split", "unbind", "narrow",
    "select", "__getitem__", "index_select", "gather", "take_along_dim", "roll", "flip",
    "contiguous", "clone", "to", "float", "double", "half", "bfloat16", "type", "type_as",
    "requires_grad_", "__iter__",
    # dropout: the identity in eval mode (see _DROPOUT)
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout",
    # the ZF net's contrast normalization: the paper's deconvnet does not invert it; it is
    # passed with its own derivative, a near-constant scale for AlexNet's parameters
    "local_response_norm",
    # in-place writes: x[i] = v (v may be derived; see _WRITES)
    "__setitem__", "copy_", "fill_", "zero_")
#: In-place writes ``x[i] = v``, ``x.copy_(v)``: ``x`` depends on ``v`` afterwards.
WRITES = torch_funcs("__setitem__", "copy_")
_DROPOUT = torch_funcs("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                  "feature_alpha_dropout")
# Their second tensor argument gives only a shape, dtype or device, never values.
_SHAPE_OF_OTHER = torch_funcs("view_as", "reshape_as", "expand_as", "type_as", "to")
#: Calls that make a new tensor from another's shape / dtype only: their result does not
#: depend on the input's values (not derived).
FACTORIES = torch_funcs("zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
                   "randn_like", "new_zeros", "new_ones", "new_empty", "new_full",
                   "new_tensor")
# Property reads that return a tensor and are plain views.
_VIEW_PROPERTIES = frozenset({"T", "mT"})

#: Every op (besides the rectifiers of :func:`rectifier_call`) through which the deconvnet and
#: guided rules are defined.
ALLOWED_FUNCS = _SUMS | _PRODUCTS | _LINEAR_IN_INPUT | FACTORIES


_BATCH_NORM = torch_funcs("batch_norm")


def _is_training_call(func, args, kwargs) -> bool:
    """Whether a batch norm or dropout call runs in training mode (batch statistics, random
    masks): then it is not a fixed linear map of its input."""
    if func in _BATCH_NORM:
        return bool(call_arg(args, kwargs, 5, "training", False))
    if func in _DROPOUT:
        p = call_arg(args, kwargs, 1, "p", 0.5)
        return bool(call_arg(args, kwargs, 2, "training", True)) and float(p) > 0
    return False


def refusal(func, args, kwargs, derived) -> str | None:
    """Why the deconvnet / guided rules are undefined through this call, or ``None``.

    Parameters
    ----------
    func, args, kwargs
        The call, as a :class:`~torch.overrides.TorchFunctionMode` sees it.
    derived : callable
        ``derived(tensor)``: whether a tensor depends on the model's input.

    Returns
    -------
    str or None
        ``None`` when the call is on the allow-list with its input-derived arguments where the
        op is linear in them (or when no argument is input-derived); else a short reason such
        as ``"softmax is not a linear map or a rectifier"``.
    """
    positional = list(args) + list(kwargs.values())
    flags = [any(derived(t) for t in tensors_in(a)) for a in positional]
    count = sum(flags)
    if count == 0:
        return None
    name = op_name(func)
    if name in _VIEW_PROPERTIES:
        return None
    if func not in ALLOWED_FUNCS:
        return f"{name} is not a linear map, a max-pool or a rectifier"
    if _is_training_call(func, args, kwargs):
        return f"{name} runs in training mode (batch statistics or random masks)"
    if func in _SUMS:
        return None
    if func in _PRODUCTS:
        many = count > 1 or any(sum(derived(t) for t in tensors_in(a)) > 1 for a in positional)
        return f"{name} multiplies two input-derived tensors" if many else None
    if func in WRITES or func in FACTORIES:  # x[i] = v, x.copy_(v): linear in x and v
        return None
    if func in _SHAPE_OF_OTHER:
        flags = flags[:1]
    if any(flags[1:]):
        return f"{name} takes an input-derived tensor in an argument it is not linear in"
    return None


# ============================================================================ what ops do to positions
# (the vocabulary of :class:`~zfwidgets.backend.geometry.GeometryMode`)

GEO_CONV = torch_funcs("conv2d")
MAX_POOL = torch_funcs("max_pool2d", "max_pool2d_with_indices")
AVG_POOL = torch_funcs("avg_pool2d")
ADAPTIVE = torch_funcs("adaptive_avg_pool2d", "adaptive_max_pool2d",
                        "adaptive_max_pool2d_with_indices")
PAD = torch_funcs("pad", "constant_pad_nd")
RESHAPE = torch_funcs("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
                       "view_as", "reshape_as", "squeeze_", "unsqueeze_")
PERMUTE = torch_funcs("permute", "transpose", "transpose_", "swapaxes", "swapdims", "t",
                       "movedim", "moveaxis")
CAT = torch_funcs("cat", "concat", "concatenate")
STACK = torch_funcs("stack")
SPLIT = torch_funcs("chunk", "split", "split_with_sizes", "tensor_split", "unbind")
UNBIND = torch_funcs("unbind")
GETITEM = torch_funcs("__getitem__", "narrow", "select")
# along some dims (argument "dim"): per position when those dims are not the grid's
ALONG_DIM = torch_funcs("mean", "sum", "amax", "amin", "max", "min", "softmax",
                         "log_softmax", "normalize", "nanmean", "logsumexp", "std", "var",
                         "norm", "argmax", "argmin", "cumsum")
LAST_DIMS = torch_funcs("layer_norm", "linear", "rms_norm")       # over the last dim(s)
SPATIAL_MIX = torch_funcs("group_norm", "instance_norm", "interpolate", "upsample",
                           "upsample_nearest", "upsample_bilinear", "roll", "flip",
                           "pixel_shuffle", "pixel_unshuffle", "conv_transpose2d",
                           "grid_sample", "rot90")
# pointwise or per position, besides what aten tags as pointwise
PER_POSITION = torch_funcs(
    "batch_norm", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "hardswish", "hardswish_", "prelu", "logsigmoid", "log_sigmoid",
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "contiguous", "clone",
    "detach", "detach_", "requires_grad_", "channel_shuffle", "native_channel_shuffle",
    "local_response_norm", "expand", "expand_as", "broadcast_to", "rrelu", "glu")

_POINTWISE_CACHE: dict = {}


def is_pointwise(func) -> bool:
    """Whether aten tags ``func``'s op as pointwise (looked up by name, cached)."""
    hit = _POINTWISE_CACHE.get(func)
    if hit is None:
        name = op_name(func).strip("_")
        packet = getattr(torch.ops.aten, name, None)
        tags = set()
        if packet is not None:
            try:
                for overload in packet.overloads():
                    tags |= set(getattr(packet, overload).tags)
            except Exception:  # noqa: BLE001 - not an op packet
                tags = set()
        hit = _POINTWISE_CACHE[func] = torch.Tag.pointwise in tags
    return hit
