"""Projections of activations back to pixel space (the paper's Section 2.1), batched.

A projection starts from one activation (or one whole feature map) of a layer, with every other
activation of that layer set to zero, and carries it down to the input with a backward rule
(see :mod:`zfwidgets.backend.rules`). :func:`gallery` projects the top hits of a mined feature
map and cuts them, with the image patches, to their receptive fields (the paper's Fig. 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageSource
from ..errors import BadImageError, BadParameterError, DataError
from .small_work import small_work_threads
from .layers import Geometry, Layout, forward_to, model_dtype, receptive_field_box
from .mining.results import LayerTopK, MiningResult
from .rfcrop import CropAudit, CropPlan, crop_plan, cut_crops, paste_crops
from .rules import RuleMode, check_rule

__all__ = ["Gallery", "ProjectionCrop", "Target", "gallery", "normalisation_text", "project",
           "projection_crop", "projection_to_rgb", "saturation_note"]


class Target(NamedTuple):
    """What to project: ``channel`` of input ``index``; one unit ``(y, x)`` or the whole map."""

    index: int
    channel: int
    y: int | None = None
    x: int | None = None


def _signal(acts: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Backward signal ``[N, C, h, w]``: zero except the target unit / map of each row.

    A whole map is sent down with its own activation values. A single unit is sent down with
    its activation value when that is positive, else with 1 (so that a silent unit still shows
    what it responds to).
    """
    sig = torch.zeros_like(acts)
    for n, t in enumerate(targets):
        if t.y is None:
            sig[n, t.channel] = acts[n, t.channel]
        else:
            v = acts[n, t.channel, t.y, t.x]
            sig[n, t.channel, t.y, t.x] = v if v > 0 else 1.0
    return sig


def project(model: nn.Module, inputs: torch.Tensor, layer: str, targets: Sequence[Target],
            rule: str = "deconvnet", *, batch_size: int = 16, known: list[str] | None = None,
            geometry: Geometry | None = None, crop: bool | None = None,
            reference: torch.Tensor | None = None, layout: Layout | None = None) -> torch.Tensor:
    """Project activations of ``layer`` to input space, batched.

    With the layer's receptive-field ``geometry``, single units are projected on crops of the
    input that hold their receptive fields (:mod:`zfwidgets.backend.rfcrop`): all the crops of a
    batch go forward and backward together, each with its own unit, and the result equals the
    whole-image projection (the crops keep the strides' phase and the network's own padding at
    the image borders; a network doing anything non-local before ``layer`` falls back to the
    whole image). Without it (or for whole maps), each distinct image is run forward once (up to
    ``layer`` only) and the targets are arranged in *rounds* holding at most one target per
    image, each round going down in one backward pass over the retained graph.

    Parameters
    ----------
    model : nn.Module
        The network; left exactly as it was (no hooks, same flags).
    inputs : torch.Tensor
        Preprocessed images ``[B, 3, H, W]``.
    layer : str
        Layer id.
    targets : sequence of Target
        One row per projection; ``index`` picks the image in ``inputs``.
    rule : {"deconvnet", "guided", "gradient"}
    batch_size : int
        At most this many targets are projected per forward/backward pass (bounds memory).
    known : list of str, optional
        Valid layer ids, for error messages.
    geometry : Geometry, optional
        The layer's receptive-field geometry (``LayerInfo.geometry``); needed for crops.
    crop : bool or None
        ``None`` (default): crop when that is cheaper than the whole image (a crop's area
        times three passes against one forward per image and one backward per target);
        ``True``: crop whenever the geometry allows it; ``False``: always the whole image.
    reference : torch.Tensor, optional
        The layer's activations ``[B, C, h, w]`` for ``inputs`` when already known: each crop's
        forward is checked against them at its unit (all channels) and a unit that differs is
        projected on the whole image instead.
    layout : Layout, optional
        The layer's :attr:`~zfwidgets.backend.layers.LayerInfo.layout` (a token or
        channels-last layer); the signal is built in map space (:func:`~.layers.as_maps`).

    Returns
    -------
    torch.Tensor
        ``[N, C, H, W]`` projections, in input (normalized) space, one per target (zero
        outside the unit's receptive field when it was computed on a crop).

    Notes
    -----
    Where OpenMP threads are passive each pass runs on the thread count measured to suit the
    model and the pass's batch (:func:`~zfwidgets.backend.small_work.small_work_threads`: one
    thread for one crop of a model of many small operations, where each wake-up of a sleeping
    thread costs more than it gives; every thread for a gallery's nine).
    """
    check_rule(rule)
    targets = [Target(*t) for t in targets]
    out = []
    for start in range(0, len(targets), batch_size):
        out.append(_project_chunk(model, inputs, layer, targets[start:start + batch_size],
                                  rule, known, geometry, crop, reference, layout))
    if not out:
        return inputs.new_zeros((0,) + tuple(inputs.shape[1:]))
    return torch.cat(out)


