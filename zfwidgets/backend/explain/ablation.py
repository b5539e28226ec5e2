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

:meth:`Session.set_knockouts` does the same in place (the explorer's knock-out toggle): the
session's model becomes such a view, or the user's model again when nothing is knocked out,
and every view over the session hears ``"knockouts"`` and recomputes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import torch
from torch import nn

from ...errors import BadParameterError, OutOfRangeError
from ...fingerprint import digest
from ...models.registry import pick_logits
from ..layers import Layout, capture, scoped_eval
from ..occlusion.grid import check_int

__all__ = ["AblatedModel", "ablated_entry", "ablated_model", "ablated_session", "base_entry",
           "check_channels", "check_knockouts", "intact_probabilities", "knockouts",
           "zero_channels"]

_TAG = "|ablated:"


def zero_channels(output: torch.Tensor, channels: Iterable[int],
                  layout: Layout | None = None) -> torch.Tensor:
    """``output`` with the maps ``channels`` zeroed, as a new tensor (a product with a 0/1
    mask: differentiable, and cheap for the incremental occlusion engine).

    ``layout`` is the layer's :attr:`~zfwidgets.backend.layers.LayerInfo.layout`: ``None`` (or
    ``"nchw"``) for ``[N, C, H, W]``; a channels-last output is masked along its channel axis;
    a token output only on its grid's tokens (the class tokens, which are no map, are kept).
    """
    if layout is None or layout.kind == "nchw":
        if output.dim() != 4:
            raise BadParameterError(f"expected [N, C, H, W] feature maps, got shape "
                                    f"{list(output.shape)}")
        axis = 1
    else:
        axis = layout.channel
    shape = [1] * output.dim()
    shape[axis] = output.shape[axis]
    keep = torch.ones(output.shape[axis], dtype=torch.bool, device=output.device)
    keep[list(channels)] = False
    keep = keep.view(shape)
    if layout is not None and layout.kind == "tokens":
        (token_axis,) = layout.spatial
        h, w = layout.grid
        on_grid = torch.zeros(output.shape[token_axis], dtype=torch.bool, device=output.device)
        on_grid[layout.offset:layout.offset + h * w] = True
        tokens = [1] * output.dim()
        tokens[token_axis] = output.shape[token_axis]
        keep = keep | ~on_grid.view(tokens)
    return output * keep.to(output.dtype)


class AblatedModel(nn.Module):
    """A model whose forward zeroes some channels of some layers.

    Parameters
    ----------
    base : nn.Module
        The user's model. It is shared, not copied: the view holds the same children,
        parameters and buffers, so layer ids, weights and state dicts are the same.
    knockouts : mapping of str to sequence of int
        Layer id -> channels set to zero in that layer's output.
    layouts : mapping of str to Layout, optional
        Layer id -> where its output keeps its maps (:attr:`LayerInfo.layout`); a layer left
        out is ``[N, C, H, W]``.

    Notes
    -----
    During a call the base model's ``training`` flag follows the view's and is restored after;
    the zeroing hooks exist only inside the call.
    """

    def __init__(self, base: nn.Module, knockouts: Mapping[str, Iterable[int]],
                 layouts: Mapping[str, Layout | None] | None = None):
        super().__init__()
        object.__setattr__(self, "base", base)      # not a child: layer ids stay the same
        self._modules = base._modules
        self._parameters = base._parameters
        self._buffers = base._buffers
        self.knockouts = {str(k): tuple(sorted({int(c) for c in v})) for k, v in knockouts.items()}
        self.layouts = dict(layouts or {})
        self.training = base.training

    def forward(self, *args, **kwargs):
        base = self.base
        was = base.training
        edits = {layer: chans for layer, chans in self.knockouts.items() if chans}
        try:
            base.training = self.training
            with capture(base, list(edits),
                         lambda layer, out: _zeroed(layer, out, edits, self.layouts),
                         replace=True):
                return base(*args, **kwargs)
        finally:
            base.training = was

    def extra_repr(self) -> str:
        return f"knockouts={self.knockouts}"


def _zeroed(layer: str, output, edits, layouts) -> torch.Tensor:
    layout = layouts.get(layer)
    if not isinstance(output, torch.Tensor) or (layout is None and output.dim() != 4):
        raise BadParameterError(f"layer {layer!r} does not output feature maps; only such "
                                "layers can have maps knocked out")
    return zero_channels(output, edits[layer], layout)


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


def check_knockouts(session, knockouts: Mapping[str, Iterable[int]] | None
                    ) -> dict[str, tuple[int, ...]]:
    """``knockouts`` (layer id -> channels) checked against ``session``'s layers, each
    channel list sorted and distinct; layers with no channel left out."""
    if knockouts is None:
        return {}
    if not isinstance(knockouts, Mapping):
        raise BadParameterError(f"knockouts must map layer ids to channels, got "
                                f"{type(knockouts).__name__}")
    checked = {str(layer): check_channels(session, layer, chans)
               for layer, chans in knockouts.items()}
    return {layer: chans for layer, chans in checked.items() if chans}


def base_entry(entry):
    """The intact model's entry of ``entry`` (itself when nothing is knocked out)."""
    module = entry.module
    if not isinstance(module, AblatedModel):
        return entry
    return replace(entry, module=module.base, weights_id=entry.weights_id.split(_TAG)[0])


def ablated_entry(session, knockouts: Mapping[str, Iterable[int]]):
    """``session.entry`` knocking out ``knockouts`` (checked) and nothing else: the intact
    entry when there are none, else one whose module is an :class:`AblatedModel` over the
    user's model and whose ``weights_id`` names the knock-outs (results cached under it never
    mix with the intact model's)."""
    chosen = check_knockouts(session, knockouts)
    base = base_entry(session.entry)
    if not chosen:
        return base
    layouts = {layer: session.layer_info(layer).layout for layer in chosen}
    view = AblatedModel(base.module, chosen, layouts)
    tag = digest(*(f"{k}:{v}" for k, v in sorted(chosen.items())))
    return replace(base, module=view, weights_id=f"{base.weights_id}{_TAG}{tag}")


def intact_probabilities(session) -> torch.Tensor:
    """Class probabilities ``[num_classes]`` of the session's image under the intact model:
    what a session with maps knocked out predicted before (its own
    :meth:`~zfwidgets.Session.probabilities` when nothing is knocked out)."""
    base = base_entry(session.entry)
    if base is session.entry:
        return session.probabilities()
    with torch.inference_mode(), scoped_eval(base.module):
        logits = pick_logits(base.module(session.input_tensor), base.output)
    return torch.softmax(logits[0].float(), dim=0)


def _merged(session, layer: str, channels) -> dict[str, tuple[int, ...]]:
    chans = check_channels(session, layer, channels)
    merged = knockouts(session)
    merged[layer] = tuple(sorted(set(merged.get(layer, ())) | set(chans)))
    return merged


def ablated_model(session, layer: str, channels) -> AblatedModel:
    """The session's model (its base, for an ablated session) as an :class:`AblatedModel`
    knocking out the session's maps and ``channels`` of ``layer`` (see
    :func:`ablated_session`)."""
    merged = _merged(session, layer, channels)
    model = session.model
    base = model.base if isinstance(model, AblatedModel) else model
    return AblatedModel(base, merged, {name: session.layer_info(name).layout for name in merged})


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
    new = type(session)(ablated_entry(session, _merged(session, layer, channels)),
                        image=session.image)
    new.image_name = session.image_name
    return new
