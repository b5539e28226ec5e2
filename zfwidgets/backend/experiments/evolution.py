"""Feature evolution during training (the paper's Fig. 4).

For a few feature maps of a few layers, the paper shows, at several epochs of training, the
strongest activation over the training set projected back to pixels. Lower layers settle within a
few epochs; upper layers only after many. Here the training is yours: hand
:func:`feature_evolution` the snapshots you saved (state dicts or checkpoint files, in training
order) and the data; for every snapshot it mines the top activations of each layer over the data
(:func:`zfwidgets.mine`) and projects each chosen map's strongest hit (:func:`zfwidgets.gallery`).
The session's own model is never touched: every snapshot is loaded into a copy. Mining the
snapshots is a job (:mod:`zfwidgets.backend.jobs`): one step per snapshot.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import BadParameterError, OutOfRangeError, WeightsUnavailableError
from ...models import LoadedModel, load_checkpoint, wrap_model
from ..jobs import Job, Step

__all__ = ["EvolutionResult", "feature_evolution"]


@dataclass
class EvolutionResult:
    """Top hits of chosen feature maps at each training snapshot.

    Attributes
    ----------
    snapshots : list of str
        Snapshot names, in the order given (training order).
    layers : list of str
    channels : dict of str to list of int
        Feature maps followed, per layer.
    values : dict of (str, str) to numpy.ndarray
        ``(snapshot, layer)`` -> ``[C]`` strongest activation of every channel over the data.
    galleries : dict of (str, str, int) to Gallery
        ``(snapshot, layer, channel)`` -> patches and projections of the map's top ``k`` hits.
    n_images : int
        Images mined per snapshot.
    """

    snapshots: list[str]
    layers: list[str]
    channels: dict[str, list[int]]
    values: dict[tuple[str, str], np.ndarray] = field(repr=False)
    galleries: dict[tuple[str, str, int], Any] = field(repr=False)
    n_images: int = 0

    def gallery(self, snapshot: str, layer: str, channel: int):
        """The :class:`~zfwidgets.Gallery` of one map at one snapshot."""
        try:
            return self.galleries[(snapshot, layer, int(channel))]
        except KeyError:
            raise OutOfRangeError(f"no gallery for snapshot {snapshot!r}, layer {layer!r}, "
                                  f"channel {channel}; snapshots {self.snapshots}, channels "
                                  f"{self.channels}") from None

    def strongest(self, layer: str, channel: int) -> np.ndarray:
        """``[S]`` the map's strongest activation over the data at each snapshot."""
        return np.array([self.values[(s, layer)][int(channel)] for s in self.snapshots])


def _snapshot_items(snapshots) -> list[tuple[str, Any]]:
    if isinstance(snapshots, Mapping):
        items = list(snapshots.items())
    else:
        items = []
        for k, item in enumerate(snapshots):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                items.append(item)
            elif isinstance(item, (str, os.PathLike)):
                items.append((os.path.basename(str(item)), item))
            else:
                items.append((f"snapshot {k}", item))
    if not items:
        raise BadParameterError("no snapshots given")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise BadParameterError(f"snapshot names must be unique, got {names}")
    return [(str(n), s) for n, s in items]


def _load(module: torch.nn.Module, name: str, state) -> None:
    if isinstance(state, (str, os.PathLike)):
        load_checkpoint(module, state)
        return
    if not isinstance(state, Mapping):
        raise BadParameterError(f"snapshot {name!r} must be a state dict or a checkpoint path, "
                                f"got {type(state).__name__}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsUnavailableError(f"snapshot {name!r} does not fit "
                                      f"{type(module).__name__}: {first}") from exc


def _snapshot_model(session, name: str, state) -> LoadedModel:
    """A copy of the session's model holding the snapshot's weights, described like the entry."""
    module = copy.deepcopy(session.model)
    _load(module, name, state)
    entry = session.entry
    return wrap_model(module, preprocessing=session.preprocessing, labels=session.labels,
                      name=f"{entry.name} @ {name}", default_layer=entry.default_layer,
                      middle_layer=entry.middle_layer)


