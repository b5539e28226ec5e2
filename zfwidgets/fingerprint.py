"""Stable ids for cache keys: digests of plain data, files, tensors and a model's weights.

Every cache key in zfwidgets (mining results, checkpoints, weights ids, data fingerprints,
image keys) is made here, so that what makes two things "the same" is decided in one place.
Digests are hex prefixes of SHA-256 and are stable across processes and platforms.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the functions that need it: zfwidgets.data does not
    import torch
    from torch import nn

__all__ = ["digest", "key_digest", "file_digest", "tensor_digest", "weights_digest", "model_id"]


def digest(*parts: Any, length: int = 16) -> str:
    """Digest of a sequence of parts (bytes as they are, anything else by ``str``).

    Parameters
    ----------
    *parts
        Bytes, strings, numbers, tuples ...; each part is separated from the next, so
        ``("ab", "c")`` and ``("a", "bc")`` differ.
    length : int
        Hex characters kept.
    """
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:length]


def key_digest(obj: Any, length: int = 24) -> str:
    """Digest of JSON-able plain data (dict keys sorted): a cache key for a set of settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """Digest of a file's bytes, memoized on (path, size, modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key][:length]


def tensor_digest(t: torch.Tensor, length: int = 16) -> str:
    """Digest of a tensor's dtype, shape and values."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)};".encode())
    _update(h, t)
    return h.hexdigest()[:length]


def _update(h, t: torch.Tensor) -> None:
    import torch

    t = t.detach().to("cpu").contiguous()
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_digest(model: nn.Module, length: int = 16) -> str:
    """Digest of a model's class and of every parameter and buffer (names, dtypes, shapes,
    values).

    Recomputed only when a tensor was changed in place (tracked by tensor versions) or
    replaced, so calling it before every cache lookup is cheap.
    """
    tensors = list(model.state_dict(keep_vars=True).items())
    signature = tuple((k, id(t), t._version) for k, t in tensors)
    cached = _WEIGHTS.get(model)
    if cached is None or cached[0] != signature:
        h = hashlib.sha256(type(model).__qualname__.encode())
        for key, t in tensors:
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)};".encode())
            _update(h, t)
        cached = (signature, h.hexdigest())
        _WEIGHTS[model] = cached
    return cached[1][:length]


def model_id(model: nn.Module, weights_id: str = "") -> str:
    """Identity of a model for cache keys: its registry ``weights_id`` (when it has one) and
    :func:`weights_digest` of what it holds now."""
    d = weights_digest(model)
    return f"{weights_id}|{d}" if weights_id else d
