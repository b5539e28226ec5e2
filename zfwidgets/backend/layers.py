"""Layer table, receptive-field geometry and scoped forward passes over any ``nn.Module``.

Layers are identified by torch's dotted ``named_modules()`` names. A module called more than once
in one forward pass (a shared ReLU, say) gives one layer per call: ``"relu"``, ``"relu@1"``,
``"relu@2"`` ...

Receptive fields are tracked, not looked up: during one real forward pass a
:class:`GeometryMode` follows every 4-d tensor through convolutions, pools, pads and pointwise
ops (residual additions and concatenations take the union), so the geometry is right for any
architecture built from those operations. An operation it cannot follow (interpolation, a
transposed convolution ...) gives ``geometry=None`` for everything downstream, never a wrong box.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnknownLayerError, UnsupportedModelError
from .ops import call_arg, pool_args

__all__ = ["Geometry", "LayerInfo", "GeometryMode", "Record", "StopForward", "capture",
           "first_rgb_conv", "forward_to", "receptive_field_box", "record_forward",
           "resolve_layer", "run_captured", "scoped_eval", "split_layer_id"]


@dataclass(frozen=True)
class Geometry:
    """Where the units of a feature map look in the input image.

    Unit ``(y, x)`` sees input rows ``start[0] + y * stride[0]`` up to (excluding)
    ``start[0] + y * stride[0] + size[0]``, and likewise for columns. ``start`` can be negative:
    padding makes border units look partly outside the image.

    Attributes
    ----------
    size : tuple of int
        Receptive-field size ``(height, width)`` in input pixels.
    stride : tuple of int
        Input pixels between neighbouring units ``(rows, columns)``.
    start : tuple of int
        Input coordinate of the first row / column seen by unit ``(0, 0)``.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    start: tuple[int, int]

    def box(self, y: int, x: int, height: int | None = None, width: int | None = None
            ) -> tuple[int, int, int, int]:
        """Receptive field of unit ``(y, x)`` as ``(top, left, bottom, right)``.

        ``bottom`` and ``right`` are exclusive (slice ends). When ``height`` / ``width`` are
        given, the box is clipped to the image.
        """
        top = self.start[0] + y * self.stride[0]
        left = self.start[1] + x * self.stride[1]
        bottom, right = top + self.size[0], left + self.size[1]
        if height is not None:
            top, bottom = max(top, 0), min(bottom, height)
        if width is not None:
            left, right = max(left, 0), min(right, width)
        return top, left, bottom, right