def _project_chunk(model, inputs, layer, targets, rule, known, geometry, crop, reference,
                   layout):
    """One batch of targets: units on crops where that is exact and pays, the rest whole."""
    units = [n for n, t in enumerate(targets) if t.y is not None]
    done: dict[int, torch.Tensor] = {}
    groups = [] if crop is False or not units else _crop_groups(
        geometry, targets, units, inputs.shape[-2:], inputs.device)
    if groups and (crop or _crop_pays(groups, [targets[n] for n in units])):
        for members, plan in groups:
            got = _project_crops(model, inputs, layer, [targets[n] for n in members], rule,
                                 known, plan, reference, layout)
            if got is not None:
                grads, ok = got
                done.update((n, g) for n, g, good in zip(members, grads, ok) if good)
    rest = [n for n in range(len(targets)) if n not in done]
    if rest:
        done.update(zip(rest, _project_whole(model, inputs, layer, [targets[n] for n in rest],
                                             rule, known, layout)))
    return torch.stack([done[n] for n in range(len(targets))])


#: the fixed cost of one crop pass (its forward and backward, whatever its batch: the rules'
#: dispatch, the hooks, the small ops), as a fraction of the work of one whole image. Measured on
#: the 2-core CPU for a gallery's 9 units of a middle layer: EfficientNet-Lite0, one unit on a
#: 154 px crop 21 ms, nine on 160 px crops in one batch 97-123 ms (8 batches by crop size:
#: 162-180 ms); AlexNet one batch 34-36 ms, 6 batches 41-43 ms (bench/results/projection.md).
PASS_COST = 0.4


def _crop_groups(geometry, targets, units, size, device) -> list[tuple[list[int], CropPlan]]:
    """The units' crops, batched: one batch of one size (the largest any unit needs), or on a
    CPU, where a batch costs about the sum of its crops, the units of equal crop size together
    (each at its own smallest crop) when that costs less, counting :data:`PASS_COST` of a whole
    image for each pass."""
    H, W = (int(v) for v in size)
    common = crop_plan(geometry, [(targets[n].y, targets[n].x) for n in units], H, W)
    if common is None:
        return []
    if device.type != "cpu":
        return [(list(units), common)]
    by_size: dict[tuple[int, int], list[int]] = {}
    for n in units:
        plan = crop_plan(geometry, [(targets[n].y, targets[n].x)], H, W)
        if plan is None:
            return []
        by_size.setdefault(plan.size, []).append(n)
    grouped = sum(PASS_COST + len(members) * (h * w) / (H * W)
                  for (h, w), members in by_size.items())
    if PASS_COST + len(units) * common.area_ratio <= grouped:
        return [(list(units), common)]
    return [(members, crop_plan(geometry, [(targets[n].y, targets[n].x) for n in members], H, W))
            for members in by_size.values()]


