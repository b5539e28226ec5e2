"""The Fig. 7 sweep over any classifier, as a job: one progress step per batch of occluders.

For every corner of the occluder grid the model runs on the occluded image, and the sweep
records the probability of a target class, the most probable class and the total of every
channel of one layer. :func:`occlusion_maps_job` validates everything, runs the unoccluded pass
and returns a :class:`~zfwidgets.backend.jobs.Job` that yields a
:class:`~zfwidgets.backend.jobs.Step` after each batch and returns the
:class:`~.result.OcclusionResult`; :func:`occlusion_maps` runs it to the end.

Each batch runs incrementally (:class:`~.engine.IncrementalMode`: only what the occluder changes
is recomputed) or plainly (every occluded copy through the model); both give the same values.
With ``method="auto"``, should the engine ever trip over a model, the sweep warns and finishes
with plain passes.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import BadParameterError, OutOfRangeError, UnknownLayerError, ZFError, check_choice
from ...models import class_name
from ..jobs import Job, Step
from ...models.registry import pick_logits
from ..layers import Layout, as_maps, capture, resolve_layer, scoped_eval
from .engine import IncrementalMode
from .grid import check_int, fill_tensor, occlude, occlusion_grid
from .result import OcclusionResult

__all__ = ["METHODS", "class_logits", "occlusion_maps", "occlusion_maps_job", "run_sweep"]

#: How a sweep computes its batches (see :func:`occlusion_maps`).
METHODS = ("auto", "incremental", "plain")
# positions per forward pass
_BATCH = {"incremental": 32, "plain": 16}


@dataclass
class _Plan:
    """What a sweep computes, validated."""

    model: nn.Module
    x: torch.Tensor
    size: int
    stride: int
    rows: np.ndarray
    cols: np.ndarray
    fill: torch.Tensor
    layer: str | None
    batch_size: int
    method: str
    auto: bool
    labels: Sequence[str] | None
    fill_label: str | float
    output: object = None
    layout: Layout | None = None


@dataclass
class _Base:
    """The unoccluded pass: defaults and references."""

    target: int
    base_class: int
    base_prob: float
    channel: int | None
    base_feature: float | None
    base_features: np.ndarray | None


def occlusion_maps_job(model: nn.Module, x: torch.Tensor, size: int = 32, stride: int = 8, *,
                       target: int | None = None, layer: str | None = None,
                       channel: int | None = None, fill: torch.Tensor | float = 0.0,
                       batch_size: int | None = None, method: str = "auto",
                       labels: Sequence[str] | None = None,
                       known_layers: Sequence[str] | None = None,
                       fill_label: str | float = "gray", output=None,
                       layout: Layout | None = None) -> Job[OcclusionResult]:
    """The occlusion sweep of :func:`occlusion_maps` as a job, one step per batch.

    Everything is validated and the unoccluded pass runs before this returns (so a bad
    parameter raises here); the job then yields ``Step(done, total)`` (positions) after each
    batch and returns the :class:`~.result.OcclusionResult`. Closing it midway leaves the model
    as it was (no batch is left half-run).

    Parameters
    ----------
    model, x, size, stride, target, layer, channel, fill, batch_size, method, labels, known_layers
        See :func:`occlusion_maps`.
    fill_label : str or float
        How the fill was asked for (``"gray"``, ``"mean"`` ...), recorded in the result.
    output : str, int or callable, optional
        Which part of the model's output is the logits
        (:func:`~zfwidgets.models.registry.pick_logits`).
    layout : Layout, optional
        The layer's :attr:`~zfwidgets.backend.layers.LayerInfo.layout` (a token or
        channels-last layer); ``None``: ``[N, C, H, W]`` maps.

    Returns
    -------
    Job of OcclusionResult
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BadParameterError(f"x must be one input [1, C, H, W], got {shape}")
    rows, cols = occlusion_grid(int(x.shape[2]), int(x.shape[3]), size, stride)
    auto = check_choice("method", method, METHODS) == "auto"
    if auto:
        method = "incremental" if x.device.type == "cpu" and not _has_hooks(model) else "plain"
    batch_size = check_int("batch_size", _BATCH[method] if batch_size is None else batch_size)
    if batch_size < 1:
        raise BadParameterError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(fill, torch.Tensor):
        fill = fill_tensor(fill, x)
    fill = fill.to(device=x.device, dtype=x.dtype).reshape(1, x.shape[1], 1, 1)
    if layer is not None:
        resolve_layer(model, layer, known_layers)  # UnknownLayerError before any work
    plan = _Plan(model, x, int(size), int(stride), rows, cols, fill, layer, batch_size, method,
                 auto, labels, fill_label, output, layout)
    start = time.perf_counter()
    base = _unoccluded(plan, target, channel, known_layers)
    return Job(_steps(plan, base, time.perf_counter() - start),
               what=f"occlusion {plan.size}px/{plan.stride}", unit="pos")


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
        Occluder side and step (see :func:`~.grid.occlusion_grid`).
    target : int, optional
        Class for ``prob``; default the unoccluded top class.
    layer : str, optional
        Layer id for the feature map; ``None`` skips the feature.
    channel : int, optional
        Channel of ``layer``; default the one with the largest total activation unoccluded.
    fill : tensor ``[1, C, 1, 1]`` or float
        Occluder value in normalized space.
    batch_size : int, optional
        Occluded images per forward pass (default 32 incremental, 16 plain).
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
    job = occlusion_maps_job(model, x, size, stride, target=target, layer=layer,
                             channel=channel, fill=fill, batch_size=batch_size, method=method,
                             labels=labels, known_layers=known_layers)
    return run_sweep(job, progress=progress, on_progress=on_progress, should_stop=should_stop)


