"""Layer table, feature-map layouts and scoped forward passes over any ``nn.Module``.

Layers are identified by torch's dotted ``named_modules()`` names. A module called more than once
in one forward pass (a shared ReLU, say) gives one layer per call: ``"relu"``, ``"relu@1"``,
``"relu@2"`` ...

A layer is a module call whose output holds feature maps: a ``[N, C, H, W]`` tensor, a
channels-last ``[N, H, W, C]`` one (Swin, ConvNeXt blocks) or a vision transformer's token
sequence ``[N, k + h * w, D]`` (``k`` class tokens, left out). Which is which, and each unit's
receptive field, is tracked during one real forward pass by
:class:`~zfwidgets.backend.geometry.GeometryMode`, never guessed from shapes: a layer's
:class:`Layout` says where its maps are and :func:`as_maps` reads any output as
``[N, C, H, W]`` (the one function every view, mining and occlusion read maps through). The
geometry is right or ``None``, never a wrong box.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BadParameterError, UnknownLayerError, UnsupportedModelError
from ..models.registry import pick_logits
from .small_work import small_work_threads
from .geometry import IDENTITY, Geometry, GeometryMode, Spatial

__all__ = ["IDENTITY", "Geometry", "GeometryMode", "LayerInfo", "Layout", "Record",
           "StopForward", "as_maps", "capture", "first_rgb_conv", "forward_to", "layouts_of", "model_dtype", "require_maps",
           "receptive_field_box", "record_forward", "resolve_layer", "run_captured",
           "scoped_eval", "split_layer_id"]


@dataclass(frozen=True)
class Layout:
    """Where a layer's output keeps its feature maps.

    Attributes
    ----------
    channel : int
        Axis of the channels.
    spatial : tuple of int
        ``(row_axis, column_axis)``, or ``(token_axis,)`` for a token sequence.
    grid : tuple of int
        ``(h, w)``: the maps' size.
    offset : int
        Tokens only: how many (class) tokens come before the grid's ``h * w`` tokens.
    """

    channel: int
    spatial: tuple[int, ...]
    grid: tuple[int, int]
    offset: int = 0

    @property
    def kind(self) -> str:
        """``"nchw"``, ``"channels_last"`` (any other order of the axes) or ``"tokens"``."""
        if len(self.spatial) == 1:
            return "tokens"
        return "nchw" if (self.channel, self.spatial) == (1, (2, 3)) else "channels_last"


def _layout_of(s: Spatial | None, t: torch.Tensor) -> Layout | None:
    """The layout of a module output that the tracker followed: batch first, one channel axis
    besides the grid's axes; ``None`` when the output is not feature maps."""
    if s is None or t.dim() != len(s.axes) + 2 or 0 in s.axes:
        return None
    (channel,) = [a for a in range(1, t.dim()) if a not in s.axes]
    return Layout(channel, s.axes, tuple(int(v) for v in s.grid), s.offset)


