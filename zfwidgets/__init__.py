"""zfwidgets: Zeiler & Fergus (ECCV 2014) visualizations as live Jupyter widgets over any CNN.

The public API is what this module exports. Layers: ``backend`` (torch only) ->
``plots`` (matplotlib) -> ``widgets`` (ipywidgets + ipympl). Widgets are imported lazily (on first
use of their name), so ``import zfwidgets`` stays light and never pulls in a GUI stack.
"""

from .backend import RULES, Geometry, LayerInfo, RuleMode, Session, Target, project, projection_to_rgb
from .backend.experiments import (AscentResult, CorrespondenceResult, EvolutionResult,
                                  FilterDiagnosis, InvarianceResult, ProbeResult, ascent,
                                  correspondence, diagnose_filters, feature_evolution, invariance,
                                  probe)
from .backend.explain import (ClassMap, Explanation, KnockoutComparison, KnockoutEffect,
                              SanityResult, explain, knockout_comparison, knockout_effect,
                              sanity_check)
from .backend.occlusion import OcclusionResult, occlusion_maps
from .backend.mining import LayerTopK, MiningResult, load_result, merge, mine
from .backend.project import Gallery, ProjectionCrop, gallery, projection_crop, saturation_note
from .data import (DEFAULT_SAMPLE, OCCLUSION_SAMPLE, load_image, load_sample, sample_images,
                   sample_info)
from .data.datasets import ImageFolder, ImageList, sample_collection
from .errors import (BadImageError, BadParameterError, Cancelled, DataError, OutOfRangeError,
                     StorageError, UnknownClassError, UnknownLayerError, UnsupportedModelError,
                     WeightsUnavailableError, ZFError)
from .models import (LoadedModel, Preprocessing, default_model, get_model, list_models,
                     model_status, register_model, wrap_model)

__version__ = "0.1.0"

_WIDGETS = ("Explorer", "explore", "LayerSelector", "FeatureMapGrid", "DeconvView", "ImageChooser",
            "TopPredictions", "OcclusionExplorer", "PatchGallery")

__all__ = [
    "RULES", "Geometry", "LayerInfo", "RuleMode", "Session", "Target", "project",
    "projection_to_rgb", "OcclusionResult", "occlusion_maps", "InvarianceResult", "invariance",
    "AscentResult", "ascent", "FilterDiagnosis", "diagnose_filters", "EvolutionResult",
    "feature_evolution", "CorrespondenceResult", "correspondence", "ProbeResult", "probe",
    "Gallery", "LayerTopK", "MiningResult", "gallery", "load_result", "merge", "mine",
    "ClassMap", "Explanation", "KnockoutComparison", "KnockoutEffect", "SanityResult", "explain",
    "knockout_comparison", "knockout_effect", "sanity_check",
    "ProjectionCrop", "projection_crop", "saturation_note",
    "DEFAULT_SAMPLE", "OCCLUSION_SAMPLE", "load_image", "load_sample", "sample_images",
    "sample_info",
    "ImageFolder", "ImageList", "sample_collection",
    "BadImageError", "BadParameterError", "Cancelled", "DataError", "OutOfRangeError",
    "StorageError", "UnknownClassError", "UnknownLayerError",
    "UnsupportedModelError", "WeightsUnavailableError", "ZFError",
    "LoadedModel", "Preprocessing", "default_model", "get_model", "list_models", "model_status",
    "register_model", "wrap_model",
    *_WIDGETS,
]


def __getattr__(name: str):
    if name in _WIDGETS:
        from . import widgets

        if name == "OcclusionExplorer":
            from .widgets.occlusion import OcclusionExplorer as value
        elif name == "PatchGallery":
            from .widgets.gallery import PatchGallery as value
        else:
            value = getattr(widgets, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zfwidgets' has no attribute {name!r}")
