"""zfwidgets: Zeiler & Fergus (ECCV 2014) visualizations as live Jupyter widgets over any CNN.

The public API is what this module exports. Layers: ``backend`` (torch only) ->
``plots`` (matplotlib) -> ``widgets`` (ipywidgets + ipympl); widgets are imported lazily so that
``import zfwidgets`` stays light and never pulls in a GUI stack.
"""

from .backend import RULES, Geometry, LayerInfo, RuleMode, Session, Target, project, projection_to_rgb
from .data import DEFAULT_SAMPLE, load_image, load_sample, sample_images
from .errors import (BadImageError, BadParameterError, DataError, OutOfRangeError, UnknownLayerError,
                     UnsupportedModelError, WeightsUnavailableError, ZFError)
from .models import LoadedModel, Preprocessing, get_model, list_models, register_model, wrap_model

__version__ = "0.1.0"

__all__ = [
    "RULES", "Geometry", "LayerInfo", "RuleMode", "Session", "Target", "project",
    "projection_to_rgb",
    "DEFAULT_SAMPLE", "load_image", "load_sample", "sample_images",
    "BadImageError", "BadParameterError", "DataError", "OutOfRangeError", "UnknownLayerError",
    "UnsupportedModelError", "WeightsUnavailableError", "ZFError",
    "LoadedModel", "Preprocessing", "get_model", "list_models", "register_model", "wrap_model",
]
