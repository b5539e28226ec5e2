"""Gradient ascent on the input: the picture a class, or a feature map, likes best.

The course material beside the paper: start from a gray (or any) image and repeatedly move it
along the gradient of a class score or of a feature map's activation. Plain ascent gives
high-frequency noise that the network scores highly but nobody can read; a little *blur* every
few steps, *decay* of the pixels towards the mean, and *clipping* to valid colours keep the result
looking like an image.

One step, in the model's normalized input space ``x``::

    g = d objective / d x                     (autograd; the model's parameters get no .grad)
    x = x + lr * g / mean(|g|)                (a step of fixed average size)
    x = x * (1 - decay)                       (pull towards the mean colour, 0)
    every blur_every steps: x = gaussian_blur(x, blur_sigma)
    x = clip(x, valid pixel range)

with a random shift of up to ``jitter`` pixels applied before the forward pass and undone after
(so no single pixel grid is favoured).

The ascent is a job (:mod:`zfwidgets.backend.jobs`): :func:`ascent_job` gives the generator of
steps (a widget's background runner advances it), :func:`ascent` runs it to the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import BadParameterError, OutOfRangeError
from ...models import class_name
from ..jobs import Job, Step
from ...models.registry import pick_logits
from ..small_work import small_work_threads
from ..layers import layouts_of, resolve_layer, run_captured, scoped_eval
from ..ops import RECTIFIER_MODULES
from ..targets import resolve_classes

__all__ = ["AscentResult", "AscentState", "ascent", "ascent_job", "gaussian_blur"]


@dataclass
class AscentResult:
    """What :func:`ascent` produced.

    Attributes
    ----------
    image : numpy.ndarray
        ``[H, W, 3]`` the final input as displayable RGB in ``[0, 1]``.
    input : torch.Tensor
        ``[1, 3, H, W]`` the final input in the model's normalized space.
    objective : str
        What was maximized, in words.
    history : numpy.ndarray
        ``[steps + 1]`` objective value before each step and after the last.
    prob : float or None
        Probability of the target class at the end (class objectives).
    target : int or None
        Class id (class objectives).
    layer, channel : str or None, int or None
        Feature-map objective.
    settings : dict
        ``steps``, ``lr``, ``decay``, ``blur_every``, ``blur_sigma``, ``jitter``, ``seed``,
        ``start``.
    """

    image: np.ndarray
    input: torch.Tensor = field(repr=False)
    objective: str
    history: np.ndarray
    prob: float | None = None
    target: int | None = None
    layer: str | None = None
    channel: int | None = None
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AscentState:
    """Where an ascent stands after one step: the ``partial`` of its job's
    :class:`~zfwidgets.backend.jobs.Step`.

    Attributes
    ----------
    objective : float
        The objective's value at the input the step started from (``AscentResult.history``).
    input : torch.Tensor
        ``[1, 3, H, W]`` the input after the step, in the model's normalized space (never
        changed in place afterwards).
    """

    objective: float
    input: torch.Tensor = field(repr=False)


@dataclass(frozen=True)
class _Goal:
    """What one ascent maximizes: a class logit (``target``) or a feature map's mean."""

    text: str
    target: int | None = None
    layer: str | None = None
    channel: int | None = None
    pre: bool = False           # climb the rectifier's input, not its output

