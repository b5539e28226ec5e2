"""Jupyter widgets (ipywidgets 8 + ipympl) over a :class:`~zfwidgets.Session`.

Every view takes the session as its first argument, keeps its state in traits (``layer``,
``channel`` ...), redraws in place when the session's image or model changes, shows errors
inside itself, and computes nothing while it is hidden (``view.shown = False``; the explorer
hides the views of the tabs not selected, :func:`set_shown` does it for any container). :class:`Explorer` puts them together; :func:`explore` is the one-liner.

Modules: ``canvas`` (ipympl figures outside pyplot), ``base`` (the view skeleton every view
subclasses), ``runner`` (long jobs stepped from the kernel's event loop), then one module per
view (``selector``, ``grid``, ``deconv``, ``images``, ``occlusion``, ``gallery``,
``explain``) and ``explorer``, which combines them.

Importing this package needs no display and no running kernel.
"""

from .base import ErrorBox, set_shown
from .canvas import canvas_figure, close_figure
from .deconv import DeconvView
from .explorer import Explorer, explore
from .grid import FeatureMapGrid
from .images import ImageChooser, TopPredictions
from .selector import LayerSelector

__all__ = ["DeconvView", "ErrorBox", "Explorer", "FeatureMapGrid", "ImageChooser",
           "LayerSelector", "TopPredictions", "canvas_figure", "close_figure", "explore",
           "set_shown"]
