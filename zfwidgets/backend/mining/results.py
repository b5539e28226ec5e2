"""What mining returns: each layer's top-k table and the run's result, as plain data on disk.

:class:`LayerTopK` holds the ``k`` strongest hits of every channel of one layer;
:class:`MiningResult` holds one per layer plus how the data went (images mined, items skipped)
and what the hits are valid for (model id, preprocessing, data). Both turn into plain data
(:meth:`MiningResult.to_state`) for ``torch.save`` and ``torch.distributed`` and back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ...data.datasets import ImageSource, source_from_spec
from ...errors import DataError, OutOfRangeError, UnknownLayerError
from ...fingerprint import model_id
from .store import FORMAT_VERSION, atomic_save

__all__ = ["LayerTopK", "MiningResult", "Tally", "load_result", "session_model_id",
           "MAX_SKIPPED_KEPT"]

#: Reasons kept per result for skipped items; the count is always exact.
MAX_SKIPPED_KEPT = 1000


def session_model_id(session) -> str:
    """The id a result mined with ``session`` records (weights id and a digest of the weights)."""
    return model_id(session.model, getattr(session.entry, "weights_id", ""))


@dataclass
class LayerTopK:
    """The ``k`` strongest hits of every channel of one layer.

    Attributes
    ----------
    layer : str
        Layer id.
    values : torch.Tensor
        ``[C, k]`` float32 activations, sorted descending along ``k``. Unused slots (fewer hits
        than ``k``) hold ``-inf``.
    image : torch.Tensor
        ``[C, k]`` int64 image ids (indices into the mined source); ``-1`` in unused slots.
    y, x : torch.Tensor
        ``[C, k]`` int64 positions in the feature map; ``-1`` in unused slots.
    shape : tuple of int
        The layer's output shape ``(C, H, W)``.
    pre : torch.Tensor or None
        ``[C, k]`` float32 pre-activations of the hits (the rectifier's input for a layer that
        is a rectifier module's output, else the values): they rank hits of equal value
        (see :mod:`zfwidgets.backend.mining.topk`). ``None`` in results saved without them.
    """

    layer: str
    values: torch.Tensor
    image: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    shape: tuple[int, int, int]
    pre: torch.Tensor | None = None

    @property
    def k(self) -> int:
        """Slots per channel."""
        return int(self.values.shape[1])

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.values.shape[0])

    def hits(self, channel: int) -> list[tuple[float, int, int, int]]:
        """The hits of ``channel`` as ``[(value, image, y, x), ...]``, strongest first."""
        if not 0 <= int(channel) < self.channels:
            raise OutOfRangeError(f"channel {channel} is out of range for layer {self.layer!r} "
                                  f"({self.channels} channels: 0..{self.channels - 1})")
        c = int(channel)
        return [(float(self.values[c, j]), int(self.image[c, j]), int(self.y[c, j]),
                 int(self.x[c, j])) for j in range(self.k) if int(self.image[c, j]) >= 0]

    def pre_activations(self, channel: int) -> list[float]:
        """The pre-activations of :meth:`hits` ``(channel)``, in the same order (the values
        themselves when none were recorded)."""
        pre = self.values if self.pre is None else self.pre
        n = len(self.hits(channel))
        return [float(v) for v in pre[int(channel), :n]]

    def to_state(self) -> dict:
        """Plain data (tensors, strings, numbers)."""
        state = {"layer": self.layer, "values": self.values, "image": self.image, "y": self.y,
                 "x": self.x, "shape": list(self.shape)}
        if self.pre is not None:
            state["pre"] = self.pre
        return state

    @classmethod
    def from_state(cls, s: dict) -> LayerTopK:
        """Inverse of :meth:`to_state`."""
        return cls(s["layer"], s["values"], s["image"], s["y"], s["x"],
                   tuple(int(v) for v in s["shape"]), pre=s.get("pre"))


@dataclass
class Tally:
    """How the data went so far: images mined and items skipped (the first reasons kept)."""

    n_images: int = 0
    n_skipped: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, mined: int, skipped: list[tuple[int, str, str]]) -> None:
        """Count ``mined`` images and the ``(image id, name, reason)`` of skipped items."""
        self.n_images += int(mined)
        self.n_skipped += len(skipped)
        room = MAX_SKIPPED_KEPT - len(self.skipped)
        self.skipped.extend((int(i), str(name), str(why)) for i, name, why in skipped[:room])

    def to_state(self) -> dict:
        """Plain data (the ``counters`` of cache files and checkpoints)."""
        return {"n_images": self.n_images, "n_skipped": self.n_skipped,
                "skipped": [list(s) for s in self.skipped]}

    @classmethod
    def from_state(cls, s: dict) -> Tally:
        """Inverse of :meth:`to_state`."""
        return cls(int(s["n_images"]), int(s["n_skipped"]),
                   [(int(a), str(b), str(c)) for a, b, c in s["skipped"]])


@dataclass
class MiningResult:
    """What :func:`~zfwidgets.mine` returns: one :class:`LayerTopK` per layer plus how the data
    went.

    Index it by layer id (``result["head.act"]``) or iterate over :attr:`layers`.

    Attributes
    ----------
    layers : dict of str to LayerTopK
    k : int
    per_image : int or None
    n_images : int
        Images mined (readable ones).
    n_skipped : int
        Items skipped because they could not be read as images.
    skipped : list of (int, str, str)
        ``(image id, name, reason)`` of skipped items (the first 1000).
    source : ImageSource or None
        The data, so that image ``i`` can be loaded again (``None`` when it could not be
        rebuilt from a result file).
    source_spec : dict or None
        Plain-data description of the source (a folder's root ...).
    model : str
        Model id (see :func:`zfwidgets.fingerprint.model_id`).
    preprocessing : str
        Preprocessing fingerprint.
    data : str or None
        Data fingerprint.
    shard : tuple of int or None
        ``(rank, world_size)`` for a shard's result; ``None`` for the whole data.
    """

    layers: dict[str, LayerTopK]
    k: int
    per_image: int | None
    n_images: int = 0
    n_skipped: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    source: ImageSource | None = field(default=None, repr=False, compare=False)
    source_spec: dict | None = field(default=None, repr=False)
    model: str = ""
    preprocessing: str = ""
    data: str | None = None
    shard: tuple[int, int] | None = None

    def __getitem__(self, layer: str) -> LayerTopK:
        try:
            return self.layers[layer]
        except KeyError:
            raise UnknownLayerError(layer, list(self.layers)) from None

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def summary(self) -> str:
        """One line: images mined, items skipped, layers."""
        text = f"{self.n_images} images mined"
        if self.n_skipped:
            text += f", {self.n_skipped} unreadable item(s) skipped"
            if self.skipped:
                text += f" (e.g. {self.skipped[0][1]}: {self.skipped[0][2]})"
        return text + f"; layers {', '.join(self.layers)}"

    def check_session(self, session) -> None:
        """Raise :class:`~zfwidgets.DataError` unless the hits are valid for ``session`` (same
        weights and preprocessing as when mined)."""
        if self.model and self.model != session_model_id(session):
            raise DataError(f"the result was mined with other model weights ({self.model}) "
                            f"than the session's ({session_model_id(session)}); mine again")
        if self.preprocessing and self.preprocessing != session.preprocessing.fingerprint():
            raise DataError(f"the result was mined with preprocessing {self.preprocessing}, "
                            f"the session uses {session.preprocessing.fingerprint()}; mine again")

    def _meta(self) -> dict:
        return {"k": self.k, "per_image": self.per_image, "n_images": self.n_images,
                "n_skipped": self.n_skipped, "skipped": [list(s) for s in self.skipped],
                "source_spec": json.dumps(self.source_spec), "model": self.model,
                "preprocessing": self.preprocessing, "data": self.data,
                "shard": list(self.shard) if self.shard else None}

    def to_state(self) -> dict:
        """Plain data (tensors, numbers, strings) for ``torch.save`` / ``all_gather_object``."""
        return {"format": FORMAT_VERSION, "meta": self._meta(),
                "layers": {name: t.to_state() for name, t in self.layers.items()}}

    @classmethod
    def from_state(cls, state: dict, source: ImageSource | None = None) -> MiningResult:
        """Inverse of :meth:`to_state`; ``source`` defaults to one rebuilt from the spec."""
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            raise DataError("not a zfwidgets mining result of format "
                            f"{FORMAT_VERSION} (got {type(state).__name__})")
        meta = state["meta"]
        spec = json.loads(meta["source_spec"]) if meta.get("source_spec") else None
        tally = Tally.from_state(meta)
        return cls(layers={n: LayerTopK.from_state(s) for n, s in state["layers"].items()},
                   k=int(meta["k"]), per_image=meta["per_image"], n_images=tally.n_images,
                   n_skipped=tally.n_skipped, skipped=tally.skipped,
                   source=source if source is not None else source_from_spec(spec),
                   source_spec=spec, model=meta["model"], preprocessing=meta["preprocessing"],
                   data=meta["data"], shard=tuple(meta["shard"]) if meta["shard"] else None)

    def save(self, path: str | os.PathLike) -> None:
        """Write the result to ``path`` atomically (``torch.save`` of plain data)."""
        atomic_save(self.to_state(), path)


def load_result(path: str | os.PathLike, source: ImageSource | None = None) -> MiningResult:
    """Read a result written by :meth:`MiningResult.save` or ``zfwidgets mine``.

    Parameters
    ----------
    path : str or path-like
    source : ImageSource, optional
        The mined data; default: rebuilt from the file's description (a folder, paths, the
        samples), ``None`` for a torch Dataset.

    Raises
    ------
    DataError
        The file cannot be read or is not a mining result.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read mining result {str(path)!r}: {exc}") from exc
    return MiningResult.from_state(state, source)
