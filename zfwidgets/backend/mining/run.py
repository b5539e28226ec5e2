"""A mining run: stream a data set once through a :class:`Miner`, as a :class:`Job`.

:func:`mine_job` plans a run (checks the arguments, fingerprints the model, preprocessing and
data) and returns it as a :class:`~zfwidgets.backend.jobs.Job` that yields one
:class:`~zfwidgets.backend.jobs.Step` per batch; :func:`mine` runs that job to the end (progress
bar, callback). Images are loaded and preprocessed ahead of the model, by a few threads (on a
CPU) or DataLoader worker processes with pinned batches (feeding a GPU); one forward pass per
batch serves every requested layer, and unreadable items are skipped and counted.

With a cache folder (:class:`~zfwidgets.backend.mining.store.MiningStore`) layers already mined
are read back instead of recomputed, a long run writes a checkpoint every ``checkpoint_every``
seconds (and when it is interrupted or closed), and a rerun resumes from it to the same result
as one clean run, bit for bit: the checkpoint records the run's batch size and the resume uses
it, so the rest of the data goes through the model in the same batches. Another batch size, or
another number of torch threads, gives values that may differ in the last float bits (a
convolution's reduction order depends on both: measured on EfficientNet-Lite0 up to 9.3e-6
for batch 1 vs 4 and 1.7e-5 for 1 vs 2 threads), so hits can differ only where two candidates
lie within that rounding of each other. The checkpoint records the thread count too; a resume
with another one warns (``torch.set_num_threads`` makes it bit-identical).

The cache folder is checked before the run starts (a full disk, a read-only or unwritable
folder, a file in its place: :class:`~zfwidgets.errors.StorageError`). Should the disk fill up
during the run, the run goes on and warns: a checkpoint or a finished layer that cannot be
written is lost, never the result being computed.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...data.datasets import ImageSource, as_source
from ...errors import (BadImageError, BadParameterError, DataError, StorageError,
                       UnknownLayerError, check_choice)
from ..defaults import mining_layers
from ..jobs import Job, Step
from ..layers import layouts_of
from .results import LayerTopK, MiningResult, Tally, session_model_id
from .store import MiningStore
from .topk import Miner, check_k, check_per_image

__all__ = ["CPU_BATCH_BYTES", "LOADERS", "MiningRun", "load_batches", "mine", "mine_job",
           "mining_batch_size"]

ProgressCallback = Callable[[int, int, int], None]

#: On a CPU, keep each activation tensor of a batch under this size (glibc's largest mmap
#: threshold: a bigger block is mapped fresh, and page-faulted in again, on every batch).
CPU_BATCH_BYTES = 32 << 20


def mining_batch_size(session) -> int:
    """Images per forward pass when mining with ``session``: 64 on a GPU; on a CPU, as many as
    keep the model's largest activation under 32 MB (between 1 and 32).

    On a CPU larger batches are slower per image, not faster, once a layer's output passes that
    size: EfficientNet-Lite0 at 224 x 224 (largest activation 4.8 MB per image, so batch 6)
    measured 41-44 images/s at batch 1-4, 35 at batch 8-16 and 18-20 at batch 32-64 on the
    2-core development machine.
    """
    if session.device.type == "cuda":
        return 64
    itemsize = session.input_tensor.element_size()
    largest = max((int(np.prod(info.shape)) * itemsize for info in session.layer_table()),
                  default=0)
    return int(min(32, max(1, CPU_BATCH_BYTES // max(1, largest))))


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1) - 1))


# ============================================================================ data loading

def _prepare(source: ImageSource, preprocessing, index: int):
    try:
        return index, preprocessing(source.load(index))[0], None
    except BadImageError as exc:
        return index, None, str(exc)


def _collate(prepared: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """``(ids, batch, skipped)`` of prepared items: the readable ones' ids and their tensors
    stacked (``None`` when there is none), and ``(id, reason)`` of the others."""
    good = [(i, x) for i, x, err in prepared if err is None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, [(i, err) for i, _, err in prepared if err is not None]


class _Prepared(torch.utils.data.Dataset):
    """``ids`` of a source, loaded and preprocessed, as a map-style dataset (for worker
    processes: what it holds is pickled when they are spawned)."""

    def __init__(self, source: ImageSource, preprocessing, ids: Sequence[int]):
        self.source, self.preprocessing, self.ids = source, preprocessing, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, j: int):
        return _prepare(self.source, self.preprocessing, self.ids[j])


#: How images are loaded: in threads of this process, or in DataLoader worker processes.
LOADERS = ("auto", "threads", "processes")


def load_batches(source: ImageSource, preprocessing, ids: Sequence[int], start: int,
                 batch_size: int, workers: int, *, processes: bool = False,
                 pin_memory: bool = False) -> Iterator[tuple[int, tuple]]:
    """Load and preprocess ``ids[start:]`` batch by batch, ``workers`` ahead of the model.

    ``processes``: in ``workers`` DataLoader worker processes (decoding beside the model
    without the GIL; what a GPU is fed by), the batch stacked there and, with
    ``pin_memory``, copied to page-locked memory for an asynchronous transfer; else in
    ``workers`` threads of this process (0: in the caller's thread).

    Yields
    ------
    (int, tuple)
        ``end``, the position after the batch, and the batch as :func:`_collate` makes it:
        ``(ids, tensor or None, [(id, reason), ...])``.
    """
    spans = ((p, min(p + batch_size, len(ids))) for p in range(start, len(ids), batch_size))
    if processes and workers > 0:
        loader = torch.utils.data.DataLoader(
            _Prepared(source, preprocessing, ids[start:]), batch_size=batch_size,
            num_workers=workers, collate_fn=_collate, pin_memory=pin_memory, prefetch_factor=2)
        end = start
        for batch in loader:
            end = min(end + batch_size, len(ids))
            yield end, batch
        return
    if workers <= 0:
        for lo, hi in spans:
            yield hi, _collate([_prepare(source, preprocessing, ids[j]) for j in range(lo, hi)])
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zfwidgets-mine")
    pending: deque = deque()
    todo = iter(spans)
    try:
        while True:
            while len(pending) < 2:  # keep two batches in flight ahead of the model
                span = next(todo, None)
                if span is None:
                    break
                lo, hi = span
                pending.append((hi, [pool.submit(_prepare, source, preprocessing, ids[j])
                                     for j in range(lo, hi)]))
            if not pending:
                return
            hi, futures = pending.popleft()
            yield hi, _collate([f.result() for f in futures])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ============================================================================ cache files

def _check_table(top: LayerTopK, layer: str, shape: tuple[int, int, int], k: int) -> None:
    """Raise ``ValueError`` unless ``top`` is a ``k``-slot table of ``layer`` with ``shape``."""
    if top.layer != layer:
        raise ValueError(f"it holds layer {top.layer!r}, not {layer!r}")
    if tuple(top.shape) != tuple(shape):
        raise ValueError(f"its shape {top.shape} is not the layer's {tuple(shape)}")
    for name, dtype in (("values", torch.float32), ("image", torch.int64), ("y", torch.int64),
                        ("x", torch.int64)):
        t = getattr(top, name)
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != (shape[0], k):
            raise ValueError(f"{name!r} is not a [{shape[0]}, {k}] {dtype} tensor")


def _layer_parser(layer: str, shape: tuple[int, int, int], k: int):
    """Parse a finished layer's cache file into ``(LayerTopK, Tally)``, checking its content."""
    def parse(state: dict) -> tuple[LayerTopK, Tally]:
        top = LayerTopK.from_state(state["layer"])
        _check_table(top, layer, shape, k)
        return top, Tally.from_state(state["counters"])
    return parse


def _is_count(value, low: int, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (
        high is None or value <= high)


def _checkpoint_parser(shapes: dict[str, tuple[int, int, int]], k: int, total: int):
    """Parse a checkpoint into ``(next, batch size, threads, miner snapshot, Tally)`` (batch
    size and threads ``None`` when not recorded), checking that it fits the run (its layers,
    their shapes, ``k``, a position inside the data)."""
    def parse(state: dict):
        position, batch = state["next"], state.get("batch_size")
        threads = state.get("threads")
        if not _is_count(position, 0, total):
            raise ValueError(f"'next' = {position!r} is not a position in 0..{total}")
        for name, value in (("batch_size", batch), ("threads", threads)):
            if value is not None and not _is_count(value, 1):
                raise ValueError(f"{name!r} = {value!r} is not a positive integer")
        states, saved = state["states"], state["shapes"]
        if not (set(states) <= set(saved) <= set(shapes)):
            raise ValueError(f"its layers {sorted(saved)} are not the run's")
        for layer, shape in saved.items():
            if tuple(int(v) for v in shape) != shapes[layer]:
                raise ValueError(f"layer {layer!r} has shape {shape}, not {shapes[layer]}")
        for layer, state_tensors in states.items():
            c = shapes[layer][0]
            if len(state_tensors) != 4:
                raise ValueError(f"the state of layer {layer!r} has {len(state_tensors)} parts")
            values, pre, image, pos = state_tensors
            kinds = ((values, torch.float32), (pre, torch.float32), (image, torch.int64),
                     (pos, torch.int64))
            for t, dtype in kinds:
                if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != 2 or \
                        t.shape[0] != c or t.shape[1] > k or t.shape != values.shape:
                    raise ValueError(f"the state of layer {layer!r} is not [{c}, <={k}] "
                                     "tensors (values, pre-activations, images, positions)")
        snapshot = {"states": states, "shapes": saved}
        return position, batch, threads, snapshot, Tally.from_state(state)
    return parse


# ============================================================================ the run

def _check_layers(session, layers) -> list[str]:
    if layers is None:
        layers = mining_layers(session)
    elif isinstance(layers, str):
        layers = [layers]
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise BadParameterError("no layers to mine")
    known = session.layers
    for layer in layers:
        if layer not in known:
            raise UnknownLayerError(layer, known)
    return layers


def _check_loader(loader: str, session) -> str:
    """``"threads"`` or ``"processes"``: ``"auto"`` is processes when the model is on a GPU
    (decoding in worker processes, pinned batches), threads on a CPU (where worker processes
    would compete with the model for the same cores and cost their start-up)."""
    loader = check_choice("loader", loader, LOADERS)
    if loader != "auto":
        return loader
    device = getattr(session, "device", None)
    return "processes" if device is not None and device.type == "cuda" else "threads"


def _check_shard(shard) -> tuple[int, int] | None:
    if shard is None:
        return None
    rank, world = (int(v) for v in shard)
    if world < 1 or not 0 <= rank < world:
        raise BadParameterError(f"shard must be (rank, world_size) with 0 <= rank < "
                                f"world_size, got {shard!r}")
    return rank, world


@dataclass
class MiningRun:
    """One mining pass, planned: what to mine, over which data, how, and where it is cached.

    Build it with :meth:`plan` (which checks the arguments); :meth:`job` runs it.

    Attributes
    ----------
    session : Session
    source : ImageSource
    layers : list of str
    k : int
    per_image : int or None
    batch_size : int
    workers : int
        Image-loading threads or processes (0: in the caller's thread).
    loader : {"threads", "processes"}
        Where images are loaded (see :func:`load_batches`).
    shard : (int, int) or None
    checkpoint_every : float
        Seconds between checkpoints (with a store).
    model, preprocessing : str
        Model id and preprocessing fingerprint the result records.
    data : str or None
        Data fingerprint.
    store : MiningStore or None
        The cache folder.
    tally : Tally
        Images mined and items skipped so far (updated as the run goes).
    """

    session: Any
    source: ImageSource
    layers: list[str]
    k: int
    per_image: int | None
    batch_size: int
    workers: int
    shard: tuple[int, int] | None
    checkpoint_every: float
    model: str
    preprocessing: str
    data: str | None
    store: MiningStore | None = None
    tally: Tally = field(default_factory=Tally)
    loader: str = "threads"

    @classmethod
    def plan(cls, session, images: Any = None, layers: str | Sequence[str] | None = None,
             k: int = 9, per_image: int | None = 1, *, batch_size: int | None = None,
             cache_dir: str | os.PathLike | None = None, shard: tuple[int, int] | None = None,
             workers: int | None = None, checkpoint_every: float = 60.0,
             loader: str = "auto") -> MiningRun:
        """Check the arguments of :func:`mine` and plan the run (nothing is mined yet)."""
        source = as_source(images)
        if len(source) == 0:
            raise DataError(f"{source!r} holds no images")
        layers = _check_layers(session, layers)
        k, per_image, shard = check_k(k), check_per_image(per_image), _check_shard(shard)
        if batch_size is None:
            batch_size = mining_batch_size(session)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise BadParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        run = cls(session=session, source=source, layers=layers, k=k, per_image=per_image,
                  batch_size=int(batch_size),
                  workers=_default_workers() if workers is None else max(0, int(workers)),
                  shard=shard, checkpoint_every=float(checkpoint_every),
                  model=session_model_id(session),
                  preprocessing=session.preprocessing.fingerprint(), data=source.fingerprint(),
                  loader=_check_loader(loader, session))
        if cache_dir is not None and run.data is None:
            warnings.warn(f"{source!r} has no fingerprint, so results are not cached on disk; "
                          "give DatasetSource(dataset, fingerprint=...) one", stacklevel=3)
        elif cache_dir is not None:
            run.store = MiningStore(cache_dir, model=run.model, k=k, per_image=per_image,
                                    preprocessing=run.preprocessing, data=run.data, shard=shard)
            run.store.check()  # a full disk or a read-only folder: say so before any work
        return run

    @property
    def ids(self) -> range:
        """The global image ids this run mines (its shard's)."""
        n = len(self.source)
        return range(self.shard[0], n, self.shard[1]) if self.shard else range(n)

    @property
    def what(self) -> str:
        """What the run does, for progress bars."""
        return f"mining {self.layers[0]}" if len(self.layers) == 1 else \
            f"mining {len(self.layers)} layers"

    def job(self) -> Job[MiningResult]:
        """The run as a :class:`~zfwidgets.backend.jobs.Job`: one step per batch."""
        return Job(self.steps(), what=self.what, unit="img")

    def steps(self) -> Generator[Step, None, MiningResult]:
        """The run as a generator of steps (cached layers are read, the others mined in one
        pass); returns the :class:`MiningResult`."""
        found: dict[str, LayerTopK] = {}
        if self.store is not None:
            for layer in self.layers:
                shape = tuple(self.session.layer_info(layer).shape)
                hit = self.store.load_layer(layer, _layer_parser(layer, shape, self.k))
                if hit is not None:
                    found[layer], self.tally = hit
        todo = [layer for layer in self.layers if layer not in found]
        if todo:
            found.update((yield from self._stream(todo)))
        else:
            seen = self.tally.n_images + self.tally.n_skipped
            yield Step(seen, seen, note=self._note())
        return MiningResult(layers={layer: found[layer] for layer in self.layers}, k=self.k,
                            per_image=self.per_image, n_images=self.tally.n_images,
                            n_skipped=self.tally.n_skipped, skipped=list(self.tally.skipped),
                            source=self.source, source_spec=self.source.spec(),
                            model=self.model, preprocessing=self.preprocessing, data=self.data,
                            shard=self.shard)

    def _note(self) -> str:
        return f"{self.tally.n_skipped} skipped" if self.tally.n_skipped else ""

    @property
    def _device(self) -> torch.device:
        return getattr(self.session, "device", None) or torch.device("cpu")

    def _stream(self, layers: list[str]) -> Generator[Step, None, dict[str, LayerTopK]]:
        """One pass over the data for ``layers``, with checkpoints and, at the end, files."""
        miner = Miner(self.session.model, layers, self.k, self.per_image, self.session.layers,
                      layouts_of(self.session, layers))
        position = self._resume(miner, layers)
        saved_at, last_save, total = position, time.monotonic(), len(self.ids)

        failed: list[StorageError] = []

        def checkpoint() -> None:
            try:
                self.store.save_checkpoint(layers, {"next": position,
                                                    "batch_size": self.batch_size,
                                                    "threads": torch.get_num_threads(),
                                                    **miner.snapshot(), **self.tally.to_state()})
            except StorageError as exc:  # the disk filled up during the run: go on without
                if not failed:
                    warnings.warn(f"{exc}; mining goes on without a checkpoint", stacklevel=4)
                failed.append(exc)

        try:
            processes = self.loader == "processes"
            with contextlib.closing(load_batches(
                    self.source, self.session.preprocessing, self.ids, position,
                    self.batch_size, self.workers, processes=processes,
                    pin_memory=processes and self._device.type == "cuda")) as batches:
                for end, prepared in batches:
                    self._feed(miner, prepared)
                    position = end
                    yield Step(position, total, note=self._note())
                    if self.store is not None and position < total and \
                            time.monotonic() - last_save >= self.checkpoint_every:
                        checkpoint()
                        saved_at, last_save = position, time.monotonic()
        except BaseException:  # an error, an interrupt or a closed job: keep what was done
            if self.store is not None and position > saved_at:
                with contextlib.suppress(Exception):
                    checkpoint()
            raise
        if not miner.shapes:  # no readable image at all: shapes from one blank pass
            h, w = self.session.preprocessing.size
            miner.learn_shapes(torch.zeros(1, 3, h, w, device=self._device))
        results = miner.result()
        if self.store is not None:
            try:
                self.store.save_layers({layer: results[layer].to_state() for layer in layers},
                                       self.tally.to_state())
            except StorageError as exc:
                warnings.warn(f"{exc}; the result is returned but not cached", stacklevel=3)
            else:
                self.store.drop_checkpoint(layers)
        return results

    def _resume(self, miner: Miner, layers: list[str]) -> int:
        """Start afresh, or from the store's checkpoint: the position to go on from. A resumed
        run takes the checkpoint's batch size, so that it feeds the model the same batches as
        the interrupted run would have (bit-identical values)."""
        self.tally = Tally()
        if self.store is None:
            return 0
        shapes = {layer: tuple(self.session.layer_info(layer).shape) for layer in layers}
        parsed = self.store.load_checkpoint(layers, _checkpoint_parser(shapes, self.k,
                                                                        len(self.ids)))
        if parsed is None:
            return 0
        position, batch_size, threads, snapshot, self.tally = parsed
        miner.restore(snapshot)
        if batch_size is not None:
            self.batch_size = batch_size
        if threads is not None and threads != torch.get_num_threads():
            warnings.warn(f"resuming a mining run checkpointed with {threads} torch thread(s) "
                          f"with {torch.get_num_threads()}: values may differ from an "
                          "uninterrupted run in the last float bits (torch.set_num_threads("
                          f"{threads}) makes the resume bit-identical)", stacklevel=4)
        return position

    def _feed(self, miner: Miner, prepared: tuple) -> None:
        ids, batch, skipped = prepared
        if batch is not None:       # pinned memory (on a GPU): the copy overlaps the next load
            miner.update(batch.to(self._device, non_blocking=batch.is_pinned()), ids)
        self.tally.add(len(ids), [(i, self.source.name(i), err) for i, err in skipped])


# ============================================================================ entry points

def mine_job(session, images: Any = None, layers: str | Sequence[str] | None = None,
             k: int = 9, per_image: int | None = 1, *, batch_size: int | None = None,
             cache_dir: str | os.PathLike | None = None, shard: tuple[int, int] | None = None,
             workers: int | None = None, checkpoint_every: float = 60.0,
             loader: str = "auto") -> Job[MiningResult]:
    """:func:`mine` as a :class:`~zfwidgets.backend.jobs.Job`: one step per batch.

    Each :class:`~zfwidgets.backend.jobs.Step` counts images (``done`` of ``total``; a resumed
    run starts above 0) and notes the items skipped so far (``"3 skipped"``). ``job.run()``
    returns the :class:`MiningResult`; a caller on an event loop (a widget) calls
    ``job.step()`` between other work. Closing the job early keeps a checkpoint (with
    ``cache_dir``). Arguments as for :func:`mine`; they are checked now, before any step.
    """
    return MiningRun.plan(session, images, layers, k, per_image, batch_size=batch_size,
                          cache_dir=cache_dir, shard=shard, workers=workers,
                          checkpoint_every=checkpoint_every, loader=loader).job()


def mine(session, images: Any = None, layers: str | Sequence[str] | None = None, k: int = 9,
         per_image: int | None = 1, *, batch_size: int | None = None,
         cache_dir: str | os.PathLike | None = None,
         progress: bool = True, shard: tuple[int, int] | None = None, workers: int | None = None,
         checkpoint_every: float = 60.0, on_progress: ProgressCallback | None = None,
         loader: str = "auto") -> MiningResult:
    """Stream a data set once and keep, per channel of each layer, the ``k`` strongest hits.

    Parameters
    ----------
    session : Session
        Gives the model, its preprocessing and its layer ids.
    images : None, folder path, list of images, torch Dataset or ImageSource
        See :func:`zfwidgets.data.as_source`; ``None`` is the offline sample collection.
    layers : str or sequence of str, optional
        Layer ids; default :func:`~zfwidgets.backend.defaults.mining_layers`.
    k : int
        Hits kept per channel.
    per_image : int or None
        At most this many hits per image and channel (1: the image's strongest position, as in
        the paper); ``None``: no limit.
    batch_size : int, optional
        Images per forward pass; default :func:`mining_batch_size` for the session's device.
        Values may depend on it in the last float bits (and so the order of two hits within
        that rounding of each other); a resumed run uses its checkpoint's batch size, so it is
        bit-identical to an uninterrupted one.
    cache_dir : path, optional
        Where results and checkpoints are kept (checked for writing before the run starts).
        ``None``: no disk cache.
    progress : bool
        Show a ``tqdm.auto`` progress bar (images/s, skipped count).
    shard : (rank, world_size), optional
        Mine only items ``rank, rank + world_size, ...`` (ids stay global); merge the shards
        with :func:`~zfwidgets.merge`.
    workers : int, optional
        Threads (or processes) that load and preprocess images ahead of the model (0: in the
        main thread).
    checkpoint_every : float
        Seconds between checkpoints of a run (with ``cache_dir``).
    on_progress : callable, optional
        ``on_progress(done, total, skipped)`` after every batch (for widgets).
    loader : {"auto", "threads", "processes"}
        Where images are decoded: ``"processes"``, in ``workers`` DataLoader worker
        processes, the batches stacked there and, for a model on a GPU, in pinned memory
        copied asynchronously; ``"threads"``, in threads of this process; ``"auto"``
        (default): processes on a GPU, threads on a CPU. The result is the same either way.

    Returns
    -------
    MiningResult

    See Also
    --------
    mine_job : the same as a job, one step per batch (for event loops).

    Raises
    ------
    UnknownLayerError
        A layer id is not one of the session's.
    BadParameterError
        Bad ``k``, ``per_image``, ``batch_size`` or ``shard``.
    DataError
        ``images`` cannot be used as a collection of images.
    StorageError
        ``cache_dir`` cannot be written (a full disk, read-only, no permission, a file).
    """
    run = MiningRun.plan(session, images, layers, k, per_image, batch_size=batch_size,
                         cache_dir=cache_dir, shard=shard, workers=workers,
                         checkpoint_every=checkpoint_every, loader=loader)
    report = None if on_progress is None else \
        (lambda step: on_progress(step.done, step.total, run.tally.n_skipped))
    return run.job().run(progress=progress, on_step=report)
