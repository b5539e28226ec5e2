"""The paper's further experiments, each a function of a :class:`~zfwidgets.Session` that
returns plain data (plots in :mod:`zfwidgets.plots`).

* :mod:`.invariance`: Fig. 5, feature and prediction changes under translation, scale, rotation.
* :mod:`.ascent`: gradient ascent on the input (a class or a feature map), with blur, decay and
  clipping, from the course material beside the paper.
"""

from .ascent import AscentResult, ascent, gaussian_blur
from .invariance import InvarianceResult, invariance, invariance_layers, transform

__all__ = ["AscentResult", "InvarianceResult", "ascent", "gaussian_blur", "invariance",
           "invariance_layers", "transform"]