def _crop_pays(groups, targets: Sequence[Target]) -> bool:
    """Whether crops beat the whole image: a forward and a backward on each crop, against one
    forward per image and one backward per target on whole images (a backward to the input
    measured about as long as the forward: bench/results/projection.md); work in proportion
    to the pixels."""
    images = len({t.index for t in targets})
    crops = sum(len(members) * plan.area_ratio for members, plan in groups)
    return 2 * crops <= 0.9 * (images + len(targets))


def _project_crops(model, inputs, layer, targets, rule, known, plan: CropPlan, reference,
                   layout):
    """Projections of single units on their crops, ``([N, 3, H, W], ok)``; ``None`` when the
    network does something on the way that a crop would not reproduce."""
    x = cut_crops(inputs.detach(), [t.index for t in targets], plan).to(
        dtype=model_dtype(model)).requires_grad_(True)
    audit = CropAudit(x)
    # the count that suits this model and this batch of crops (.small_work)
    with small_work_threads(model, x), torch.enable_grad():
        try:
            with RuleMode(rule), audit:
                acts = forward_to(model, x, layer, known, layout)
        except (RuntimeError, ValueError):  # the model needs its full input size
            return None
        h, w = acts.shape[-2:]
        if not (audit.safe and audit.derived(acts)) or \
                any(not (0 <= y < h and 0 <= x_ < w) for y, x_ in plan.units):
            return None
        a = acts.detach()
        sig = torch.zeros_like(a)
        ok = []
        for n, (t, (y, x_)) in enumerate(zip(targets, plan.units)):
            v = a[n, t.channel, y, x_]
            sig[n, t.channel, y, x_] = v if v > 0 else 1.0
            ok.append(reference is None or _matches(a[n, :, y, x_],
                                                    reference[t.index, :, t.y, t.x]))
        grad = _backward(acts, x, sig)
    return paste_crops(grad.detach(), plan), ok


def _backward(acts: torch.Tensor, x: torch.Tensor, signal: torch.Tensor,
              retain_graph: bool = False) -> torch.Tensor:
    """The backward pass of ``signal`` from ``acts`` to ``x``: the gradient of
    ``(acts * signal).sum()``, which is ``signal`` at ``acts`` exactly (``1 * signal``).

    Not ``torch.autograd.grad(acts, x, signal)``: a tensor ``grad_outputs`` makes torch import
    its symbolic-shape machinery (sympy) on first use, 0.5 s of the explorer's first paint.
    """
    return torch.autograd.grad((acts * signal).sum(), x, retain_graph=retain_graph)[0]


def _matches(got: torch.Tensor, want: torch.Tensor) -> bool:
    want = want.to(got.device, got.dtype)
    scale = float(want.abs().max()) if want.numel() else 0.0
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))


def _project_whole(model, inputs, layer, targets, rule, known, layout):
    """Projections on whole images: one forward per image, one backward per round."""
    images = sorted({t.index for t in targets})
    slot = {b: i for i, b in enumerate(images)}
    rounds: list[int] = []            # round of each target
    seen: dict[int, int] = {}
    for t in targets:
        rounds.append(seen.get(t.index, 0))
        seen[t.index] = rounds[-1] + 1
    n_rounds = max(rounds) + 1
    x = inputs[images].detach().to(dtype=model_dtype(model)).requires_grad_(True)
    # the count that suits this model and these images (.small_work)
    with small_work_threads(model, x), torch.enable_grad():
        with RuleMode(rule):
            acts = forward_to(model, x, layer, known, layout)
        a = acts.detach()
        sig = torch.zeros((n_rounds,) + tuple(a.shape), dtype=a.dtype, device=a.device)
        for t, r in zip(targets, rounds):
            sig[r, slot[t.index]] = _signal(a[slot[t.index]][None], [Target(0, t.channel, t.y, t.x)])[0]
        # One backward pass per round over the retained graph. (The signals cannot be summed
        # into one pass: the rules rectify the backward signal, which is not linear. A plain
        # loop measured faster than `is_grads_batched` on CPU: vmap loops and concatenates.)
        grads = torch.stack([
            _backward(acts, x, sig[r], retain_graph=r < n_rounds - 1) for r in range(n_rounds)])
    return torch.stack([grads[r, slot[t.index]] for t, r in zip(targets, rounds)]).detach()