def as_maps(output: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
    """A layer's output as feature maps ``[N, C, H, W]`` (a view; the class tokens left out).

    Parameters
    ----------
    output : torch.Tensor
        The module's output, as the model made it.
    layout : Layout, optional
        The layer's :attr:`LayerInfo.layout`; ``None`` means ``[N, C, H, W]`` already.

    Returns
    -------
    torch.Tensor
        ``[N, C, H, W]``, differentiable (a view of ``output``).

    Raises
    ------
    UnsupportedModelError
        When ``output`` does not have the layout's shape.
    """
    if not isinstance(output, torch.Tensor):
        raise UnsupportedModelError(f"a layer output is {type(output).__name__}, not a tensor")
    if layout is None or layout.kind == "nchw":
        if output.dim() != 4:
            raise UnsupportedModelError(f"expected [N, C, H, W] feature maps, got shape "
                                        f"{list(output.shape)}")
        return output
    h, w = layout.grid
    if layout.kind == "tokens":
        (axis,) = layout.spatial
        if output.dim() != 3 or output.shape[axis] < layout.offset + h * w:
            raise UnsupportedModelError(f"expected {layout.offset} + {h}x{w} tokens, got shape "
                                        f"{list(output.shape)}")
        tokens = output.narrow(axis, layout.offset, h * w)
        return tokens.permute(0, layout.channel, axis).unflatten(2, (h, w))
    if output.dim() != 4:
        raise UnsupportedModelError(f"expected a 4-d channels-last output, got shape "
                                    f"{list(output.shape)}")
    return output.permute(0, layout.channel, *layout.spatial)


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
        The maps' shape ``(channels, height, width)`` for the session's input size (for a token
        layer: ``D`` maps of the ``h x w`` patch grid).
    geometry : Geometry or None
        Receptive-field geometry, ``None`` where it could not be tracked.
    is_leaf : bool
        Whether the module has no child modules.
    layout : Layout or None
        Where the module's output keeps the maps (:func:`as_maps` reads them); ``None`` for a
        plain ``[N, C, H, W]`` output.
    """

    name: str
    kind: str
    shape: tuple[int, int, int]
    geometry: Geometry | None
    is_leaf: bool
    layout: Layout | None = None

    @property
    def rf_size(self) -> tuple[int, int] | None:
        """Receptive-field size ``(height, width)`` in input pixels, or ``None``."""
        return None if self.geometry is None else self.geometry.size

    @property
    def rf_stride(self) -> tuple[int, int] | None:
        """Receptive-field stride ``(rows, columns)`` in input pixels, or ``None``."""
        return None if self.geometry is None else self.geometry.stride


def layouts_of(session, layers: Sequence[str]) -> dict[str, Layout | None]:
    """Layer id -> :attr:`LayerInfo.layout` of a session's ``layers``, for :func:`capture`'s
    ``layouts`` (the maps of token and channels-last layers read as ``[N, C, H, W]``)."""
    return {layer: session.layer_info(layer).layout for layer in layers}


def require_maps(session) -> list[LayerInfo]:
    """A session's layer table; :class:`~zfwidgets.errors.UnsupportedModelError` saying what
    is missing when no layer of the model makes feature maps (an MLP, say)."""
    table = session.layer_table()
    if not table:
        raise UnsupportedModelError(
            f"the model {session.entry.name!r} has no layer that makes feature maps (a 2-d "
            "convolution's [N, C, H, W] output, a channels-last map or a vision transformer's "
            "patch tokens), so there is nothing to show layer by layer. Its predictions "
            "(session.predict()) still work; the feature views, occlusion's feature panel and "
            "mining need a convolutional or vision-transformer model.")
    return table


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point dtype of ``model``'s first floating parameter or buffer (float32
    when it has none): the dtype its input must have."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def split_layer_id(layer: str) -> tuple[str, int]:
    """``"features.1@2"`` -> ``("features.1", 2)``; ``"features.1"`` -> ``("features.1", 0)``."""
    name, sep, call = layer.rpartition("@")
    if sep and call.isdigit():
        return name, int(call)
    return layer, 0


# --------------------------------------------------------------------------- scoped forwards

@contextlib.contextmanager
def scoped_eval(model: nn.Module):
    """Put every module of ``model`` in eval mode for the block, restoring each flag after."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        if any(flag for _, flag in flags):  # (a model in eval mode already: nothing to do)
            model.eval()
        yield model
    finally:
        for m, flag in flags:
            if m.training != flag:
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
        The model's class scores (picked by the model's output rule,
        :func:`~zfwidgets.models.registry.pick_logits`), detached.
    layers : list of LayerInfo
        Every module call whose output holds feature maps, in the order the calls finished.
    activations : dict of str to torch.Tensor
        Layer id -> ``[N, C, H, W]`` copy of its maps (:func:`as_maps`), taken when the module
        returned (so a later in-place op cannot alter it).
    """

    output: torch.Tensor
    layers: list[LayerInfo]
    activations: dict[str, torch.Tensor]


def record_forward(model: nn.Module, x: torch.Tensor, output=None) -> Record:
    """Run ``model(x)`` once in eval mode, recording every layer's maps and geometry.

    Parameters
    ----------
    model : nn.Module
        Any module; its flags and hooks are exactly as before afterwards.
    x : torch.Tensor
        Input batch ``[N, C, H, W]``.
    output : str, int or callable, optional
        Which part of the model's output holds the class scores (see
        :func:`~zfwidgets.models.registry.pick_logits`).

    Returns
    -------
    Record
    """
    _check_scriptable(model)
    layers: list[LayerInfo] = []
    acts: dict[str, torch.Tensor] = {}
    mode = GeometryMode(x)

    def on_output(name, call, module, out):
        if not isinstance(out, torch.Tensor):
            return
        s = mode.spatial(out)
        layout = _layout_of(s, out)
        if layout is None:
            return
        lid = _layer_id(name, call)
        maps = as_maps(out.detach(), layout)
        acts[lid] = maps.clone(memory_format=torch.contiguous_format)
        layers.append(LayerInfo(lid, type(module).__name__, tuple(maps.shape[1:]), s.geometry,
                                next(module.children(), None) is None, layout))

    # the thread count that suits this model's passes over one image (.small_work)
    with small_work_threads(model, x), torch.no_grad(), scoped_eval(model), \
            _hooks(model, on_output), mode:
        out = model(x)
    return Record(pick_logits(out, output).detach(), layers, acts)


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
            stop: bool = False, inputs: bool = False, replace: bool = False,
            layouts: Mapping[str, Layout | None] | None = None) -> Iterator[None]:
    """Forward hooks on the modules of ``layers`` only, for the block.

    ``on_output(layer, output)`` is called when a requested layer (module call) has been
    computed; with ``inputs=True`` it is called with the module's first input instead, before
    the module runs (a pre-activation, say, before an in-place ReLU overwrites it). With
    ``stop=True`` the hook of the last requested layer raises
    :class:`StopForward`, ending the forward pass there (run the model with
    :func:`run_captured`). With ``replace=True`` what ``on_output`` returns (when not ``None``)
    replaces that output (input) for the rest of the pass, and the hooks run before any other
    hook of their modules (an ablation, say, that every later observer must see). With
    ``layouts`` (layer id -> :attr:`LayerInfo.layout`, see :func:`layouts_of`), ``on_output``
    gets each layer's maps ``[N, C, H, W]`` (:func:`as_maps`) instead of the raw output (not
    together with ``replace``). The hooks are removed in ``finally``: none outlives the block,
    even after an error.

    Raises
    ------
    UnknownLayerError
        For a layer id that names no submodule.
    """
    if replace and layouts:
        raise BadParameterError("capture(replace=True) replaces raw outputs: give no layouts")
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
                value = args[0] if inputs else output
                layout = layouts.get(layer) if layouts else None
                value = on_output(layer, value if layout is None else as_maps(value, layout))
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
                 known: Sequence[str] | None = None, stop: bool = True, inputs: bool = False,
                 layouts: Mapping[str, Layout | None] | None = None):
    """``model(x)`` under :func:`capture`; returns the model's output, or ``None`` when the pass
    was stopped after the last requested layer (``stop=True``)."""
    with capture(model, layers, on_output, known=known, stop=stop, inputs=inputs,
                 layouts=layouts):
        try:
            return model(x)
        except StopForward:
            return None


def forward_to(model: nn.Module, x: torch.Tensor, layer: str, known: list[str] | None = None,
               layout: Layout | None = None) -> torch.Tensor:
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
    layout : Layout, optional
        The layer's layout (:attr:`LayerInfo.layout`); ``None``: a ``[N, C, H, W]`` output.

    Returns
    -------
    torch.Tensor
        The layer's live maps ``[N, C, H, W]`` (:func:`as_maps` of its output, attached to the
        autograd graph).
    """
    _check_scriptable(model)
    found: dict[str, object] = {}
    with scoped_eval(model):
        run_captured(model, x, [layer], found.__setitem__, known=known)
    out = found.get(layer)
    if not isinstance(out, torch.Tensor) or (layout is None and out.dim() != 4):
        raise UnknownLayerError(layer, known or [])
    return as_maps(out, layout)


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

