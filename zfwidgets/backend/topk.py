"""Top-k mining over a data set (the paper's Fig. 2), mergeable across shards, cached on disk.

For every channel of every requested layer, :func:`mine` keeps the ``k`` strongest activations
seen over a whole data set: their values, the image id and the position ``(y, x)`` in the
feature map. The data is streamed once, one forward pass per batch for all layers together, and
the forward pass stops as soon as the deepest requested layer has been computed.

Exactness and order independence
--------------------------------
Hits are ranked by ``(value descending, image ascending, y ascending, x ascending)``: a total
order, so the top ``k`` of a data set is one well-defined set whatever the batch size, the order
in which batches arrive or how the data was split into shards. Streaming keeps a running top
``k`` per channel and merges each batch's candidates into it with that order; :func:`merge`
does the same for two results over disjoint images, so sharded runs (``torchrun``, see
:mod:`zfwidgets.mining_cli`) give exactly the single-process answer. Memory is
``O(layers x channels x k)`` whatever the number of images.

``per_image=1`` (the default) keeps at most one hit per image and channel, its strongest
position, as the paper's galleries show nine different images; ``per_image=m`` allows up to
``m`` positions per image, ``per_image=None`` any number.

Disk cache
----------
With ``cache_dir``, each layer's result is stored under a key made of the model (class, weights
id and a hash of its current parameters), the layer, ``k`` / ``per_image``, the preprocessing
fingerprint and the data fingerprint. Files are written atomically (temporary file in the same
folder + :func:`os.replace`) and read with ``torch.load(weights_only=True)``. A long run writes a
checkpoint every ``checkpoint_every`` seconds (and when interrupted by an exception); a rerun
resumes from it and ends with the same result as one clean run.

The gallery (:func:`gallery`) turns hits into what Fig. 2 shows: the receptive-field crop of the
preprocessed image and the deconvnet projection of that single activation, batched.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageSource, as_source, source_from_spec
from ..errors import (BadImageError, BadParameterError, DataError, OutOfRangeError,
                      UnknownLayerError)
from ..fingerprint import key_digest, model_id
from .defaults import mining_layers
from .layers import receptive_field_box, run_captured, scoped_eval
from .project import Target, project
from .rules import check_rule

__all__ = ["LayerTopK", "MiningResult", "Miner", "mine", "mine_steps", "merge", "gather_merge", "load_result",
           "Gallery", "gallery", "mining_batch_size"]

#: Version of the cache / result file layout; bumping it invalidates old cache files.
FORMAT_VERSION = 1
_INT64_MAX = torch.iinfo(torch.int64).max
_MAX_SKIPPED_KEPT = 1000  # reasons kept per result; the count is always exact

ProgressCallback = Callable[[int, int, int], None]


# ============================================================================ results

@dataclass
class LayerTopK:
    """The ``k`` strongest hits of every channel of one layer.

    Attributes
    ----------
    layer : str
        Layer id.
    values : torch.Tensor
        ``[C, k]`` float32 activations, sorted descending along ``k``. Unused slots (fewer hits
        than ``k``) hold ``-inf``.
    image : torch.Tensor
        ``[C, k]`` int64 image ids (indices into the mined source); ``-1`` in unused slots.
    y, x : torch.Tensor
        ``[C, k]`` int64 positions in the feature map; ``-1`` in unused slots.
    shape : tuple of int
        The layer's output shape ``(C, H, W)``.
    """

    layer: str
    values: torch.Tensor
    image: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    shape: tuple[int, int, int]

    @property
    def k(self) -> int:
        """Slots per channel."""
        return int(self.values.shape[1])

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.values.shape[0])

    def hits(self, channel: int) -> list[tuple[float, int, int, int]]:
        """The hits of ``channel`` as ``[(value, image, y, x), ...]``, strongest first."""
        if not 0 <= int(channel) < self.channels:
            raise OutOfRangeError(f"channel {channel} is out of range for layer {self.layer!r} "
                                  f"({self.channels} channels: 0..{self.channels - 1})")
        c = int(channel)
        return [(float(self.values[c, j]), int(self.image[c, j]), int(self.y[c, j]),
                 int(self.x[c, j])) for j in range(self.k) if int(self.image[c, j]) >= 0]

    def _state(self) -> dict:
        return {"layer": self.layer, "values": self.values, "image": self.image, "y": self.y,
                "x": self.x, "shape": list(self.shape)}

    @classmethod
    def _from_state(cls, s: dict) -> LayerTopK:
        return cls(s["layer"], s["values"], s["image"], s["y"], s["x"],
                   tuple(int(v) for v in s["shape"]))


@dataclass
class MiningResult:
    """What :func:`mine` returns: one :class:`LayerTopK` per layer plus how the data went.

    Index it by layer id (``result["head.act"]``) or iterate over :attr:`layers`.

    Attributes
    ----------
    layers : dict of str to LayerTopK
    k : int
    per_image : int or None
    n_images : int
        Images mined (readable ones).
    n_skipped : int
        Items skipped because they could not be read as images.
    skipped : list of (int, str, str)
        ``(image id, name, reason)`` of skipped items (the first 1000).
    source : ImageSource or None
        The data, so that image ``i`` can be loaded again (``None`` when it could not be
        rebuilt from a result file).
    source_spec : dict or None
        Plain-data description of the source (a folder's root ...).
    model : str
        Model id (see :func:`zfwidgets.fingerprint.model_id`).
    preprocessing : str
        Preprocessing fingerprint.
    data : str or None
        Data fingerprint.
    shard : tuple of int or None
        ``(rank, world_size)`` for a shard's result; ``None`` for the whole data.
    """

    layers: dict[str, LayerTopK]
    k: int
    per_image: int | None
    n_images: int = 0
    n_skipped: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    source: ImageSource | None = field(default=None, repr=False, compare=False)
    source_spec: dict | None = field(default=None, repr=False)
    model: str = ""
    preprocessing: str = ""
    data: str | None = None
    shard: tuple[int, int] | None = None

    def __getitem__(self, layer: str) -> LayerTopK:
        try:
            return self.layers[layer]
        except KeyError:
            raise UnknownLayerError(layer, list(self.layers)) from None

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def summary(self) -> str:
        """One line: images mined, items skipped, layers."""
        text = f"{self.n_images} images mined"
        if self.n_skipped:
            text += f", {self.n_skipped} unreadable item(s) skipped"
            if self.skipped:
                text += f" (e.g. {self.skipped[0][1]}: {self.skipped[0][2]})"
        return text + f"; layers {', '.join(self.layers)}"

    def _meta(self) -> dict:
        return {"k": self.k, "per_image": self.per_image, "n_images": self.n_images,
                "n_skipped": self.n_skipped, "skipped": [list(s) for s in self.skipped],
                "source_spec": json.dumps(self.source_spec), "model": self.model,
                "preprocessing": self.preprocessing, "data": self.data,
                "shard": list(self.shard) if self.shard else None}

    def to_state(self) -> dict:
        """Plain data (tensors, numbers, strings) for ``torch.save`` / ``all_gather_object``."""
        return {"format": FORMAT_VERSION, "meta": self._meta(),
                "layers": {name: t._state() for name, t in self.layers.items()}}

    @classmethod
    def from_state(cls, state: dict, source: ImageSource | None = None) -> MiningResult:
        """Inverse of :meth:`to_state`; ``source`` defaults to one rebuilt from the spec."""
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            raise DataError("not a zfwidgets mining result of format "
                            f"{FORMAT_VERSION} (got {type(state).__name__})")
        meta = state["meta"]
        spec = json.loads(meta["source_spec"]) if meta.get("source_spec") else None
        return cls(layers={n: LayerTopK._from_state(s) for n, s in state["layers"].items()},
                   k=int(meta["k"]), per_image=meta["per_image"], n_images=int(meta["n_images"]),
                   n_skipped=int(meta["n_skipped"]),
                   skipped=[(int(a), str(b), str(c)) for a, b, c in meta["skipped"]],
                   source=source if source is not None else source_from_spec(spec),
                   source_spec=spec, model=meta["model"], preprocessing=meta["preprocessing"],
                   data=meta["data"], shard=tuple(meta["shard"]) if meta["shard"] else None)

    def save(self, path: str | os.PathLike) -> None:
        """Write the result to ``path`` atomically (``torch.save`` of plain data)."""
        _atomic_save(self.to_state(), pathlib.Path(path))


def load_result(path: str | os.PathLike, source: ImageSource | None = None) -> MiningResult:
    """Read a result written by :meth:`MiningResult.save` or ``zfwidgets mine``.

    Parameters
    ----------
    path : str or path-like
    source : ImageSource, optional
        The mined data; default: rebuilt from the file's description (a folder, paths, the
        samples), ``None`` for a torch Dataset.

    Raises
    ------
    DataError
        The file cannot be read or is not a mining result.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read mining result {str(path)!r}: {exc}") from exc
    return MiningResult.from_state(state, source)


