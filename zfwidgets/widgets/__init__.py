"""Jupyter widgets (ipywidgets 8 + ipympl) over a :class:`~zfwidgets.Session`.

Every view takes the session as its first argument, keeps its state in traits (``layer``,
``channel`` ...), redraws in place when the session's image or model changes, and shows errors
inside itself. :class:`Explorer` puts them together; :func:`explore` is the one-liner.

Importing this package needs no display and no running kernel.
"""

from .base import ErrorBox, canvas_figure, close_figure
from .deconv import DeconvView
from .explorer import Explorer, explore
from .grid import FeatureMapGrid
from .images import ImageChooser, TopPredictions
from .selector import LayerSelector

__all__ = ["DeconvView", "ErrorBox", "Explorer", "FeatureMapGrid", "ImageChooser",
           "LayerSelector", "TopPredictions", "canvas_figure", "close_figure", "explore"]
