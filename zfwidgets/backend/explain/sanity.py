"""The model-randomization sanity check (Adebayo et al. 2018): does a map depend on the weights?

A map that explains the model's decision must change when the model does. The check computes a
class map, then re-initializes the learned layers one by one, *cascading* from the output down
(the top layer, then the top two, ...), recomputing the map for the same class after each, and
reports how similar each map stays to the original. A method whose maps stay alike (an edge
detector of the image, say) shows the image more than the model.

It runs on a deep copy of the model: the user's model, its parameters, buffers, hooks and flags
are untouched, and so is torch's random state (each layer is drawn from its own generator).

Re-initialization (:func:`randomize_layer`): every parameter of the layer is drawn from
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = weight[0].numel()`` (torch's default for
convolutions and linear layers), from a CPU generator seeded with ``seed + i`` for the ``i``-th
layer of the cascade, parameters in ``named_parameters`` order.

Similarity of each map to the original: Spearman's rank correlation of the signed maps
(``raw``), of their magnitudes, and the SSIM of the shown maps (:mod:`.agreement`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...errors import BadParameterError, UnsupportedModelError, check_choice
from ..defaults import gradcam_layer, sanity_layers
from ..jobs import Job, Step
from ..layers import resolve_layer
from ..occlusion.grid import check_int
from ..targets import classes_label
from .agreement import spearman, ssim
from .maps import ClassMap, compute_map, target_classes
from .methods import METHODS

__all__ = ["SanityResult", "randomize_layer", "sanity_check", "sanity_check_job"]


@dataclass
class SanityResult:
    """How a class map changes as the model's layers are randomized, top first.

    Attributes
    ----------
    method : str
        The class-map method.
    target : tuple of int
        The class ids (the same for every map).
    label : str
        Their names.
    layer : str or None
        The CAM layer (``None`` for input-space methods).
    layers : list of str
        The layers randomized, in cascade order: map ``maps[i]`` has ``layers[: i + 1]``
        randomized.
    original : ClassMap
        The map of the trained model.
    maps : list of ClassMap
        The map after each step of the cascade.
    spearman : numpy.ndarray
        ``[n]`` rank correlation of ``raw`` (signed) with the original's.
    spearman_abs : numpy.ndarray
        ``[n]`` rank correlation of ``|raw|``.
    ssim : numpy.ndarray
        ``[n]`` structural similarity of ``map`` (each scaled to [0, 1]).
    seed : int
        Layer ``i`` was drawn with seed ``seed + i``.
    """

    method: str
    target: tuple[int, ...]
    label: str
    layer: str | None
    layers: list[str]
    original: ClassMap = field(repr=False)
    maps: list[ClassMap] = field(repr=False)
    spearman: np.ndarray
    spearman_abs: np.ndarray
    ssim: np.ndarray
    seed: int = 0


def randomize_layer(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s own parameters in place, reproducibly.

    Each parameter (in ``named_parameters(recurse=False)`` order) is drawn from
    ``U(-b, b)``, ``b = 1 / sqrt(weight[0].numel())``, by one CPU generator seeded with
    ``seed``; torch's global random state is not used.

    Parameters
    ----------
    module : nn.Module
        A layer with a ``weight`` (a convolution, a linear layer). Never pass the user's model:
        :func:`sanity_check` calls this on a copy.
    seed : int
        Seed of the generator.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 1:
        raise BadParameterError(f"{type(module).__name__} has no weight to randomize")
    bound = 1.0 / math.sqrt(max(1, weight[0].numel()))
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, p in module.named_parameters(recurse=False):
            draw = torch.empty(p.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
            p.copy_(draw.to(device=p.device, dtype=p.dtype))


def _check_layers(session, layers, depth) -> list[str]:
    layers = sanity_layers(session) if layers is None else \
        ([layers] if isinstance(layers, str) else list(layers))
    model = session.model
    for name in layers:
        module, _ = resolve_layer(model, name, [n for n, _ in model.named_modules() if n])
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise BadParameterError(f"layer {name!r} ({type(module).__name__}) has no weight to "
                                    "randomize")
    if depth is not None:
        depth = check_int("depth", depth)
        if depth < 1:
            raise BadParameterError(f"depth must be at least 1, got {depth}")
        layers = layers[:depth]
    if not layers:
        raise BadParameterError("no layer to randomize: the model has no convolution or "
                                "linear layer")
    return layers


def sanity_check_job(session, method: str = "gradcam", target=None, *,
                     layer: str | None = None, layers: Sequence[str] | None = None,
                     depth: int | None = None, seed: int = 0) -> Job[SanityResult]:
    """The work of :func:`sanity_check` as a job: one step per map (the original first).

    A step's ``partial`` is ``(randomized_layer, ClassMap)`` (``None`` for the original).

    Parameters
    ----------
    session, method, target, layer, layers, depth, seed
        See :func:`sanity_check`.

    Returns
    -------
    Job of SanityResult
    """
    method = check_choice("method", method, tuple(METHODS))
    classes = target_classes(session, target)
    if METHODS[method].uses_layer:
        layer = gradcam_layer(session) if layer is None else layer
        session.layer_info(layer)
    else:
        layer = None
    order = _check_layers(session, layers, depth)
    return Job(_steps(session, method, classes, layer, order, int(seed)),
               what=f"sanity check ({method})", unit="map")


def _steps(session, method, classes, layer, order, seed):
    try:
        model = copy.deepcopy(session.model)
    except Exception as exc:  # noqa: BLE001 - any failure to copy means: cannot check safely
        raise UnsupportedModelError(f"the sanity check needs a deep copy of the model, which "
                                    f"failed ({type(exc).__name__}: {exc})") from exc
    x, known, label = session.input_tensor, session.layers, classes_label(session, classes)

    def one():
        return compute_map(model, x, method, classes, layer=layer, label=label, known=known)

    total = len(order) + 1
    original = one()
    yield Step(1, total, note="original", partial=None)
    maps = []
    for i, name in enumerate(order):
        randomize_layer(model.get_submodule(name), seed + i)
        maps.append(one())
        yield Step(i + 2, total, note=name, partial=(name, maps[-1]))
    return SanityResult(
        method=method, target=tuple(classes), label=label, layer=layer, layers=list(order),
        original=original, maps=maps,
        spearman=np.array([spearman(original.raw, m.raw) for m in maps]),
        spearman_abs=np.array([spearman(np.abs(original.raw), np.abs(m.raw)) for m in maps]),
        ssim=np.array([ssim(original.map, m.map) for m in maps]), seed=seed)


def sanity_check(session, method: str = "gradcam", target=None, *, layer: str | None = None,
                 layers: Sequence[str] | None = None, depth: int | None = None, seed: int = 0,
                 progress: bool = True, on_step: Callable[[Step], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> SanityResult:
    """The cascading model-randomization test of a class map (Adebayo et al. 2018).

    On a deep copy of the model, the learned layers are re-initialized one by one from the
    output down (:func:`randomize_layer`), and the map of the same class recomputed after each.

    Parameters
    ----------
    session : Session
    method : {"saliency", "guided", "deconvnet", "gradcam", "guided_gradcam"}
        The class map to test.
    target : int, str or sequence of them, optional
        Class id, label or several (summed); default the top class of the trained model.
    layer : str, optional
        The CAM layer (default :func:`~zfwidgets.backend.defaults.gradcam_layer`).
    layers : sequence of str, optional
        The layers to randomize, in that order; default
        :func:`~zfwidgets.backend.defaults.sanity_layers` (every convolution and linear layer,
        from the output down).
    depth : int, optional
        Stop after this many layers of the cascade.
    seed : int
        Layer ``i`` of the cascade is drawn with seed ``seed + i``.
    progress : bool
        Show a ``tqdm.auto`` progress bar.
    on_step : callable, optional
        Called with every :class:`~zfwidgets.backend.jobs.Step`.
    should_stop : callable, optional
        Checked before every step; returning true raises :class:`~zfwidgets.Cancelled`.

    Returns
    -------
    SanityResult

    Raises
    ------
    BadParameterError
        Unknown method, a layer without weights, ``depth`` below 1.
    UnknownLayerError, UnknownClassError, OutOfRangeError
        A layer or target the model does not have.
    UnsupportedModelError
        The model cannot be deep-copied, or the method does not apply to it.
    """
    job = sanity_check_job(session, method, target, layer=layer, layers=layers, depth=depth,
                           seed=seed)
    return job.run(progress=progress, on_step=on_step, should_stop=should_stop)