def projection_to_rgb(projection: torch.Tensor | np.ndarray, scale=None) -> np.ndarray:
    """Turn a projection ``[3, H, W]`` (or ``[N, 3, H, W]``) into displayable RGB in [0, 1].

    Zero maps to mid-gray and ``+-scale`` to 1 / 0 in each colour channel (values beyond are
    clipped): the symmetric scaling of the paper's figures.

    Parameters
    ----------
    projection : torch.Tensor or numpy.ndarray
        One projection ``[3, H, W]`` or a batch ``[N, 3, H, W]`` in input (normalized) space,
        as returned by :func:`project` or :meth:`Session.project`.
    scale : float or sequence of float, optional
        The value that maps to full scale, one for all or one per projection of a batch;
        default each projection's own largest absolute value.

    Returns
    -------
    numpy.ndarray
        ``[H, W, 3]`` (or ``[N, H, W, 3]``) float32.
    """
    p = torch.as_tensor(projection).detach().float().cpu()
    single = p.dim() == 3
    if single:
        p = p[None]
    if p.shape[1] == 1:  # a gray model's projection, shown gray
        p = p.expand(-1, 3, -1, -1)
    if scale is None:
        s = p.abs().flatten(1).amax(1)
    else:
        s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).expand(p.shape[0])
    s = s.clamp(min=1e-12)[:, None, None, None]
    rgb = (0.5 + 0.5 * p / s).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return rgb[0] if single else rgb


# ============================================================================ receptive-field view

@dataclass
class ProjectionCrop:
    """A projection at the scale of its receptive field, beside the image patch (the paper's
    Fig. 2 shows projections this way), with the normalisation stated.

    Attributes
    ----------
    layer, rule : str
    channel : int
    position : (int, int) or None
        The unit; ``None`` for a whole map (then the box is the whole image).
    value : float
        The unit's activation (the map's largest for a whole map).
    box : (int, int, int, int)
        ``(top, left, bottom, right)`` in the model's input, bottom/right exclusive, clipped to
        the image (the receptive field).
    rf_size : (int, int) or None
        The receptive field's size before clipping.
    patch : numpy.ndarray
        ``[h, w, 3]`` float32 in [0, 1]: what the unit sees.
    projection : numpy.ndarray
        ``[3, h, w]`` float32: the projection cut to the box, in the model's input space (the
        projection of one unit is zero outside it).
    rgb : numpy.ndarray
        ``[h, w, 3]`` float32: ``projection`` as an image, with :attr:`scale`.
    scale : float
        The value shown at full scale: the largest absolute value of the crop (equal to the
        whole projection's for a unit). 0 for a blank projection.
    normalisation : str
        One line stating the colour scale, for a caption.
    note : str or None
        Why the projection is blank, when it is (:func:`saturation_note`).
    """

    layer: str
    channel: int
    position: tuple[int, int] | None
    rule: str
    value: float
    box: tuple[int, int, int, int]
    rf_size: tuple[int, int] | None
    patch: np.ndarray
    projection: np.ndarray
    rgb: np.ndarray
    scale: float
    normalisation: str
    note: str | None


def normalisation_text(scale: float) -> str:
    """The caption of a projection shown with :func:`projection_to_rgb` at ``scale``."""
    if scale <= 0:
        return "blank: every value is exactly 0"
    return (f"symmetric scale: 0 = mid-gray, +/-{scale:.3g} = full colour in each channel "
            "(the largest |value| of the projection, in the model's input units)")


