"""The paper's further experiments, each a function of a :class:`~zfwidgets.Session` that
returns plain data (plots in :mod:`zfwidgets.plots`).

* :mod:`.invariance`: Fig. 5, feature and prediction changes under translation, scale, rotation.
* :mod:`.ascent`: gradient ascent on the input (a class or a feature map), with blur, decay and
  clipping, from the course material beside the paper (also a job: :func:`.ascent_job`).
* :mod:`.diagnosis`: Fig. 6, dead filters, frequency coverage and aliasing of a layer's filters.
* :mod:`.evolution`: Fig. 4, chosen feature maps' strongest hits across training snapshots.
* :mod:`.correspondence`: Fig. 8 / Table 1, consistency of part occlusions across images.
* :mod:`.probes`: Tables 4-7, linear-probe accuracy of each layer with few examples per class.
"""

from .ascent import AscentResult, AscentState, ascent, ascent_job, gaussian_blur
from .correspondence import CorrespondenceResult, correspondence, sign_consistency
from .diagnosis import FilterDiagnosis, diagnose_filters, filter_spectra
from .evolution import EvolutionResult, feature_evolution
from .invariance import InvarianceResult, invariance, transform
from .probes import ProbeResult, layer_features, probe

__all__ = ["AscentResult", "AscentState", "CorrespondenceResult", "EvolutionResult",
           "FilterDiagnosis", "InvarianceResult", "ProbeResult", "ascent", "ascent_job",
           "correspondence", "diagnose_filters", "feature_evolution", "filter_spectra",
           "gaussian_blur", "invariance", "layer_features", "probe", "sign_consistency",
           "transform"]