IDENTITY = Geometry((1, 1), (1, 1), (0, 0))


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table.

    Attributes
    ----------
    name : str
        Layer id: the dotted module name, with ``@k`` for the k-th extra call of a reused module.
    kind : str
        The module's class name (``Conv2d``, ``ReLU6``, ``MaxPool2d``, a block class ...).
    shape : tuple of int
        Output shape ``(channels, height, width)`` for the session's input size.
    geometry : Geometry or None
        Receptive-field geometry, ``None`` where it could not be tracked.
    is_leaf : bool
        Whether the module has no child modules.
    """

    name: str
    kind: str
    shape: tuple[int, int, int]
    geometry: Geometry | None
    is_leaf: bool

    @property
    def rf_size(self) -> tuple[int, int] | None:
        """Receptive-field size ``(height, width)`` in input pixels, or ``None``."""
        return None if self.geometry is None else self.geometry.size

    @property
    def rf_stride(self) -> tuple[int, int] | None:
        """Receptive-field stride ``(rows, columns)`` in input pixels, or ``None``."""
        return None if self.geometry is None else self.geometry.stride


def split_layer_id(layer: str) -> tuple[str, int]:
    """``"features.1@2"`` -> ``("features.1", 2)``; ``"features.1"`` -> ``("features.1", 0)``."""
    name, sep, call = layer.rpartition("@")
    if sep and call.isdigit():
        return name, int(call)
    return layer, 0


# --------------------------------------------------------------------------- geometry tracking

def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1])) if len(v) else (0, 0)
    return int(v), int(v)


def _window(g: Geometry, kernel, stride, padding, dilation) -> Geometry:
    k, s, p, d = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    size = tuple(g.size[a] + d[a] * (k[a] - 1) * g.stride[a] for a in range(2))
    start = tuple(g.start[a] - p[a] * g.stride[a] for a in range(2))
    step = tuple(g.stride[a] * s[a] for a in range(2))
    return Geometry(size, step, start)


def _union(geos: list[Geometry]) -> Geometry:
    if len(geos) == 1:
        return geos[0]
    start = tuple(min(g.start[a] for g in geos) for a in range(2))
    end = tuple(max(g.start[a] + g.size[a] for g in geos) for a in range(2))
    stride = tuple(max(g.stride[a] for g in geos) for a in range(2))
    return Geometry(tuple(end[a] - start[a] for a in range(2)), stride, start)


def _conv(g, args, kwargs, out):
    weight = args[1]
    stride = call_arg(args, kwargs, 3, "stride", 1)
    padding = call_arg(args, kwargs, 4, "padding", 0)
    dilation = _pair(call_arg(args, kwargs, 5, "dilation", 1))
    k = weight.shape[-2:]
    if isinstance(padding, str):
        padding = (0, 0) if padding == "valid" else tuple(dilation[a] * (k[a] - 1) // 2 for a in range(2))
    return _window(g, k, stride, padding, dilation)


def _pool(g, args, kwargs, out, *, has_dilation):
    return _window(g, *pool_args(args, kwargs, has_dilation=has_dilation))


def _adaptive(g, args, kwargs, out, inp):
    ins, outs = inp.shape[-2:], out.shape[-2:]
    stride = tuple(max(ins[a] // max(outs[a], 1), 1) for a in range(2))
    kernel = tuple(ins[a] - (outs[a] - 1) * stride[a] for a in range(2))
    return _window(g, kernel, stride, 0, 1)


def _pad(g, args, kwargs, out):
    pad = list(call_arg(args, kwargs, 1, "pad", ()))
    pad += [0] * (4 - len(pad))
    left, top = pad[0], pad[2]
    return Geometry(g.size, g.stride, (g.start[0] - top * g.stride[0], g.start[1] - left * g.stride[1]))


_WINDOWED = {
    F.conv2d: _conv,
    torch.conv2d: _conv,
    F.max_pool2d: lambda g, a, k, o: _pool(g, a, k, o, has_dilation=True),
    torch.max_pool2d: lambda g, a, k, o: _pool(g, a, k, o, has_dilation=True),
    F.max_pool2d_with_indices: lambda g, a, k, o: _pool(g, a, k, o, has_dilation=True),
    F.avg_pool2d: lambda g, a, k, o: _pool(g, a, k, o, has_dilation=False),
    F.pad: _pad,
}
_ADAPTIVE = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices}


def _tensors(obj, depth=0) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)) and depth < 2:
        for item in obj:
            yield from _tensors(item, depth + 1)


class GeometryMode(TorchFunctionMode):
    """Track the receptive-field geometry of every 4-d tensor made during a forward pass.

    Parameters
    ----------
    inputs : torch.Tensor
        The model's input ``[N, 3, H, W]``; it gets the identity geometry.

    Notes
    -----
    Use :meth:`geometry` to look a tensor up. The mode keeps references to the tensors it saw,
    so use it for one forward pass and drop it.
    """

    def __init__(self, inputs: torch.Tensor):
        super().__init__()
        self._table: dict[int, tuple[torch.Tensor, Geometry | None]] = {id(inputs): (inputs, IDENTITY)}

    def geometry(self, t: torch.Tensor) -> Geometry | None:
        """Geometry of ``t``, or ``None`` when ``t`` was not seen or could not be followed."""
        entry = self._table.get(id(t))
        return None if entry is None or entry[0] is not t else entry[1]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) else out
        if isinstance(first, torch.Tensor) and first.dim() == 4 and id(first) not in self._table:
            self._table[id(first)] = (first, self._follow(func, args, kwargs, first))
        return out

    def _follow(self, func, args, kwargs, out) -> Geometry | None:
        seen = [t for t in _tensors(list(args) + list(kwargs.values()))
                if t.dim() == 4 and id(t) in self._table]
        if not seen:
            return None
        geos = [self._table[id(t)][1] for t in seen]
        if any(g is None for g in geos):
            return None
        if func in _WINDOWED:
            return _WINDOWED[func](geos[0], args, kwargs, out)
        if func in _ADAPTIVE:
            return _adaptive(geos[0], args, kwargs, out, seen[0])
        # pointwise / channel-wise ops keep the spatial grid: union of what flows in
        if all(t.shape[-2:] == out.shape[-2:] for t in seen):
            return _union(geos)
        return None


# --------------------------------------------------------------------------- scoped forwards

@contextlib.contextmanager
def scoped_eval(model: nn.Module):
    """Put every module of ``model`` in eval mode for the block, restoring each flag after."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def _hooks(model: nn.Module, on_output) -> Iterator[None]:
    """Forward hooks on every submodule, calling ``on_output(name, call, module, output)``.

    Handles are removed in ``finally``, so no hook outlives the block, even after an error.
    """
    handles = []
    calls: dict[str, int] = {}

    def make(name):
        def hook(module, inputs, output):
            k = calls.get(name, 0)
            calls[name] = k + 1
            on_output(name, k, module, output)
        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def _layer_id(name: str, call: int) -> str:
    return name if call == 0 else f"{name}@{call}"


