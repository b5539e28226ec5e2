"""The network of Zeiler & Fergus (ECCV 2014), and a small trainable variant for CPU experiments.

:class:`ZFNet` follows the paper's Fig. 3: 224x224 input, conv1 7x7 stride 2 (AlexNet's 11x11
stride 4 made finer after the deconvnet showed aliasing), five conv layers, three fully connected
layers. :func:`feature_scale_clipping` is the paper's training trick that keeps filter scales in
check. Neither network has pretrained weights: they start from PyTorch's default random
initialization, or load a checkpoint through ``get_model(name, weights=path)``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from zfwidgets.errors import BadParameterError
from zfwidgets.models.preprocessing import Preprocessing
from zfwidgets.models.registry import (RANDOM_WEIGHTS, LoadedModel, register_model,
                                       register_weights_status)
from zfwidgets.models.weights import imagenet_labels

__all__ = ["ZFNet", "ZFNetSmall", "feature_scale_clipping", "paper_initialization",
           "SMALL_PREPROCESSING"]

#: Preprocessing of :class:`ZFNetSmall`: 64x64 crops after resizing the short side to 72,
#: ImageNet mean/std.
SMALL_PREPROCESSING = Preprocessing(size=(64, 64), resize=72)


def _lrn() -> nn.LocalResponseNorm:
    # The paper's "contrast normalized across feature maps": AlexNet's local response
    # normalization parameters (5 neighbouring maps, alpha 1e-4, beta 0.75, k 2).
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)


class ZFNet(nn.Module):
    """The 8-layer network of Zeiler & Fergus (2014), Fig. 3.

    Spatial sizes for a 224x224 input (pools use ``ceil_mode=True``, Caffe's rounding, which is
    what gives the paper's 55 and 13)::

        input        3 x 224 x 224
        conv1  96 x 110 x 110   7x7 stride 2 pad 1, ReLU
        pool1  96 x  55 x  55   3x3 stride 2, then LRN
        conv2 256 x  26 x  26   5x5 stride 2, ReLU
        pool2 256 x  13 x  13   3x3 stride 2, then LRN
        conv3 384 x  13 x  13   3x3 pad 1, ReLU
        conv4 384 x  13 x  13   3x3 pad 1, ReLU
        conv5 256 x  13 x  13   3x3 pad 1, ReLU
        pool5 256 x   6 x   6   3x3 stride 2
        fc6 4096, fc7 4096 (ReLU, dropout 0.5), fc8 num_classes

    Layer names: ``features.conv1`` ... ``features.pool5``, ``flatten``, ``classifier.fc6`` ...
    ``classifier.fc8``.

    Parameters
    ----------
    num_classes : int
        Size of the last layer.
    dropout : float
        Dropout probability after fc6 and fc7.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 96, 7, stride=2, padding=1)),  # 110x110
                    ("relu1", nn.ReLU(inplace=True)),
                    ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),  # 55x55
                    ("norm1", _lrn()),
                    ("conv2", nn.Conv2d(96, 256, 5, stride=2)),  # 26x26
                    ("relu2", nn.ReLU(inplace=True)),
                    ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),  # 13x13
                    ("norm2", _lrn()),
                    ("conv3", nn.Conv2d(256, 384, 3, padding=1)),  # 13x13
                    ("relu3", nn.ReLU(inplace=True)),
                    ("conv4", nn.Conv2d(384, 384, 3, padding=1)),  # 13x13
                    ("relu4", nn.ReLU(inplace=True)),
                    ("conv5", nn.Conv2d(384, 256, 3, padding=1)),  # 13x13
                    ("relu5", nn.ReLU(inplace=True)),
                    ("pool5", nn.MaxPool2d(3, stride=2, ceil_mode=True)),  # 6x6
                ]
            )
        )
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc6", nn.Linear(256 * 6 * 6, 4096)),
                    ("relu6", nn.ReLU(inplace=True)),
                    ("drop6", nn.Dropout(dropout)),
                    ("fc7", nn.Linear(4096, 4096)),
                    ("relu7", nn.ReLU(inplace=True)),
                    ("drop7", nn.Dropout(dropout)),
                    ("fc8", nn.Linear(4096, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.flatten(x)
        return self.classifier(x)


class ZFNetSmall(nn.Module):
    """A small ZF-style network that trains on a CPU in seconds (64x64 inputs).

    Spatial sizes for a 64x64 input with the default first layer::

        conv1 32 x 32 x 32   7x7 stride 2 pad 3, ReLU
        pool1 32 x 16 x 16   3x3 stride 2 pad 1
        conv2 64 x  8 x  8   5x5 stride 2 pad 2, ReLU
        pool2 64 x  4 x  4   3x3 stride 2 pad 1
        conv3 96 x  4 x  4   3x3 pad 1, ReLU
        conv4 64 x  4 x  4   3x3 pad 1, ReLU
        pool4 64 x  2 x  2   3x3 stride 2 pad 1
        fc    num_classes    (dropout before it)

    ``kernel`` and ``stride`` change the first layer only (padding ``kernel // 2``), for the
    paper's comparison of AlexNet's coarse first layer with ZF-Net's finer one (Fig. 6): with
    stride 4 every later map is half as wide (pool4 gives 1 x 1) and the classifier reads
    ``64 x 1 x 1`` features.

    Parameters
    ----------
    num_classes : int
        Size of the last layer.
    dropout : float
        Dropout probability before the classifier.
    kernel : int
        Side of the first layer's filters (odd).
    stride : int
        Stride of the first layer.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.3, *, kernel: int = 7,
                 stride: int = 2):
        for name, value in (("kernel", kernel), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadParameterError(f"{name} must be a positive integer, got {value!r}")
        if kernel % 2 == 0:
            raise BadParameterError(f"kernel must be odd (padding kernel // 2 keeps it "
                                    f"centred), got {kernel}")
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 32, kernel, stride=stride, padding=kernel // 2)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("pool1", nn.MaxPool2d(3, stride=2, padding=1)),
                    ("conv2", nn.Conv2d(32, 64, 5, stride=2, padding=2)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("pool2", nn.MaxPool2d(3, stride=2, padding=1)),
                    ("conv3", nn.Conv2d(64, 96, 3, padding=1)),
                    ("relu3", nn.ReLU(inplace=True)),
                    ("conv4", nn.Conv2d(96, 64, 3, padding=1)),
                    ("relu4", nn.ReLU(inplace=True)),
                    ("pool4", nn.MaxPool2d(3, stride=2, padding=1)),
                ]
            )
        )
        self.flatten = nn.Flatten(1)
        side = _small_side(64, kernel, stride)
        self.classifier = nn.Sequential(
            OrderedDict([("drop", nn.Dropout(dropout)),
                         ("fc", nn.Linear(64 * side * side, num_classes))])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.flatten(x)
        return self.classifier(x)


def _small_side(size: int, kernel: int, stride: int) -> int:
    """Side of :class:`ZFNetSmall`'s last feature map for a ``size`` x ``size`` input."""
    side = (size + 2 * (kernel // 2) - kernel) // stride + 1      # conv1
    for _ in range(4):                    # pool1, conv2, pool2, pool4: each (n - 1) // 2 + 1
        side = (side - 1) // 2 + 1
    return side


@torch.no_grad()
def paper_initialization(model: nn.Module, std: float = 0.01) -> nn.Module:
    """The paper's initialization (Sec. 3): every weight of every convolution and linear layer
    drawn from ``N(0, std^2)`` (std ``10^-2``), every bias set to 0.

    Small random weights make a first layer's trained filters show what training put there
    (from PyTorch's default initialization, a few epochs on a small data set leave them close
    to their random start). Draws from torch's global random generator: seed it first.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place.
    std : float
        Standard deviation of the weights.

    Returns
    -------
    torch.nn.Module
        ``model``.
    """
    if not isinstance(std, (int, float)) or isinstance(std, bool) or not std > 0:
        raise BadParameterError(f"std must be a positive number, got {std!r}")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
    return model


@torch.no_grad()
def feature_scale_clipping(model: nn.Module, max_rms: float = 0.1) -> int:
    """Renormalize every conv filter whose RMS exceeds ``max_rms`` down to ``max_rms``.

    The paper's trick (Zeiler & Fergus 2014, Sec. 3): during training, "renormalize each filter in
    the convolutional layers whose RMS value exceeds a fixed radius of 10^-1 to this fixed
    radius", which stops a few first-layer filters from dominating. Call it after each optimizer
    step. A filter is one output channel of an ``nn.Conv2d`` weight (biases are left alone); its
    RMS is ``sqrt(mean(w ** 2))`` over input channels and kernel positions.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place: every ``nn.Conv2d`` in ``model.modules()``.
    max_rms : float
        The fixed radius; the paper uses 0.1.

    Returns
    -------
    int
        Number of filters that were rescaled.

    Raises
    ------
    BadParameterError
        If ``max_rms`` is not a positive number.
    """
    if not isinstance(max_rms, (int, float)) or isinstance(max_rms, bool) or not max_rms > 0:
        raise BadParameterError(f"max_rms must be a positive number, got {max_rms!r}")
    clipped = 0
    for module in model.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        weight = module.weight
        flat = weight.reshape(weight.shape[0], -1)
        rms = flat.pow(2).mean(dim=1).sqrt()
        over = rms > max_rms
        if over.any():
            scale = torch.where(over, max_rms / rms, torch.ones_like(rms))
            weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
            clipped += int(over.sum())
    return clipped


@register_model("zfnet")
def _build_zfnet(weights) -> LoadedModel:
    """Zeiler & Fergus's network; no pretrained weights exist, so ``"default"`` is a random init."""
    module = ZFNet().eval()
    return LoadedModel(
        name="zfnet",
        module=module,
        preprocessing=Preprocessing(),
        labels=imagenet_labels(),
        default_layer="features.relu5",  # the paper's layer 5 (13x13)
        middle_layer="features.relu3",  # layer 3 (13x13), the paper's first deconvnet showcase
        weights_id="random",
    )


@register_model("zfnet_small")
def _build_zfnet_small(weights) -> LoadedModel:
    """Small ZF-style network, 10 classes, random init (``"default"`` too); labels unknown."""
    module = ZFNetSmall().eval()
    return LoadedModel(
        name="zfnet_small",
        module=module,
        preprocessing=SMALL_PREPROCESSING,
        labels=None,
        default_layer="features.relu4",  # last conv stage before pooling (4x4)
        middle_layer="features.relu2",  # 8x8
        weights_id="random",
    )


register_weights_status("zfnet", RANDOM_WEIGHTS)   # no public ZF-Net weights exist
register_weights_status("zfnet_small", RANDOM_WEIGHTS)