# ============================================================================ exact top-k

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


def _candidates(act: torch.Tensor, ids: torch.Tensor, m: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image candidates ``(values, image, pos)``, each ``[C, N * m]``, of one batch."""
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


def _merge(a: tuple | None, b: tuple, k: int, hw: int) -> tuple:
    """Exact top ``k`` of the union of two candidate sets ``(values, image, pos)`` ``[C, *]``.

    Order: value descending, then image, then position ascending (empty slots, image -1, last).
    """
    if a is not None:
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


def _finish(state: tuple | None, layer: str, shape: tuple[int, int, int], k: int) -> LayerTopK:
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


def _state_of(t: LayerTopK) -> tuple:
    c, h, w = t.shape
    pos = torch.where(t.image >= 0, t.y * w + t.x, torch.zeros_like(t.y))
    return t.values, t.image, pos


# ============================================================================ scoped capture

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

    Examples
    --------
    >>> miner = Miner(model, ["features.relu1"], k=9)      # doctest: +SKIP
    >>> for ids, x in batches:                             # doctest: +SKIP
    ...     miner.update(x, ids)
    >>> top = miner.result()["features.relu1"]             # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], k: int = 9,
                 per_image: int | None = 1, known: Sequence[str] | None = None):
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        if not self.layers:
            raise BadParameterError("no layers to mine")
        self.k = _check_k(k)
        self.per_image = _check_per_image(per_image)
        self.known = known
        self.states: dict[str, tuple] = {}
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.forward_passes = 0

    def update(self, x: torch.Tensor, ids: Sequence[int] | torch.Tensor) -> None:
        """Mine one batch: ``x`` ``[N, 3, H, W]`` preprocessed, ``ids`` its N global image ids."""
        ids = torch.as_tensor(ids, dtype=torch.int64, device=x.device).reshape(-1)
        if ids.numel() != x.shape[0]:
            raise BadParameterError(f"{x.shape[0]} images but {ids.numel()} ids")
        if x.shape[0] == 0:
            return
        m = self.k if self.per_image is None else min(self.per_image, self.k)
        cands: dict[str, tuple] = {}

        def on_output(layer, out):
            if not (isinstance(out, torch.Tensor) and out.dim() == 4):
                raise BadParameterError(
                    f"layer {layer!r} does not output a 4-d feature map "
                    f"(got {type(out).__name__}{'' if not isinstance(out, torch.Tensor) else list(out.shape)})")
            self.shapes.setdefault(layer, tuple(int(s) for s in out.shape[1:]))
            cands[layer] = _candidates(out, ids, m)

        with torch.inference_mode(), scoped_eval(self.model):
            run_captured(self.model, x, self.layers, on_output, known=self.known)
            self.forward_passes += 1
            missing = [layer for layer in self.layers if layer not in cands]
            if missing:
                raise UnknownLayerError(missing[0], self.known or [])
            new = {}
            for layer in self.layers:
                c, h, w = self.shapes[layer]
                new[layer] = _merge(self.states.get(layer), cands[layer], self.k, h * w)
        self.states = new  # one assignment: the state is always a consistent snapshot

    def result(self) -> dict[str, LayerTopK]:
        """The current top ``k`` per layer (CPU tensors)."""
        return {layer: _finish(self.states.get(layer), layer, self.shapes[layer], self.k)
                for layer in self.layers if layer in self.shapes}


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BadParameterError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_per_image(per_image) -> int | None:
    if per_image is None:
        return None
    if isinstance(per_image, bool) or not isinstance(per_image, (int, np.integer)) or per_image < 1:
        raise BadParameterError(f"per_image must be a positive integer or None, got {per_image!r}")
    return int(per_image)


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
        state = _merge(_state_of(a), _state_of(b), a.k, h * w)
        return _finish(state, a.layer, a.shape, a.k)
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
    skipped = sorted(a.skipped + b.skipped)[:_MAX_SKIPPED_KEPT]
    return MiningResult(layers=layers, k=a.k, per_image=a.per_image,
                        n_images=a.n_images + b.n_images, n_skipped=a.n_skipped + b.n_skipped,
                        skipped=skipped, source=a.source or b.source,
                        source_spec=a.source_spec or b.source_spec, model=a.model,
                        preprocessing=a.preprocessing,
                        data=a.data if a.data == b.data else None, shard=None)


def gather_merge(result: MiningResult, dst: int = 0, group=None) -> MiningResult | None:
    """Gather every rank's shard result on rank ``dst`` and merge them there (torch.distributed).

    Call it on every rank after each has mined its shard. Returns the merged result on ``dst``
    and ``None`` elsewhere.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    state = result.to_state()
    gathered = [None] * world if dist.get_rank(group) == dst else None
    dist.gather_object(state, gathered, dst=dst, group=group)
    if gathered is None:
        return None
    parts = [MiningResult.from_state(s, source=result.source) for s in gathered]
    merged = parts[0]
    for part in parts[1:]:
        merged = merge(merged, part)
    merged.shard = None
    return merged


def _session_model_id(session) -> str:
    return model_id(session.model, getattr(session.entry, "weights_id", ""))


# ============================================================================ disk cache

def _atomic_save(obj: Any, path: pathlib.Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _try_load(path: pathlib.Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt cache file is recomputed, never fatal
        warnings.warn(f"ignoring unreadable mining cache file {str(path)!r}: {exc}", stacklevel=3)
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT_VERSION else None


# ============================================================================ data loading

def _prepare(source: ImageSource, preprocessing, index: int):
    try:
        return index, preprocessing(source.load(index))[0], None
    except BadImageError as exc:
        return index, None, str(exc)


def _batches(source: ImageSource, preprocessing, ids: Sequence[int], start: int, batch_size: int,
             workers: int) -> Iterator[tuple[int, list]]:
    """Yield ``(end, prepared)`` per batch of ``ids[start:]``; ``end`` is the next position."""
    spans = ((p, min(p + batch_size, len(ids))) for p in range(start, len(ids), batch_size))
    if workers <= 0:
        for lo, hi in spans:
            yield hi, [_prepare(source, preprocessing, ids[j]) for j in range(lo, hi)]
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zfwidgets-mine")
    pending: deque = deque()
    todo = iter(spans)
    try:
        while True:
            while len(pending) < 2:  # keep two batches in flight ahead of the model
                span = next(todo, None)
                if span is None:
                    break
                lo, hi = span
                pending.append((hi, [pool.submit(_prepare, source, preprocessing, ids[j])
                                     for j in range(lo, hi)]))
            if not pending:
                return
            hi, futures = pending.popleft()
            yield hi, [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ============================================================================ mine

def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1) - 1))


#: On a CPU, keep each activation tensor of a batch under this size (glibc's largest mmap
#: threshold: a bigger block is mapped fresh, and page-faulted in again, on every batch).
CPU_BATCH_BYTES = 32 << 20


def mining_batch_size(session) -> int:
    """Images per forward pass when mining with ``session``: 64 on a GPU; on a CPU, as many as
    keep the model's largest activation under 32 MB (between 1 and 32).

    On a CPU larger batches are slower per image, not faster, once a layer's output passes that
    size: EfficientNet-Lite0 at 224 x 224 (largest activation 4.8 MB per image, so batch 6)
    measured 41-44 images/s at batch 1-4, 35 at batch 8-16 and 18-20 at batch 32-64 on the
    2-core development machine.
    """
    if session.device.type == "cuda":
        return 64
    itemsize = session.input_tensor.element_size()
    largest = max((int(np.prod(info.shape)) * itemsize for info in session.layer_table()),
                  default=0)
    return int(min(32, max(1, CPU_BATCH_BYTES // max(1, largest))))


def mine(session, images: Any = None, layers: str | Sequence[str] | None = None, k: int = 9,
         per_image: int | None = 1, *, batch_size: int | None = None,
         cache_dir: str | os.PathLike | None = None,
         progress: bool = True, shard: tuple[int, int] | None = None, workers: int | None = None,
         checkpoint_every: float = 60.0, on_progress: ProgressCallback | None = None
         ) -> MiningResult:
    """Stream a data set once and keep, per channel of each layer, the ``k`` strongest hits.

    Parameters
    ----------
    session : Session
        Gives the model, its preprocessing and its layer ids.
    images : None, folder path, list of images, torch Dataset or ImageSource
        See :func:`zfwidgets.data.as_source`; ``None`` is the offline sample collection.
    layers : str or sequence of str, optional
        Layer ids; default :func:`~zfwidgets.backend.defaults.mining_layers`.
    k : int
        Hits kept per channel.
    per_image : int or None
        At most this many hits per image and channel (1: the image's strongest position, as in
        the paper); ``None``: no limit.
    batch_size : int, optional
        Images per forward pass; default :func:`mining_batch_size` for the session's device
        (results do not depend on it).
    cache_dir : path, optional
        Where results and checkpoints are kept. ``None``: no disk cache.
    progress : bool
        Show a ``tqdm.auto`` progress bar (images/s, skipped count).
    shard : (rank, world_size), optional
        Mine only items ``rank, rank + world_size, ...`` (ids stay global); merge the shards
        with :func:`merge`.
    workers : int, optional
        Threads that load and preprocess images ahead of the model (0: in the main thread).
    checkpoint_every : float
        Seconds between checkpoints of a run (with ``cache_dir``).
    on_progress : callable, optional
        ``on_progress(done, total, skipped)`` after every batch (for widgets).

    Returns
    -------
    MiningResult

    See Also
    --------
    mine_steps : the same as a generator, one step per batch (for event loops).

    Raises
    ------
    UnknownLayerError
        A layer id is not one of the session's.
    BadParameterError
        Bad ``k``, ``per_image``, ``batch_size`` or ``shard``.
    DataError
        ``images`` cannot be used as a collection of images.
    """
    steps = mine_steps(session, images, layers, k, per_image, batch_size=batch_size,
                       cache_dir=cache_dir, progress=progress, shard=shard, workers=workers,
                       checkpoint_every=checkpoint_every)
    while True:
        try:
            done, total, skipped = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(done, total, skipped)


def mine_steps(session, images: Any = None, layers: str | Sequence[str] | None = None,
               k: int = 9, per_image: int | None = 1, *, batch_size: int | None = None,
               cache_dir: str | os.PathLike | None = None, progress: bool = True,
               shard: tuple[int, int] | None = None, workers: int | None = None,
               checkpoint_every: float = 60.0) -> Iterator[tuple[int, int, int]]:
    """:func:`mine` as a generator: yields ``(done, total, skipped)`` after every batch.

    The :class:`MiningResult` is the generator's return value (``StopIteration.value``, or
    ``result = yield from mine_steps(...)``). A caller on an event loop (a widget) can hand
    control back between batches; closing the generator early keeps a checkpoint (with
    ``cache_dir``). Arguments as for :func:`mine`.
    """
    source = as_source(images)
    if len(source) == 0:
        raise DataError(f"{source!r} holds no images")
    if layers is None:
        layers = mining_layers(session)
    elif isinstance(layers, str):
        layers = [layers]
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise BadParameterError("no layers to mine")
    known = session.layers
    for layer in layers:
        if layer not in known:
            raise UnknownLayerError(layer, known)
    k = _check_k(k)
    per_image = _check_per_image(per_image)
    if batch_size is None:
        batch_size = mining_batch_size(session)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BadParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    if shard is not None:
        rank, world = (int(v) for v in shard)
        if world < 1 or not 0 <= rank < world:
            raise BadParameterError(f"shard must be (rank, world_size) with 0 <= rank < "
                                    f"world_size, got {shard!r}")
        shard = (rank, world)
    workers = _default_workers() if workers is None else max(0, int(workers))

    mid = _session_model_id(session)
    pre = session.preprocessing
    pre_fp = pre.fingerprint()
    data_fp = source.fingerprint()
    meta = dict(k=k, per_image=per_image, source=source, source_spec=source.spec(), model=mid,
                preprocessing=pre_fp, data=data_fp, shard=shard)
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else None
    if cache is not None and data_fp is None:
        warnings.warn(f"{source!r} has no fingerprint, so results are not cached on disk; give "
                      "DatasetSource(dataset, fingerprint=...) one", stacklevel=2)
        cache = None

    def key(layer: str) -> str:
        return key_digest({"v": FORMAT_VERSION, "model": mid, "layer": layer, "k": k,
                        "per_image": per_image, "pre": pre_fp, "data": data_fp,
                        "shard": list(shard) if shard else None})

    found: dict[str, LayerTopK] = {}
    counters: dict | None = None
    if cache is not None:
        for layer in layers:
            state = _try_load(cache / f"topk-{key(layer)}.pt")
            if state is not None and state.get("key") == key(layer):
                found[layer] = LayerTopK._from_state(state["layer"])
                counters = state["counters"]
    todo = [layer for layer in layers if layer not in found]
    if todo:
        mined, counters = yield from _run(session, source, todo, k, per_image, batch_size, cache,
                                          [key(layer) for layer in todo], shard, workers,
                                          progress, checkpoint_every, known)
        found.update(mined)
    else:
        seen = counters["n_images"] + counters["n_skipped"]
        yield seen, seen, counters["n_skipped"]
    return MiningResult(layers={layer: found[layer] for layer in layers},
                        n_images=int(counters["n_images"]), n_skipped=int(counters["n_skipped"]),
                        skipped=[(int(a), str(b), str(c)) for a, b, c in counters["skipped"]],
                        **meta)


def _run(session, source, layers, k, per_image, batch_size, cache, keys, shard, workers,
         progress, checkpoint_every, known):
    """One streaming pass over ``source`` for ``layers``, with checkpoints and final files.

    A generator: yields ``(done, total, skipped)`` per batch, returns ``(results, counters)``.
    """
    from tqdm.auto import tqdm

    n = len(source)
    ids = range(shard[0], n, shard[1]) if shard else range(n)
    miner = Miner(session.model, layers, k, per_image, known)
    start, n_images, n_skipped, skipped = 0, 0, 0, []
    ckpt = cache / f"topk-run-{key_digest(sorted(keys))}.partial.pt" if cache is not None else None
    if ckpt is not None:
        state = _try_load(ckpt)
        if state is not None and state.get("keys") == sorted(keys):
            miner.states = {layer: tuple(s) for layer, s in state["states"].items()}
            miner.shapes = {layer: tuple(s) for layer, s in state["shapes"].items()}
            start, n_images, n_skipped = int(state["next"]), int(state["n_images"]), int(state["n_skipped"])
            skipped = [tuple(s) for s in state["skipped"]]

    def snapshot(position: int) -> dict:
        return {"format": FORMAT_VERSION, "keys": sorted(keys), "next": position,
                "states": {layer: list(s) for layer, s in miner.states.items()},
                "shapes": {layer: list(s) for layer, s in miner.shapes.items()},
                "n_images": n_images, "n_skipped": n_skipped, "skipped": [list(s) for s in skipped]}

    device = getattr(session, "device", None) or torch.device("cpu")
    desc = f"mining {layers[0]}" if len(layers) == 1 else f"mining {len(layers)} layers"
    bar = tqdm(total=len(ids), initial=start, unit="img", desc=desc, disable=not progress,
               dynamic_ncols=True)
    position, saved_at, last_save = start, start, time.monotonic()
    try:
        for end, prepared in _batches(source, session.preprocessing, ids, start, batch_size, workers):
            good = [(i, x) for i, x, err in prepared if err is None]
            bad = [(i, err) for i, x, err in prepared if err is not None]
            if good:
                x = torch.stack([t for _, t in good]).to(device)
                miner.update(x, [i for i, _ in good])
            n_images += len(good)
            n_skipped += len(bad)
            for i, err in bad:
                if len(skipped) < _MAX_SKIPPED_KEPT:
                    skipped.append((int(i), source.name(i), err))
            position = end
            bar.update(len(prepared))
            if bad:
                bar.set_postfix(skipped=n_skipped, refresh=False)
            yield position, len(ids), n_skipped
            if ckpt is not None and position < len(ids) and \
                    time.monotonic() - last_save >= checkpoint_every:
                _atomic_save(snapshot(position), ckpt)
                saved_at, last_save = position, time.monotonic()
    except BaseException:
        if ckpt is not None and position > saved_at:  # keep what was done before the error
            with contextlib.suppress(Exception):
                _atomic_save(snapshot(position), ckpt)
        raise
    finally:
        bar.close()

    if not miner.shapes:  # no readable image at all: shapes from one dummy pass
        h, w = session.preprocessing.size
        probe = Miner(session.model, layers, k, per_image, known)
        probe.update(torch.zeros(1, 3, h, w, device=device), [0])
        miner.shapes = probe.shapes
    results = miner.result()
    counters = {"n_images": n_images, "n_skipped": n_skipped, "skipped": [list(s) for s in skipped]}
    if cache is not None:
        for layer, kk in zip(layers, keys):
            _atomic_save({"format": FORMAT_VERSION, "key": kk, "layer": results[layer]._state(),
                          "counters": counters}, cache / f"topk-{kk}.pt")
        with contextlib.suppress(FileNotFoundError):
            ckpt.unlink()
    return results, counters


# ============================================================================ gallery

@dataclass
class Gallery:
    """What Fig. 2 shows for one feature map: the top hits' patches and their projections.

    Attributes
    ----------
    layer : str
    channel : int
    rule : str
        Backward rule of the projections.
    values : numpy.ndarray
        ``[n]`` activation values, strongest first.
    image_ids : list of int
        Ids in the mined source.
    names : list of str
        Display names of the source images.
    positions : list of (int, int)
        ``(y, x)`` in the feature map.
    boxes : list of (int, int, int, int)
        Receptive field ``(top, left, bottom, right)`` in the model's input (bottom/right
        exclusive, clipped to the input).
    patches : list of numpy.ndarray
        ``[h, w, 3]`` float32 in [0, 1]: the box cut from the preprocessed image.
    projections : list of numpy.ndarray
        ``[3, h, w]`` float32: the projection of that single activation (every other
        activation of the layer set to zero), cut to the same box, in the model's input space.
        :func:`zfwidgets.projection_to_rgb` (or the plots' ``projection_image``) makes it an
        image.
    views : numpy.ndarray
        ``[n, H, W, 3]`` float32 in [0, 1]: the model's view of each hit's whole image.
    """

    layer: str
    channel: int
    rule: str
    values: np.ndarray
    image_ids: list[int]
    names: list[str]
    positions: list[tuple[int, int]]
    boxes: list[tuple[int, int, int, int]]
    patches: list[np.ndarray]
    projections: list[np.ndarray]
    views: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)


def gallery(session, result: MiningResult | LayerTopK, layer: str | None = None,
            channel: int = 0, rule: str = "deconvnet", k: int | None = None,
            source: ImageSource | None = None) -> Gallery:
    """Patches and projections of the top hits of one feature map (the paper's Fig. 2).

    All projections are computed in one batched backward pass through
    :func:`zfwidgets.backend.project.project`.

    Parameters
    ----------
    session : Session
        The model the result was mined with (same weights and preprocessing).
    result : MiningResult or LayerTopK
    layer : str, optional
        Needed for a MiningResult with several layers.
    channel : int
    rule : {"deconvnet", "guided", "gradient"}
    k : int, optional
        Show only the first ``k`` hits.
    source : ImageSource, optional
        The mined data; default ``result.source``.

    Returns
    -------
    Gallery

    Raises
    ------
    DataError
        The result was mined with other weights or preprocessing, or its images are not
        available.
    OutOfRangeError
        ``channel`` is not a channel of the layer.
    """
    check_rule(rule)
    if isinstance(result, MiningResult):
        if layer is None:
            if len(result.layers) != 1:
                raise BadParameterError(f"name a layer: the result holds {list(result.layers)}")
            layer = next(iter(result.layers))
        top = result[layer]
        source = source or result.source
        if result.model and result.model != _session_model_id(session):
            raise DataError(f"the result was mined with other model weights ({result.model}) "
                            f"than the session's ({_session_model_id(session)}); mine again")
        if result.preprocessing and result.preprocessing != session.preprocessing.fingerprint():
            raise DataError(f"the result was mined with preprocessing {result.preprocessing}, "
                            f"the session uses {session.preprocessing.fingerprint()}; mine again")
    else:
        top = result
        layer = layer or top.layer
        if layer != top.layer:
            raise BadParameterError(f"the result is for layer {top.layer!r}, not {layer!r}")
    if source is None:
        raise DataError("the mined images are not available; pass source= (the data mined)")
    info = session.layer_info(layer)
    hits = top.hits(channel)[:k]
    pre = session.preprocessing
    uniq = list(dict.fromkeys(img for _, img, _, _ in hits))
    device = getattr(session, "device", torch.device("cpu"))
    h_in, w_in = pre.size
    if uniq:
        tensors = []
        for img in uniq:
            try:
                tensors.append(pre(source.load(img))[0])
            except BadImageError as exc:
                raise DataError(f"image {img} ({source.name(img)}) of the mined data cannot be "
                                f"read any more: {exc}") from exc
        inputs = torch.stack(tensors).to(device)
        targets = [Target(uniq.index(img), int(channel), y, x) for _, img, y, x in hits]
        proj = project(session.model, inputs, layer, targets, rule, known=session.layers)
        views = pre.denormalize(inputs).permute(0, 2, 3, 1).cpu().numpy()
    else:
        proj = torch.zeros(0, 3, h_in, w_in)
        views = np.zeros((0, h_in, w_in, 3), np.float32)
    boxes, patches, projections, hit_views = [], [], [], []
    for j, (_, img, y, x) in enumerate(hits):
        box = receptive_field_box(info.geometry, y, x, h_in, w_in)
        t, l, b, r = box
        view = views[uniq.index(img)]
        boxes.append(box)
        patches.append(np.ascontiguousarray(view[t:b, l:r]))
        projections.append(proj[j, :, t:b, l:r].detach().float().cpu().numpy())
        hit_views.append(view)
    return Gallery(layer=layer, channel=int(channel), rule=rule,
                   values=np.array([v for v, _, _, _ in hits], np.float32),
                   image_ids=[img for _, img, _, _ in hits],
                   names=[source.name(img) for _, img, _, _ in hits],
                   positions=[(y, x) for _, _, y, x in hits], boxes=boxes, patches=patches,
                   projections=projections,
                   views=np.stack(hit_views) if hit_views else np.zeros((0, h_in, w_in, 3), np.float32))

