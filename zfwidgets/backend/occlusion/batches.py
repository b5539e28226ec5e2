"""One batch of occluded images at a time: through the incremental engine or plainly, timed.

:class:`BatchRunner` is what a sweep calls for every batch: it asks its
:class:`~.choice.Chooser` which method runs next and how many positions, runs them
(:func:`run_batch`), times them for the chooser, and, where the method allows it, finishes with
plain passes should the engine trip over a model (with a warning). :func:`class_logits` reads a
classifier's output; :func:`layer_totals` records one layer's per-channel totals.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np
import torch
from torch import nn

from ...errors import BadParameterError, ZFError
from ...models.registry import pick_logits
from ..layers import Layout, as_maps, capture, scoped_eval
from .choice import Chooser
from .engine import IncrementalMode
from .grid import occlude
from .twin import channels_last_twin, drop_twin, twin_blocker

__all__ = ["BatchRunner", "class_logits", "engine_blocker", "layer_totals", "plain_total",
           "run_batch", "totals_reader", "twin_allowed"]


def engine_blocker(model: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``method="auto"`` must not use the engine on this model and input (``None``: it
    may)."""
    if x.device.type != "cpu":
        return (f"the input is on {x.device.type}, where batched plain passes suit the device "
                "better than the engine's many small calls")
    if has_hooks(model):
        return "the model carries forward hooks of its own (they would see the engine's placeholders)"
    return None