def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-d Gaussian of standard deviation ``sigma`` pixels, radius ``ceil(3 sigma)``, sum 1."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every channel of ``x`` ``[N, C, H, W]`` with a Gaussian of ``sigma`` pixels
    (separable; borders reflect). ``sigma <= 0`` returns ``x`` unchanged."""
    if sigma <= 0:
        return x
    k = gaussian_kernel(sigma).to(dtype=x.dtype, device=x.device)
    r = (k.numel() - 1) // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _positive(name: str, value, integer: bool = False, zero: bool = False):
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero):
        need = "a non-negative" if zero else "a positive"
        raise BadParameterError(f"{name} must be {need} {'integer' if integer else 'number'}, "
                                f"got {value!r}")
    return int(value) if integer else float(value)


def _resolve_class(session, target) -> int:
    classes = resolve_classes(session, target)
    if len(classes) != 1:
        raise BadParameterError(f"ascent maximizes one class score, got {len(classes)} classes")
    return classes[0]


def ascent(session, target: int | str | None = None, *, layer: str | None = None,
           channel: int | None = None, steps: int = 100, lr: float = 0.02,
           decay: float = 0.002, blur_every: int = 4, blur_sigma: float = 0.5,
           jitter: int = 4, start: str | torch.Tensor | None = None, seed: int = 0,
           progress: bool = True, on_step: Callable[[int, float], None] | None = None,
           should_stop: Callable[[], bool] | None = None) -> AscentResult:
    """Gradient ascent on the input of ``session``'s model, with blur, decay and clipping.

    Parameters
    ----------
    session : Session
        Gives the model, its preprocessing (valid pixel range, input size) and labels.
    target : int or str, optional
        Class to maximize (its logit, the unnormalized score), by id or exact label. Default:
        the top class of the session's image. Ignored when ``layer`` is given.
    layer : str, optional
        Maximize a feature map of this layer instead of a class. For a rectifier layer (ReLU,
        ReLU6, ...) its *input* is maximized: a unit that is off or saturated has no gradient,
        so ascent on the rectified output would not move from a gray start.
    channel : int, optional
        With ``layer``: the feature map, whose mean activation is maximized (default: the
        layer's strongest channel on the session's image).
    steps : int
        Ascent steps.
    lr : float
        Step size: the mean absolute change of the normalized input per step.
    decay : float
        Fraction by which the input shrinks towards the mean colour each step (L2 decay).
    blur_every : int
        Blur every this many steps (0: never).
    blur_sigma : float
        Standard deviation of the blur in pixels.
    jitter : int
        Largest random shift in pixels per step (0: none).
    start : {"gray", "noise", "image"} or torch.Tensor, optional
        The first input: the mean colour, the mean plus Gaussian noise (standard deviation 0.5
        in normalized units, about 0.11 of the colour range), the session's image, or a
        ``[1, 3, H, W]`` normalized tensor. Default: ``"gray"`` for a class, ``"noise"`` for a
        feature map (on a uniform gray input many maps are uniformly off or saturated, and
        their gradient is zero).
    seed : int
        Seeds the noise and the jitter (results are reproducible).
    progress : bool
        Show a ``tqdm.auto`` progress bar.
    on_step : callable, optional
        Called as ``on_step(step, objective)`` after every step (a widget's progress).
    should_stop : callable, optional
        Checked before every step; returning true raises :class:`~zfwidgets.Cancelled`.

    Returns
    -------
    AscentResult

    Raises
    ------
    BadParameterError
        A non-positive ``steps``/``lr``/``blur_sigma``, a negative ``decay``/``jitter``/
        ``blur_every``, an unknown ``start``, or ``channel`` without ``layer``.
    OutOfRangeError
        Unknown class or channel.
    UnknownLayerError
        Unknown ``layer``.
    Cancelled
        ``should_stop`` asked to stop.
    """
    job = ascent_job(session, target, layer=layer, channel=channel, steps=steps, lr=lr,
                     decay=decay, blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter,
                     start=start, seed=seed)
    report = None if on_step is None else \
        (lambda step: on_step(step.done, step.partial.objective))
    return job.run(progress=progress, on_step=report, should_stop=should_stop)


def ascent_job(session, target: int | str | None = None, *, layer: str | None = None,
               channel: int | None = None, steps: int = 100, lr: float = 0.02,
               decay: float = 0.002, blur_every: int = 4, blur_sigma: float = 0.5,
               jitter: int = 4, start: str | torch.Tensor | None = None,
               seed: int = 0) -> Job[AscentResult]:
    """The ascent of :func:`ascent` as a :class:`~zfwidgets.backend.jobs.Job`, not yet started.

    Parameters are those of :func:`ascent` (checked here, before any step). The job yields one
    :class:`~zfwidgets.backend.jobs.Step` per ascent step, whose ``partial`` is an
    :class:`AscentState` (the objective and the current input, to draw while it runs), and
    returns the :class:`AscentResult`. Between two steps the model is left as it was (its
    module flags are set to eval only during a step).

    Returns
    -------
    Job of AscentResult
        ``job.run(...)`` runs it to the end; ``job.step()`` advances it by one step.
    """
    settings = dict(steps=_positive("steps", steps, integer=True), lr=_positive("lr", lr),
                    decay=_positive("decay", decay, zero=True),
                    blur_every=_positive("blur_every", blur_every, integer=True, zero=True),
                    blur_sigma=_positive("blur_sigma", blur_sigma),
                    jitter=_positive("jitter", jitter, integer=True, zero=True), seed=int(seed))
    if settings["decay"] >= 1:
        raise BadParameterError(f"decay must be below 1, got {settings['decay']}")
    if channel is not None and layer is None:
        raise BadParameterError("channel needs a layer (ascent(session, layer=..., channel=...))")
    goal = _goal(session, target, layer, channel)
    if start is None:
        start = "noise" if layer is not None else "gray"
    gen = torch.Generator().manual_seed(settings["seed"])
    x = _start(session, start, gen)
    settings["start"] = start if isinstance(start, str) else "tensor"
    return Job(_ascent_steps(session, goal, x, gen, settings), what=f"ascent: {goal.text}",
               unit="step")


def _goal(session, target, layer: str | None, channel) -> _Goal:
    """Check what to maximize and say it in words."""
    if layer is None:
        target = int(session.probabilities().argmax()) if target is None else \
            _resolve_class(session, target)
        return _Goal(f"score of class {target} ({class_name(session.labels, target)})",
                     target=target)
    info = session.layer_info(layer)
    if channel is None:
        channel = session.strongest_channel(layer)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) \
            or not 0 <= int(channel) < info.shape[0]:
        raise OutOfRangeError(f"channel {channel!r} is out of range for layer {layer!r} "
                              f"({info.shape[0]} channels: 0..{info.shape[0] - 1})")
    module, _ = resolve_layer(session.model, layer, session.layers)
    # a rectified unit that is off (0) or saturated (ReLU6 at 6) has no gradient: climb the
    # rectifier's input (the pre-activation) instead of its output
    pre = isinstance(module, RECTIFIER_MODULES)
    text = f"mean of {layer} channel {int(channel)}" + \
        (f" (its input, before the {type(module).__name__})" if pre else "")
    return _Goal(text, layer=layer, channel=int(channel), pre=pre)


def _start(session, start, gen: torch.Generator) -> torch.Tensor:
    """The first input, in the model's normalized space."""
    x0 = session.input_tensor
    if isinstance(start, torch.Tensor):
        if start.shape != x0.shape:
            raise BadParameterError(f"start tensor must have the input's shape "
                                    f"{list(x0.shape)}, got {list(start.shape)}")
        return start.detach().to(x0).clone()
    if start == "gray":
        return torch.zeros_like(x0)
    if start == "noise":
        return (0.5 * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)).to(x0.device)
    if start == "image":
        return x0.detach().clone()
    raise BadParameterError(f"start must be 'gray', 'noise', 'image' or a tensor, got {start!r}")


