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
:func:`target_classes`  the classes an occlusion view sums: the top class and its
                       near-synonyms among the top 5 (ImageNet's coarse groups)
==================== =========================================================================
"""

from __future__ import annotations

from ..errors import UnknownLayerError
from .ops import RECTIFIER_MODULES

__all__ = ["IMAGENET_GROUPS", "correspondence_layers", "invariance_layers", "is_rectifier_layer",
           "mining_layers", "opening_layer", "target_classes", "top_layer"]

_RECTIFIER_KINDS = frozenset(cls.__name__ for cls in RECTIFIER_MODULES)


def is_rectifier_layer(info) -> bool:
    """Whether a :class:`~zfwidgets.LayerInfo` row is a rectifier module's output (ReLU,
    ReLU6, LeakyReLU, Hardtanh, Threshold, or a class whose name says ReLU)."""
    return info.is_leaf and (info.kind in _RECTIFIER_KINDS or "relu" in info.kind.lower())


def opening_layer(session) -> str:
    """The layer a view opens on: the model's ``middle_layer``, else its ``default_layer``,
    else the middle of the leaf layers."""
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
    table = session.layer_table()
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
    table = session.layer_table()
    if not table:
        raise UnknownLayerError("(invariance layers)", [])
    first = next((info.name for info in table if is_rectifier_layer(info)), table[0].name)
    top = session.entry.default_layer or table[-1].name
    return list(dict.fromkeys([first, top]))


def correspondence_layers(session) -> list[str]:
    """The layers Fig. 8 / Table 1 compares (the paper's layers 5 and 7): the model's
    ``middle_layer`` and ``default_layer``, else its last layer."""
    entry = session.entry
    layers = [layer for layer in dict.fromkeys([entry.middle_layer, entry.default_layer])
              if layer]
    return layers or [session.layers[-1]]


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