def twin_allowed(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether plain passes may run on the model's channels-last twin (:mod:`.twin`): on the
    CPU, for a model that may have one."""
    return x.device.type == "cpu" and twin_blocker(model) is None


class BatchRunner:
    """Runs a sweep's batches by the method its chooser picks.

    Parameters
    ----------
    plan : the sweep's plan
        ``model``, ``x``, ``size``, ``fill``, ``layer``, ``method``, ``approx``.
    chooser : Chooser

    Attributes
    ----------
    seconds : float
        Wall time spent in batches.
    counts : dict of str to int
        Positions computed by each method.
    twin : nn.Module or None
        The model's channels-last twin once a batch ran on it (:mod:`.twin`; the model itself
        where it gets none).
    """

    def __init__(self, plan, chooser: Chooser):
        self.plan = plan
        self.chooser = chooser
        self.engine: IncrementalMode | None = None
        self.twin: nn.Module | None = None
        self.seconds = 0.0
        self.counts = {"plain": 0, "incremental": 0}

    @property
    def positions(self) -> int:
        """Occluded images run through the model so far."""
        return sum(self.counts.values())

    def next_size(self, remaining: int) -> int:
        """Positions in the next batch."""
        return self.chooser.next(remaining)[1]

    def run(self, corners, *, plain: bool = False):
        """Logits ``[n, classes]`` and per-channel layer totals (or ``None``) of one batch of
        occluder corners; ``plain``: plain passes whatever the method (exact checks)."""
        method = "plain" if plain else self.chooser.next(len(corners))[0]
        model = self.plan.model
        if method == "twin":
            if self.twin is None:               # checked once a sweep, built or reused
                self.twin = channels_last_twin(model) or model
            model = self.twin
        engine = None
        if method == "incremental":
            if self.engine is None:
                tau = self.plan.approx.tau if self.plan.approx is not None else 1.0
                self.engine = IncrementalMode(tau=tau)
            engine = self.engine
        saved, setup = (engine.macs_saved, engine.clean_seconds) if engine is not None else (0, 0)
        start = time.perf_counter()
        logits, feats, fell_back = self._batch(corners, engine, model)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        used = "plain" if engine is None or fell_back else "incremental"
        self.counts[used] += len(corners)
        if not plain:
            if engine is not None:
                saved, setup = engine.macs_saved - saved, engine.clean_seconds - setup
            self.chooser.record(method, len(corners), seconds, saved, setup,
                                fell_back=fell_back)
            if method == "twin" and not (self.chooser.probing or self.chooser.twin):
                drop_twin(self.plan.model)    # the probe chose the model's own layout
                self.twin = None
        return logits, feats

    def _batch(self, corners, engine, model):
        """``(logits, totals, fell_back)`` of plain passes through ``model`` (the plan's, or its
        twin) or of the engine; unless ``method="incremental"`` was asked for, an engine failure
        warns and the batch runs plainly."""
        try:
            return (*run_batch(self.plan, corners, engine, model), False)
        except ZFError:
            raise
        except Exception as exc:
            if engine is None or self.plan.method == "incremental":
                raise
            warnings.warn(f"incremental occlusion failed on this model ({type(exc).__name__}: "
                          f"{exc}); continuing with plain forward passes", RuntimeWarning,
                          stacklevel=4)
            self.engine = None
            return (*run_batch(self.plan, corners, None), True)


def run_batch(plan, corners, engine: IncrementalMode | None, model: nn.Module | None = None):
    """Logits ``[n, classes]`` and per-channel totals ``[n, C]`` of the layer's output (``None``
    without a layer), for one batch of occluder corners: through ``engine``, or plainly (through
    ``model``, default the plan's: its channels-last twin may stand in)."""
    x, layer = plan.x, plan.layer
    model = plan.model if model is None or engine is not None else model
    with torch.inference_mode(), eval_scope(model):
        if engine is None:
            fmt = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
            batch = occlude(x, corners, plan.size, plan.fill, memory_format=fmt)
            with layer_totals(model, layer, totals_reader(plan.layout)) as hook:
                logits = class_logits(model(batch), plan.output)
            return logits, hook["value"]
        tops = np.array([c[0] for c in corners], np.int64)
        lefts = np.array([c[1] for c in corners], np.int64)
        with engine, layer_totals(model, layer, totals_reader(plan.layout, engine)) as hook:
            inp = engine.inputs(x, tops, lefts, plan.size, plan.fill)
            logits = class_logits(engine.resolve(model(inp)), plan.output)
        return logits, hook["value"]


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


def has_hooks(model: nn.Module) -> bool:
    """Whether the user put forward hooks on the model (they would see placeholders)."""
    from torch.nn.modules import module as _m

    if any(getattr(_m, name, None) for name in ("_global_forward_hooks",
                                                   "_global_forward_pre_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def eval_scope(model: nn.Module):
    """``scoped_eval`` when some module is in training mode; nothing to do otherwise."""
    if any(m.training for m in model.modules()):
        return scoped_eval(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def layer_totals(model: nn.Module, layer: str | None, reduce):
    """For the block: ``box["value"] = reduce(output)`` for the tensor output of ``layer`` (a
    :func:`~zfwidgets.backend.layers.capture` hook; nothing when ``layer`` is ``None``;
    ``reduce`` may return ``None`` for an output it cannot read)."""
    box: dict = {"value": None}
    if layer is None:
        yield box
        return

    def on_output(_, output):
        if isinstance(output, torch.Tensor):
            box["value"] = reduce(output)

    with capture(model, [layer], on_output):
        yield box


def plain_total(t: torch.Tensor) -> torch.Tensor:
    """Per-image total of every channel, ``[N, C]``."""
    return t.detach().flatten(2).sum(2)


def totals_reader(layout: Layout | None, engine: IncrementalMode | None = None):
    """``[N, C]`` channel totals of a layer's output read as maps (:func:`as_maps`): through
    the engine's patches for ``[N, C, H, W]`` maps, of the dense value for other layouts."""
    if layout is None or layout.kind == "nchw":
        plain = engine.channel_totals if engine is not None else plain_total
        return lambda t: plain(t) if t.dim() == 4 else None
    dense = engine.resolve if engine is not None else (lambda t: t)
    return lambda t: plain_total(as_maps(dense(t), layout))