def _check_scriptable(model: nn.Module) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            "TorchScript modules cannot be inspected layer by layer; pass the eager nn.Module")


@dataclass
class Record:
    """What one recorded forward pass produced.

    Attributes
    ----------
    output : torch.Tensor
        The model's output (logits), detached.
    layers : list of LayerInfo
        Every module call with a 4-d output, in the order the calls finished.
    activations : dict of str to torch.Tensor
        Layer id -> ``[N, C, H, W]`` copy of its output, taken when the module returned (so a
        later in-place op cannot alter it).
    """

    output: torch.Tensor
    layers: list[LayerInfo]
    activations: dict[str, torch.Tensor]


def record_forward(model: nn.Module, x: torch.Tensor) -> Record:
    """Run ``model(x)`` once in eval mode, recording every layer's output and geometry.

    Parameters
    ----------
    model : nn.Module
        Any module; its flags and hooks are exactly as before afterwards.
    x : torch.Tensor
        Input batch ``[N, 3, H, W]``.

    Returns
    -------
    Record
    """
    _check_scriptable(model)
    layers: list[LayerInfo] = []
    acts: dict[str, torch.Tensor] = {}
    mode = GeometryMode(x)

    def on_output(name, call, module, output):
        if not (isinstance(output, torch.Tensor) and output.dim() == 4):
            return
        lid = _layer_id(name, call)
        acts[lid] = output.detach().clone()
        layers.append(LayerInfo(lid, type(module).__name__, tuple(output.shape[1:]),
                                mode.geometry(output), next(module.children(), None) is None))

    with torch.no_grad(), scoped_eval(model), _hooks(model, on_output), mode:
        out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return Record(out.detach(), layers, acts)


def resolve_layer(model: nn.Module, layer: str, known: Sequence[str] | None = None
                  ) -> tuple[nn.Module, int]:
    """The module behind layer id ``layer`` and which of its calls is meant.

    Parameters
    ----------
    model : nn.Module
    layer : str
        ``name`` (the module's first call) or ``name@k`` (its call ``k``, for a module that a
        forward pass uses several times).
    known : sequence of str, optional
        The valid layer ids, for the error message.

    Raises
    ------
    UnknownLayerError
        When ``model`` has no submodule ``name``.
    """
    name, call = split_layer_id(layer)
    try:
        module = model.get_submodule(name) if name else None
    except AttributeError:
        module = None
    if module is None:
        raise UnknownLayerError(layer, list(known) if known is not None else
                                [n for n, _ in model.named_modules() if n])
    return module, call


