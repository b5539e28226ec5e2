"""zfwidgets: Zeiler & Fergus (ECCV 2014) visualizations as live Jupyter widgets over any CNN.

The public API is what this module exports. Layers: ``backend`` (torch only) ->
``plots`` (matplotlib) -> ``widgets`` (ipywidgets + ipympl).

Every name is imported lazily, on its first use (``zfwidgets.Session``, ``from zfwidgets import
explore``): ``import zfwidgets`` itself imports neither torch nor a GUI stack, so that the
``zfwidgets`` command starts at once and a tool that only needs a name pays only for it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: where each public name lives: module (relative to this package) -> names
_HOMES = {
    ".backend": ("RULES", "Geometry", "LayerInfo", "RuleMode", "Session", "Target", "project",
                 "projection_to_rgb"),
    ".backend.occlusion": ("OcclusionResult", "occlusion_maps"),
    ".backend.experiments": ("InvarianceResult", "invariance", "AscentResult", "ascent",
                             "FilterDiagnosis", "diagnose_filters", "EvolutionResult",
                             "feature_evolution", "CorrespondenceResult", "correspondence",
                             "ProbeResult", "probe"),
    ".backend.project": ("Gallery", "ProjectionCrop", "gallery", "projection_crop",
                         "saturation_note"),
    ".backend.explain": ("ClassMap", "Explanation", "KnockoutComparison", "KnockoutEffect",
                         "SanityResult", "explain", "knockout_comparison", "knockout_effect",
                         "sanity_check"),
    ".backend.mining": ("LayerTopK", "MiningResult", "load_result", "merge", "mine"),
    ".data": ("DEFAULT_SAMPLE", "OCCLUSION_SAMPLE", "load_image", "load_sample", "sample_images",
              "sample_info"),
    ".data.datasets": ("ImageFolder", "ImageList", "sample_collection"),
    ".errors": ("BadImageError", "BadParameterError", "Cancelled", "DataError",
                "OutOfRangeError", "StorageError", "UnknownClassError", "UnknownLayerError",
                "UnsupportedModelError", "WeightsUnavailableError", "ZFError"),
    ".models": ("LoadedModel", "Preprocessing", "default_model", "get_model", "list_models",
                "model_status", "register_model", "wrap_model"),
    ".threads": ("available_cpus", "set_threads", "using_threads"),
    ".widgets": ("Explorer", "explore", "LayerSelector", "FeatureMapGrid", "DeconvView",
                 "ImageChooser", "TopPredictions"),
    ".widgets.occlusion": ("OcclusionExplorer",),
    ".widgets.gallery": ("PatchGallery",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
_SUBPACKAGES = ("backend", "cli", "data", "errors", "fingerprint", "models", "plots", "threads",
                "widgets")

__all__ = [name for names in _HOMES.values() for name in names]


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module("." + name, __name__)
    else:
        raise AttributeError(f"module 'zfwidgets' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
