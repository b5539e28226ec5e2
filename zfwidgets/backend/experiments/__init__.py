"""The paper's further experiments, each a function of a :class:`~zfwidgets.Session` that
returns plain data (plots in :mod:`zfwidgets.plots`).

* :mod:`.invariance`: Fig. 5, feature and prediction changes under translation, scale, rotation.
"""

from .invariance import InvarianceResult, invariance, invariance_layers, transform

__all__ = ["InvarianceResult", "invariance", "invariance_layers", "transform"]
