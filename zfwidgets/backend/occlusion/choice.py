"""How ``method="auto"`` chooses between the incremental engine and plain forward passes.

Both methods are exact, so a sweep may switch between them from one batch to the next; which
is faster depends on the model and the input. The engine recomputes only the windows an
occluder changes, but pays for gathering them and for many small calls. A model that mixes
every position early (a squeeze-and-excitation block multiplies each map by a factor computed
from the whole image, so the first one makes every later map differ everywhere), or a small
input on which the windows soon cover each map, leaves it little or nothing to save: on
EfficientNet-B0 it is then slower than the plain loop.

An automatic sweep therefore starts with a short timed probe on its own first positions (no
position is computed twice): two batches through the engine, then two of plain passes, and goes
on with whichever was faster per position in its second batch (the engine by at least 5 %: a
close call goes to plain passes). Only the second batches are timed: a first batch of each pays
one-time costs, oneDNN's set-up of every new shape (about as much as a small model's whole
batch) and the engine's pass over the unoccluded image. Each timed batch follows one of its own
method, the state its own sweep runs in (a batch right after another method's pays for the
memory that one let go). A sweep shorter than six probe batches runs plain passes.

The engine's own batch is larger than the probe's (see ``sweep._engine_batch``): larger batches
amortize its per-call work on most models (AlexNet at 128 px: 10.0 ms per position at 16, 4.5
at 64, where plain passes took 7.2), but where it falls back to dense maps
(squeeze-and-excitation, DenseNet's concatenations) they make large tensors that are slower per
position. Where the sweep has the positions, the probe therefore times a third engine batch at
that size, and the engine is judged (and goes on) at whichever of its two sizes was faster.

Plain passes on the CPU come in two layouts: the model as it is (its weights as they are, the
batch channels-last) and its channels-last twin (:mod:`.twin`: the same tensors but
channels-last 4-d weights, never a change to the user's model). Which is faster depends on the
model (ShuffleNet at 128 px: the twin 0.87x; EfficientNet-B0 at 224 px: 1.11x), so where a
model may have a twin and the sweep has the positions, the probe ends with two batches on the
twin (the first untimed; skipped when the engine took under half plain passes' time, which no
layout would make up), and plain passes go on in the faster layout (the twin by at least 5 %).

The choice (method, the engine's batch, the layout) is remembered per model, input shape,
occluder size and stride, so the next sweep (another image, another occluder colour) starts
with it and probes nothing; :class:`MacCounter` and the engine count the multiply-adds it
needed, which the reason states.

The reason ends up on the result (``OcclusionResult.method_note``), e.g. (AlexNet at 128 px)
``"auto: incremental, incremental 4.5 ms per position at batches of 64 (10.0 ms at 16) vs plain
7.2 ms (7.1 ms with channels-last weights) in a timed probe on 160 of the sweep's positions;
the windows needed 80% of a full forward's multiply-adds"``.
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
    twin: bool = False            # plain passes on the channels-last twin


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
    twin_ok : bool
        Whether plain passes may run on the model's channels-last twin (:mod:`.twin`); the
        probe then times that layout too.

    Attributes
    ----------
    method : str or None
        The chosen method, ``None`` while probing.
    twin : bool
        Whether plain passes run on the channels-last twin.
    reason : str
        Why.

    Notes
    -----
    :meth:`next` names the batch's method ``"incremental"``, ``"plain"`` or ``"twin"`` (plain
    passes on the twin); :meth:`record` takes the same names.
    """

    def __init__(self, model, x: torch.Tensor, size: int, stride: int, method: str,
                 batch: dict[str, int], total: int, engine_ok: str | None,
                 full_macs: int = 0, twin_ok: bool = False):
        self.batch = dict(batch)
        self.twin = False
        self.full_macs = int(full_macs)
        self._model = model
        self._key = (tuple(x.shape), x.dtype, str(x.device), int(size), int(stride))
        self._timings: dict[str, tuple[int, float, int]] = {}
        self._probe: list[tuple[str, int, str | None]] = []   # see _probe_plan
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
                self.method, self.twin = memo.method, memo.twin
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
                else:
                    self._probe = _probe_plan(n, self.batch["incremental"], total, twin_ok)

    @property
    def probing(self) -> bool:
        """Whether the next batches are the probe's."""
        return self.method is None

    def next(self, remaining: int) -> tuple[str, int]:
        """``(method, positions)`` of the next batch, ``remaining`` positions being left."""
        if self.method is None:
            method, n, _ = self._probe[0]
            return method, max(1, min(n, remaining))
        n = max(1, min(self.batch[self.method], remaining))
        return ("twin" if self.twin and self.method == "plain" else self.method), n

    def record(self, method: str, positions: int, seconds: float, macs_saved: int = 0,
               setup_seconds: float = 0.0, fell_back: bool = False) -> None:
        """The batch just run: ``positions`` by ``method`` in ``seconds`` of wall time
        (``macs_saved``: the engine's count; ``setup_seconds``: what it spent on unoccluded
        values, not counted); decides once the probe's last batch is in.

        ``fell_back``: the engine failed on this model and the batch ran plainly; the sweep
        goes on with plain passes.
        """
        if fell_back:
            self.method, self.twin = "plain", False
            self.reason = "plain, since the incremental engine failed on this model"
            self._probe = []
            return
        if self.method is not None or not self._probe:
            return
        _, _, key = self._probe.pop(0)
        if key is not None:
            self._timings[key] = (positions, max(seconds - setup_seconds, 0.0), macs_saved)
        if key == "plain" and self._engine_far_ahead():
            self._probe = []                  # no layout of plain passes would catch up
        if not self._probe:
            self._decide()

    def _engine_far_ahead(self) -> bool:
        """Whether the engine took under half plain passes' time per position in the probe
        (the twin's layout, which changed plain passes by 0.87x-1.11x on the zoo, would not
        change the verdict: its batches are then skipped)."""
        per = [t / n for k, (n, t, _) in self._timings.items() if k.startswith("incremental")]
        n_p, t_p, _ = self._timings["plain"]
        return bool(per) and min(per) < 0.5 * t_p / n_p

    def _decide(self) -> None:
        timings = self._timings
        per = {k: t / n for k, (n, t, _) in timings.items()}
        n_i, _, saved = timings["incremental"]
        per_i, engine_said = per["incremental"], ""
        if "incremental@big" in per:        # the engine at its own batch as well
            big = timings["incremental@big"][0]
            if per["incremental@big"] < per_i:
                per_i, (n_i, _, saved) = per["incremental@big"], timings["incremental@big"]
                engine_said = (f" at batches of {big} ({per['incremental'] * 1e3:.1f} ms at "
                               f"{timings['incremental'][0]})")
            else:
                self.batch["incremental"] = timings["incremental"][0]
                engine_said = f" ({per['incremental@big'] * 1e3:.1f} ms at batches of {big})"
        per_p, twin_said = per["plain"], ""
        if "twin" in per:
            twin_said = f" ({per['twin'] * 1e3:.1f} ms with channels-last weights)"
            # a close call keeps the model as it is (no second copy of its weights in use)
            if per["twin"] < _MARGIN * per_p:
                self.twin, per_p = True, per["twin"]
                twin_said = (f" with channels-last weights ({per['plain'] * 1e3:.1f} ms with "
                             "its own)")
        # the engine must win clearly: a close call goes to plain passes, which the promise
        # "never slower than the plain loop" is about
        self.method = "incremental" if per_i < _MARGIN * per_p else "plain"
        if self.method != "plain":
            self.twin = False
        share = ""
        if self.full_macs > 0:
            need = max(0.0, 1.0 - saved / (n_i * self.full_macs))
            share = f"; the windows needed {need:.0%} of a full forward's multiply-adds"
        probed = 2 * sum(n for k, (n, _, _) in timings.items() if k != "incremental@big") + \
            (timings["incremental@big"][0] if "incremental@big" in timings else 0)
        detail = (f"incremental {per_i * 1e3:.1f} ms per position{engine_said} vs plain "
                  f"{per_p * 1e3:.1f} ms{twin_said} in a timed probe on {probed} of the "
                  f"sweep's positions{share}")
        self.reason = f"auto: {self.method}, {detail}"
        batch = self.batch["incremental"] if self.method == "incremental" else None
        _CHOSEN.setdefault(self._model, {})[self._key] = _Memo(self.method, detail, batch,
                                                               twin=self.twin)


def _probe_plan(n: int, big: int, total: int, twin_ok: bool) -> list[tuple[str, int, str | None]]:
    """The probe's batches ``(method, positions, timing key or None: untimed)``: each method's
    timed batches right after an untimed one of its own (the state its own sweep runs in: a
    batch right after another method's pays for the memory that one let go); the engine at its
    own batch ``big`` too, and plain passes on the twin, where the sweep has the positions."""
    plan = [("incremental", n, None), ("incremental", n, "incremental")]
    if big > n and total >= 4 * n + big:
        plan.append(("incremental", big, "incremental@big"))
    plan += [("plain", n, None), ("plain", n, "plain")]
    if twin_ok and total >= sum(k for _, k, _ in plan) + 2 * n:
        plan += [("twin", n, None), ("twin", n, "twin")]
    return plan
