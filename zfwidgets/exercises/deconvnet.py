"""The deconvnet's two exercises: unpooling with switches, and the rectifier's backward rules.

* :func:`check_unpooling`: ``fn(signal, switches, input_size) -> [H, W]`` puts each value of
  the pooled ``signal`` back at its switch (the flat index ``row * W + column`` of the maximum
  its window picked, as ``F.max_pool2d(..., return_indices=True)`` gives it), zeros elsewhere;
  where overlapping windows picked the same maximum, their values add up. Reference: the
  gradient of ``F.max_pool2d``, which is how zfwidgets' projections unpool
  (:mod:`zfwidgets.backend.rules`).
* :func:`check_guided_rule`: ``fn(grad, forward_input) -> grad_in`` is what a ReLU passes down
  under guided backprop (or, with ``rule=``, under the deconvnet or the plain gradient).
  Reference: zfwidgets' :class:`~zfwidgets.backend.rules.RuleMode` around ``F.relu``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..backend.rules import RuleMode, check_rule
from .verdict import Case, Verdict, run_cases

__all__ = ["check_guided_rule", "check_unpooling", "reference_rule", "reference_unpooling"]


# ============================================================================ unpooling

def reference_unpooling(signal: torch.Tensor, switches: torch.Tensor, input_size
                        ) -> torch.Tensor:
    """What unpooling with switches gives (the checker's reference): the signal sent back
    through ``F.max_pool2d``'s gradient, i.e. added up at each switch.

    Parameters
    ----------
    signal : torch.Tensor
        ``[h, w]`` the values at the pooled units.
    switches : torch.Tensor
        ``[h, w]`` int64 flat indices (``row * W + column``) into the ``H x W`` map.
    input_size : tuple of int
        ``(H, W)``.

    Returns
    -------
    torch.Tensor
        ``[H, W]``.
    """
    height, width = (int(v) for v in input_size)
    out = torch.zeros(height * width, dtype=signal.dtype)
    return out.index_add_(0, switches.reshape(-1), signal.reshape(-1)).view(height, width)


def _pool_case(rng: np.random.Generator, height: int, width: int, kernel: int, stride: int,
               padding: int = 0, x: np.ndarray | None = None, signal: np.ndarray | None = None):
    """The pooled map's switches (from torch itself) and a signal, by the pooling's gradient."""
    if x is None:
        x = rng.standard_normal((height, width))
    xt = torch.tensor(x, dtype=torch.float64)[None, None].requires_grad_(True)
    pooled, switches = F.max_pool2d(xt, kernel, stride, padding, return_indices=True)
    if signal is None:
        signal = rng.standard_normal(pooled.shape[-2:]) * 2
    sig = torch.tensor(signal, dtype=torch.float64)
    (grad,) = torch.autograd.grad(pooled, xt, sig[None, None])
    return sig, switches[0, 0], grad[0, 0]


def _unpool_mistakes(signal, switches, size, kernel, stride, padding):
    height, width = size
    h, w = signal.shape
    flat = switches.reshape(-1)

    def overwrite():
        out = torch.zeros(height * width, dtype=signal.dtype)
        order = torch.arange(flat.numel())
        keep = {int(i): int(n) for n, i in zip(order, flat)}      # the last write wins
        for i, n in keep.items():
            out[i] = signal.reshape(-1)[n]
        return out.view(height, width)

    def window(put_all: bool):
        out = torch.zeros(height, width, dtype=signal.dtype)
        for i in range(h):
            for j in range(w):
                top, left = i * stride - padding, j * stride - padding
                rows = slice(max(top, 0), min(top + kernel, height))
                cols = slice(max(left, 0), min(left + kernel, width))
                if put_all:
                    out[rows, cols] += signal[i, j]
                else:
                    out[rows.start, cols.start] += signal[i, j]
        return out

    def swapped():
        out = torch.zeros(height, width, dtype=signal.dtype)
        for n, i in enumerate(flat.tolist()):
            r, c = divmod(i, height)
            if r < height and c < width:
                out[r, c] += signal.reshape(-1)[n]
        return out

    def rectified():
        return reference_unpooling(signal.clamp(min=0), switches, size)

    return {
        "where two windows picked the same maximum, both values arrive there: add them "
        "(out[i] += v), do not overwrite (out[i] = v keeps only the last)": overwrite(),
        "each value goes to its switch only, not to every position of its window (that is "
        "upsampling, not unpooling)": window(True),
        "use the switches: the maximum is wherever the switch says, not at the window's "
        "top-left corner": window(False),
        "a flat index is row * W + column: divide by the width W (divmod(index, W)), not by "
        "the height": swapped(),
        "unpooling moves the signal, it does not rectify it: negative values go back too "
        "(rectification is a separate step of the deconvnet)": rectified(),
    }


def _unpooling_cases(seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    x4 = np.array([[1., 3, 2, 0], [4, 0, 1, 5], [0, 2, 7, 1], [6, 1, 0, 3]])
    peak = rng.random((5, 5))
    peak[2, 2] = 10.0                       # the centre is every 3x3/2 window's maximum
    specs = [
        ("the 4x4 example: 2x2 windows, stride 2", 4, 4, 2, 2, 0, x4,
         np.array([[4., 5], [6, 7]])),
        ("random 8x8 map, 2x2 windows, stride 2", 8, 8, 2, 2, 0, None, None),
        ("random 7x9 map (not square), 3x3 windows with stride 2: the windows overlap",
         7, 9, 3, 2, 0, None, None),
        ("5x5 map whose centre is the maximum of all four 3x3 / stride 2 windows",
         5, 5, 3, 2, 0, peak, np.array([[1., 2], [3, 4]])),
        ("random 6x7 map, 3x3 windows with stride 1 (each pixel is in up to nine windows)",
         6, 7, 3, 1, 0, None, None),
        ("random 9x9 map, 3x3 windows with stride 3", 9, 9, 3, 3, 0, None, None),
        ("random 7x7 map, 2x2 windows with stride 2 (the last row and column are in no "
         "window)", 7, 7, 2, 2, 0, None, None),
        ("random 8x6 map, 3x3 windows, stride 2, padding 1 (border windows hang over the "
         "edge)", 8, 6, 3, 2, 1, None, None),
        ("random 13x13 map, 3x3 windows, stride 2 (AlexNet's pooling)", 13, 13, 3, 2, 0,
         None, None),
    ]
    cases = []
    for name, h, w, k, s, p, x, sig in specs:
        signal, switches, expected = _pool_case(rng, h, w, k, s, p, x, sig)
        cases.append(Case(
            name, (signal, switches, (h, w)), expected,
            hint="start from zeros of the input's size and add each value of the signal at "
                 "the position its switch names",
            mistakes=lambda a=(signal, switches, (h, w), k, s, p): _unpool_mistakes(*a)))
    return cases


def check_unpooling(fn, *, strict: bool = False, show: bool = True, seed: int = 0) -> Verdict:
    """Check a student's unpooling with switches against the reference.

    Parameters
    ----------
    fn : callable
        ``fn(signal, switches, input_size)``: ``signal`` a ``[h, w]`` float tensor (the values
        at the pooled units), ``switches`` a ``[h, w]`` int64 tensor of flat indices
        ``row * W + column`` into the input map (as ``F.max_pool2d(x, k, s,
        return_indices=True)`` returns them for one map), ``input_size`` the pair ``(H, W)``;
        returns the ``[H, W]`` unpooled map (a tensor or an array).
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random cases.

    Returns
    -------
    Verdict
        Passed, "not yet" (a stub), or the first case that differs with a hint.

    Examples
    --------
    >>> def unpool(signal, switches, input_size):
    ...     out = torch.zeros(input_size[0] * input_size[1], dtype=signal.dtype)
    ...     for value, where in zip(signal.flatten(), switches.flatten()):
    ...         out[where] += value
    ...     return out.view(*input_size)
    >>> check_unpooling(unpool, show=False).passed
    True
    """
    return run_cases("unpooling with switches", fn, _unpooling_cases(seed), strict=strict,
                     show=show, covered="2x2 and 3x3 windows, strides 1-3, overlapping windows "
                     "sharing a maximum, padding, maps that are not square, negative signals")


# ============================================================================ rectifier rules

def reference_rule(grad: torch.Tensor, forward_input: torch.Tensor, rule: str = "guided"
                   ) -> torch.Tensor:
    """What a ReLU passes down under ``rule`` (the checker's reference): zfwidgets'
    :class:`~zfwidgets.backend.rules.RuleMode` around ``F.relu``.

    Parameters
    ----------
    grad : torch.Tensor
        The backward signal arriving at the ReLU's output.
    forward_input : torch.Tensor
        What the ReLU saw going forward (same shape).
    rule : {"guided", "deconvnet", "gradient"}

    Returns
    -------
    torch.Tensor
        The signal passed down to the ReLU's input.
    """
    x = forward_input.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with RuleMode(check_rule(rule)):
            y = F.relu(x)
        (back,) = torch.autograd.grad(y, x, grad)
    return back


_RULE_HINTS = {
    "guided": "guided backprop keeps a signal only where it is positive AND the unit was "
              "active going forward: max(g, 0) * (x > 0)",
    "deconvnet": "the deconvnet rectifies the signal going down, max(g, 0), and does not look "
                 "at the forward pass at all",
    "gradient": "the gradient of a ReLU passes the signal where the forward input was "
                "positive, g * (x > 0), whatever the signal's sign",
}


def _rule_mistakes(grad, x, rule):
    found = {
        "deconvnet": "this is the deconvnet's rule: it rectifies the signal but does not gate "
                     "it by the forward pass",
        "guided": "this is guided backprop's rule: it also gates by the forward pass (x > 0)",
        "gradient": "this is the plain gradient: it gates by the forward pass (x > 0) but does "
                    "not rectify the signal",
    }
    out = {f"{found[r]}; {_RULE_HINTS[rule]}": reference_rule(grad, x, r)
           for r in found if r != rule}
    gate = (x >= 0).to(grad.dtype)
    out["at x == 0 a ReLU is off: gate with (x > 0), not (x >= 0)"] = {
        "guided": grad.clamp(min=0) * gate, "gradient": grad * gate}.get(rule)
    out["the gate is the forward input's sign, not its value: multiply by (x > 0), not by "
        "relu(x)"] = {"guided": grad.clamp(min=0) * x.clamp(min=0),
                      "gradient": grad * x.clamp(min=0)}.get(rule)
    out["the rule acts on the backward signal g, not on the forward input x"] = x.clamp(min=0)
    return out


def _rule_cases(seed: int, rule: str) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    fixed_g = torch.tensor([-2., 3., 1., -1.])
    fixed_x = torch.tensor([1., -1., 2., 3.])
    zeros_x = torch.tensor([0., 0., 1., -1., 0., 2.])
    zeros_g = torch.tensor([1., -1., 0., 2., -3., 0.])
    specs = [("the four numbers of notebook 02's table: g = [-2, 3, 1, -1], x = [1, -1, 2, 3]",
              fixed_g, fixed_x),
             ("forward inputs exactly 0 (a ReLU is off there) and zero signals", zeros_g,
              zeros_x),
             ("random [64] vector", torch.randn(64, generator=gen),
              torch.randn(64, generator=gen)),
             ("random [2, 3, 5, 5] batch of feature maps", torch.randn(2, 3, 5, 5, generator=gen),
              torch.randn(2, 3, 5, 5, generator=gen)),
             ("every forward input negative (a dead unit)", torch.randn(3, 4, generator=gen),
              -torch.rand(3, 4, generator=gen) - 0.1),
             ("large values", torch.randn(4, 6, generator=gen) * 1e3,
              torch.randn(4, 6, generator=gen) * 1e3)]
    return [Case(name, (g, x), reference_rule(g, x, rule), hint=_RULE_HINTS[rule],
                 mistakes=lambda g=g, x=x: _rule_mistakes(g, x, rule))
            for name, g, x in specs]


def check_guided_rule(fn, *, rule: str = "guided", strict: bool = False, show: bool = True,
                      seed: int = 0) -> Verdict:
    """Check a student's ReLU backward rule (guided backprop by default) against the reference.

    Parameters
    ----------
    fn : callable
        ``fn(grad, forward_input)``: ``grad`` the backward signal arriving at a ReLU's output,
        ``forward_input`` what the ReLU saw going forward (tensors of the same shape); returns
        the signal the ReLU passes down.
    rule : {"guided", "deconvnet", "gradient"}
        Which rule ``fn`` implements: guided backprop ``max(g, 0) * (x > 0)``, the
        deconvnet ``max(g, 0)`` or the plain gradient ``g * (x > 0)``.
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` unless every case agrees (for tests).
    show : bool
        Print the verdict.
    seed : int
        Seed of the random cases.

    Returns
    -------
    Verdict

    Examples
    --------
    >>> check_guided_rule(lambda g, x: g.clamp(min=0) * (x > 0), show=False).passed
    True
    """
    rule = check_rule(rule)
    title = {"guided": "the guided backprop rule", "deconvnet": "the deconvnet's rule",
             "gradient": "the ReLU's gradient"}[rule]
    return run_cases(title, fn, _rule_cases(seed, rule), strict=strict, show=show,
                     covered="signed signals, inputs exactly 0, dead units, batches of maps")
