"""The mining cache folder: finished layers and run checkpoints on disk, atomic and safe to read.

Every file is plain data (tensors, numbers, strings, lists, dicts) given to ``torch.save``. It is
serialized in memory, written to a temporary file in the same folder, flushed to the disk
(``fsync``) and moved into place with :func:`os.replace`, so a reader (or a process killed
mid-write) never sees half a file; it is read with ``torch.load(weights_only=True)``, so no code
runs. Each file carries a checksum of its content (:func:`~zfwidgets.fingerprint.state_digest`),
so a file damaged on disk where ``torch.load`` does not notice (a flipped bit in tensor data)
is caught too. A file that cannot be read, whose checksum does not match, or that reads but
does not hold what it should (a dict without its ``"layer"``, tensors of the wrong shape), warns
and counts as missing: it is recomputed, never fatal.

A folder that cannot be written (a full disk, a read-only file system, no permission, a file
where the folder should be) raises :class:`~zfwidgets.errors.StorageError` naming the folder and
the problem; :meth:`MiningStore.check` finds out before a run starts, by writing a small probe
file.

A cache folder holds

``topk-<key>.pt``
    One layer's finished top-k (:meth:`~zfwidgets.backend.mining.LayerTopK.to_state`) and the
    counts of its run. The key is a digest of everything the result depends on: the file
    format, the model id (weights and architecture), the layer, ``k``, ``per_image``, the
    preprocessing, the data and the shard.
``topk-run-<digest of the run's keys>.partial.pt``
    The checkpoint of an unfinished run over a set of layers: where the run stands, its batch
    size and the streaming state, so that a rerun resumes from it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pathlib
import tempfile
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ...errors import StorageError
from ...fingerprint import key_digest, state_digest

__all__ = ["FORMAT_VERSION", "MiningStore", "atomic_save", "check_file_writable",
           "check_writable", "safe_load", "storage_error"]

#: Version of the cache / result file layout; bumping it invalidates old cache files.
#: 2: hits of equal value are ranked by their pre-activation (``LayerTopK.pre``).
FORMAT_VERSION = 2

#: Bytes written (and removed) by :func:`check_writable` to find out whether a folder takes data.
PROBE_BYTES = 64 << 10

T = TypeVar("T")

_PROBLEMS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "it exists and is not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EFBIG: "the file is too large for this file system or limit",
    errno.EIO: "input/output error on the device",
}
if hasattr(errno, "EDQUOT"):
    _PROBLEMS[errno.EDQUOT] = "the disk quota is exceeded"


def storage_error(path: str | os.PathLike, exc: OSError, what: str) -> StorageError:
    """The :class:`~zfwidgets.errors.StorageError` for ``exc``, raised writing ``path`` (``what``
    it is: ``"the mining cache folder"``, ``"the result file"`` ...)."""
    problem = _PROBLEMS.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__
    return StorageError(f"cannot write {what} {str(path)!r}: {problem}")


def _ensure_folder(folder: pathlib.Path, what: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"cannot use {what} {str(folder)!r}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(folder, exc, what) from exc


def _write(fd: int, data) -> None:
    """Write all of ``data`` to the file descriptor ``fd`` (the one place bytes reach a disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_atomic(data, path: pathlib.Path, what: str) -> None:
    """``data`` to ``path`` through a temporary file in the same folder and :func:`os.replace`."""
    _ensure_folder(path.parent, what)
    if path.is_dir():
        raise StorageError(f"cannot write {what} {str(path)!r}: it is a folder, not a file")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as exc:
        raise storage_error(path.parent, exc, what) from exc
    try:
        try:
            _write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise storage_error(path, exc, what) from exc
        raise


def atomic_save(obj: Any, path: str | os.PathLike, *, what: str = "the file") -> None:
    """``torch.save`` ``obj`` to ``path`` atomically: serialized in memory, written to a
    temporary file in the same folder, ``fsync``-ed, then moved into place.

    Raises
    ------
    StorageError
        The folder or file cannot be written (the message names ``what`` and the problem);
        nothing is left behind, and an existing file at ``path`` is unchanged.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    _write_atomic(buf.getbuffer(), pathlib.Path(path), what)


def check_writable(folder: str | os.PathLike, what: str = "the folder", *,
                   shown: str | os.PathLike | None = None) -> pathlib.Path:
    """Make sure files can be written in ``folder`` (created if missing) by writing, syncing
    and removing a :data:`PROBE_BYTES` probe file; returns the folder.

    Raises
    ------
    StorageError
        It is a file, on a read-only file system or a full disk, or not writable by this user.
        The message names ``what`` and ``shown`` (default: the folder).
    """
    folder = pathlib.Path(folder).expanduser()
    shown = folder if shown is None else shown
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"cannot use {what} {str(shown)!r}: {str(folder)!r} is a file, not a "
                           "folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".zfwidgets-probe-", suffix=".tmp")
    except OSError as exc:
        raise storage_error(shown, exc, what) from exc
    try:
        try:
            _write(fd, bytes(PROBE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise storage_error(shown, exc, what) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return folder


def check_file_writable(path: str | os.PathLike, what: str = "the file") -> pathlib.Path:
    """Make sure :func:`atomic_save` can write ``path`` (its folder takes files, and it is not a
    folder itself); returns it. For an output named on a command line, checked before the work.

    Raises
    ------
    StorageError
        As for :func:`check_writable`, or ``path`` is a folder.
    """
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        raise StorageError(f"cannot write {what} {str(path)!r}: it is a folder, not a file")
    check_writable(path.parent, what, shown=path)
    return path


def safe_load(path: str | os.PathLike) -> dict | None:
    """A cache file's contents, or ``None`` when it is missing, not a regular file, unreadable
    (with a warning) or of another format version."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt cache file is recomputed, never fatal
        warnings.warn(f"ignoring unreadable mining cache file {str(path)!r}: {exc}", stacklevel=3)
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT_VERSION else None


def _parsed(path: pathlib.Path, parse: Callable[[dict], T], state: dict) -> T | None:
    """``parse(state)``, or ``None`` with a warning when the file's content is not what it
    should be (a missing entry, a wrong type or shape)."""
    try:
        return parse(state)
    except Exception as exc:  # well-formed file, wrong content: recomputed like a corrupt one
        detail = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"ignoring mining cache file {str(path)!r} with unexpected content "
                      f"({detail}); it is recomputed", stacklevel=4)
        return None


