"""The Fig. 7 sweep over any classifier, as a job: one progress step per batch of occluders.

For every corner of the occluder grid the model runs on the occluded image, and the sweep
records the probability of the target class (or the summed probability of several), the most
probable class and the total of every channel of one layer. :func:`occlusion_maps_job`
validates everything, runs the unoccluded pass and returns a
:class:`~zfwidgets.backend.jobs.Job` that yields a :class:`~zfwidgets.backend.jobs.Step`
after each batch and returns the :class:`~.result.OcclusionResult`; :func:`occlusion_maps`
runs it to the end.

Each batch runs incrementally (:class:`~.engine.IncrementalMode`: only what the occluder changes
is recomputed) or plainly (every occluded copy through the model); both give the same values,
so ``method="auto"`` may switch between them: it times both on the sweep's first positions and
goes on with the faster (:mod:`.choice`); should the engine ever trip over a model, it warns and
finishes with plain passes. A progressive sweep computes a coarse grid first and refines it
(:mod:`.progressive`), each stage yielded as ``Step.partial``; ``method="approximate"`` is
Krypton's approximate mode (:mod:`.approx`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import BadParameterError, OutOfRangeError, UnknownLayerError, check_choice
from ...models import class_name
from ..jobs import Job, Step
from ..layers import resolve_layer, scoped_eval
from .approx import Approximation, check_positions, coarse_factor, drill_down, fill_in
from ..layers import Layout
from .batches import (BatchRunner, class_logits, engine_blocker, layer_totals, totals_reader,
                      twin_allowed)
from .choice import Chooser, MacCounter
from .grid import check_int, fill_tensor, occlusion_grid
from .progressive import schedule, stage_factors
from .result import OcclusionResult

__all__ = ["METHODS", "class_logits", "occlusion_maps", "occlusion_maps_job", "run_sweep"]

#: How a sweep computes its batches (see :func:`occlusion_maps`).
METHODS = ("auto", "incremental", "plain", "approximate")
# positions per forward pass: plain passes; the engine's fewest and most (see _engine_batch)
_BATCH = {"incremental": 16, "plain": 16}
_ENGINE_MOST = 64
# the engine's batch keeps a dense copy of the model's largest map under this (a fallback
# materializes one): VGG16 at 224 px, 12.8 MB a map per image, gets 20; Lite0, 4.8 MB, 55
_DENSE_BUDGET = 256 * 2 ** 20


def _engine_batch(largest: int) -> int:
    """Positions per engine batch, from the model's largest convolution output per image
    (bytes): larger batches amortize the engine's per-call work (on EfficientNet-Lite0, 625
    positions at batch 64 took 2.9-3.7 s against 4.6 s at 16), within a memory budget."""
    if largest <= 0:
        return _BATCH["incremental"]
    return int(min(_ENGINE_MOST, max(_BATCH["incremental"], _DENSE_BUDGET // largest)))


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
    batch: dict
    method: str
    labels: Sequence[str] | None
    fill_label: str | float
    factors: list
    approx: Approximation | None
    output: object = None
    layout: Layout | None = None


@dataclass
class _Base:
    """The unoccluded pass: defaults and references."""

    targets: tuple
    base_class: int
    base_prob: float
    channel: int | None
    base_feature: float | None
    base_features: np.ndarray | None
    seconds: float = 0.0
    macs: int = 0
    largest: int = 0


def occlusion_maps_job(model: nn.Module, x: torch.Tensor, size: int = 32, stride: int = 8, *,
                       target=None, layer: str | None = None,
                       channel: int | None = None, fill: torch.Tensor | float = 0.0,
                       batch_size: int | None = None, method: str = "auto",
                       labels: Sequence[str] | None = None,
                       known_layers: Sequence[str] | None = None,
                       fill_label: str | float = "gray", progressive=False,
                       approximation: Approximation | None = None, output=None,
                       layout: Layout | None = None) -> Job[OcclusionResult]:
    """The occlusion sweep of :func:`occlusion_maps` as a job, one step per batch.

    Everything is validated and the unoccluded pass runs before this returns (so a bad
    parameter raises here); the job then yields ``Step(done, total)`` (positions) after each
    batch and returns the :class:`~.result.OcclusionResult`. Closing it midway leaves the model
    as it was (no batch is left half-run). A progressive sweep's steps that complete a coarse
    stage carry that stage's map as ``Step.partial``.

    Parameters
    ----------
    model, x, size, stride, target, layer, channel, fill, batch_size, method, labels, known_layers
        See :func:`occlusion_maps`.
    fill_label : str or float
        How the fill was asked for (``"gray"``, ``"mean"`` ...), recorded in the result.
    progressive, approximation
        See :func:`occlusion_maps`.
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
    method = check_choice("method", method, METHODS)
    if approximation is not None:
        if not isinstance(approximation, Approximation):
            raise BadParameterError(f"approximation must be an Approximation, got "
                                    f"{type(approximation).__name__}")
        if method not in ("auto", "approximate"):
            raise BadParameterError(f"approximation settings need method='approximate', "
                                    f"not {method!r}")
        method = "approximate"
    approx = (approximation or Approximation()) if method == "approximate" else None
    batch = dict(_BATCH) if batch_size is None else \
        dict.fromkeys(_BATCH, check_int("batch_size", batch_size))
    if min(batch.values()) < 1:
        raise BadParameterError(f"batch_size must be at least 1, got {batch_size}")
    factors = stage_factors(len(rows), len(cols), int(stride), progressive)
    if not isinstance(fill, torch.Tensor):
        fill = fill_tensor(fill, x)
    fill = fill.to(device=x.device, dtype=x.dtype).reshape(1, x.shape[1], 1, 1)
    if layer is not None:
        resolve_layer(model, layer, known_layers)  # UnknownLayerError before any work
    plan = _Plan(model, x, int(size), int(stride), rows, cols, fill, layer, batch, method,
                 labels, fill_label, factors, approx, output, layout)
    base = _unoccluded(plan, target, channel, known_layers)
    if batch_size is None:
        plan.batch["incremental"] = _engine_batch(base.largest)
    chooser = _chooser(plan)
    chooser.full_macs = base.macs
    what = f"occlusion {plan.size}px/{plan.stride}" + (" (approximate)" if approx else "")
    return Job(_steps(plan, base, chooser), what=what, unit="pos")