def projection_crop(session, layer: str, channel: int, position: tuple[int, int] | None,
                    rule: str | None = None) -> ProjectionCrop:
    """The projection of one unit cut to its receptive field, beside the image patch.

    Parameters
    ----------
    session : Session
    layer : str
    channel : int
    position : (y, x) or None
        The unit; ``None`` projects the whole map (the box is then the whole image).
    rule : {"deconvnet", "guided", "gradient"}, optional
        Default :meth:`Session.default_rule` of the layer.

    Returns
    -------
    ProjectionCrop
    """
    rule = check_rule(rule or session.default_rule(layer))
    proj = session.project(layer, channel, position, rule)
    H, W = proj.shape[-2:]
    info = session.layer_info(layer)
    if position is None:
        box, value = (0, 0, int(H), int(W)), float(session.activation(layer)[channel].max())
        y = x = None
    else:
        y, x = (int(v) for v in position)
        box, value = session.receptive_field(layer, y, x), float(
            session.activation(layer)[channel, y, x])
    t, left, b, r = box
    crop = proj[:, t:b, left:r].detach().float().cpu().numpy()
    scale = float(np.abs(crop).max()) if crop.size else 0.0
    return ProjectionCrop(
        layer=layer, channel=int(channel), position=None if y is None else (y, x), rule=rule,
        value=value, box=tuple(int(v) for v in box), rf_size=info.rf_size,
        patch=np.ascontiguousarray(session.display_image[t:b, left:r]), projection=crop,
        rgb=projection_to_rgb(crop, scale=scale if scale > 0 else None), scale=scale,
        normalisation=normalisation_text(scale),
        note=saturation_note(session, layer, channel, y, x, rule, projection=proj))


def _rectifier_cap(module: nn.Module) -> tuple[bool, float | None]:
    """``(is a plain rectifier, upper bound)`` of a layer's module (ReLU6: ``(True, 6.0)``)."""
    if isinstance(module, nn.Hardtanh):  # ReLU6 is one
        return float(module.min_val) == 0.0, float(module.max_val)
    if isinstance(module, nn.ReLU):
        return True, None
    if isinstance(module, nn.Threshold):
        return float(module.threshold) == 0.0 and float(module.value) == 0.0, None
    return False, None


def saturation_note(session, layer: str, channel: int, y: int | None, x: int | None,
                    rule: str, projection: torch.Tensor | None = None) -> str | None:
    """Why the ``rule`` projection of a unit is blank, in one line, or ``None`` when it is not.

    A knocked-out map (:meth:`~zfwidgets.Session.set_knockouts`) is zero and passes nothing.
    A rectifier passes no gradient where it is flat: above ReLU6's cap (the unit is saturated
    at 6) and below 0 (the unit is dead). So the plain gradient of a saturated unit, and the
    gradient and guided backprop of a dead one, are exactly 0. Given the ``projection``, a
    blank one is also explained when the cause lies deeper: every path down meets a rectifier
    that stops the signal (flat there, or, for guided backprop and the deconvnet, which pass
    only positive signals, a negative one).

    Parameters
    ----------
    session : Session
    layer : str
    channel : int
    y, x : int or None
        The unit (``None``: a whole map, judged from ``projection`` only).
    rule : {"deconvnet", "guided", "gradient"}
    projection : torch.Tensor, optional
        The projection shown.
    """
    check_rule(rule)
    if int(channel) in session.knockouts.get(layer, ()):
        return (f"blank: map {channel} is knocked out (zero in every forward pass), so nothing "
                "flows back from it; bring it back to see its projection")
    if y is not None:
        value = float(session.activation(layer)[channel, int(y), int(x)])
        plain, cap = _rectifier_cap(session.layer_module(layer))
        kind = session.layer_info(layer).kind
        if plain and cap is not None and value >= cap and rule == "gradient":
            return (f"blank: the unit is saturated at {cap:g} ({kind}'s cap), so its gradient "
                    "is exactly 0; guided backprop and the deconvnet still show what drives it")
        if plain and value <= 0 and rule in ("gradient", "guided"):
            return (f"blank: the unit is dead here ({kind} outputs 0 for its input <= 0 and "
                    "passes no gradient); the deconvnet, which ignores that gate, still shows "
                    "what it responds to")
    if projection is not None and not bool(torch.as_tensor(projection).any()):
        blocks = {"gradient": "a rectifier flat there (a dead or saturated unit)",
                  "guided": "a dead unit or a negative signal",
                  "deconvnet": "a rectifier meeting a negative signal"}[rule]
        return (f"blank: on every path from this unit down to the image, {blocks} stops the "
                "signal, so the projection is exactly 0")
    return None


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
    pre_values : numpy.ndarray or None
        ``[n]`` the hits' pre-activations (a rectifier layer's input), which rank hits of equal
        value (many read 6.00 on a ReLU6 network); the values themselves for other layers.
    scales : numpy.ndarray or None
        ``[n]`` the largest absolute value of each projection crop: what
        ``projection_to_rgb(projections[j], scale=scales[j])`` shows at full colour (0 for a
        blank projection); :func:`normalisation_text` words it for a caption.
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
    pre_values: np.ndarray | None = None
    scales: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_ids)


