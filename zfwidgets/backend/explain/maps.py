"""Class maps of a Session's image: saliency, guided / deconvnet projections, Grad-CAM.

What a class-level explanation shows, for the class a user names (an id, a label, or several
labels summed: see :mod:`zfwidgets.backend.targets`; default the top class):

* :func:`saliency`: the input gradient of the class score (Simonyan et al. 2014);
* :func:`class_projection`: the guided backprop or deconvnet projection of the class score,
  through the same rules as the unit projections (:mod:`zfwidgets.backend.rules`);
* :func:`gradcam`: Grad-CAM (Selvaraju et al. 2017) at a layer (default
  :func:`~zfwidgets.backend.defaults.gradcam_layer`, the last layer with a spatial map);
* :func:`guided_gradcam`: their product.

Each returns a :class:`ClassMap` (plain arrays); :func:`class_map` picks a method by name. How
each map is computed is in :mod:`.methods`. Results are cached per session (a handful, dropped
when the session's image or model changes).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...errors import check_choice
from ..defaults import gradcam_layer
from ..targets import classes_label, resolve_classes
from .methods import METHODS, GuidedGradCAM, MethodOutput

__all__ = ["ClassMap", "class_map", "class_projection", "compute_map", "gradcam",
           "guided_gradcam", "saliency", "target_classes"]

_CACHE_SIZE = 16
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class ClassMap:
    """One class map of one image.

    Attributes
    ----------
    map : numpy.ndarray
        ``[H, W]`` float32, never negative, at the model's input resolution: what to draw and
        rank (larger = more important to the class score).
    method : str
        ``"saliency"``, ``"guided"``, ``"deconvnet"``, ``"gradcam"`` or ``"guided_gradcam"``.
    target : tuple of int
        The class ids whose logits were summed into the class score.
    label : str
        Their names (``"tabby + tiger cat"``).
    layer : str or None
        The layer of a CAM (``None`` for the input-space methods).
    score : float
        The class score (summed logits) on the image.
    raw : numpy.ndarray
        ``[H, W]`` float32 signed map: the input-space methods' gradient on the colour channel
        where its magnitude is largest (``map == abs(raw)``); for a CAM the weighted sum of
        the maps before the ReLU, upsampled.
    projection : numpy.ndarray or None
        ``[3, H, W]`` float32 colour projection (input-space methods and guided Grad-CAM), in
        the model's input space: :func:`zfwidgets.projection_to_rgb` makes it an image.
    low : numpy.ndarray or None
        ``[h, w]`` float32 the CAM at the layer's resolution (after the ReLU).
    """

    map: np.ndarray
    method: str
    target: tuple[int, ...]
    label: str
    layer: str | None
    score: float
    raw: np.ndarray = field(repr=False)
    projection: np.ndarray | None = field(default=None, repr=False)
    low: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.map.shape


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().cpu().numpy()


def compute_map(model: nn.Module, x: torch.Tensor, method: str, classes: Sequence[int], *,
                layer: str | None = None, label: str = "",
                known: Sequence[str] | None = None) -> ClassMap:
    """A class map of any classifier and input (no session: the sanity check's copies).

    Parameters
    ----------
    model : nn.Module
        Returns logits ``[1, classes]``; left as it was.
    x : torch.Tensor
        ``[1, 3, H, W]`` normalized input.
    method : str
        A key of :data:`~.methods.METHODS`.
    classes : sequence of int
        Target classes (logits summed).
    layer : str, optional
        The CAM layer (needed by ``gradcam`` and ``guided_gradcam``; ignored otherwise).
    label : str
        The classes' names, for the result.
    known : sequence of str, optional
        Valid layer ids, for error messages.

    Returns
    -------
    ClassMap
    """
    impl = METHODS[check_choice("method", method, tuple(METHODS))]
    layer = layer if impl.uses_layer else None
    out = impl.run(model, x, tuple(int(c) for c in classes), layer, known)
    return _result(out, method, classes, label, layer)


def _result(out: MethodOutput, method, classes, label, layer) -> ClassMap:
    return ClassMap(map=_numpy(out.map), method=method, target=tuple(int(c) for c in classes),
                    label=label, layer=layer, score=out.score, raw=_numpy(out.raw),
                    projection=_numpy(out.projection), low=_numpy(out.low))


def target_classes(session, target=None) -> tuple[int, ...]:
    """The class ids of ``target`` (see :func:`~zfwidgets.backend.targets.resolve_classes`);
    ``None`` is the session's top class."""
    classes = resolve_classes(session, target)
    return classes if classes is not None else (int(session.logits.argmax()),)


def class_map(session, method: str, target=None, layer: str | None = None) -> ClassMap:
    """The class map ``method`` of the session's image (cached per session).

    Parameters
    ----------
    session : Session
    method : {"saliency", "guided", "deconvnet", "gradcam", "guided_gradcam"}
    target : int, str or sequence of them, optional
        Class id, label, or several (their logits summed); default the top class.
    layer : str, optional
        The CAM layer; default :func:`~zfwidgets.backend.defaults.gradcam_layer`. Ignored by
        the input-space methods.

    Returns
    -------
    ClassMap

    Raises
    ------
    BadParameterError
        Unknown method.
    UnknownClassError, OutOfRangeError
        A target the model does not have.
    UnknownLayerError
        ``layer`` is not one of the session's layers.
    UnsupportedModelError
        ``guided`` / ``deconvnet`` / ``guided_gradcam`` through a non-rectifier (SiLU ...).
    """
    impl = METHODS[check_choice("method", method, tuple(METHODS))]
    classes = target_classes(session, target)
    if impl.uses_layer:
        layer = gradcam_layer(session) if layer is None else layer
        session.layer_info(layer)                      # UnknownLayerError with suggestions
    else:
        layer = None
    out = _output(session, method, classes, layer)
    return _result(out, method, classes, classes_label(session, classes), layer)


def _output(session, method: str, classes: tuple[int, ...], layer: str | None) -> MethodOutput:
    """A method's tensors for the session's image, memoized (guided Grad-CAM reuses the
    guided and Grad-CAM passes of the same class)."""
    key = (session.version, session.image_key, method, classes, layer)
    memo = _cache.setdefault(session, OrderedDict())
    if key not in memo:
        if method == "guided_gradcam":
            out = GuidedGradCAM.combine(_output(session, "guided", classes, None),
                                        _output(session, "gradcam", classes, layer))
        else:
            out = METHODS[method].run(session.model, session.input_tensor, classes, layer,
                                      session.layers)
        memo[key] = out
        while len(memo) > _CACHE_SIZE:
            memo.popitem(last=False)
    memo.move_to_end(key)
    return memo[key]


def saliency(session, target=None) -> ClassMap:
    """Gradient saliency of a class (Simonyan et al. 2014): ``max_c |d score / d x_c|``.

    Parameters
    ----------
    session : Session
    target : int, str or sequence of them, optional
        Class id, label, or several (their logits summed); default the top class.

    Returns
    -------
    ClassMap
        ``map`` is the magnitude of the input gradient of the class logit, the largest over
        the colour channels; ``projection`` the gradient itself.
    """
    return class_map(session, "saliency", target)


def class_projection(session, target=None, rule: str = "guided") -> ClassMap:
    """The guided backprop or deconvnet projection of a class score to the input.

    The class logit goes down through the same backward rules as the unit projections
    (:mod:`zfwidgets.backend.rules`), instead of one feature map.

    Parameters
    ----------
    session : Session
    target : int, str or sequence of them, optional
        Class id, label, or several (their logits summed); default the top class.
    rule : {"guided", "deconvnet", "gradient"}
        ``"gradient"`` is :func:`saliency`.

    Returns
    -------
    ClassMap
        ``projection`` is the colour projection, ``map`` its magnitude.
    """
    method = {"guided": "guided", "deconvnet": "deconvnet", "gradient": "saliency"}[
        check_choice("rule", rule, ("guided", "deconvnet", "gradient"))]
    return class_map(session, method, target)


def gradcam(session, target=None, layer: str | None = None) -> ClassMap:
    """Grad-CAM of a class (Selvaraju et al. 2017).

    The gradient of the class logit at ``layer``'s maps, averaged over positions, weights the
    maps; the ReLU of the weighted sum is upsampled bilinearly to the input size.

    Parameters
    ----------
    session : Session
    target : int, str or sequence of them, optional
        Class id, label, or several (their logits summed); default the top class.
    layer : str, optional
        Default :func:`~zfwidgets.backend.defaults.gradcam_layer` (the last layer whose maps
        are larger than 1x1).

    Returns
    -------
    ClassMap
        ``low`` holds the map at the layer's resolution.
    """
    return class_map(session, "gradcam", target, layer)


def guided_gradcam(session, target=None, layer: str | None = None) -> ClassMap:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the Grad-CAM map.

    Parameters
    ----------
    session : Session
    target : int, str or sequence of them, optional
        Class id, label, or several (their logits summed); default the top class.
    layer : str, optional
        The Grad-CAM layer (default as :func:`gradcam`).

    Returns
    -------
    ClassMap
    """
    return class_map(session, "guided_gradcam", target, layer)
