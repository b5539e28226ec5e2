"""Occlusion sensitivity (the paper's Fig. 7), exact and incremental.

A square of ``fill`` colour is slid over the image; for every occluder position the sweep
records the probability of a target class, the most probable class, and the total activation of
one feature map of a top convolutional layer (the map strongest on the unoccluded image).

Modules, one idea each:

* :mod:`.grid`: where the occluder goes and what colour it is (corners, fills, occluded copies);
* :mod:`.engine`: incremental inference (:class:`IncrementalMode`): placeholders for the batch
  of occluded images, a dense fallback that is always exact, the interface handlers use;
* :mod:`.table`: the one table of op handlers (``@handles``), read by the engine;
* :mod:`.handlers`: the per-op handlers, registered in that table (add an op there);
* :mod:`.fusion`: a pending convolution that folds a following batch norm and ReLU;
* :mod:`.choice`: how ``method="auto"`` picks the engine or plain passes (a timed probe);
* :mod:`.batches`: one batch through the engine or plainly, timed for the choice;
* :mod:`.progressive`: a coarse map first, refined stage by stage (each exact);
* :mod:`.approx`: Krypton's approximate mode (an option, with its error measured);
* :mod:`.sweep`: the sweep over any classifier as a job (:func:`occlusion_maps`);
* :mod:`.result`: :class:`OcclusionResult`, the maps and how to read them;
* :mod:`.session`: the sweep of a session's image (:func:`occlusion`, :func:`occlusion_job`),
  one-occluder predictions.
"""

from .approx import Approximation
from .engine import IncrementalMode
from .grid import FILLS, fill_tensor, occlude, occlusion_grid
from .handlers import HANDLERS, handles  # importing the handlers fills the table
from .result import OcclusionResult
from .session import fill_rgb, occluded_prediction, occlusion, occlusion_job
from .sweep import occlusion_maps, occlusion_maps_job

__all__ = [
    "Approximation",
    "FILLS",
    "HANDLERS",
    "IncrementalMode",
    "OcclusionResult",
    "fill_rgb",
    "fill_tensor",
    "handles",
    "occlude",
    "occluded_prediction",
    "occlusion",
    "occlusion_grid",
    "occlusion_job",
    "occlusion_maps",
    "occlusion_maps_job",
]