@contextlib.contextmanager
def capture(model: nn.Module, layers: Sequence[str],
            on_output: Callable[[str, object], object], *, known: Sequence[str] | None = None,
            stop: bool = False, inputs: bool = False, replace: bool = False) -> Iterator[None]:
    """Forward hooks on the modules of ``layers`` only, for the block.

    ``on_output(layer, output)`` is called when a requested layer (module call) has been
    computed; with ``inputs=True`` it is called with the module's first input instead, before
    the module runs (a pre-activation, say, before an in-place ReLU overwrites it). With
    ``stop=True`` the hook of the last requested layer raises
    :class:`StopForward`, ending the forward pass there (run the model with
    :func:`run_captured`). With ``replace=True`` what ``on_output`` returns (when not ``None``)
    replaces that output (input) for the rest of the pass, and the hooks run before any other
    hook of their modules (an ablation, say, that every later observer must see). The hooks
    are removed in ``finally``: none outlives the block, even after an error.

    Raises
    ------
    UnknownLayerError
        For a layer id that names no submodule.
    """
    wanted: dict[nn.Module, dict[int, str]] = {}
    for layer in dict.fromkeys(layers):
        module, call = resolve_layer(model, layer, known)
        wanted.setdefault(module, {})[call] = layer
    remaining = [sum(len(v) for v in wanted.values())]
    handles = []

    def make(calls_wanted: dict[int, str]):
        calls = [0]

        def hook(module, args, output=None):
            k = calls[0]
            calls[0] = k + 1
            layer = calls_wanted.get(k)
            if layer is not None:
                value = on_output(layer, args[0] if inputs else output)
                remaining[0] -= 1
                if stop and remaining[0] == 0:
                    raise StopForward
                if replace:
                    return value
            return None
        return hook

    try:
        for module, calls_wanted in wanted.items():
            register = module.register_forward_pre_hook if inputs else \
                module.register_forward_hook
            handles.append(register(make(calls_wanted), prepend=replace))
        yield
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by a :func:`capture` hook once every requested layer has been computed."""


def run_captured(model: nn.Module, x, layers: Sequence[str],
                 on_output: Callable[[str, object], None], *,
                 known: Sequence[str] | None = None, stop: bool = True, inputs: bool = False):
    """``model(x)`` under :func:`capture`; returns the model's output, or ``None`` when the pass
    was stopped after the last requested layer (``stop=True``)."""
    with capture(model, layers, on_output, known=known, stop=stop, inputs=inputs):
        try:
            return model(x)
        except StopForward:
            return None


def forward_to(model: nn.Module, x: torch.Tensor, layer: str, known: list[str] | None = None
               ) -> torch.Tensor:
    """Run ``model(x)`` (eval mode, autograd on) only until ``layer`` has been computed.

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor
        Input batch; set ``requires_grad`` on it to differentiate the result.
    layer : str
        Layer id (``name`` or ``name@k``).
    known : list of str, optional
        The valid layer ids, used for the error message if ``layer`` never appears.

    Returns
    -------
    torch.Tensor
        The layer's live output ``[N, C, H, W]`` (attached to the autograd graph).
    """
    _check_scriptable(model)
    found: dict[str, object] = {}
    with scoped_eval(model):
        run_captured(model, x, [layer], found.__setitem__, known=known)
    out = found.get(layer)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise UnknownLayerError(layer, known or [])
    return out


def first_rgb_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first ``nn.Conv2d`` of ``model`` that reads 3 channels (the paper's layer-1
    filters), as ``(name, module)``; ``None`` when there is none."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return name, module
    return None


def receptive_field_box(geometry: Geometry | None, y: int, x: int, height: int, width: int,
                        ) -> tuple[int, int, int, int]:
    """Clipped box of unit ``(y, x)``; the whole image when the geometry is unknown."""
    if geometry is None:
        return 0, 0, height, width
    return geometry.box(y, x, height, width)

