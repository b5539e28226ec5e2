"""The exact streaming top-k: one total order on hits, per-batch candidates, exact merges.

Hits are ranked by ``(value descending, image ascending, y ascending, x ascending)``: a total
order, so the top ``k`` of a data set is one well-defined set whatever the batch size, the order
in which batches arrive or how the data was split into shards. A :class:`Miner` keeps a running
top ``k`` per channel of several layers and merges each batch's candidates into it with that
order; :func:`merge` does the same for two results over disjoint images. Memory is
``O(layers x channels x k)`` whatever the number of images.

A hit set is handled as *candidates* ``(values, image, pos)``, each ``[C, n]``, with ``pos``
the flat position ``y * W + x`` and ``image == -1`` in empty slots; :func:`finish` turns the
running state into a :class:`~zfwidgets.backend.mining.LayerTopK`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import BadParameterError, UnknownLayerError
from ..layers import Layout, model_dtype, run_captured, scoped_eval
from .results import MAX_SKIPPED_KEPT, LayerTopK, MiningResult

__all__ = ["Miner", "candidates", "check_k", "check_per_image", "finish", "merge",
           "merge_candidates"]

_INT64_MAX = torch.iinfo(torch.int64).max

Candidates = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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

def _topk_first(flat: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``m`` along the last dim, ties broken by position ascending (exact).

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


def candidates(act: torch.Tensor, ids: torch.Tensor, m: int) -> Candidates:
    """The best ``m`` positions of every image and channel of one batch, ``[C, N * m]`` each.

    Parameters
    ----------
    act : torch.Tensor
        ``[N, C, H, W]`` activations of one layer.
    ids : torch.Tensor
        ``[N]`` int64 global image ids.
    m : int
        Positions kept per image and channel (at most ``H * W``).
    """
    n, c, h, w = act.shape
    flat = act.detach().reshape(n, c, h * w)
    if flat.dtype != torch.float32:
        flat = flat.float()
    m = min(m, h * w)
    if m == 1:  # torch.max returns the first maximal position: ties -> lowest (y, x)
        v, p = flat.max(dim=2)
        v, p = v.t(), p.t()
        img = ids.view(1, n).expand(c, n)
    else:
        v, p = _topk_first(flat, m)
        v = v.permute(1, 0, 2).reshape(c, n * m)
        p = p.permute(1, 0, 2).reshape(c, n * m)
        img = ids.view(1, n, 1).expand(c, n, m).reshape(c, n * m)
    return torch.nan_to_num(v, nan=float("-inf")), img, p


def merge_candidates(a: Candidates | None, b: Candidates, k: int, hw: int) -> Candidates:
    """Exact top ``k`` of the union of two candidate sets (``a`` may be ``None``: empty).

    Order: value descending, then image, then position ascending (empty slots, image -1, last).
    """
    if a is not None:
        if a[0].device != b[0].device:  # a state restored from disk meets a batch on a GPU
            a = tuple(t.to(b[0].device) for t in a)
        v = torch.cat([a[0], b[0]], 1)
        img = torch.cat([a[1], b[1]], 1)
        pos = torch.cat([a[2], b[2]], 1)
    else:
        v, img, pos = b
    secondary = torch.where(img >= 0, img * hw + pos, torch.full_like(img, _INT64_MAX))
    order = secondary.argsort(dim=1, stable=True)
    order = order.gather(1, v.gather(1, order).argsort(dim=1, descending=True, stable=True))
    order = order[:, :k]
    return v.gather(1, order), img.gather(1, order), pos.gather(1, order)


def finish(state: Candidates | None, layer: str, shape: tuple[int, int, int], k: int) -> LayerTopK:
    """The :class:`LayerTopK` of a running state: on the CPU, padded to ``k`` slots."""
    c, h, w = shape
    if state is None:
        v = torch.empty(c, 0)
        img = pos = torch.empty(c, 0, dtype=torch.int64)
    else:
        v, img, pos = (t.detach().cpu().clone() for t in state)
    if v.shape[1] < k:  # fewer hits than slots: pad
        pad = k - v.shape[1]
        v = torch.cat([v.float(), torch.full((c, pad), float("-inf"))], 1)
        img = torch.cat([img, torch.full((c, pad), -1, dtype=torch.int64)], 1)
        pos = torch.cat([pos, torch.full((c, pad), -1, dtype=torch.int64)], 1)
    valid = img >= 0
    y = torch.where(valid, pos // w, torch.full_like(pos, -1))
    x = torch.where(valid, pos % w, torch.full_like(pos, -1))
    return LayerTopK(layer, v.float().contiguous(), img.contiguous(), y.contiguous(),
                     x.contiguous(), (c, h, w))


def _candidates_of(t: LayerTopK) -> Candidates:
    c, h, w = t.shape
    pos = torch.where(t.image >= 0, t.y * w + t.x, torch.zeros_like(t.y))
    return t.values, t.image, pos


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

    def _forward(self, x: torch.Tensor, each: Callable[[str, torch.Tensor], None]) -> None:
        """One forward pass up to the deepest layer; ``each(layer, output)`` as each is made."""
        seen = set()

        def on_output(layer, out):
            if not (isinstance(out, torch.Tensor) and out.dim() == 4):
                shape = list(out.shape) if isinstance(out, torch.Tensor) else ""
                raise BadParameterError(f"layer {layer!r} does not output a 4-d feature map "
                                        f"(got {type(out).__name__}{shape})")
            self.shapes.setdefault(layer, tuple(int(s) for s in out.shape[1:]))
            seen.add(layer)
            each(layer, out)

        run_captured(self.model, x.to(model_dtype(self.model)), self.layers, on_output,
                     known=self.known, layouts=self.layouts)
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
            self._forward(x, lambda layer, out: cands.__setitem__(layer, candidates(out, ids, m)))
            new = {}
            for layer in self.layers:
                c, h, w = self.shapes[layer]
                new[layer] = merge_candidates(self.states.get(layer), cands[layer], self.k, h * w)
        self.states = new  # one assignment: the state is always a consistent snapshot

    def learn_shapes(self, x: torch.Tensor) -> None:
        """Record the layers' shapes from a forward pass of ``x`` without mining it (for a run
        that met no readable image)."""
        with torch.inference_mode(), scoped_eval(self.model):
            self._forward(x, lambda layer, out: None)

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
        states = {layer: tuple(s) for layer, s in snapshot["states"].items()}
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
