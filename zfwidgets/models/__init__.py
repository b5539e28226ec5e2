"""Models: a registry of networks with their preprocessing, labels and default layers.

Importing this package registers ``efficientnet_lite0``, ``alexnet``, ``vgg16``, ``zfnet`` and
``zfnet_small``; :func:`get_model` builds one by name, :func:`wrap_model` describes any user
``nn.Module`` the same way.

* :mod:`.registry`: names -> builders, :class:`LoadedModel`, :func:`wrap_model`,
  :func:`model_status` (what a model's default weights are here).
* :mod:`.defaults`: :func:`default_model`, the model that opens when none is named (alexnet
  when its ImageNet weights are in torch's hub cache, else efficientnet_lite0).
* :mod:`.preprocessing`: :class:`Preprocessing` and the ImageNet mean/std.
* :mod:`.weights`: checkpoint loading (``weights_only=True``) and class names.
* :mod:`.efficientnet_lite0`, :mod:`.torchvision_models`, :mod:`.zfnet`: the registered networks.
"""

from zfwidgets.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from zfwidgets.models.registry import (LoadedModel, get_model, list_models, model_status,
                                       register_model, wrap_model)
from zfwidgets.models.weights import class_name, imagenet_labels, load_checkpoint
from zfwidgets.models.efficientnet_lite0 import EfficientNetLite0  # noqa: E402 (registers)
from zfwidgets.models.torchvision_models import preprocessing_from_weights  # noqa: E402
from zfwidgets.models.zfnet import (ZFNet, ZFNetSmall, feature_scale_clipping,  # noqa: E402
                                    paper_initialization)
from zfwidgets.models.choice import ModelChoice, default_model  # noqa: E402

__all__ = [
    "get_model",
    "list_models",
    "model_status",
    "default_model",
    "ModelChoice",
    "register_model",
    "wrap_model",
    "LoadedModel",
    "Preprocessing",
    "class_name",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_labels",
    "load_checkpoint",
    "EfficientNetLite0",
    "ZFNet",
    "ZFNetSmall",
    "feature_scale_clipping",
    "paper_initialization",
    "preprocessing_from_weights",
]
