"""The paper's further experiments, each a function of a :class:`~zfwidgets.Session` that
returns plain data (plots in :mod:`zfwidgets.plots`).

* :mod:`.invariance`: Fig. 5, feature and prediction changes under translation, scale, rotation.
* :mod:`.ascent`: gradient ascent on the input (a class or a feature map), with blur, decay and
  clipping, from the course material beside the paper (also a job: :func:`.ascent_job`).
* :mod:`.diagnosis`: Fig. 6, dead filters, frequency coverage and aliasing of a layer's filters.
* :mod:`.evolution`: Fig. 4, chosen feature maps' strongest hits across training snapshots.
* :mod:`.correspondence`: Fig. 8 / Table 1, consistency of part occlusions across images.
* :mod:`.probes`: Tables 4-7, linear-probe accuracy of each layer with few examples per class.
* :mod:`.training`: a small network trained here in seconds (the runs behind Figs. 4 and 6):
  the offline photo task, a deterministic training loop with feature scale clipping (a job).
"""

from .ascent import AscentResult, AscentState, ascent, ascent_job, gaussian_blur
from .correspondence import CorrespondenceResult, correspondence, sign_consistency
from .diagnosis import FilterDiagnosis, diagnose_filters, filter_spectra
from .evolution import EvolutionResult, feature_evolution
from .invariance import InvarianceResult, invariance, transform
from .probes import ProbeResult, layer_features, probe
from .training import (EpochRecord, PhotoTask, TrainingRun, photo_task, stratified_split, train,
                       train_job)

__all__ = ["AscentResult", "AscentState", "CorrespondenceResult", "EpochRecord",
           "EvolutionResult", "FilterDiagnosis", "InvarianceResult", "PhotoTask", "ProbeResult",
           "TrainingRun", "ascent", "ascent_job", "correspondence", "diagnose_filters",
           "feature_evolution", "filter_spectra", "gaussian_blur", "invariance",
           "layer_features", "photo_task", "probe", "sign_consistency", "stratified_split",
           "train", "train_job", "transform"]
