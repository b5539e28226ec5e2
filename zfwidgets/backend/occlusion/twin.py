"""A channels-last twin of a model, for plain occlusion passes on the CPU.

Plain passes feed the occluded batch channels-last (oneDNN's preferred layout on the CPU). On
some models (ShuffleNet, AlexNet at 224 px) the convolutions are faster still when their
weights are channels-last too, on others (EfficientNet-B0 at 224 px) slower, so
``method="auto"`` times both (:mod:`.choice`). The user's model is never changed for this:
:func:`channels_last_twin` builds a structural copy that shares every parameter and buffer
with it except the 4-d weights, which it holds as channels-last copies (the same values). The
twin is remembered per model while plain passes use it (:func:`drop_twin` when a probe chose the
model's own layout) and rebuilt when anything it copied changed: a parameter or buffer replaced
or updated in place (``_version``), a submodule replaced, an attribute set.

Models the twin cannot stand for get none (``None``): TorchScript and compiled modules,
parametrized weights (their ``weight`` is computed on access), modules with hooks of their own,
models without a 4-d weight or whose 4-d weights already are channels-last.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

__all__ = ["channels_last_twin", "drop_twin", "twin_blocker"]

# model -> (signature, twin); forgotten with the model
_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
               "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_forward_hooks_always_called")


def twin_blocker(model: nn.Module) -> str | None:
    """Why ``model`` gets no channels-last twin (``None``: it may have one)."""
    from torch.nn.utils import parametrize

    if isinstance(model, torch.jit.ScriptModule) or type(model).__name__ == "OptimizedModule":
        return "a TorchScript or compiled model"
    wanted = False
    for m in model.modules():
        if parametrize.is_parametrized(m):
            return "parametrized weights"
        if m._forward_hooks or m._forward_pre_hooks:
            return "forward hooks of its own"
        for p in m._parameters.values():
            if p is not None and _copied(p):
                wanted = True
    return None if wanted else "no 4-d weight that is not channels-last already"


def channels_last_twin(model: nn.Module) -> nn.Module | None:
    """The model's channels-last twin (see the module's docs), built or reused; ``None`` for a
    model that gets none (:func:`twin_blocker`)."""
    if twin_blocker(model) is not None:
        return None
    sig = _signature(model)
    held = _TWINS.get(model)
    if held is not None and held[0] == sig:
        return held[1]
    with torch.no_grad():
        twin = _copy(model, {})
    _TWINS[model] = (sig, twin)
    return twin


def drop_twin(model: nn.Module) -> None:
    """Let the model's twin go (its channels-last weights: the model's conv weights' size in
    memory), as when a probe chose the model's own layout."""
    _TWINS.pop(model, None)


def _copied(p: torch.Tensor) -> bool:
    """Whether the twin holds a channels-last copy of this parameter."""
    return (p.dim() == 4 and p.is_floating_point() and p.device.type == "cpu"
            and not p.is_contiguous(memory_format=torch.channels_last))


def _copy(module: nn.Module, memo: dict) -> nn.Module:
    """A structural copy of ``module``: its own module objects (in eval mode, without hooks),
    the same tensors but channels-last 4-d weights."""
    if id(module) in memo:
        return memo[id(module)]
    twin = module.__class__.__new__(module.__class__)
    memo[id(module)] = twin
    state = dict(module.__dict__)
    for name in _HOOK_DICTS:
        if name in state:
            state[name] = type(state[name])()
    state["_parameters"] = {
        k: (nn.Parameter(p.detach().contiguous(memory_format=torch.channels_last),
                         requires_grad=False)
            if p is not None and _copied(p) else p)
        for k, p in module._parameters.items()}
    state["_buffers"] = dict(module._buffers)
    state["_modules"] = {k: (None if c is None else _copy(c, memo))
                         for k, c in module._modules.items()}
    state["training"] = False
    object.__setattr__(twin, "__dict__", state)
    return twin


def _signature(model: nn.Module) -> tuple:
    """What the twin was copied from: every module, its attributes, tensors and their versions
    (a change anywhere makes a new twin)."""
    out = []
    for m in model.modules():
        out.append(id(m))
        for k, v in m.__dict__.items():
            if k in ("_parameters", "_buffers", "_modules") or k in _HOOK_DICTS:
                continue
            out.append((k, id(v)))
        for group in (m._parameters, m._buffers, m._modules):
            for k, v in group.items():
                out.append((k, id(v), _version(v) if isinstance(v, torch.Tensor) else None))
    return tuple(out)


def _version(t: torch.Tensor):
    """The tensor's in-place version; an inference tensor has none, so a twin of a model
    holding one is never reused (a fresh object never equals the last signature)."""
    try:
        return t._version
    except RuntimeError:
        return object()
