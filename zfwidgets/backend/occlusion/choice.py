"""How ``method="auto"`` chooses between the incremental engine and plain forward passes.

Both methods are exact, so a sweep may switch between them from one batch to the next; which
is faster depends on the model and the input. The engine recomputes only the windows an
occluder changes, but pays for gathering them and for many small calls. A model that mixes
every position early (a squeeze-and-excitation block multiplies each map by a factor computed
from the whole image, so the first one makes every later map differ everywhere), or a small
input on which the windows soon cover each map, leaves it little or nothing to save: on
EfficientNet-B0 it is then slower than the plain loop.

An automatic sweep therefore starts with a short timed probe on its own first positions (no
position is computed twice): a batch through the engine, a batch of plain passes, and again one
of each, and goes on with whichever was faster per position in its second batch (the engine by
at least 5 %: a close call goes to plain passes). Only the second batches are timed: a first
batch of each pays one-time costs, oneDNN's set-up of every new shape (about as much as a small
model's whole batch) and the engine's pass over the unoccluded image. A sweep shorter than six
probe batches runs plain passes. When the engine wins and its batch is larger than the probe's
(see ``sweep._engine_batch``), its first large batch is timed too: larger batches amortize the
engine's per-call work on most models (ResNet-18, AlexNet, EfficientNet-Lite0), but where it
falls back to dense maps (squeeze-and-excitation, DenseNet's concatenations) they make large
tensors that are slower per position, so the sweep goes back to the probe's batch unless the
large one was faster per position. The choice (method and batch) is remembered per model, input
shape, occluder size and stride, so the next sweep (another image, another occluder colour)
starts with it and probes nothing; :class:`MacCounter` and the engine count the multiply-adds
it needed, which the reason states.

The reason ends up on the result (``OcclusionResult.method_note``), e.g. ``"auto: incremental,
incremental 6.8 ms per position vs plain 20.8 ms in a timed probe on 64 of the sweep's
positions; the windows needed 66% of a full forward's multiply-adds"``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from ..ops import call_arg

__all__ = ["Chooser", "MacCounter", "forget_choices"]

_CONVS = {torch.conv2d}
_LINEARS = {torch.nn.functional.linear}

#: The engine is chosen only when its probe time per position is below this share of plain's.
_MARGIN = 0.95
# model -> {(input shape, dtype, device, size, stride): _Memo}; forgotten with the model
_CHOSEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class MacCounter(TorchFunctionMode):
    """Counts the multiply-adds of the 2-d convolutions and linear layers run inside it, and
    notes the largest convolution output.

    Attributes
    ----------
    macs : int
        Multiply-adds so far.
    largest : int
        Bytes of the largest convolution output per image (batch dimension divided out).
    """

    def __init__(self):
        super().__init__()
        self.macs = 0
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONVS or func in _LINEARS:
            weight = call_arg(args, kwargs, 1, "weight")
            if isinstance(out, torch.Tensor) and isinstance(weight, torch.Tensor):
                per_output = weight[0].numel() if func in _CONVS else weight.shape[-1]
                self.macs += out.numel() * int(per_output)
                if func in _CONVS and out.dim() == 4 and out.shape[0] > 0:
                    per_image = out.numel() // out.shape[0] * out.element_size()
                    self.largest = max(self.largest, per_image)
        return out


@dataclass
class _Memo:
    method: str
    reason: str
    batch: int | None = None      # the engine's batch, when the sweep chose it


def forget_choices() -> None:
    """Forget every remembered choice (the next automatic sweep of each model probes again)."""
    _CHOSEN.clear()


class Chooser:
    """Which method runs the next batch of a sweep, and why.

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor
        The unoccluded input.
    size, stride : int
        Occluder side and step (part of what a remembered choice is remembered for).
    method : {"auto", "incremental", "plain"}
        What was asked for; only ``"auto"`` probes.
    batch : dict of str to int
        Positions per batch of each method.
    total : int
        Positions the sweep computes.
    engine_ok : str or None
        ``None`` when the engine may run, else why it may not (the reason for plain passes).
    full_macs : int
        Multiply-adds of one plain forward pass (for the reason's saving figure).

    Attributes
    ----------
    method : str or None
        The chosen method, ``None`` while probing.
    reason : str
        Why.
    """

    def __init__(self, model, x: torch.Tensor, size: int, stride: int, method: str,
                 batch: dict[str, int], total: int, engine_ok: str | None,
                 full_macs: int = 0):
        self.batch = dict(batch)
        self.full_macs = int(full_macs)
        self._model = model
        self._key = (tuple(x.shape), x.dtype, str(x.device), int(size), int(stride))
        self._timings: dict[str, tuple[int, float, int]] = {}
        self._probe: list[tuple[str, int, bool]] = []
        self._trial: tuple[int, float] | None = None   # (probe batch, its s per position)
        self.method: str | None = None
        self.reason = ""
        if method != "auto":
            self.method, self.reason = method, f"{method}, as asked"
            if method == "incremental" and engine_ok is not None:
                self.reason += f" (although {engine_ok})"
        elif engine_ok is not None:
            self.method, self.reason = "plain", f"auto: plain, since {engine_ok}"
        else:
            memo = _CHOSEN.get(model, {}).get(self._key)
            if memo is not None:
                self.method = memo.method
                if memo.batch is not None:
                    self.batch["incremental"] = memo.batch
                self.reason = (f"auto: {memo.method}, remembered from an earlier sweep of this "
                               f"model at this input size ({memo.reason})")
            else:
                n = min(batch["plain"], batch["incremental"])
                if total < 6 * n:
                    self.method = "plain"
                    self.reason = (f"auto: plain, {total} positions are too few to time both "
                                   f"methods on batches of {n} (no earlier sweep to go by)")
                else:  # each method twice; the second batches are timed
                    self._probe = [("incremental", n, False), ("plain", n, False),
                                   ("incremental", n, True), ("plain", n, True)]

    @property
    def probing(self) -> bool:
        """Whether the next batches are the probe's."""
        return self.method is None

    def next(self, remaining: int) -> tuple[str, int]:
        """``(method, positions)`` of the next batch, ``remaining`` positions being left."""
        if self.method is None:
            method, n, _ = self._probe[0]
            return method, max(1, min(n, remaining))
        return self.method, max(1, min(self.batch[self.method], remaining))

    def record(self, method: str, positions: int, seconds: float, macs_saved: int = 0,
               setup_seconds: float = 0.0, fell_back: bool = False) -> None:
        """The batch just run: ``positions`` by ``method`` in ``seconds`` of wall time
        (``macs_saved``: the engine's count; ``setup_seconds``: what it spent on unoccluded
        values, not counted); decides once both probe batches are in.

        ``fell_back``: the engine failed on this model and the batch ran plainly; the sweep
        goes on with plain passes.
        """
        if fell_back:
            self.method = "plain"
            self.reason = "plain, since the incremental engine failed on this model"
            self._probe, self._trial = [], None
            return
        if self._trial is not None and method == "incremental":
            self._end_trial(positions, max(seconds - setup_seconds, 0.0))
            return
        if self.method is not None or not self._probe:
            return
        _, _, timed = self._probe.pop(0)
        if timed:
            self._timings[method] = (positions, max(seconds - setup_seconds, 0.0), macs_saved)
        if not self._probe:
            self._decide()

    def _decide(self) -> None:
        n_p, t_p, _ = self._timings["plain"]
        n_i, t_i, saved = self._timings["incremental"]
        per_p, per_i = t_p / n_p, t_i / n_i
        # the engine must win clearly: a close call goes to plain passes, which the promise
        # "never slower than the plain loop" is about
        self.method = "incremental" if per_i < _MARGIN * per_p else "plain"
        share = ""
        if self.full_macs > 0:
            need = max(0.0, 1.0 - saved / (n_i * self.full_macs))
            share = f"; the windows needed {need:.0%} of a full forward's multiply-adds"
        detail = (f"incremental {per_i * 1e3:.1f} ms per position vs plain {per_p * 1e3:.1f} ms "
                  f"in a timed probe on {2 * (n_p + n_i)} of the sweep's positions{share}")
        self.reason = f"auto: {self.method}, {detail}"
        _CHOSEN.setdefault(self._model, {})[self._key] = _Memo(self.method, detail)
        if self.method == "incremental" and self.batch["incremental"] > n_i:
            self._trial = (n_i, per_i)        # time the engine's first large batch too

    def _end_trial(self, positions: int, seconds: float) -> None:
        """The engine's first batch at its large size was timed: keep that size if it was
        faster per position than the probe's batch, else go back to the probe's."""
        small, per_small = self._trial
        self._trial = None
        big = self.batch["incremental"]
        if positions < big:                   # the sweep's last, short batch: nothing learnt
            return
        per_big = seconds / positions
        if per_big >= per_small:
            self.batch["incremental"] = small
        kept = self.batch["incremental"]
        said = (f"; batches of {kept} ({per_big * 1e3:.1f} ms per position at {big} vs "
                f"{per_small * 1e3:.1f} ms at {small})")
        self.reason += said
        memo = _CHOSEN.get(self._model, {}).get(self._key)
        if memo is not None:
            memo.batch, memo.reason = kept, memo.reason + said
