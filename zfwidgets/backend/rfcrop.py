"""Receptive-field crops: a unit's projection computed on a crop of the input, exactly.

A unit ``(y, x)`` of a feature map depends only on the input pixels of its receptive field, so
its forward value and its projection (any backward rule) can be computed on a crop of the input
that holds that field. For the result to equal the whole-image one *exactly* (up to float
rounding) the crop must reproduce what the network does at every layer:

* **strides keep their phase**: the crop starts at a multiple of the layer's total stride ``S``
  (rows and columns separately), so each strided convolution or pool of the crop samples the
  same grid as on the whole image;
* **the network's own zero padding**: where the receptive field reaches past a border of the
  image, the crop ends exactly at that border and nothing is added there, so every layer pads
  the crop as it pads the image (padding the *input* with zeros would not: a zero pixel is not a
  zero feature after a bias or a batch norm);
* **anything may lie beyond an inner edge**: where the field ends inside the image, the units
  that can reach past the crop's edge are outside the unit's dependency cone, so the crop may
  stop there, or go on with more image, or with zeros (which lets crops of different units share
  one size and one batch).

This holds for networks built from convolutions, pools, pads and position-wise operations, as
tracked by :class:`~zfwidgets.backend.layers.GeometryMode`. :class:`CropAudit` checks it while the
crop runs: any other operation on the image's data (adaptive pooling, a norm over positions,
interpolation, a reshape, a circular pad ...) marks the crop unsafe and the caller falls back to
the whole image. :func:`crop_plan` places the crops of a batch of units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .layers import Geometry
from .ops import RECTIFIER_FUNCS, call_arg

__all__ = ["CropAudit", "CropPlan", "crop_plan", "cut_crops", "paste_crops"]


# ============================================================================ placing the crops

def _axis_min(r0: int, r1: int, n: int, s: int) -> tuple[str, int]:
    """Which borders a field ``[r0, r1)`` crosses on an axis of ``n`` pixels, stride ``s``, and
    the smallest crop length that holds it."""
    top, bottom = r0 < 0, r1 > n
    if top and bottom:
        return "both", n
    if top:
        return "top", r1
    aligned = s * (r0 // s)
    return ("bottom", n - aligned) if bottom else ("inner", r1 - aligned)


def _axis_length(kinds: Sequence[str], mins: Sequence[int], n: int, s: int) -> int:
    """One crop length for several units on an axis: at least each one's minimum, ``n`` when a
    field crosses both borders, and ``n - length`` a multiple of ``s`` when a field crosses the
    far border (so that crop can end there and still start on the stride grid)."""
    length = max(mins)
    if "both" in kinds:
        return n
    if "bottom" in kinds:
        length += (n - length) % s
    return length


def _axis_start(kind: str, r0: int, length: int, n: int, s: int) -> int:
    if kind in ("both", "top"):
        return 0
    if kind == "bottom":
        return n - length
    return s * (r0 // s)


@dataclass(frozen=True)
class CropPlan:
    """Where the crops of a batch of units lie: one size, one origin per unit.

    Attributes
    ----------
    size : (int, int)
        Crop ``(height, width)`` shared by every unit.
    origins : list of (int, int)
        Input coordinates of each crop's top-left pixel; a multiple of the stride, possibly
        negative or reaching past the image, where only zeros lie (never read by the unit).
    units : list of (int, int)
        Each unit's position in the crop's feature map.
    image_size : (int, int)
        The whole input's ``(H, W)``.
    """

    size: tuple[int, int]
    origins: list[tuple[int, int]]
    units: list[tuple[int, int]]
    image_size: tuple[int, int]

    @property
    def area_ratio(self) -> float:
        """Crop area over the whole input's area."""
        return self.size[0] * self.size[1] / (self.image_size[0] * self.image_size[1])


