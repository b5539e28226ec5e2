"""Stable ids for cache keys: digests of plain data, files, tensors and a model's weights.

Every cache key in zfwidgets (mining results, checkpoints, weights ids, data fingerprints,
image keys) is made here, so that what makes two things "the same" is decided in one place.
Digests are hex prefixes of SHA-256 and are stable across processes and platforms.

A model is identified by what it holds *and* what it is (:func:`model_id`): its weights
(:func:`weights_digest`) and its architecture (:func:`architecture_digest`: every submodule's
name, class, ``extra_repr()`` and plain hyper-parameter attributes, and the code of the
``forward`` of every class not defined by torch). So a model redefined with a conv of stride 2
instead of 1, or a ``forward`` that pools differently, misses a cache made with the first one
even when its weights are the same tensors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import types
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the functions that need it: zfwidgets.data does not
    import torch
    from torch import nn

__all__ = ["digest", "key_digest", "file_digest", "tensor_digest", "state_digest",
           "weights_digest", "architecture_digest", "model_id"]


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
    """Digest of a file's bytes, memoized on (path, size, modification time).

    Raises
    ------
    OSError
        The file cannot be read, or is not a regular file (a FIFO, socket or device is never
        opened: reading one may block forever).
    """
    path = Path(path)
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{str(path)!r} is not a regular file")
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


def state_digest(obj: Any, length: int = 32) -> str:
    """Digest of plain data as saved in a cache file: dicts (keys sorted), lists and tuples,
    tensors (dtype, shape, values) and scalars; a checksum that a damaged file fails."""
    h = hashlib.sha256()
    _walk(h, obj)
    return h.hexdigest()[:length]


def _walk(h, obj: Any) -> None:
    if isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode("utf-8", "surrogatepass") + b":")
            _walk(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _walk(h, item)
            h.update(b",")
        h.update(b"]")
    elif type(obj).__module__.startswith("torch") and hasattr(obj, "dtype"):
        h.update(f"T{obj.dtype}|{tuple(obj.shape)};".encode())
        _update(h, obj)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode("utf-8", "surrogatepass"))


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


#: Plain attribute values that count as hyper-parameters in :func:`architecture_digest`.
_PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


@functools.lru_cache(maxsize=1024)
def _code_digest(code: types.CodeType) -> str:
    """Digest of a function's code: bytecode, names and constants (nested code included; no
    addresses, so it is stable across processes of one Python version)."""
    h = hashlib.sha256(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        h.update((_code_digest(const) if isinstance(const, types.CodeType) else
                  repr(const)).encode())
    return h.hexdigest()


def _module_signature(name: str, module: nn.Module) -> str:
    cls = type(module)
    try:
        extra = module.extra_repr()
    except Exception as exc:  # a user's extra_repr that fails must not break a cache lookup
        extra = f"<extra_repr raised {type(exc).__name__}>"
    attrs = sorted((k, repr(v)) for k, v in vars(module).items()
                   if not k.startswith("_") and k != "training" and _plain(v))
    code = ""
    if not cls.__module__.startswith("torch."):  # torch's own modules: their hyper-parameters say it
        forward = getattr(cls.forward, "__code__", None)
        code = _code_digest(forward) if forward is not None else ""
    return f"{name}|{cls.__module__}.{cls.__qualname__}|{extra}|{attrs}|{code}"


def architecture_digest(model: nn.Module, length: int = 16) -> str:
    """Digest of a model's architecture, weights left out.

    It covers every submodule of ``model.named_modules()`` in order: its name, its class
    (module and qualified name), its ``extra_repr()`` (a conv's channels, kernel, stride,
    padding, dilation, groups ...), its public attributes of plain type (numbers, strings,
    tuples of them; not ``training``), and, for a class not defined by torch itself, the code
    of its ``forward``. Two models that compute differently from the same weights (stride 1 vs
    2, another pooling in ``forward``) differ; the ``training`` flag and the weights' values do
    not enter. The bytecode part depends on the Python version: a new Python misses old caches.

    Parameters
    ----------
    model : nn.Module
    length : int
        Hex characters kept.
    """
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(_module_signature(name, module).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:length]


def model_id(model: nn.Module, weights_id: str = "") -> str:
    """Identity of a model for cache keys: its registry ``weights_id`` (when it has one),
    :func:`weights_digest` of what it holds now and :func:`architecture_digest` of what it is
    (``"<weights id>|<weights digest>|arch:<architecture digest>"``)."""
    d = f"{weights_digest(model)}|arch:{architecture_digest(model)}"
    return f"{weights_id}|{d}" if weights_id else d