def run_sweep(job: Job[OcclusionResult], *, progress: bool,
              on_progress: Callable[[int, int], None] | None,
              should_stop: Callable[[], bool] | None) -> OcclusionResult:
    """Run a sweep job with the plain functions' ``on_progress(done, total)`` callback."""
    on_step = None if on_progress is None else (lambda step: on_progress(step.done, step.total))
    return job.run(progress=progress, on_step=on_step, should_stop=should_stop)


def _unoccluded(plan: _Plan, target, channel, known_layers) -> _Base:
    """The unoccluded pass: base prediction and feature totals; checks target and channel."""
    with torch.inference_mode(), scoped_eval(plan.model), \
            _layer_totals(plan.model, plan.layer, _totals(plan.layout)) as hook:
        base_logits = class_logits(plan.model(plan.x), plan.output)
    base_probs = torch.softmax(base_logits.float(), 1)[0]
    num_classes = base_probs.numel()
    base_class = int(base_probs.argmax())
    target = check_int("target", base_class if target is None else target)
    if not 0 <= target < num_classes:
        raise OutOfRangeError(f"target class {target} is out of range: the model has "
                              f"{num_classes} classes (0..{num_classes - 1})")
    base = _Base(target, base_class, float(base_probs[target]), channel, None, None)
    if plan.layer is not None:
        if hook["value"] is None:
            raise UnknownLayerError(plan.layer, known_layers or [])
        totals = hook["value"][0]
        base.base_features = totals.float().cpu().numpy()
        channel = check_int("channel", int(totals.argmax()) if channel is None else channel)
        if not 0 <= channel < totals.numel():
            raise OutOfRangeError(f"channel {channel} is out of range for layer {plan.layer!r} "
                                  f"({totals.numel()} channels: 0..{totals.numel() - 1})")
        base.channel, base.base_feature = channel, float(totals[channel])
    return base


def _steps(plan: _Plan, base: _Base, seconds: float):
    """The sweep: one batch of positions per step; returns the result."""
    corners = [(int(r), int(c)) for r in plan.rows for c in plan.cols]
    total = len(corners)
    probs = np.empty(total, np.float32)
    top = np.empty(total, np.int64)
    top_p = np.empty(total, np.float32)
    feats = (np.empty((total, len(base.base_features)), np.float32)
             if plan.layer is not None else None)
    engine = IncrementalMode() if plan.method == "incremental" else None
    for b in range(0, total, plan.batch_size):
        t0 = time.perf_counter()
        chunk = corners[b:b + plan.batch_size]
        logits, feat, engine = _batch(plan, chunk, engine)
        p = torch.softmax(logits.float(), 1)
        n = len(chunk)
        probs[b:b + n] = p[:, base.target].cpu().numpy()
        tp, tc = p.max(1)
        top[b:b + n] = tc.cpu().numpy()
        top_p[b:b + n] = tp.cpu().numpy()
        if feats is not None:
            feats[b:b + n] = feat.float().cpu().numpy()
        seconds += time.perf_counter() - t0
        yield Step(b + n, total)
    method = "plain" if engine is None else "incremental"
    return _result(plan, base, probs, top, top_p, feats, method, seconds)


def _batch(plan: _Plan, chunk, engine):
    """``(logits, totals, engine)`` of one batch; with ``method="auto"`` an engine failure
    warns and the batch (and every later one: ``engine`` is then ``None``) runs plainly."""
    try:
        return (*_run_batch(plan, chunk, engine), engine)
    except ZFError:
        raise
    except Exception as exc:
        if not (plan.auto and engine is not None):
            raise
        warnings.warn(f"incremental occlusion failed on this model ({type(exc).__name__}: "
                      f"{exc}); continuing with plain forward passes", RuntimeWarning,
                      stacklevel=2)
        return (*_run_batch(plan, chunk, None), None)


