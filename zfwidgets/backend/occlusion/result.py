"""The result of an occlusion sweep (the paper's Fig. 7 b, d, e): plain maps and how to read them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ...errors import BadParameterError, OutOfRangeError
from .grid import check_int

__all__ = ["OcclusionResult"]


@dataclass
class OcclusionResult:
    """Occlusion maps of one image (the paper's Fig. 7 b, d, e).

    Map entry ``[i, j]`` belongs to the occluder whose top-left corner is
    ``(rows[i], cols[j])`` in the model's input (see :meth:`extent` to draw it over the image).

    Attributes
    ----------
    prob : numpy.ndarray
        ``[R, C]`` probability of ``target`` with the occluder there (Fig. 7 d); with several
        classes the sum of their probabilities.
    top_class : numpy.ndarray
        ``[R, C]`` most probable class id (Fig. 7 e); names in ``labels``.
    top_prob : numpy.ndarray
        ``[R, C]`` probability of that class.
    feature : numpy.ndarray or None
        ``[R, C]`` total activation of ``channel`` of ``layer`` (Fig. 7 b); ``None`` when the
        sweep ran without a layer.
    layer : str or None
        Layer id of ``feature``.
    channel : int or None
        Feature map of ``layer``; by default its strongest on the unoccluded image.
    target : int
        Class whose probability ``prob`` holds; by default the unoccluded top class. With
        several classes (``targets``), the first of them.
    target_label : str
        Its name; with several classes their names joined, ``"tabby + tiger cat"``.
    size, stride : int
        Occluder side and step, input pixels.
    rows, cols : numpy.ndarray
        Occluder corners (top, left) of the map's rows and columns.
    image_shape : tuple of int
        Input ``(H, W)``.
    base_prob : float
        ``P(target)`` without occluder (the summed probability of ``targets``).
    base_class : int
        Most probable class without occluder.
    base_feature : float or None
        The feature total without occluder.
    labels : dict of int to str
        Names of ``target``, ``base_class`` and every class in ``top_class``.
    features : numpy.ndarray or None
        ``[R, C, channels]``: the total of *every* channel of ``layer`` (so that another channel
        costs nothing: :meth:`for_channel`).
    base_features : numpy.ndarray or None
        ``[channels]`` totals without occluder.
    fill : str or float
        Occluder fill as requested.
    method : str
        ``"incremental"``, ``"plain"`` (how it was computed; the values agree) or
        ``"approximate"``. With ``method="auto"`` the method chosen (a timed probe may have
        computed a few positions by the other one).
    seconds : float
        Wall time of the sweep (of the sweep so far, for a stage).
    targets : tuple of int
        Every class summed in ``prob`` (``(target,)`` for one class).
    method_note : str
        Why ``method`` was used (``method="auto"``'s probe, a remembered choice, hooks ...).
    partial : bool
        Whether this is a coarse stage of a progressive sweep (``stride`` is then the stage's);
        ``False`` for the requested map.
    positions : int
        Occluded images run through the model for this result (the stages' positions are
        computed once: a progressive sweep's final result counts ``R * C``).
    approx_error : float or None
        For ``method="approximate"``: the largest ``|P difference|`` against exact values at
        ``approx_checked`` positions chosen at random; ``None`` for exact results.
    approx_mean_error : float or None
        The mean ``|P difference|`` at those positions.
    approx_checked : int
        How many positions were checked exactly.
    """

    prob: np.ndarray
    top_class: np.ndarray
    top_prob: np.ndarray
    feature: np.ndarray | None
    layer: str | None
    channel: int | None
    target: int
    target_label: str
    size: int
    stride: int
    rows: np.ndarray
    cols: np.ndarray
    image_shape: tuple[int, int]
    base_prob: float
    base_class: int
    base_feature: float | None
    labels: dict[int, str] = field(default_factory=dict)
    features: np.ndarray | None = field(default=None, repr=False)
    base_features: np.ndarray | None = field(default=None, repr=False)
    fill: str | float = "gray"
    method: str = "incremental"
    seconds: float = 0.0
    targets: tuple[int, ...] = ()
    method_note: str = ""
    partial: bool = False
    positions: int = 0
    approx_error: float | None = None
    approx_mean_error: float | None = None
    approx_checked: int = 0

    def __post_init__(self):
        if not self.targets:
            self.targets = (int(self.target),)

    @property
    def shape(self) -> tuple[int, int]:
        """Map shape ``(R, C)``."""
        return self.prob.shape

    def for_channel(self, channel: int) -> OcclusionResult:
        """The same maps with ``feature`` showing another channel of ``layer`` (no recompute).

        Raises
        ------
        OutOfRangeError
            If ``channel`` is not a channel of ``layer``.
        """
        if self.features is None:
            raise BadParameterError("this result has no feature maps (it was computed without "
                                    "a layer)")
        channel = check_int("channel", channel)
        count = self.features.shape[-1]
        if not 0 <= channel < count:
            raise OutOfRangeError(f"channel {channel} is out of range for layer {self.layer!r} "
                                  f"({count} channels: 0..{count - 1})")
        return replace(self, channel=channel, feature=self.features[..., channel],
                       base_feature=float(self.base_features[channel]))

    def corner(self, i: int, j: int) -> tuple[int, int]:
        """Occluder corner ``(top, left)`` of map entry ``[i, j]``."""
        return int(self.rows[i]), int(self.cols[j])

    def index_of(self, y: float, x: float) -> tuple[int, int]:
        """Map entry whose occluder centre is nearest to input pixel ``(y, x)``."""
        half = (self.size - 1) / 2
        i = int(np.clip(np.rint((y - half - self.rows[0]) / self.stride), 0, len(self.rows) - 1))
        j = int(np.clip(np.rint((x - half - self.cols[0]) / self.stride), 0, len(self.cols) - 1))
        return i, j

    def extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` for ``imshow`` over the input image.

        Each map cell is centred on the centre of its occluder and is ``stride`` wide, in the
        coordinates of an image drawn by ``imshow`` (pixel ``k`` centred at ``k``).
        """
        half = (self.size - 1) / 2
        s = self.stride
        return (float(self.cols[0] + half - s / 2), float(self.cols[-1] + half + s / 2),
                float(self.rows[-1] + half + s / 2), float(self.rows[0] + half - s / 2))

    def classes(self) -> list[tuple[int, str, int]]:
        """Classes of ``top_class`` as ``(class_id, label, count)``, most frequent first."""
        ids, counts = np.unique(self.top_class, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return [(int(ids[k]), self.labels.get(int(ids[k]), f"class {int(ids[k])}"),
                 int(counts[k])) for k in order]

    def heatmap(self, which: str = "prob") -> np.ndarray:
        """A map at input resolution: each pixel averages the entries of the occluders covering it.

        Parameters
        ----------
        which : {"prob", "feature", "top_prob", "drop"}
            ``"drop"`` is ``base_prob - prob`` (how much hiding a pixel costs the target).

        Returns
        -------
        numpy.ndarray
            ``[H, W]`` float32; NaN where no occluder ever covered the pixel.
        """
        values = {"prob": self.prob, "feature": self.feature, "top_prob": self.top_prob,
                  "drop": None if self.prob is None else self.base_prob - self.prob}.get(which)
        if values is None:
            raise BadParameterError(f"heatmap of {which!r} is not available; choose prob, "
                                    "feature, top_prob or drop")
        H, W = self.image_shape
        acc = np.zeros((H + 1, W + 1), np.float64)
        cnt = np.zeros((H + 1, W + 1), np.float64)
        s = self.size
        for i, top in enumerate(self.rows):  # 2-d difference arrays: O(R*C + H*W)
            for j, left in enumerate(self.cols):
                v = float(values[i, j])
                for arr, val in ((acc, v), (cnt, 1.0)):
                    arr[top, left] += val
                    arr[top, left + s] -= val
                    arr[top + s, left] -= val
                    arr[top + s, left + s] += val
        acc = acc.cumsum(0).cumsum(1)[:H, :W]
        cnt = cnt.cumsum(0).cumsum(1)[:H, :W]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(cnt > 0.5, acc / np.maximum(cnt, 1), np.nan)
        return out.astype(np.float32)
