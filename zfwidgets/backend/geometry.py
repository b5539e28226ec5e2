"""Where feature maps are and what their units see: layouts and receptive fields, tracked.

During one real forward pass :class:`GeometryMode` follows every tensor derived from the
model's input and keeps, for each, a :class:`Spatial`: which axes hold the image grid (two
axes of a ``[N, C, H, W]`` or channels-last ``[N, H, W, C]`` map, or one token axis of a vision
transformer's ``[N, 1 + h * w, D]`` sequence, class tokens first) and the receptive-field
:class:`Geometry` of its units. Each op is read by what it does to positions:

* windows (convolutions, pools, pads, strided slices, splits) move and grow the boxes exactly;
* pointwise and per-position ops (activations, batch and layer norm over channels, linear
  layers over channels, sums, joins along channels) keep the grid and take the union of what
  flows in;
* reshapes and permutes move the grid's axes (a grid flattened into tokens and back is
  followed); a reduction or a mix along a grid axis (attention, an adaptive pool whose windows
  are not uniform, interpolation, a roll) keeps the grid when the shape allows but forgets the
  geometry: ``None``, never a wrong box.

A tensor whose grid could not be followed at all has no :class:`Spatial`: it is not a map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .ops import (
    ADAPTIVE,
    ALONG_DIM,
    AVG_POOL,
    CAT,
    FACTORIES,
    GEO_CONV,
    GETITEM,
    LAST_DIMS,
    MAX_POOL,
    PAD,
    PER_POSITION,
    PERMUTE,
    RESHAPE,
    SPATIAL_MIX,
    SPLIT,
    STACK,
    UNBIND,
    TensorTable,
    call_arg,
    is_pointwise,
    op_name,
    pool_args,
    tensors_in,
)

__all__ = ["IDENTITY", "Geometry", "GeometryMode", "Spatial"]


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
class Spatial:
    """Where a tensor keeps the image grid, and what its units see.

    Attributes
    ----------
    axes : tuple of int
        ``(row_axis, column_axis)`` of a grid, or ``(token_axis,)`` of a token sequence.
    grid : tuple of int
        ``(h, w)``: the grid's size.
    offset : int
        Tokens only: index of the first grid token (the class tokens come before it); unit
        ``(y, x)`` is token ``offset + y * w + x``.
    geometry : Geometry or None
        Receptive fields of the units, ``None`` where they could not be followed.
    """

    axes: tuple[int, ...]
    grid: tuple[int, int]
    offset: int = 0
    geometry: Geometry | None = None

    @property
    def tokens(self) -> bool:
        """Whether the grid is flattened into one token axis."""
        return len(self.axes) == 1


# --------------------------------------------------------------------------- geometry algebra

def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1])) if len(v) else (0, 0)
    return int(v), int(v)


def _window(g: Geometry | None, kernel, stride, padding, dilation) -> Geometry | None:
    if g is None:
        return None
    k, s, p, d = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    size = tuple(g.size[a] + d[a] * (k[a] - 1) * g.stride[a] for a in range(2))
    start = tuple(g.start[a] - p[a] * g.stride[a] for a in range(2))
    step = tuple(g.stride[a] * s[a] for a in range(2))
    return Geometry(size, step, start)


def _union(geos) -> Geometry | None:
    geos = list(geos)
    if not geos or any(g is None for g in geos):
        return None
    if len(geos) == 1:
        return geos[0]
    if len({g.stride for g in geos}) != 1:
        return None
    start = tuple(min(g.start[a] for g in geos) for a in range(2))
    end = tuple(max(g.start[a] + g.size[a] for g in geos) for a in range(2))
    return Geometry(tuple(end[a] - start[a] for a in range(2)), geos[0].stride, start)


def _shift(g: Geometry | None, axis: int, first: int, step: int = 1) -> Geometry | None:
    """Units ``first, first + step, ...`` of grid axis ``axis`` (0 rows, 1 columns)."""
    if g is None:
        return None
    start, stride = list(g.start), list(g.stride)
    start[axis] += first * stride[axis]
    stride[axis] *= step
    return Geometry(g.size, tuple(stride), tuple(start))


def _adaptive(g: Geometry | None, ins, outs) -> Geometry | None:
    """An adaptive pool: exact where its windows are uniform (the input a multiple of the
    output), ``None`` where they are not (including every upsampling pool)."""
    if g is None:
        return None
    if any(i % o for i, o in zip(ins, outs)):
        return None
    k = tuple(i // o for i, o in zip(ins, outs))
    return _window(g, k, k, 0, 1)


def _dims(value, ndim: int) -> list[int] | None:
    """``dim`` argument(s) as non-negative ints; ``None`` for "all dims"."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [int(v) % ndim for v in value]
    return [int(value) % ndim]