def gallery(session, result: MiningResult | LayerTopK, layer: str | None = None,
            channel: int = 0, rule: str = "deconvnet", k: int | None = None,
            source: ImageSource | None = None) -> Gallery:
    """Patches and projections of the top hits of one feature map (the paper's Fig. 2).

    All projections are computed in one batched pass through
    :func:`zfwidgets.backend.project.project`, each on a crop of its image that holds the
    unit's receptive field (exactly the whole-image projection, cut to the box).

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
    top, source = _mined_layer(session, result, layer, source)
    layer = top.layer
    info = session.layer_info(layer)
    hits = top.hits(channel)[:k]
    h_in, w_in = session.preprocessing.size
    uniq = list(dict.fromkeys(img for _, img, _, _ in hits))
    views, proj = _project_hits(session, source, layer, int(channel), hits, uniq, rule)
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
                   views=np.stack(hit_views) if hit_views else np.zeros((0, h_in, w_in, 3), np.float32),
                   pre_values=np.array(top.pre_activations(channel)[:len(hits)], np.float32),
                   scales=np.array([float(np.abs(p).max()) if p.size else 0.0
                                    for p in projections], np.float32))


def _mined_layer(session, result: MiningResult | LayerTopK, layer: str | None,
                 source: ImageSource | None) -> tuple[LayerTopK, ImageSource]:
    """The mined layer a gallery shows and its data, checked against the session."""
    if isinstance(result, MiningResult):
        if layer is None:
            if len(result.layers) != 1:
                raise BadParameterError(f"name a layer: the result holds {list(result.layers)}")
            layer = next(iter(result.layers))
        top = result[layer]
        source = source or result.source
        result.check_session(session)
    else:
        top = result
        if (layer or top.layer) != top.layer:
            raise BadParameterError(f"the result is for layer {top.layer!r}, not {layer!r}")
    if source is None:
        raise DataError("the mined images are not available; pass source= (the data mined)")
    return top, source


def _project_hits(session, source: ImageSource, layer: str, channel: int, hits, uniq, rule):
    """The model's views of the hits' images ``[len(uniq), H, W, 3]`` and the projections of
    the hits ``[len(hits), 3, H, W]``, in one batched pass."""
    pre = session.preprocessing
    h_in, w_in = pre.size
    if not uniq:
        return np.zeros((0, h_in, w_in, 3), np.float32), torch.zeros(0, 3, h_in, w_in)
    tensors = []
    for img in uniq:
        try:
            tensors.append(pre(source.load(img))[0])
        except BadImageError as exc:
            raise DataError(f"image {img} ({source.name(img)}) of the mined data cannot be "
                            f"read any more: {exc}") from exc
    inputs = torch.stack(tensors).to(getattr(session, "device", torch.device("cpu")))
    targets = [Target(uniq.index(img), channel, y, x) for _, img, y, x in hits]
    proj = project(session.model, inputs, layer, targets, rule, known=session.layers,
                   geometry=session.layer_info(layer).geometry,
                   layout=session.layer_info(layer).layout)
    return pre.to_rgb(inputs).permute(0, 2, 3, 1).cpu().numpy(), proj
