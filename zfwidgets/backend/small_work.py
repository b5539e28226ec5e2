"""How many torch threads a pass over one image (or a few) gets, chosen per model by timing.

Under ``OMP_WAIT_POLICY=PASSIVE`` (what :func:`zfwidgets.threads.thread_env` gives the
explorer's kernel and the test suite) an idle OpenMP thread sleeps, and every parallel region
wakes it again. A pass over one image is a chain of operations whose size depends on the model:
measured on the 2-core machine in a two-thread passive process, a forward of EfficientNet-Lite0
(many small depthwise and 1x1 convolutions) took 19 ms on one thread and 28-34 ms on two, while
AlexNet (few large convolutions) took 27 ms on one and 21 ms on two, VGG16 350 ms and 195 ms.
The work of the pass counts as much as the model: Lite0 on 1, 2, 3, 4 and 9 images took
18, 40, 61, 82 and 231 ms on one thread and 28, 46, 58, 75 and 150 ms on two (so a gallery's
nine crops want both threads where one click's single crop wants one).
So the count is measured, not assumed: the first time a model runs a pass of a given size in a
process, :func:`small_work_count` times a few plain forwards of that very input on one thread
and on the process's count, alternately, and keeps the faster for that model and that amount of
work (the pixels of the batch, to the nearest power of two, with the channel count, dtype and
thread count); a first forward slower than :data:`CALIBRATION_LIMIT_S` is work enough for every
thread and is not timed further. What the choices already measured imply is not timed at all:
less work than some that wanted one thread wants one, more than some that wanted every thread
wants every thread.

Nothing changes where OpenMP threads spin (its default; :func:`zfwidgets.threads.passive_openmp`
is false), where torch already runs one thread, or on a GPU. Results do not depend on the
count beyond float rounding.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import weakref

import torch
from torch import nn

from ..threads import passive_openmp, using_threads

__all__ = ["CALIBRATION_LIMIT_S", "ROUNDS", "small_work_count", "small_work_threads"]

#: a first forward slower than this is made of operations large enough for every thread; the
#: calibration stops there (it would cost four more such forwards) and keeps the process's count
#: (measured: Lite0 on 3 images, 58-61 ms, is about where both counts take as long)
CALIBRATION_LIMIT_S = 0.075
#: timed forwards per thread count (the fastest of each is compared)
ROUNDS = 2

_choices: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> {key: count}
_lock = threading.Lock()


def _key(x: torch.Tensor, threads: int) -> tuple:
    """The amount of work of a pass over ``x``: its pixels (all items, to the nearest power of
    two), channels and dtype, with the thread count it would otherwise run on."""
    pixels = max(1, x.numel() // x.shape[1] if x.dim() > 1 and x.shape[1] else x.numel())
    return round(math.log2(pixels)), tuple(x.shape[1:2]), x.dtype, threads


def _timed(model: nn.Module, x: torch.Tensor, threads: int) -> float:
    with using_threads(threads):
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def _calibrate(model: nn.Module, x: torch.Tensor, threads: int) -> int:
    """The faster of one thread and ``threads`` for plain forwards of ``x`` (eval mode, no
    gradient; the model's flags are restored)."""
    from .layers import scoped_eval        # layers imports this module

    x = x.detach()
    try:
        with torch.no_grad(), scoped_eval(model):
            first = _timed(model, x, threads)      # also the warm-up
            if first > CALIBRATION_LIMIT_S:
                return threads
            one, many = [], []
            for _ in range(ROUNDS):
                one.append(_timed(model, x, 1))
                many.append(_timed(model, x, threads))
    except Exception:  # noqa: BLE001  the real pass that follows raises its own, clear error
        return threads
    return 1 if min(one) < min(many) else threads


def small_work_count(model: nn.Module, x: torch.Tensor) -> int:
    """torch's thread count for a pass of ``model`` over ``x`` (one image, or a few).

    Parameters
    ----------
    model : nn.Module
        Run in eval mode for the calibration (its flags are restored; no gradient).
    x : torch.Tensor
        The input of the pass (``[N, C, H, W]``: the images or crops it runs on, all of them;
        the calibration runs on it).

    Returns
    -------
    int
        1 or the calling thread's current count: the count itself where OpenMP threads spin,
        on a GPU, or when it is 1 already; else the faster of the two for this model and this
        amount of work (the batch's pixels to the nearest power of two, its channels, dtype and
        the count), measured once per process (a few forwards) and remembered, unless the
        model's measured choices imply it (less work than one that wanted one thread, more
        than one that wanted all).
    """
    threads = torch.get_num_threads()
    if threads == 1 or x.device.type != "cpu" or not passive_openmp():
        return threads
    key = _key(x, threads)
    with _lock:
        choices = _choices.get(model, {})
        known = choices.get(key)
        if known is None:
            known = _implied(choices, key)
    if known is None:
        known = _calibrate(model, x, threads)
    with _lock:
        _choices.setdefault(model, {})[key] = known
    return known


def _implied(choices: dict, key: tuple) -> int | None:
    """The count that the model's measured choices already imply for ``key``, or ``None``: no
    more work than some that ran faster on one thread runs on one too, and no less work than
    some that ran faster on every thread runs on every thread (so a click's crop, less work
    than the image the session measured, is not timed again)."""
    work, rest = key[0], key[1:]
    for (other, *same), count in choices.items():
        if tuple(same) == rest and (work <= other if count == 1 else work >= other):
            return count
    return None


def small_work_threads(model: nn.Module, x: torch.Tensor):
    """A context for one image's forward and backward passes of ``model``: runs them on
    :func:`small_work_count` threads, restoring the count after.

    The count is the calling thread's own (OpenMP keeps one per thread), so a block on a
    widget's worker thread does not change the main thread's.

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor
        See :func:`small_work_count`.

    Returns
    -------
    context manager
    """
    count = small_work_count(model, x)
    return contextlib.nullcontext() if count == torch.get_num_threads() else using_threads(count)