def _prefix(shape, a: int) -> int:
    return math.prod(shape[:a])


def _map_axis(in_shape, out_shape, a: int) -> int | None:
    """Axis of ``out_shape`` that a row-major reshape carries axis ``a`` of ``in_shape`` to
    whole (same size, same number of elements before it), or ``None``."""
    before = _prefix(in_shape, a)
    for b in range(len(out_shape)):
        if _prefix(out_shape, b) == before and out_shape[b] == in_shape[a]:
            return b
        if _prefix(out_shape, b) > before:
            break
    return None


# --------------------------------------------------------------------------- the tracker

class GeometryMode(TorchFunctionMode):
    """Track where the image grid is, and the receptive fields, during one forward pass.

    Parameters
    ----------
    inputs : torch.Tensor
        The model's input ``[N, C, H, W]``; its grid has the identity geometry.

    Notes
    -----
    Use :meth:`spatial` / :meth:`geometry` to look a tensor up. The mode keeps references to
    the tensors it saw, so use it for one forward pass and drop it.
    """

    def __init__(self, inputs: torch.Tensor):
        super().__init__()
        self._table = TensorTable()
        nd = inputs.dim()
        self._table.put(inputs, Spatial((nd - 2, nd - 1), tuple(inputs.shape[-2:]), 0,
                                        IDENTITY))

    def spatial(self, t) -> Spatial | None:
        """Where ``t`` keeps the grid, or ``None`` when it is not a map (or was not seen)."""
        return self._table.get(t)

    def geometry(self, t) -> Geometry | None:
        """Geometry of ``t``, or ``None`` when ``t`` was not seen or could not be followed."""
        s = self._table.get(t)
        return None if s is None else s.geometry

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES:
            return out
        derived = [t for t in tensors_in(list(args) + list(kwargs.values())) if t in self._table]
        if not derived:
            return out
        pieces = [t for t in tensors_in(out) if t not in self._table or t is args[0]]
        if not pieces:
            if func is torch.Tensor.__setitem__ and args and args[0] in self._table \
                    and any(t in self._table for t in tensors_in(args[1:])):
                self._table.put(args[0], self._pointwise([args[0]] + derived, args[0]))
            return out
        try:
            found = self._follow(func, args, kwargs, out, derived)
        except Exception:  # noqa: BLE001 - an argument form not foreseen: no geometry
            found = None
        if not isinstance(found, list):
            found = [found] * len(pieces)
        for t, s in zip(pieces, found):
            self._table.put(t, s if _fits(s, t) else None)
        return out

    # -- one rule per kind of op --------------------------------------------------------------
    def _follow(self, func, args, kwargs, out, derived):
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        sx = self._table.get(x) if x is not None else None
        first = out[0] if isinstance(out, (tuple, list)) else out
        if func in CAT or func in STACK:
            return self._join(func, args, kwargs, first)
        if func in SPLIT:
            return self._split(func, args, kwargs, out, sx)
        if sx is not None and func in ALONG_DIM:
            dim = call_arg(args, kwargs, 2, "dim", 1) if func is F.normalize else \
                call_arg(args, kwargs, 1, "dim", None)
            return _along(sx, x, first, _dims(dim, x.dim()))
        if func in PER_POSITION or is_pointwise(func):
            return self._pointwise(derived, first)
        windowed = func in GEO_CONV or func in MAX_POOL or func in AVG_POOL or func in ADAPTIVE
        if windowed and sx is None and x is not None and x in self._table and x.dim() == 4:
            # a 2-d convolution or pool makes [N, C, H, W] maps of whatever it reads: the grid
            # is its last two axes, what each unit sees is not known
            return Spatial((2, 3), tuple(first.shape[-2:]), 0, None)
        if sx is None or any(self._table.get(t) is None for t in derived):
            return self._same_shape(derived, first)
        if windowed:
            return self._windowed(func, args, kwargs, first, sx)
        if func in PAD:
            return self._pad(args, kwargs, first, sx)
        if func in RESHAPE:
            return _reshaped(sx, tuple(x.shape), tuple(first.shape))
        if func in PERMUTE:
            return _permuted(func, args, sx, x.dim(), first)
        if func in GETITEM:
            return _indexed(func, args, kwargs, sx, x, first)
        if func in LAST_DIMS:
            k = 1 if func is F.linear else \
                len(_pair_tuple(call_arg(args, kwargs, 1, "normalized_shape", (0,))))
            return _along(sx, x, first, list(range(x.dim() - k, x.dim())))
        if func in SPATIAL_MIX:
            return self._same_layout(derived, first)
        return self._same_shape(derived, first)

    def _pointwise(self, derived, out, geometry: bool = True) -> Spatial | None:
        """Elementwise (broadcasting) ops: the grid of the inputs that span it; the union of
        the geometries when every input-derived argument spans the same grid."""
        found, geos = None, []
        for t in derived:
            s = self._table.get(t)
            aligned = _aligned(s, t, out) if s is not None else None
            if aligned is None:
                geometry = False
                continue
            if found is not None and (aligned.axes, aligned.offset) != (found.axes, found.offset):
                return None
            found = found or aligned
            geos.append(aligned.geometry)
        if found is None:
            return None
        return replace(found, geometry=_union(geos) if geometry else None)

    def _same_shape(self, derived, out) -> Spatial | None:
        """An op not in the vocabulary: the grid stays where it was when the result has the
        shape of every input-derived argument (which share one layout); no geometry."""
        spatials = [self._table.get(t) for t in derived]
        if any(s is None for s in spatials) or any(tuple(t.shape) != tuple(out.shape)
                                                   for t in derived):
            return None
        if len({(s.axes, s.offset, s.grid) for s in spatials}) != 1:
            return None
        return replace(spatials[0], geometry=None)

    def _same_layout(self, derived, out) -> Spatial | None:
        """Interpolation, rolls, flips ...: the grid keeps its axes (its size may change);
        which input units each one sees is not followed."""
        s = self._table.get(derived[0])
        if s is None or s.tokens or out.dim() != derived[0].dim():
            return None
        return Spatial(s.axes, tuple(out.shape[a] for a in s.axes), 0, None)

    def _windowed(self, func, args, kwargs, out, sx) -> Spatial | None:
        x = args[0]
        nd = x.dim()
        grid = tuple(out.shape[-2:])
        if sx.tokens or sx.axes != (nd - 2, nd - 1) or any(
                t is not x and t in self._table for t in tensors_in(args[1:])):
            return Spatial((nd - 2, nd - 1), grid, 0, None)  # maps of something else
        if func in GEO_CONV:
            g = _conv(sx.geometry, args, kwargs)
        elif func in ADAPTIVE:
            g = _adaptive(sx.geometry, tuple(x.shape[-2:]), grid)
        else:
            g = _window(sx.geometry, *pool_args(args, kwargs, has_dilation=func in MAX_POOL))
        return Spatial(sx.axes, grid, 0, g)

    def _pad(self, args, kwargs, out, sx) -> Spatial | None:
        x = args[0]
        pad = list(call_arg(args, kwargs, 1, "pad", ()))
        mode = call_arg(args, kwargs, 2, "mode", "constant")
        nd = x.dim()
        g = sx.geometry
        for j, a in enumerate(sx.axes):
            k = 2 * (nd - 1 - a)
            before = pad[k] if k < len(pad) else 0
            after = pad[k + 1] if k + 1 < len(pad) else 0
            if before or after:
                if sx.tokens or mode != "constant":
                    return None if sx.tokens else Spatial(sx.axes, _grid(sx, out), 0, None)
                g = _shift(g, j, -int(before))
        return Spatial(sx.axes, _grid(sx, out), sx.offset, g)

    def _join(self, func, args, kwargs, out):
        pieces = list(call_arg(args, kwargs, 0, "tensors", ()))
        nd = pieces[0].dim()
        d = int(call_arg(args, kwargs, 1, "dim", 0)) % (nd + (func in STACK))
        tracked = [(i, t, self._table.get(t)) for i, t in enumerate(pieces) if t in self._table]
        if any(s is None for _, _, s in tracked):
            return None
        s0 = tracked[0][2]
        if any((s.axes, s.offset) != (s0.axes, s0.offset) for _, _, s in tracked):
            return None
        if func in STACK:
            axes = tuple(a + (a >= d) for a in s0.axes)
            return Spatial(axes, s0.grid, s0.offset, _union(s.geometry for _, _, s in tracked))
        if d not in s0.axes:
            return Spatial(s0.axes, s0.grid, s0.offset, _union(s.geometry for _, _, s in tracked))
        if s0.tokens and len(tracked) == 1:  # class tokens joined to the patch tokens
            i = tracked[0][0]
            before = sum(int(p.shape[d]) for p in pieces[:i])
            return replace(s0, offset=s0.offset + before)
        return None

    def _split(self, func, args, kwargs, out, sx):
        x = args[0]
        if sx is None:
            return None
        nd = x.dim()
        default = 0
        d = int(call_arg(args, kwargs, 1 if func in UNBIND else 2, "dim", default)) % nd
        pieces = list(out)
        if func in UNBIND:
            if d in sx.axes:
                return None
            axes = tuple(a - (a > d) for a in sx.axes)
            return [Spatial(axes, sx.grid, sx.offset, sx.geometry)] * len(pieces)
        if d not in sx.axes:
            return [sx] * len(pieces)
        if sx.tokens:
            return None
        j = sx.axes.index(d)
        found, first = [], 0
        for p in pieces:
            found.append(Spatial(sx.axes, _grid(sx, p), 0, _shift(sx.geometry, j, first)))
            first += int(p.shape[d])
        return found


