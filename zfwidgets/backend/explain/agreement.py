"""Numbers that say how far a map can be trusted: rank agreement, structure, deletion.

* :func:`spearman`: Spearman's rank correlation (ties get their average rank), the agreement
  of a class map with the exact occlusion map, and of a map with itself after the model's
  weights were randomized (the sanity check);
* :func:`ssim`: the structural similarity of two maps (Wang et al. 2004, a 7x7 uniform window);
* :func:`grid_means`: a map at the occlusion grid's resolution, the mean over each occluder's
  square (what hiding that square would remove), to rank against the occlusion drop;
* :func:`deletion_curve`: the class probability as the top-ranked pixels are greyed, in steps
  (batched forward passes); a map that ranks the pixels that matter first falls fastest. The
  pixels go in squares of a few pixels (:func:`deletion_order`): grey single pixels scattered
  over the image are an input the network never saw, and any scattered ranking, a random one
  included, destroys the class quickly; squares keep the question "where", as occlusion asks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import BadParameterError
from ..layers import scoped_eval
from ..occlusion.sweep import class_logits

__all__ = ["deletion_curve", "deletion_order", "grid_means", "rankdata", "spearman", "ssim"]


def rankdata(values) -> np.ndarray:
    """1-based ranks of the flattened ``values``; tied values share their average rank."""
    a = np.asarray(values, np.float64).ravel()
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # a run of equal values [i, j) gets the mean of ranks i+1 .. j
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(a.size, np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two arrays of the same size (flattened).

    Parameters
    ----------
    a, b : array-like
        Values; NaN is not allowed.

    Returns
    -------
    float
        In [-1, 1]; NaN when either array is constant (no ranking to compare).

    Raises
    ------
    BadParameterError
        Different sizes, fewer than two values, or NaN.
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size != b.size or a.size < 2:
        raise BadParameterError(f"spearman needs two arrays of the same size >= 2, got "
                                f"{a.size} and {b.size} values")
    if np.isnan(a).any() or np.isnan(b).any():
        raise BadParameterError("spearman got NaN values")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float("nan") if denom == 0 else float(np.clip((ra * rb).sum() / denom, -1, 1))


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)


def ssim(a, b, *, window: int = 7, normalize: bool = True) -> float:
    """Mean structural similarity of two ``[H, W]`` maps (Wang et al. 2004).

    Local means, variances and the covariance over a ``window`` x ``window`` uniform window
    (sample statistics), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with data range ``L = 1``;
    the mean over every window that fits inside the map.

    Parameters
    ----------
    a, b : array-like
        ``[H, W]`` maps of the same shape, each side at least ``window``.
    window : int
        Odd window side.
    normalize : bool
        Rescale each map to [0, 1] first (maps of different methods have different units).

    Returns
    -------
    float
        1 for identical maps; near 0 for unrelated ones.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or min(a.shape) < window or window % 2 == 0:
        raise BadParameterError(f"ssim needs two [H, W] maps of one shape with sides >= the odd "
                                f"window {window}, got {a.shape} and {b.shape}")
    if normalize:
        a, b = _unit(a), _unit(b)
    t = torch.from_numpy(np.stack([a, b, a * a, b * b, a * b]))[:, None]
    m = F.avg_pool2d(t, window, stride=1)[:, 0]
    n = window * window
    cov = n / (n - 1)
    mu_a, mu_b = m[0], m[1]
    var_a, var_b = cov * (m[2] - mu_a ** 2), cov * (m[3] - mu_b ** 2)
    var_ab = cov * (m[4] - mu_a * mu_b)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * var_ab + c2)) / \
        ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def grid_means(values: np.ndarray, rows: Sequence[int], cols: Sequence[int], size: int
               ) -> np.ndarray:
    """``[R, C]``: the mean of ``values`` ``[H, W]`` over each ``size`` x ``size`` occluder
    square with top-left corner ``(rows[i], cols[j])`` (a summed-area table)."""
    v = np.asarray(values, np.float64)
    table = np.zeros((v.shape[0] + 1, v.shape[1] + 1))
    table[1:, 1:] = v.cumsum(0).cumsum(1)
    r = np.asarray(rows, np.int64)[:, None]
    c = np.asarray(cols, np.int64)[None, :]
    s = int(size)
    total = table[r + s, c + s] - table[r, c + s] - table[r + s, c] + table[r, c]
    return (total / (s * s)).astype(np.float32)


def deletion_order(values: np.ndarray, cell: int = 1) -> np.ndarray:
    """Flat pixel indices of ``values`` ``[H, W]``, most important first.

    With ``cell > 1`` the image is cut into ``cell`` x ``cell`` squares (the last row and
    column of squares may be smaller), ranked by the mean of ``values`` over each; a square's
    pixels follow each other in raster order. Ties keep raster order; NaN counts as the
    smallest value of the map.
    """
    v = np.asarray(values, np.float64)
    if np.isnan(v).all():
        v = np.zeros_like(v)
    v = np.where(np.isnan(v), np.nanmin(v), v)
    h, w = v.shape
    cell = max(1, int(cell))
    ids = (np.arange(h)[:, None] // cell) * (-(-w // cell)) + np.arange(w)[None, :] // cell
    ids = ids.ravel()
    means = np.bincount(ids, v.ravel()) / np.bincount(ids)
    cell_rank = np.empty(means.size, np.int64)
    cell_rank[np.argsort(-means, kind="stable")] = np.arange(means.size)
    return np.lexsort((np.arange(h * w), cell_rank[ids]))


def deletion_curve(model: nn.Module, x: torch.Tensor, order: np.ndarray, classes: Sequence[int],
                   fill: torch.Tensor, steps: int = 20, batch_size: int = 16) -> np.ndarray:
    """The probability of ``classes`` as the pixels are greyed in ``order``.

    Image ``k`` (``k = 0 .. steps``) has its first ``round(k / steps * H * W)`` pixels of
    ``order`` set to ``fill`` on every channel; the images run through the model in batches.

    Parameters
    ----------
    model : nn.Module
        A classifier (eval mode for the call; left as it was).
    x : torch.Tensor
        ``[1, 3, H, W]`` normalized input.
    order : numpy.ndarray
        ``[H * W]`` flat pixel indices, most important first (:func:`deletion_order`).
    classes : sequence of int
        Their probabilities are summed.
    fill : torch.Tensor
        ``[1, 3, 1, 1]`` the grey, in normalized space (as the occluder's).
    steps : int
        Steps from nothing to every pixel greyed.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    numpy.ndarray
        ``[steps + 1]`` float32 probabilities, the first on the intact image.
    """
    h, w = int(x.shape[2]), int(x.shape[3])
    position = torch.empty(h * w, dtype=torch.long)
    position[torch.as_tensor(np.asarray(order, np.int64))] = torch.arange(h * w)
    position = position.view(1, 1, h, w).to(x.device)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    fill = fill.to(device=x.device, dtype=x.dtype).reshape(1, -1, 1, 1)
    out = []
    with torch.inference_mode(), scoped_eval(model):
        for start in range(0, steps + 1, batch_size):
            n = torch.tensor(counts[start:start + batch_size], device=x.device).view(-1, 1, 1, 1)
            grey = position < n                                   # [b, 1, H, W]
            batch = torch.where(grey, fill, x)
            p = torch.softmax(class_logits(model(batch)).float(), 1)
            out.append(p[:, list(classes)].sum(1).cpu())
    return torch.cat(out).numpy().astype(np.float32)