def crop_plan(geometry: Geometry | None, units: Sequence[tuple[int, int]], height: int,
              width: int) -> CropPlan | None:
    """The crops that compute ``units`` of a feature map exactly; ``None`` without a geometry.

    Parameters
    ----------
    geometry : Geometry or None
        The layer's receptive-field geometry.
    units : sequence of (y, x)
        Positions in the feature map.
    height, width : int
        The model's input size.
    """
    if geometry is None or not units:
        return None
    per_axis = []
    for axis, n in ((0, height), (1, width)):
        s = geometry.stride[axis]
        fields = [(geometry.start[axis] + u[axis] * s,
                   geometry.start[axis] + u[axis] * s + geometry.size[axis]) for u in units]
        kinds, mins = zip(*(_axis_min(r0, r1, n, s) for r0, r1 in fields))
        length = _axis_length(kinds, mins, n, s)
        starts = [_axis_start(k, r0, length, n, s) for k, (r0, _) in zip(kinds, fields)]
        per_axis.append((length, starts, s))
    (h, tops, sy), (w, lefts, sx) = per_axis
    return CropPlan(size=(h, w), origins=list(zip(tops, lefts)),
                    units=[(int(y) - t // sy, int(x) - left // sx)
                           for (y, x), t, left in zip(units, tops, lefts)],
                    image_size=(height, width))


def cut_crops(inputs: torch.Tensor, rows: Sequence[int], plan: CropPlan) -> torch.Tensor:
    """The crops ``[len(rows), C, h, w]`` of ``inputs[rows[i]]`` at ``plan.origins[i]``, zero
    where a crop reaches past the image."""
    h, w = plan.size
    H, W = plan.image_size
    out = inputs.new_zeros((len(rows), inputs.shape[1], h, w))
    for i, (row, (top, left)) in enumerate(zip(rows, plan.origins)):
        t0, l0 = max(top, 0), max(left, 0)
        t1, l1 = min(top + h, H), min(left + w, W)
        out[i, :, t0 - top:t1 - top, l0 - left:l1 - left] = inputs[row, :, t0:t1, l0:l1]
    return out


def paste_crops(crops: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """Inverse of :func:`cut_crops` for gradients: each crop ``[C, h, w]`` placed in a zero
    ``[C, H, W]`` at its origin (what lies outside the image dropped)."""
    h, w = plan.size
    H, W = plan.image_size
    out = crops.new_zeros((crops.shape[0], crops.shape[1], H, W))
    for i, (top, left) in enumerate(plan.origins):
        t0, l0 = max(top, 0), max(left, 0)
        t1, l1 = min(top + h, H), min(left + w, W)
        out[i, :, t0:t1, l0:l1] = crops[i, :, t0 - top:t1 - top, l0 - left:l1 - left]
    return out


# ============================================================================ the audit

_T = torch.Tensor
_WINDOWED = {F.conv2d, torch.conv2d, F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices,
             F.avg_pool2d, F.pad}
_POSITIONWISE_FUNCS = {
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.maximum,
    torch.minimum, torch.sigmoid, torch.tanh, torch.exp, torch.sqrt, torch.square,
    F.batch_norm, F.local_response_norm, F.dropout, F.dropout2d, F.silu, F.gelu, F.elu, F.selu,
    F.celu, F.mish, F.softplus, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, torch.cat,
} | set(RECTIFIER_FUNCS)
_POSITIONWISE_METHODS = (
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "abs", "sigmoid",
    "sigmoid_", "tanh", "tanh_", "exp", "sqrt", "square", "__add__", "__radd__", "__iadd__",
    "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__", "__truediv__",
    "__rtruediv__", "__itruediv__", "__neg__", "clone", "contiguous", "float", "double", "half",
    "to", "type_as", "requires_grad_", "__getitem__", "chunk", "split", "narrow")
for _name in _POSITIONWISE_METHODS:
    for _cls in (torch.Tensor, torch._C.TensorBase):
        if hasattr(_cls, _name):
            _POSITIONWISE_FUNCS.add(getattr(_cls, _name))
_CHANNEL_SPLITS = {getattr(torch.Tensor, n) for n in ("chunk", "split", "narrow")} | \
    {torch.chunk, torch.split, torch.narrow}
_POSITIONWISE_FUNCS |= _CHANNEL_SPLITS


def _tensors(obj, depth=0):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)) and depth < 2:
        for item in obj:
            yield from _tensors(item, depth + 1)


