"""The exact streaming top-k: one total order on hits, per-batch candidates, exact merges.

Hits are ranked by ``(value descending, pre-activation descending, image ascending, y ascending,
x ascending)``: a total order, so the top ``k`` of a data set is one well-defined set whatever
the batch size, the order in which batches arrive or how the data was split into shards.

The *pre-activation* is the rectifier's input, recorded for a layer that is the output of a
rectifier module (ReLU, ReLU6, LeakyReLU, Hardtanh, Threshold); for any other layer it is the
value itself (so it changes nothing). Saturating rectifiers make many exact ties: on
EfficientNet-Lite0 whole top-9 lists read 6.00, and dead maps tie at 0. Among tied outputs the
hits that drove the rectifier hardest come first (the ReLU6 units furthest past the cap, the dead
units closest to firing), so the top-9 still ranks what the unit responds to most, instead of
falling back to the order of the images. Only exact ties of both value and pre-activation go to
image and position. A rectifier being non-decreasing, ranking by ``(value, pre-activation)`` is
ranking by the pre-activation alone: the miner picks each map's top positions from the
rectifier's input in a pre-hook (before an in-place rectifier overwrites it) and reads the values
at those positions from the output, so the tie-break costs no extra pass over the maps. A :class:`Miner` keeps a running
top ``k`` per channel of several layers and merges each batch's candidates into it with that
order; :func:`merge` does the same for two results over disjoint images. Memory is
``O(layers x channels x k)`` whatever the number of images.

A hit set is handled as *candidates* ``(values, pre, image, pos)``, each ``[C, n]``, with
``pos`` the flat position ``y * W + x`` and ``image == -1`` in empty slots; :func:`finish` turns the
running state into a :class:`~zfwidgets.backend.mining.LayerTopK`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import BadParameterError, UnknownLayerError
from ..layers import Layout, capture, model_dtype, resolve_layer, run_captured, scoped_eval
from ..ops import RECTIFIER_MODULES
from .results import MAX_SKIPPED_KEPT, LayerTopK, MiningResult

__all__ = ["Miner", "candidates", "candidates_at", "check_k", "check_per_image", "finish", "merge",
           "merge_candidates", "order_key", "rectifier_layers"]

_INT64_MAX = torch.iinfo(torch.int64).max

Candidates = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def check_k(k) -> int:
    """``k`` as an int; :class:`~zfwidgets.BadParameterError` unless a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BadParameterError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_per_image(per_image) -> int | None:
    """``per_image`` as an int or ``None``; :class:`~zfwidgets.BadParameterError` otherwise."""
    if per_image is None:
        return None
    if isinstance(per_image, bool) or not isinstance(per_image, (int, np.integer)) or per_image < 1:
        raise BadParameterError(f"per_image must be a positive integer or None, got {per_image!r}")
    return int(per_image)


# ============================================================================ the order

