"""The mining cache folder: finished layers and run checkpoints on disk, atomic and safe to read.

Every file is plain data (tensors, numbers, strings, lists, dicts) given to ``torch.save``. It is
written to a temporary file in the same folder and moved into place with :func:`os.replace`, so a
reader (or a process killed mid-write) never leaves half a file; it is read with
``torch.load(weights_only=True)``, so no code runs. A file that cannot be read warns and counts
as missing: it is recomputed, never fatal.

A cache folder holds

``topk-<key>.pt``
    One layer's finished top-k (:meth:`~zfwidgets.backend.mining.LayerTopK.to_state`) and the
    counts of its run. The key is a digest of everything the result depends on: the file
    format, the model id (weights included), the layer, ``k``, ``per_image``, the
    preprocessing, the data and the shard.
``topk-run-<digest of the run's keys>.partial.pt``
    The checkpoint of an unfinished run over a set of layers: where the run stands and the
    streaming state, so that a rerun resumes from it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
import warnings
from typing import Any

import torch

from ...fingerprint import key_digest

__all__ = ["FORMAT_VERSION", "MiningStore", "atomic_save", "safe_load"]

#: Version of the cache / result file layout; bumping it invalidates old cache files.
#: 2: hits of equal value are ranked by their pre-activation (``LayerTopK.pre``).
FORMAT_VERSION = 2


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then :func:`os.replace`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def safe_load(path: str | os.PathLike) -> dict | None:
    """A cache file's contents, or ``None`` when it is missing, unreadable (with a warning) or of
    another format version."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt cache file is recomputed, never fatal
        warnings.warn(f"ignoring unreadable mining cache file {str(path)!r}: {exc}", stacklevel=3)
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT_VERSION else None


class MiningStore:
    """The cache folder of one kind of run: finished layers and checkpoints, by key.

    Parameters
    ----------
    folder : path
        The cache folder (created on the first write; ``~`` is expanded).
    model : str
        Model id (:func:`zfwidgets.fingerprint.model_id`).
    k : int
    per_image : int or None
    preprocessing : str
        Preprocessing fingerprint.
    data : str
        Data fingerprint.
    shard : (int, int) or None
        ``(rank, world_size)``: a shard's files never stand for the whole data.
    """

    def __init__(self, folder: str | os.PathLike, *, model: str, k: int, per_image: int | None,
                 preprocessing: str, data: str, shard: tuple[int, int] | None):
        self.folder = pathlib.Path(folder).expanduser()
        self._settings = {"v": FORMAT_VERSION, "model": model, "k": k, "per_image": per_image,
                          "pre": preprocessing, "data": data,
                          "shard": list(shard) if shard else None}

    def key(self, layer: str) -> str:
        """The cache key of ``layer``'s result under this store's settings."""
        return key_digest({**self._settings, "layer": layer})

    # ------------------------------------------------------------------ finished layers
    def _layer_path(self, layer: str) -> pathlib.Path:
        return self.folder / f"topk-{self.key(layer)}.pt"

    def load_layer(self, layer: str) -> tuple[dict, dict] | None:
        """``(layer state, counts)`` of a finished layer, or ``None`` when not cached."""
        state = safe_load(self._layer_path(layer))
        if state is None or state.get("key") != self.key(layer):
            return None
        return state["layer"], state["counters"]

    def save_layers(self, states: dict[str, dict], counters: dict) -> None:
        """Store finished layers (``{layer: LayerTopK state}``) and the counts of their run."""
        for layer, state in states.items():
            atomic_save({"format": FORMAT_VERSION, "key": self.key(layer), "layer": state,
                         "counters": counters}, self._layer_path(layer))

    # ------------------------------------------------------------------ checkpoints
    def _run_keys(self, layers: list[str]) -> list[str]:
        return sorted(self.key(layer) for layer in layers)

    def checkpoint_path(self, layers: list[str]) -> pathlib.Path:
        """Where the checkpoint of a run over ``layers`` is kept."""
        return self.folder / f"topk-run-{key_digest(self._run_keys(layers))}.partial.pt"

    def load_checkpoint(self, layers: list[str]) -> dict | None:
        """The checkpoint of an unfinished run over ``layers`` (as saved), or ``None``."""
        state = safe_load(self.checkpoint_path(layers))
        if state is None or state.get("keys") != self._run_keys(layers):
            return None
        return state

    def save_checkpoint(self, layers: list[str], state: dict) -> None:
        """Keep ``state`` (plain data) as the checkpoint of the run over ``layers``."""
        atomic_save({**state, "format": FORMAT_VERSION, "keys": self._run_keys(layers)},
                    self.checkpoint_path(layers))

    def drop_checkpoint(self, layers: list[str]) -> None:
        """Remove the checkpoint of the run over ``layers`` (it finished)."""
        with contextlib.suppress(FileNotFoundError):
            self.checkpoint_path(layers).unlink()
