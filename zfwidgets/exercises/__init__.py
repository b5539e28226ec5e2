"""Exercises: checkers that compare a student's function with zfwidgets' reference.

Each tutorial has student cells ("write the unpooling with switches", "write the guided rule",
"compute a receptive field by the recursion", "write the occlusion loop", "write Grad-CAM",
"pick a map's top 9", "measure a feature distance", "write gradient saliency", "measure the
aliased energy of strided filters", "write feature scale clipping", "compute the consistency
score", "knock feature maps out").
A checker runs the student's function on a few cases chosen to catch the usual mistakes
(seeded random inputs, several shapes, overlapping pooling windows, border units, strides,
dilation ...), compares each answer with the library's own computation, and prints a verdict:
``PASSED``, or ``NOT YET`` with the case that differs, the largest difference and where, and
a hint (when the answer matches a known mistake, the hint names it). A stub (a function that
returns ``None`` or ``...`` or raises ``NotImplementedError``) is "not yet", never an error,
so a notebook with unsolved cells still runs; ``strict=True`` raises
:class:`~zfwidgets.errors.ExerciseFailed` instead (tests, solution notebooks).

================================  ============================================  ====================
checker                           the student's function                        reference
================================  ============================================  ====================
``check_unpooling``               ``fn(signal, switches, input_size)``          ``max_pool2d``'s
                                  ``-> [H, W]``                                 gradient
``check_guided_rule``             ``fn(grad, forward_input) -> grad_in``        ``RuleMode``
                                  (``rule="guided"``, ``"deconvnet"``,
                                  ``"gradient"``)
``check_receptive_field``         ``fn([(kernel, stride, padding, dilation),    the tracked
                                  ...]) -> (size, stride, start)``              geometry
``check_occlusion_loop``          ``fn(model, x, size, stride, fill, target)``  ``occlusion_maps``
                                  ``-> [R, C]``
``check_gradcam``                 ``fn(model, x, layer, target)``               ``GradCAM``
                                  ``-> [h, w]`` or ``[H, W]``
``check_top_k``                   ``fn(maps, k) -> [(value, image, y, x),       the miner
                                  ...]`` (one hit per image)                    (``zf.mine``)
``check_feature_distance``        ``fn(reference, transformed) -> float``       Fig. 5's relative
                                                                                distance
``check_saliency``                ``fn(model, x, target) -> [H, W]``            ``Saliency``
``check_aliased_energy``          ``fn(weight, stride, size) -> [F]``           ``aliased_energy``
                                                                                (Fig. 6)
``check_feature_scale_clipping``  ``fn(weight, radius) -> weight``              ``train``'s clipping
``check_consistency``             ``fn(changes [N, D]) -> float``               ``sign_consistency``
                                                                                (Table 1)
``check_knockout``                ``fn(model, layer, channels, x) -> logits``   ``AblatedModel``
================================  ============================================  ====================

Each returns a :class:`Verdict` (``.passed``, ``.status``, ``.case``, ``.detail``, ``.hint``).
:func:`layer_chain` lists a session's convolutions and poolings up to a layer in the receptive-field
exercise's format, so a student's recursion can be tried on a real model; :func:`small_cnn` is the
small random classifier the occlusion checker uses.
Solutions of the tutorials' cells are in ``notebooks/solutions/``.

Examples
--------
>>> from zfwidgets import exercises
>>> verdict = exercises.check_guided_rule(lambda g, x: g.clamp(min=0))   # doctest: +SKIP
NOT YET the guided backprop rule: 0 of 6 cases agree; case 1 differs from the reference.
  ...
  hint: this is the deconvnet's rule: it rectifies the signal but does not gate it by the
  forward pass; ...
"""

from .aliasing import check_aliased_energy
from .clipping import check_feature_scale_clipping
from .consistency import check_consistency
from .deconvnet import check_guided_rule, check_unpooling
from .gradcam import check_gradcam
from .knockout import check_knockout
from .occlusion import check_occlusion_loop, small_cnn
from .receptive_field import check_receptive_field, layer_chain
from .saliency import check_saliency
from .topk import check_feature_distance, check_top_k
from .verdict import Verdict

__all__ = ["Verdict", "check_aliased_energy", "check_consistency", "check_feature_distance",
           "check_feature_scale_clipping", "check_gradcam", "check_guided_rule", "check_knockout",
           "check_occlusion_loop", "check_receptive_field", "check_saliency", "check_top_k",
           "check_unpooling", "layer_chain", "small_cnn"]
