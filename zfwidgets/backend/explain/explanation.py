"""Every class map of one image beside the exact occlusion map, each with its honest numbers.

:func:`explain` (and :func:`explain_job`, the same work as a
:class:`~zfwidgets.backend.jobs.Job` a widget can step) computes, for one class:

1. each class map of :mod:`.maps` (saliency, guided backprop, deconvnet, Grad-CAM, guided
   Grad-CAM);
2. the occlusion sweep (:func:`zfwidgets.backend.occlusion.occlusion_job`), the one map that
   measures what it claims: the probability of the class with each square hidden;
3. the **agreement** of each map with occlusion: Spearman's rank correlation, at the occlusion
   grid's resolution, between the map's mean over each occluder square and the drop in the
   class probability that hiding that square caused;
4. a **deletion curve** per map: the class probability as the pixels the map ranks highest are
   greyed (in the occluder's grey, square cells of ``stride`` pixels at a time), in ``steps``
   steps, beside the same curve for the occlusion map's own ranking and for a random one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...errors import BadParameterError, UnsupportedModelError, check_choice
from ..defaults import gradcam_layer
from ..jobs import Job, Step
from ..occlusion import OcclusionResult, fill_tensor, occlusion_grid, occlusion_job
from ..occlusion.grid import check_int
from ..targets import classes_label
from .agreement import deletion_curve, deletion_order, grid_means, spearman
from .maps import ClassMap, class_map, target_classes
from .methods import METHODS

__all__ = ["Explanation", "explain", "explain_job"]


@dataclass
class Explanation:
    """Class maps of one image, the occlusion map, and how well each map agrees with it.

    Attributes
    ----------
    target : tuple of int
        The class ids explained (probabilities and scores summed).
    label : str
        Their names.
    layer : str
        The Grad-CAM layer.
    maps : dict of str to ClassMap
        Each method's map, in :data:`~.methods.METHODS` order.
    occlusion : OcclusionResult
        The exact occlusion sweep for the same class.
    pooled : dict of str to numpy.ndarray
        ``[R, C]`` each map's mean over each occluder square: the map at the occlusion grid's
        resolution.
    drop : numpy.ndarray
        ``[R, C]`` how much hiding each square lowered the class probability
        (``occlusion.base_prob - occlusion.prob``).
    agreement : dict of str to float
        Spearman's rank correlation of ``pooled[m]`` with ``drop`` (1: the map ranks the
        squares exactly as occlusion does; NaN when either is constant over the grid, a
        Grad-CAM that the ReLU made all zero, say).
    fractions : numpy.ndarray
        ``[steps + 1]`` fraction of pixels greyed at each step of the deletion curves.
    deletion : dict of str to numpy.ndarray
        ``[steps + 1]`` class probability at each step, per method, plus ``"occlusion"``
        (pixels ranked by the occlusion heatmap) and ``"random"`` (a random ranking).
    skipped : dict of str to str
        Methods the model does not support, with the reason (guided and deconvnet need
        rectifiers).
    """

    target: tuple[int, ...]
    label: str
    layer: str
    maps: dict[str, ClassMap]
    occlusion: OcclusionResult
    pooled: dict[str, np.ndarray] = field(repr=False)
    drop: np.ndarray = field(repr=False)
    agreement: dict[str, float]
    fractions: np.ndarray = field(repr=False)
    deletion: dict[str, np.ndarray] = field(repr=False)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """The methods computed, in order."""
        return list(self.maps)

    def deletion_area(self) -> dict[str, float]:
        """Area under each deletion curve (the mean probability over the steps, trapezoids):
        lower means the ranking found what the class depends on sooner."""
        return {name: float(np.trapezoid(curve, self.fractions))
                for name, curve in self.deletion.items()}


def _check_methods(methods) -> list[str]:
    if methods is None:
        return list(METHODS)
    if isinstance(methods, str):
        methods = [methods]
    names = [check_choice("method", m, tuple(METHODS)) for m in methods]
    if not names:
        raise BadParameterError("methods is empty: name at least one class-map method")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class _Plan:
    """What one explanation computes, validated."""

    classes: tuple[int, ...]
    methods: list[str]
    layer: str
    fill: str | float
    steps: int
    cell: int | None
    seed: int
    batch_size: int
    deletion: bool


def explain_job(session, target=None, *, methods: Sequence[str] | None = None,
                layer: str | None = None, size: int = 32, stride: int = 8,
                fill: str | float = "gray", steps: int = 20, cell: int | None = None,
                seed: int = 0, batch_size: int = 16, deletion: bool = True
                ) -> Job[Explanation]:
    """The work of :func:`explain` as a job: one step per map, per occlusion batch and per
    deletion curve.

    Everything is validated, and the occlusion sweep's unoccluded pass run, before this
    returns. A step's ``partial`` is the :class:`ClassMap` just computed (map steps), the
    occlusion job's own partial (occlusion steps), or ``None``.

    Parameters
    ----------
    session, target, methods, layer, size, stride, fill, steps, cell, seed, batch_size
        See :func:`explain`.
    deletion : bool
        Compute the deletion curves (``False``: ``deletion`` is empty and ``fractions`` too;
        the maps, occlusion and agreement only, as the explorer's Explain tab shows them).

    Returns
    -------
    Job of Explanation
    """
    classes = target_classes(session, target)
    layer = gradcam_layer(session) if layer is None else layer
    session.layer_info(layer)
    ints = {name: check_int(name, value) for name, value in
            (("steps", steps), ("batch_size", batch_size), ("cell", stride if cell is None
                                                             else cell))}
    if min(ints.values()) < 1:
        raise BadParameterError(f"steps, batch_size and cell must be at least 1, got {ints}")
    plan = _Plan(classes, _check_methods(methods), layer, fill, ints["steps"], ints["cell"],
                 int(seed), ints["batch_size"], bool(deletion))
    occ = occlusion_job(session, size, stride, classes[0] if len(classes) == 1
                        else list(classes), fill=fill)
    x = session.input_tensor
    rows, cols = occlusion_grid(int(x.shape[2]), int(x.shape[3]), size, stride)
    return Job(_steps(session, plan, occ, len(rows) * len(cols)),
               what=f"explain {classes_label(session, classes)}", unit="step")


def _steps(session, plan: _Plan, occ: Job, n_pos: int):
    total = len(plan.methods) + n_pos + (len(plan.methods) + 2 if plan.deletion else 0)
    maps: dict[str, ClassMap] = {}
    skipped: dict[str, str] = {}
    for done, name in enumerate(plan.methods, 1):
        try:
            maps[name] = class_map(session, name, plan.classes, plan.layer)
        except UnsupportedModelError as exc:
            skipped[name] = str(exc)
        yield Step(done, total, note=name, partial=maps.get(name))
    done = len(plan.methods)
    try:
        while (step := occ.step()) is not None:
            yield Step(done + step.done, total, note="occlusion", partial=step.partial)
    finally:
        occ.close()
    result: OcclusionResult = occ.result
    done += n_pos
    drop = (result.base_prob - result.prob).astype(np.float32)
    pooled = {m: grid_means(c.map, result.rows, result.cols, result.size) for m, c in maps.items()}
    deletion = {}
    rankings = _rankings(session, plan, maps, result) if plan.deletion else {}
    for m, order in rankings.items():
        deletion[m] = _deletion(session, plan, order)
        done += 1
        yield Step(min(done, total), total, note=f"deletion: {m}")
    return Explanation(target=plan.classes, label=classes_label(session, plan.classes),
                       layer=plan.layer, maps=maps, occlusion=result, pooled=pooled, drop=drop,
                       agreement={m: spearman(p, drop) for m, p in pooled.items()},
                       fractions=np.linspace(0, 1, plan.steps + 1).astype(np.float32)
                       if plan.deletion else np.zeros(0, np.float32),
                       deletion=deletion, skipped=skipped)


def _rankings(session, plan: _Plan, maps, result: OcclusionResult) -> dict[str, np.ndarray]:
    """Each deletion curve's pixel order: per map, occlusion's, a random one."""
    x = session.input_tensor
    rankings = {m: deletion_order(c.map, plan.cell) for m, c in maps.items()}
    rankings["occlusion"] = deletion_order(result.heatmap("drop"), plan.cell)
    noise = np.random.default_rng(plan.seed).random((int(x.shape[2]), int(x.shape[3])))
    rankings["random"] = deletion_order(noise, plan.cell)
    return rankings


def _deletion(session, plan: _Plan, order: np.ndarray) -> np.ndarray:
    x = session.input_tensor
    pre = session.preprocessing
    fill = fill_tensor(plan.fill, x, pre.mean, pre.std)
    return deletion_curve(session.model, x, order, plan.classes, fill, plan.steps,
                          plan.batch_size)


def explain(session, target=None, *, methods: Sequence[str] | None = None,
            layer: str | None = None, size: int = 32, stride: int = 8,
            fill: str | float = "gray", steps: int = 20, cell: int | None = None, seed: int = 0,
            batch_size: int = 16, progress: bool = True, on_step: Callable[[Step], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Explanation:
    """Every class map of the session's image, the exact occlusion map, and their agreement.

    Parameters
    ----------
    session : Session
    target : int, str or sequence of them, optional
        Class id, label, or several (scores and probabilities summed); default the top class.
    methods : sequence of str, optional
        Class-map methods (default all: ``saliency``, ``guided``, ``deconvnet``, ``gradcam``,
        ``guided_gradcam``). Those the model cannot support (guided and deconvnet through a
        non-rectifier) are skipped and listed in ``skipped``.
    layer : str, optional
        The Grad-CAM layer; default :func:`~zfwidgets.backend.defaults.gradcam_layer`.
    size, stride : int
        The occluder's side and step in input pixels (as :meth:`Session.occlusion`).
    fill : {"gray", "mean", "black", "white"} or float
        The occluder's colour, also the grey of the deletion curves.
    steps : int
        Steps of the deletion curves (from no pixel greyed to all).
    cell : int, optional
        The deletion curves grey squares of ``cell`` x ``cell`` pixels, ranked by each map's
        mean over them (default the occluder's ``stride``; 1: single pixels). See
        :func:`~.agreement.deletion_order`.
    seed : int
        Seeds the random ranking of the baseline deletion curve.
    batch_size : int
        Images per forward pass of the deletion curves.
    progress : bool
        Show a ``tqdm.auto`` progress bar.
    on_step : callable, optional
        Called with every :class:`~zfwidgets.backend.jobs.Step`.
    should_stop : callable, optional
        Checked before every step; returning true raises :class:`~zfwidgets.Cancelled`.

    Returns
    -------
    Explanation

    Raises
    ------
    BadParameterError
        An unknown method, an impossible occluder, ``steps`` below 1. Several target classes
        need an occlusion sweep that sums them.
    UnknownClassError, OutOfRangeError, UnknownLayerError
        A target or layer the model does not have.
    Cancelled
        ``should_stop`` returned true.
    """
    job = explain_job(session, target, methods=methods, layer=layer, size=size, stride=stride,
                      fill=fill, steps=steps, cell=cell, seed=seed, batch_size=batch_size)
    return job.run(progress=progress, on_step=on_step, should_stop=should_stop)
