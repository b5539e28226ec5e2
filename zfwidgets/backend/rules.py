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
module, so nothing can be left behind.

The deconvnet and guided rules are defined only through the ops of an allow-list
(:func:`~zfwidgets.backend.ops.refusal`: filters, batch norm in eval, pooling, padding, sums,
joins, reshapes ...). Every other op on the path from the input to the layer (SiLU, GELU,
softmax, sigmoid, layer norm, ``x * (x > 0)``, a product of two input-derived tensors ...)
raises :class:`~zfwidgets.errors.UnsupportedModelError` naming the op and the module it ran in,
rather than silently falling back to the gradient. The gradient rule goes through anything.
"""

from __future__ import annotations

import threading

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError, check_choice
from .ops import FACTORIES, WRITES, TensorTable, op_name, rectifier_call, refusal, tensors_in

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
        _keep_gate(ctx, x, lo, hi, slope, rule)
        return y

    @staticmethod
    def backward(ctx, g):
        if ctx.rule == "deconvnet":
            return g.clamp(min=0), None, None, None, None
        (deriv,) = ctx.saved_tensors
        out = g.clamp(min=0).mul_(deriv) if ctx.rule == "guided" else g * deriv
        return out, None, None, None, None


class _RectifierInPlace(_Rectifier):
    """:class:`_Rectifier` clamping its input in place (``ReLU(inplace=True)``, ``relu_``),
    for a non-view, non-leaf input without a slope: the mask is taken before the clamp, the
    backward is the same."""

    @staticmethod
    def forward(ctx, x, lo, hi, slope, rule):
        _keep_gate(ctx, x, lo, hi, slope, rule)   # from x before it is clamped
        x.clamp_(min=lo, max=hi)
        ctx.mark_dirty(x)
        return x


def _keep_gate(ctx, x, lo, hi, slope, rule) -> None:
    """Save on ``ctx`` what the backward of ``rule`` needs from the forward: nothing for the
    deconvnet, else the gate of the input ``x``.

    gradient: act'(x) = 1 inside (lo, hi), `slope` below lo, 0 above hi. guided: the forward
    gate asks "was the unit active?", so a unit saturated at the top of ReLU6 counts as active
    (the exact derivative there is 0, which would blank every projection through a saturated
    unit). Without a slope the gate is a boolean mask (one op, a quarter of a float mask's
    memory).
    """
    ctx.rule = rule
    if rule == "deconvnet":
        return
    inside = x > lo
    if hi is not None and rule == "gradient":
        inside &= x < hi
    if slope:
        inside = inside.to(x.dtype) + (x <= lo).to(x.dtype) * slope
    ctx.save_for_backward(inside)


class _Refused(RuntimeError):
    """A refused op, raised inside the mode; :meth:`RuleMode.__exit__` turns it into an
    :class:`UnsupportedModelError`. (That one is a ``TypeError``, which torch's binary
    operators would swallow and turn into ``NotImplemented``.)"""


class RuleMode(TorchFunctionMode):
    """Apply a backward rule to every rectifier called while this mode is active.

    Parameters
    ----------
    rule : {"deconvnet", "guided", "gradient"}
        The backward rule. With ``"gradient"`` rectifiers are still replaced (by a function with
        the ordinary derivative), which makes in-place rectifiers safe to differentiate through.
    inputs : torch.Tensor or sequence of torch.Tensor, optional
        The model's input. By default it is what the outermost module call receives.

    Attributes
    ----------
    rectifiers : int
        How many rectifier calls were intercepted (a model whose rectifiers could not be seen at
        all would give 0 here for a deep layer).

    Raises
    ------
    UnsupportedModelError
        Under ``"deconvnet"`` and ``"guided"``, at the first call on the path from the input
        (a call with an input-derived tensor argument) that is not on the allow-list
        (:func:`~zfwidgets.backend.ops.refusal`); the message names the op and the module it
        ran in. Calls on weights alone (weight standardization ...) do not count.

    Notes
    -----
    Use as a context manager around one forward pass; the backward may happen after the mode
    exits. While active, the mode keeps a stack of the module calls under way with global
    forward pre/post hooks (the outermost call gives the model's input, the innermost names
    the module in an error message); they are removed when the mode exits, even
    after an error. Torch disables the mode inside its own ``__torch_function__``, so the
    replacement computations are not intercepted again.
    """

    def __init__(self, rule: str, inputs=None):
        super().__init__()
        self.rule = check_rule(rule)
        self.rectifiers = 0
        self._derived = TensorTable()
        self._seeded = inputs is not None
        for t in tensors_in(inputs):
            self._derived.put(t, True)
        self._stack: list[nn.Module] = []
        self._handles: list = []
        self._thread = threading.get_ident()

    # -- the module stack ---------------------------------------------------------------------
    def __enter__(self):
        if self.rule == "gradient":  # defined through anything: nothing to follow
            return super().__enter__()
        self._handles = [register_module_forward_pre_hook(self._push),
                         register_module_forward_hook(self._pop, always_call=True)]
        try:
            return super().__enter__()
        except BaseException:
            self._remove_hooks()
            raise

    def __exit__(self, exc_type, exc, tb):
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            self._remove_hooks()
        if isinstance(exc, _Refused):
            raise UnsupportedModelError(str(exc)) from None
        return False

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _push(self, module, args):
        if threading.get_ident() != self._thread:
            return
        if not self._stack and not self._seeded:  # the outermost call: the model's input
            for t in tensors_in(args):
                self._derived.put(t, True)
        self._stack.append(module)

    def _pop(self, module, args, output):
        if threading.get_ident() != self._thread:
            return
        while self._stack:
            if self._stack.pop() is module:
                break

    def _where(self) -> str:
        if not self._stack:
            return ""
        inner = self._stack[-1]
        names = {id(m): n for n, m in self._stack[0].named_modules()}
        name = names.get(id(inner), "")
        return f" in module {name!r} ({type(inner).__name__})" if name else \
            f" in the forward of {type(inner).__name__} itself"

    # -- the calls ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        derived = self._derived.__contains__
        rect = rectifier_call(func, args, kwargs)
        if rect is not None:
            self.rectifiers += 1
            x = rect.x
            if rect.inplace and not rect.slope and not x._is_view() and not x.is_leaf:
                # in place, as the model asked (no new tensor, no copy back)
                return _RectifierInPlace.apply(x, rect.lo, rect.hi, rect.slope, self.rule)
            y = _Rectifier.apply(x, rect.lo, rect.hi, rect.slope, self.rule)
            if rect.inplace:
                # keep in-place semantics for callers that ignore the return value
                x.copy_(y)
                return x
            if derived(rect.x):
                self._derived.put(y, True)
            return y
        if self.rule == "gradient":
            return func(*args, **kwargs)
        why = refusal(func, args, kwargs, derived)
        out = func(*args, **kwargs)
        outputs = list(tensors_in(out))
        if why is not None and outputs:
            raise _Refused(
                f"the model applies {op_name(func)}{self._where()}: {why}. The {self.rule!r} "
                "rule is defined only through convolutions, linear layers, batch norm (eval), "
                "pooling, padding, sums, concatenations, reshapes, dropout (eval) and the "
                "rectifiers (ReLU, ReLU6, LeakyReLU ...). Use rule='gradient' for this model "
                "or layer.")
        if outputs and func not in FACTORIES and any(
                derived(t) for t in tensors_in(list(args) + list(kwargs.values()))):
            for t in outputs:
                self._derived.put(t, True)
        if func in WRITES and args and any(derived(t) for t in tensors_in(args[1:])):
            self._derived.put(args[0], True)  # x[i] = v with v derived: x now is
        return out
