"""Occlusion of a Session's image: the paper's defaults, class names, one-occluder predictions.

:func:`occlusion_job` (a :class:`~zfwidgets.backend.jobs.Job`, for widgets that step it) and
:func:`occlusion` (``Session.occlusion``: the same job run to the end) fill in what a session
knows: the default layer (:func:`~zfwidgets.backend.defaults.top_layer`), its strongest
channel, a target given by label, the named fills in the model's normalized input space.
:func:`occluded_prediction` and :func:`fill_rgb` serve a widget that moves one occluder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...errors import OutOfRangeError
from ..defaults import top_layer
from ..targets import resolve_classes
from ..jobs import Job
from ..layers import scoped_eval
from .grid import check_int, fill_tensor, occlude, occlusion_grid
from .approx import Approximation
from .result import OcclusionResult
from .sweep import class_logits, occlusion_maps_job, run_sweep

__all__ = ["fill_rgb", "occluded_prediction", "occlusion", "occlusion_job"]


def occlusion_job(session, size: int = 32, stride: int = 8, target=None,
                  layer: str | None = None, fill: str | float = "gray", *,
                  channel: int | None = None, batch_size: int | None = None,
                  method: str = "auto", progressive=False,
                  approximation: Approximation | None = None) -> Job[OcclusionResult]:
    """The occlusion sweep of :func:`occlusion` as a job that advances one batch per step.

    Parameters are validated (and the unoccluded pass run) before it returns; then
    :meth:`~zfwidgets.backend.jobs.Job.step` yields ``Step(done, total)`` in occluder positions
    and the job's result is the :class:`~.result.OcclusionResult`. :func:`occlusion` is
    ``occlusion_job(...).run(...)``.

    The contract for a view that draws a progressive sweep as it arrives
    (``progressive=True``):

    * ``step.partial`` is ``None`` on most steps; on the step that completes a coarse stage
      it is that stage's :class:`~.result.OcclusionResult`: ``partial=True``, ``stride`` the
      stage's (a multiple of the requested one), ``rows`` / ``cols`` / ``extent()`` its own
      grid, every value exactly what a one-shot sweep at that stride gives. Draw it as it
      comes; stages come coarsest first (each is a superset of the previous one), several
      may complete in one batch (then one step each, same ``done``).
    * ``step.done`` / ``step.total`` count positions of the requested grid (every position
      is computed once: a coarse stage's values are kept, not recomputed).
    * The requested map is never a ``partial``: it is ``job.result`` once ``job.step()``
      returns ``None`` (``partial=False``).
    * A newer request supersedes an older one by closing the older job between two steps
      (``job.close()``); the model is left as it was.
    * ``method="approximate"`` yields its coarse stage the same way; its result carries
      ``approx_error``.

    Parameters
    ----------
    session, size, stride, target, layer, fill, channel, batch_size, method
        See :func:`occlusion`.
    progressive, approximation
        See :func:`occlusion`.

    Returns
    -------
    Job of OcclusionResult

    Raises
    ------
    BadParameterError, OutOfRangeError, UnknownLayerError
        As :func:`occlusion`.
    """
    x = session.input_tensor
    occlusion_grid(int(x.shape[2]), int(x.shape[3]), size, stride)  # validates early
    if layer is None:
        layer = top_layer(session)
    session.layer_info(layer)  # UnknownLayerError with suggestions
    if channel is None:
        channel = session.strongest_channel(layer)
    else:
        session._check_unit(layer, check_int("channel", channel))
    target = resolve_classes(session, target)
    pre = session.preprocessing
    fill_t = fill_tensor(fill, x, pre.mean, pre.std)
    return occlusion_maps_job(session.model, x, size, stride, target=target, layer=layer,
                              channel=channel, fill=fill_t, batch_size=batch_size,
                              method=method, labels=session.labels,
                              known_layers=session.layers, fill_label=fill,
                              progressive=progressive, approximation=approximation,
                              output=session.entry.output,
                              layout=session.layer_info(layer).layout)


def occlusion(session, size: int = 32, stride: int = 8, target=None,
              layer: str | None = None, fill: str | float = "gray", *, channel: int | None = None,
              batch_size: int | None = None, method: str = "auto", progress: bool = True,
              on_progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None, progressive=False,
              approximation: Approximation | None = None) -> OcclusionResult:
    """Occlusion sensitivity of the session's image (the paper's Fig. 7).

    A ``size`` x ``size`` square of ``fill`` is placed with its top-left corner at
    ``0, stride, 2 * stride, ...`` up to ``H - size`` on each axis, and the model is run on every
    occluded copy (incrementally: only the part of each layer that the square changes is
    recomputed; the values equal a plain loop over occluded copies).

    Parameters
    ----------
    session : Session
    size : int
        Occluder side in input pixels, ``1 <= size <= min(H, W)``.
    stride : int
        Step between occluder positions, ``>= 1``.
    target : int, str or sequence of int / str, optional
        Class (id or label) whose probability is mapped; several classes: the sum of their
        probabilities (``["tabby", "tiger cat", "Egyptian cat"]``: P(cat); the result's
        ``target_label`` is ``"tabby + tiger cat + Egyptian cat"``). Default the unoccluded
        top class (:func:`~zfwidgets.backend.defaults.target_classes` is the policy that adds
        its near-synonyms).
    layer : str, optional
        Layer for the feature map (Fig. 7 b); default :func:`~zfwidgets.backend.defaults.top_layer`
        (the model's top convolutional feature layer).
    fill : {"gray", "mean", "black", "white"} or float
        ``"gray"`` is the model's mean pixel, i.e. 0 in normalized input space (the paper's gray
        square); ``"mean"`` the image's own mean colour; ``"black"`` / ``"white"`` pixel 0 / 1;
        a float is a value in normalized input space.
    channel : int, optional
        Feature map of ``layer``; default :meth:`Session.strongest_channel` (strongest unoccluded).
    batch_size : int, optional
        Occluded images per forward pass (default: see :func:`~.sweep.occlusion_maps`).
    method : {"auto", "incremental", "plain", "approximate"}
        See :func:`~.sweep.occlusion_maps` (``"auto"``: whichever of the two exact methods a
        timed probe finds faster for this model and input; ``result.method`` and
        ``result.method_note`` say which and why). ``"approximate"``: Krypton's approximate
        mode (:mod:`.approx`), never the default; ``result.approx_error`` is its measured error.
    progress : bool
        ``tqdm`` progress bar.
    on_progress : callable, optional
        ``on_progress(done, total)`` after each batch (widgets use this).
    should_stop : callable, optional
        Checked between batches; returning true stops the sweep with :class:`Cancelled`.
    progressive : bool or sequence of int
        Compute coarse stages first (:func:`occlusion_job` hands them to a view as they come);
        the result is the same.
    approximation : Approximation, optional
        Settings of ``method="approximate"``.

    Returns
    -------
    OcclusionResult

    Raises
    ------
    BadParameterError
        Size below 1 or above the image side, stride below 1, unknown fill or target label.
    OutOfRangeError
        Target class or channel out of range.
    UnknownLayerError
        ``layer`` is not one of the session's layers.
    Cancelled
        ``should_stop`` returned true.

    Examples
    --------
    >>> s = Session()                                        # doctest: +SKIP
    >>> r = s.occlusion(size=32, stride=8)                   # doctest: +SKIP
    >>> r.prob.shape, r.target_label                         # doctest: +SKIP
    ((25, 25), 'tiger cat')
    """
    job = occlusion_job(session, size, stride, target, layer, fill, channel=channel,
                        batch_size=batch_size, method=method, progressive=progressive,
                        approximation=approximation)
    return run_sweep(job, progress=progress, on_progress=on_progress, should_stop=should_stop)


def occluded_prediction(session, top: int, left: int, size: int, fill: str | float = "gray",
                        k: int = 5) -> list[tuple[int, str, float]]:
    """Top-``k`` classes of the session's image with one occluder: one forward pass.

    Parameters
    ----------
    session : Session
    top, left : int
        Occluder corner in input pixels (``0 <= top <= H - size``, likewise ``left``).
    size : int
        Occluder side.
    fill : see :func:`occlusion`
    k : int

    Returns
    -------
    list of (class_id, label, probability)
        Most probable first.

    Raises
    ------
    BadParameterError, OutOfRangeError
        For an impossible size or an occluder outside the image.
    """
    x = session.input_tensor
    H, W = int(x.shape[2]), int(x.shape[3])
    occlusion_grid(H, W, size, 1)
    top, left = check_int("top", top), check_int("left", left)
    if not (0 <= top <= H - size and 0 <= left <= W - size):
        raise OutOfRangeError(f"occluder corner {(top, left)} puts a {size}px square outside "
                              f"the {H}x{W} input (corners go up to {(H - size, W - size)})")
    pre = session.preprocessing
    fill_t = fill_tensor(fill, x, pre.mean, pre.std)
    model = session.model
    with torch.inference_mode(), scoped_eval(model):
        logits = class_logits(model(occlude(x, [(top, left)], size, fill_t)), session.entry.output)
    probs = torch.softmax(logits.float(), 1)[0]
    k = max(1, min(int(k), probs.numel()))
    values, ids = probs.topk(k)
    return [(int(i), session.label(int(i)), float(v)) for v, i in zip(values, ids)]


def fill_rgb(session, fill: str | float = "gray") -> tuple[float, float, float]:
    """The occluder colour as an RGB pixel in [0, 1] (for drawing it)."""
    x = session.input_tensor
    pre = session.preprocessing
    value = fill_tensor(fill, x, pre.mean, pre.std)
    rgb = pre.denormalize(value.reshape(1, -1, 1, 1))[0, :, 0, 0]
    return tuple(float(v) for v in rgb)
