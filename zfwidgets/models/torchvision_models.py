"""torchvision's AlexNet and VGG16, with weights through torchvision's own weights API.

``weights="default"`` means ``<Arch>_Weights.DEFAULT``. When its file is already in torch's hub
cache (:func:`weights_cache_path`: ``<torch hub dir>/checkpoints/<file name of the URL>``, where
torchvision itself keeps it) it is read from there with ``weights_only=True`` and nothing
touches the network; otherwise torchvision downloads it once into that cache (checking the hash
in its name). Offline, the download fails and :class:`WeightsUnavailableError` says to pass
``weights=None``. :func:`weights_cached` is the cheap check the default-model policy and
:func:`~zfwidgets.models.registry.model_status` use; :func:`fetch_weights` downloads ahead of
time (``binder/postBuild`` calls it). Preprocessing is read from the weights' own
``transforms()`` (resize 256, crop 224, ImageNet mean/std) and labels from their
``meta["categories"]``; neither downloads.

torchvision (and torch) are imported when one of these models is built, not when this module
registers them or checks the cache: torchvision's import costs a second or more (it pulls in
``torch._dynamo``), which a session on another model, or the ``zfwidgets`` command, need not pay.
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from typing import TYPE_CHECKING

from zfwidgets.errors import BadParameterError, WeightsUnavailableError
from zfwidgets.models.preprocessing import Preprocessing
from zfwidgets.models.registry import (IMAGENET_WEIGHTS, NOT_DOWNLOADED, LoadedModel,
                                       canonical_model_name, register_model,
                                       register_weights_status)

if TYPE_CHECKING:
    from torch import nn
    from torchvision.models import WeightsEnum

__all__ = ["preprocessing_from_weights", "TORCHVISION_LAYERS", "TORCHVISION_WEIGHTS",
           "fetch_weights", "weights_cache_path", "weights_cached"]

#: (default_layer, middle_layer) per entry. default_layer is the ReLU after the last conv (the
#: paper's layer 5, 13x13 in AlexNet, 14x14 in VGG16); middle_layer the ReLU after a conv at
#: about half depth (AlexNet conv3, 13x13; VGG16 conv3_3, 56x56).
TORCHVISION_LAYERS: dict[str, tuple[str, str]] = {
    "alexnet": ("features.11", "features.7"),
    "vgg16": ("features.29", "features.15"),
}

#: The weights entry ``weights="default"`` means, per registry name: the name of its
#: ``torchvision.models`` enum and the file name of its ``DEFAULT`` entry's URL (the name the
#: hub cache keeps it under; tests/test_models.py checks it against torchvision's own URL).
TORCHVISION_WEIGHTS: dict[str, tuple[str, str]] = {
    "alexnet": ("AlexNet_Weights", "alexnet-owt-7be5be79.pth"),
    "vgg16": ("VGG16_Weights", "vgg16-397923af.pth"),
}


def _key(name: str) -> str:
    key = canonical_model_name(name)
    if key not in TORCHVISION_WEIGHTS:
        raise BadParameterError(f"{name!r} is not a torchvision model; those are "
                                f"{', '.join(TORCHVISION_WEIGHTS)}")
    return key


def _entry(name: str) -> WeightsEnum:
    import torchvision.models

    return getattr(torchvision.models, TORCHVISION_WEIGHTS[_key(name)][0]).DEFAULT


def _hub_dir() -> Path:
    """torch's hub folder, found as ``torch.hub.get_dir()`` finds it, without importing torch
    (when torch is imported already, its answer, which ``torch.hub.set_dir`` may have moved)."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir())
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def weights_cache_path(name: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``name`` (whether or not they are there).

    Parameters
    ----------
    name : str
        ``"alexnet"`` or ``"vgg16"``.

    Returns
    -------
    pathlib.Path
        ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``, e.g.
        ``~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth`` (``$TORCH_HOME`` moves it).

    Raises
    ------
    BadParameterError
        ``name`` is not one of the torchvision entries.
    """
    return _hub_dir() / "checkpoints" / TORCHVISION_WEIGHTS[_key(name)][1]


def weights_cached(name: str) -> bool:
    """Whether the ImageNet weights of ``name`` are in torch's hub cache (no network probe).

    Parameters
    ----------
    name : str
        ``"alexnet"`` or ``"vgg16"``.

    Returns
    -------
    bool
        ``True`` when :func:`weights_cache_path` is a file.
    """
    return weights_cache_path(name).is_file()


def fetch_weights(name: str) -> Path:
    """Download the ImageNet weights of ``name`` into torch's hub cache (if not there yet).

    Parameters
    ----------
    name : str
        ``"alexnet"`` (233 MB) or ``"vgg16"`` (528 MB).

    Returns
    -------
    pathlib.Path
        The cached file (:func:`weights_cache_path`); its hash was checked against the one in
        its name when it was downloaded.

    Raises
    ------
    WeightsUnavailableError
        The download failed (offline, no space ...).
    """
    if not weights_cached(name):
        _download(name, _entry(name))
    return weights_cache_path(name)


def _download(name: str, entry: WeightsEnum) -> dict:
    """torchvision's own download into the hub cache, then a ``weights_only`` load."""
    try:
        return entry.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; hash check: Runtime
        raise WeightsUnavailableError(
            f"cannot get the pretrained weights of {name!r} ({entry}) from torchvision: "
            f"{type(exc).__name__}: {exc}. torchvision downloads them once into "
            f"{weights_cache_path(name).parent}; offline, pass weights=None for a random init "
            "or weights=<path> for a checkpoint."
        ) from exc


def _read_cached(name: str, path: Path) -> dict:
    """The state dict in the hub cache, read with ``weights_only=True``."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        raise WeightsUnavailableError(
            f"the cached weights of {name!r} in {path} cannot be read ({type(exc).__name__}: "
            f"{exc}); delete the file to download it again, or pass weights=None"
        ) from exc


def _pretrained(name: str, module: nn.Module, entry: WeightsEnum) -> None:
    """Load the ImageNet weights into ``module``: from the cache file, else downloaded."""
    path = weights_cache_path(name)
    state = _read_cached(name, path) if path.is_file() else _download(name, entry)
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise WeightsUnavailableError(
            f"the weights of {name!r} in {path} do not fit torchvision's {name} ({exc}); delete "
            "the file to download it again, or pass weights=None"
        ) from exc


def _status(name: str) -> Callable[[], str]:
    return lambda: IMAGENET_WEIGHTS if weights_cached(name) else NOT_DOWNLOADED


def preprocessing_from_weights(weights: WeightsEnum) -> Preprocessing:
    """The :class:`Preprocessing` equivalent to a torchvision weights entry's ``transforms()``.

    Parameters
    ----------
    weights : torchvision.models.WeightsEnum
        e.g. ``AlexNet_Weights.IMAGENET1K_V1``; nothing is downloaded.

    Returns
    -------
    Preprocessing
        Same crop, resize, mean and std (bilinear, antialiased, as torchvision's PIL path).
    """
    t = weights.transforms()
    crop = list(t.crop_size)
    size = (crop[0], crop[-1])
    return Preprocessing(
        size=size,
        resize=int(t.resize_size[0]),
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
    )


def _register_torchvision(name: str) -> None:
    """Register torchvision's ``models.<name>`` with its ``DEFAULT`` ImageNet weights entry."""
    default_layer, middle_layer = TORCHVISION_LAYERS[name]

    def build(weights) -> LoadedModel:
        import torchvision.models

        entry = _entry(name)
        module = getattr(torchvision.models, name)(weights=None)
        weights_id = "random"
        if weights == "default":
            _pretrained(name, module, entry)
            weights_id = f"torchvision:{entry}"
        module.eval()
        return LoadedModel(
            name=name,
            module=module,
            preprocessing=preprocessing_from_weights(entry),
            labels=list(entry.meta["categories"]),
            default_layer=default_layer,
            middle_layer=middle_layer,
            weights_id=weights_id,
        )

    build.__name__ = f"_build_{name}"
    build.__doc__ = (
        f"torchvision {name}; ``'default'`` = {TORCHVISION_WEIGHTS[name][0]}.DEFAULT (from the "
        "hub cache, else downloaded once)."
    )
    register_model(name)(build)
    register_weights_status(name, _status(name))


_register_torchvision("alexnet")
_register_torchvision("vgg16")