def _sortable(v: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in ``[-2**31, 2**31)`` with the same order (``-0.0`` counted as ``0.0``,
    NaN as ``-inf``)."""
    v = torch.nan_to_num(v.float(), nan=float("-inf")) + 0.0  # -0.0 + 0.0 == +0.0
    bits = v.view(torch.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)


def order_key(values: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """One int64 per hit whose order is ``(value, pre-activation)``, lexicographically: the
    value's sortable bits above, the pre-activation's below (both exact)."""
    return _sortable(values) * (1 << 32) + (_sortable(pre) + (1 << 31))


def _topk_first(flat: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``m`` along the last dim, ties broken by position ascending (exact); ``flat`` is a
    float tensor of values or an int64 :func:`order_key`.

    ``torch.topk`` picks arbitrarily among equal values, and ReLU6 / ReLU maps are full of ties
    (6.0, 0.0). A row is *ambiguous* when more than ``m`` of its values reach its m-th largest
    value ``t``. Only those rows are redone, with a second ``topk`` over the key ``2 HW`` (value
    above ``t``), ``HW - position`` (value equal to ``t``), ``0`` (below): it selects every value
    above ``t`` and then the lowest tied positions.
    """
    vals, idx = flat.topk(m, dim=-1)
    t = vals[..., -1:]
    ambiguous = (flat >= t).sum(-1) > m
    if bool(ambiguous.any()):
        rows, tr = flat[ambiguous], t[ambiguous]
        hw = flat.shape[-1]
        rank = torch.arange(hw, 0, -1, device=flat.device, dtype=torch.float32)
        key = torch.where(rows >= tr, rank, torch.zeros((), device=flat.device))
        key.masked_fill_(rows > tr, 2.0 * hw)
        idx = idx.clone()
        idx[ambiguous] = key.topk(m, dim=-1).indices
        vals = flat.gather(-1, idx)
    return vals, idx


def _positions(t: torch.Tensor, m: int) -> torch.Tensor:
    """``[N, C, m]`` flat positions of the ``m`` largest values of each map of ``t``
    ``[N, C, H, W]``, ties by position ascending."""
    n, c, h, w = t.shape
    flat = t.detach().reshape(n, c, h * w)
    if flat.dtype != torch.float32:
        flat = flat.float()
    if m == 1:  # torch.max returns the first maximal position: ties -> lowest (y, x)
        return flat.max(dim=2).indices[..., None]
    return _topk_first(flat, m)[1]


def _gather(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    n, c = t.shape[:2]
    return t.detach().reshape(n, c, -1).gather(-1, p).float()


def candidates_at(act: torch.Tensor, ids: torch.Tensor, p: torch.Tensor,
                  pre: torch.Tensor | None = None) -> Candidates:
    """Candidates ``[C, N * m]`` at the flat positions ``p`` ``[N, C, m]`` of ``act``;
    ``pre`` ``[N, C, m]`` their pre-activations (default the values)."""
    n, c, m = p.shape
    v = _gather(act, p)
    q = v if pre is None else pre.float()
    img = ids.view(1, n, 1).expand(c, n, m).reshape(c, n * m)
    return (torch.nan_to_num(v.permute(1, 0, 2).reshape(c, n * m), nan=float("-inf")),
            torch.nan_to_num(q.permute(1, 0, 2).reshape(c, n * m), nan=float("-inf")),
            img, p.permute(1, 0, 2).reshape(c, n * m))


def candidates(act: torch.Tensor, ids: torch.Tensor, m: int,
               pre: torch.Tensor | None = None) -> Candidates:
    """The best ``m`` positions of every image and channel of one batch, ``[C, N * m]`` each.

    Parameters
    ----------
    act : torch.Tensor
        ``[N, C, H, W]`` activations of one layer.
    ids : torch.Tensor
        ``[N]`` int64 global image ids.
    m : int
        Positions kept per image and channel (at most ``H * W``).
    pre : torch.Tensor, optional
        ``[N, C, H, W]`` pre-activations, of which ``act`` is a non-decreasing function (a
        rectifier's input): then ranking by ``(act, pre)`` is ranking by ``pre`` alone, which is
        what selects the positions. Default ``act`` itself.
    """
    m = min(m, act.shape[2] * act.shape[3])
    p = _positions(act if pre is None else pre, m)
    return candidates_at(act, ids, p, None if pre is None else _gather(pre, p))


def merge_candidates(a: Candidates | None, b: Candidates, k: int, hw: int) -> Candidates:
    """Exact top ``k`` of the union of two candidate sets (``a`` may be ``None``: empty).

    Order: value descending, pre-activation descending, then image, then position ascending
    (empty slots, image -1, last).
    """
    if a is not None:
        if a[0].device != b[0].device:  # a state restored from disk meets a batch on a GPU
            a = tuple(t.to(b[0].device) for t in a)
        v, pre, img, pos = (torch.cat([x, y], 1) for x, y in zip(a, b))
    else:
        v, pre, img, pos = b
    secondary = torch.where(img >= 0, img * hw + pos, torch.full_like(img, _INT64_MAX))
    order = secondary.argsort(dim=1, stable=True)
    key = order_key(v, pre).gather(1, order)
    order = order.gather(1, key.argsort(dim=1, descending=True, stable=True))[:, :k]
    return v.gather(1, order), pre.gather(1, order), img.gather(1, order), pos.gather(1, order)


def finish(state: Candidates | None, layer: str, shape: tuple[int, int, int], k: int) -> LayerTopK:
    """The :class:`LayerTopK` of a running state: on the CPU, padded to ``k`` slots."""
    c, h, w = shape
    if state is None:
        v = pre = torch.empty(c, 0)
        img = pos = torch.empty(c, 0, dtype=torch.int64)
    else:
        v, pre, img, pos = (t.detach().cpu().clone() for t in state)
    if v.shape[1] < k:  # fewer hits than slots: pad
        pad = k - v.shape[1]
        v = torch.cat([v.float(), torch.full((c, pad), float("-inf"))], 1)
        pre = torch.cat([pre.float(), torch.full((c, pad), float("-inf"))], 1)
        img = torch.cat([img, torch.full((c, pad), -1, dtype=torch.int64)], 1)
        pos = torch.cat([pos, torch.full((c, pad), -1, dtype=torch.int64)], 1)
    valid = img >= 0
    y = torch.where(valid, pos // w, torch.full_like(pos, -1))
    x = torch.where(valid, pos % w, torch.full_like(pos, -1))
    return LayerTopK(layer, v.float().contiguous(), img.contiguous(), y.contiguous(),
                     x.contiguous(), (c, h, w), pre=pre.float().contiguous())


def _candidates_of(t: LayerTopK) -> Candidates:
    c, h, w = t.shape
    pos = torch.where(t.image >= 0, t.y * w + t.x, torch.zeros_like(t.y))
    return t.values, t.values if t.pre is None else t.pre, t.image, pos


def _monotone_rectifier(module: nn.Module) -> bool:
    if isinstance(module, nn.LeakyReLU):
        return module.negative_slope >= 0
    if isinstance(module, nn.Threshold):
        return module.value <= module.threshold
    return isinstance(module, RECTIFIER_MODULES)


def rectifier_layers(model: nn.Module, layers: Sequence[str],
                     known: Sequence[str] | None = None) -> list[str]:
    """The ``layers`` that are the output of a rectifier module, a non-decreasing function of
    its input (ReLU, ReLU6, Hardtanh, LeakyReLU, Threshold with ``value <= threshold``): their
    input, the pre-activation, breaks ties among their values."""
    return [layer for layer in layers
            if _monotone_rectifier(resolve_layer(model, layer, known)[0])]


# ============================================================================ streaming state

class Miner:
    """Streaming top-k state for several layers of one model; feed it batches.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (restored after each batch), under ``torch.inference_mode``.
    layers : sequence of str
        Layer ids.
    k : int
        Hits kept per channel.
    per_image : int or None
        At most this many hits per image and channel (``None``: no limit).
    known : sequence of str, optional
        Valid layer ids, for error messages.
    layouts : mapping of str to Layout, optional
        The layers' :attr:`~zfwidgets.backend.layers.LayerInfo.layout` (token and
        channels-last layers are mined as maps, :func:`~zfwidgets.backend.layers.as_maps`).

    Examples
    --------
    >>> miner = Miner(model, ["features.relu1"], k=9)      # doctest: +SKIP
    >>> for ids, x in batches:                             # doctest: +SKIP
    ...     miner.update(x, ids)
    >>> top = miner.result()["features.relu1"]             # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], k: int = 9,
                 per_image: int | None = 1, known: Sequence[str] | None = None,
                 layouts: Mapping[str, Layout | None] | None = None):
        self.model = model
        self.layouts = dict(layouts or {})
        self.layers = list(dict.fromkeys(layers))
        if not self.layers:
            raise BadParameterError("no layers to mine")
        self.k = check_k(k)
        self.per_image = check_per_image(per_image)
        self.known = known
        self.states: dict[str, Candidates] = {}
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.forward_passes = 0
        self.pre_layers = rectifier_layers(model, self.layers, known)

    def _forward(self, x: torch.Tensor, each: Callable[[str, torch.Tensor, object], None],
                 m: int = 1) -> None:
        """One forward pass up to the deepest layer; ``each(layer, output, chosen)`` as each is
        made. For :attr:`pre_layers` ``chosen`` is ``(positions, pre-activations)`` of the top
        ``m`` of each map, taken from the rectifier's input before it runs (an in-place one
        overwrites it; the rectifier being non-decreasing, the top of its input is the top of
        its output, ties at its bounds ranked), else ``None``."""
        seen = set()
        inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def on_input(layer, inp):
            if isinstance(inp, torch.Tensor) and inp.dim() == 4:
                p = _positions(inp, min(m, inp.shape[2] * inp.shape[3]))
                inputs[layer] = (p, _gather(inp, p))

        def on_output(layer, out):
            if not (isinstance(out, torch.Tensor) and out.dim() == 4):
                shape = list(out.shape) if isinstance(out, torch.Tensor) else ""
                raise BadParameterError(f"layer {layer!r} does not output a 4-d feature map "
                                        f"(got {type(out).__name__}{shape})")
            self.shapes.setdefault(layer, tuple(int(s) for s in out.shape[1:]))
            seen.add(layer)
            chosen = inputs.pop(layer, None)
            each(layer, out, chosen if chosen is not None and
                 tuple(chosen[0].shape[:2]) == tuple(out.shape[:2]) else None)

        x = x.to(model_dtype(self.model))
        pre_layouts = {layer: self.layouts[layer] for layer in self.pre_layers
                       if self.layouts.get(layer) is not None}
        with capture(self.model, self.pre_layers, on_input, known=self.known, inputs=True,
                     layouts=pre_layouts):
            run_captured(self.model, x, self.layers, on_output, known=self.known,
                         layouts=self.layouts)
        self.forward_passes += 1
        missing = [layer for layer in self.layers if layer not in seen]
        if missing:
            raise UnknownLayerError(missing[0], self.known or [])

    def update(self, x: torch.Tensor, ids: Sequence[int] | torch.Tensor) -> None:
        """Mine one batch: ``x`` ``[N, 3, H, W]`` preprocessed, ``ids`` its N global image ids."""
        ids = torch.as_tensor(ids, dtype=torch.int64, device=x.device).reshape(-1)
        if ids.numel() != x.shape[0]:
            raise BadParameterError(f"{x.shape[0]} images but {ids.numel()} ids")
        if x.shape[0] == 0:
            return
        m = self.k if self.per_image is None else min(self.per_image, self.k)
        cands: dict[str, Candidates] = {}
        with torch.inference_mode(), scoped_eval(self.model):
            self._forward(x, lambda layer, out, chosen: cands.__setitem__(
                layer, candidates(out, ids, m) if chosen is None else
                candidates_at(out, ids, *chosen)), m)
            new = {}
            for layer in self.layers:
                c, h, w = self.shapes[layer]
                new[layer] = merge_candidates(self.states.get(layer), cands[layer], self.k, h * w)
        self.states = new  # one assignment: the state is always a consistent snapshot

    def learn_shapes(self, x: torch.Tensor) -> None:
        """Record the layers' shapes from a forward pass of ``x`` without mining it (for a run
        that met no readable image)."""
        with torch.inference_mode(), scoped_eval(self.model):
            self._forward(x, lambda layer, out, pre: None)

    def result(self) -> dict[str, LayerTopK]:
        """The current top ``k`` per layer (CPU tensors)."""
        return {layer: finish(self.states.get(layer), layer, self.shapes[layer], self.k)
                for layer in self.layers if layer in self.shapes}

    def snapshot(self) -> dict:
        """The state as plain CPU data (``{"states": ..., "shapes": ...}``), for a checkpoint."""
        return {"states": {layer: [t.detach().cpu() for t in s] for layer, s in self.states.items()},
                "shapes": {layer: list(s) for layer, s in self.shapes.items()}}

    def restore(self, snapshot: dict) -> None:
        """Continue from a :meth:`snapshot` (of a miner over the same model, layers, ``k``)."""
        states = {layer: tuple(s) if len(s) == 4 else (s[0], s[0], s[1], s[2])  # no pre
                  for layer, s in snapshot["states"].items()}
        shapes = {layer: tuple(int(v) for v in s) for layer, s in snapshot["shapes"].items()}
        unknown = sorted((set(states) | set(shapes)) - set(self.layers))
        if unknown:
            raise BadParameterError(f"the snapshot holds layers {unknown} this miner does not mine")
        self.states, self.shapes = states, shapes


# ============================================================================ merge

def merge(a: MiningResult | LayerTopK, b: MiningResult | LayerTopK) -> MiningResult | LayerTopK:
    """Merge the results of two runs over disjoint sets of images, exactly.

    The result equals what one run over both sets would give (same values, ids and positions,
    same order), because hits are ranked by a total order. With ``per_image=1`` the two runs must
    not share images (shards of one data set never do).

    Parameters
    ----------
    a, b : MiningResult or LayerTopK
        Same layers, ``k``, ``per_image``, model and preprocessing.

    Returns
    -------
    MiningResult or LayerTopK
        Same type as the inputs.

    Raises
    ------
    BadParameterError
        The results cannot be merged (different layers, k, model ...).
    """
    if isinstance(a, LayerTopK) and isinstance(b, LayerTopK):
        if a.layer != b.layer or a.shape != b.shape or a.k != b.k:
            raise BadParameterError(
                f"cannot merge layer {a.layer!r} {a.shape} k={a.k} with {b.layer!r} {b.shape} "
                f"k={b.k}")
        c, h, w = a.shape
        state = merge_candidates(_candidates_of(a), _candidates_of(b), a.k, h * w)
        return finish(state, a.layer, a.shape, a.k)
    if not (isinstance(a, MiningResult) and isinstance(b, MiningResult)):
        raise BadParameterError(f"merge needs two MiningResult (or two LayerTopK), got "
                                f"{type(a).__name__} and {type(b).__name__}")
    for what in ("k", "per_image", "model", "preprocessing"):
        if getattr(a, what) != getattr(b, what):
            raise BadParameterError(f"cannot merge results with different {what}: "
                                    f"{getattr(a, what)!r} vs {getattr(b, what)!r}")
    if set(a.layers) != set(b.layers):
        raise BadParameterError(f"cannot merge results over different layers: "
                                f"{sorted(a.layers)} vs {sorted(b.layers)}")
    if a.shard is not None and a.shard == b.shard:
        raise BadParameterError(f"both results are shard {a.shard}: merging a shard with itself "
                                "would count its images twice")
    layers = {name: merge(a.layers[name], b.layers[name]) for name in a.layers}
    skipped = sorted(a.skipped + b.skipped)[:MAX_SKIPPED_KEPT]
    return MiningResult(layers=layers, k=a.k, per_image=a.per_image,
                        n_images=a.n_images + b.n_images, n_skipped=a.n_skipped + b.n_skipped,
                        skipped=skipped, source=a.source or b.source,
                        source_spec=a.source_spec or b.source_spec, model=a.model,
                        preprocessing=a.preprocessing,
                        data=a.data if a.data == b.data else None, shard=None)