# --------------------------------------------------------------------------- the rules

def _pair_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple, torch.Size)) else (v,)


def _grid(s: Spatial, t: torch.Tensor) -> tuple[int, int]:
    return tuple(int(t.shape[a]) for a in s.axes) if not s.tokens else s.grid


def _fits(s: Spatial | None, t) -> bool:
    """Whether ``s`` describes a tensor of ``t``'s shape."""
    if s is None or not isinstance(t, torch.Tensor) or max(s.axes) >= t.dim():
        return False
    if s.tokens:
        h, w = s.grid
        return t.shape[s.axes[0]] >= s.offset + h * w
    return tuple(int(t.shape[a]) for a in s.axes) == tuple(s.grid)


def _aligned(s: Spatial, t: torch.Tensor, out: torch.Tensor) -> Spatial | None:
    """``s`` moved to ``out``'s axes under broadcasting, when ``t`` spans the whole grid."""
    shift = out.dim() - t.dim()
    axes = tuple(a + shift for a in s.axes)
    if shift < 0 or any(t.shape[a] != out.shape[b] for a, b in zip(s.axes, axes)):
        return None
    return Spatial(axes, s.grid, s.offset, s.geometry)


def _conv(g, args, kwargs):
    weight = args[1]
    stride = call_arg(args, kwargs, 3, "stride", 1)
    padding = call_arg(args, kwargs, 4, "padding", 0)
    dilation = _pair(call_arg(args, kwargs, 5, "dilation", 1))
    k = weight.shape[-2:]
    if isinstance(padding, str):
        padding = (0, 0) if padding == "valid" else \
            tuple(dilation[a] * (k[a] - 1) // 2 for a in range(2))
    return _window(g, k, stride, padding, dilation)


def _reshaped(s: Spatial, ins: tuple, outs: tuple) -> Spatial | None:
    """A row-major reshape: grid axes carried whole, a grid flattened into tokens (rows then
    columns) or tokens unflattened into a grid."""
    if not s.tokens:
        axes = tuple(_map_axis(ins, outs, a) for a in s.axes)
        if None not in axes:
            return Spatial(axes, s.grid, 0, s.geometry)
        ah, aw = s.axes
        if aw == ah + 1:
            merged = (ins[:ah] + (ins[ah] * ins[aw],) + ins[aw + 1:])
            b = _map_axis(merged, outs, ah)
            if b is not None:
                return Spatial((b,), s.grid, 0, s.geometry)
        return None
    (at,) = s.axes
    b = _map_axis(ins, outs, at)
    if b is not None:
        return Spatial((b,), s.grid, s.offset, s.geometry)
    h, w = s.grid
    if s.offset == 0 and ins[at] == h * w:
        split = ins[:at] + (h, w) + ins[at + 1:]
        b = _map_axis(split, outs, at)
        if b is not None and _map_axis(split, outs, at + 1) == b + 1:
            return Spatial((b, b + 1), s.grid, 0, s.geometry)
    return None


def _permuted(func, args, s: Spatial, nd: int, out) -> Spatial | None:
    """Axes moved by permute / transpose / movedim."""
    name = op_name(func)
    if name == "permute":
        dims = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        perm = [int(d) % nd for d in dims]
    elif name == "t":
        perm = [1, 0] if nd == 2 else list(range(nd))
    elif name in ("movedim", "moveaxis"):
        src, dst = _pair_tuple(args[1]), _pair_tuple(args[2])
        src = [int(v) % nd for v in src]
        dst = [int(v) % nd for v in dst]
        rest = iter([d for d in range(nd) if d not in src])
        perm = [None] * nd
        for a, b in zip(src, dst):
            perm[b] = a
        perm = [p if p is not None else next(rest) for p in perm]
    else:
        d0, d1 = int(args[1]) % nd, int(args[2]) % nd
        perm = list(range(nd))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return replace(s, axes=tuple(perm.index(a) for a in s.axes))


def _along(s: Spatial, x, out, dims) -> Spatial | None:
    """An op along ``dims`` (a reduction, softmax, a norm or linear map over channels)."""
    nd = x.dim()
    dims = list(range(nd)) if dims is None else dims
    if isinstance(out, torch.Tensor) and out.dim() == nd:  # kept dims
        if any(out.shape[a] != x.shape[a] for a in s.axes):
            return None
        mixes = any(a in dims for a in s.axes)
        return replace(s, geometry=None) if mixes else s
    if any(a in dims for a in s.axes):
        return None
    return replace(s, axes=tuple(a - sum(d < a for d in dims) for a in s.axes))


def _index_items(index, nd: int) -> list | None:
    """A ``__getitem__`` index as one item per input dim (``None`` items insert a dim)."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(not (isinstance(i, (int, slice)) or i is None or i is Ellipsis) or
           isinstance(i, bool) for i in items):
        return None
    if Ellipsis in items:
        k = items.index(Ellipsis)
        real = sum(1 for i in items if i is not None and i is not Ellipsis)
        items[k:k + 1] = [slice(None)] * (nd - real)
    real = sum(1 for i in items if i is not None)
    return items + [slice(None)] * (nd - real)


def _indexed(func, args, kwargs, s: Spatial, x, out) -> Spatial | None:
    """Basic indexing, ``narrow`` and ``select``: strided slices of the grid move its boxes."""
    nd = x.dim()
    name = op_name(func)
    if name == "narrow":
        d = int(args[1]) % nd
        items = [slice(None)] * nd
        items[d] = slice(int(args[2]), int(args[2]) + int(args[3]))
    elif name == "select":
        items = [slice(None)] * nd
        items[int(args[1]) % nd] = int(args[2])
    else:
        items = _index_items(args[1], nd)
        if items is None:
            return None
    axes, grid, offset, g = [], list(s.grid), s.offset, s.geometry
    src, dst = 0, 0
    for item in items:
        if item is None:
            dst += 1
            continue
        if isinstance(item, int):
            if src in s.axes:
                return None
            src += 1
            continue
        if src in s.axes:
            start, stop, step = item.indices(int(x.shape[src]))
            if s.tokens:
                if step != 1 or start > offset or stop < offset + grid[0] * grid[1]:
                    return None
                offset -= start
            elif (start, stop, step) != (0, int(x.shape[src]), 1):
                j = s.axes.index(src)
                g = _shift(g, j, start, step)
                grid[j] = int(out.shape[dst])
            axes.append(dst)
        src += 1
        dst += 1
    return Spatial(tuple(axes), tuple(grid), offset, g)
