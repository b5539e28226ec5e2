"""Choice policies: which layer, map or rule a view or an experiment starts with.

Each policy has its own name and says in its docstring what it picks and why; nothing else in
zfwidgets picks a default layer on its own.

==================== =========================================================================
policy               used by
==================== =========================================================================
:func:`opening_layer`  the explorer's views (feature maps, deconv view, top-9 gallery) and
                       ``zfwidgets render``: a middle layer, where maps are neither edges nor
                       object parts
:func:`top_layer`      occlusion's feature panel (the paper's Fig. 7 b uses layer 5, the top
                       convolutional layer)
:func:`mining_layers`  ``zf.mine``, the gallery, probes and feature evolution: about five layers
                       spread over the depth (the paper's layers 1-5)
:func:`invariance_layers`  Fig. 5: the first rectified layer and the top feature layer
:func:`correspondence_layers`  Fig. 8 / Table 1: the middle and top feature layers
:func:`gradcam_layer`  Grad-CAM and guided Grad-CAM: the last layer with a spatial map
:func:`sanity_layers`  the randomization sanity check: learned layers, top first
:func:`default_rule`   every projection view: ``"deconvnet"`` after a max-pool (switches),
                       else ``"guided"``; :func:`rule_reason` says why in one line
:func:`informative_channel`  the map views and notebooks open on: alive and not flat;
                       :func:`flat_map_note` warns when a colour scale stretches a flat map
:func:`target_classes`  the classes an occlusion view sums: the top class and its
                       near-synonyms among the top 5 (ImageNet's coarse groups)
==================== =========================================================================
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import UnknownLayerError
from .layers import capture, require_maps, run_captured, scoped_eval
from .ops import RECTIFIER_MODULES

__all__ = ["IMAGENET_GROUPS", "NEGLIGIBLE_VARIATION", "correspondence_layers", "default_rule",
           "flat_map_note", "gradcam_layer", "informative_channel", "informative_channel_choice",
           "invariance_layers", "is_rectifier_layer", "max_pools_before", "mining_layers",
           "model_title", "opening_layer", "rule_reason", "sanity_layers", "target_classes",
           "top_layer"]

_RECTIFIER_KINDS = frozenset(cls.__name__ for cls in RECTIFIER_MODULES)


def is_rectifier_layer(info) -> bool:
    """Whether a :class:`~zfwidgets.LayerInfo` row is a rectifier module's output (ReLU,
    ReLU6, LeakyReLU, Hardtanh, Threshold, or a class whose name says ReLU)."""
    return info.is_leaf and (info.kind in _RECTIFIER_KINDS or "relu" in info.kind.lower())


def opening_layer(session) -> str:
    """The layer a view opens on: the model's ``middle_layer``, else its ``default_layer``,
    else the middle of the leaf layers."""
    require_maps(session)
    layers = session.layers
    for name in (session.entry.middle_layer, session.entry.default_layer):
        if name and name in layers:
            return name
    leaves = [i.name for i in session.layer_table() if i.is_leaf] or layers
    if not leaves:
        raise UnknownLayerError("(opening layer)", layers)
    return leaves[len(leaves) // 2]


def top_layer(session) -> str:
    """The top feature layer (the paper's layer 5, whose strongest map Fig. 7 b tracks): the
    model's ``default_layer`` if it is one of the session's layers, else the last layer whose
    maps are larger than 1x1, else the last layer."""
    require_maps(session)
    layers = session.layers
    name = getattr(session.entry, "default_layer", None)
    if name in layers:
        return name
    for info in reversed(session.layer_table()):
        if info.shape[1] * info.shape[2] > 1:
            return info.name
    if layers:
        return layers[-1]
    raise UnknownLayerError("(top layer)", layers)


def mining_layers(session, n: int = 5) -> list[str]:
    """About ``n`` layers to mine, spread over the depth (like the paper's layers 1-5).

    Rectified leaf layers with a tracked receptive field and a spatial map, evenly spaced in
    forward order, always including the model's ``middle_layer`` and ``default_layer`` when they
    qualify. Falls back to convolutions, then to every layer.
    """
    table = require_maps(session)
    rect = [i.name for i in table if is_rectifier_layer(i)
            and i.geometry is not None and i.shape[1] * i.shape[2] > 1]
    cands = rect or [i.name for i in table if i.is_leaf and i.kind.startswith("Conv")
                     and i.shape[1] * i.shape[2] > 1] or [i.name for i in table]
    if len(cands) <= n:
        return cands
    picks = [cands[round(j * (len(cands) - 1) / (n - 1))] for j in range(n)] if n > 1 else [cands[-1]]
    protected = {session.entry.middle_layer, session.entry.default_layer}
    for special in (session.entry.middle_layer, session.entry.default_layer):
        if special in cands and special not in picks:
            where = cands.index(special)
            choices = [p for p in picks if p not in protected] or picks
            nearest = min(choices, key=lambda p: abs(cands.index(p) - where))
            picks[picks.index(nearest)] = special
    return sorted(dict.fromkeys(picks), key=cands.index)


def invariance_layers(session) -> list[str]:
    """The layers Fig. 5 follows: the first rectified layer (the paper's layer 1) and the
    model's top feature layer (its registry entry's ``default_layer``, else the last layer)."""
    table = require_maps(session)
    if not table:
        raise UnknownLayerError("(invariance layers)", [])
    first = next((info.name for info in table if is_rectifier_layer(info)), table[0].name)
    top = session.entry.default_layer or table[-1].name
    return list(dict.fromkeys([first, top]))


def correspondence_layers(session) -> list[str]:
    """The layers Fig. 8 / Table 1 compares (the paper's layers 5 and 7): the model's
    ``middle_layer`` and ``default_layer``, else its last layer."""
    require_maps(session)
    entry = session.entry
    layers = [layer for layer in dict.fromkeys([entry.middle_layer, entry.default_layer])
              if layer]
    return layers or [session.layers[-1]]


def gradcam_layer(session) -> str:
    """The layer Grad-CAM weights by default: the last layer (in forward order) whose maps are
    larger than 1x1 (Selvaraju et al. use the last convolutional layer: the most semantic maps
    that still have a spatial layout), else the last layer."""
    for info in reversed(session.layer_table()):
        if info.shape[1] * info.shape[2] > 1:
            return info.name
    layers = session.layers
    if layers:
        return layers[-1]
    raise UnknownLayerError("(Grad-CAM layer)", layers)


def sanity_layers(session) -> list[str]:
    """The layers the randomization sanity check (Adebayo et al. 2018) re-initializes, in its
    cascade order: every module holding learned filters (a convolution or a linear layer: a
    leaf with a ``weight`` of two or more dimensions), from the output down, in the reverse
    order of their first call in a forward pass. Normalization layers are left as trained."""
    model = session.model
    names = [name for name, m in model.named_modules()
             if name and next(m.children(), None) is None
             and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2]
    order: list[str] = []
    with torch.no_grad(), scoped_eval(model), \
            capture(model, names, lambda name, _: order.append(name)):
        model(session.input_tensor)
    return order[::-1]


# ============================================================================ rule and map choices

#: Relative variation over a map's positions below which the map counts as flat (1 %).
NEGLIGIBLE_VARIATION = 0.01

_MODEL_NAMES = {"efficientnet_lite0": "EfficientNet-Lite0", "alexnet": "AlexNet",
                "vgg16": "VGG16", "zfnet": "ZF-Net", "zfnet_small": "the small ZF-style net"}
_MAX_POOL_FUNCS = {F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices, F.max_pool1d,
                   F.max_pool3d, F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices,
                   F.adaptive_max_pool1d, F.adaptive_max_pool3d, F.fractional_max_pool2d}
_POOLS_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _CountMaxPools(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in _MAX_POOL_FUNCS
        return func(*args, **(kwargs or {}))


def _pool_counts(session) -> dict[str, int]:
    """Max-pooling calls made up to (and including) each layer, from one forward pass of the
    session's input; kept per model and input shape (the count does not depend on the image)."""
    model, x = session.model, session.input_tensor
    per_model = _POOLS_SEEN.setdefault(model, {})
    key = tuple(x.shape)
    if key not in per_model:
        mode, counts = _CountMaxPools(), {}
        with torch.no_grad(), scoped_eval(model), mode:
            run_captured(model, x, session.layers,
                         lambda layer, out: counts.setdefault(layer, mode.count),
                         known=session.layers, stop=True)
        per_model[key] = counts
    return per_model[key]


def max_pools_before(session, layer: str) -> list[str]:
    """The max-poolings of the forward pass up to and including ``layer``: the layer ids of
    pooling modules, and ``"max_pool2d (functional)"`` for pools written as function calls.

    Every max-pool records *switches* (where each maximum was), so a deconvnet projection
    through it depends on the image.
    """
    session.layer_info(layer)
    n = _pool_counts(session).get(layer, 0)
    names = []
    for info in session.layer_table():
        if len(names) < n and "maxpool" in info.kind.lower():
            names.append(info.name)
        if info.name == layer:
            break
    return names + ["max_pool2d (functional)"] * (n - len(names))


def model_title(session) -> str:
    """The model's name as a sentence says it ("EfficientNet-Lite0", "AlexNet", a user
    module's class name)."""
    name = session.entry.name
    return _MODEL_NAMES.get(name, name)


def default_rule(session, layer: str) -> str:
    """The backward rule a projection of ``layer`` starts with: ``"deconvnet"`` when the model
    max-pools before the layer, else ``"guided"``.

    Without a max-pool there are no switches: the deconvnet's backward pass (rectify the
    signal, transposed filters) never looks at the image, so its projection of a unit is the
    same picture for every image, a view of the weights (Springenberg et al. 2015, *Striving
    for Simplicity*). Guided backprop also gates by the forward pass, so it shows this image.
    """
    return "deconvnet" if max_pools_before(session, layer) else "guided"


def rule_reason(session, layer: str) -> str:
    """One line saying why :func:`default_rule` picks its rule for ``layer``, for a view."""
    model, pools = model_title(session), max_pools_before(session, layer)
    if pools:
        shown = ", ".join(pools[:3]) + (" ..." if len(pools) > 3 else "")
        return (f"{model} max-pools before {layer} ({shown}): the deconvnet unpools with this "
                "image's switches, as in Zeiler & Fergus (2014)")
    return (f"{model} has no max-pooling before {layer}: a deconvnet projection would show the "
            "weights, the same for every image (Springenberg et al. 2015); guided backprop "
            "gates by this image")


def _map_stats(session, layer: str):
    acts = session.activation(layer).detach().float().flatten(1).cpu()
    hi, lo = acts.amax(1), acts.amin(1)
    spread = (hi - lo) / torch.maximum(hi.abs(), lo.abs()).clamp(min=1e-30)
    return acts.sum(1), hi, spread


def informative_channel_choice(session, layer: str) -> tuple[int, str]:
    """:func:`informative_channel` and the line saying how it was chosen."""
    total, hi, spread = _map_stats(session, layer)
    alive = hi > 0
    good = alive & (spread >= NEGLIGIBLE_VARIATION)
    n = int(total.numel())
    if bool(good.any()):
        c = int(torch.where(good, total, torch.full_like(total, -torch.inf)).argmax())
        return c, (f"map {c}: the strongest (total activation) of the {int(good.sum())} of {n} "
                   f"maps of {layer} that are alive and vary over this image")
    if bool(alive.any()):
        c = int(torch.where(alive, total, torch.full_like(total, -torch.inf)).argmax())
        return c, (f"map {c}: no map of {layer} varies by {NEGLIGIBLE_VARIATION:.0%} over this "
                   "image; the strongest live one")
    c = int(total.argmax())
    return c, f"map {c}: every map of {layer} is dead (at most 0) on this image"


def informative_channel(session, layer: str) -> int:
    """The map a view or notebook opens on at ``layer``: not dead, not flat on this image.

    Among the maps whose largest activation is positive and whose variation over positions,
    ``(max - min) / max(|max|, |min|)``, is at least :data:`NEGLIGIBLE_VARIATION`, the one of
    largest total activation (the paper's Fig. 7 choice); else the strongest live map; else the
    strongest. :func:`informative_channel_choice` also says which case applied.
    """
    return informative_channel_choice(session, layer)[0]


def flat_map_note(values, threshold: float = NEGLIGIBLE_VARIATION) -> str | None:
    """A line warning that a colour scale stretches a tiny variation to its full range, or
    ``None`` when the values vary by at least ``threshold`` of their magnitude.

    Parameters
    ----------
    values : array-like
        The values a plot maps to colours (a feature map, an occlusion map ...).
    threshold : float
        Relative variation ``(max - min) / max(|max|, |min|)`` below which the map is flat.
    """
    v = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "no finite values to show"
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        return f"the map is constant ({hi:.4g}): its colours carry no information"
    rel = (hi - lo) / max(abs(hi), abs(lo))
    if rel >= threshold:
        return None
    return (f"the map varies by only {rel:.2%} ({lo:.4g} to {hi:.4g}): the colour scale "
            "stretches that to its full range")


#: Coarse ImageNet groups by class-index range (inclusive), the nine super-classes of
#: "Restricted ImageNet" (Tsipras, Santurkar, Engstrom, Turner and Madry, *Robustness May Be at
#: Odds with Accuracy*, ICLR 2019).
IMAGENET_GROUPS: dict[str, tuple[int, int]] = {
    "dog": (151, 268), "cat": (281, 285), "frog": (30, 32), "turtle": (33, 37),
    "bird": (80, 100), "primate": (365, 382), "fish": (389, 397), "crab": (118, 121),
    "insect": (300, 319),
}


def _imagenet_group(session, cid: int) -> tuple[int, int] | None:
    """The Restricted ImageNet range holding class ``cid`` when the session's model is an
    ImageNet classifier (1000 classes, labelled as ImageNet's: class 281 is "tabby")."""
    labels = session.labels
    if int(session.logits.numel()) != 1000 or not labels or labels[281] != "tabby":
        return None
    return next((r for r in IMAGENET_GROUPS.values() if r[0] <= cid <= r[1]), None)


def target_classes(session, k: int = 5) -> list[int]:
    """The classes an occlusion map sums by default in the views: the clean image's top class
    and its near-synonyms among the top ``k``.

    A tight photo of a cat shares its probability among ImageNet's five cat classes (tabby,
    tiger cat, Persian, Siamese, Egyptian cat), so the map of P(top class) alone swings with
    the split between synonyms rather than with the cat being hidden. For an ImageNet model
    the near-synonyms are the top-``k`` classes in the top class's coarse group, the nine
    ranges of "Restricted ImageNet" (Tsipras et al., *Robustness May Be at Odds with
    Accuracy*, ICLR 2019): dogs 151-268, cats 281-285, frogs 30-32, turtles 33-37, birds
    80-100, primates 365-382, fish 389-397, crabs 118-121, insects 300-319
    (:data:`IMAGENET_GROUPS`). For a top class outside those groups, or any other model, just
    the top class. The occlusion result's ``target_label`` names what was picked
    (``"Egyptian cat + tiger cat + tabby"``), most probable first.

    Parameters
    ----------
    session : Session
    k : int
        How many of the most probable classes may join the top one.

    Returns
    -------
    list of int
        Class ids, most probable first; the first is the top class.
    """
    probs = session.probabilities()
    order = [int(c) for c in probs.argsort(descending=True)[:max(1, int(k))]]
    group = _imagenet_group(session, order[0])
    if group is None:
        return order[:1]
    return [c for c in order if group[0] <= c <= group[1]]
