"""How each class map is computed: one backward pass of the class score, then a combination.

Every method starts the same way (:func:`class_backward`): the model runs forward on the image
under a backward rule (:class:`~zfwidgets.backend.rules.RuleMode`), the *class score* (the
logit of the target class; the sum of the logits for several classes) goes down, and the
gradient arrives at the input and, for the CAM family, at one layer's maps. A method supplies
only what varies:

==================  ==========  ================================================================
method              rule        from the backward pass to the map
==================  ==========  ================================================================
``saliency``        gradient    ``max_c |d score / d x_c|`` (Simonyan et al. 2014)
``guided``          guided      the same over guided backprop (Springenberg et al. 2015)
``deconvnet``       deconvnet   the same over the deconvnet (Zeiler & Fergus 2014)
``gradcam``         gradient    ``ReLU(sum_k w_k A_k)``, ``w_k`` = mean over positions of
                                ``d score / d A_k`` (Selvaraju et al. 2017), upsampled bilinearly
``guided_gradcam``  both        guided backprop times the Grad-CAM map
==================  ==========  ================================================================

The input-space methods subclass :class:`InputMethod` and name their rule; a CAM variant
subclasses :class:`CAM` and writes :meth:`CAM.weights` (Grad-CAM's is one line), the one
override point, as in pytorch-grad-cam's ``BaseCAM.get_cam_weights``.

Everything here works on a module and a normalized input tensor; :mod:`.maps` adds what a
Session knows (targets by label, the default layer, the result dataclass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import BadParameterError, UnknownLayerError
from ..layers import capture, scoped_eval
from ..occlusion.sweep import class_logits
from ..rules import RuleMode
from ..small_work import small_work_threads

__all__ = ["CAM", "METHODS", "Backward", "Deconvnet", "GradCAM", "GuidedBackprop",
           "GuidedGradCAM", "InputMethod", "Method", "MethodOutput", "Saliency",
           "class_backward", "upsample"]


@dataclass(frozen=True)
class Backward:
    """What one backward pass of the class score gives (batch of one image).

    Attributes
    ----------
    score : float
        The class score (the sum of the target classes' logits).
    input_grad : torch.Tensor
        ``[3, H, W]`` its gradient (under the pass's rule) at the input.
    acts : torch.Tensor or None
        ``[C, h, w]`` the layer's output, when a layer was asked for.
    act_grad : torch.Tensor or None
        ``[C, h, w]`` the gradient of the score at that output.
    """

    score: float
    input_grad: torch.Tensor
    acts: torch.Tensor | None = None
    act_grad: torch.Tensor | None = None


@dataclass(frozen=True)
class MethodOutput:
    """A method's maps at input resolution, as tensors.

    Attributes
    ----------
    raw : torch.Tensor
        ``[H, W]`` the signed map (input-space methods: the gradient's value on the colour
        channel where its magnitude is largest; CAMs: the weighted sum before the ReLU).
    map : torch.Tensor
        ``[H, W]`` the map shown: ``|raw|`` for input-space methods, ``ReLU`` of the weighted
        sum (then upsampled) for CAMs; never negative.
    projection : torch.Tensor or None
        ``[3, H, W]`` the colour projection of input-space methods.
    low : torch.Tensor or None
        ``[h, w]`` a CAM at the layer's resolution (after the ReLU).
    score : float
        The class score.
    """

    raw: torch.Tensor
    map: torch.Tensor
    projection: torch.Tensor | None
    low: torch.Tensor | None
    score: float


def class_backward(model: nn.Module, x: torch.Tensor, classes: Sequence[int],
                   rule: str = "gradient", layer: str | None = None,
                   known: Sequence[str] | None = None) -> Backward:
    """Forward ``x`` under ``rule``, then the gradient of the class score (one pass).

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``[1, classes]``; run in eval mode, left as it was (its
        parameters get no ``.grad``).
    x : torch.Tensor
        ``[1, 3, H, W]`` normalized input.
    classes : sequence of int
        Target classes; their logits are summed.
    rule : {"gradient", "guided", "deconvnet"}
        Backward rule at the rectifiers.
    layer : str, optional
        Also return this layer's output and the score's gradient there. The output is handed
        on as a copy, so an in-place op after the layer cannot alter what is returned.
    known : sequence of str, optional
        Valid layer ids, for error messages.

    Returns
    -------
    Backward
    """
    x = x.detach().clone().requires_grad_(True)
    seen: dict[str, torch.Tensor] = {}

    def keep(name, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            seen[name] = out
            return out.clone()
        return None

    hooks = capture(model, [layer], keep, known=known, replace=True) if layer \
        else contextlib.nullcontext()
    # the thread count that suits this model's passes over one image (..small_work)
    with small_work_threads(model, x), torch.enable_grad():
        with scoped_eval(model), RuleMode(rule), hooks:
            logits = class_logits(model(x))
        if layer and layer not in seen:
            raise UnknownLayerError(layer, list(known or []))
        n = logits.shape[1]
        if any(not 0 <= c < n for c in classes):
            raise BadParameterError(f"target classes {list(classes)} are not all among the "
                                    f"model's {n} classes")
        score = logits[0, list(classes)].sum()
        value = float(score.detach())
        wrt = [x] + ([seen[layer]] if layer else [])
        grads = torch.autograd.grad(score, wrt, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
    if layer:
        return Backward(value, grads[0][0].detach(), seen[layer][0].detach(),
                        grads[1][0].detach())
    return Backward(value, grads[0][0].detach())


def upsample(low: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[h, w]`` -> ``[H, W]`` bilinearly (half-pixel centres, ``align_corners=False``)."""
    return F.interpolate(low[None, None].float(), size=tuple(int(s) for s in size),
                         mode="bilinear", align_corners=False)[0, 0]


def _signed_max(g: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` -> ``[H, W]``: each pixel's value on the channel of largest magnitude."""
    pick = g.abs().argmax(0, keepdim=True)
    return g.gather(0, pick)[0]


class Method:
    """A class map. Subclasses set :attr:`name` and implement :meth:`run`."""

    #: method name, as :data:`METHODS` knows it
    name = ""
    #: whether the method reads a layer's maps
    uses_layer = False

    def run(self, model: nn.Module, x: torch.Tensor, classes: Sequence[int],
            layer: str | None = None, known: Sequence[str] | None = None) -> MethodOutput:
        """The map of the class score of ``classes`` for input ``x`` (see
        :func:`class_backward` for the parameters)."""
        raise NotImplementedError


class InputMethod(Method):
    """A projection of the class score to the input under :attr:`rule`; the map is its
    magnitude, the largest over the colour channels."""

    #: backward rule at the rectifiers
    rule = "gradient"

    def run(self, model, x, classes, layer=None, known=None) -> MethodOutput:
        back = class_backward(model, x, classes, self.rule, None, known)
        raw = _signed_max(back.input_grad)
        return MethodOutput(raw, raw.abs(), back.input_grad, None, back.score)


class Saliency(InputMethod):
    """Gradient saliency (Simonyan et al. 2014): the input gradient of the class score."""

    name = "saliency"
    rule = "gradient"


class GuidedBackprop(InputMethod):
    """Guided backpropagation of the class score (Springenberg et al. 2015)."""

    name = "guided"
    rule = "guided"


class Deconvnet(InputMethod):
    """The deconvnet projection of the class score (Zeiler & Fergus 2014)."""

    name = "deconvnet"
    rule = "deconvnet"


class CAM(Method):
    """A class activation map: ``ReLU(sum_k w_k A_k)`` over a layer's maps ``A_k``,
    upsampled bilinearly to the input. A variant writes :meth:`weights` only."""

    uses_layer = True

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``[C]`` weights of the maps, from the layer's output and the score's gradient
        there (both ``[C, h, w]``)."""
        raise NotImplementedError

    def run(self, model, x, classes, layer=None, known=None) -> MethodOutput:
        if not layer:
            raise BadParameterError(f"{self.name} needs a layer")
        back = class_backward(model, x, classes, "gradient", layer, known)
        w = self.weights(back.acts, back.act_grad)
        weighted = (w[:, None, None] * back.acts).sum(0)
        size = x.shape[-2:]
        low = weighted.clamp(min=0)
        return MethodOutput(upsample(weighted, size), upsample(low, size), None, low,
                            back.score)


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017): each map weighted by its mean gradient."""

    name = "gradcam"

    def weights(self, acts, grads):
        return grads.mean(dim=(1, 2))


class GuidedGradCAM(Method):
    """Guided Grad-CAM (Selvaraju et al. 2017): the guided backprop projection times the
    Grad-CAM map, pixel by pixel."""

    name = "guided_gradcam"
    uses_layer = True

    def run(self, model, x, classes, layer=None, known=None) -> MethodOutput:
        guided = METHODS["guided"].run(model, x, classes, None, known)
        cam = METHODS["gradcam"].run(model, x, classes, layer, known)
        return self.combine(guided, cam)

    @staticmethod
    def combine(guided: MethodOutput, cam: MethodOutput) -> MethodOutput:
        """The product of a guided backprop and a Grad-CAM output of the same class."""
        projection = guided.projection * cam.map[None]
        raw = _signed_max(projection)
        return MethodOutput(raw, raw.abs(), projection, cam.low, guided.score)


#: The class-map methods by name, in the order views show them.
METHODS: dict[str, Method] = {m.name: m for m in (Saliency(), GuidedBackprop(), Deconvnet(),
                                                  GradCAM(), GuidedGradCAM())}
