"""Training a small network here, in seconds: the runs behind the paper's Figs. 4 and 6.

Zeiler & Fergus watched features form over 70 epochs of ImageNet training (Fig. 4) and compared
first layers of stride 4 and stride 2, with and without feature scale clipping (Fig. 6). No
ImageNet training fits in a notebook, but :class:`~zfwidgets.models.ZFNetSmall` (64 x 64
inputs) trains on the offline photos in seconds, so those comparisons can be real experiments
instead of pictures of random filters. This module holds what they need:

* :func:`photo_task`: the offline task, each image of the sample collection labelled by the
  photo it was cut from, as tensors at the network's input size, with a held-out split
  stratified by photo;
* :func:`train_job` / :func:`train`: Adam on the cross-entropy, random horizontal flips and
  shifts, the paper's feature scale clipping after every step (optional), the held-out accuracy
  after every epoch and copies of the weights at chosen epochs (a
  :class:`~zfwidgets.backend.jobs.Job`: one step per epoch, with a progress bar).

Deterministic: shuffling, augmentation and dropout draw from random state seeded by ``seed``,
and torch's global random state is left as it was (each epoch runs under
``torch.random.fork_rng`` with the run's own state). The same seed gives the same run with the
same number of torch threads; another thread count changes float sums in their last bits, which
training amplifies, so results of two thread counts agree only statistically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import BadParameterError, DataError
from ...models.zfnet import SMALL_PREPROCESSING, feature_scale_clipping
from ..jobs import Job, Step

__all__ = ["EpochRecord", "PhotoTask", "TrainingRun", "photo_task", "stratified_split",
           "train", "train_job"]


@dataclass
class PhotoTask:
    """Images as tensors, their labels and a held-out split.

    Attributes
    ----------
    x : torch.Tensor
        ``[N, 3, H, W]`` the images, preprocessed for the network.
    y : torch.Tensor
        ``[N]`` class ids (int64).
    classes : list of str
        Class names, index = class id.
    names : list of str
        Each image's name in its source.
    train, test : torch.Tensor
        Indices (int64) of the training and the held-out images.
    source : ImageSource
        Where the images come from (index ``i`` is ``x[i]``).
    """

    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    classes: list[str]
    names: list[str] = field(repr=False)
    train: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    source: object = field(default=None, repr=False)

    def images(self, which: str = "test"):
        """The training (``"train"``) or held-out (``"test"``) images as an
        :class:`~zfwidgets.ImageList` with their names, e.g. to mine or probe them."""
        from ...data.datasets import ImageList

        if which not in ("train", "test"):
            raise BadParameterError(f"which must be 'train' or 'test', got {which!r}")
        idx = (self.train if which == "train" else self.test).tolist()
        return ImageList([self.source.load(i) for i in idx], names=[self.names[i] for i in idx])

    @property
    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the held-out images."""
        return self.x[self.test], self.y[self.test]

    @property
    def training(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the training images."""
        return self.x[self.train], self.y[self.train]

    @property
    def chance(self) -> float:
        """Held-out accuracy of always answering the most frequent held-out class."""
        counts = torch.bincount(self.y[self.test], minlength=len(self.classes))
        return float(counts.max()) / max(1, len(self.test))

    def __repr__(self) -> str:
        return (f"PhotoTask({len(self.y)} images of {len(self.classes)} classes, input "
                f"{tuple(self.x.shape[1:])}, {len(self.train)} training / {len(self.test)} "
                "held out)")


def stratified_split(labels: Sequence[int], held_out: float = 1 / 3, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a training and a held-out set, the same fraction of every class held out.

    Parameters
    ----------
    labels : sequence of int
        Class id of each item.
    held_out : float
        Fraction of each class held out, in (0, 1): ``round(held_out * n)`` of a class of ``n``
        items, at least one when ``n >= 2``, never all of them.
    seed : int
        Seeds the choice.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Sorted int64 indices of the training and the held-out items.

    Raises
    ------
    BadParameterError
        ``held_out`` outside (0, 1).
    """
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) \
            or not 0 < held_out < 1:
        raise BadParameterError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    y = torch.as_tensor(labels, dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed))
    train, test = [], []
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n = len(members)
        k = min(n - 1, max(1 if n >= 2 else 0, round(held_out * n)))
        test.append(members[:k])
        train.append(members[k:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


def photo_task(source=None, preprocessing=None, *, held_out: float = 1 / 3, seed: int = 0,
               label: Callable[[str], str] | None = None) -> PhotoTask:
    """The offline classification task: which photo is this image cut from?

    Parameters
    ----------
    source : ImageSource, optional
        Default :func:`zfwidgets.sample_collection` (every sample photo whole and cut into
        crops: 345 images of 19 photos with scikit-learn installed).
    preprocessing : Preprocessing, optional
        How an image becomes the input; default ZFNetSmall's (64 x 64).
    held_out : float
        Fraction of each class held out (:func:`stratified_split`).
    seed : int
        Seeds the split.
    label : callable, optional
        Image name -> class name; default the name's first word (the photo a sample
        collection's crop comes from: ``"chelsea 1/2 crop r0 c1"`` -> ``"chelsea"``).

    Returns
    -------
    PhotoTask

    Raises
    ------
    DataError
        The source holds no image, or fewer than two classes.
    """
    from ...data.datasets import as_source

    src = as_source(source)
    prep = SMALL_PREPROCESSING if preprocessing is None else preprocessing
    name_to_class = label or (lambda name: name.split(" ", 1)[0])
    names = [src.name(i) for i in range(len(src))]
    if not names:
        raise DataError("the image source holds no image")
    photos = [name_to_class(n) for n in names]
    classes = sorted(set(photos))
    if len(classes) < 2:
        raise DataError(f"a classification task needs two classes or more, got {classes}")
    y = torch.tensor([classes.index(p) for p in photos], dtype=torch.int64)
    x = torch.cat([prep(src.load(i)) for i in range(len(src))])
    train_idx, test_idx = stratified_split(y.tolist(), held_out, seed)
    return PhotoTask(x, y, classes, names, train_idx, test_idx, src)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a training run.

    Attributes
    ----------
    epoch : int
        1 for the first epoch.
    loss : float
        Mean training cross-entropy over the epoch's batches.
    train_accuracy : float
        Fraction of the epoch's (augmented) training images classified right while training.
    held_out_accuracy : float or None
        Accuracy on the held-out images after the epoch (``None`` without them).
    renormalized : int
        Filters rescaled by feature scale clipping during the epoch (0 without clipping).
    seconds : float
        Wall time of the epoch.
    """

    epoch: int
    loss: float
    train_accuracy: float
    held_out_accuracy: float | None
    renormalized: int
    seconds: float


@dataclass
class TrainingRun:
    """A finished training run.

    Attributes
    ----------
    model : torch.nn.Module
        The trained network (the one passed in, in the ``training`` mode it had).
    epochs : list of EpochRecord
    snapshots : dict of str to dict
        ``"epoch k"`` -> a copy of the state dict after epoch ``k`` (``"epoch 0"``: before
        training), for the epochs asked for, in order.
    start_accuracy : float or None
        Held-out accuracy before training.
    settings : dict
        The run's settings (epochs, lr, batch size, clipping radius, flips, shift, seed).
    """

    model: nn.Module = field(repr=False)
    epochs: list[EpochRecord]
    snapshots: dict[str, dict] = field(repr=False)
    start_accuracy: float | None
    settings: dict

    @property
    def held_out_accuracy(self) -> float | None:
        """Held-out accuracy after the last epoch."""
        return self.epochs[-1].held_out_accuracy if self.epochs else self.start_accuracy

    @property
    def renormalized(self) -> int:
        """Filters rescaled by feature scale clipping over the whole run."""
        return sum(e.renormalized for e in self.epochs)

    @property
    def seconds(self) -> float:
        """Wall time of all epochs."""
        return sum(e.seconds for e in self.epochs)

    def curve(self) -> np.ndarray:
        """``[epochs + 1]`` held-out accuracy before training and after each epoch."""
        return np.array([self.start_accuracy] + [e.held_out_accuracy for e in self.epochs],
                        dtype=float)


def _check(name: str, value, *, integer: bool = False, zero: bool = False):
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero):
        what = "a non-negative" if zero else "a positive"
        raise BadParameterError(f"{name} must be {what} {'integer' if integer else 'number'}, "
                                f"got {value!r}")
    return int(value) if integer else float(value)


def _check_data(x, y, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise BadParameterError(f"{what} images must be a float tensor [N, C, H, W], got "
                                f"{getattr(x, 'shape', type(x).__name__)}")
    y = torch.as_tensor(y)
    if y.dim() != 1 or len(y) != len(x) or y.is_floating_point() or y.dtype == torch.bool:
        raise BadParameterError(f"{what} labels must be {len(x)} integer class ids, got "
                                f"{tuple(y.shape)} {y.dtype}")
    if len(x) == 0:
        raise BadParameterError(f"no {what} images")
    if int(y.min()) < 0:
        raise BadParameterError(f"{what} labels must be class ids >= 0, got {int(y.min())}")
    return x, y.to(torch.int64)


def _snapshot_epochs(snapshots: Iterable[int], epochs: int) -> list[int]:
    keep = []
    for e in snapshots:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 0 <= e <= epochs:
            raise BadParameterError(f"snapshot epochs must be integers in 0..{epochs}, got {e!r}")
        keep.append(int(e))
    return sorted(set(keep))


def train_job(model: nn.Module, x: torch.Tensor, y, *, held_out=None, epochs: int = 20,
              lr: float = 3e-3, batch_size: int = 32, clip: float | None = 0.1,
              flip: bool = True, shift: int = 4, seed: int = 0,
              snapshots: Iterable[int] = ()) -> Job[TrainingRun]:
    """The training run of :func:`train` as a :class:`~zfwidgets.backend.jobs.Job`, not started.

    Parameters are those of :func:`train` (checked here, before any epoch). The job yields one
    :class:`~zfwidgets.backend.jobs.Step` per epoch, whose ``partial`` is the
    :class:`EpochRecord`, and returns the :class:`TrainingRun`.

    Returns
    -------
    Job of TrainingRun
    """
    if not isinstance(model, nn.Module):
        raise BadParameterError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x, y = _check_data(x, y, "training")
    test = None if held_out is None else _check_data(*held_out, "held-out")
    settings = dict(epochs=_check("epochs", epochs, integer=True), lr=_check("lr", lr),
                    batch_size=_check("batch_size", batch_size, integer=True),
                    clip=None if clip is None else _check("clip", clip), flip=bool(flip),
                    shift=_check("shift", shift, integer=True, zero=True), seed=int(seed))
    keep = _snapshot_epochs(snapshots, settings["epochs"])
    return Job(_train_steps(model, x, y, test, settings, keep), what="training", unit="epoch")


def _accuracy(model: nn.Module, data) -> float | None:
    if data is None:
        return None
    x, y = data
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            right = sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum())
                        for i in range(0, len(x), 256))
    finally:
        model.train(was)
    return right / len(x)


def _augment(xb: torch.Tensor, gen: torch.Generator, flip: bool, shift: int) -> torch.Tensor:
    """Random horizontal flips (each image) and one random shift of the batch (reflected
    borders)."""
    if flip:
        flips = (torch.rand(len(xb), generator=gen) < 0.5).to(xb.device)
        xb = torch.where(flips.view(-1, 1, 1, 1), xb.flip(3), xb)
    if shift:
        h, w = xb.shape[2:]
        dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=gen).tolist()
        xb = F.pad(xb, (shift, shift, shift, shift), mode="reflect")[:, :, dy:dy + h, dx:dx + w]
    return xb


def _state_copy(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _train_steps(model, x, y, test, settings, keep):
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, y = x.to(device), y.to(device)
    if test is not None:
        test = (test[0].to(device), test[1].to(device))
    epochs, bs, clip = settings["epochs"], settings["batch_size"], settings["clip"]
    gen = torch.Generator().manual_seed(settings["seed"])
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):       # dropout's state, seeded, kept apart
        torch.manual_seed(settings["seed"])
        rng = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices])
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    was_training = model.training
    snaps = {"epoch 0": _state_copy(model)} if 0 in keep else {}
    start = _accuracy(model, test)
    records: list[EpochRecord] = []
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=devices):
                torch.set_rng_state(rng[0])
                for d, state in zip(devices, rng[1]):
                    torch.cuda.set_rng_state(state, d)
                model.train()
                loss_sum, right, clipped = 0.0, 0, 0
                order = torch.randperm(len(x), generator=gen).to(device)
                for begin in range(0, len(x), bs):
                    idx = order[begin:begin + bs]
                    out = model(_augment(x[idx], gen, settings["flip"], settings["shift"]))
                    if epoch == 1 and begin == 0 and int(y.max()) >= out.shape[1]:
                        raise BadParameterError(f"labels go up to {int(y.max())} but the model "
                                                f"has {out.shape[1]} outputs")
                    loss = F.cross_entropy(out, y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if clip is not None:
                        clipped += feature_scale_clipping(model, clip)
                    loss_sum += float(loss.detach()) * len(idx)
                    right += int((out.argmax(1) == y[idx]).sum())
                rng = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices])
            record = EpochRecord(epoch, loss_sum / len(x), right / len(x),
                                 _accuracy(model, test), clipped, time.perf_counter() - t0)
            records.append(record)
            if epoch in keep:
                snaps[f"epoch {epoch}"] = _state_copy(model)
            note = f"loss {record.loss:.2f}" + ("" if record.held_out_accuracy is None else
                                                f", held out {record.held_out_accuracy:.0%}")
            yield Step(epoch, epochs, note=note, partial=record)
    finally:
        model.train(was_training)
    return TrainingRun(model, records, snaps, start, dict(settings))


def train(model: nn.Module, x: torch.Tensor, y, *, held_out=None, epochs: int = 20,
          lr: float = 3e-3, batch_size: int = 32, clip: float | None = 0.1, flip: bool = True,
          shift: int = 4, seed: int = 0, snapshots: Iterable[int] = (), progress: bool = True,
          on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainingRun:
    """Train a classifier in place: Adam, flips and shifts, feature scale clipping.

    Each epoch goes once over the training images in a random order, in batches; each batch is
    augmented (a random horizontal flip of each image, one random shift of up to ``shift``
    pixels for the batch, borders reflected), the cross-entropy goes down one Adam step, and,
    with ``clip``, every convolution filter whose RMS exceeds ``clip`` is scaled back to it
    (:func:`~zfwidgets.models.feature_scale_clipping`, the paper's trick). After each epoch the
    network is evaluated (eval mode) on ``held_out``.

    The paper trained with SGD (learning rate 10^-2, momentum 0.9); on a few hundred images
    and a few seconds Adam trains this small network more reliably.

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place (its ``training`` flag is restored at the end).
    x : torch.Tensor
        ``[N, C, H, W]`` training images, preprocessed.
    y : sequence or tensor of int
        ``[N]`` class ids.
    held_out : (torch.Tensor, labels), optional
        Images and labels to measure the accuracy on after every epoch.
    epochs : int
        Passes over the training images.
    lr : float
        Adam's learning rate.
    batch_size : int
        Images per step.
    clip : float or None
        Feature scale clipping radius (the paper's 0.1), ``None`` for none.
    flip : bool
        Random horizontal flips.
    shift : int
        Largest random shift in pixels (0: none).
    seed : int
        Seeds the order, the augmentation and dropout.
    snapshots : iterable of int
        Epochs after which to keep a copy of the weights (0: before training).
    progress : bool
        Show a ``tqdm.auto`` progress bar (one tick per epoch).
    on_epoch : callable, optional
        Called with each :class:`EpochRecord`.

    Returns
    -------
    TrainingRun

    Raises
    ------
    BadParameterError
        Bad shapes or labels (negative, or beyond the model's outputs), a non-positive
        ``epochs``/``lr``/``batch_size``/``clip``, a negative ``shift``, snapshot epochs outside
        ``0..epochs``.
    """
    job = train_job(model, x, y, held_out=held_out, epochs=epochs, lr=lr,
                    batch_size=batch_size, clip=clip, flip=flip, shift=shift, seed=seed,
                    snapshots=snapshots)
    report = None if on_epoch is None else (lambda step: on_epoch(step.partial))
    return job.run(progress=progress, on_step=report)
