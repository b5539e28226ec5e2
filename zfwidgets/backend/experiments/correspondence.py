"""Correspondence analysis (the paper's Fig. 8 and Table 1): does the network encode the same
object part the same way in different images?

Take images of one kind of object (the paper: five dogs, frontal pose) and, for each image ``i``,
hide one part (left eye, right eye, nose) with a gray square. At layer ``l`` the part's effect is
``eps_i = x_i - x~_i``, the feature vector of the original minus that of the occluded image. If
the network encodes the part consistently, these differences point the same way in every image:
the *consistency* score

    Delta_l = mean over pairs i < j of Hamming(sign(eps_i), sign(eps_j)) / len(eps)

(the fraction of features whose change has a different sign; the paper sums over pairs, which
only scales it) is low. The same score for squares at *random* places is the baseline. The paper
found parts clearly more consistent than random at layer 5 and much less so at layer 7, where the
representation is about the class rather than the parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import BadParameterError
from ..defaults import correspondence_layers
from ..layers import layouts_of, run_captured, scoped_eval

__all__ = ["CorrespondenceResult", "correspondence", "sign_consistency"]

Box = tuple[int, int, int, int]


@dataclass
class CorrespondenceResult:
    """Consistency scores per part and layer (lower = more consistent).

    Attributes
    ----------
    layers : list of str
    parts : list of str
        Part names in the order given, then ``"random"``.
    pairs : dict of (str, str) to numpy.ndarray
        ``(part, layer)`` -> ``[P]`` the normalized Hamming distances between the signs of the
        feature changes of every pair of images (0: identical signs everywhere, 0.5:
        unrelated); for ``"random"``: each trial's mean over the pairs.
    score : dict of (str, str) to float
        ``(part, layer)`` -> the mean of ``pairs``.
    spread : dict of (str, str) to float
        Standard deviation of ``pairs``: over the image pairs for a part, over the random
        trials for ``"random"`` (as in the paper's Table 1).
    boxes : dict of str to list of (int, int, int, int)
        The occluded squares per part and image, ``(top, left, bottom, right)`` in input pixels
        (for ``"random"``: those of the first trial).
    """

    layers: list[str]
    parts: list[str]
    pairs: dict[tuple[str, str], np.ndarray] = field(repr=False)
    boxes: dict[str, list[Box]] = field(repr=False)

    @property
    def score(self) -> dict[tuple[str, str], float]:
        return {key: float(v.mean()) for key, v in self.pairs.items()}

    @property
    def spread(self) -> dict[tuple[str, str], float]:
        return {key: float(v.std()) for key, v in self.pairs.items()}

    def table(self) -> list[tuple[str, ...]]:
        """Rows ``(part, "score ± spread" per layer)``, like the paper's Table 1."""
        score, spread = self.score, self.spread
        return [(part, *(f"{score[(part, layer)]:.3f} ± {spread[(part, layer)]:.3f}"
                         for layer in self.layers)) for part in self.parts]


def sign_consistency(changes: torch.Tensor) -> np.ndarray:
    """Normalized Hamming distances between the signs of every pair of rows.

    Parameters
    ----------
    changes : torch.Tensor
        ``[N, D]`` one feature-change vector per image.

    Returns
    -------
    numpy.ndarray
        ``[N (N - 1) / 2]`` fraction of the ``D`` entries whose signs differ, pairs ``(i, j)``
        with ``i < j`` in row-major order.
    """
    s = torch.sign(changes)
    n, d = s.shape[0], s[0].numel()
    out = [int((s[i] != s[j]).sum()) / d for i in range(n) for j in range(i + 1, n)]
    return np.asarray(out, dtype=np.float64)


def _check_boxes(name: str, boxes, n: int, H: int, W: int) -> list[Box]:
    boxes = [tuple(int(v) for v in b) for b in boxes]
    if len(boxes) != n:
        raise BadParameterError(f"part {name!r} has {len(boxes)} boxes for {n} images")
    for b in boxes:
        if len(b) != 4:
            raise BadParameterError(f"part {name!r}: a box is (top, left, bottom, right), got {b}")
        top, left, bottom, right = b
        if not (0 <= top < bottom <= H and 0 <= left < right <= W):
            raise BadParameterError(f"part {name!r}: box {b} is empty or outside the {H}x{W} "
                                    "input")
    return boxes


def _occluded(x: torch.Tensor, boxes: Sequence[Box], fill: float) -> torch.Tensor:
    out = x.clone()
    for i, (top, left, bottom, right) in enumerate(boxes):
        out[i, :, top:bottom, left:right] = fill
    return out


def correspondence(session, images: Any, parts: Mapping[str, Sequence[Box]],
                   layers: Sequence[str] | None = None, *, random_trials: int = 10,
                   seed: int = 0, fill: float = 0.0) -> CorrespondenceResult:
    """Consistency of part occlusions across images, against random occlusions (Table 1).

    Parameters
    ----------
    session : Session
        Gives the model and its preprocessing.
    images : sequence of images, or torch.Tensor
        At least two pictures of the same kind of object: anything
        :func:`zfwidgets.load_image` reads (preprocessed with the session's preprocessing), or
        a ``[N, 3, H, W]`` tensor already in the model's normalized input space.
    parts : mapping of str to sequence of boxes
        Per part name, one ``(top, left, bottom, right)`` box per image, in input pixels of the
        model's view (bottom and right exclusive).
    layers : sequence of str, optional
        Default :func:`~zfwidgets.backend.defaults.correspondence_layers` (the model's middle
        and top feature layers, the paper's layers 5 and 7).
    random_trials : int
        Trials of the random baseline; each puts, in every image, a square of that image's mean
        part size at a random place.
    seed : int
        Seeds the random squares.
    fill : float
        Occluder value in normalized space (0: the model's mean colour, the paper's gray).

    Returns
    -------
    CorrespondenceResult

    Raises
    ------
    BadParameterError
        Fewer than two images, no parts, a box that is empty, outside the input, or missing for
        an image, ``random_trials`` < 1.
    UnknownLayerError
        Unknown layer.
    """
    x = _inputs(session, images)
    n, _, H, W = x.shape
    if n < 2:
        raise BadParameterError("correspondence needs at least two images")
    if not parts:
        raise BadParameterError("no parts given")
    if isinstance(random_trials, bool) or not isinstance(random_trials, int) or random_trials < 1:
        raise BadParameterError(f"random_trials must be a positive integer, got "
                                f"{random_trials!r}")
    boxes = {str(name): _check_boxes(str(name), b, n, H, W) for name, b in parts.items()}
    if "random" in boxes:
        raise BadParameterError("'random' is the baseline's name; call the part something else")
    layers = list(dict.fromkeys(correspondence_layers(session) if layers is None else layers))
    for layer in layers:
        session.layer_info(layer)

    def consistency(bxs) -> dict[str, np.ndarray]:
        hidden = _features(session, _occluded(x, bxs, fill), layers)
        return {layer: sign_consistency(clean[layer] - hidden[layer]) for layer in layers}

    clean = _features(session, x, layers)
    pairs = {}
    for name, bxs in boxes.items():
        for layer, score in consistency(bxs).items():
            pairs[(name, layer)] = score
    trials = {layer: [] for layer in layers}
    random_boxes = _random_boxes(boxes, n, H, W, random_trials, seed)
    for bxs in random_boxes:
        for layer, score in consistency(bxs).items():
            trials[layer].append(float(score.mean()))
    for layer in layers:
        pairs[("random", layer)] = np.asarray(trials[layer])
    boxes["random"] = random_boxes[0]
    return CorrespondenceResult(layers=layers, parts=list(boxes), pairs=pairs, boxes=boxes)


def _inputs(session, images) -> torch.Tensor:
    """The images as a normalized ``[N, 3, H, W]`` batch on the session's device."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise BadParameterError(f"an image tensor must be [N, 3, H, W], got "
                                    f"{list(images.shape)}")
        return images.detach().to(session.input_tensor)
    from ...data import load_image

    return torch.cat([session.preprocessing(load_image(im)) for im in images]).to(
        session.input_tensor)


def _features(session, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each layer's output for ``batch``, flattened per image, in float64."""
    found: dict[str, torch.Tensor] = {}

    def keep(layer, out):
        found[layer] = out.detach().flatten(1).double()

    with torch.inference_mode(), scoped_eval(session.model):
        run_captured(session.model, batch, layers, keep, known=session.layers,
                     layouts=layouts_of(session, layers))
    return found


def _random_boxes(boxes: Mapping[str, list[Box]], n: int, H: int, W: int, trials: int,
                  seed: int) -> list[list[Box]]:
    """The random baseline: per trial, in every image a square of that image's mean part size
    at a random place."""
    sizes = np.array([[np.mean([b[i][2] - b[i][0] for b in boxes.values()]),
                       np.mean([b[i][3] - b[i][1] for b in boxes.values()])] for i in range(n)])
    sizes = np.maximum(1, np.round(sizes)).astype(int)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        bxs = []
        for i in range(n):
            h, w = sizes[i]
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            bxs.append((top, left, top + h, left + w))
        out.append(bxs)
    return out
