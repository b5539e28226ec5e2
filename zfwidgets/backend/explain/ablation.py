"""Ablated sessions: the same model with some feature maps knocked out (set to zero).

The paper asks what the model needs by hiding parts of the image (Fig. 7); knocking out feature
maps asks the same of the network itself: which maps does a decision depend on?
:meth:`Session.ablated` (:func:`ablated_session`) gives a new :class:`~zfwidgets.Session` on
the *same* model, in which the chosen channels of a layer are zero for everything the session
computes: predictions, feature maps, projections, class maps, occlusion, mining.

The ablated session's model is an :class:`AblatedModel`: a view that shares the user's modules
(the same children, parameters and buffers, so every layer id is the same) and whose forward
registers the zeroing hooks on those modules only for the duration of the call
(:func:`~zfwidgets.backend.layers.capture` with ``replace=True``: the hooks run before any
other on the same module, so every observer sees the knocked-out maps, and they are removed in
``finally``). Nothing is registered on the user's model between calls; dropping the ablated
session leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import torch
from torch import nn

from ...errors import BadParameterError, OutOfRangeError
from ...fingerprint import digest
from ..layers import capture
from ..occlusion.grid import check_int

__all__ = ["AblatedModel", "ablated_model", "ablated_session", "check_channels", "knockouts",
           "zero_channels"]


def zero_channels(output: torch.Tensor, channels: Iterable[int]) -> torch.Tensor:
    """``output`` ``[N, C, H, W]`` with ``channels`` zeroed, as a new tensor (a product with a
    0/1 mask: differentiable, and cheap for the incremental occlusion engine)."""
    mask = torch.ones(output.shape[1], dtype=output.dtype, device=output.device)
    mask[list(channels)] = 0
    return output * mask.view(1, -1, 1, 1)


class AblatedModel(nn.Module):
    """A model whose forward zeroes some channels of some layers.

    Parameters
    ----------
    base : nn.Module
        The user's model. It is shared, not copied: the view holds the same children,
        parameters and buffers, so layer ids, weights and state dicts are the same.
    knockouts : mapping of str to sequence of int
        Layer id -> channels set to zero in that layer's output.

    Notes
    -----
    During a call the base model's ``training`` flag follows the view's and is restored after;
    the zeroing hooks exist only inside the call.
    """

    def __init__(self, base: nn.Module, knockouts: Mapping[str, Iterable[int]]):
        super().__init__()
        object.__setattr__(self, "base", base)      # not a child: layer ids stay the same
        self._modules = base._modules
        self._parameters = base._parameters
        self._buffers = base._buffers
        self.knockouts = {str(k): tuple(sorted({int(c) for c in v})) for k, v in knockouts.items()}
        self.training = base.training

    def forward(self, *args, **kwargs):
        base = self.base
        was = base.training
        edits = {layer: chans for layer, chans in self.knockouts.items() if chans}
        try:
            base.training = self.training
            with capture(base, list(edits), lambda layer, out: _zeroed(layer, out, edits),
                         replace=True):
                return base(*args, **kwargs)
        finally:
            base.training = was

    def extra_repr(self) -> str:
        return f"knockouts={self.knockouts}"


def _zeroed(layer: str, output, edits) -> torch.Tensor:
    if not (isinstance(output, torch.Tensor) and output.dim() == 4):
        raise BadParameterError(f"layer {layer!r} does not output feature maps [N, C, H, W]; "
                                "only such layers can have maps knocked out")
    return zero_channels(output, edits[layer])


def knockouts(session) -> dict[str, tuple[int, ...]]:
    """The maps knocked out in ``session``: layer id -> channels (empty for a plain session)."""
    model = session.model
    return dict(model.knockouts) if isinstance(model, AblatedModel) else {}


def check_channels(session, layer: str, channels) -> tuple[int, ...]:
    """``channels`` (one id or several) as sorted distinct ids of ``layer``'s maps.

    Raises
    ------
    UnknownLayerError, OutOfRangeError, BadParameterError
        An unknown layer, a channel it does not have, something that is not a channel id.
    """
    c = session.layer_info(layer).shape[0]              # UnknownLayerError with suggestions
    if hasattr(channels, "tolist"):                       # arrays, tensors
        channels = channels.tolist()
    if isinstance(channels, int):
        channels = [channels]
    try:
        ids = [check_int("channel", ch) for ch in channels]
    except TypeError:
        raise BadParameterError(f"channels must be a channel id or a list of them, got "
                                f"{channels!r}") from None
    bad = [ch for ch in ids if not 0 <= ch < c]
    if bad:
        raise OutOfRangeError(f"channels {bad} are out of range for layer {layer!r} ({c} "
                              f"channels: 0..{c - 1})")
    return tuple(sorted(set(ids)))


def ablated_model(session, layer: str, channels) -> AblatedModel:
    """The session's model (its base, for an ablated session) as an :class:`AblatedModel`
    knocking out the session's maps and ``channels`` of ``layer`` (see
    :func:`ablated_session`)."""
    chans = check_channels(session, layer, channels)
    model = session.model
    base = model.base if isinstance(model, AblatedModel) else model
    merged = knockouts(session)
    merged[layer] = tuple(sorted(set(merged.get(layer, ())) | set(chans)))
    return AblatedModel(base, merged)


def ablated_session(session, layer: str, channels):
    """A new Session on the same model and image with ``channels`` of ``layer`` set to zero.

    Parameters
    ----------
    session : Session
        Left as it is. When it is itself ablated, the new session knocks out both its maps
        and these.
    layer : str
        Layer id (one of ``session.layers``).
    channels : int or sequence of int
        The feature maps to zero (an empty list: a session with nothing more knocked out).

    Returns
    -------
    Session
        Its model is an :class:`AblatedModel`; its ``entry.weights_id`` names the knockouts
        (results cached under it never mix with the intact model's).

    Raises
    ------
    UnknownLayerError
        ``layer`` is not one of the session's layers.
    OutOfRangeError
        A channel the layer does not have.
    """
    view = ablated_model(session, layer, channels)
    base_entry = session.entry
    tag = digest(*(f"{k}:{v}" for k, v in sorted(view.knockouts.items())))
    entry = replace(base_entry, module=view,
                    weights_id=f"{base_entry.weights_id.split('|ablated:')[0]}|ablated:{tag}")
    new = type(session)(entry, image=session.image)
    new.image_name = session.image_name
    return new