def _run_batch(plan: _Plan, chunk, engine):
    """Logits ``[n, classes]`` and per-channel totals ``[n, C]`` of the layer's output (``None``
    without a layer), for one batch of occluder corners."""
    model, x, layer = plan.model, plan.x, plan.layer
    with torch.inference_mode(), _eval_scope(model):
        if engine is None:
            batch = occlude(x, chunk, plan.size, plan.fill)
            with _layer_totals(model, layer, _totals(plan.layout)) as hook:
                logits = class_logits(model(batch), plan.output)
            return logits, hook["value"]
        tops = np.array([c[0] for c in chunk], np.int64)
        lefts = np.array([c[1] for c in chunk], np.int64)
        with engine, _layer_totals(model, layer, _totals(plan.layout, engine)) as hook:
            inp = engine.inputs(x, tops, lefts, plan.size, plan.fill)
            logits = class_logits(engine.resolve(model(inp)), plan.output)
        return logits, hook["value"]


def _result(plan: _Plan, base: _Base, probs, top, top_p, feats, method: str,
            seconds: float) -> OcclusionResult:
    shape = (len(plan.rows), len(plan.cols))
    top = top.reshape(shape)
    names = {int(cid): class_name(plan.labels, int(cid))
             for cid in sorted(set(np.unique(top).tolist()) | {base.target, base.base_class})}
    return OcclusionResult(
        prob=probs.reshape(shape), top_class=top, top_prob=top_p.reshape(shape),
        feature=None if feats is None else feats[:, base.channel].reshape(shape),
        features=None if feats is None else feats.reshape(shape + (-1,)),
        base_features=base.base_features, layer=plan.layer, channel=base.channel,
        target=base.target, target_label=names[base.target], size=plan.size, stride=plan.stride,
        rows=plan.rows, cols=plan.cols, image_shape=(int(plan.x.shape[2]), int(plan.x.shape[3])),
        base_prob=base.base_prob, base_class=base.base_class, base_feature=base.base_feature,
        labels=names, fill=plan.fill_label, method=method, seconds=seconds)


def class_logits(out, output=None) -> torch.Tensor:
    """A classifier's logits ``[N, classes]`` from its output, picked by ``output``
    (:func:`~zfwidgets.models.registry.pick_logits`: a tuple's first tensor, a dict's
    ``"logits"`` ...).

    Raises
    ------
    BadParameterError
        When that is not a ``[N, classes]`` tensor.
    """
    out = pick_logits(out, output)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise BadParameterError(
            "occlusion needs a classifier returning logits [N, classes], got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out


def _has_hooks(model: nn.Module) -> bool:
    """Whether the user put forward hooks on the model (they would see placeholders)."""
    from torch.nn.modules import module as _m

    if any(getattr(_m, name, None) for name in ("_global_forward_hooks",
                                                   "_global_forward_pre_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _eval_scope(model: nn.Module):
    """``scoped_eval`` when some module is in training mode; nothing to do otherwise."""
    if any(m.training for m in model.modules()):
        return scoped_eval(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _layer_totals(model: nn.Module, layer: str | None, reduce):
    """For the block: ``box["value"] = reduce(output)`` for the 4-d output of ``layer`` (a
    :func:`~zfwidgets.backend.layers.capture` hook; nothing when ``layer`` is ``None``)."""
    box: dict = {"value": None}
    if layer is None:
        yield box
        return

    def on_output(_, output):
        if isinstance(output, torch.Tensor):
            box["value"] = reduce(output)

    with capture(model, [layer], on_output):
        yield box


def _plain_total(t: torch.Tensor) -> torch.Tensor:
    """Per-image total of every channel, ``[N, C]``."""
    return t.detach().flatten(2).sum(2)


def _totals(layout: Layout | None, engine: IncrementalMode | None = None):
    """``[N, C]`` channel totals of a layer's output read as maps (:func:`as_maps`): through
    the engine's patches for ``[N, C, H, W]`` maps, of the dense value for other layouts."""
    if layout is None or layout.kind == "nchw":
        plain = engine.channel_totals if engine is not None else _plain_total
        return lambda t: plain(t) if t.dim() == 4 else None
    dense = engine.resolve if engine is not None else (lambda t: t)
    return lambda t: _plain_total(as_maps(dense(t), layout))
