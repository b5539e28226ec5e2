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
from .layers import Layout, forward_to, model_dtype, receptive_field_box
from .mining.results import LayerTopK, MiningResult
from .rules import RuleMode, check_rule

__all__ = ["Gallery", "Target", "gallery", "project", "projection_to_rgb"]


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
            layout: Layout | None = None) -> torch.Tensor:
    """Project activations of ``layer`` to input space, batched.

    Each distinct image is run forward once (up to ``layer`` only). The targets are then arranged
    in *rounds* holding at most one target per image, and each round goes down in one
    backward pass over the retained graph: 9 units of one image cost one forward and 9
    backward passes; the top units of 9 images cost one batch-9 forward and one backward.

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
    layout : Layout, optional
        The layer's :attr:`~zfwidgets.backend.layers.LayerInfo.layout` (a token or
        channels-last layer); the signal is built in map space (:func:`~.layers.as_maps`).

    Returns
    -------
    torch.Tensor
        ``[N, C, H, W]`` projections, in input (normalized) space, one per target.
    """
    check_rule(rule)
    targets = [Target(*t) for t in targets]
    out = []
    for start in range(0, len(targets), batch_size):
        out.append(_project_chunk(model, inputs, layer, targets[start:start + batch_size], rule,
                                  known, layout))
    if not out:
        return inputs.new_zeros((0,) + tuple(inputs.shape[1:]))
    return torch.cat(out)


def _project_chunk(model, inputs, layer, targets, rule, known, layout):
    images = sorted({t.index for t in targets})
    slot = {b: i for i, b in enumerate(images)}
    rounds: list[int] = []            # round of each target
    seen: dict[int, int] = {}
    for t in targets:
        rounds.append(seen.get(t.index, 0))
        seen[t.index] = rounds[-1] + 1
    n_rounds = max(rounds) + 1
    x = inputs[images].detach().to(dtype=model_dtype(model)).requires_grad_(True)
    with torch.enable_grad():
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
            torch.autograd.grad(acts, x, sig[r], retain_graph=r < n_rounds - 1)[0]
            for r in range(n_rounds)])
    return torch.stack([grads[r, slot[t.index]] for t, r in zip(targets, rounds)]).detach()


def projection_to_rgb(projection: torch.Tensor | np.ndarray) -> np.ndarray:
    """Turn a projection ``[3, H, W]`` (or ``[N, 3, H, W]``) into displayable RGB in [0, 1].

    Zero maps to mid-gray and the largest absolute value of each projection to 0 or 1, the
    symmetric scaling of the paper's figures.

    Parameters
    ----------
    projection : torch.Tensor or numpy.ndarray
        One projection ``[3, H, W]`` or a batch ``[N, 3, H, W]`` in input (normalized) space,
        as returned by :func:`project` or :meth:`Session.project`.

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
    scale = p.abs().flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
    rgb = (0.5 + 0.5 * p / scale).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return rgb[0] if single else rgb


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

    def __len__(self) -> int:
        return len(self.image_ids)


def gallery(session, result: MiningResult | LayerTopK, layer: str | None = None,
            channel: int = 0, rule: str = "deconvnet", k: int | None = None,
            source: ImageSource | None = None) -> Gallery:
    """Patches and projections of the top hits of one feature map (the paper's Fig. 2).

    All projections are computed in one batched backward pass through
    :func:`zfwidgets.backend.project.project`.

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
                   views=np.stack(hit_views) if hit_views else np.zeros((0, h_in, w_in, 3), np.float32))


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
                   layout=session.layer_info(layer).layout)
    return pre.to_rgb(inputs).permute(0, 2, 3, 1).cpu().numpy(), proj
