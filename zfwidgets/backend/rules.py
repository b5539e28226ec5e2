"""Backward rules: plain gradient, deconvnet (Zeiler & Fergus 2014) and guided backprop.

The three rules differ only in what happens to the backward signal at a rectifier
(ReLU, ReLU6, LeakyReLU, ``clamp(min=0)`` ...). Max-pooling needs nothing special: its ordinary
gradient routes the signal to the recorded maximum, which is exactly the paper's unpooling with
*switches*. Convolutions and batch norm (eval mode, an affine map) need nothing either: their
gradient is the transposed filter.

=============  ==============================================================
rule           backward signal at a rectifier ``y = act(x)``
=============  ==============================================================
``gradient``   ``g * act'(x)``
``deconvnet``  ``max(g, 0)`` (the forward pass does not gate the signal)
``guided``     ``max(g, 0) * (x > 0)``  (Springenberg et al. 2015; for ReLU6 a unit
               saturated at 6 counts as active, see :class:`_Rectifier`)
=============  ==============================================================

The rules are applied by :class:`RuleMode`, a :class:`torch.overrides.TorchFunctionMode` active
only for the duration of one forward pass. It intercepts every rectifier *call* (module or
functional, in place or not, a module reused in many places) and replaces it by an out-of-place
:class:`torch.autograd.Function` with the rule's backward. Nothing is registered on the user's
module, so nothing can be left behind. Non-rectifying nonlinearities (SiLU, GELU, sigmoid ...)
have no deconvnet or guided counterpart: they raise :class:`~zfwidgets.errors.UnsupportedModelError`
rather than silently falling back to the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError, check_choice
from .ops import rectifier_call

__all__ = ["RULES", "RuleMode", "check_rule"]

RULES = ("deconvnet", "guided", "gradient")


def check_rule(rule: str) -> str:
    """Return ``rule`` if it names a backward rule, else raise ``BadParameterError``."""
    return check_choice("rule", rule, RULES)


class _Rectifier(torch.autograd.Function):
    """``y = clamp(x, lo, hi)`` for ``x > lo`` and ``slope * x`` below (LeakyReLU when slope > 0).

    Only the backward depends on ``rule``. The forward saves a mask, never ``x`` itself, so that an
    in-place rectifier (``y`` copied back into ``x``) does not invalidate the saved state.
    """

    @staticmethod
    def forward(ctx, x, lo, hi, slope, rule):
        y = x.clamp(min=lo, max=hi)
        if slope:
            y = torch.where(x < lo, x * slope, y)
        if rule != "deconvnet":
            # gradient: act'(x) = 1 inside (lo, hi), `slope` below lo, 0 above hi.
            # guided: the forward gate asks "was the unit active?", so a unit saturated at the
            # top of ReLU6 counts as active (the exact derivative there is 0, which would blank
            # every projection through a saturated unit).
            inside = x > lo
            if hi is not None and rule == "gradient":
                inside = inside & (x < hi)
            deriv = inside.to(x.dtype)
            if slope:
                deriv = deriv + (x <= lo).to(x.dtype) * slope
            ctx.save_for_backward(deriv)
        ctx.rule = rule
        return y

    @staticmethod
    def backward(ctx, g):
        if ctx.rule == "deconvnet":
            out = g.clamp(min=0)
        else:
            (deriv,) = ctx.saved_tensors
            out = (g.clamp(min=0) if ctx.rule == "guided" else g) * deriv
        return out, None, None, None, None


_T = torch.Tensor
# Nonlinearities that are not rectifiers: deconvnet / guided backprop are undefined through them.
_NON_RECTIFIERS = {
    F.silu: "SiLU/swish",
    F.gelu: "GELU",
    F.elu: "ELU",
    F.selu: "SELU",
    F.celu: "CELU",
    F.mish: "Mish",
    F.hardswish: "Hardswish",
    F.hardsigmoid: "Hardsigmoid",
    F.softplus: "Softplus",
    F.prelu: "PReLU",
    F.rrelu: "RReLU",
    torch.sigmoid: "sigmoid",
    _T.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    _T.tanh: "tanh",
    F.tanh: "tanh",
    F.sigmoid: "sigmoid",
}


class RuleMode(TorchFunctionMode):
    """Apply a backward rule to every rectifier called while this mode is active.

    Parameters
    ----------
    rule : {"deconvnet", "guided", "gradient"}
        The backward rule. With ``"gradient"`` rectifiers are still replaced (by a function with
        the ordinary derivative), which makes in-place rectifiers safe to differentiate through.

    Attributes
    ----------
    rectifiers : int
        How many rectifier calls were intercepted (a model whose rectifiers could not be seen at
        all would give 0 here for a deep layer).

    Notes
    -----
    Use as a context manager around one forward pass; the backward may happen after the mode
    exits. The mode is reentrant-safe in the sense that torch disables it inside its own
    ``__torch_function__``, so the replacement computations are not intercepted again.
    """

    def __init__(self, rule: str):
        super().__init__()
        self.rule = check_rule(rule)
        self.rectifiers = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rect = rectifier_call(func, args, kwargs)
        if rect is not None:
            self.rectifiers += 1
            y = _Rectifier.apply(rect.x, rect.lo, rect.hi, rect.slope, self.rule)
            if rect.inplace:
                # keep in-place semantics for callers that ignore the return value
                rect.x.copy_(y)
                return rect.x
            return y
        if self.rule != "gradient" and func in _NON_RECTIFIERS:
            raise UnsupportedModelError(
                f"the model applies {_NON_RECTIFIERS[func]}, which is not a rectifier: the "
                f"{self.rule!r} rule is defined only for ReLU-family networks (ReLU, ReLU6, "
                "LeakyReLU). Use rule='gradient' for this model."
            )
        return func(*args, **kwargs)

