"""torchvision's AlexNet and VGG16, with weights through torchvision's own weights API.

``weights="default"`` asks torchvision for ``<Arch>_Weights.DEFAULT``, which downloads the file
once into the torch hub cache; offline, that fails and :class:`WeightsUnavailableError` says to
pass ``weights=None``. Preprocessing is read from the weights' own ``transforms()`` (resize 256,
crop 224, ImageNet mean/std) and labels from their ``meta["categories"]``; neither downloads.

torchvision is imported when one of these models is built, not when this module registers them:
its import costs a second or more (it pulls in ``torch._dynamo``), which a session on another
model, or the ``zfwidgets`` command, need not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from zfwidgets.errors import WeightsUnavailableError
from zfwidgets.models.preprocessing import Preprocessing
from zfwidgets.models.registry import LoadedModel, register_model

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

__all__ = ["preprocessing_from_weights", "TORCHVISION_LAYERS"]

#: (default_layer, middle_layer) per entry. default_layer is the ReLU after the last conv (the
#: paper's layer 5, 13x13 in AlexNet, 14x14 in VGG16); middle_layer the ReLU after a conv at
#: about half depth (AlexNet conv3, 13x13; VGG16 conv3_3, 56x56).
TORCHVISION_LAYERS: dict[str, tuple[str, str]] = {
    "alexnet": ("features.11", "features.7"),
    "vgg16": ("features.29", "features.15"),
}


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


def _register_torchvision(name: str, weights_name: str) -> None:
    """Register torchvision's ``models.<name>`` with its ``models.<weights_name>`` entry."""
    default_layer, middle_layer = TORCHVISION_LAYERS[name]

    def build(weights) -> LoadedModel:
        import torchvision.models

        factory = getattr(torchvision.models, name)
        entry = getattr(torchvision.models, weights_name).DEFAULT
        if weights == "default":
            try:
                module = factory(weights=entry)
            except (OSError, RuntimeError) as exc:  # URLError is an OSError; hash check: Runtime
                raise WeightsUnavailableError(
                    f"cannot get the pretrained weights of {name!r} ({entry}) from torchvision: "
                    f"{type(exc).__name__}: {exc}. torchvision downloads them once into "
                    f"{torch.hub.get_dir()}; offline, pass weights=None for a random init "
                    "or weights=<path> for a checkpoint."
                ) from exc
            weights_id = f"torchvision:{entry}"
        else:
            module = factory(weights=None)
            weights_id = "random"
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
        f"torchvision {name}; ``'default'`` = {weights_name}.DEFAULT (downloads once)."
    )
    register_model(name)(build)


_register_torchvision("alexnet", "AlexNet_Weights")
_register_torchvision("vgg16", "VGG16_Weights")
