"""Where the occluder goes and what colour it is: the grid of corners, the fills, the copies.

An occlusion sweep (the paper's Fig. 7) puts a ``size`` x ``size`` square with its top-left
corner at ``0, stride, 2 * stride, ...`` on each axis (:func:`occlusion_grid`), painted with a
fill colour in the model's normalized input space (:func:`fill_tensor`); :func:`occlude` makes
the occluded copies a plain forward pass would see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ...errors import BadParameterError

__all__ = ["FILLS", "check_int", "fill_tensor", "occlude", "occlusion_grid"]

#: Named occluder fills (see :func:`fill_tensor`); a float is a value in normalized input space.
FILLS = ("gray", "mean", "black", "white")


def check_int(name: str, value) -> int:
    """``value`` as an ``int`` (an integral float is accepted, a bool is not).

    Raises
    ------
    BadParameterError
        Naming ``name`` and the value, for anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise BadParameterError(f"{name} must be an integer, got {value!r}")
    return int(value)


def occlusion_grid(height: int, width: int, size: int, stride: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the occluder on each axis.

    Corners are ``0, stride, 2 * stride, ...`` up to ``side - size`` inclusive (the last corner
    is not moved to the border when ``side - size`` is not a multiple of ``stride``).

    Parameters
    ----------
    height, width : int
        Input size.
    size : int
        Side of the square occluder, ``1 <= size <= min(height, width)``.
    stride : int
        Step between positions, ``>= 1``.

    Returns
    -------
    rows, cols : numpy.ndarray
        ``int64`` corner coordinates, ``R = (height - size) // stride + 1`` rows and
        ``C = (width - size) // stride + 1`` columns.

    Raises
    ------
    BadParameterError
        For a size below 1 or above the image, or a stride below 1.
    """
    size, stride = check_int("size", size), check_int("stride", stride)
    if size < 1:
        raise BadParameterError(f"occluder size must be at least 1 pixel, got {size}")
    if size > min(height, width):
        raise BadParameterError(
            f"occluder size {size} is larger than the {height}x{width} input")
    if stride < 1:
        raise BadParameterError(f"occluder stride must be at least 1, got {stride}")
    return (np.arange(0, height - size + 1, stride, dtype=np.int64),
            np.arange(0, width - size + 1, stride, dtype=np.int64))


def fill_tensor(fill: str | float, x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """The occluder colour as a ``[1, C, 1, 1]`` tensor in the model's (normalized) input space.

    Parameters
    ----------
    fill : {"gray", "mean", "black", "white"} or float
        ``"gray"``: the model's mean pixel, i.e. 0 in normalized space (the paper's gray square).
        ``"mean"``: this image's mean colour. ``"black"`` / ``"white"``: pixel 0 / 1 (needs
        ``mean`` and ``std``). A float is used as is, in normalized space.
    x : torch.Tensor
        The normalized input ``[1, C, H, W]``.
    mean, std : sequence of float, optional
        The preprocessing's per-channel statistics (for black and white).

    Raises
    ------
    BadParameterError
        For an unknown name, a non-finite number, or black / white without ``mean`` and ``std``.
    """
    c = x.shape[1]
    shape = (1, c, 1, 1)
    if isinstance(fill, bool):
        raise BadParameterError(f"fill must be one of {', '.join(FILLS)} or a number, got {fill!r}")
    if isinstance(fill, (int, float, np.floating, np.integer)):
        if not math.isfinite(float(fill)):
            raise BadParameterError(f"fill must be a finite number, got {fill!r}")
        return torch.full(shape, float(fill), dtype=x.dtype, device=x.device)
    if fill == "gray":
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    if fill == "mean":
        return x.mean(dim=(0, 2, 3), keepdim=True)
    if fill in ("black", "white"):
        if mean is None or std is None:
            raise BadParameterError(f"fill={fill!r} needs the preprocessing's mean and std")
        pixel = 0.0 if fill == "black" else 1.0
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
        return (pixel - m) / s
    raise BadParameterError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)} or a number "
                            "(in normalized input space)")


def occlude(x: torch.Tensor, positions: Sequence[tuple[int, int]], size: int,
            fill: torch.Tensor | float = 0.0, *,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Copies of ``x`` with a ``size`` x ``size`` square set to ``fill`` at each position.

    Parameters
    ----------
    x : torch.Tensor
        ``[1, C, H, W]`` input.
    positions : sequence of (top, left)
    size : int
    fill : tensor ``[1, C, 1, 1]`` or float
    memory_format : torch.memory_format
        Of the copies (``torch.channels_last``: what oneDNN convolves fastest, made in one copy).

    Returns
    -------
    torch.Tensor
        ``[len(positions), C, H, W]``.
    """
    out = x.expand(len(positions), *x.shape[1:]).clone(memory_format=memory_format)  # a copy
    if not isinstance(fill, torch.Tensor):
        fill = torch.full((1, x.shape[1], 1, 1), float(fill), dtype=x.dtype, device=x.device)
    value = fill.reshape(x.shape[1], 1, 1).to(x.dtype)
    for n, (top, left) in enumerate(positions):
        out[n, :, top:top + size, left:left + size] = value
    return out
