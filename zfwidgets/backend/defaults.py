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
==================== =========================================================================
"""

from __future__ import annotations

from ..errors import UnknownLayerError
from .layers import require_maps
from .ops import RECTIFIER_MODULES

__all__ = ["correspondence_layers", "invariance_layers", "is_rectifier_layer", "mining_layers", "opening_layer",
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