def _logits(session, inp: torch.Tensor) -> torch.Tensor:
    return pick_logits(session.model(inp), session.entry.output)


def _value(session, goal: _Goal, inp: torch.Tensor) -> torch.Tensor:
    """The objective at ``inp`` (a scalar tensor, differentiable)."""
    if goal.layer is None:
        return _logits(session, inp)[0, goal.target]
    found: dict[str, torch.Tensor] = {}
    run_captured(session.model, inp, [goal.layer], found.__setitem__, known=session.layers,
                 inputs=goal.pre, layouts=layouts_of(session, [goal.layer]))
    return found[goal.layer][:, goal.channel].mean()


def _ascent_steps(session, goal: _Goal, x: torch.Tensor, gen: torch.Generator,
                  settings: dict) -> Generator[Step, None, AscentResult]:
    """The ascent loop: one :class:`Step` per update, the :class:`AscentResult` at the end."""
    model, prep = session.model, session.preprocessing
    steps, lr, decay, jitter = (settings[k] for k in ("steps", "lr", "decay", "jitter"))
    blur_every, blur_sigma = settings["blur_every"], settings["blur_sigma"]
    mean = torch.as_tensor(prep.mean, dtype=x.dtype).view(1, -1, 1, 1).to(x.device)
    std = torch.as_tensor(prep.std, dtype=x.dtype).view(1, -1, 1, 1).to(x.device)
    low, high = (0 - mean) / std, (1 - mean) / std
    history = []
    for step in range(steps):
        dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist()
                  if jitter else (0, 0))
        # the thread count that suits this model's passes over one image (..small_work); the
        # scope closes before the yield, so whoever drives the job gets its own count back
        with small_work_threads(model, x):
            with scoped_eval(model), torch.enable_grad():
                xs = torch.roll(x, (dy, dx), dims=(2, 3)).requires_grad_(True)
                obj = _value(session, goal, xs)
                (grad,) = torch.autograd.grad(obj, xs)
            history.append(float(obj.detach()))
            grad = torch.roll(grad, (-dy, -dx), dims=(2, 3))
            with torch.no_grad():
                x = x + lr * grad / grad.abs().mean().clamp(min=1e-12)
                x = x * (1 - decay)
                if blur_every and (step + 1) % blur_every == 0:
                    x = gaussian_blur(x, blur_sigma)
                x = torch.maximum(torch.minimum(x, high), low)
        yield Step(step + 1, steps, note=f"objective {history[-1]:.3g}",
                   partial=AscentState(history[-1], x))
    prob = None
    with scoped_eval(model), torch.no_grad():
        if goal.target is None:
            history.append(float(_value(session, goal, x)))
        else:  # one forward pass for the last score and the probability
            out = _logits(session, x)
            history.append(float(out[0, goal.target]))
            prob = float(torch.softmax(out.float(), 1)[0, goal.target])
    image = prep.to_rgb(x)[0].permute(1, 2, 0)
    return AscentResult(image=image.cpu().numpy(), input=x.detach(), objective=goal.text,
                        history=np.asarray(history), prob=prob, target=goal.target,
                        layer=goal.layer, channel=goal.channel, settings=settings)
