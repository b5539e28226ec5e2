"""Feature invariance (the paper's Fig. 5): how layer features and the prediction change as an
image is translated, scaled or rotated.

For each amount of a transformation, the transformed image is run through the model once and we
record, per layer, the Euclidean distance between its feature vector (the layer's whole output,
flattened) and the untransformed image's, and the probability of the target class. The paper's
finding: small transformations change the first layer's features a lot and the top layers'
much less; the classifier is fairly stable under translation and scaling but not under rotation,
except for objects with rotational symmetry.

Transformations act on the preprocessed input tensor, around its centre, with bilinear sampling;
pixels brought in from outside the image take the value 0 in normalized space (the model's mean
colour, the same gray as the occluder of :mod:`zfwidgets.backend.occlusion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import BadParameterError, OutOfRangeError, check_choice
from ...models import class_name
from ..defaults import invariance_layers
from ...models.registry import pick_logits
from ..layers import layouts_of, run_captured, scoped_eval

__all__ = ["KINDS", "InvarianceResult", "default_amounts", "invariance", "transform"]

#: Transformations and the unit of their amount.
KINDS = {"translation": "pixels (vertical shift, positive = down)",
         "scale": "zoom factor (1 = unchanged)",
         "rotation": "degrees (counter-clockwise)"}



@dataclass
class InvarianceResult:
    """Curves of one transformation sweep.

    Attributes
    ----------
    kind : {"translation", "scale", "rotation"}
    amounts : numpy.ndarray
        ``[T]`` transformation amounts (see :data:`KINDS` for the units).
    layers : list of str
        Layer ids, in the order given.
    distance : dict of str to numpy.ndarray
        Layer id -> ``[T]`` Euclidean distance between the layer's flattened output for the
        transformed image and for the untransformed one.
    reference_norm : dict of str to float
        Layer id -> norm of the untransformed image's feature vector (``relative`` divides by it).
    prob : numpy.ndarray
        ``[T]`` probability of ``target``.
    target : int
        Class followed; by default the untransformed image's top class.
    target_label : str
    top_class : numpy.ndarray
        ``[T]`` most probable class per amount.
    labels : list of str or None
        Class names of the model (for ``top_class``).
    images : numpy.ndarray
        ``[T, H, W, 3]`` the transformed inputs, as displayable RGB in ``[0, 1]``.
    """

    kind: str
    amounts: np.ndarray
    layers: list[str]
    distance: dict[str, np.ndarray]
    reference_norm: dict[str, float]
    prob: np.ndarray
    target: int
    target_label: str
    top_class: np.ndarray
    labels: list[str] | None = None
    images: np.ndarray | None = field(default=None, repr=False)

    def relative(self, layer: str) -> np.ndarray:
        """Distance of ``layer`` divided by the norm of the untransformed feature vector, so
        that layers of different sizes can be compared (0 = unchanged)."""
        return self.distance[layer] / max(self.reference_norm[layer], 1e-12)

    def label(self, class_id: int) -> str:
        """Name of class ``class_id`` (``"class N"`` when the model has no labels)."""
        return class_name(self.labels, class_id)


def default_amounts(kind: str) -> np.ndarray:
    """The sweep used when none is given: vertical shifts -60..60 px in steps of 10, zoom
    0.6..1.8 in steps of 0.1, rotations 0..350 degrees in steps of 10 (the paper's ranges)."""
    _check_kind(kind)
    if kind == "translation":
        return np.arange(-60, 61, 10, dtype=np.float64)
    if kind == "scale":
        return np.round(np.arange(0.6, 1.8001, 0.1), 2)
    return np.arange(0, 360, 10, dtype=np.float64)


def _check_kind(kind: str) -> str:
    return check_choice("transformation", kind, KINDS)


def transform(x: torch.Tensor, kind: str, amounts: Sequence[float]) -> torch.Tensor:
    """The transformed copies of one input.

    Parameters
    ----------
    x : torch.Tensor
        ``[1, C, H, W]`` normalized input.
    kind : {"translation", "scale", "rotation"}
    amounts : sequence of float
        Vertical shift in pixels (positive moves the content down), zoom factor (> 0; 2 shows
        the centre half at twice the size), or counter-clockwise rotation in degrees.

    Returns
    -------
    torch.Tensor
        ``[T, C, H, W]``; pixels from outside the image are 0 (the mean colour).
    """
    _check_kind(kind)
    if x.dim() != 4 or x.shape[0] != 1:
        raise BadParameterError(f"transform expects one input [1, C, H, W], got {list(x.shape)}")
    a = torch.as_tensor(np.asarray(amounts, dtype=np.float64))
    if a.dim() != 1 or a.numel() == 0:
        raise BadParameterError("amounts must be a non-empty 1-d sequence of numbers")
    if not torch.isfinite(a).all():
        raise BadParameterError("amounts must be finite numbers")
    _, _, H, W = x.shape
    T = a.numel()
    theta = torch.zeros(T, 2, 3, dtype=torch.float64)
    # affine_grid maps output coordinates (in [-1, 1], align_corners=False) to input ones.
    if kind == "translation":
        theta[:, 0, 0] = 1
        theta[:, 1, 1] = 1
        theta[:, 1, 2] = -2 * a / H        # content moves down by a pixels
    elif kind == "scale":
        if (a <= 0).any():
            raise BadParameterError(f"zoom factors must be positive, got {a.min().item():g}")
        theta[:, 0, 0] = 1 / a
        theta[:, 1, 1] = 1 / a
    else:
        r = torch.deg2rad(a)
        c, s = torch.cos(r), torch.sin(r)
        # Rotation in pixel space (square pixels), expressed in normalized coordinates. Image
        # rows grow downwards, so a counter-clockwise turn on screen is a clockwise one in
        # (x, y) with y down.
        theta[:, 0, 0] = c
        theta[:, 0, 1] = -s * H / W
        theta[:, 1, 0] = s * W / H
        theta[:, 1, 1] = c
    grid = F.affine_grid(theta.to(x.dtype), [T, x.shape[1], H, W], align_corners=False)
    return F.grid_sample(x.expand(T, -1, -1, -1), grid.to(x.device), mode="bilinear",
                         padding_mode="zeros", align_corners=False)


def invariance(session, kind: str = "translation", amounts: Sequence[float] | None = None,
               layers: Sequence[str] | None = None, target: int | None = None, *,
               batch_size: int = 8, keep_images: bool = True) -> InvarianceResult:
    """Sweep one transformation over the session's image (the paper's Fig. 5).

    Parameters
    ----------
    session : Session
    kind : {"translation", "scale", "rotation"}
    amounts : sequence of float, optional
        Default :func:`default_amounts`. Include the identity (0, 1 or 0) to see the curve
        start at zero.
    layers : sequence of str, optional
        Default :func:`~zfwidgets.backend.defaults.invariance_layers` (first rectified layer and top feature layer).
    target : int, optional
        Class whose probability is followed; default the untransformed image's top class.
    batch_size : int
        Transformed images per forward pass.
    keep_images : bool
        Keep the transformed inputs as displayable RGB (``result.images``).

    Returns
    -------
    InvarianceResult

    Raises
    ------
    BadParameterError
        Unknown ``kind``, empty or non-finite ``amounts``, a non-positive zoom or batch size.
    UnknownLayerError
        A layer id the model does not have.
    OutOfRangeError
        ``target`` outside the model's classes.
    """
    _check_kind(kind)
    amounts = default_amounts(kind) if amounts is None else np.asarray(amounts, np.float64)
    layers = invariance_layers(session) if layers is None else list(dict.fromkeys(layers))
    for layer in layers:
        session.layer_info(layer)  # UnknownLayerError with suggestions
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise BadParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    probs0 = session.probabilities()
    target = int(probs0.argmax()) if target is None else int(target)
    if not 0 <= target < probs0.numel():
        raise OutOfRangeError(f"target class {target} is out of range: the model has "
                              f"{probs0.numel()} classes (0..{probs0.numel() - 1})")
    x = session.input_tensor
    model = session.model
    reference = {layer: session.activation(layer).flatten().double() for layer in layers}

    dist = {layer: [] for layer in layers}
    probs, tops, shown = [], [], []
    batches = transform(x, kind, amounts).split(batch_size)
    for batch in batches:
        feats: dict[str, torch.Tensor] = {}

        def on_output(layer, out):
            feats[layer] = out.detach().flatten(1).double()

        with torch.inference_mode(), scoped_eval(model):
            out = run_captured(model, batch, layers, on_output, known=session.layers, stop=False,
                               layouts=layouts_of(session, layers))
        logits = pick_logits(out, session.entry.output)
        p = torch.softmax(logits.float(), 1)
        probs.append(p[:, target].cpu())
        tops.append(p.argmax(1).cpu())
        for layer in layers:
            dist[layer].append((feats[layer] - reference[layer].to(feats[layer].device))
                               .norm(dim=1).cpu())
        if keep_images:
            shown.append(_to_rgb(session, batch))
    return InvarianceResult(
        kind=kind, amounts=amounts, layers=layers,
        distance={layer: torch.cat(v).numpy() for layer, v in dist.items()},
        reference_norm={layer: float(reference[layer].norm()) for layer in layers},
        prob=torch.cat(probs).numpy(), target=target, target_label=session.label(target),
        top_class=torch.cat(tops).numpy(), labels=session.labels,
        images=np.concatenate(shown) if keep_images else None)


def _to_rgb(session, batch: torch.Tensor) -> np.ndarray:
    """Normalized inputs back to displayable RGB ``[N, H, W, 3]`` in ``[0, 1]``."""
    rgb = session.preprocessing.to_rgb(batch)
    return rgb.permute(0, 2, 3, 1).cpu().numpy()