def _raw(state: dict) -> dict:
    return state


def _sealed(state: dict) -> dict:
    """``state`` with the checksum of its content (any old checksum replaced), as written."""
    content = {k: v for k, v in state.items() if k != "checksum"}
    return {**content, "checksum": state_digest(content)}


def _unsealed(path: pathlib.Path, state: dict) -> dict | None:
    """``state`` without its checksum, or ``None`` (with a warning) when the checksum is
    missing or does not match: the file was damaged or written by something else."""
    content = {k: v for k, v in state.items() if k != "checksum"}
    if state.get("checksum") != state_digest(content):
        warnings.warn(f"ignoring mining cache file {str(path)!r}: its checksum does not match "
                      "its content (damaged on disk?); it is recomputed", stacklevel=4)
        return None
    return content


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

    what = "the mining cache folder"

    def __init__(self, folder: str | os.PathLike, *, model: str, k: int, per_image: int | None,
                 preprocessing: str, data: str, shard: tuple[int, int] | None):
        self.folder = pathlib.Path(folder).expanduser()
        self._settings = {"v": FORMAT_VERSION, "model": model, "k": k, "per_image": per_image,
                          "pre": preprocessing, "data": data,
                          "shard": list(shard) if shard else None}

    def key(self, layer: str) -> str:
        """The cache key of ``layer``'s result under this store's settings."""
        return key_digest({**self._settings, "layer": layer})

    def check(self) -> None:
        """Raise :class:`~zfwidgets.errors.StorageError` now unless the folder takes files
        (see :func:`check_writable`)."""
        check_writable(self.folder, self.what)

    # ------------------------------------------------------------------ finished layers
    def _layer_path(self, layer: str) -> pathlib.Path:
        return self.folder / f"topk-{self.key(layer)}.pt"

    def load_layer(self, layer: str, parse: Callable[[dict], T] | None = None) -> T | None:
        """A finished layer's file, or ``None`` when not cached.

        ``parse(state)`` turns the file's dict (``{"layer": LayerTopK state, "counters": ...}``)
        into what the caller uses and checks it; when it raises, the file warns and counts as
        missing. Without ``parse`` the dict itself is returned.
        """
        path = self._layer_path(layer)
        state = safe_load(path)
        if state is None or state.get("key") != self.key(layer):
            return None
        state = _unsealed(path, state)
        return None if state is None else _parsed(path, parse or _raw, state)

    def save_layers(self, states: dict[str, dict], counters: dict) -> None:
        """Store finished layers (``{layer: LayerTopK state}``) and the counts of their run."""
        for layer, state in states.items():
            atomic_save(_sealed({"format": FORMAT_VERSION, "key": self.key(layer),
                                 "layer": state, "counters": counters}),
                        self._layer_path(layer), what=self.what)

    # ------------------------------------------------------------------ checkpoints
    def _run_keys(self, layers: list[str]) -> list[str]:
        return sorted(self.key(layer) for layer in layers)

    def checkpoint_path(self, layers: list[str]) -> pathlib.Path:
        """Where the checkpoint of a run over ``layers`` is kept."""
        return self.folder / f"topk-run-{key_digest(self._run_keys(layers))}.partial.pt"

    def load_checkpoint(self, layers: list[str], parse: Callable[[dict], T] | None = None
                        ) -> T | None:
        """The checkpoint of an unfinished run over ``layers`` (as saved, or ``parse``-d as for
        :meth:`load_layer`), or ``None``."""
        path = self.checkpoint_path(layers)
        state = safe_load(path)
        if state is None or state.get("keys") != self._run_keys(layers):
            return None
        state = _unsealed(path, state)
        return None if state is None else _parsed(path, parse or _raw, state)

    def save_checkpoint(self, layers: list[str], state: dict) -> None:
        """Keep ``state`` (plain data) as the checkpoint of the run over ``layers``."""
        atomic_save(_sealed({**state, "format": FORMAT_VERSION, "keys": self._run_keys(layers)}),
                    self.checkpoint_path(layers), what=self.what)

    def drop_checkpoint(self, layers: list[str]) -> None:
        """Remove the checkpoint of the run over ``layers`` (it finished). A checkpoint that
        cannot be removed is left: its layers are cached now, so it is never read again."""
        with contextlib.suppress(OSError):
            self.checkpoint_path(layers).unlink()