def _chooser(plan: _Plan) -> Chooser:
    """Who picks each batch's method (:mod:`.choice`), and why."""
    blocker = engine_blocker(plan.model, plan.x)
    method = plan.method
    if plan.approx is not None:
        method = "plain" if blocker is not None else "incremental"
    chooser = Chooser(plan.model, plan.x, plan.size, plan.stride, method, plan.batch,
                      len(plan.rows) * len(plan.cols), blocker,
                      twin_ok=plan.approx is None and twin_allowed(plan.model, plan.x))
    if plan.approx is not None and blocker is not None:
        chooser.reason = f"plain passes, since {blocker}"
    return chooser


def occlusion_maps(model: nn.Module, x: torch.Tensor, size: int = 32, stride: int = 8, *,
                   target=None, layer: str | None = None,
                   channel: int | None = None, fill: torch.Tensor | float = 0.0,
                   batch_size: int | None = None, method: str = "auto",
                   progress: bool = False, on_progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   labels: Sequence[str] | None = None, known_layers: Sequence[str] | None = None,
                   progressive=False, approximation: Approximation | None = None,
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
    target : int or sequence of int, optional
        Class for ``prob``; several classes: ``prob`` is the sum of their probabilities.
        Default the unoccluded top class.
    layer : str, optional
        Layer id for the feature map; ``None`` skips the feature.
    channel : int, optional
        Channel of ``layer``; default the one with the largest total activation unoccluded.
    fill : tensor ``[1, C, 1, 1]`` or float
        Occluder value in normalized space.
    batch_size : int, optional
        Occluded images per forward pass (default: 16 for plain passes; for the engine 16 to
        64, as many as keep a dense copy of the model's largest map under 256 MB).
    method : {"auto", "incremental", "plain", "approximate"}
        ``"incremental"`` recomputes only what each occluder changes (:class:`IncrementalMode`);
        ``"plain"`` runs every occluded copy through the model; ``"auto"`` times both on the
        sweep's first positions and goes on with the faster (:mod:`.choice`; remembered for the
        model and input size; plain on a GPU and for a model carrying forward hooks of its own,
        which would see the engine's placeholders, and for sweeps too short to time). These
        give the same values (up to float rounding). ``"approximate"`` is Krypton's approximate
        mode (:mod:`.approx`), faster and not exact: its measured error is on the result.
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
    progressive : bool or sequence of int
        Compute a coarse grid first and refine it (:func:`~.progressive.stage_factors`): the
        result is the same; the job's steps carry each coarse stage as ``Step.partial``.
    approximation : Approximation, optional
        Settings of ``method="approximate"`` (giving them implies it; its own coarse stage
        then replaces ``progressive``).

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
                             labels=labels, known_layers=known_layers, progressive=progressive,
                             approximation=approximation)
    return run_sweep(job, progress=progress, on_progress=on_progress, should_stop=should_stop)


def run_sweep(job: Job[OcclusionResult], *, progress: bool,
              on_progress: Callable[[int, int], None] | None,
              should_stop: Callable[[], bool] | None) -> OcclusionResult:
    """Run a sweep job with the plain functions' ``on_progress(done, total)`` callback."""
    on_step = None if on_progress is None else (lambda step: on_progress(step.done, step.total))
    return job.run(progress=progress, on_step=on_step, should_stop=should_stop)


def _targets(target, num_classes: int, default: int) -> tuple:
    """The target classes as a tuple of distinct ids, checked against the model."""
    if target is None:
        return (default,)
    items = list(target) if isinstance(target, (list, tuple, np.ndarray)) else [target]
    if not items:
        raise BadParameterError("target is an empty list of classes")
    out = []
    for item in items:
        cid = check_int("target", item)
        if not 0 <= cid < num_classes:
            raise OutOfRangeError(f"target class {cid} is out of range: the model has "
                                  f"{num_classes} classes (0..{num_classes - 1})")
        if cid not in out:
            out.append(cid)
    return tuple(out)


def _unoccluded(plan: _Plan, target, channel, known_layers) -> _Base:
    """The unoccluded pass: base prediction, feature totals, multiply-adds (for a probe's
    reason) and the largest map (for the engine's batch); checks target and channel."""
    counter = MacCounter()
    start = time.perf_counter()
    with torch.inference_mode(), scoped_eval(plan.model), \
            layer_totals(plan.model, plan.layer, totals_reader(plan.layout)) as hook, counter:
        base_logits = class_logits(plan.model(plan.x), plan.output)
    seconds = time.perf_counter() - start
    base_probs = torch.softmax(base_logits.float(), 1)[0]
    base_class = int(base_probs.argmax())
    targets = _targets(target, base_probs.numel(), base_class)
    base = _Base(targets, base_class, float(base_probs[list(targets)].sum()), channel, None, None,
                 seconds, counter.macs, counter.largest)
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


class _Maps:
    """The sweep's maps over the requested grid, filled as positions are computed."""

    def __init__(self, plan: _Plan, base: _Base):
        self.plan, self.base = plan, base
        self.R, self.C = len(plan.rows), len(plan.cols)
        n = self.R * self.C
        self.prob = np.zeros(n, np.float32)
        self.top_class = np.zeros(n, np.int64)
        self.top_prob = np.zeros(n, np.float32)
        self.feats = (np.zeros((n, len(base.base_features)), np.float32)
                      if plan.layer is not None else None)
        self.done = np.zeros(n, bool)
        self.targets = list(base.targets)

    def corners(self, idx: np.ndarray) -> list[tuple[int, int]]:
        rows, cols = self.plan.rows, self.plan.cols
        return [(int(rows[i // self.C]), int(cols[i % self.C])) for i in idx]

    def probabilities(self, logits: torch.Tensor):
        """``(P(targets) summed, top probability, top class)`` of a batch of logits."""
        p = torch.softmax(logits.float(), 1)
        tp, tc = p.max(1)
        return (p[:, self.targets].sum(1).cpu().numpy(), tp.cpu().numpy(), tc.cpu().numpy())

    def put(self, idx: np.ndarray, logits: torch.Tensor, feats) -> None:
        self.prob[idx], self.top_prob[idx], self.top_class[idx] = self.probabilities(logits)
        if self.feats is not None:
            self.feats[idx] = feats.float().cpu().numpy()
        self.done[idx] = True

    def grid(self, name: str) -> np.ndarray:
        """``[R, C, ...]`` view of one map."""
        values = getattr(self, name)
        return None if values is None else values.reshape(self.R, self.C, *values.shape[1:])

    def result(self, k: int, runner, *, partial: bool, method: str, note: str,
               seconds: float, approx=None) -> OcclusionResult:
        """The maps of the grid at stride multiplier ``k`` (``1``: the requested grid)."""
        plan, base = self.plan, self.base
        pick = (slice(None, None, k), slice(None, None, k))
        prob, top, top_p = (self.grid(n)[pick].copy() for n in ("prob", "top_class", "top_prob"))
        feats = None if self.feats is None else self.grid("feats")[pick].copy()
        ids = set(np.unique(top).tolist()) | set(base.targets) | {base.base_class}
        names = {int(c): class_name(plan.labels, int(c)) for c in sorted(ids)}
        error, mean_error, checked = approx if approx is not None else (None, None, 0)
        return OcclusionResult(
            prob=prob, top_class=top, top_prob=top_p,
            feature=None if feats is None else feats[..., base.channel], features=feats,
            base_features=base.base_features, layer=plan.layer, channel=base.channel,
            target=base.targets[0], targets=tuple(base.targets),
            target_label=" + ".join(names[t] for t in base.targets), size=plan.size,
            stride=plan.stride * k, rows=plan.rows[::k], cols=plan.cols[::k],
            image_shape=(int(plan.x.shape[2]), int(plan.x.shape[3])), base_prob=base.base_prob,
            base_class=base.base_class, base_feature=base.base_feature, labels=names,
            fill=plan.fill_label, method=method, method_note=note, seconds=seconds,
            partial=partial, positions=runner.positions, approx_error=error,
            approx_mean_error=mean_error, approx_checked=checked)


def _steps(plan: _Plan, base: _Base, chooser: Chooser):
    """The sweep: one batch of positions per step (and one step per finished coarse stage);
    returns the result."""
    R, C = len(plan.rows), len(plan.cols)
    maps = _Maps(plan, base)
    runner = BatchRunner(plan, chooser)
    if plan.approx is not None:
        return (yield from _approximate(plan, maps, runner))
    order, checkpoints = schedule(R, C, plan.factors)
    yield from _run(maps, runner, order, checkpoints, 0, len(order),
                    lambda: (_method(runner), _note(runner)))
    return maps.result(1, runner, partial=False, method=chooser.method, note=_note(runner),
                       seconds=base.seconds + runner.seconds)


def _method(runner: BatchRunner) -> str:
    """The method so far: the chooser's, or while it probes, the one that computed most."""
    return runner.chooser.method or max(runner.counts, key=runner.counts.get)


def _note(runner: BatchRunner) -> str:
    """The result's ``method_note``: the chooser's reason and who computed what."""
    note = runner.chooser.reason
    counts = {m: n for m, n in runner.counts.items() if n}
    if len(counts) > 1:
        note += " (" + ", ".join(f"{n} positions {m}" for m, n in counts.items()) + ")"
    return note


def _run(maps: _Maps, runner: BatchRunner, order: np.ndarray, checkpoints, done: int,
         total: int, describe: Callable[[], tuple[str, str]]):
    """Compute the positions ``order`` (flat indices) batch by batch; after each batch yield a
    step, one per coarse stage it completes (``checkpoints``: ``(count, k)``), carrying that
    stage's map (``describe()``: its ``(method, method_note)``). Returns the number of
    positions done."""
    pos = cp = 0
    while pos < len(order):
        n = runner.next_size(len(order) - pos)
        idx = order[pos:pos + n]
        maps.put(idx, *runner.run(maps.corners(idx)))
        pos += n
        partials = []
        while cp < len(checkpoints) and checkpoints[cp][0] <= pos:
            k = checkpoints[cp][1]
            cp += 1
            if k != 1:
                method, note = describe()
                partials.append(maps.result(k, runner, partial=True, method=method, note=note,
                                            seconds=maps.base.seconds + runner.seconds))
        for partial in partials or [None]:
            text = "" if partial is None else f"stride {partial.stride}"
            yield Step(done + pos, total, note=text, partial=partial)
    return done + pos


def _approximate(plan: _Plan, maps: _Maps, runner: BatchRunner):
    """Krypton's approximate sweep (:mod:`.approx`): the coarse grid, a drill-down where it
    changes most, the rest interpolated, and the error measured at random positions."""
    approx, R, C = plan.approx, maps.R, maps.C
    k = coarse_factor(R, C, plan.size, plan.stride)
    lattice = np.zeros((R, C), bool)
    lattice[::k, ::k] = True
    first = np.flatnonzero(lattice)
    rest = R * C - len(first)
    drill = int(np.ceil(approx.drill_down * rest))
    checks = check_positions(R * C, approx.check, approx.seed)
    total = len(first) + drill + len(checks)
    note = f"approximate: {_approx_note(approx, plan, runner, k)}"
    done = yield from _run(maps, runner, first, [(len(first), k)], 0, total,
                           lambda: ("approximate", note))
    change = maps.base.base_prob - maps.grid("prob")
    more = drill_down(change, maps.grid("done"), k, approx.drill_down)
    done = yield from _run(maps, runner, more, [], done, total, lambda: ("approximate", note))
    fill_in({"prob": maps.grid("prob"), "top_prob": maps.grid("top_prob"),
             "top_class": maps.grid("top_class"), "feats": maps.grid("feats")},
            maps.grid("done"), k)
    exact = []
    for b in range(0, len(checks), plan.batch["plain"]):
        idx = checks[b:b + plan.batch["plain"]]
        logits, _ = runner.run(maps.corners(idx), plain=True)
        exact.append(maps.probabilities(logits)[0])
        yield Step(done + b + len(idx), total, note="checking")
    diff = np.abs(maps.prob[checks] - np.concatenate(exact)) if len(checks) else None
    error = (None, None, 0) if diff is None else \
        (float(diff.max()), float(diff.mean()), int(len(checks)))
    if diff is not None:
        note += f"; max |P difference| {error[0]:.2g} at {error[2]} positions checked exactly"
    return maps.result(1, runner, partial=False, method="approximate", note=note,
                       seconds=maps.base.seconds + runner.seconds, approx=error)


def _approx_note(approx: Approximation, plan: _Plan, runner: BatchRunner, k: int) -> str:
    engine = runner.chooser.method == "incremental"
    tau = (f"projective-field threshold tau={approx.tau:g} in the incremental engine"
           if engine else f"no projective-field threshold ({runner.chooser.reason})")
    return (f"{tau}; coarse stride {plan.stride * k}, then drill-down on "
            f"{approx.drill_down:.0%} of the other positions, the rest interpolated")