def _chosen_channels(session, layers: list[str], channels) -> dict[str, list[int]] | None:
    """The maps given per layer (checked), or ``None`` when an int asks for the strongest."""
    for layer in layers:
        session.layer_info(layer)
    if isinstance(channels, Mapping):
        chosen = {layer: [int(c) for c in channels.get(layer, ())] for layer in layers}
        for layer, chs in chosen.items():
            n = session.layer_info(layer).shape[0]
            bad = [c for c in chs if not 0 <= c < n]
            if bad:
                raise OutOfRangeError(f"channels {bad} are out of range for layer {layer!r} "
                                      f"({n} channels)")
        return chosen
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise BadParameterError(f"channels must be a positive int or a mapping, got {channels!r}")
    return None


def _mining_steps(items: list[tuple[str, Any]], mine_snapshot: Callable[[str, Any], Any]
                  ) -> Generator[Step, None, dict[str, Any]]:
    """Mine every snapshot in turn, one :class:`Step` each; returns name -> what was mined."""
    mined = {}
    for done, (name, state) in enumerate(items, 1):
        mined[name] = mine_snapshot(name, state)
        yield Step(done, len(items), note=name)
    return mined


def feature_evolution(session, snapshots, images: Any = None,
                      layers: Sequence[str] | None = None,
                      channels: int | Mapping[str, Sequence[int]] = 4, *, k: int = 1,
                      rule: str = "deconvnet", batch_size: int | None = None,
                      progress: bool = True) -> EvolutionResult:
    """Follow feature maps through training snapshots (Fig. 4).

    Parameters
    ----------
    session : Session
        Gives the architecture (its model is copied, never changed), preprocessing and labels.
    snapshots : mapping of name to state dict or path, or sequence
        In training order. A sequence may hold ``(name, state)`` pairs, checkpoint paths (named
        by file name) or state dicts (named ``"snapshot k"``). Files are read with
        ``torch.load(..., weights_only=True)``.
    images : data, optional
        What to mine (see :func:`zfwidgets.mine`); default the offline sample collection. The
        paper uses the training set.
    layers : sequence of str, optional
        Default :func:`zfwidgets.backend.defaults.mining_layers`.
    channels : int or mapping of layer to channel ids
        Maps to follow per layer; an int ``n`` takes the ``n`` maps with the strongest
        activation at the *last* snapshot (the features training ends with).
    k : int
        Hits shown per map and snapshot (the paper shows the strongest, 1).
    rule : {"deconvnet", "guided", "gradient"}
    batch_size : int, optional
        Mining batch size (default :func:`zfwidgets.backend.mining.mining_batch_size`).
    progress : bool
        Show a ``tqdm.auto`` bar over the snapshots.

    Returns
    -------
    EvolutionResult

    Raises
    ------
    BadParameterError
        No snapshots, duplicate names, something that is neither a state dict nor a path.
    WeightsUnavailableError
        A snapshot that does not fit the model (the message names it).
    OutOfRangeError, UnknownLayerError
        Bad channel or layer.
    """
    from ..session import Session
    from ..defaults import mining_layers
    from ..mining import mine
    from ..project import gallery

    items = _snapshot_items(snapshots)
    layers = list(mining_layers(session) if layers is None else dict.fromkeys(layers))
    chosen = _chosen_channels(session, layers, channels)

    def mine_snapshot(name: str, state):
        snap = Session(_snapshot_model(session, name, state), session.image)
        return snap, mine(snap, images, layers, k=k, per_image=1, batch_size=batch_size,
                          progress=False)

    mined = Job(_mining_steps(items, mine_snapshot), what="feature evolution",
                unit="snapshot").run(progress=progress)
    values = {(name, layer): result[layer].values[:, 0].numpy().astype(np.float64)
              for name, (_, result) in mined.items() for layer in layers}
    last = items[-1][0]
    if chosen is None:
        chosen = {layer: [int(c) for c in np.argsort(-values[(last, layer)],
                                                     kind="stable")[:channels]]
                  for layer in layers}
    galleries = {(name, layer, c): gallery(snap, result, layer, c, rule=rule, k=k)
                 for name, (snap, result) in mined.items()
                 for layer in layers for c in chosen[layer]}
    return EvolutionResult(snapshots=[n for n, _ in items], layers=layers, channels=chosen,
                           values=values, galleries=galleries,
                           n_images=mined[last][1].n_images)
