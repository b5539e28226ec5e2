"""Class-level explanations, their honest numbers, and causal ablation (torch only).

* :mod:`.methods`: how each class map is computed (one backward pass, then what varies);
* :mod:`.maps`: class maps of a Session's image (:class:`ClassMap`; saliency, guided /
  deconvnet projections, Grad-CAM, guided Grad-CAM);
* :mod:`.agreement`: Spearman rank correlation, SSIM, maps at the occlusion grid, deletion
  curves;
* :mod:`.explanation`: every map beside the exact occlusion map, with agreement and deletion
  (:func:`explain`, a job);
* :mod:`.sanity`: the model-randomization sanity check (Adebayo et al. 2018, a job);
* :mod:`.ablation`: sessions with feature maps knocked out (:meth:`Session.ablated`);
* :mod:`.knockout`: what knocking maps out does over a data set (strongest vs random maps).
"""

from .ablation import AblatedModel, ablated_session, intact_probabilities, knockouts
from .agreement import deletion_curve, grid_means, spearman, ssim
from .explanation import Explanation, explain, explain_job
from .knockout import (KnockoutComparison, KnockoutEffect, knockout_comparison,
                       knockout_comparison_job, knockout_effect, knockout_job)
from .maps import (ClassMap, class_map, class_projection, compute_map, gradcam, guided_gradcam,
                   saliency)
from .methods import CAM, METHODS, GradCAM, Method
from .sanity import SanityResult, randomize_layer, sanity_check, sanity_check_job

__all__ = [
    "AblatedModel", "CAM", "ClassMap", "Explanation", "GradCAM", "KnockoutComparison",
    "KnockoutEffect", "METHODS", "Method", "SanityResult", "ablated_session", "class_map",
    "class_projection", "compute_map", "deletion_curve", "explain", "explain_job", "gradcam",
    "grid_means", "guided_gradcam", "intact_probabilities", "knockout_comparison",
    "knockout_comparison_job", "knockout_effect", "knockout_job", "knockouts",
    "randomize_layer", "saliency", "sanity_check", "sanity_check_job", "spearman", "ssim",
]