def _full_spatial_index(index) -> bool:
    """Whether a ``__getitem__`` index leaves the two spatial dimensions whole."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis or i is None for i in index):
        return False
    if len(index) <= 2:
        return all(isinstance(i, (int, slice)) for i in index)
    return len(index) == 4 and all(i == slice(None) for i in index[2:])


class CropAudit(TorchFunctionMode):
    """Watch one forward pass of a crop: is every operation on the image's data local?

    Parameters
    ----------
    inputs : torch.Tensor
        The crop batch fed to the model: it and every tensor computed from it are followed.

    Attributes
    ----------
    safe : bool
        ``False`` once an operation was met whose result on a crop could differ from the whole
        image's: anything but convolutions, max / average pools, constant / reflect / replicate
        pads and position-wise operations (rectifiers and other activations, eval-mode batch
        norm and dropout, local response norm, arithmetic with per-channel constants,
        concatenation and slicing along channels).
    reason : str
        What made it unsafe (for tests and debugging).
    """

    def __init__(self, inputs: torch.Tensor):
        super().__init__()
        self._seen: dict[int, torch.Tensor] = {id(inputs): inputs}
        self.safe = True
        self.reason = ""

    def derived(self, t: torch.Tensor) -> bool:
        """Whether ``t`` was computed from the crop during this pass."""
        return self._seen.get(id(t)) is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # through any mode outside this one (a RuleMode)
        if not self.safe:
            return out
        # The checks' own tensor reads (dim, shape ...) are not the model's: no other mode
        # (a RuleMode outside) should see them (they were half of that mode's calls).
        with torch._C.DisableTorchFunction():
            self._check(func, args, kwargs, out)
        return out

    def _check(self, func, args, kwargs, out) -> None:
        operands = list(_tensors(list(args) + list(kwargs.values())))
        if not any(self.derived(t) for t in operands):
            return
        outs = [t for t in _tensors(out)]
        if not outs:  # metadata (dim, size, shape ...): nothing is computed
            return
        why = self._unsafe(func, args, kwargs, operands, outs)
        if why:
            self.safe, self.reason = False, why
        else:
            for t in outs:
                self._seen[id(t)] = t

    def _unsafe(self, func, args, kwargs, operands, outs) -> str:
        name = getattr(func, "__name__", repr(func))
        if func in _WINDOWED:
            if func is F.pad and call_arg(args, kwargs, 2, "mode", "constant") not in (
                    "constant", "reflect", "replicate"):
                return f"F.pad mode {call_arg(args, kwargs, 2, 'mode')!r}"
            return ""
        if func not in _POSITIONWISE_FUNCS:
            return f"{name} is not a local operation"
        if func is F.batch_norm and call_arg(args, kwargs, 5, "training", False):
            return "batch norm with batch statistics"
        if func in (F.dropout, F.dropout2d) and call_arg(args, kwargs, 2, "training", True):
            return "dropout in training mode"
        if func is torch.cat and call_arg(args, kwargs, 1, "dim", 0) not in (1, -3):
            return "concatenation along another dimension than channels"
        if func in _CHANNEL_SPLITS and call_arg(args, kwargs, 1 if name == "narrow" else 2,
                                                "dim", 0) not in (1, -3):
            return f"{name} along another dimension than channels"
        if name == "__getitem__" and not _full_spatial_index(args[1] if len(args) > 1 else None):
            return "indexing along a spatial dimension"
        return self._shape_problem(name, operands, outs, per_channel=func is F.batch_norm)

    def _shape_problem(self, name, operands, outs, per_channel=False) -> str:
        spatial = {tuple(t.shape[-2:]) for t in operands if self.derived(t) and t.dim() == 4}
        if len(spatial) != 1 or any(t.dim() != 4 or tuple(t.shape[-2:]) not in spatial
                                    for t in outs):
            return f"{name} changes the spatial layout"
        for t in operands:
            if not per_channel and not self.derived(t) and t.numel() > 1 and \
                    (t.dim() >= 1 and t.shape[-1] != 1 or t.dim() >= 2 and t.shape[-2] != 1):
                return f"{name} with a constant that varies over positions"
        return ""
